"""Incremental, sans-IO POP3 command reader (RFC 1939 section 3, RFC 2449 section 4).

``CommandReader`` turns client bytes into events, one line at a time:

* ``receive_data(data)`` appends bytes (``b""`` means the client closed);
* ``next_event()`` returns a `Command`, a `SaslResponse` (the next line after
  ``expect_sasl_response()``, RFC 5034 section 4), ``NEED_DATA`` or
  ``CONNECTION_CLOSED``; or raises `CommandError` with the ``-ERR`` reply to send.

Invariants:
* A command line is at most ``max_line`` octets including its line end (512 by
  default: RFC 2449 section 4 sets 255 for a command; pymail accepts up to 512 and
  refuses longer lines with ``-ERR``).  A SASL response line may be up to
  ``max_sasl_line``.  The reader never holds more than that plus one read: an
  over-long line is refused as soon as it is known to be too long, and the rest of it
  is discarded, up to and including its LF, without being held.
* A line ends at LF; one CR before it is dropped (CRLF, RFC 1939 section 3; a bare LF
  is accepted from lenient clients).  A NUL or other CR in a line is a syntax error.
* After `CommandError` the reader is at the next line: pipelined commands (RFC 2449
  section 6.6) come out one by one, and bytes behind a command stay buffered for the
  next call (``buffered`` says how many: STLS needs to know, RFC 2595 section 4).
* ``progress()`` says whether part of a line is held (or being discarded), so that the
  connection can apply the command deadline from the line's first byte.
* Each command's arguments are checked here, by a table of parsers keyed by command
  name; a `Command` carries typed arguments (ints for message numbers).  Whether the
  command is allowed in the session's state is the session's concern (`states`).
* Only `CommandError` ever leaves ``next_event``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pymail.proto.pop3 import errors
from pymail.proto.pop3.errors import CommandError
from pymail.proto.pop3.states import ALL_COMMANDS
from pymail.proto.progress import READING_LINE, WAITING_FOR_COMMAND, ReadProgress

MAX_COMMAND_LINE = 512
MAX_SASL_LINE = 8192  # a SASL response line (base64; PLAIN and LOGIN need far less)
MAX_NUMBER_DIGITS = 10


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
CONNECTION_CLOSED = _Sentinel("CONNECTION_CLOSED")


@dataclass(frozen=True)
class Command:
    """One command line.  ``name`` is the keyword in upper case; ``arguments`` holds
    what the command's parser returned (see `ARGUMENT_PARSERS`)."""

    name: str
    arguments: tuple[object, ...] = ()


@dataclass(frozen=True)
class SaslResponse:
    """A client line answering a SASL challenge (RFC 5034 section 4): base64 text, or
    ``*`` to cancel.  ``line`` excludes the line end."""

    line: str


_NUMBER = re.compile(r"[0-9]{1,%d}" % MAX_NUMBER_DIGITS)
_MECHANISM = re.compile(r"[A-Za-z0-9_-]{1,20}")  # RFC 4422 section 3.1 sasl-mech
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _tokens(rest: str, least: int, most: int) -> list[str]:
    tokens = rest.split()
    if not least <= len(tokens) <= most:
        raise CommandError(errors.TEXT_SYNTAX)
    return tokens


def _number(token: str) -> int:
    # RFC 1939 section 3: a message number is a decimal number; 0 and numbers past
    # the maildrop are answered by the maildrop ("No such message").
    if not _NUMBER.fullmatch(token):
        raise CommandError(errors.TEXT_SYNTAX)
    return int(token)


def _no_arguments(rest: str) -> tuple[object, ...]:
    _tokens(rest, 0, 0)
    return ()


def _one_number(rest: str) -> tuple[object, ...]:
    return (_number(_tokens(rest, 1, 1)[0]),)


def _optional_number(rest: str) -> tuple[object, ...]:
    tokens = _tokens(rest, 0, 1)
    return (_number(tokens[0]),) if tokens else ()


def _top(rest: str) -> tuple[object, ...]:
    # RFC 1939 section 7: TOP msg n, n non-negative.
    message, lines = _tokens(rest, 2, 2)
    return (_number(message), _number(lines))


def _user(rest: str) -> tuple[object, ...]:
    # RFC 1939 section 7: USER name.  The whole rest of the line is the name.
    if not rest or _CONTROL.search(rest):
        raise CommandError(errors.TEXT_SYNTAX)
    return (rest,)


def _pass(rest: str) -> tuple[object, ...]:
    # RFC 1939 section 7: "PASS string"; a password may contain spaces, so the whole
    # rest of the line is the password.
    if not rest:
        raise CommandError(errors.TEXT_SYNTAX)
    return (rest,)


def _auth(rest: str) -> tuple[object, ...]:
    # RFC 5034 section 4: AUTH mechanism [initial-response]; AUTH alone lists the
    # mechanisms (what many clients still send, as RFC 1734 servers answered it).
    tokens = _tokens(rest, 0, 2)
    if tokens and not _MECHANISM.fullmatch(tokens[0]):
        raise CommandError(errors.TEXT_SYNTAX)
    return tuple(tokens)


#: How each command's arguments are read (the text after the keyword and one space).
ARGUMENT_PARSERS: dict[str, Callable[[str], tuple[object, ...]]] = {
    "USER": _user, "PASS": _pass, "AUTH": _auth, "CAPA": _no_arguments,
    "STLS": _no_arguments, "QUIT": _no_arguments, "STAT": _no_arguments,
    "LIST": _optional_number, "UIDL": _optional_number, "RETR": _one_number,
    "DELE": _one_number, "NOOP": _no_arguments, "RSET": _no_arguments, "TOP": _top,
}
assert set(ARGUMENT_PARSERS) == ALL_COMMANDS


def parse_command(line: bytes) -> Command:
    """One command line (without its line end) -> `Command`, or `CommandError`."""
    if not line.strip():
        raise CommandError(errors.TEXT_EMPTY_COMMAND)
    keyword, _, rest_bytes = line.partition(b" ")
    if b"\x00" in line or b"\r" in line:
        raise CommandError(errors.TEXT_SYNTAX, detail="NUL or CR in line")
    try:
        name = keyword.decode("ascii").upper()
    except UnicodeDecodeError:
        raise CommandError(errors.TEXT_UNKNOWN_COMMAND) from None
    parser = ARGUMENT_PARSERS.get(name)
    if parser is None:
        raise CommandError(errors.TEXT_UNKNOWN_COMMAND)
    if name in ("USER", "PASS"):
        rest = rest_bytes.decode("utf-8", "surrogateescape")
    else:
        try:
            rest = rest_bytes.decode("ascii")
        except UnicodeDecodeError:
            raise CommandError(errors.TEXT_SYNTAX) from None
    return Command(name, parser(rest))


class CommandReader:
    """The bytes a client sent, read as POP3 commands.

    Fields: ``_buffer`` bytes not yet read; ``_skipping`` inside an over-long line whose
    rest is being discarded; ``_sasl`` the next line is a SASL response; ``_closed`` the
    client closed its side."""

    def __init__(self, max_line: int = MAX_COMMAND_LINE, max_sasl_line: int = MAX_SASL_LINE) -> None:
        self.max_line = max_line
        self.max_sasl_line = max_sasl_line
        self._buffer = bytearray()
        self._skipping = False
        self._sasl = False
        self._closed = False

    def receive_data(self, data: bytes) -> None:
        """Add client bytes; ``b""`` means the client closed the connection."""
        if not data:
            self._closed = True
            return
        if self._skipping:
            end = data.find(b"\n")
            if end < 0:
                return  # still inside the over-long line: drop it, hold nothing
            self._skipping = False
            data = data[end + 1:]
        self._buffer += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet read as a line."""
        return len(self._buffer)

    def progress(self) -> ReadProgress:
        """What the reader waits for (meaningful after ``next_event`` gave NEED_DATA)."""
        if self._buffer or self._skipping:
            return ReadProgress(READING_LINE)
        return ReadProgress(WAITING_FOR_COMMAND)

    def expect_sasl_response(self) -> None:
        """Read the next line as a `SaslResponse` (after a ``+`` challenge)."""
        self._sasl = True

    def next_event(self) -> object:
        limit = self.max_sasl_line if self._sasl else self.max_line
        end = self._buffer.find(b"\n", 0, limit)
        if end < 0:
            if len(self._buffer) >= limit:  # no line end within the limit: refuse now
                later = self._buffer.find(b"\n", limit)
                if later < 0:  # drop what we have and the rest of the line as it comes
                    self._buffer.clear()
                    self._skipping = True
                else:  # the line ends in the buffer: keep what follows it
                    del self._buffer[:later + 1]
                self._sasl = False
                raise CommandError(errors.TEXT_LINE_TOO_LONG)
            return CONNECTION_CLOSED if self._closed else NEED_DATA
        line = bytes(self._buffer[:end])
        del self._buffer[:end + 1]
        if line.endswith(b"\r"):
            line = line[:-1]
        if self._sasl:
            self._sasl = False
            if b"\x00" in line or b"\r" in line:
                raise CommandError(errors.TEXT_SYNTAX)
            return SaslResponse(line.decode("ascii", "replace").strip())
        return parse_command(line)
