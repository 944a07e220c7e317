"""Incremental, sans-IO IMAP command reader (RFC 3501 section 9, RFC 9051 section 9): the
framing of commands -- lines, literals and their limits, streamed APPEND literals --;
the grammar of each command is `pymail.proto.imap.parser`'s.

``CommandReader`` turns client bytes into events, one command at a time:

* ``receive_data(data)`` appends bytes (``b""`` means the client closed);
* ``next_event()`` returns a ``Command``, ``NeedContinuation`` (send ``+`` before the
  client sends a synchronising literal), ``LiteralData`` (a piece of a streamed APPEND
  literal, below), ``ContinuationLine`` / ``IdleDone`` (after
  ``expect_continuation_line()`` / ``expect_idle_done()``), ``NEED_DATA`` or
  ``CONNECTION_CLOSED``; or raises ``BadCommand`` / ``FatalProtocolError``.

Invariants:
* A command line (all its text outside literal contents) is at most ``max_line``
  bytes; the reader never holds more than that plus one read of unparsed line text,
  plus the literals of the command being read, each at most ``max_literal`` -- or
  ``stream_literal_above`` for APPEND: a reader made with ``stream_literal_above``
  (``limits.spool_threshold``) does not keep an APPEND literal larger than that once
  logged in, but hands its octets out as they arrive, as ``LiteralData`` events (each
  at most what one ``receive_data`` brought); the ``Command`` that follows carries an
  empty message with ``Append.streamed`` set.  MULTIAPPEND (RFC 3502) may stream several
  literals of one command, one after the other (a new literal starts when the previous
  one's ``literal_size`` octets have come); once the APPEND literals kept whole reach
  ``stream_literal_above`` the later ones stream whatever their size, so one command
  never holds more than that in memory.  A NUL in a
  streamed non-literal8 literal ends the ``LiteralData`` events, the rest of the
  command is consumed and refused with ``BAD`` as for a literal kept whole.  After any
  ``BadCommand`` or ``CONNECTION_CLOSED`` the ``LiteralData`` already handed out belong
  to no command: the caller drops them.
* A literal's size is checked before ``NeedContinuation`` is returned (RFC 3501 section
  7.5, RFC 7888 section 4): an over-size APPEND literal is refused with ``NO [TOOBIG]``,
  any other with ``BAD``; an over-size non-synchronising literal is fatal (BYE).  The
  literals of one command other than APPEND total at most ``max_command_literals``; an
  APPEND literal is at most ``max_append`` (APPENDLIMIT) and all of one APPEND's literals
  (MULTIAPPEND) at most ``max_append_total`` (default ``MULTIAPPEND_TOTAL_FACTOR`` times
  ``max_append``), both ``NO [TOOBIG]`` before the ``+``.
* Before login (a reader made with ``prelogin_literal``, until ``logged_in()``) the
  literals of one command total at most ``prelogin_literal`` octets, and a synchronising
  literal of a command not allowed before login is refused with the session's
  wrong-state ``BAD`` before its ``+``: nothing larger than that is ever read from a
  client that has not logged in (a larger ``{n+}`` is fatal, RFC 7888 section 4).
* ``progress()`` says what the reader is waiting for -- nothing (between commands), the
  rest of a command line, or literal data (how much of it came) -- so that the
  connection can apply a command deadline and a minimum data rate.
* After ``BadCommand`` the reader has already skipped the rest of the failed command,
  so the next call reads the next command; pipelined commands come out one by one and
  bytes behind a command stay buffered for the next one.
* Only ``BadCommand`` and ``FatalProtocolError`` ever leave ``next_event``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pymail.proto.imap import errors
from pymail.proto.imap.errors import BadCommand, FatalProtocolError
from pymail.proto.imap.parser import (
    DEFAULT_MAX_DEPTH, LITERAL_MARKER_RE, TAG_CHARS, Literal, parse_command,
)
from pymail.proto.imap.states import ALL_COMMANDS, NOT_AUTHENTICATED_COMMANDS
from pymail.proto.progress import (  # noqa: F401 - re-exported for the connection
    READING_LINE, READING_LITERAL, WAITING_FOR_COMMAND, ReadProgress,
)

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_MAX_LITERAL = 64 * 1024  # literals outside APPEND (passwords, search strings)
DEFAULT_MAX_APPEND = 50 * 1024 * 1024  # APPENDLIMIT (RFC 7889)
DEFAULT_MAX_COMMAND_LITERALS = 1024 * 1024  # all literals of a command other than APPEND
#: MULTIAPPEND (RFC 3502): all messages of one APPEND together, in APPENDLIMITs
MULTIAPPEND_TOTAL_FACTOR = 4
_APPEND_HEAD_RE = re.compile(rb"\A[^ ]* (?i:APPEND) \Z")  # the mailbox is the literal
_TAG_HEAD_RE = re.compile(rb"\A([^ ]*)(?: ([^ ]*))?(?: ([^ ]*))?")


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
CONNECTION_CLOSED = _Sentinel("CONNECTION_CLOSED")


@dataclass(frozen=True)
class NeedContinuation:
    """Send a continuation request (``+ ...``) now: the client waits for it before
    sending a synchronising literal of ``size`` bytes (RFC 3501 section 7.5)."""

    tag: str
    size: int
    reply: bytes = b"+ Ready for literal data\r\n"


@dataclass(frozen=True)
class ContinuationLine:
    """A client line answering a continuation request, e.g. a SASL response
    (RFC 3501 section 6.2.2; ``*`` alone cancels).  ``line`` excludes the CRLF."""

    line: bytes


@dataclass(frozen=True)
class LiteralData:
    """The next octets of a streamed APPEND literal (see the module docstring), in order;
    the literal's octets together are the message.  ``literal_size`` is the size the
    literal declared (all its pieces together)."""

    data: bytes
    literal_size: int


@dataclass(frozen=True)
class IdleDone:
    """The ``DONE`` line that ends IDLE (RFC 2177 section 3)."""


def _head(fragment: bytes) -> tuple[str, str]:
    """Best-effort (tag, command name) from a command's first line, for error replies
    and for the literal limit before the continuation request."""
    m = _TAG_HEAD_RE.match(fragment)
    raw_tag = m.group(1) if m else b""
    tag = raw_tag.decode("ascii") if raw_tag and all(b in TAG_CHARS for b in raw_tag) else "*"
    name = (m.group(2) or b"").upper() if m else b""
    if name == b"UID" and m:
        name = (m.group(3) or b"").upper()
    return tag, name.decode("ascii", "replace")


class CommandReader:
    """Incremental IMAP command reader; see the module docstring for the contract.

    Fields: ``max_line`` bounds a command's text outside literals; ``max_literal`` a
    literal outside APPEND; ``max_append`` an APPEND literal; ``max_append_total`` an
    APPEND's literal total (MULTIAPPEND); ``max_command_literals`` the literal total of
    any other command; ``prelogin_literal`` the literal total of a command before ``logged_in()``;
    ``stream_literal_above`` the largest APPEND literal kept whole (None: all are);
    ``max_depth`` parenthesis/NOT/OR nesting.
    """

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE, max_literal: int = DEFAULT_MAX_LITERAL,
                 max_append: int = DEFAULT_MAX_APPEND, max_depth: int = DEFAULT_MAX_DEPTH,
                 max_command_literals: int = DEFAULT_MAX_COMMAND_LITERALS,
                 prelogin_literal: int | None = None,
                 stream_literal_above: int | None = None,
                 max_append_total: int | None = None) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_append = max_append
        self.max_append_total = (max_append * MULTIAPPEND_TOTAL_FACTOR
                                 if max_append_total is None else max_append_total)
        self.max_depth = max_depth
        self.max_command_literals = max_command_literals
        #: literal octets one command may carry before login; None once logged in
        self.prelogin_literal = prelogin_literal
        self.stream_literal_above = stream_literal_above
        self._literal_number = 0  # literals begun (read or discarded) by this reader
        self._skip_literal_size = 0  # size of the {n+} literal being discarded
        self._buffer = bytearray()  # received, not yet consumed
        self._closed = False  # receive_data(b"") seen
        self._fatal: FatalProtocolError | None = None
        self._fragments: list[bytes] = []  # lines of the command being read
        self._literals: list[Literal] = []  # literals read so far for it
        self._line_total = 0  # bytes of fragments (outside literals)
        self._literal_total = 0
        self._held_total = 0  # octets of this command's literals kept whole
        self._pending: tuple[int, bool] | None = None  # (size, binary) being awaited
        self._streaming: Literal | None = None  # the literal being handed out
        self._stream_left = 0  # its octets still to come
        self._skip_error: BadCommand | None = None  # discarding an over-long line
        self._skip_literal = 0  # bytes of a {n+} literal to discard while skipping
        self._skip_tail = b""  # last bytes of the discarded line (literal marker)
        self._line_mode: type | None = None  # ContinuationLine / IdleDone expected

    # -- input --
    def receive_data(self, data: bytes) -> None:
        """Append client bytes; ``b""`` marks the end of the stream."""
        if not data:
            self._closed = True
        elif self._fatal is None:  # after a fatal error nothing more is kept
            self._buffer += data

    def expect_continuation_line(self) -> None:
        """The next line is an answer to ``+`` (e.g. SASL), returned as ContinuationLine."""
        self._line_mode = ContinuationLine

    def expect_idle_done(self) -> None:
        """The next line must be ``DONE`` (RFC 2177), returned as IdleDone."""
        self._line_mode = IdleDone

    def logged_in(self) -> None:
        """The client has authenticated: the pre-login literal limit no longer applies."""
        self.prelogin_literal = None

    @property
    def buffered(self) -> int:
        """Bytes held, for tests of the memory bound."""
        return len(self._buffer) + self._line_total + sum(len(lit.data) for lit in self._literals)

    def progress(self) -> ReadProgress:
        """What the reader waits for (meaningful after ``next_event`` gave NEED_DATA)."""
        if self._pending is not None:
            return ReadProgress(READING_LITERAL, self._literal_number, len(self._buffer))
        if self._streaming is not None:
            return ReadProgress(READING_LITERAL, self._literal_number,
                                self._streaming.size - self._stream_left)
        if self._skip_literal:
            return ReadProgress(READING_LITERAL, self._literal_number,
                                self._skip_literal_size - self._skip_literal)
        if self._buffer or self._fragments or self._skip_error is not None:
            return ReadProgress(READING_LINE)
        return ReadProgress(WAITING_FOR_COMMAND)

    def _largest_fatal_literal(self) -> int:
        """A ``{n+}`` behind a refused line above this ends the connection."""
        return self.max_append if self.prelogin_literal is None else self.prelogin_literal

    # -- output --
    def next_event(self) -> object:
        if self._fatal is not None:
            raise self._fatal
        try:
            return self._next_event()
        except FatalProtocolError as exc:
            self._fatal = exc
            self._buffer.clear()
            raise

    def _reset_command(self) -> None:
        self._fragments = []
        self._literals = []
        self._line_total = 0
        self._literal_total = 0
        self._held_total = 0
        self._pending = None
        self._streaming = None
        self._stream_left = 0

    def _next_event(self) -> object:
        while True:
            if self._skip_error is not None:
                if not self._skip():
                    return self._need_data()
                error, self._skip_error = self._skip_error, None
                raise error
            if self._streaming is not None:
                if not self._buffer:
                    return self._need_data()
                event = self._stream_literal()
                if event is not None:
                    return event
                continue
            if self._pending is not None:
                size, binary = self._pending
                if len(self._buffer) < size:
                    return self._need_data()
                data = bytes(self._buffer[:size])
                del self._buffer[:size]
                self._pending = None
                self._literals.append(Literal(data, binary))
                if not binary and b"\x00" in data:  # CHAR8 excludes NUL (RFC 3501 s. 9)
                    self._literals.pop()
                    self._skip_error = BadCommand(_head(self._fragments[0])[0], errors.TEXT_SYNTAX,
                                                  detail="NUL in literal; use literal8")
                    self._skip_tail = b""
                    self._reset_command()
                continue
            room = self.max_line - self._line_total
            end = self._buffer.find(b"\n", 0, room + 2)
            if end < 0:
                if len(self._buffer) > room + 1:
                    self._start_skip(errors.TEXT_LINE_TOO_LONG, bytes(self._buffer[:200]))
                    continue
                return self._need_data()
            line = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if not line.endswith(b"\r"):
                tag = _head(self._fragments[0] if self._fragments else line)[0]
                self._reset_command()
                self._line_mode = None
                raise BadCommand(tag, errors.TEXT_BARE_LINE_END)
            line = line[:-1]
            if self._line_total + len(line) > self.max_line:
                # complete but over-long: drop it (and a {n+} literal behind it)
                marker = LITERAL_MARKER_RE.search(line)
                self._start_skip(errors.TEXT_LINE_TOO_LONG, line)
                if marker is None or not marker.group(3):
                    error, self._skip_error = self._skip_error, None
                    raise error
                if int(marker.group(2)) > self._largest_fatal_literal():
                    raise FatalProtocolError(errors.TEXT_FATAL_LITERAL)
                self._begin_skip_literal(int(marker.group(2)))
                continue
            if self._line_mode is not None:
                return self._line_event(line)
            event = self._command_line(line)
            if event is not None:
                return event

    def _need_data(self) -> object:
        return CONNECTION_CLOSED if self._closed else NEED_DATA

    def _line_event(self, line: bytes) -> object:
        mode, self._line_mode = self._line_mode, None
        if mode is IdleDone:
            if line.upper() != b"DONE":
                raise BadCommand("*", errors.TEXT_EXPECTED_DONE)
            return IdleDone()
        return ContinuationLine(line)

    def _command_line(self, line: bytes) -> object:
        """Take one line of the current command; return an event or None to go on."""
        marker = LITERAL_MARKER_RE.search(line)
        if marker is None:
            self._fragments.append(line)
            fragments, literals = self._fragments, self._literals
            self._reset_command()
            return parse_command(fragments, literals, self.max_depth)
        text = line[:marker.start()]
        self._fragments.append(text)
        self._line_total += len(text)
        binary = marker.group(1) == b"~"
        size = int(marker.group(2))
        synchronising = not marker.group(3)
        tag, name = _head(self._fragments[0])
        prelogin = self.prelogin_literal is not None
        if prelogin:
            limit = total = self.prelogin_literal
        elif name == "APPEND":
            limit, total = self.max_append, self.max_append_total
        else:
            limit, total = self.max_literal, self.max_command_literals
        too_big = size > limit or self._literal_total + size > total
        # streamed: too large to keep, or (MULTIAPPEND) the literals kept would exceed that
        stream = (not prelogin and name == "APPEND" and self.stream_literal_above is not None
                  and self._held_total + size > self.stream_literal_above)
        # only a message streams: a mailbox name that large is refused unread
        mailbox_streamed = stream and not self._literals and _APPEND_HEAD_RE.match(
            self._fragments[0]) is not None
        if not synchronising:
            if too_big:  # RFC 7888 section 4: the bytes are coming; we cannot resync
                raise FatalProtocolError(errors.TEXT_FATAL_LITERAL)
            if mailbox_streamed:  # skip it unread, then BAD
                self._start_skip(errors.TEXT_SYNTAX, text)
                self._begin_skip_literal(size)
                return None
            self._begin_literal(size, binary, stream=stream)
            return None
        if prelogin and name not in NOT_AUTHENTICATED_COMMANDS and name in ALL_COMMANDS:
            # e.g. APPEND before login: the session's answer, before the literal is sent
            self._reset_command()
            raise BadCommand(tag, errors.TEXT_WRONG_STATE)
        if too_big:
            self._reset_command()
            if name == "APPEND":
                raise BadCommand(tag, errors.TEXT_MESSAGE_TOO_BIG, errors.STATUS_NO)
            raise BadCommand(tag, errors.TEXT_LITERAL_TOO_BIG)
        if tag == "*" or (name not in ALL_COMMANDS and name != "UID"):
            # refuse before asking for the literal; the client will not send it
            self._reset_command()
            raise BadCommand(tag, errors.TEXT_UNKNOWN_COMMAND if tag != "*" else errors.TEXT_SYNTAX)
        if mailbox_streamed:
            self._reset_command()
            raise BadCommand(tag, errors.TEXT_SYNTAX, detail="mailbox name too long")
        self._begin_literal(size, binary, stream=stream)
        return NeedContinuation(tag, size)

    def _begin_literal(self, size: int, binary: bool, *, stream: bool = False) -> None:
        if stream:
            self._streaming = Literal(b"", binary, streamed=True, size=size)
            self._stream_left = size
        else:
            self._pending = (size, binary)
            self._held_total += size
        self._literal_total += size
        self._literal_number += 1

    def _stream_literal(self) -> LiteralData | None:
        """The next piece of the streamed literal (the buffer holds some of it); None
        when a NUL turned the rest of the command into a refusal being skipped."""
        literal = self._streaming
        assert literal is not None
        if self._stream_left >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:self._stream_left])
            del self._buffer[:self._stream_left]
        self._stream_left -= len(data)
        if not literal.binary and b"\x00" in data:  # CHAR8 excludes NUL (RFC 3501 s. 9)
            left, size = self._stream_left, literal.size
            self._skip_error = BadCommand(_head(self._fragments[0])[0], errors.TEXT_SYNTAX,
                                          detail="NUL in literal; use literal8")
            self._skip_tail = b""
            self._reset_command()
            # the rest of the literal is discarded as the same literal (its deadline goes on)
            self._skip_literal, self._skip_literal_size = left, size
            return None
        if not self._stream_left:
            self._literals.append(literal)
            self._streaming = None
        return LiteralData(data, literal.size)

    def _begin_skip_literal(self, size: int) -> None:
        self._skip_literal = self._skip_literal_size = size
        self._literal_number += 1

    def _start_skip(self, text: str, head: bytes) -> None:
        tag = _head(self._fragments[0] if self._fragments else head[:200])[0]
        self._skip_error = BadCommand(tag, text)
        self._skip_tail = b""
        self._skip_literal = 0
        self._reset_command()

    def _skip(self) -> bool:
        """Discard the rest of an over-long or refused command; True when done.

        A ``{n+}`` at the end of a discarded line means n literal bytes follow and must
        be discarded too (else they would be read as commands -- smuggling)."""
        while True:
            if self._skip_literal:
                taken = min(self._skip_literal, len(self._buffer))
                del self._buffer[:taken]
                self._skip_literal -= taken
                if self._skip_literal:
                    return False
            end = self._buffer.find(b"\n")
            if end < 0:
                self._skip_tail = (self._skip_tail + bytes(self._buffer))[-32:]
                self._buffer.clear()
                return False
            line = (self._skip_tail + bytes(self._buffer[:end])).rstrip(b"\r")
            del self._buffer[:end + 1]
            self._skip_tail = b""
            marker = LITERAL_MARKER_RE.search(line)
            if marker is None or not marker.group(3):
                return True
            size = int(marker.group(2))
            if size > self._largest_fatal_literal():
                raise FatalProtocolError(errors.TEXT_FATAL_LITERAL)
            self._begin_skip_literal(size)
