"""The POP3 protocol error: a refused command, carrying the ``-ERR`` reply to send.

Invariants (STYLE.md item 3): ``CommandReader.next_event`` raises only `CommandError`;
any other exception out of the reader is a bug (the fuzz test in
tests/unit/test_pop3_reader.py says so).  After it is raised, the reader has already
resynchronised at the next line, so the session answers and goes on.  POP3 has no
second, fatal kind: every command is one line, so a reader can always resynchronise at
the next line end (an over-long line is discarded up to its LF without being held).

The same type is raised by the `Maildrop` for a message number that names no message.
Reply texts are generic (STYLE.md item 5): they never echo client input.
"""

from __future__ import annotations

from pymail.proto.pop3 import responses

TEXT_SYNTAX = "Syntax error"
TEXT_UNKNOWN_COMMAND = "Unknown command"
TEXT_EMPTY_COMMAND = "Empty command"
TEXT_LINE_TOO_LONG = "Command line too long"
TEXT_NO_SUCH_MESSAGE = "No such message"
TEXT_ALREADY_DELETED = "Message already deleted"


class CommandError(Exception):
    """One command is refused: answer ``-ERR [code] text`` and go on.

    ``detail`` is for the log only, never sent to the client."""

    def __init__(self, text: str, code: str | None = None, detail: str = "") -> None:
        super().__init__(text + (f" ({detail})" if detail else ""))
        self.text = text
        self.code = code
        self.detail = detail

    @property
    def reply(self) -> bytes:
        """The ``-ERR`` line to send, CRLF included."""
        return responses.err(self.text, self.code)
