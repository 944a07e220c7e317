"""IMAP response encoder, sans-IO: Python values in, response bytes out (RFC 3501 section 7,
RFC 9051 section 7).

What lives here: the value encoding of RFC 3501 section 4 (NIL, numbers, quoted strings,
literals, atoms/astrings, parenthesised lists, flag lists), modified UTF-7 mailbox names
(RFC 3501 section 5.1.3), response codes (section 7.1 and extensions), status responses
(tagged, untagged, continuation) and the untagged data responses (CAPABILITY, LIST/LSUB,
STATUS, EXISTS, RECENT, EXPUNGE, VANISHED, FLAGS, SEARCH, ESEARCH, ENABLED, ID, NAMESPACE,
QUOTA, QUOTAROOT, FETCH).  ENVELOPE, BODYSTRUCTURE and ``BODY[section]`` contents are in
``bodystructure``, which builds on the primitives here.

Invariants:

* No I/O, stdlib only; every function is pure and returns ``bytes``.  Each complete
  response ends with exactly one CRLF, and the only CR or LF bytes elsewhere are inside
  literals (``{n}\\r\\n`` and the n bytes after it).
* A string is sent quoted only when RFC 3501 allows it: 7-bit TEXT-CHARs, no NUL, no
  CR/LF, at most `MAX_QUOTED` bytes; with ``utf8=True`` (the client ENABLEd UTF8=ACCEPT or
  IMAP4rev2, RFC 6855 / RFC 9051 section 4.3) valid UTF-8 may be quoted too.  Anything
  else becomes a literal, so any ``str`` (also one carrying ``surrogateescape``d raw
  bytes from the store) or ``bytes`` value can be sent without loss.
* Free text after a status (resp-text) never breaks the line: CR/LF/NUL become spaces,
  and without ``utf8`` non-ASCII characters become ``?``.
* Programming errors (a negative number, a value of an unknown type, a flag that is not
  an atom) raise ``ValueError``/``TypeError``; message data never makes the encoder raise.
"""

from __future__ import annotations

import base64
import datetime
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from pymail.proto.imap.types import FetchAttribute, Section

CRLF = b"\r\n"

MAX_QUOTED = 1024
"""Longest string (in bytes) sent as a quoted string; longer ones go as literals."""

TEXT_COMPLETED = "Completed"
"""resp-text used when a caller passes an empty text (RFC 3501 requires 1*TEXT-CHAR)."""

STATUS_OK = "OK"
STATUS_NO = "NO"
STATUS_BAD = "BAD"
STATUS_BYE = "BYE"
STATUS_PREAUTH = "PREAUTH"
_TAGGED_STATUSES = frozenset({STATUS_OK, STATUS_NO, STATUS_BAD})
_UNTAGGED_STATUSES = _TAGGED_STATUSES | {STATUS_BYE, STATUS_PREAUTH}


# --- value types (RFC 3501 section 4) ---------------------------------------------------------


@dataclass(frozen=True)
class Atom:
    """Sent verbatim: an atom, a flag (``\\Seen``), a capability or a sequence set.
    The caller guarantees the syntax (flags are checked by `encode_flag_list`)."""

    text: str


@dataclass(frozen=True)
class Literal:
    """Always sent as a literal ``{n}\\r\\n<data>`` (message and section contents)."""

    data: bytes


@dataclass(frozen=True)
class Raw:
    """Bytes already encoded (e.g. an ENVELOPE from `bodystructure.encode_envelope`)."""

    data: bytes


# RFC 3501 section 9: ATOM-CHAR = <any CHAR except atom-specials>;
# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM = re.compile(r"[!#$&'+-Z^-z|}~]+")  # excludes ( ) { SP CTL % * " \ ]
_ASTRING = re.compile(r"[!#$&'+-Z^-z|}~\]]+")  # ASTRING-CHAR = ATOM-CHAR / resp-specials
# flag = "\Answered" / ... / flag-keyword / flag-extension; "\*" only in PERMANENTFLAGS.
_FLAG = re.compile(r"\\?[!#$&'+-Z^-z|}~]+|\\\*")
# A quotable byte string: TEXT-CHAR without NUL (RFC 3501: CHAR = %x01-7F, no CR/LF).
_QUOTABLE_ASCII = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_QUOTE_SPECIALS = re.compile(rb'(["\\])')


def _to_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def _quotable(data: bytes, utf8: bool) -> bool:
    if len(data) > MAX_QUOTED or _QUOTABLE_ASCII.fullmatch(data) is None and not utf8:
        return False
    if b"\r" in data or b"\n" in data or b"\x00" in data:
        return False
    if data.isascii():
        return True
    # RFC 9051 section 9 / RFC 6855 section 3: QUOTED-CHAR =/ UTF8-2 / UTF8-3 / UTF8-4
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_quoted(data: bytes) -> bytes:
    """``"..."`` with ``"`` and ``\\`` escaped (RFC 3501 section 4.3); no checks."""
    return b'"' + _QUOTE_SPECIALS.sub(rb"\\\1", data) + b'"'


def encode_literal(data: bytes) -> bytes:
    """``{n}\\r\\n`` and the n bytes (RFC 3501 section 4.3)."""
    return b"{%d}\r\n" % len(data) + data


def encode_string(value: str | bytes, *, utf8: bool = False) -> bytes:
    """An IMAP string: quoted when allowed (see the module invariants), else a literal.

    ``str`` values are encoded as UTF-8 with ``surrogateescape``, so raw bytes kept by
    the store come back out unchanged."""
    data = _to_bytes(value)
    return encode_quoted(data) if _quotable(data, utf8) else encode_literal(data)


def encode_nstring(value: str | bytes | None, *, utf8: bool = False) -> bytes:
    """nstring = string / nil (RFC 3501 section 9)."""
    return b"NIL" if value is None else encode_string(value, utf8=utf8)


def encode_astring(value: str, *, utf8: bool = False) -> bytes:
    """astring = 1*ASTRING-CHAR / string: bare when every character allows it (and it is
    not ``NIL``, which a client would read as nil), else a string."""
    if _ASTRING.fullmatch(value) and value.upper() != "NIL":
        return value.encode("ascii")
    return encode_string(value, utf8=utf8)


def encode_number(value: int) -> bytes:
    """number / number64 (RFC 3501 section 4.2, RFC 9051 section 9)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not an IMAP number: {value!r}")
    if value < 0:
        raise ValueError(f"IMAP numbers are unsigned: {value}")
    return b"%d" % value


def encode_value(value: object, *, utf8: bool = False) -> bytes:
    """Any value: None → NIL, int → number, str/bytes → string, `Atom`/`Literal`/`Raw`
    as they say, list/tuple → parenthesised list (RFC 3501 section 4.4)."""
    if value is None:
        return b"NIL"
    if isinstance(value, int):
        return encode_number(value)
    if isinstance(value, (str, bytes)):
        return encode_string(value, utf8=utf8)
    if isinstance(value, Atom):
        return value.text.encode("ascii")
    if isinstance(value, Literal):
        return encode_literal(value.data)
    if isinstance(value, Raw):
        return value.data
    if isinstance(value, (list, tuple)):
        return encode_list(value, utf8=utf8)
    raise TypeError(f"cannot encode {type(value).__name__} as an IMAP value")


def encode_list(values: Iterable[object], *, utf8: bool = False) -> bytes:
    """``(a b c)``; an empty iterable gives ``()``."""
    return b"(" + b" ".join(encode_value(v, utf8=utf8) for v in values) + b")"


def encode_flag_list(flags: Iterable[str]) -> bytes:
    """flag-list = "(" [flag *(SP flag)] ")" (RFC 3501 section 9), flags as given.

    Raises ValueError for a flag that is not ``\\atom``, an atom, or ``\\*``."""
    out = []
    for flag in flags:
        if not _FLAG.fullmatch(flag):
            raise ValueError(f"not an IMAP flag: {flag!r}")
        out.append(flag.encode("ascii"))
    return b"(" + b" ".join(out) + b")"


def encode_sequence_set(numbers: Iterable[int]) -> bytes:
    """A sequence-set in the order given, runs of +1 steps compressed: ``[1,2,3,5]`` →
    ``1:3,5`` (RFC 3501 section 9).  Callers sort first where order does not matter;
    COPYUID keeps source and destination in matching order (RFC 4315 section 3)."""
    pieces: list[bytes] = []
    start = previous = None
    for number in numbers:
        encode_number(number)
        if previous is not None and number == previous + 1:
            previous = number
            continue
        if start is not None:
            pieces.append(b"%d" % start if start == previous else b"%d:%d" % (start, previous))
        start = previous = number
    if start is not None:
        pieces.append(b"%d" % start if start == previous else b"%d:%d" % (start, previous))
    if not pieces:
        raise ValueError("a sequence set needs at least one number")
    return b",".join(pieces)


def encode_text(text: str, *, utf8: bool = False) -> bytes:
    """resp-text's text: one line, ASCII (``?`` for others) unless ``utf8``."""
    text = text.replace("\r", " ").replace("\n", " ").replace("\x00", " ")
    if utf8:
        return text.encode("utf-8", "replace")
    return text.encode("ascii", "replace")


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def encode_internal_date(moment: datetime.datetime) -> bytes:
    """date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time SP zone
    DQUOTE (RFC 3501 section 9), e.g. ``" 7-Jul-1996 02:44:25 -0700"``; a naive datetime
    is taken as UTC."""
    offset = moment.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (
        f'"{moment.day:2d}-{_MONTHS[moment.month - 1]}-{moment.year:04d} '
        f'{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


# --- mailbox names: modified UTF-7 (RFC 3501 section 5.1.3) -------------------------------------

_MB64_ALPHABET = re.compile(r"[A-Za-z0-9+,]*")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")


def encode_modified_utf7(name: str) -> str:
    """The modified UTF-7 form of a mailbox name (RFC 3501 section 5.1.3).

    Printable US-ASCII except ``&`` stands for itself, ``&`` is ``&-``, every run of other
    characters is ``&`` + modified BASE64 (``,`` for ``/``, no padding) of its UTF-16BE
    (surrogate pairs for non-BMP characters) + ``-``.  Lone surrogates (raw bytes kept
    by ``surrogateescape``) cannot be represented and raise UnicodeEncodeError."""
    if _PRINTABLE_ASCII.fullmatch(name):  # the common case, without a loop per character
        return name.replace("&", "&-")
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.append("&" + base64.b64encode(data).decode("ascii").rstrip("=").replace("/", ",") + "-")
            run.clear()

    for char in name:
        if "\x20" <= char <= "\x7e":
            flush()
            out.append("&-" if char == "&" else char)
        else:
            run.append(char)
    flush()
    return "".join(out)


def decode_modified_utf7(name: str) -> str:
    """The mailbox name a client sent in modified UTF-7, strictly: raises ValueError for
    anything `encode_modified_utf7` would not have produced (8-bit or control characters,
    an unterminated or empty shift, a bad BASE64 alphabet or padding bits, an odd byte
    count, unpaired surrogates, encoded printable ASCII, two adjacent shifts).  So
    ``encode(decode(s)) == s`` for every accepted ``s``."""
    out: list[str] = []
    pos, n = 0, len(name)
    previous_was_shift = False
    while pos < n:
        char = name[pos]
        if char != "&":
            if not "\x20" <= char <= "\x7e":
                raise ValueError("mailbox name has a character outside printable ASCII")
            out.append(char)
            pos += 1
            previous_was_shift = False
            continue
        end = name.find("-", pos + 1)
        if end < 0:
            raise ValueError("unterminated '&' shift in mailbox name")
        encoded = name[pos + 1 : end]
        pos = end + 1
        if not encoded:
            out.append("&")
            previous_was_shift = False
            continue
        if previous_was_shift:
            raise ValueError("adjacent '&' shifts in mailbox name")
        if not _MB64_ALPHABET.fullmatch(encoded) or len(encoded) % 4 == 1:
            raise ValueError("bad modified BASE64 in mailbox name")
        padded = encoded.replace(",", "/") + "=" * (-len(encoded) % 4)
        data = base64.b64decode(padded, validate=True)
        if base64.b64encode(data).decode("ascii").rstrip("=") != encoded.replace(",", "/"):
            raise ValueError("non-zero padding bits in mailbox name")
        if len(data) % 2:
            raise ValueError("odd UTF-16 byte count in mailbox name")
        try:
            text = data.decode("utf-16-be")
        except UnicodeDecodeError:
            raise ValueError("bad UTF-16 in mailbox name") from None
        if any("\x20" <= c <= "\x7e" for c in text):
            raise ValueError("printable ASCII must not be encoded in a mailbox name")
        out.append(text)
        previous_was_shift = True
    return "".join(out)


def encode_mailbox(name: str, *, utf8: bool = False) -> bytes:
    """A mailbox name as a string: modified UTF-7 (RFC 3501 section 5.1.3), or UTF-8 when
    the client enabled UTF8=ACCEPT / IMAP4rev2 (RFC 6855 section 3, RFC 9051 section 5.1).
    Always quoted or literal, never a bare atom, which some clients misread.  A name
    with raw bytes (lone surrogates) that modified UTF-7 cannot carry goes as a literal
    of those bytes."""
    if not utf8:
        try:
            name = encode_modified_utf7(name)
        except UnicodeEncodeError:
            pass
    return encode_string(name, utf8=utf8)


# --- response codes (RFC 3501 section 7.1, RFC 5530, RFC 4315, RFC 7162, ...) -----------------


@dataclass(frozen=True)
class ResponseCode:
    """resp-text-code: ``[NAME]`` or ``[NAME args]``; ``args`` is already encoded."""

    name: str
    args: bytes = b""

    def encode(self) -> bytes:
        name = self.name.encode("ascii")
        return b"[" + name + (b" " + self.args if self.args else b"") + b"]"


# Codes without arguments.
ALERT = ResponseCode("ALERT")
PARSE = ResponseCode("PARSE")
READ_ONLY = ResponseCode("READ-ONLY")
READ_WRITE = ResponseCode("READ-WRITE")
TRYCREATE = ResponseCode("TRYCREATE")
UIDNOTSTICKY = ResponseCode("UIDNOTSTICKY")  # RFC 4315 section 3
NOMODSEQ = ResponseCode("NOMODSEQ")  # RFC 7162 section 3.1.2.2
CLOSED = ResponseCode("CLOSED")  # RFC 7162 section 3.2.11
TOOBIG = ResponseCode("TOOBIG")  # RFC 4469 section 4.2
# RFC 5530 section 3:
UNAVAILABLE = ResponseCode("UNAVAILABLE")
AUTHENTICATIONFAILED = ResponseCode("AUTHENTICATIONFAILED")
AUTHORIZATIONFAILED = ResponseCode("AUTHORIZATIONFAILED")
EXPIRED = ResponseCode("EXPIRED")
PRIVACYREQUIRED = ResponseCode("PRIVACYREQUIRED")
CONTACTADMIN = ResponseCode("CONTACTADMIN")
NOPERM = ResponseCode("NOPERM")
INUSE = ResponseCode("INUSE")
EXPUNGEISSUED = ResponseCode("EXPUNGEISSUED")
CORRUPTION = ResponseCode("CORRUPTION")
SERVERBUG = ResponseCode("SERVERBUG")
CLIENTBUG = ResponseCode("CLIENTBUG")
CANNOT = ResponseCode("CANNOT")
LIMIT = ResponseCode("LIMIT")
OVERQUOTA = ResponseCode("OVERQUOTA")
ALREADYEXISTS = ResponseCode("ALREADYEXISTS")
NONEXISTENT = ResponseCode("NONEXISTENT")
UNKNOWN_CTE = ResponseCode("UNKNOWN-CTE")  # RFC 3516 section 4.3


def code_uidnext(uid_next: int) -> ResponseCode:
    return ResponseCode("UIDNEXT", encode_number(uid_next))


def code_uidvalidity(uid_validity: int) -> ResponseCode:
    return ResponseCode("UIDVALIDITY", encode_number(uid_validity))


def code_unseen(sequence_number: int) -> ResponseCode:
    return ResponseCode("UNSEEN", encode_number(sequence_number))


def code_highestmodseq(modseq: int) -> ResponseCode:
    """RFC 7162 section 3.1.2.1."""
    return ResponseCode("HIGHESTMODSEQ", encode_number(modseq))


def code_appendlimit(limit: int) -> ResponseCode:
    """RFC 7889 section 3 (also a STATUS item)."""
    return ResponseCode("APPENDLIMIT", encode_number(limit))


def code_permanentflags(flags: Iterable[str]) -> ResponseCode:
    """RFC 3501 section 7.1; ``\\*`` allowed."""
    return ResponseCode("PERMANENTFLAGS", encode_flag_list(flags))


def code_capability(capabilities: Iterable[str]) -> ResponseCode:
    return ResponseCode("CAPABILITY", " ".join(capabilities).encode("ascii"))


def code_appenduid(uid_validity: int, uids: Sequence[int]) -> ResponseCode:
    """``[APPENDUID 38505 3955]`` (RFC 4315 section 3; a set for MULTIAPPEND)."""
    return ResponseCode("APPENDUID", encode_number(uid_validity) + b" " + encode_sequence_set(uids))


def code_copyuid(uid_validity: int, source_uids: Sequence[int], destination_uids: Sequence[int]) -> ResponseCode:
    """``[COPYUID 38505 304,319:320 3956:3958]`` (RFC 4315 section 3): the n-th source UID
    became the n-th destination UID."""
    if len(source_uids) != len(destination_uids):
        raise ValueError("COPYUID needs as many source as destination UIDs")
    return ResponseCode(
        "COPYUID",
        encode_number(uid_validity) + b" " + encode_sequence_set(source_uids) + b" " + encode_sequence_set(destination_uids),
    )


def code_modified(numbers: Sequence[int]) -> ResponseCode:
    """``[MODIFIED 7,9]``: messages that failed UNCHANGEDSINCE (RFC 7162 section 3.1.3)."""
    return ResponseCode("MODIFIED", encode_sequence_set(numbers))


def code_badcharset(charsets: Iterable[str] = ()) -> ResponseCode:
    """``[BADCHARSET (UTF-8)]`` (RFC 3501 section 7.1)."""
    names = [encode_astring(charset) for charset in charsets]
    return ResponseCode("BADCHARSET", b"(" + b" ".join(names) + b")" if names else b"")


# --- status responses (RFC 3501 section 7.1) ------------------------------------------------------


def _resp_text(code: ResponseCode | None, text: str, utf8: bool) -> bytes:
    # resp-text = ["[" resp-text-code "]" SP] text
    body = encode_text(text or TEXT_COMPLETED, utf8=utf8)
    return (code.encode() + b" " if code is not None else b"") + body


def tagged_status(tag: str, status: str, text: str, code: ResponseCode | None = None, *, utf8: bool = False) -> bytes:
    """``<tag> OK|NO|BAD [code] text\\r\\n`` (RFC 3501 sections 7.1.1-7.1.3)."""
    if status not in _TAGGED_STATUSES:
        raise ValueError(f"not a tagged status: {status!r}")
    return tag.encode("ascii") + b" " + status.encode("ascii") + b" " + _resp_text(code, text, utf8) + CRLF


def untagged_status(status: str, text: str, code: ResponseCode | None = None, *, utf8: bool = False) -> bytes:
    """``* OK|NO|BAD|BYE|PREAUTH [code] text\\r\\n`` (RFC 3501 sections 7.1.1-7.1.5)."""
    if status not in _UNTAGGED_STATUSES:
        raise ValueError(f"not an untagged status: {status!r}")
    return b"* " + status.encode("ascii") + b" " + _resp_text(code, text, utf8) + CRLF


def continuation(text: str = "", *, utf8: bool = False) -> bytes:
    """``+ text\\r\\n`` (RFC 3501 section 7.5): before a literal, during IDLE."""
    return b"+ " + encode_text(text, utf8=utf8) + CRLF


def continuation_data(base64_challenge: bytes) -> bytes:
    """``+ <base64>\\r\\n``: a SASL challenge (RFC 3501 section 6.2.2); ``+ \\r\\n`` for an
    empty one."""
    return b"+ " + base64_challenge + CRLF


# --- untagged data responses (RFC 3501 section 7.2-7.4, extensions) ------------------------------


def capability_response(capabilities: Iterable[str]) -> bytes:
    """``* CAPABILITY IMAP4rev1 ...`` (RFC 3501 section 7.2.1)."""
    return b"* CAPABILITY " + " ".join(capabilities).encode("ascii") + CRLF


def list_response(
    attributes: Iterable[str],
    delimiter: str | None,
    mailbox: str,
    *,
    extended: Sequence[tuple[str, object]] = (),
    command: str = "LIST",
    utf8: bool = False,
) -> bytes:
    """``* LIST (\\HasNoChildren) "/" "INBOX"`` (RFC 3501 section 7.2.2, RFC 9051 7.3.1).

    ``mailbox`` is the Unicode name (see `encode_mailbox`); ``delimiter`` None is NIL
    (flat namespace).  ``extended`` adds RFC 5258 mbox-list-extended items, e.g.
    ``[("CHILDINFO", ["SUBSCRIBED"])]`` → ``("CHILDINFO" ("SUBSCRIBED"))`` or
    ``("OLDNAME", [name])``; under LIST-STATUS (RFC 5819) each LIST is followed by a
    `status_response`.  ``command="LSUB"`` gives LSUB."""
    out = b"* " + command.encode("ascii") + b" " + encode_flag_list(attributes) + b" "
    out += b"NIL" if delimiter is None else encode_quoted(delimiter.encode("ascii"))
    out += b" " + encode_mailbox(mailbox, utf8=utf8)
    if extended:
        items = []
        for tag, value in extended:
            if tag.upper() == "OLDNAME" and isinstance(value, (list, tuple)):
                value = [Raw(encode_mailbox(v, utf8=utf8)) if isinstance(v, str) else v for v in value]
            items.append(encode_string(tag) + b" " + encode_value(value, utf8=utf8))
        out += b" (" + b" ".join(items) + b")"
    return out + CRLF


def status_response(mailbox: str, items: Iterable[tuple[str, int]] | Mapping[str, int], *, utf8: bool = False) -> bytes:
    """``* STATUS "INBOX" (MESSAGES 3 UIDNEXT 5)`` (RFC 3501 section 7.2.4), items in order."""
    pairs = items.items() if isinstance(items, Mapping) else items
    body = b" ".join(name.encode("ascii") + b" " + encode_number(value) for name, value in pairs)
    return b"* STATUS " + encode_mailbox(mailbox, utf8=utf8) + b" (" + body + b")" + CRLF


def exists_response(count: int) -> bytes:
    """``* 23 EXISTS`` (RFC 3501 section 7.3.1)."""
    return b"* " + encode_number(count) + b" EXISTS" + CRLF


def recent_response(count: int) -> bytes:
    """``* 5 RECENT`` (RFC 3501 section 7.3.2; not sent under IMAP4rev2)."""
    return b"* " + encode_number(count) + b" RECENT" + CRLF


def expunge_response(sequence_number: int) -> bytes:
    """``* 44 EXPUNGE`` (RFC 3501 section 7.4.1)."""
    return b"* " + encode_number(sequence_number) + b" EXPUNGE" + CRLF


def vanished_response(uids: Sequence[int], *, earlier: bool = False) -> bytes:
    """``* VANISHED (EARLIER) 300:310,405`` (RFC 7162 section 3.2.10)."""
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + encode_sequence_set(uids) + CRLF


def flags_response(flags: Iterable[str]) -> bytes:
    """``* FLAGS (\\Answered \\Flagged ...)`` (RFC 3501 section 7.2.6)."""
    return b"* FLAGS " + encode_flag_list(flags) + CRLF


def search_response(numbers: Iterable[int], *, modseq: int | None = None) -> bytes:
    """``* SEARCH 2 84 882`` (RFC 3501 section 7.2.5), ``* SEARCH`` when nothing matched,
    `` (MODSEQ n)`` appended for a MODSEQ search (RFC 7162 section 3.1.5)."""
    numbers = list(numbers)
    # joined once, in C: a mailbox of 200,000 matches must not hold the event loop
    text = " ".join(map(str, numbers)).encode("ascii")
    if numbers and (set(map(type, numbers)) != {int} or not text.replace(b" ", b"").isdigit()):
        text = b" ".join(encode_number(number) for number in numbers)  # raises the error
    out = b"* SEARCH " + text if numbers else b"* SEARCH"
    if modseq is not None:
        out += b" (MODSEQ " + encode_number(modseq) + b")"
    return out + CRLF


def esearch_response(
    tag: str | None, results: Iterable[tuple[str, int | Sequence[int]]], *, uid: bool = False
) -> bytes:
    """``* ESEARCH (TAG "A282") UID MIN 2 COUNT 3`` (RFC 4731 section 3.1, RFC 9051 7.3.4).

    ``results`` are (return option, value) in order: MIN/MAX/COUNT/MODSEQ take a number,
    ALL a list of numbers (sent as a sequence set); ALL is left out when empty."""
    out = b"* ESEARCH"
    if tag is not None:
        out += b" (TAG " + encode_string(tag) + b")"
    if uid:
        out += b" UID"
    for name, value in results:
        if isinstance(value, int):
            out += b" " + name.encode("ascii") + b" " + encode_number(value)
        elif value:
            out += b" " + name.encode("ascii") + b" " + encode_sequence_set(value)
    return out + CRLF


def enabled_response(capabilities: Iterable[str]) -> bytes:
    """``* ENABLED CONDSTORE`` (RFC 5161 section 3.2)."""
    return b"* ENABLED" + b"".join(b" " + c.encode("ascii") for c in capabilities) + CRLF


def id_response(parameters: Iterable[tuple[str, str | None]] | None) -> bytes:
    """``* ID ("name" "pymail")`` or ``* ID NIL`` (RFC 2971 section 3.2)."""
    if parameters is None:
        return b"* ID NIL" + CRLF
    values: list[object] = []
    for field, value in parameters:
        values += [field, value]
    return b"* ID " + (encode_list(values) if values else b"NIL") + CRLF


def namespace_response(
    personal: Sequence[tuple[str, str | None]] | None,
    other_users: Sequence[tuple[str, str | None]] | None,
    shared: Sequence[tuple[str, str | None]] | None,
    *,
    utf8: bool = False,
) -> bytes:
    """``* NAMESPACE (("" "/")) NIL NIL`` (RFC 2342 section 5, RFC 9051 section 7.3.5);
    each namespace is None or (prefix, delimiter) pairs."""

    def one(namespace: Sequence[tuple[str, str | None]] | None) -> bytes:
        if not namespace:
            return b"NIL"
        return b"(" + b"".join(
            b"(" + encode_mailbox(prefix, utf8=utf8) + b" "
            + (b"NIL" if delimiter is None else encode_quoted(delimiter.encode("ascii"))) + b")"
            for prefix, delimiter in namespace
        ) + b")"

    return b"* NAMESPACE " + one(personal) + b" " + one(other_users) + b" " + one(shared) + CRLF


def quota_response(root: str, resources: Iterable[tuple[str, int, int]]) -> bytes:
    """``* QUOTA "" (STORAGE 10 512)`` (RFC 9208 section 5.1): (resource, usage, limit)."""
    body = b" ".join(
        name.encode("ascii") + b" " + encode_number(usage) + b" " + encode_number(limit)
        for name, usage, limit in resources
    )
    return b"* QUOTA " + encode_string(root) + b" (" + body + b")" + CRLF


def quotaroot_response(mailbox: str, roots: Iterable[str], *, utf8: bool = False) -> bytes:
    """``* QUOTAROOT INBOX ""`` (RFC 9208 section 5.2)."""
    return b"* QUOTAROOT " + encode_mailbox(mailbox, utf8=utf8) + b"".join(b" " + encode_string(r) for r in roots) + CRLF


# --- FETCH (RFC 3501 section 7.4.2) ---------------------------------------------------------------


def fetch_response(sequence_number: int, items: Iterable[tuple[str, bytes]]) -> bytes:
    """``* 12 FETCH (UID 5 FLAGS (\\Seen) ...)``; ``items`` are (item name, encoded value)
    pairs in the order to send, e.g. ``("UID", encode_number(5))``,
    ``("FLAGS", encode_flag_list(flags))``, ``("MODSEQ", encode_modseq(12))``,
    ``("ENVELOPE", bodystructure.encode_envelope(...))``, or what
    `bodystructure.fetch_body_item` returns."""
    body = b" ".join(name.encode("ascii") + b" " + value for name, value in items)
    return b"* " + encode_number(sequence_number) + b" FETCH (" + body + b")" + CRLF


def encode_modseq(modseq: int) -> bytes:
    """``(12)``: the MODSEQ fetch item value (RFC 7162 section 3.1.4.1)."""
    return b"(" + encode_number(modseq) + b")"


def section_spec_text(section: Section) -> str:
    """The text inside ``[...]`` as the server echoes it (RFC 3501 section 7.4.2):
    ``1.2.HEADER.FIELDS (FROM TO)``; field names upper-cased, as astrings."""
    pieces = [str(n) for n in section.part]
    if section.text:
        pieces.append(section.text)
    text = ".".join(pieces)
    if section.header_fields:
        names = b" ".join(encode_astring(name.upper()) for name in section.header_fields)
        text += " (" + names.decode("utf-8", "surrogateescape") + ")"
    return text


def fetch_item_name(attribute: FetchAttribute) -> str:
    """The name a FETCH response gives the value of ``attribute``: ``BODY.PEEK[...]`` is
    answered as ``BODY[...]``, a partial ``<origin.length>`` as ``<origin>`` (RFC 3501
    section 7.4.2); ``BINARY[...]`` likewise (RFC 3516 section 4.2)."""
    if attribute.section is None:
        return attribute.name
    name = f"{attribute.name}[{section_spec_text(attribute.section)}]"
    if attribute.partial is not None:
        name += f"<{attribute.partial[0]}>"
    return name
