"""The two IMAP protocol errors the command reader raises, each carrying its reply.

Invariants (STYLE.md item 3): ``CommandReader.next_event`` raises only ``BadCommand``
or ``FatalProtocolError``; any other exception out of the parser is a bug (the fuzz
test in tests/unit/test_imap_parser.py says so).  Client-facing text is generic; the
reader has already resynchronised at the next command when ``BadCommand`` is raised.
"""

from __future__ import annotations

# Reply texts (STYLE.md item 5): generic, stable, no echo of client input.
TEXT_SYNTAX = "Syntax error"
TEXT_UNKNOWN_COMMAND = "Unknown command"
TEXT_LINE_TOO_LONG = "Command line too long"
TEXT_BARE_LINE_END = "Lines must end with CRLF"
TEXT_LITERAL_TOO_BIG = "[TOOBIG] Literal too large"
TEXT_MESSAGE_TOO_BIG = "[TOOBIG] Message too large"
TEXT_NESTING_TOO_DEEP = "Too deeply nested"
TEXT_EXPECTED_DONE = "Expected DONE"
TEXT_FATAL_LITERAL = "[TOOBIG] Non-synchronizing literal too large"
TEXT_FATAL_PROTOCOL = "Protocol error"
TEXT_WRONG_STATE = "Command not allowed now"  # as the session says it

STATUS_BAD = "BAD"
STATUS_NO = "NO"


class BadCommand(Exception):
    """One command is refused; the session answers ``<tag> <status> <text>`` and goes on.

    ``status`` is ``BAD`` for syntax and limit errors (RFC 3501 section 7.1.3) and ``NO``
    for an over-size APPEND literal refused before its ``+`` (``[TOOBIG]``, RFC 4469
    section 5 / RFC 7889).  ``tag`` is ``"*"`` when no valid tag could be read.
    """

    def __init__(self, tag: str, text: str, status: str = STATUS_BAD, detail: str = "") -> None:
        super().__init__(f"{tag} {status} {text}" + (f" ({detail})" if detail else ""))
        self.tag = tag
        self.text = text
        self.status = status
        self.detail = detail  # for the log only, never sent to the client

    @property
    def reply(self) -> bytes:
        """The tagged response line to send, CRLF included."""
        return f"{self.tag} {self.status} {self.text}\r\n".encode("utf-8")


class FatalProtocolError(Exception):
    """The stream cannot be resynchronised: send ``* BYE <text>`` and close.

    Raised e.g. for an over-limit non-synchronising literal (RFC 7888 section 4: the
    client is already sending its bytes).  Once raised, the reader raises it again on
    every later ``next_event`` call.
    """

    def __init__(self, text: str, detail: str = "") -> None:
        super().__init__(text + (f" ({detail})" if detail else ""))
        self.text = text
        self.detail = detail

    @property
    def reply(self) -> bytes:
        """The untagged BYE line to send before closing, CRLF included."""
        return f"* BYE {self.text}\r\n".encode("utf-8")
