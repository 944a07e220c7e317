"""The structure of a stored message, computed once at delivery, for IMAP FETCH.

`parse_structure` reads the raw RFC 5322 bytes of a message once and returns a
`MessageStructure`: the RFC 3501 section 7.4.2 ENVELOPE fields and a tree of `BodyPart`s
(RFC 2045/2046 MIME entities) with exact byte offsets into the raw message. The tree is
stored in the index as JSON (`MessageStructure.to_json`), so the IMAP server answers
ENVELOPE, BODYSTRUCTURE, BODY and ``BODY[section]`` / ``BODY[section.MIME]`` /
``BODY[section.TEXT]`` / ``BODY[HEADER]`` by slicing the blob, never by re-parsing it.

Invariants (the unit tests and a hypothesis fuzz test check them):

- `parse_structure` never raises. Malformed input (no header/body separator, bad or
  missing boundaries, 8-bit junk, bare LF line ends, truncated headers, absurd nesting)
  gives a best-effort structure, as a mail client would see it.
- Offsets are absolute in the outermost raw message and ordered:
  ``0 <= header_start <= body_start <= end <= len(raw)``; a child lies inside its parent's
  body; the encapsulated message of a message/rfc822 part spans exactly that part's body.
  ``raw[header_start:body_start]`` is the header block including the blank line that ends
  it (BODY[HEADER], BODY[n.MIME]); ``raw[body_start:end]`` is the body (BODY[TEXT]).
- A part of type multipart always has at least one child and no ``message``; a part of
  type message/rfc822 or message/global always has a ``message``; other parts have
  neither. To keep this true: a multipart without a boundary, or whose boundary never
  appears, is reported as text/plain (its body is all preamble); a container found past
  `MAX_DEPTH` levels of nesting, or after `MAX_PARTS` parts, is reported as
  application/octet-stream, an opaque body.
- Header values are kept raw: unfolded (RFC 5322 section 2.2.3), stripped, decoded from
  bytes as UTF-8 with ``errors="surrogateescape"`` so no byte is lost, and NOT RFC 2047
  decoded: IMAP sends them as they are. Only RFC 2231 parameter values are decoded.
- Both CRLF and bare LF line ends are accepted. Sizes and line counts are of the raw
  bytes as stored.
- Cost is linear in the size of the message: header blocks are scanned by regular
  expressions and boundaries found with `bytes.find`, never line by line in Python; the
  ``MAX_*`` limits below bound what crafted input can make the parser do (a few hundred
  milliseconds for the worst 10 MB message), and never matter for real mail.

- `parse_structure` works on ``bytes`` and, without copying the message, on an
  ``mmap.mmap`` of it (a spooled message, parsed in a thread: its pages are file pages
  the kernel can drop, not memory of the process). Only operations both types have are
  used on the raw message (``find``, indexing, slicing, regular expressions); the extra
  memory is a header field value (at most `MAX_FIELD_VALUE`) and a `_COUNT_CHUNK` slice.

Stdlib only, no I/O. The whole message never goes through the `email` package, which is
too slow for the delivery hot path.
"""

from __future__ import annotations

import binascii
import json
import mmap
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator
from urllib.parse import unquote_to_bytes

from pymail.mail.charsets import text_charset

__all__ = [
    "Address",
    "Envelope",
    "BodyPart",
    "MessageStructure",
    "parse_structure",
    "MAX_DEPTH",
    "MAX_PARTS",
    "MAX_ADDRESSES",
    "MAX_FALSE_DELIMITERS",
    "MAX_FIELD_VALUE",
    "STRUCTURE_VERSION",
]

MAX_DEPTH = 64
"""Nesting levels (multipart and message/rfc822) descended into; deeper containers are opaque."""

MAX_PARTS = 10_000
"""Body parts described per message; the rest of a message past this count is opaque."""

MAX_ADDRESSES = 1_000
"""Addresses kept per ENVELOPE address field; the rest of a longer list is left out."""

MAX_FIELD_VALUE = 65_536
"""Bytes of a header field value that are parsed; a longer value is cut."""

MAX_FALSE_DELIMITERS = 10_000
"""Lines per message that start like a boundary delimiter but are not one; past this, the
rest of the multipart being split is one opaque body (bounds the cost of crafted input)."""

STRUCTURE_VERSION = 1
"""The ``"v"`` of the JSON document; bump it (and migrate stored rows) when its shape changes."""


# --- the structure ---------------------------------------------------------------------------


@dataclass(slots=True)
class Address:
    """RFC 3501 section 7.4.2 address structure ``(name adl mailbox host)``.

    ``name`` is the display name (phrase, quotes removed, encoded-words kept raw) or the
    trailing comment of a bare addr-spec; ``adl`` the obsolete source route
    (``"@a.example,@b.example"``); ``mailbox`` the local part (quotes removed); ``host``
    the domain, ``""`` when the address has none (e.g. ``To: joe``).
    RFC 5322 groups are marked as RFC 3501 says: ``host=None`` with ``mailbox`` the group
    name starts a group, all four ``None`` ends it.
    """

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass(slots=True)
class Envelope:
    """RFC 3501 section 7.4.2 ENVELOPE. Values are the raw header values (unfolded, not
    RFC 2047-decoded). ``None`` means the header is absent, ``""`` that it is present but
    empty. ``sender`` and ``reply_to`` default to ``from_`` when absent or empty.
    The first occurrence of each header wins."""

    date: str | None = None
    subject: str | None = None
    from_: list[Address] = field(default_factory=list)
    sender: list[Address] = field(default_factory=list)
    reply_to: list[Address] = field(default_factory=list)
    to: list[Address] = field(default_factory=list)
    cc: list[Address] = field(default_factory=list)
    bcc: list[Address] = field(default_factory=list)
    in_reply_to: str | None = None
    message_id: str | None = None


@dataclass(slots=True)
class BodyPart:
    """One MIME entity (RFC 2045 section 2.4) and what BODYSTRUCTURE says about it.

    ``type``/``subtype`` are lower-case; without a usable Content-Type they are
    text/plain with ``charset=us-ascii`` (RFC 2045 section 5.2), or message/rfc822 inside
    a multipart/digest (RFC 2046 section 5.1.5). ``params`` has lower-case keys and RFC
    2231 values decoded and joined. ``encoding`` is the lower-cased
    Content-Transfer-Encoding, "7bit" by default (RFC 2045 section 6.1).
    ``disposition`` is ``(type, params)`` from Content-Disposition (RFC 2183),
    ``language`` the Content-Language tags (RFC 3282), ``location`` the Content-Location
    (RFC 2557), ``md5`` the Content-MD5 (RFC 1864), ``id`` and ``description`` the
    Content-ID and Content-Description, all raw.
    ``header_start``/``body_start``/``end`` are byte offsets in the raw message (see the
    module invariants); the body size (RFC 3501 body-fld-octets) is ``end - body_start``.
    ``lines`` is the number of text lines of the body for text/* and message/rfc822
    (RFC 3501 body-fld-lines), else 0. ``parts`` are the children of a multipart;
    ``message`` is the encapsulated message of a message/rfc822 or message/global.
    """

    type: str
    subtype: str
    params: dict[str, str]
    id: str | None
    description: str | None
    encoding: str
    disposition: tuple[str, dict[str, str]] | None
    language: list[str] | None
    location: str | None
    md5: str | None
    header_start: int
    body_start: int
    end: int
    lines: int = 0
    parts: list[BodyPart] = field(default_factory=list)
    message: MessageStructure | None = None


@dataclass(slots=True)
class MessageStructure:
    """A message (the stored one, or one encapsulated in a message/rfc822 part): its
    envelope and its top-level body part, whose ``header_start`` is where the message
    starts (0 for the stored message)."""

    envelope: Envelope
    body: BodyPart

    def to_json(self) -> str:
        """Compact JSON for the index: stable field names, ``"v"`` for the shape version.

        Keys whose value is null or an empty list/dict are left out; `from_json` puts the
        defaults back, so ``from_json(s.to_json()) == s``. The text is pure ASCII: raw
        bytes that are not UTF-8 travel as ``\\udcXX`` escapes and NUL as ``\\u0000``, so
        store it as text (PostgreSQL ``text``, not ``jsonb``, which refuses both)."""
        document = {"v": STRUCTURE_VERSION, **_message_to_dict(self)}
        return json.dumps(document, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> MessageStructure:
        """The structure stored by `to_json`. Raises ValueError for any other document."""
        try:
            document = json.loads(text)
            if document.get("v") != STRUCTURE_VERSION:
                raise ValueError(f"unsupported message structure version {document.get('v')!r}")
            return _message_from_dict(document)
        except (KeyError, TypeError, AttributeError, IndexError) as error:
            raise ValueError(f"malformed message structure: {error!r}") from None

    def find_part(self, section: Iterable[int]) -> BodyPart | None:
        """The body part an IMAP section number names (RFC 3501 section 6.4.5), or None.

        ``(1,)`` of a non-multipart message is its body; ``(n,)`` of a multipart is its
        n-th child; the numbers after a message/rfc822 part walk its encapsulated message
        the same way. ``raw[p.header_start:p.body_start]`` is then ``BODY[section.MIME]``
        and ``raw[p.body_start:p.end]`` is ``BODY[section]``; for a message/rfc822 part,
        ``p.message.body`` gives ``section.HEADER`` and ``section.TEXT``.
        """
        selected: BodyPart | None = None
        container: BodyPart | None = self.body
        for number in section:
            if container is None:
                return None
            if container.type == "multipart":
                if not 1 <= number <= len(container.parts):
                    return None
                selected = container.parts[number - 1]
            elif number == 1:
                selected = container
            else:
                return None
            if selected.message is not None:
                container = selected.message.body
            elif selected.type == "multipart":
                container = selected
            else:
                container = None
        return selected


# --- decoding bodies (IMAP BINARY, SEARCH BODY/TEXT) ---------------------------------------------

#: Content-Transfer-Encodings that leave the octets as they are (RFC 2045 section 6.2).
IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})


class UnknownTransferEncoding(ValueError):
    """A Content-Transfer-Encoding pymail cannot decode (IMAP ``[UNKNOWN-CTE]``)."""


def decode_transfer_encoding(data: bytes, encoding: str) -> bytes:
    """`data` with its Content-Transfer-Encoding removed (RFC 2045 section 6).

    base64 ignores characters outside the alphabet and tolerates missing padding, as
    mail readers do (RFC 2045 section 6.8); quoted-printable drops soft line breaks and
    keeps hard ones (section 6.7).  Raises `UnknownTransferEncoding` for anything else
    but the identity encodings."""
    encoding = encoding.lower()
    if encoding in IDENTITY_ENCODINGS:
        return data
    if encoding == "base64":
        text = re.sub(rb"[^A-Za-z0-9+/]", b"", data)
        text = text[: len(text) - len(text) % 4] if len(text) % 4 == 1 else text
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4)) if text else b""
    if encoding == "quoted-printable":
        return decode_quoted_printable(data)
    raise UnknownTransferEncoding(encoding)


# RFC 2045 section 6.7 rule 3: "any TAB (HT) or SPACE characters on an encoded line
# MUST thus be followed on that line by a printable character"; trailing ones were
# added by a transport and are deleted when decoding.  Blanks before a bare CR go too:
# binascii.a2b_qp ends a line at a CR as at a LF ("=\r" is a soft break), and the
# streaming decoder (pymail.proto.imap.sections) must give the same octets.
_QP_TRAILING_BLANKS = re.compile(rb"[ \t]+(?=[\r\n])")
_QP_FINAL_BLANKS = re.compile(rb"[ \t]+\Z")


def decode_quoted_printable(data: bytes, *, at_end: bool = True) -> bytes:
    """Quoted-printable `data` decoded (RFC 2045 section 6.7): trailing blanks of each
    line deleted (rule 3), so ``=`` followed by blanks at the end of a line is a soft
    line break (rule 5); hard line breaks kept.  `at_end`: the data ends with the body
    (its last line's trailing blanks are trailing too), not in the middle of a line."""
    data = _QP_TRAILING_BLANKS.sub(b"", data)
    if at_end:
        data = _QP_FINAL_BLANKS.sub(b"", data)
    return binascii.a2b_qp(data)


def iter_text(raw: bytes, message: MessageStructure, *, headers: bool) -> Iterator[str]:
    """The searchable text of a message (IMAP SEARCH BODY and TEXT, RFC 3501 section
    6.4.4): each text/* part decoded from its transfer encoding and charset, recursing
    into encapsulated messages; with `headers`, each header block too (raw, unfolded).
    Undecodable bytes become U+FFFD; parts in unknown encodings are searched raw; the
    charset is `pymail.mail.charsets.text_charset`'s.  The streamed equivalent, in
    bounded memory, is `pymail.proto.imap.search`."""
    if headers:
        yield raw[message.body.header_start : message.body.body_start].decode("utf-8", "replace")
    stack = [message.body]
    while stack:
        part = stack.pop(0)
        if part.parts:
            stack[0:0] = part.parts
            continue
        if part.message is not None:
            yield from iter_text(raw, part.message, headers=headers)
            continue
        if part.type != "text":
            continue
        body = raw[part.body_start : part.end]
        try:
            body = decode_transfer_encoding(body, part.encoding)
        except (UnknownTransferEncoding, binascii.Error):
            pass
        # an unknown (or unusable) charset: UTF-8 is the best guess today
        yield body.decode(text_charset(part.params.get("charset", "us-ascii")), "replace")


# --- parsing: entry point ----------------------------------------------------------------------


def parse_structure(raw: bytes | mmap.mmap) -> MessageStructure:
    """The structure of the raw message ``raw`` (bytes, an mmap of it, or any bytes-like
    object, which is copied).

    Never raises: malformed input (no header/body separator, bad boundaries, missing
    close-delimiter, 8-bit junk, bare LF line ends, truncated headers, absurd nesting) gives
    a best-effort structure. Bounded: containers past `MAX_DEPTH` levels and past
    `MAX_PARTS` parts are opaque bodies."""
    if not isinstance(raw, (bytes, mmap.mmap)):
        raw = bytes(raw)
    try:
        return _parse_message(raw, 0, len(raw), 0, _Budget(MAX_PARTS - 1))
    except Exception:  # pragma: no cover - a bug; the fuzz tests call _parse_message directly
        # Delivery must not fail because of a parser bug: describe the message as one
        # opaque body so it stays readable.
        return _opaque_message(raw)


def _starts_with(raw: bytes, prefix: bytes, pos: int, end: int) -> bool:
    """``raw.startswith(prefix, pos, end)``, spelled so that an mmap can answer it too."""
    stop = pos + len(prefix)
    return stop <= end and raw.find(prefix, pos, stop) == pos


#: Octets counted per slice of an mmap (which has no ``count``).
_COUNT_CHUNK = 1 << 20


def _count_newlines(raw: bytes, start: int, end: int) -> int:
    if isinstance(raw, bytes):
        return raw.count(b"\n", start, end)
    return sum(raw[i : min(i + _COUNT_CHUNK, end)].count(b"\n") for i in range(start, end, _COUNT_CHUNK))


def _opaque_message(raw: bytes) -> MessageStructure:
    body = BodyPart("application", "octet-stream", {}, None, None, "7bit", None, None, None, None, 0, 0, len(raw))
    return MessageStructure(Envelope(), body)


class _Budget:
    """What is left of the per-message limits: body parts to describe (`MAX_PARTS` in all)
    and false delimiter lines to step over (`MAX_FALSE_DELIMITERS`)."""

    __slots__ = ("parts_left", "false_delimiters_left")

    def __init__(self, parts_left: int) -> None:
        self.parts_left = parts_left
        self.false_delimiters_left = MAX_FALSE_DELIMITERS


def _parse_message(raw: bytes, start: int, end: int, depth: int, budget: _Budget) -> MessageStructure:
    """The message occupying ``raw[start:end]`` (its top-level part is already counted)."""
    fields, body_start = _read_header(raw, start, end)
    envelope = _envelope_from_fields(fields)
    body = _body_part(raw, start, body_start, end, fields, depth, budget, in_digest=False)
    return MessageStructure(envelope, body)


# --- headers (RFC 5322 section 2.2) ------------------------------------------------------------

# RFC 5322 section 2.2 and 3.6.8: a header field is a name (1*ftext, ftext = %d33-57 /
# %d59-126) and ":", leniently with WSP before the ":" (obs-optional), then the value, which
# runs on over the folded lines that start with WSP. The block of fields starts at an
# entity start; matched with possessive quantifiers, it cannot backtrack.
_FIELD_BLOCK = re.compile(rb"(?:[!-9;-~]++[ \t]*+:[^\n]*+(?:\n[ \t][^\n]*+)*+(?:\n|\Z))*+")
# The header fields anybody here looks at; others are never decoded. The first field of a
# block is matched without the line break before it.
_WANTED = (
    b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to", b"message-id",
    b"content-type", b"content-transfer-encoding", b"content-id", b"content-description",
    b"content-disposition", b"content-language", b"content-location", b"content-md5",
)  # fmt: skip
_FIELD_VALUE = rb"[ \t]*+:([^\n]*+(?:\n[ \t][^\n]*+)*+)"
_WANTED_NAMES = rb"(" + b"|".join(sorted(_WANTED, key=len, reverse=True)) + rb")" + _FIELD_VALUE
_FIRST_WANTED_FIELD = re.compile(_WANTED_NAMES, re.IGNORECASE)
_NEXT_WANTED_FIELD = re.compile(rb"\n" + _WANTED_NAMES, re.IGNORECASE)
# For a header with absurdly many wanted fields (e.g. a million "To:" lines): after
# _FIELD_MATCHES_LOOP of them, each missing name is looked up by its own search.
_FIELD_MATCHES_LOOP = 1_000
_NEXT_FIELD_NAMED = {name: re.compile(rb"\n(" + name + rb")" + _FIELD_VALUE, re.IGNORECASE) for name in _WANTED}
_FOLD = re.compile(rb"\r?\n")


def _read_header(raw: bytes, start: int, limit: int) -> tuple[dict[bytes, str], int]:
    """The wanted header fields of the entity at ``raw[start:limit]`` and where its body starts.

    Returns ``({lower-case name: unfolded raw value}, body_start)``, first occurrence of a
    name winning. The header ends after the first empty line (RFC 5322 section 2.1);
    leniently, also just before the first line that is neither a field nor a continuation
    (that line starts the body), or at ``limit`` when no empty line comes. All scanning is
    done by regular expressions, so a huge header costs no Python loop per line.
    """
    block_end = _FIELD_BLOCK.match(raw, start, limit).end()  # type: ignore[union-attr]  # matches ""
    if _starts_with(raw, b"\n", block_end, limit):  # the empty line that ends the header
        body_start = block_end + 1
    elif _starts_with(raw, b"\r\n", block_end, limit) or (block_end == limit - 1 and raw[block_end] == 13):
        body_start = min(block_end + 2, limit)
    else:  # no empty line: the body starts at the first line that is not a field
        body_start = block_end
    found: dict[bytes, tuple[int, int]] = {}  # name -> span of its value
    if block_end > start:
        first = _FIRST_WANTED_FIELD.match(raw, start, block_end)
        matches = _NEXT_WANTED_FIELD.finditer(raw, start, block_end)
        if first:
            found[first.group(1).lower()] = first.span(2)
        for count, match in enumerate(matches):
            if count == _FIELD_MATCHES_LOOP:
                for name, pattern in _NEXT_FIELD_NAMED.items():
                    if name not in found and (named := pattern.search(raw, match.start(), block_end)):
                        found[name] = named.span(2)
                break
            found.setdefault(match.group(1).lower(), match.span(2))
    # RFC 5322 section 2.2.3: unfolding removes each line break, keeps the WSP after it.
    fields = {
        name: _text(_FOLD.sub(b"", raw[begin : min(stop, begin + MAX_FIELD_VALUE)]).strip(b" \t\r\n"))
        for name, (begin, stop) in found.items()
    }
    return fields, body_start


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


# --- Content-* fields (RFC 2045, RFC 2231, RFC 2183) ------------------------------------------

_TEXT_PLAIN_DEFAULT = {"charset": "us-ascii"}
# RFC 2045 section 5.1: token := 1*<any (US-ASCII) CHAR except SPACE, CTLs, or tspecials>
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
# One piece of a structured value: a quoted-string (possibly unterminated), a comment
# opener, a ";" or a run of anything else.
_PARAMETER_PIECE = re.compile(r'"(?:[^"\\]|\\.)*\\?(?:"|\Z)|\(|;|[^";(]+', re.S)
_QUOTED_PAIR = re.compile(r"\\(.)", re.S)
_QUOTED_STRING = re.compile(r'"((?:[^"\\]|\\.)*)', re.S)


def _skip_comment(value: str, pos: int) -> int:
    """Index after the RFC 5322 comment opening at ``value[pos]`` (they nest), or the end."""
    depth = 0
    n = len(value)
    while pos < n:
        char = value[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return pos + 1
        pos += 1
    return n


def _split_semicolons(value: str) -> list[str]:
    """The ``;``-separated pieces of a structured value, comments removed, quoted strings
    kept as written (RFC 2045 section 5.1 parameter lists)."""
    if '"' not in value and "(" not in value:
        return value.split(";")  # the common case, no quoting and no comments
    pieces: list[str] = []
    current: list[str] = []
    pos, n = 0, len(value)
    while pos < n:
        match = _PARAMETER_PIECE.match(value, pos)
        if match is None:  # cannot happen: the pattern matches any character
            break
        piece = match.group()
        if piece == "(":
            current.append(" ")
            pos = _skip_comment(value, pos)
            continue
        if piece == ";":
            pieces.append("".join(current))
            current = []
        else:
            current.append(piece)
        pos = match.end()
    pieces.append("".join(current))
    return pieces


def _unquote(value: str) -> str:
    """The content of the quoted-string that starts ``value``, backslash escapes resolved;
    an unterminated one runs to the end, anything after the closing quote is dropped."""
    match = _QUOTED_STRING.match(value)
    return _QUOTED_PAIR.sub(r"\1", match.group(1)) if match else value


def _parse_parameters(pieces: list[str]) -> dict[str, str]:
    """Parameters (RFC 2045 section 5.1) with RFC 2231 continuations and charsets decoded.

    Keys are lower-cased; the first occurrence of a name wins; an RFC 2231 value wins over
    a plain value of the same name."""
    plain: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    for piece in pieces:
        name, equals, value = piece.partition("=")
        name = name.strip().lower()
        if not equals or not name:
            continue
        value = value.strip()
        if value.startswith('"'):
            value = _unquote(value)
        star = name.find("*")
        if star > 0:
            # RFC 2231 section 3 and 4: name*=, name*0=, name*0*=, name*1=, name*1*= ...
            base, rest = name[:star], name[star + 1 :]
            encoded = rest == "" or rest.endswith("*")
            number = rest[:-1] if rest.endswith("*") else rest
            if number == "" and rest == "":
                number = "0"
            if number.isascii() and number.isdigit() and len(number) <= 4:
                sections.setdefault(base, {}).setdefault(int(number), (value, encoded))
                continue
        plain.setdefault(name, value)
    for base, numbered in sections.items():
        plain[base] = _join_rfc2231(numbered)
    return plain


def _join_rfc2231(numbered: dict[int, tuple[str, bool]]) -> str:
    """One value from RFC 2231 sections: ordered, percent-decoded, charset applied."""
    charset = ""
    data = bytearray()
    for number in sorted(numbered):
        value, encoded = numbered[number]
        if encoded:
            if number == min(numbered):
                # RFC 2231 section 4: charset'language'value, only in the first section.
                head = value.split("'", 2)
                if len(head) == 3:
                    charset, value = head[0].strip(), head[2]
            data += unquote_to_bytes(value.encode("utf-8", "surrogateescape"))
        else:
            data += value.encode("utf-8", "surrogateescape")
    if charset:
        try:
            return bytes(data).decode(charset, "replace")
        except (LookupError, ValueError, TypeError):
            pass  # unknown or unusable charset: fall through to UTF-8
        return bytes(data).decode("utf-8", "replace")
    return bytes(data).decode("utf-8", "surrogateescape")


def _content_type(value: str | None, in_digest: bool) -> tuple[str, str, dict[str, str]]:
    """(type, subtype, params) from a Content-Type value, with the RFC defaults."""
    if value is not None:
        pieces = _split_semicolons(value)
        media_type, slash, subtype = pieces[0].partition("/")
        media_type, subtype = media_type.strip().lower(), subtype.strip().lower()
        if slash and _TOKEN.fullmatch(media_type) and _TOKEN.fullmatch(subtype):
            return media_type, subtype, _parse_parameters(pieces[1:])
    # RFC 2045 section 5.2 (absent or invalid); RFC 2046 section 5.1.5 (digest).
    if in_digest:
        return "message", "rfc822", {}
    return "text", "plain", dict(_TEXT_PLAIN_DEFAULT)


def _content_disposition(value: str | None) -> tuple[str, dict[str, str]] | None:
    """RFC 2183 disposition-type (lower-cased) and parameters."""
    if value is None:
        return None
    pieces = _split_semicolons(value)
    disposition = pieces[0].strip().lower()
    if not disposition:
        return None
    return disposition, _parse_parameters(pieces[1:])


def _content_language(value: str | None) -> list[str] | None:
    """RFC 3282 Content-Language: comma-separated tags, comments removed."""
    if value is None:
        return None
    tags = [tag.strip() for tag in " ".join(_split_semicolons(value)).split(",")]
    return [tag for tag in tags if tag] or None


def _single_token(value: str | None, default: str) -> str:
    if value is None:
        return default
    token = _split_semicolons(value)[0].strip().lower()
    return token or default


def _raw_or_none(value: str | None) -> str | None:
    return value if value else None


# --- body parts and multipart (RFC 2046) -------------------------------------------------------


def _body_part(
    raw: bytes,
    header_start: int,
    body_start: int,
    end: int,
    fields: dict[bytes, str],
    depth: int,
    budget: _Budget,
    in_digest: bool,
) -> BodyPart:
    """The part whose header ``fields`` were read from ``raw[header_start:body_start]`` and
    whose body is ``raw[body_start:end]``; containers are descended into."""
    media_type, subtype, params = _content_type(fields.get(b"content-type"), in_digest)
    part = BodyPart(
        type=media_type,
        subtype=subtype,
        params=params,
        id=_raw_or_none(fields.get(b"content-id")),
        description=_raw_or_none(fields.get(b"content-description")),
        encoding=_single_token(fields.get(b"content-transfer-encoding"), "7bit"),
        disposition=_content_disposition(fields.get(b"content-disposition")),
        language=_content_language(fields.get(b"content-language")),
        location=_raw_or_none(fields.get(b"content-location")),
        md5=_raw_or_none(fields.get(b"content-md5")),
        header_start=header_start,
        body_start=body_start,
        end=end,
    )
    opaque = depth >= MAX_DEPTH or budget.parts_left <= 0
    if media_type == "multipart":
        boundary = params.get("boundary", "").rstrip(" \t")
        children = (
            []
            if not boundary or opaque
            else _multipart_children(raw, body_start, end, boundary, subtype == "digest", depth + 1, budget)
        )
        if children:
            part.parts = children
        elif opaque and boundary:
            part.type, part.subtype = "application", "octet-stream"
        else:  # no boundary, or it never appears: the body is all preamble
            part.type, part.subtype = "text", "plain"
    elif media_type == "message" and subtype in ("rfc822", "global"):
        if opaque:
            part.type, part.subtype = "application", "octet-stream"
        else:
            # RFC 2046 section 5.2.1: the body is a complete message. Parsed whatever the
            # Content-Transfer-Encoding says, so the invariant "has a message" holds.
            budget.parts_left -= 1
            part.message = _parse_message(raw, body_start, end, depth + 1, budget)
    if part.type == "text" or part.message is not None:
        part.lines = _count_lines(raw, body_start, end)
    return part


def _count_lines(raw: bytes, start: int, end: int) -> int:
    """Text lines in ``raw[start:end]``: line ends, plus a last line without one."""
    if end <= start:
        return 0
    return _count_newlines(raw, start, end) + (raw[end - 1] != 10)


def _multipart_children(
    raw: bytes, body_start: int, end: int, boundary: str, is_digest: bool, depth: int, budget: _Budget
) -> list[BodyPart]:
    """The body parts between the delimiter lines of ``boundary`` in ``raw[body_start:end]``."""
    children = []
    for part_start, part_end in _part_ranges(raw, body_start, end, boundary.encode("utf-8", "surrogateescape"), budget):
        fields, part_body_start = _read_header(raw, part_start, part_end)
        children.append(_body_part(raw, part_start, part_body_start, part_end, fields, depth, budget, is_digest))
    return children


def _part_ranges(raw: bytes, start: int, end: int, boundary: bytes, budget: _Budget) -> list[tuple[int, int]]:
    """``(start, end)`` of each body part of a multipart body ``raw[start:end]``.

    RFC 2046 section 5.1.1: a delimiter line is ``"--" boundary`` at the start of a line,
    then optional transport padding (LWSP) and the line end; the close-delimiter has
    ``"--"`` after the boundary. The line break before a delimiter belongs to the
    delimiter, not to the part. The preamble and the epilogue are not parts. Without a
    close-delimiter the last part runs to ``end``. Each range takes one part from
    ``budget``; when it runs out, the last range is stretched to ``end`` (opaque rest).
    """
    dash_boundary = b"--" + boundary
    ranges: list[tuple[int, int]] = []
    delimiter = _find_delimiter(raw, start, start, end, dash_boundary, budget)
    while delimiter is not None and not delimiter[2]:
        part_start = delimiter[1]
        delimiter = _find_delimiter(raw, start, part_start, end, dash_boundary, budget)
        if delimiter is None:
            part_end = end  # missing close-delimiter
        else:
            part_end = delimiter[0]
            if part_end > part_start and raw[part_end - 1] == 10:  # LF
                part_end -= 1
                if part_end > part_start and raw[part_end - 1] == 13:  # CR
                    part_end -= 1
        budget.parts_left -= 1
        if budget.parts_left <= 0 and delimiter is not None and not delimiter[2]:
            part_end, delimiter = end, None  # out of parts: the rest is one opaque body
        ranges.append((part_start, part_end))
    return ranges


_TRANSPORT_PADDING = re.compile(rb"[ \t]*+")  # RFC 2046 section 5.1.1: LWSP after a delimiter


def _find_delimiter(
    raw: bytes, body_start: int, pos: int, end: int, dash_boundary: bytes, budget: _Budget
) -> tuple[int, int, bool] | None:
    """The next delimiter line at or after ``pos``: ``(line start, next line start, is close)``,
    or None when there is none, or when the false delimiter budget has run out."""
    size = len(dash_boundary)
    while True:
        if pos == body_start and _starts_with(raw, dash_boundary, pos, end):
            line_start = pos
        else:
            found = raw.find(b"\n" + dash_boundary, max(pos - 1, body_start), end)
            if found < 0:
                return None
            line_start = found + 1
        after = line_start + size
        is_close = _starts_with(raw, b"--", after, end)
        if is_close:
            after += 2
        after = _TRANSPORT_PADDING.match(raw, after, end).end()  # type: ignore[union-attr]  # matches ""
        if after >= end:
            return line_start, end, is_close
        if raw[after] == 10:
            return line_start, after + 1, is_close
        if raw[after] == 13 and (after + 1 == end or raw[after + 1] == 10):
            return line_start, min(after + 2, end), is_close
        # "--boundaryX": not a delimiter, look further
        budget.false_delimiters_left -= 1
        if budget.false_delimiters_left < 0:
            return None
        pos = line_start + 1


# --- envelope and address lists (RFC 5322 section 3.4, RFC 3501 section 7.4.2) -----------------

_ADDRESS_TOKEN = re.compile(
    r'(?P<ws>\s+)'
    r'|"(?P<qs>(?:[^"\\]|\\.)*\\?)(?:"|\Z)'
    r"|(?P<lit>\[(?:[^\]\\]|\\.)*\\?(?:\]|\Z))"
    r"|(?P<special>[<>@,;:.(])"
    r'|(?P<atom>[^\s"\[\]<>@,;:.()\\]+)'
    r"|(?P<other>.)",
    re.S,
)

# A token is (kind, text); kind is "ws", "comment", "qs", "lit", "atom" or the special
# character itself ("<", ">", "@", ",", ";", ":", ".").
_Token = tuple[str, str]
_BLANK = ("ws", "comment")


def _tokenize_addresses(value: str) -> Iterator[_Token]:
    """The tokens of an address list, lazily (the caller may stop at `MAX_ADDRESSES`)."""
    pos, n = 0, len(value)
    while pos < n:
        match = _ADDRESS_TOKEN.match(value, pos)
        if match is None:  # cannot happen: "other" matches any character
            break
        kind = match.lastgroup or "other"
        if kind == "special":
            char = match.group()
            if char == "(":
                after = _skip_comment(value, pos)
                yield ("comment", value[pos + 1 : after - 1 if value[after - 1 : after] == ")" else after])
                pos = after
                continue
            yield (char, char)
        elif kind == "qs":
            yield ("qs", _QUOTED_PAIR.sub(r"\1", match.group("qs")))
        elif kind == "other":
            yield ("atom", match.group())
        else:
            yield (kind, match.group())
        pos = match.end()


def _phrase(tokens: list[_Token]) -> str:
    """A display name / group name: words as written, runs of blanks made one space."""
    out: list[str] = []
    for kind, text in tokens:
        if kind in _BLANK:
            if out and out[-1] != " ":
                out.append(" ")
        else:
            out.append(text)
    return "".join(out).strip()


def _local_part(tokens: list[_Token]) -> str:
    """An RFC 5322 local-part (obs-local-part allows CFWS around the dots): words and
    dots joined; blanks between two words, which no valid local part has, become one
    space so that ``To: John Smith`` stays readable."""
    out: list[str] = []
    blank = False
    for kind, text in tokens:
        if kind in _BLANK:
            blank = True
            continue
        if blank and out and out[-1] != "." and kind != ".":
            out.append(" ")
        out.append(text)
        blank = False
    return "".join(out)


def _addr_spec(tokens: list[_Token]) -> tuple[str, str]:
    """(mailbox, host) of ``local-part "@" domain``; host is "" when there is no "@"."""
    at = max((i for i, token in enumerate(tokens) if token[0] == "@"), default=-1)
    if at < 0:
        return _local_part(tokens), ""
    host = "".join(text for kind, text in tokens[at + 1 :] if kind not in _BLANK)
    return _local_part(tokens[:at]), host


def _angle_addr(tokens: list[_Token], name: str | None) -> Address:
    """RFC 5322 angle-addr content, with the obsolete route (RFC 5322 section 4.4)."""
    words = [i for i, token in enumerate(tokens) if token[0] not in _BLANK]
    adl = None
    if words and tokens[words[0]][0] == "@":
        colon = next((i for i in words if tokens[i][0] == ":"), -1)
        if colon > 0:
            adl = "".join(text for kind, text in tokens[:colon] if kind not in _BLANK)
            tokens = tokens[colon + 1 :]
    mailbox, host = _addr_spec(tokens)
    return Address(name, adl, mailbox, host)


def _parse_address_list(value: str) -> list[Address]:
    """RFC 5322 section 3.4 address-list / mailbox-list, leniently, in RFC 3501 form.

    Handles display names (quoted or not), comments (a trailing comment is the name of a
    bare addr-spec), groups (``undisclosed-recipients:;``), obsolete routes, addresses
    without a domain; empty elements (``a@b,,c@d``) are skipped; an unclosed group or
    angle bracket is closed at the end of the value. At most about `MAX_ADDRESSES`
    entries are returned."""
    tokens = _tokenize_addresses(value)
    addresses: list[Address] = []
    in_group = False
    element: list[_Token] = []
    angle: list[_Token] | None = None

    def flush() -> None:
        nonlocal element, angle
        if angle is not None:
            addresses.append(_angle_addr(angle, _phrase(element) or None))
        elif any(kind not in _BLANK for kind, _ in element):
            comments = [text.strip() for kind, text in element if kind == "comment" and text.strip()]
            mailbox, host = _addr_spec(element)
            addresses.append(Address(comments[-1] if comments else None, None, mailbox, host))
        element, angle = [], None

    for token in tokens:
        if len(addresses) >= MAX_ADDRESSES:
            element, angle = [], None
            break
        kind = token[0]
        if kind == "<":
            inside = []
            for inner in tokens:
                if inner[0] == ">":
                    break
                inside.append(inner)
            if angle is None:  # a second <...> in one address is ignored
                angle = inside
        elif kind == ",":
            flush()
        elif kind == ";":
            flush()
            if in_group:
                addresses.append(Address(None, None, None, None))  # end of group
                in_group = False
        elif kind == ":" and angle is None and not in_group:
            addresses.append(Address(None, None, _phrase(element), None))  # start of group
            element = []
            in_group = True
        elif kind != ">":
            element.append(token)
    flush()
    if in_group:
        addresses.append(Address(None, None, None, None))
    return addresses


def _envelope_from_fields(fields: dict[bytes, str]) -> Envelope:
    """RFC 3501 section 7.4.2 from the first occurrence of each header field."""

    def addresses(name: bytes) -> list[Address]:
        value = fields.get(name)
        return _parse_address_list(value) if value else []

    from_ = addresses(b"from")
    return Envelope(
        date=fields.get(b"date"),
        subject=fields.get(b"subject"),
        from_=from_,
        # "If the Sender or Reply-To lines are absent in the [RFC-2822] header, or are
        # present but empty, the server sets the corresponding member of the envelope to
        # be the same value as the from member."
        sender=addresses(b"sender") or list(from_),
        reply_to=addresses(b"reply-to") or list(from_),
        to=addresses(b"to"),
        cc=addresses(b"cc"),
        bcc=addresses(b"bcc"),
        in_reply_to=fields.get(b"in-reply-to"),
        message_id=fields.get(b"message-id"),
    )


# --- JSON ----------------------------------------------------------------------------------------

# RFC 3501 ENVELOPE order; JSON key -> Envelope attribute.
_ENVELOPE_KEYS = (
    ("date", "date"), ("subject", "subject"), ("from", "from_"), ("sender", "sender"), ("reply_to", "reply_to"),
    ("to", "to"), ("cc", "cc"), ("bcc", "bcc"), ("in_reply_to", "in_reply_to"), ("message_id", "message_id"),
)  # fmt: skip
_ENVELOPE_LISTS = frozenset({"from_", "sender", "reply_to", "to", "cc", "bcc"})
_PART_TEXT = ("id", "description", "location", "md5")


def _message_to_dict(message: MessageStructure) -> dict[str, Any]:
    envelope = message.envelope
    out: dict[str, Any] = {}
    for key, attribute in _ENVELOPE_KEYS:
        value = getattr(envelope, attribute)
        if attribute in _ENVELOPE_LISTS:
            if value:
                out[key] = [[a.name, a.adl, a.mailbox, a.host] for a in value]
        elif value is not None:
            out[key] = value
    return {"envelope": out, "body": _part_to_dict(message.body)}


def _part_to_dict(part: BodyPart) -> dict[str, Any]:
    out: dict[str, Any] = {"type": part.type, "subtype": part.subtype}
    if part.params:
        out["params"] = part.params
    for key in _PART_TEXT:
        value = getattr(part, key)
        if value is not None:
            out[key] = value
    out["encoding"] = part.encoding
    if part.disposition is not None:
        out["disposition"] = [part.disposition[0], part.disposition[1]]
    if part.language is not None:
        out["language"] = part.language
    out["header_start"] = part.header_start
    out["body_start"] = part.body_start
    out["end"] = part.end
    out["lines"] = part.lines
    if part.parts:
        out["parts"] = [_part_to_dict(child) for child in part.parts]
    if part.message is not None:
        out["message"] = _message_to_dict(part.message)
    return out


def _message_from_dict(document: dict[str, Any]) -> MessageStructure:
    data = document["envelope"]
    values: dict[str, Any] = {}
    for key, attribute in _ENVELOPE_KEYS:
        if attribute in _ENVELOPE_LISTS:
            values[attribute] = [Address(*entry) for entry in data.get(key, [])]
        else:
            values[attribute] = data.get(key)
    envelope = Envelope(**values)
    return MessageStructure(envelope, _part_from_dict(document["body"]))


def _part_from_dict(data: dict[str, Any]) -> BodyPart:
    disposition = data.get("disposition")
    message = data.get("message")
    return BodyPart(
        type=data["type"],
        subtype=data["subtype"],
        params=dict(data.get("params", {})),
        id=data.get("id"),
        description=data.get("description"),
        encoding=data["encoding"],
        disposition=(disposition[0], dict(disposition[1])) if disposition is not None else None,
        language=data.get("language"),
        location=data.get("location"),
        md5=data.get("md5"),
        header_start=data["header_start"],
        body_start=data["body_start"],
        end=data["end"],
        lines=data.get("lines", 0),
        parts=[_part_from_dict(child) for child in data.get("parts", [])],
        message=_message_from_dict(message) if message is not None else None,
    )
