"""FETCH body sections as plans and streams, sans-IO: what lets the session send
``BODY[...]``, ``BINARY[...]`` and ``RFC822*`` of a message of any size in bounded
memory (RFC 3501 section 6.4.5, RFC 3516 BINARY).

* `plan_section` turns one fetch attribute and the stored `MessageStructure` into a
  `SectionPlan`: the byte range of the raw message the value is made from, and the
  transform that makes it (none -- an exact slice --, HEADER.FIELDS(.NOT) filtering, or
  a Content-Transfer-Encoding decode for BINARY), with its partial ``<origin.length>``.
  None means the section names no part (the value is NIL); `UnknownTransferEncoding`
  means ``NO [UNKNOWN-CTE]``.  It never reads the message.
* `HeaderFieldsFilter`, `TransferDecoder` and `Window` take the range in chunks of any
  size (``feed``/``finish``) and give the value's octets in order, holding a bounded
  state: the filter a line's first `LINE_HOLD` octets, the base64 decoder three
  characters, the quoted-printable decoder the current line up to `LINE_HOLD`.  Their
  output is identical to `bodystructure.filter_header_fields` and
  `mail.mime.decode_transfer_encoding` on the whole range (the unit tests check it with
  random chunkings), with one exception for absurd input: a header line whose field
  name and the blanks after it run past `LINE_HOLD` octets counts as no field.
* `section_octets` runs a plan over the whole raw message at once; the session streams
  large messages through the same objects, two passes when the length of a transformed
  value must be known before its literal starts.
"""

from __future__ import annotations

import binascii
import re
from dataclasses import dataclass

from pymail.mail.mime import (
    IDENTITY_ENCODINGS, MessageStructure, UnknownTransferEncoding, decode_quoted_printable,
)
from pymail.proto.imap.responses import fetch_item_name, section_spec_text
from pymail.proto.imap.types import FetchAttribute, Section

#: Octets of one line a transform holds at most before deciding what to do with it.
LINE_HOLD = 64 * 1024
#: Blanks in a row the quoted-printable decoder holds on a long line, not knowing yet
#: whether they end it (and are deleted, RFC 2045 section 6.7 rule 3); a longer run is
#: kept even if the line ends right after it.
BLANK_HOLD = 64 * 1024

# SectionPlan.transform values
HEADER_FIELDS = "HEADER.FIELDS"
HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
BASE64 = "base64"
QUOTED_PRINTABLE = "quoted-printable"

#: The attributes that carry a body section (what ``limits.fetch_sections`` counts).
SECTION_ATTRIBUTES = frozenset({"BODY", "BINARY", "BINARY.SIZE", "RFC822", "RFC822.HEADER", "RFC822.TEXT"})

# RFC 3501 section 6.4.5: RFC822 = BODY[], RFC822.HEADER = BODY.PEEK[HEADER],
# RFC822.TEXT = BODY[TEXT]; the response keeps the RFC822* name.
_RFC822_SECTIONS = {"RFC822": Section(), "RFC822.HEADER": Section(text="HEADER"),
                    "RFC822.TEXT": Section(text="TEXT")}


def is_section(attribute: FetchAttribute) -> bool:
    """Whether the attribute's value is a body section (not ENVELOPE, BODY, ...)."""
    if attribute.name in ("BODY", "BINARY", "BINARY.SIZE"):
        return attribute.section is not None
    return attribute.name in _RFC822_SECTIONS


@dataclass(frozen=True)
class SectionPlan:
    """How to make one section value: ``item`` is the response's item name; the value is
    made from ``raw[start:end]`` by ``transform`` (None: the slice itself) with
    ``fields`` for HEADER.FIELDS(.NOT), then cut to ``partial`` (origin, length).
    ``binary`` values go as literal8 when they hold NUL (RFC 3516 section 4.2);
    ``size_only`` is BINARY.SIZE (the value's length, not its octets)."""

    item: str
    start: int
    end: int
    transform: str | None = None
    fields: tuple[str, ...] = ()
    partial: tuple[int, int] | None = None
    binary: bool = False
    size_only: bool = False

    def clamped(self, size: int) -> SectionPlan:
        """The plan with its range inside a message of `size` octets."""
        start, end = min(self.start, size), min(self.end, size)
        if (start, end) == (self.start, self.end):
            return self
        return SectionPlan(self.item, start, end, self.transform, self.fields, self.partial,
                           self.binary, self.size_only)

    def window(self) -> tuple[int, int]:
        """For a plan without transform: the range of the raw message the value is."""
        start, end = self.start, self.end
        if self.partial is not None:
            origin, length = self.partial
            start = min(start + origin, end)
            end = min(start + length, end)
        return start, end


def plan_section(attribute: FetchAttribute, structure: MessageStructure) -> SectionPlan | None:
    """The plan of a section attribute (see `is_section`); None for a section that names
    no part of this message (NIL); `UnknownTransferEncoding` for a BINARY of a part
    whose encoding cannot be decoded."""
    name = attribute.name
    if name in _RFC822_SECTIONS:
        return _body_plan(name, _RFC822_SECTIONS[name], None, structure)
    assert attribute.section is not None
    if name == "BODY":
        return _body_plan(fetch_item_name(attribute), attribute.section, attribute.partial, structure)
    if name == "BINARY.SIZE":
        item = f"BINARY.SIZE[{section_spec_text(attribute.section)}]"
        return _binary_plan(item, attribute.section, None, structure, size_only=True)
    return _binary_plan(fetch_item_name(attribute), attribute.section, attribute.partial, structure)


def _body_plan(item: str, section: Section, partial: tuple[int, int] | None,
               structure: MessageStructure) -> SectionPlan | None:
    # the same cases as bodystructure.section_bytes
    root = structure.body
    if not section.part:
        if section.text is None:
            return SectionPlan(item, root.header_start, root.end, partial=partial)
        header_start, body_start, end = root.header_start, root.body_start, root.end
    else:
        part = structure.find_part(section.part)
        if part is None:
            return None
        if section.text is None:
            return SectionPlan(item, part.body_start, part.end, partial=partial)
        if section.text == "MIME":
            return SectionPlan(item, part.header_start, part.body_start, partial=partial)
        if part.message is None:
            return None
        inner = part.message.body
        header_start, body_start, end = inner.header_start, inner.body_start, inner.end
    if section.text == "TEXT":
        return SectionPlan(item, body_start, end, partial=partial)
    if section.text == "HEADER":
        return SectionPlan(item, header_start, body_start, partial=partial)
    if section.text in (HEADER_FIELDS, HEADER_FIELDS_NOT):
        return SectionPlan(item, header_start, body_start, section.text, section.header_fields, partial)
    return None


def _binary_plan(item: str, section: Section, partial: tuple[int, int] | None,
                 structure: MessageStructure, *, size_only: bool = False) -> SectionPlan | None:
    # the same cases as bodystructure.binary_section
    if not section.part:
        body = structure.body
        return SectionPlan(item, body.header_start, body.end, partial=partial, binary=True,
                           size_only=size_only)
    part = structure.find_part(section.part)
    if part is None:
        return None
    transform = None
    encoding = part.encoding.lower()
    if not part.parts and part.message is None and encoding not in IDENTITY_ENCODINGS:
        if encoding not in (BASE64, QUOTED_PRINTABLE):
            raise UnknownTransferEncoding(part.encoding)
        transform = encoding
    return SectionPlan(item, part.body_start, part.end, transform, partial=partial, binary=True,
                       size_only=size_only)


# --- the transforms ------------------------------------------------------------------------------

_NAME_CHARS = frozenset(range(0x21, 0x3A)) | frozenset(range(0x3B, 0x7F))  # RFC 5322 ftext
_BLANKS = frozenset(b" \t")
_UNDECIDED = object()


class HeaderFieldsFilter:
    """HEADER.FIELDS (``exclude=False``) or HEADER.FIELDS.NOT of a header block fed in
    chunks: the output of `bodystructure.filter_header_fields` on the whole block.

    Each line is decided at its start (a continuation line follows its field; a field
    is kept when its name is -- or, for .NOT, is not -- one of ``names``), then streamed
    out or skipped to its LF.  A blank line is held back until it is known whether it
    ends the block (the block's blank line goes last, ``\\r\\n`` when there is none)."""

    def __init__(self, names: tuple[str, ...], *, exclude: bool = False) -> None:
        self.wanted = {n.encode("utf-8", "surrogateescape").lower() for n in names}
        self.longest = max((len(n) for n in self.wanted), default=0)
        self.exclude = exclude
        self._line = bytearray()  # the start of the current line, undecided
        self._mode: bool | None = None  # True: streaming the line out, False: skipping
        self._keep = False  # the current field is kept (its continuation lines follow)
        self._blank: bytes | None = None  # a blank line held back
        self._continuation = False  # the line last decided continues a field

    def _decide(self, line: bytes | bytearray, complete: bool) -> object:
        """Whether the line that starts with `line` is kept, or _UNDECIDED."""
        self._continuation = line[:1] in (b" ", b"\t")
        if self._continuation:
            return self._keep
        length = len(line)
        name_end = 0
        while name_end < length and line[name_end] in _NAME_CHARS:
            name_end += 1
        matched: bool | None = None
        if name_end > self.longest:
            matched = False  # no wanted name is that long
        elif name_end == 0:
            matched = False  # not a field
        else:
            colon = name_end
            while colon < length and line[colon] in _BLANKS:
                colon += 1
            if colon < length:
                matched = line[colon] == 0x3A and bytes(line[:name_end]).lower() in self.wanted
            elif complete or length > LINE_HOLD:
                matched = False
        if matched is None:
            if not complete and length <= LINE_HOLD:
                return _UNDECIDED
            matched = False
        self._keep = matched != self.exclude
        return self._keep

    def _flush_blank(self) -> bytes:
        """A held blank line turned out not to be the last: it is a line like others."""
        blank, self._blank = self._blank, None
        if blank is None:
            return b""
        return blank if self._decide(blank, True) else b""

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        position, size = 0, len(data)
        while position < size:
            newline = data.find(b"\n", position)
            stop = size if newline < 0 else newline + 1
            if self._mode is not None:  # inside a decided line
                if self._mode:
                    out += data[position:stop]
                if newline >= 0:
                    self._mode = None
                position = stop
                continue
            self._line += data[position:stop]
            position = stop
            if newline >= 0 and self._line in (b"\r\n", b"\n"):
                out += self._flush_blank()
                self._blank, self._line = bytes(self._line), bytearray()
                continue
            if newline < 0 and self._line == b"\r":
                continue  # may yet be the blank line that ends the block
            out += self._flush_blank()
            keep = self._decide(self._line, newline >= 0)
            if keep is _UNDECIDED:
                continue
            if keep:
                out += self._line
            if newline < 0:
                self._mode = bool(keep)
            self._line = bytearray()
        return bytes(out)

    def finish(self) -> bytes:
        out = bytearray()
        # a last field line without LF gets one (a continuation line does not, as in
        # filter_header_fields)
        if self._line:
            out += self._flush_blank()
            if self._decide(self._line, True):
                out += self._line if self._continuation else self._line + b"\r\n"
            self._line = bytearray()
        elif self._mode and not self._continuation:
            out += b"\r\n"
        self._mode = None
        out += self._blank if self._blank is not None else b"\r\n"
        self._blank = None
        return bytes(out)


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
# a2b_qp's tokens on a line: "=" and blanks then "\r" start a soft break that runs to the
# LF (RFC 2045 section 6.7 rule 5), "==" is "=", "=HH" a byte, a lone "=" itself, a run
# of blanks (deleted if it ends the line, rule 3), anything else itself
_QP_TOKENS = re.compile(rb"=[ \t]*\r|==|=[0-9A-Fa-f]{2}|=|[ \t]+|[^= \t]+")


class TransferDecoder:
    """A body fed in chunks with its Content-Transfer-Encoding removed: the output of
    `mail.mime.decode_transfer_encoding` on the whole body (base64 ignores characters
    outside the alphabet and missing padding; quoted-printable as
    `mail.mime.decode_quoted_printable`, RFC 2045 section 6.7)."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding.lower()
        if self.encoding not in (BASE64, QUOTED_PRINTABLE) and self.encoding not in IDENTITY_ENCODINGS:
            raise UnknownTransferEncoding(encoding)
        self._carry = b""
        self._skipping = False  # quoted-printable: inside a soft break, up to its LF

    def feed(self, data: bytes) -> bytes:
        if self.encoding == BASE64:
            text = self._carry + _NOT_BASE64.sub(b"", data)
            whole = len(text) - len(text) % 4
            self._carry = text[whole:]
            return binascii.a2b_base64(text[:whole]) if whole else b""
        if self.encoding == QUOTED_PRINTABLE:
            return self._feed_qp(data)
        return data

    def _feed_qp(self, data: bytes) -> bytes:
        if self._skipping:
            newline = data.find(b"\n")
            if newline < 0:
                return b""
            self._skipping = False
            data = data[newline + 1:]
        text = self._carry + data
        cut = text.rfind(b"\n") + 1  # a LF ends every a2b_qp token: a safe cut
        if cut == 0 and len(text) > LINE_HOLD:
            return self._cut_long_line(text)
        self._carry = text[cut:]
        return decode_quoted_printable(text[:cut]) if cut else b""

    def _cut_long_line(self, text: bytes) -> bytes:
        """A line past LINE_HOLD without LF: decode it up to its last token that cannot
        change with more input (or up to a soft break, which a2b_qp skips to the LF).
        Blanks at the end wait: they are deleted if the line ends there (RFC 2045
        section 6.7 rule 3), unless they alone run past BLANK_HOLD."""
        cut = 0
        for token in _QP_TOKENS.finditer(text):
            value = token.group()
            if value.startswith(b"=") and value.endswith(b"\r"):
                self._skipping, self._carry = True, b""
                return decode_quoted_printable(text[:token.start()], at_end=False)
            if value == b"=" and token.start() + 3 > len(text):
                break  # a lone "=" near the end may still become "=HH", "==" or "=\r"
            rest = len(text) - token.end()
            if value == b"=" and rest <= BLANK_HOLD and not text[token.end():].strip(b" \t"):
                break  # "=" and blanks so far: may still be a soft break
            if value[:1] in b" \t" and rest == 0 and len(value) <= BLANK_HOLD:
                break  # trailing blanks so far
            cut = token.end()
        self._carry = text[cut:]
        return decode_quoted_printable(text[:cut], at_end=False)

    def finish(self) -> bytes:
        carry, self._carry = self._carry, b""
        if self.encoding == BASE64:
            if len(carry) % 4 == 1:
                carry = carry[:-1]  # as decode_transfer_encoding: a lone sextet is dropped
            return binascii.a2b_base64(carry + b"=" * (-len(carry) % 4)) if carry else b""
        if self.encoding == QUOTED_PRINTABLE:
            return b"" if self._skipping else decode_quoted_printable(carry)
        return b""


class Window:
    """``<origin.length>`` over a value streamed in chunks (RFC 3501 section 6.4.5)."""

    def __init__(self, partial: tuple[int, int] | None) -> None:
        self.origin, self.length = partial if partial is not None else (0, None)
        self.position = 0

    @property
    def done(self) -> bool:
        return self.length is not None and self.position >= self.origin + self.length

    def take(self, data: bytes) -> bytes:
        start = self.position
        self.position += len(data)
        low = max(self.origin - start, 0)
        high = len(data) if self.length is None else min(self.origin + self.length - start, len(data))
        return data[low:high] if high > low else b""


class SectionStream:
    """One pass of a plan's range through its transform and window: ``feed`` the range
    in order (any chunking), ``finish`` at its end; ``done`` once the window is full."""

    def __init__(self, plan: SectionPlan) -> None:
        self.plan = plan
        self.window = Window(plan.partial)
        self._transform: HeaderFieldsFilter | TransferDecoder | None = None
        if plan.transform in (HEADER_FIELDS, HEADER_FIELDS_NOT):
            self._transform = HeaderFieldsFilter(plan.fields, exclude=plan.transform == HEADER_FIELDS_NOT)
        elif plan.transform is not None:
            self._transform = TransferDecoder(plan.transform)

    @property
    def done(self) -> bool:
        return self.window.done

    def feed(self, data: bytes) -> bytes:
        return self.window.take(self._transform.feed(data) if self._transform else data)

    def finish(self) -> bytes:
        return self.window.take(self._transform.finish()) if self._transform else b""


def section_octets(plan: SectionPlan, raw: bytes) -> bytes:
    """The value's octets, from the whole raw message at once."""
    if plan.transform is None:
        start, end = plan.window()
        return raw[start:end]
    stream = SectionStream(plan)
    return stream.feed(raw[plan.start:plan.end]) + stream.finish()


def literal_head(length: int, *, literal8: bool) -> bytes:
    """``{n}\\r\\n`` or, for a BINARY value holding NUL, ``~{n}\\r\\n`` (RFC 3516 4.2)."""
    return (b"~{%d}\r\n" if literal8 else b"{%d}\r\n") % length
