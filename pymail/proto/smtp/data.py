"""SMTP DATA content decoded as it arrives, with no I/O: the end-of-data line,
dot-unstuffing, the bare CR / bare LF refusal, the size limit, and the SHA-256 of the
message that will be stored.

RFC 5321 section 4.1.1.4: the content ends with a line holding only ".", the octets
``CR LF . CR LF``, whose first CR LF may be the one that ended the DATA command line (an
empty message).  Section 4.5.2: the client put one more "." before every line that
starts with "."; the receiver removes the first "." of such a line.

`DataDecoder` is fed the octets that follow the ``354`` reply in chunks of any size
(`feed`) and returns the decoded octets of each chunk; what a chunk leaves undecided (a
possible end-of-data line, a possible stuffed dot) is held until the next one.

Invariants:

* Only ``CR LF . CR LF`` ends the data.  ``LF . LF``, ``CR . CR``, ``CR LF . LF``,
  ``LF . CR LF`` and the like are content, and any CR not followed by LF or LF not
  preceded by CR in the content makes the message refused (`Refusal.BARE_LINE_END`,
  ``550 5.6.0``), so no server after this one can read the stored message as two (SMTP
  smuggling).  Lines are the text between CR LFs: a "." after a bare LF is not unstuffed.
* The decoder holds at most 4 octets between calls (`_held`: the longest end of what it
  was fed that is the start of an end-of-data line).  Each chunk is decoded in a few
  passes of C code (find, replace, count): linear time, memory of the order of the chunk.
* Content past `size_limit` octets (counted after unstuffing, without the prefix, as
  RFC 1870 counts) is still read to the end of data, so the session can go on, but no
  longer returned or hashed (`Refusal.TOO_BIG`, ``552 5.3.4``).  A refused message
  returns nothing more once it is known to be refused; the caller drops what it got.
* The first octets returned are `prefix` (the trace headers the server adds); `key` is
  the SHA-256 (hex) of everything returned, prefix included: the stored blob and its key
  (the counting and hashing are `pymail.proto.content.ContentMeter`'s, which APPEND
  shares).
* Octets after the end of data (the next pipelined command, RFC 2920) are never decoded;
  they are kept in `trailing`.  `read_limit` tells a reader how many octets it may take
  from its stream without reading past the end of the data.

BDAT (RFC 3030) sends content in counted chunks with no end-of-data line and no dot
stuffing; a decoder for it would derive from `ContentMeter` (prefix, size limit, hash)
and skip `DataDecoder`'s line handling, feeding the same sink, as an IMAP APPEND
literal does.
"""

from __future__ import annotations

import enum

from pymail.proto.content import ContentMeter

__all__ = ["DataDecoder", "Refusal", "TERMINATOR"]

#: The end-of-data line with the line end before it (RFC 5321 section 4.1.1.4).
TERMINATOR = b"\r\n.\r\n"
#: Proper beginnings of TERMINATOR, longest first: what a chunk may end with undecided.
_PARTIAL_TERMINATORS = (b"\r\n.\r", b"\r\n.", b"\r\n", b"\r")
_CRLF = b"\r\n"
_STUFFED_DOT = b"\r\n."


class Refusal(enum.Enum):
    """Why received content is not delivered; the value is the reason logged."""

    TOO_BIG = "size_limit"  #: 552 5.3.4
    BARE_LINE_END = "bare_cr_or_lf"  #: 550 5.6.0


class DataDecoder(ContentMeter):
    """Decodes DATA content chunk by chunk (see the module docstring)."""

    def __init__(self, *, prefix: bytes = b"", size_limit: int | None = None) -> None:
        super().__init__(prefix=prefix, size_limit=size_limit)
        #: True once the end-of-data line has been fed.
        self.done = False
        #: Octets fed after the end-of-data line (pipelined commands), untouched.
        self.trailing = b""
        self.bare_line_end = False
        # The CR LF that ended the DATA command line: it can be the start of the
        # end-of-data line, and a "." right after it starts a line.  `_virtual` counts
        # the octets at the start of `_held` that are not content.
        self._held = _CRLF
        self._virtual = len(_CRLF)

    @property
    def refused(self) -> bool:
        return self.too_big or self.bare_line_end

    @property
    def refusal(self) -> Refusal | None:
        """Why the message is refused, or None."""
        if self.too_big:
            return Refusal.TOO_BIG
        if self.bare_line_end:
            return Refusal.BARE_LINE_END
        return None

    def read_limit(self) -> int | None:
        """How many octets a reader may take from its stream without reading past the
        end of data: None while no end-of-data line can have begun (read up to the next
        ``CR LF . CR LF`` the stream holds), else the octets that would complete the one
        that may have (1 to 3; 0 once done)."""
        if self.done:
            return 0
        return len(TERMINATOR) - len(self._held) if self._held else None

    def feed(self, data: bytes) -> bytes:
        """Take the next octets of the stream; return the decoded octets they complete."""
        if self.done:
            self.trailing += data
            return b""
        buf = self._held + data if self._held else bytes(data)
        end = buf.find(TERMINATOR)
        if end >= 0:
            self.done = True
            self.trailing = buf[end + len(TERMINATOR):]
            self._held = b""
            region = buf[: end + len(_CRLF)]  # the last line keeps its CR LF
        else:
            keep = next((len(p) for p in _PARTIAL_TERMINATORS if buf.endswith(p)), 0)
            if keep:
                region, self._held = buf[:-keep], buf[-keep:]
            else:
                region, self._held = buf, b""
        return self._decode(region)

    def _decode(self, region: bytes) -> bytes:
        """Unstuff and check a region that starts where the last one ended and never
        ends inside a CR LF or a CR LF "." (so no pair is split between regions)."""
        if not region:
            return b""
        if not self.bare_line_end:
            crlf = region.count(_CRLF)
            self.bare_line_end = region.count(b"\r") != crlf or region.count(b"\n") != crlf
        content = region.replace(_STUFFED_DOT, _CRLF)  # RFC 5321 section 4.5.2
        if self._virtual:
            skip, self._virtual = min(self._virtual, len(content)), 0
            content = content[skip:]
        return self.take(content)
