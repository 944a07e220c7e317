"""Local delivery: store a received message once and index it into each user's INBOX.

The durability rule (docs/architecture.md) lives here:

1. the blob is written first (`BlobStore.put` / `BlobFileStore.put_file` return only once
   it is durable);
2. then one index transaction adds a row to every target mailbox (all or nothing);
3. only then does the caller reply 250.

A crash between 1 and 2 leaves an orphan blob (garbage for a sweeper), never an index
row without its blob.  Any failure raises `StorageError`; nothing is half-delivered
because step 2 is a single transaction.

A message comes as bytes or as a `MessageContent` from the spool.  A spooled one (larger
than ``limits.spool_threshold``) is never read into memory here: its MIME structure is
parsed in a thread over an mmap of the spool file (file pages, which the kernel can
drop), and the blob is made from the file (`BlobFileStore.put_file`: fsync and hard
link, or a streamed PUT).  The caller removes the spool file once delivery is over.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pymail.delivery.spool import MessageContent
from pymail.mail.mime import parse_structure
from pymail.store.interfaces import (
    BlobFileStore,
    BlobStore,
    Delivery,
    DeliveryTarget,
    Index,
    Stored,
)

#: Messages larger than this are parsed in a thread so other sessions are not held up.
PARSE_IN_THREAD_ABOVE = 256 * 1024


def _structure_json(message: bytes) -> str:
    return parse_structure(message).to_json()


async def structure_json(message: bytes) -> str:
    """The stored structure (JSON) of `message`, parsed in a thread when it is large."""
    if len(message) > PARSE_IN_THREAD_ABOVE:
        return await asyncio.to_thread(_structure_json, message)
    return _structure_json(message)


def _structure_json_of_file(path: Path) -> str:
    """The structure of the message in `path`, parsed over an mmap (blocking: run it in
    a thread)."""
    with open(path, "rb") as f:
        if not f.seek(0, 2):  # an empty file cannot be mapped
            return _structure_json(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return parse_structure(mapped).to_json()


@dataclass(frozen=True, slots=True)
class LocalDelivery:
    """What a successful delivery stored."""

    blob_key: str
    size: int
    stored: list[Stored]


class LocalDeliverer:
    """Stores messages for local users through a `BlobStore` and an `Index`."""

    def __init__(self, blobs: BlobStore, index: Index) -> None:
        self.blobs = blobs
        self.index = index
        self._file_blobs = blobs if isinstance(blobs, BlobFileStore) else None

    async def deliver(
        self,
        message: bytes | MessageContent,
        targets: Sequence[DeliveryTarget],
        *,
        internal_date: _dt.datetime | None = None,
    ) -> LocalDelivery:
        """Store `message` (already carrying its trace headers) for every target."""
        if isinstance(message, MessageContent) and message.path is not None:
            size = message.size
            structure = await asyncio.to_thread(_structure_json_of_file, message.path)
            key = await self._put_file(message.path, message.key)
        else:
            data = message.data if isinstance(message, MessageContent) else message
            assert data is not None
            size = len(data)
            structure = await structure_json(data)
            key = await self.blobs.put(data)
        stored = await self.index.deliver(
            Delivery(
                blob_key=key,
                size=size,
                internal_date=internal_date or _dt.datetime.now(_dt.timezone.utc),
                structure=structure,
                targets=tuple(targets),
            )
        )
        return LocalDelivery(blob_key=key, size=size, stored=stored)

    async def _put_file(self, path: Path, key: str) -> str:
        if self._file_blobs is not None:
            return await self._file_blobs.put_file(path, key)
        # A backend without the capability (none of pymail's): the file is read whole.
        return await self.blobs.put(await asyncio.to_thread(path.read_bytes))
