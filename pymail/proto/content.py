"""Message content counted and hashed as it arrives, whatever protocol brings it, with no
I/O: SMTP DATA (`pymail.proto.smtp.data.DataDecoder`, a subclass that also undoes the
dot-stuffing), an IMAP APPEND literal streamed to the spool (`pymail.net.imap.append`),
and BDAT later.

`ContentMeter.take` is given the message's octets in order, in chunks of any size, and
returns what is to be stored of each chunk.

Invariants:

* The first octets returned are `prefix` (trace headers a server adds; none for APPEND);
  `key` is the SHA-256 (hex) of everything returned, prefix included: the stored blob
  and its key (`BlobFileStore.put_file` takes it from here instead of reading the file
  a second time).
* Content past `size_limit` octets (counted without the prefix, as RFC 1870 counts) is
  still counted but no longer returned or hashed: the message is refused (`too_big`),
  and a protocol that must read it to its end can (SMTP).  A subclass may refuse for its
  own reasons by overriding `refused`; a refused meter returns nothing.
* Memory: one SHA-256 state and the prefix until it is returned.
"""

from __future__ import annotations

import hashlib

__all__ = ["ContentMeter"]


class ContentMeter:
    """What every way of receiving content shares: the prefix goes out first, content
    is counted against the size limit, and everything returned is hashed."""

    def __init__(self, *, prefix: bytes = b"", size_limit: int | None = None) -> None:
        self.size_limit = size_limit
        self.prefix_size = len(prefix)
        #: Content octets received, without the prefix, even past the limit.
        self.content_size = 0
        self.too_big = False
        self._prefix: bytes | None = prefix
        self._hash = hashlib.sha256(prefix)

    @property
    def refused(self) -> bool:
        """Whether nothing more is returned (over the size limit, or a subclass's reason)."""
        return self.too_big

    @property
    def message_size(self) -> int:
        """Octets of the message as stored: prefix and content."""
        return self.prefix_size + self.content_size

    @property
    def key(self) -> str:
        """Lower-case hex SHA-256 of every octet returned so far (prefix included)."""
        return self._hash.hexdigest()

    def take(self, content: bytes) -> bytes:
        """Count `content`; return it (after the prefix, the first time) unless the
        message is refused."""
        self.content_size += len(content)
        if not self.too_big and self.size_limit is not None and self.content_size > self.size_limit:
            self.too_big = True
        if self.refused:
            return b""
        if content:
            self._hash.update(content)
        if self._prefix is not None:
            content, self._prefix = self._prefix + content, None
        return content
