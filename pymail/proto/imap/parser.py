"""The grammar of IMAP commands, sans-IO (RFC 3501 section 9, RFC 9051 section 9, and the
extensions `pymail.net.imap.session` serves): `parse_command` turns one complete
command -- its line fragments and the literals between them, as the command reader
(`pymail.proto.imap.reader.CommandReader`) framed them -- into a `Command` with typed
arguments (`pymail.proto.imap.types`).

Invariants:
* Only `BadCommand` (carrying the command's tag and the reply) leaves `parse_command`;
  nesting (parentheses, NOT, OR) is bounded by ``max_depth``, numbers by the grammar's
  ranges, ID by `MAX_ID_PAIRS`.
* Quoted strings are UTF-8 without NUL, CR or LF; literal strings are decoded with
  ``surrogateescape``; a literal8 (RFC 3516) is only accepted where the grammar allows
  it, a streamed literal (``Literal.streamed``, an APPEND literal the reader handed out
  in pieces) only as APPEND's message.
"""

from __future__ import annotations

import datetime
import re
import dataclasses
from dataclasses import dataclass

from pymail.proto.imap import errors
from pymail.proto.imap.errors import BadCommand
from pymail.proto.imap.flags import canonical_flag
from pymail.proto.imap.states import ALL_COMMANDS, UID_COMMANDS
from pymail.proto.imap.types import (
    Append, Authenticate, Command, Copy, Enable, Expunge, Fetch, FetchAttribute, GetQuota,
    Id, List, Login, Lsub, MailboxName, Rename, Search, SearchKey, Section, Select, Sort, Thread,
    SequenceSet, Status, Store,
)

DEFAULT_MAX_DEPTH = 20  # parentheses, NOT and OR nesting
MAX_NUMBER = 2**32 - 1  # RFC 3501 section 9 "number"
MAX_NUMBER64 = 2**63 - 1  # RFC 9051 section 9 "number64"
MAX_ID_PAIRS = 30  # RFC 2971 section 3.3


# --- character classes (RFC 3501 section 9) ------------------------------------------
_CTL = set(range(0x00, 0x20)) | {0x7F}
_ATOM_SPECIALS = set(b'(){ %*"\\]') | _CTL  # atom-specials incl. list-wildcards, resp-specials
_ATOM_CHARS = frozenset(set(range(0x01, 0x80)) - _ATOM_SPECIALS)
_ASTRING_CHARS = _ATOM_CHARS | {ord("]")}
TAG_CHARS = _ASTRING_CHARS - {ord("+")}
_LIST_CHARS = _ATOM_CHARS | set(b"%*]")
_DIGITS = frozenset(b"0123456789")
_SEQ_CHARS = _DIGITS | set(b"*:,")
# fetch-att names run up to SP, ")", "[" or "<"
_FETCH_NAME_CHARS = _ATOM_CHARS - set(b"[<")
_BASE64_RE = re.compile(rb"\A(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")
#: literal = "{" number64 ["+"] "}" CRLF (RFC 9051 section 9, RFC 7888); literal8 "~{"
LITERAL_MARKER_RE = re.compile(rb"(~?)\{([0-9]{1,20})(\+?)\}\Z")

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
class Literal:
    """One literal of a command, as the reader framed it."""

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

    def __init__(self, fragments: list[bytes], literals: list[Literal], max_depth: int) -> None:
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

    def literal(self) -> Literal:
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
        # flag = "\" atom / flag-keyword (RFC 3501 section 9); "\*" only in PERMANENTFLAGS.
        # System flags come out in their canonical spelling: flag names are
        # case-insensitive (RFC 3501 section 2.3.2), so "\deleted" is "\Deleted".
        if self.accept(b"\\"):
            return canonical_flag("\\" + self.atom())
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


#: LIST selection options (RFC 5258 section 3.1; SPECIAL-USE RFC 6154 section 5.1;
#: REMOTE is accepted and means nothing here: there are no remote mailboxes).
LIST_SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
#: LIST return options (RFC 5258 section 3.2; SPECIAL-USE RFC 6154; STATUS RFC 5819).
LIST_RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def _parse_list(c: _Cursor) -> List:
    # list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    # (RFC 5258 section 6)
    c.sp()
    selection: tuple[str, ...] = ()
    extended = False
    if c.peek() == 0x28:
        extended = True
        selection = c.paren_list(lambda: c.atom().upper())
        # RFC 5258 section 3: an unrecognised selection option is BAD, and so is
        # RECURSIVEMATCH without another one (REMOTE does not count, section 3.1).
        if not set(selection) <= LIST_SELECTION_OPTIONS:
            raise _SyntaxError("unknown LIST selection option")
        if "RECURSIVEMATCH" in selection and not set(selection) - {"RECURSIVEMATCH", "REMOTE"}:
            raise _SyntaxError("RECURSIVEMATCH alone")
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
            if name not in LIST_RETURN_OPTIONS:  # RFC 5258 section 3: BAD
                raise _SyntaxError("unknown LIST return option")
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
    # append = "APPEND" SP mailbox 1*append-message   (RFC 3502 section 6, MULTIAPPEND)
    # append-message = append-opts SP append-data
    # append-opts = [SP flag-list] [SP date-time]; append-data = literal / literal8
    # (RFC 3501 section 6.3.11 is the one-message case; literal8 RFC 3516 section 4.4)
    c.sp()
    mailbox = c.mailbox()
    messages = [_append_message(c, mailbox)]
    while c.peek() == 0x20:  # another message (RFC 3502 section 3)
        messages.append(_append_message(c, mailbox))
    first = messages[0]
    return dataclasses.replace(first, more=tuple(messages[1:])) if len(messages) > 1 else first


def _append_message(c: _Cursor, mailbox: str) -> Append:
    """SP [flag-list SP] [date-time SP] literal, as one `Append`."""
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


_SORT_KEYS = {"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO",
              "DISPLAYFROM", "DISPLAYTO"}  # RFC 5256 section 3, RFC 5957 section 3


def _search_criteria(c: _Cursor, return_options: tuple[str, ...] | None) -> Search:
    # search-criteria = charset 1*(SP search-key) (RFC 5256 section 5: charset required)
    charset = c.astring().upper()
    keys = []
    while c.accept(b" "):
        keys.append(_search_key(c, 1))
    if not keys:
        raise _SyntaxError("expected search key")
    return Search(SearchKey("AND", tuple(keys)), charset, return_options)


def _parse_sort(c: _Cursor) -> Sort:
    # sort = ["UID" SP] "SORT" [search-return-opts] SP sort-criteria SP search-criteria
    # (RFC 5256 section 5; RETURN from RFC 5267 section 3 ESORT)
    c.sp()
    return_options = None
    if c.accept_word(b"RETURN"):
        c.sp()
        return_options = c.paren_list(lambda: c.atom().upper())
        if any(o not in _SEARCH_RETURN_OPTIONS for o in return_options):
            raise _SyntaxError("bad return option")
        c.sp()
    words = c.paren_list(lambda: c.atom().upper())
    criteria = []
    reverse = False
    for word in words:  # sort-criterion = ["REVERSE" SP] sort-key
        if word == "REVERSE" and not reverse:
            reverse = True
            continue
        if word not in _SORT_KEYS:
            raise _SyntaxError("bad sort criterion")
        criteria.append((word, reverse))
        reverse = False
    if reverse or not criteria:
        raise _SyntaxError("bad sort criteria")
    c.sp()
    return Sort(tuple(criteria), _search_criteria(c, return_options))


def _parse_thread(c: _Cursor) -> Thread:
    # thread = ["UID" SP] "THREAD" SP thread-alg SP search-criteria (RFC 5256 section 5)
    c.sp()
    algorithm = c.atom().upper()
    c.sp()
    return Thread(algorithm, _search_criteria(c, None))


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
    "SEARCH": _parse_search, "SORT": _parse_sort, "THREAD": _parse_thread,
}
assert set(_PARSERS) | {"EXPUNGE"} == ALL_COMMANDS


def parse_command(fragments: list[bytes], literals: list[Literal],
                  max_depth: int = DEFAULT_MAX_DEPTH) -> Command:
    """Parse one complete command (the reader calls this; exposed for tests).

    command = tag SP (command-any / command-auth / command-nonauth / command-select)
    CRLF (RFC 3501 section 9).  Raises BadCommand."""
    c = _Cursor(fragments, literals, max_depth)
    tag = "*"
    try:
        raw_tag = c.take(TAG_CHARS)
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
