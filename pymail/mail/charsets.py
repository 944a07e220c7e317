"""Which codec decodes a text part's charset, whole or as a stream (IMAP SEARCH BODY and
TEXT, RFC 3501 section 6.4.4; the charset parameter of RFC 2046 section 4.1.2).

* `text_charset` turns a part's ``charset`` parameter into the name of the Python codec
  that decodes it, or ``utf-8`` (the best guess today) when Python has no text codec of
  that name -- unknown names, bytes-to-bytes codecs such as ``base64``, names holding a
  NUL -- or only one that cannot decode any octets with ``errors="replace"`` (`UNFIT`:
  ``idna``, ``punycode`` and ``undefined``, none of them a mail charset).
* `text_decoder` gives an incremental decoder for that codec, ``errors="replace"``,
  whose output for the octets of a part fed in chunks of any size is exactly
  ``octets.decode(codec, "replace")``.  Python's own incremental decoders are, except
  those of ``utf-16`` and ``utf-32``, which raise where the one-shot decoding assumes
  the machine's byte order for a stream without byte order mark: `_ByteOrderDecoder`
  does what the one-shot decoding does.

Stdlib only, no I/O.
"""

from __future__ import annotations

import codecs
import sys

__all__ = ["FALLBACK", "UNFIT", "text_charset", "text_decoder"]

#: What a part whose charset cannot be used is decoded with.
FALLBACK = "utf-8"
#: Python text codecs that raise for some octets even with ``errors="replace"``.
UNFIT = frozenset({"idna", "punycode", "undefined"})

#: codec -> (byte order marks and the codec each selects, the codec without one)
_BYTE_ORDER = {
    "utf-16": ((codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")),
    "utf-32": ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be")),
}


def text_charset(name: str | None) -> str:
    """The codec (its canonical name) a text part labelled `name` is decoded with (the
    caller says ``us-ascii`` for a part without charset, RFC 2046 section 4.1.2)."""
    try:
        codec = codecs.lookup(name).name
        b"a".decode(codec, "replace")  # LookupError for a bytes-to-bytes codec
    except (LookupError, ValueError, TypeError):
        return FALLBACK
    return FALLBACK if codec in UNFIT else codec


def text_decoder(codec: str) -> codecs.IncrementalDecoder:
    """An incremental decoder, ``errors="replace"``, for a codec `text_charset` named."""
    if codec in _BYTE_ORDER:
        return _ByteOrderDecoder(codec)
    return codecs.getincrementaldecoder(codec)(errors="replace")


class _ByteOrderDecoder(codecs.IncrementalDecoder):
    """UTF-16 / UTF-32 as ``bytes.decode`` does it: a byte order mark at the start picks
    the byte order (and is dropped), else the machine's order applies."""

    def __init__(self, codec: str) -> None:
        super().__init__("replace")
        self._marks = _BYTE_ORDER[codec]
        self._mark_size = len(self._marks[0][0])
        self._native = f"{codec}-{'le' if sys.byteorder == 'little' else 'be'}"
        self._head = b""  # the first octets, until the order is known
        self._decoder: codecs.IncrementalDecoder | None = None

    def decode(self, data: bytes, final: bool = False) -> str:
        if self._decoder is None:
            self._head += data
            if len(self._head) < self._mark_size and not final:
                return ""
            data, self._head = self._head, b""
            chosen = self._native
            for mark, codec in self._marks:
                if data.startswith(mark):
                    chosen, data = codec, data[len(mark):]
                    break
            self._decoder = codecs.getincrementaldecoder(chosen)(errors="replace")
        return self._decoder.decode(data, final)

    def reset(self) -> None:
        self._head, self._decoder = b"", None
