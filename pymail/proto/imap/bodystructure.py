"""ENVELOPE, BODY/BODYSTRUCTURE and ``BODY[section]`` contents for FETCH, sans-IO
(RFC 3501 sections 6.4.5 and 7.4.2, RFC 9051 sections 6.4.5 and 7.5.2).

Everything is computed from the `pymail.mail.mime.MessageStructure` stored at delivery
and the raw message bytes: the message is never parsed again.

Invariants:

* Pure functions, stdlib plus `pymail.mail.mime` only; output is bytes in the value
  encoding of `responses` (so the quoting/literal rules and ``utf8`` there apply).
* `encode_envelope` / `encode_body_structure` never raise for any structure that
  `parse_structure` can produce, and their output is one balanced parenthesised value.
* Media type, subtype, transfer encoding, parameter names and disposition type are sent
  upper-case, as in the RFC 3501 examples (they are case-insensitive, RFC 2045 section
  5.1); parameter values, ids, descriptions and envelope fields are sent as stored.
* A text/* part without a charset parameter is described with ``("CHARSET" "us-ascii")``,
  the RFC 2045 section 5.2 default, as other servers do (clients pick the decoder from it).
* Without ``utf8``, a parameter value with non-ASCII characters (mime.py decodes RFC
  2231) is sent RFC 2231-encoded again (``"FILENAME*" "utf-8''%C3%A9t%C3%A9.pdf"``), so
  it stays 7-bit for IMAP4rev1 clients; with ``utf8`` it is sent as UTF-8.
* `section_bytes` returns exact slices of the raw message (HEADER.FIELDS(.NOT) being the
  only filtered form): ``BODY[]`` is the whole message; HEADER/TEXT/HEADER.FIELDS of a
  part number exist only for message/rfc822 (and message/global) parts.
"""

from __future__ import annotations

import re
from urllib.parse import quote_from_bytes

from pymail.mail.mime import (
    Address, BodyPart, Envelope, MessageStructure, UnknownTransferEncoding,
    decode_transfer_encoding,
)
from pymail.proto.imap.responses import (
    encode_literal, encode_nstring, encode_number, encode_string, fetch_item_name,
    section_spec_text,
)
from pymail.proto.imap.types import FetchAttribute, Section

__all__ = [
    "encode_envelope", "encode_address_list", "encode_body_structure", "section_bytes",
    "filter_header_fields", "apply_partial", "fetch_body_item", "binary_section",
    "fetch_binary_item", "encode_literal8",
]


# --- ENVELOPE (RFC 3501 section 7.4.2) ------------------------------------------------------------


def _address(address: Address, utf8: bool) -> bytes:
    # address = "(" addr-name SP addr-adl SP addr-mailbox SP addr-host ")"; group start is
    # (NIL NIL "group" NIL), group end (NIL NIL NIL NIL) -- kept as mime.py marks them.
    return b"(" + b" ".join(
        encode_nstring(value, utf8=utf8) for value in (address.name, address.adl, address.mailbox, address.host)
    ) + b")"


def encode_address_list(addresses: list[Address], *, utf8: bool = False) -> bytes:
    """``((name adl mailbox host) ...)``, or NIL for an empty list (RFC 3501 env-from etc.)."""
    if not addresses:
        return b"NIL"
    return b"(" + b"".join(_address(a, utf8) for a in addresses) + b")"


def encode_envelope(envelope: Envelope, *, utf8: bool = False) -> bytes:
    """``(date subject from sender reply-to to cc bcc in-reply-to message-id)`` in the
    RFC 3501 section 7.4.2 order; absent fields and empty address lists are NIL."""
    fields = [
        encode_nstring(envelope.date, utf8=utf8),
        encode_nstring(envelope.subject, utf8=utf8),
        *(
            encode_address_list(addresses, utf8=utf8)
            for addresses in (envelope.from_, envelope.sender, envelope.reply_to, envelope.to, envelope.cc, envelope.bcc)
        ),
        encode_nstring(envelope.in_reply_to, utf8=utf8),
        encode_nstring(envelope.message_id, utf8=utf8),
    ]
    return b"(" + b" ".join(fields) + b")"


# --- BODY / BODYSTRUCTURE (RFC 3501 section 7.4.2, body grammar in section 9) ----------------------


def _parameter(name: str, value: str, utf8: bool) -> bytes:
    """One name/value pair of body-fld-param; non-ASCII re-encoded per RFC 2231 unless utf8."""
    name = name.upper()
    if not utf8 and not value.isascii():
        data = value.encode("utf-8", "surrogateescape")
        try:
            data.decode("utf-8")
            charset = "utf-8"
        except UnicodeDecodeError:
            charset = "unknown-8bit"  # RFC 1428: raw bytes of an unknown charset
        return encode_string(name + "*") + b" " + encode_string(f"{charset}''" + quote_from_bytes(data, safe=""))
    return encode_string(name, utf8=utf8) + b" " + encode_string(value, utf8=utf8)


def _parameters(params: dict[str, str], utf8: bool) -> bytes:
    """body-fld-param = "(" string SP string *(SP string SP string) ")" / nil."""
    if not params:
        return b"NIL"
    return b"(" + b" ".join(_parameter(name, value, utf8) for name, value in params.items()) + b")"


def _disposition(part: BodyPart, utf8: bool) -> bytes:
    """body-fld-dsp = "(" string SP body-fld-param ")" / nil (RFC 2183)."""
    if part.disposition is None:
        return b"NIL"
    kind, params = part.disposition
    return b"(" + encode_string(kind.upper(), utf8=utf8) + b" " + _parameters(params, utf8) + b")"


def _language(part: BodyPart, utf8: bool) -> bytes:
    """body-fld-lang = nstring / "(" string *(SP string) ")" (RFC 3282 tags)."""
    if not part.language:
        return b"NIL"
    if len(part.language) == 1:
        return encode_string(part.language[0], utf8=utf8)
    return b"(" + b" ".join(encode_string(tag, utf8=utf8) for tag in part.language) + b")"


def _extension_tail(part: BodyPart, utf8: bool) -> bytes:
    # SP body-fld-dsp SP body-fld-lang SP body-fld-loc -- shared by body-ext-1part and
    # body-ext-mpart; all of them sent, so a client never has to guess what a short list means.
    return b" " + _disposition(part, utf8) + b" " + _language(part, utf8) + b" " + encode_nstring(part.location, utf8=utf8)


def encode_body_structure(part: BodyPart, *, extensible: bool = True, utf8: bool = False) -> bytes:
    """BODYSTRUCTURE (``extensible=True``) or BODY (False) of ``part`` and its children.

    * multipart: ``(child child ... "SUBTYPE" params dsp lang loc)`` (body-type-mpart;
      the children are not separated by spaces);
    * message/rfc822 (and message/global, RFC 6532): body-fields, then the nested
      ENVELOPE, BODY(STRUCTURE) and the body's line count (body-type-msg);
    * text/*: body-fields then the line count (body-type-text);
    * others: body-fields only (body-type-basic);
    with, for BODYSTRUCTURE, body-ext-1part ``md5 dsp lang loc`` after single parts.
    body-fields = params id description encoding octets, octets being the size of the
    body as stored."""
    if part.type == "multipart" and part.parts:
        out = b"(" + b"".join(encode_body_structure(child, extensible=extensible, utf8=utf8) for child in part.parts)
        out += b" " + encode_string(part.subtype.upper(), utf8=utf8)
        if extensible:
            out += b" " + _parameters(part.params, utf8) + _extension_tail(part, utf8)
        return out + b")"
    params = part.params
    if part.type == "text" and "charset" not in params:
        params = {"charset": "us-ascii", **params}  # RFC 2045 section 5.2 default, stated
    fields = [
        encode_string(part.type.upper(), utf8=utf8),
        encode_string(part.subtype.upper(), utf8=utf8),
        _parameters(params, utf8),
        encode_nstring(part.id, utf8=utf8),
        encode_nstring(part.description, utf8=utf8),
        encode_string(part.encoding.upper(), utf8=utf8),
        encode_number(max(part.end - part.body_start, 0)),
    ]
    if part.message is not None:
        fields.append(encode_envelope(part.message.envelope, utf8=utf8))
        fields.append(encode_body_structure(part.message.body, extensible=extensible, utf8=utf8))
        fields.append(encode_number(part.lines))
    elif part.type == "text":
        fields.append(encode_number(part.lines))
    out = b"(" + b" ".join(fields)
    if extensible:
        out += b" " + encode_nstring(part.md5, utf8=utf8) + _extension_tail(part, utf8)
    return out + b")"


# --- BODY[section] contents (RFC 3501 section 6.4.5) ---------------------------------------------

_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")  # RFC 5322 section 3.6.8, obs WSP before ":"


def filter_header_fields(header: bytes, names: tuple[str, ...], *, exclude: bool = False) -> bytes:
    """HEADER.FIELDS (``exclude=False``) or HEADER.FIELDS.NOT of a header block.

    ``header`` is a header block as stored (``raw[header_start:body_start]``, the blank
    line included when there is one).  A field is its first line and the continuation
    lines after it (those that start with SP or HTAB); its name is matched
    case-insensitively against ``names``.  Kept fields are returned byte for byte in
    their order, followed by the block's blank line (``\\r\\n`` when the block has none),
    as RFC 3501 section 6.4.5 requires.  Lines that are not fields are never kept by
    HEADER.FIELDS and kept by HEADER.FIELDS.NOT."""
    wanted = {name.encode("utf-8", "surrogateescape").lower() for name in names}
    lines = [match.group() for match in _LINE.finditer(header)]
    blank = b"\r\n"
    if lines and lines[-1] in (b"\r\n", b"\n"):
        blank = lines.pop()
    out: list[bytes] = []
    keep = False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if keep:
                out.append(line)
            continue
        match = _FIELD_NAME.match(line)
        matched = match is not None and match.group(1).lower() in wanted
        keep = matched != exclude
        if keep:
            if not line.endswith(b"\n"):
                line += b"\r\n"  # a last field without a line end (header without a body)
            out.append(line)
    out.append(blank)
    return b"".join(out)


def section_bytes(raw: bytes, structure: MessageStructure, section: Section) -> bytes | None:
    """The exact bytes of ``BODY[section]`` (without the partial), or None when the
    section names no part of this message.

    * ``[]`` the whole message; ``[HEADER]``, ``[TEXT]``, ``[HEADER.FIELDS (...)]``,
      ``[HEADER.FIELDS.NOT (...)]`` of the message;
    * ``[1.2]`` the body of that part (for a message/rfc822 part: the whole encapsulated
      message); ``[1.2.MIME]`` its MIME header block;
    * ``[2.HEADER]``, ``[2.TEXT]``, ``[2.HEADER.FIELDS ...]`` of a message/rfc822 part 2:
      the header / body of the encapsulated message; None for other part types."""
    root = structure.body
    if not section.part:
        if section.text is None:
            return raw[root.header_start : root.end]
        header_start, body_start, end = root.header_start, root.body_start, root.end
    else:
        part = structure.find_part(section.part)
        if part is None:
            return None
        if section.text is None:
            return raw[part.body_start : part.end]
        if section.text == "MIME":
            return raw[part.header_start : part.body_start]
        if part.message is None:
            return None
        inner = part.message.body
        header_start, body_start, end = inner.header_start, inner.body_start, inner.end
    if section.text == "TEXT":
        return raw[body_start:end]
    header = raw[header_start:body_start]
    if section.text == "HEADER":
        return header
    if section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        return filter_header_fields(header, section.header_fields, exclude=section.text == "HEADER.FIELDS.NOT")
    return None


def apply_partial(data: bytes, partial: tuple[int, int] | None) -> bytes:
    """``<origin.length>`` (RFC 3501 section 6.4.5): at most ``length`` bytes from
    ``origin``; an origin at or past the end gives ``b""``."""
    if partial is None:
        return data
    origin, length = partial
    return data[origin : origin + length]


# RFC 3501 section 6.4.5: RFC822 = BODY[], RFC822.HEADER = BODY.PEEK[HEADER],
# RFC822.TEXT = BODY[TEXT]; the response keeps the RFC822* name.
_RFC822_SECTIONS = {"RFC822": Section(), "RFC822.HEADER": Section(text="HEADER"), "RFC822.TEXT": Section(text="TEXT")}


def fetch_body_item(
    attribute: FetchAttribute, raw: bytes, structure: MessageStructure, *, utf8: bool = False
) -> tuple[str, bytes]:
    """(item name, encoded value) for `responses.fetch_response`, for the attributes that
    need the message: ENVELOPE, BODYSTRUCTURE, BODY, BODY[...]/BODY.PEEK[...] with
    partials, RFC822, RFC822.HEADER, RFC822.TEXT.  Section contents go as literals;
    a section naming no part is NIL.  Setting ``\\Seen`` for non-PEEK fetches is the
    session's job.  Raises ValueError for other attributes (UID, FLAGS ... come from
    the index, BINARY is not implemented here)."""
    name = attribute.name
    if name == "ENVELOPE":
        return name, encode_envelope(structure.envelope, utf8=utf8)
    if name == "BODYSTRUCTURE":
        return name, encode_body_structure(structure.body, extensible=True, utf8=utf8)
    if name == "BODY" and attribute.section is None:
        return name, encode_body_structure(structure.body, extensible=False, utf8=utf8)
    if name in _RFC822_SECTIONS:
        data = section_bytes(raw, structure, _RFC822_SECTIONS[name])
        return name, b"NIL" if data is None else encode_literal(data)
    if name == "BODY" and attribute.section is not None:
        data = section_bytes(raw, structure, attribute.section)
        item = fetch_item_name(attribute)
        if data is None:
            return item, b"NIL"
        return item, encode_literal(apply_partial(data, attribute.partial))
    raise ValueError(f"{name} is not answered from the message structure")


def binary_section(raw: bytes, structure: MessageStructure, section: Section) -> bytes | None:
    """``BINARY[part]`` (RFC 3516 section 4.2): the part's body with its
    Content-Transfer-Encoding removed; ``BINARY[]`` is the whole message as stored.  None
    when the section names no part; `UnknownTransferEncoding` (a ValueError) for an
    encoding that cannot be decoded -- the session answers ``NO [UNKNOWN-CTE]``."""
    if not section.part:
        return raw[structure.body.header_start : structure.body.end]
    part = structure.find_part(section.part)
    if part is None:
        return None
    body = raw[part.body_start : part.end]
    if part.parts or part.message is not None:
        return body  # composite types are 7bit/8bit/binary (RFC 2045 section 6.4)
    try:
        return decode_transfer_encoding(body, part.encoding)
    except ValueError as error:  # binascii.Error included
        raise UnknownTransferEncoding(part.encoding) from error


def encode_literal8(data: bytes) -> bytes:
    """A ``literal8`` (``~{n}``, RFC 3516 section 4.2) when the octets include NUL,
    which a plain literal must not carry; a normal literal otherwise."""
    if b"\x00" in data:
        return b"~{" + str(len(data)).encode("ascii") + b"}\r\n" + data
    return encode_literal(data)


def fetch_binary_item(attribute: FetchAttribute, raw: bytes, structure: MessageStructure) -> tuple[str, bytes]:
    """(item name, encoded value) for ``BINARY[...]``, ``BINARY.PEEK[...]`` (answered as
    ``BINARY[...]``, with ``<origin>`` for a partial) and ``BINARY.SIZE[...]``."""
    assert attribute.section is not None
    data = binary_section(raw, structure, attribute.section)
    if attribute.name == "BINARY.SIZE":
        name = f"BINARY.SIZE[{section_spec_text(attribute.section)}]"
        return name, b"NIL" if data is None else encode_number(len(data))
    item = fetch_item_name(attribute)
    if data is None:
        return item, b"NIL"
    return item, encode_literal8(apply_partial(data, attribute.partial))
