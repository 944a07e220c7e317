"""Incremental, sans-IO IMAP command reader (RFC 3501 section 9, RFC 9051 section 9).

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
  empty message with ``Append.streamed`` set.  Such a literal must be the command's last
  item (a literal behind it is refused with ``BAD``, its octets skipped); a NUL in a
  streamed non-literal8 literal ends the ``LiteralData`` events, the rest of the
  command is consumed and refused with ``BAD`` as for a literal kept whole.  After any
  ``BadCommand`` or ``CONNECTION_CLOSED`` the ``LiteralData`` already handed out belong
  to no command: the caller drops them.
* A literal's size is checked before ``NeedContinuation`` is returned (RFC 3501 section
  7.5, RFC 7888 section 4): an over-size APPEND literal is refused with ``NO [TOOBIG]``,
  any other with ``BAD``; an over-size non-synchronising literal is fatal (BYE).  The
  literals of one command other than APPEND total at most ``max_command_literals``.
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

import datetime
import re
from dataclasses import dataclass

from pymail.proto.imap import errors
from pymail.proto.imap.errors import BadCommand, FatalProtocolError
from pymail.proto.imap.states import ALL_COMMANDS, NOT_AUTHENTICATED_COMMANDS, UID_COMMANDS
from pymail.proto.imap.types import (
    Append, Authenticate, Command, Copy, Enable, Expunge, Fetch, FetchAttribute, GetQuota,
    Id, List, Login, Lsub, MailboxName, Rename, Search, SearchKey, Section, Select,
    SequenceSet, Status, Store,
)
from pymail.proto.progress import (  # noqa: F401 - re-exported for the connection
    READING_LINE, READING_LITERAL, WAITING_FOR_COMMAND, ReadProgress,
)

DEFAULT_MAX_LINE = 64 * 1024
DEFAULT_MAX_LITERAL = 64 * 1024  # literals outside APPEND (passwords, search strings)
DEFAULT_MAX_APPEND = 50 * 1024 * 1024  # APPENDLIMIT (RFC 7889)
DEFAULT_MAX_COMMAND_LITERALS = 1024 * 1024  # all literals of a command other than APPEND
DEFAULT_MAX_DEPTH = 20  # parentheses, NOT and OR nesting
MAX_NUMBER = 2**32 - 1  # RFC 3501 section 9 "number"
MAX_NUMBER64 = 2**63 - 1  # RFC 9051 section 9 "number64"
MAX_ID_PAIRS = 30  # RFC 2971 section 3.3


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


# --- character classes (RFC 3501 section 9) ------------------------------------------
_CTL = set(range(0x00, 0x20)) | {0x7F}
_ATOM_SPECIALS = set(b'(){ %*"\\]') | _CTL  # atom-specials incl. list-wildcards, resp-specials
_ATOM_CHARS = frozenset(set(range(0x01, 0x80)) - _ATOM_SPECIALS)
_ASTRING_CHARS = _ATOM_CHARS | {ord("]")}
_TAG_CHARS = _ASTRING_CHARS - {ord("+")}
_LIST_CHARS = _ATOM_CHARS | set(b"%*]")
_DIGITS = frozenset(b"0123456789")
_SEQ_CHARS = _DIGITS | set(b"*:,")
# fetch-att names run up to SP, ")", "[" or "<"
_FETCH_NAME_CHARS = _ATOM_CHARS - set(b"[<")
_BASE64_RE = re.compile(rb"\A(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")
# literal = "{" number64 ["+"] "}" CRLF (RFC 9051 section 9, RFC 7888); literal8 "~{"
_LITERAL_MARKER_RE = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\Z")
_TAG_HEAD_RE = re.compile(rb"\A([^ ]*)(?: ([^ ]*))?(?: ([^ ]*))?")

_MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)}

_LITERAL = object()  # Cursor.peek(): a literal comes next
_END = object()  # Cursor.peek(): end of the command


class _SyntaxError(Exception):
    """Internal: the grammar failed; turned into BadCommand with the command's tag."""

    def __init__(self, detail: str, text: str = errors.TEXT_SYNTAX) -> None:
        super().__init__(detail)
        self.text = text


@dataclass
class _Literal:
    data: bytes  # empty when streamed
    binary: bool  # literal8 "~{n}" (RFC 3516 section 4.1)
    streamed: bool = False  # handed out as LiteralData events
    size: int = -1  # octets; len(data) unless streamed

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.data)


class _Cursor:
    """Reads a complete command: line fragments with the literal between each pair.

    Fragment ``i`` has its trailing literal marker removed; ``literals[i]`` follows it.
    """

    def __init__(self, fragments: list[bytes], literals: list[_Literal], max_depth: int) -> None:
        self.fragments = fragments
        self.literals = literals
        self.index = 0
        self.pos = 0
        self.max_depth = max_depth

    # -- low level --
    def peek(self) -> object:
        fragment = self.fragments[self.index]
        if self.pos < len(fragment):
            return fragment[self.pos]
        if self.index < len(self.literals):
            return _LITERAL
        return _END

    def advance(self, n: int = 1) -> None:
        self.pos += n

    def take(self, allowed: frozenset[int] | set[int]) -> bytes:
        fragment = self.fragments[self.index]
        start = self.pos
        end = start
        while end < len(fragment) and fragment[end] in allowed:
            end += 1
        self.pos = end
        return fragment[start:end]

    def expect(self, char: bytes) -> None:
        if self.peek() != char[0]:
            raise _SyntaxError(f"expected {char!r}")
        self.pos += 1

    def accept(self, char: bytes) -> bool:
        if self.peek() == char[0]:
            self.pos += 1
            return True
        return False

    def sp(self) -> None:
        self.expect(b" ")

    def at_end(self) -> bool:
        return self.peek() is _END

    def end(self) -> None:
        if not self.at_end():
            raise _SyntaxError("trailing characters")

    def accept_word(self, word: bytes) -> bool:
        """Consume ``word`` (case-insensitive) when it is followed by SP, ")" or end."""
        fragment = self.fragments[self.index]
        stop = self.pos + len(word)
        if fragment[self.pos:stop].upper() != word:
            return False
        if stop < len(fragment) and fragment[stop] not in b" )":
            return False
        if stop == len(fragment) and self.index < len(self.literals):
            return False
        self.pos = stop
        return True

    def literal(self) -> _Literal:
        if self.peek() is not _LITERAL:
            raise _SyntaxError("expected literal")
        lit = self.literals[self.index]
        self.index += 1
        self.pos = 0
        return lit

    # -- RFC 3501 section 9 tokens --
    def atom(self) -> str:
        word = self.take(_ATOM_CHARS)
        if not word:
            raise _SyntaxError("expected atom")
        return word.decode("ascii")

    def number(self, maximum: int = MAX_NUMBER) -> int:
        digits = self.take(_DIGITS)
        if not digits or len(digits) > 20 or int(digits) > maximum:
            raise _SyntaxError("bad number")
        return int(digits)

    def nz_number(self, maximum: int = MAX_NUMBER) -> int:
        value = self.number(maximum)
        if value == 0:
            raise _SyntaxError("zero where nz-number required")
        return value

    def quoted(self) -> str:
        # quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR = <TEXT-CHAR except
        # quoted-specials> / "\" quoted-specials / UTF8-2..4 (RFC 9051 section 9).
        self.expect(b'"')
        fragment = self.fragments[self.index]
        out = bytearray()
        i = self.pos
        while True:
            if i >= len(fragment):
                raise _SyntaxError("unterminated quoted string")
            c = fragment[i]
            if c == 0x22:
                break
            if c == 0x5C:
                i += 1
                if i >= len(fragment) or fragment[i] not in b'"\\':
                    raise _SyntaxError("bad escape")
                c = fragment[i]
            elif c in (0x00, 0x0D, 0x0A):
                raise _SyntaxError("control character in quoted string")
            out.append(c)
            i += 1
        self.pos = i + 1
        try:
            return out.decode("utf-8")
        except UnicodeDecodeError:
            raise _SyntaxError("quoted string is not UTF-8") from None

    def string(self) -> str:
        if self.peek() == 0x22:
            return self.quoted()
        lit = self.literal()
        if lit.binary:
            raise _SyntaxError("literal8 not allowed here")
        if lit.streamed:
            raise _SyntaxError("a streamed literal is no string")
        return lit.data.decode("utf-8", "surrogateescape")

    def astring(self) -> str:
        nxt = self.peek()
        if nxt == 0x22 or nxt is _LITERAL:
            return self.string()
        word = self.take(_ASTRING_CHARS)
        if not word:
            raise _SyntaxError("expected astring")
        return word.decode("ascii")

    def nstring(self) -> str | None:
        if self.accept_word(b"NIL"):
            return None
        return self.string()

    def mailbox(self) -> str:
        # mailbox = "INBOX" / astring; INBOX is case-insensitive (RFC 3501 section 5.1)
        name = self.astring()
        return "INBOX" if name.upper() == "INBOX" else name

    def list_mailbox(self) -> str:
        # list-mailbox = 1*list-char / string (RFC 3501 section 9)
        nxt = self.peek()
        if nxt == 0x22 or nxt is _LITERAL:
            return self.string()
        word = self.take(_LIST_CHARS)
        if not word:
            raise _SyntaxError("expected list-mailbox")
        return word.decode("ascii")

    def sequence_set(self) -> SequenceSet:
        # sequence-set (RFC 3501 section 9), "$" (RFC 5182 section 2.1)
        if self.accept(b"$"):
            return SequenceSet(saved_result=True)
        text = self.take(_SEQ_CHARS)
        if not text:
            raise _SyntaxError("expected sequence set")
        ranges = []
        for item in text.split(b","):
            parts = item.split(b":")
            if len(parts) > 2:
                raise _SyntaxError("bad sequence range")
            numbers = [self._seq_number(p) for p in parts]
            ranges.append((numbers[0], numbers[-1]))
        return SequenceSet(tuple(ranges))

    @staticmethod
    def _seq_number(text: bytes) -> int | None:
        # seq-number = nz-number / "*"
        if text == b"*":
            return None
        if not text or not text.isdigit() or len(text) > 10:
            raise _SyntaxError("bad sequence number")
        value = int(text)
        if not 1 <= value <= MAX_NUMBER:
            raise _SyntaxError("bad sequence number")
        return value

    def flag(self) -> str:
        # flag = "\" atom / flag-keyword (RFC 3501 section 9); "\*" only in PERMANENTFLAGS
        if self.accept(b"\\"):
            return "\\" + self.atom()
        return self.atom()

    def flag_list(self) -> tuple[str, ...]:
        # flag-list = "(" [flag *(SP flag)] ")"
        self.expect(b"(")
        flags = []
        if not self.accept(b")"):
            flags.append(self.flag())
            while self.accept(b" "):
                flags.append(self.flag())
            self.expect(b")")
        return tuple(flags)

    def date(self) -> datetime.date:
        # date = date-text / DQUOTE date-text DQUOTE; date-text = date-day "-" date-month
        # "-" date-year (RFC 3501 section 9)
        if self.peek() == 0x22:
            text = self.quoted().encode("utf-8")
        else:
            text = self.take(_ATOM_CHARS)
        m = re.fullmatch(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})", text)
        if not m:
            raise _SyntaxError("bad date")
        return self._make_date(m.group(1), m.group(2), m.group(3))

    @staticmethod
    def _make_date(day: bytes, month: bytes, year: bytes) -> datetime.date:
        month_number = _MONTHS.get(month.decode("ascii").upper())
        if month_number is None:
            raise _SyntaxError("bad month")
        try:
            return datetime.date(int(year), month_number, int(day))
        except ValueError:
            raise _SyntaxError("bad date") from None

    def date_time(self) -> datetime.datetime:
        # date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone
        # DQUOTE; zone = ("+" / "-") 4DIGIT (RFC 3501 section 9)
        text = self.quoted().encode("utf-8")
        m = re.fullmatch(
            rb"([ 0-9][0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})",
            text)
        if not m:
            raise _SyntaxError("bad date-time")
        day = self._make_date(m.group(1).strip(), m.group(2), m.group(3))
        hour, minute, second = int(m.group(4)), int(m.group(5)), int(m.group(6))
        zone_h, zone_m = int(m.group(8)), int(m.group(9))
        if hour > 23 or minute > 59 or second > 60 or zone_m > 59:
            raise _SyntaxError("bad time")
        offset = datetime.timedelta(hours=zone_h, minutes=zone_m)
        if m.group(7) == b"-":
            offset = -offset
        return datetime.datetime(day.year, day.month, day.day, hour, minute, min(second, 59),
                                 tzinfo=datetime.timezone(offset))

    def paren_list(self, item, depth: int = 0) -> tuple:
        """``"(" [item *(SP item)] ")"`` -- the empty list allowed."""
        if depth > self.max_depth:
            raise _SyntaxError("nesting", errors.TEXT_NESTING_TOO_DEEP)
        self.expect(b"(")
        items = []
        if not self.accept(b")"):
            items.append(item())
            while self.accept(b" "):
                items.append(item())
            self.expect(b")")
        return tuple(items)

    def generic_value(self, depth: int = 0) -> object:
        """A tagged-ext-val style value (RFC 4466 section 2.1): number, astring, or a
        nested parenthesised list of them; used for extension parameters."""
        if depth > self.max_depth:
            raise _SyntaxError("nesting", errors.TEXT_NESTING_TOO_DEEP)
        nxt = self.peek()
        if nxt == 0x28:
            return self.paren_list(lambda: self.generic_value(depth + 1), depth)
        if isinstance(nxt, int) and nxt in _DIGITS:
            return self.number(MAX_NUMBER64)
        if nxt == 0x5C:
            return self.flag()
        return self.astring()


# --- command grammar (RFC 3501 section 9 "command-*") --------------------------------

def _parse_no_arguments(c: _Cursor) -> None:
    return None


def _parse_login(c: _Cursor) -> Login:
    # login = "LOGIN" SP userid SP password
    c.sp()
    user = c.astring()
    c.sp()
    return Login(user, c.astring())


def _parse_authenticate(c: _Cursor) -> Authenticate:
    # authenticate = "AUTHENTICATE" SP auth-type [SP (base64 / "=")] (RFC 4959 section 3)
    c.sp()
    mechanism = c.atom().upper()
    initial = None
    if c.accept(b" "):
        if c.accept(b"="):
            initial = ""
        else:
            raw = c.take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))
            if not raw or not _BASE64_RE.match(raw):
                raise _SyntaxError("bad base64")
            initial = raw.decode("ascii")
    return Authenticate(mechanism, initial)


def _parse_mailbox(c: _Cursor) -> MailboxName:
    c.sp()
    return MailboxName(c.mailbox())


def _parse_create(c: _Cursor) -> MailboxName:
    # create = "CREATE" SP mailbox [create-params] (RFC 4466 section 2.2, RFC 6154 sec. 3)
    c.sp()
    mailbox = c.mailbox()
    params: tuple = ()
    if c.accept(b" "):
        params = c.paren_list(lambda: c.generic_value(1))
    return MailboxName(mailbox, params)


def _parse_select(c: _Cursor) -> Select:
    # select = "SELECT" SP mailbox [select-params] (RFC 4466 section 2.1, RFC 7162 3.1.8
    # CONDSTORE, RFC 7162 3.2.5 QRESYNC)
    c.sp()
    mailbox = c.mailbox()
    condstore = False
    qresync = None
    if c.accept(b" "):
        c.expect(b"(")
        while True:
            if c.accept_word(b"CONDSTORE"):
                condstore = True
            elif c.accept_word(b"QRESYNC"):
                c.sp()
                c.expect(b"(")
                uidvalidity = c.nz_number()
                c.sp()
                modseq = c.nz_number(MAX_NUMBER64)
                known_uids = None
                match_data = None
                if c.accept(b" "):
                    if c.peek() != 0x28:
                        known_uids = c.sequence_set()
                        if known_uids.saved_result:
                            raise _SyntaxError("$ in QRESYNC")
                    if known_uids is None or c.accept(b" "):
                        c.expect(b"(")
                        seqs = c.sequence_set()
                        c.sp()
                        uids = c.sequence_set()
                        c.expect(b")")
                        match_data = (seqs, uids)
                c.expect(b")")
                qresync = (uidvalidity, modseq, known_uids, match_data)
            else:
                raise _SyntaxError("unknown select parameter")
            if not c.accept(b" "):
                break
        c.expect(b")")
    return Select(mailbox, condstore, qresync)


def _parse_rename(c: _Cursor) -> Rename:
    c.sp()
    old = c.mailbox()
    c.sp()
    return Rename(old, c.mailbox())


_LIST_SELECT_OPTIONS = {"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"}
_STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "DELETED",
                 "SIZE", "HIGHESTMODSEQ", "APPENDLIMIT"}


def _status_items(c: _Cursor) -> tuple[str, ...]:
    # "(" status-att *(SP status-att) ")" (RFC 3501 section 6.3.10, RFC 9051 6.3.11,
    # RFC 7162 HIGHESTMODSEQ, RFC 7889 APPENDLIMIT)
    items = c.paren_list(lambda: c.atom().upper())
    if not items or any(i not in _STATUS_ITEMS for i in items):
        raise _SyntaxError("bad status item")
    return items


def _parse_list(c: _Cursor) -> List:
    # list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    # (RFC 5258 section 6)
    c.sp()
    selection: tuple[str, ...] = ()
    extended = False
    if c.peek() == 0x28:
        extended = True
        selection = c.paren_list(lambda: c.atom().upper())
        if "RECURSIVEMATCH" in selection and len(selection) == 1:
            raise _SyntaxError("RECURSIVEMATCH alone")  # RFC 5258 section 3.1
        c.sp()
    reference = c.mailbox()
    c.sp()
    if c.peek() == 0x28:
        extended = True
        patterns = c.paren_list(c.list_mailbox)
        if not patterns:
            raise _SyntaxError("empty pattern list")
    else:
        patterns = (c.list_mailbox(),)
    returns: list[str] = []
    status_items: tuple[str, ...] = ()
    if c.accept(b" "):
        extended = True
        if not c.accept_word(b"RETURN"):
            raise _SyntaxError("expected RETURN")
        c.sp()

        def return_option() -> str:
            nonlocal status_items
            name = c.atom().upper()
            if name == "STATUS":  # RFC 5819 section 2
                c.sp()
                status_items = _status_items(c)
            return name
        returns = list(c.paren_list(return_option))
    return List(reference, patterns, selection, tuple(returns), status_items, extended)


def _parse_lsub(c: _Cursor) -> Lsub:
    c.sp()
    reference = c.mailbox()
    c.sp()
    return Lsub(reference, c.list_mailbox())


def _parse_status(c: _Cursor) -> Status:
    c.sp()
    mailbox = c.mailbox()
    c.sp()
    return Status(mailbox, _status_items(c))


def _parse_append(c: _Cursor) -> Append:
    # append = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP literal
    # (RFC 3501 section 6.3.11; literal8 RFC 3516 section 4.4)
    c.sp()
    mailbox = c.mailbox()
    c.sp()
    flags = None
    internal_date = None
    if c.peek() == 0x28:
        flags = c.flag_list()
        c.sp()
    if c.peek() == 0x22:
        internal_date = c.date_time()
        c.sp()
    lit = c.literal()
    return Append(mailbox, flags, internal_date, lit.data, lit.binary, lit.streamed, lit.size)


def _parse_enable(c: _Cursor) -> Enable:
    # enable = "ENABLE" 1*(SP capability) (RFC 5161 section 4)
    caps = []
    while c.accept(b" "):
        caps.append(c.atom().upper())
    if not caps:
        raise _SyntaxError("ENABLE without capabilities")
    return Enable(tuple(caps))


def _parse_id(c: _Cursor) -> Id:
    # id = "ID" SP id-params-list; id-params-list = "(" *(string SP nstring) ")" / nil
    # (RFC 2971 section 4)
    c.sp()
    if c.accept_word(b"NIL"):
        return Id(None)
    c.expect(b"(")
    pairs = []
    if not c.accept(b")"):
        while True:
            name = c.string()
            c.sp()
            pairs.append((name, c.nstring()))
            if len(pairs) > MAX_ID_PAIRS:
                raise _SyntaxError("too many ID pairs")
            if not c.accept(b" "):
                break
        c.expect(b")")
    return Id(tuple(pairs))


def _parse_getquota(c: _Cursor) -> GetQuota:
    c.sp()
    return GetQuota(c.astring())


_FETCH_MACROS = {
    # RFC 3501 section 6.4.5
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_FETCH_ATTS = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER",
                      "RFC822.SIZE", "RFC822.TEXT", "BODY", "BODYSTRUCTURE", "UID", "MODSEQ",
                      "SAVEDATE", "EMAILID", "THREADID"}


def _section(c: _Cursor, binary: bool) -> Section:
    # section = "[" [section-spec] "]"; section-spec = section-msgtext / (section-part
    # ["." section-text]); section-binary = "[" [section-part] "]" (RFC 3501 section 9,
    # RFC 3516 section 4.2)
    c.expect(b"[")
    part: list[int] = []
    text = None
    fields: tuple[str, ...] = ()
    if c.accept(b"]"):
        return Section()
    while isinstance(c.peek(), int) and c.peek() in _DIGITS:
        part.append(c.nz_number())
        if not c.accept(b"."):
            break
    else:
        if binary:
            raise _SyntaxError("BINARY section must be a part number")
        word = c.take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")).upper()
        text = word.decode("ascii")
        if text not in {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"}:
            raise _SyntaxError("bad section text")
        if text == "MIME" and not part:
            raise _SyntaxError("MIME needs a part")  # section-text is only after a part
        if text.startswith("HEADER.FIELDS"):
            c.sp()
            fields = tuple(f.upper() for f in c.paren_list(c.astring))
            if not fields:
                raise _SyntaxError("empty header list")
    c.expect(b"]")
    return Section(tuple(part), text, fields)


def _fetch_att(c: _Cursor) -> FetchAttribute:
    name = c.take(_FETCH_NAME_CHARS).decode("ascii").upper()
    peek = False
    if name in ("BODY.PEEK", "BINARY.PEEK"):
        peek = True
        name = name[:-5]
    if name in ("BODY", "BINARY", "BINARY.SIZE") and c.peek() == 0x5B:
        section = _section(c, binary=name != "BODY")
        partial = None
        if name != "BINARY.SIZE" and c.accept(b"<"):
            # partial = "<" number "." nz-number ">"
            offset = c.number()
            c.expect(b".")
            length = c.nz_number()
            c.expect(b">")
            partial = (offset, length)
        return FetchAttribute(name, section, peek, partial)
    if peek or name not in _SIMPLE_FETCH_ATTS:
        raise _SyntaxError("bad fetch attribute")
    return FetchAttribute(name)


def _parse_fetch(c: _Cursor) -> Fetch:
    # fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att /
    # "(" fetch-att *(SP fetch-att) ")") [fetch-modifiers] (RFC 3501, RFC 7162 3.1.4)
    c.sp()
    seqs = c.sequence_set()
    c.sp()
    if c.peek() == 0x28:
        attributes = c.paren_list(lambda: _fetch_att(c))
        if not attributes:
            raise _SyntaxError("empty fetch list")
    else:
        for macro, names in _FETCH_MACROS.items():
            if c.accept_word(macro.encode()):
                attributes = tuple(FetchAttribute(n) for n in names)
                break
        else:
            attributes = (_fetch_att(c),)
    changed_since = None
    vanished = False
    if c.accept(b" "):
        c.expect(b"(")
        while True:
            if c.accept_word(b"CHANGEDSINCE"):
                c.sp()
                changed_since = c.number(MAX_NUMBER64)
            elif c.accept_word(b"VANISHED"):
                vanished = True
            else:
                raise _SyntaxError("bad fetch modifier")
            if not c.accept(b" "):
                break
        c.expect(b")")
    return Fetch(seqs, attributes, changed_since, vanished)


def _parse_store(c: _Cursor) -> Store:
    # store = "STORE" SP sequence-set [store-modifiers] SP store-att-flags;
    # store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    # (RFC 3501 section 9, RFC 7162 section 3.1.3 UNCHANGEDSINCE)
    c.sp()
    seqs = c.sequence_set()
    c.sp()
    unchanged_since = None
    if c.accept(b"("):
        if not c.accept_word(b"UNCHANGEDSINCE"):
            raise _SyntaxError("bad store modifier")
        c.sp()
        unchanged_since = c.number(MAX_NUMBER64)
        c.expect(b")")
        c.sp()
    mode = ""
    if c.accept(b"+"):
        mode = "+"
    elif c.accept(b"-"):
        mode = "-"
    item = c.atom().upper()
    if item not in ("FLAGS", "FLAGS.SILENT"):
        raise _SyntaxError("bad store item")
    c.sp()
    if c.peek() == 0x28:
        flags = c.flag_list()
    else:
        flags_list = [c.flag()]
        while c.accept(b" "):
            flags_list.append(c.flag())
        flags = tuple(flags_list)
    return Store(seqs, mode, item.endswith(".SILENT"), flags, unchanged_since)


def _parse_copy(c: _Cursor) -> Copy:
    # copy = "COPY" SP sequence-set SP mailbox; move likewise (RFC 6851 section 3)
    c.sp()
    seqs = c.sequence_set()
    c.sp()
    return Copy(seqs, c.mailbox())


def _parse_expunge(c: _Cursor, uid: bool) -> Expunge | None:
    # uid-expunge = "UID" SP "EXPUNGE" SP sequence-set (RFC 4315 section 2.1)
    if not uid:
        return None
    c.sp()
    return Expunge(c.sequence_set())


# search keys (RFC 3501 section 6.4.4 and 9; RFC 9051 section 6.4.4)
_SEARCH_FLAG_KEYS = {"ALL", "ANSWERED", "DELETED", "FLAGGED", "NEW", "OLD", "RECENT", "SEEN",
                     "UNANSWERED", "UNDELETED", "UNFLAGGED", "UNSEEN", "DRAFT", "UNDRAFT",
                     "SAVEDATEUNSUPPORTED"}
_SEARCH_STRING_KEYS = {"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"}
_SEARCH_DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
_SEARCH_SIZE_KEYS = {"LARGER", "SMALLER"}
_SEARCH_FLAG_NAMES = {"ANSWERED", "DELETED", "DRAFT", "FLAGGED", "RECENT", "SEEN"}


def _search_key(c: _Cursor, depth: int) -> SearchKey:
    if depth > c.max_depth:
        raise _SyntaxError("nesting", errors.TEXT_NESTING_TOO_DEEP)
    nxt = c.peek()
    if nxt == 0x28:
        return SearchKey("AND", c.paren_list(lambda: _search_key(c, depth + 1), depth))
    if isinstance(nxt, int) and (nxt in _DIGITS or nxt in b"*$"):
        return SearchKey("SEQUENCE", (c.sequence_set(),))
    name = c.atom().upper()
    if name in _SEARCH_FLAG_KEYS:
        return SearchKey(name)
    c.sp()
    if name in _SEARCH_STRING_KEYS:
        return SearchKey(name, (c.astring(),))
    if name in _SEARCH_DATE_KEYS:
        return SearchKey(name, (c.date(),))
    if name in _SEARCH_SIZE_KEYS:
        return SearchKey(name, (c.number(MAX_NUMBER64),))
    if name in ("KEYWORD", "UNKEYWORD"):
        return SearchKey(name, (c.atom(),))
    if name == "HEADER":
        field = c.astring()
        c.sp()
        return SearchKey(name, (field.upper(), c.astring()))
    if name == "UID":
        return SearchKey(name, (c.sequence_set(),))
    if name == "NOT":
        return SearchKey(name, (_search_key(c, depth + 1),))
    if name == "OR":
        first = _search_key(c, depth + 1)
        c.sp()
        return SearchKey(name, (first, _search_key(c, depth + 1)))
    if name == "MODSEQ":
        # "MODSEQ" [SP entry-name SP entry-type-req] SP mod-sequence-valzer (RFC 7162 3.1.5)
        if c.peek() == 0x22:
            entry = c.quoted()
            c.sp()
            entry_type = c.atom().lower()
            if entry_type not in ("priv", "shared", "all"):
                raise _SyntaxError("bad entry type")
            c.sp()
            return SearchKey(name, (c.number(MAX_NUMBER64), entry, entry_type))
        return SearchKey(name, (c.number(MAX_NUMBER64),))
    if name in ("OLDER", "YOUNGER"):  # RFC 5032 WITHIN
        return SearchKey(name, (c.nz_number(),))
    raise _SyntaxError("unknown search key")


_SEARCH_RETURN_OPTIONS = {"MIN", "MAX", "ALL", "COUNT", "SAVE"}


def _parse_search(c: _Cursor) -> Search:
    # search = "SEARCH" [search-return-opts] [SP "CHARSET" SP charset] 1*(SP search-key)
    # (RFC 3501 section 9, RFC 4731 section 3 ESEARCH, RFC 5182 SAVE)
    c.sp()
    return_options = None
    charset = None
    if c.accept_word(b"RETURN"):
        c.sp()
        return_options = c.paren_list(lambda: c.atom().upper())
        if any(o not in _SEARCH_RETURN_OPTIONS for o in return_options):
            raise _SyntaxError("bad return option")
        c.sp()
    if c.accept_word(b"CHARSET"):
        c.sp()
        charset = c.astring().upper()
        c.sp()
    keys = [_search_key(c, 1)]
    while c.accept(b" "):
        keys.append(_search_key(c, 1))
    return Search(SearchKey("AND", tuple(keys)), charset, return_options)


_PARSERS = {
    "CAPABILITY": _parse_no_arguments, "NOOP": _parse_no_arguments,
    "LOGOUT": _parse_no_arguments, "STARTTLS": _parse_no_arguments,
    "CHECK": _parse_no_arguments, "CLOSE": _parse_no_arguments,
    "UNSELECT": _parse_no_arguments, "NAMESPACE": _parse_no_arguments,
    "IDLE": _parse_no_arguments,
    "LOGIN": _parse_login, "AUTHENTICATE": _parse_authenticate,
    "SELECT": _parse_select, "EXAMINE": _parse_select,
    "CREATE": _parse_create, "DELETE": _parse_mailbox, "SUBSCRIBE": _parse_mailbox,
    "UNSUBSCRIBE": _parse_mailbox, "GETQUOTAROOT": _parse_mailbox,
    "RENAME": _parse_rename, "LIST": _parse_list, "LSUB": _parse_lsub,
    "STATUS": _parse_status, "APPEND": _parse_append, "ENABLE": _parse_enable,
    "ID": _parse_id, "GETQUOTA": _parse_getquota,
    "FETCH": _parse_fetch, "STORE": _parse_store, "COPY": _parse_copy, "MOVE": _parse_copy,
    "SEARCH": _parse_search,
}
assert set(_PARSERS) | {"EXPUNGE"} == ALL_COMMANDS


def parse_command(fragments: list[bytes], literals: list[_Literal], max_depth: int) -> Command:
    """Parse one complete command (the reader calls this; exposed for tests).

    command = tag SP (command-any / command-auth / command-nonauth / command-select)
    CRLF (RFC 3501 section 9).  Raises BadCommand."""
    c = _Cursor(fragments, literals, max_depth)
    tag = "*"
    try:
        raw_tag = c.take(_TAG_CHARS)
        if not raw_tag:
            raise _SyntaxError("bad tag")
        tag = raw_tag.decode("ascii")
        c.sp()
        name = c.atom().upper()
        uid = False
        if name == "UID":  # uid = "UID" SP (copy / move / fetch / search / store / expunge)
            uid = True
            c.sp()
            name = c.atom().upper()
            if name not in UID_COMMANDS:
                raise _SyntaxError("bad UID command", errors.TEXT_UNKNOWN_COMMAND)
        if name == "EXPUNGE":
            arguments = _parse_expunge(c, uid)
        elif name in _PARSERS:
            arguments = _PARSERS[name](c)
        else:
            raise _SyntaxError("unknown command", errors.TEXT_UNKNOWN_COMMAND)
        c.end()
    except _SyntaxError as exc:
        raise BadCommand(tag, exc.text, detail=str(exc)) from None
    except RecursionError:  # pragma: no cover - guarded by max_depth
        raise BadCommand(tag, errors.TEXT_NESTING_TOO_DEEP) from None
    return Command(tag, name, arguments, uid, sum(lit.size for lit in literals))


def _head(fragment: bytes) -> tuple[str, str]:
    """Best-effort (tag, command name) from a command's first line, for error replies
    and for the literal limit before the continuation request."""
    m = _TAG_HEAD_RE.match(fragment)
    raw_tag = m.group(1) if m else b""
    tag = raw_tag.decode("ascii") if raw_tag and all(b in _TAG_CHARS for b in raw_tag) else "*"
    name = (m.group(2) or b"").upper() if m else b""
    if name == b"UID" and m:
        name = (m.group(3) or b"").upper()
    return tag, name.decode("ascii", "replace")


class CommandReader:
    """Incremental IMAP command reader; see the module docstring for the contract.

    Fields: ``max_line`` bounds a command's text outside literals; ``max_literal`` a
    literal outside APPEND; ``max_append`` an APPEND literal (and an APPEND's literal
    total); ``max_command_literals`` the literal total of any other command;
    ``prelogin_literal`` the literal total of a command before ``logged_in()``;
    ``stream_literal_above`` the largest APPEND literal kept whole (None: all are);
    ``max_depth`` parenthesis/NOT/OR nesting.
    """

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE, max_literal: int = DEFAULT_MAX_LITERAL,
                 max_append: int = DEFAULT_MAX_APPEND, max_depth: int = DEFAULT_MAX_DEPTH,
                 max_command_literals: int = DEFAULT_MAX_COMMAND_LITERALS,
                 prelogin_literal: int | None = None,
                 stream_literal_above: int | None = None) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self.max_append = max_append
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
        self._literals: list[_Literal] = []  # literals read so far for it
        self._line_total = 0  # bytes of fragments (outside literals)
        self._literal_total = 0
        self._pending: tuple[int, bool] | None = None  # (size, binary) being awaited
        self._streaming: _Literal | None = None  # the literal being handed out
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
                self._literals.append(_Literal(data, binary))
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
                marker = _LITERAL_MARKER_RE.search(line)
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
        marker = _LITERAL_MARKER_RE.search(line)
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
            limit = total = self.max_append
        else:
            limit, total = self.max_literal, self.max_command_literals
        too_big = size > limit or self._literal_total + size > total
        streamed_before = any(lit.streamed for lit in self._literals)
        stream = (not prelogin and name == "APPEND" and self.stream_literal_above is not None
                  and size > self.stream_literal_above)
        if not synchronising:
            if too_big:  # RFC 7888 section 4: the bytes are coming; we cannot resync
                raise FatalProtocolError(errors.TEXT_FATAL_LITERAL)
            if streamed_before:  # skip it unread, then BAD
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
        if streamed_before:  # nothing may follow a streamed literal
            self._reset_command()
            raise BadCommand(tag, errors.TEXT_SYNTAX, detail="literal after a streamed literal")
        self._begin_literal(size, binary, stream=stream)
        return NeedContinuation(tag, size)

    def _begin_literal(self, size: int, binary: bool, *, stream: bool = False) -> None:
        if stream:
            self._streaming = _Literal(b"", binary, streamed=True, size=size)
            self._stream_left = size
        else:
            self._pending = (size, binary)
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
            marker = _LITERAL_MARKER_RE.search(line)
            if marker is None or not marker.group(3):
                return True
            size = int(marker.group(2))
            if size > self._largest_fatal_literal():
                raise FatalProtocolError(errors.TEXT_FATAL_LITERAL)
            self._begin_skip_literal(size)
