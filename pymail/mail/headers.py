"""A message header as its fields, kept raw: in order, repeated names kept, every octet
of each field (folding included) as received.  DKIM signs and verifies those octets,
DMARC needs the one From, Sieve and IMAP HEADER.FIELDS need fields by name in order.

RFC 5322 section 2.2: a field is a name, a colon, and a value; a line starting with WSP
continues the field before it (folding, section 2.2.3: unfolding removes each CRLF that
is followed by WSP).  The obsolete syntax (section 4.5: WSP between the name and the
colon) is read.  The header ends at the first empty line.  A line that is neither a
field nor a continuation (or a continuation with no field before it) also ends it,
leniently, as mail/mime.py reads it; `HeaderBlock.clean` then says the header was not
well formed (a DKIM signer must not sign what verifiers may read differently).

Invariants: `b"".join(f.raw for f in block.fields)` is exactly `data[:block.fields_end]`;
parsing never raises and costs one regular-expression pass over the lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["HeaderBlock", "HeaderField", "parse_header"]

_LINE = re.compile(rb"[^\n]*\n|[^\n]+\Z")
_FIELD = re.compile(rb"([!-9;-~]+)([ \t]*):")  # name (printable, no colon), obs WSP, colon
_FOLD = re.compile(rb"\r?\n(?=[ \t])")


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One field: `raw` is every octet of it, its line end(s) included."""

    name: bytes  #: as written, without trailing WSP or the colon
    raw: bytes

    @property
    def lower_name(self) -> str:
        return self.name.decode("ascii", "replace").lower()

    @property
    def raw_value(self) -> bytes:
        """The octets after the colon, folding and final line end included (what DKIM's
        canonicalisation works on)."""
        return self.raw[self.raw.index(b":") + 1:]

    @property
    def value(self) -> str:
        """The unfolded value (RFC 5322 section 2.2.3), surrounding WSP and the line end
        removed; 8-bit octets as UTF-8 (RFC 6532), undecodable ones surrogate-escaped."""
        unfolded = _FOLD.sub(b"", self.raw_value).rstrip(b"\r\n").strip(b" \t")
        return unfolded.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    """The fields of a header, in order, and where they and the header end."""

    fields: tuple[HeaderField, ...]
    fields_end: int  #: offset after the last field's last line
    body_start: int  #: offset of the body (after the empty line, when there is one)
    clean: bool  #: ended by an empty line (or the end of the data) with no stray line

    def __iter__(self) -> Iterator[HeaderField]:
        return iter(self.fields)

    def __len__(self) -> int:
        return len(self.fields)

    def get_all(self, name: str) -> list[HeaderField]:
        """Every field called `name` (case-insensitive), in order."""
        wanted = name.lower()
        return [f for f in self.fields if f.lower_name == wanted]

    def get(self, name: str) -> HeaderField | None:
        """The first field called `name`, or None."""
        found = self.get_all(name)
        return found[0] if found else None

    def pairs(self) -> list[tuple[bytes, bytes]]:
        """(name as written before the colon, raw value): the form dkimpy works on."""
        return [(f.raw[: f.raw.index(b":")], f.raw_value) for f in self.fields]


def parse_header(data: bytes) -> HeaderBlock:
    """The header at the start of `data` (a whole message, or its header block)."""
    fields: list[tuple[bytes, int, int]] = []  # name, start, end
    position = 0
    clean = True
    for match in _LINE.finditer(data):
        line = match.group()
        if line in (b"\r\n", b"\n"):
            return _block(data, fields, position, match.end(), clean)
        if line[:1] in (b" ", b"\t"):
            if not fields:
                clean = False
                break
            name, start, _ = fields[-1]
            fields[-1] = (name, start, match.end())
        else:
            field = _FIELD.match(line)
            if field is None:
                clean = False
                break
            fields.append((field.group(1), match.start(), match.end()))
        position = match.end()
    return _block(data, fields, position, position, clean)


def _block(data: bytes, fields: list[tuple[bytes, int, int]], end: int, body: int,
           clean: bool) -> HeaderBlock:
    return HeaderBlock(tuple(HeaderField(name, data[start:stop]) for name, start, stop in fields),
                       end, body, clean)
