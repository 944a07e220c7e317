"""Local delivery: store a received message once and index it into each user's INBOX.

The durability rule (docs/architecture.md) lives here:

1. the blob is written first (`BlobStore.put` returns only once it is durable);
2. then one index transaction adds a row to every target mailbox (all or nothing);
3. only then does the caller reply 250.

A crash between 1 and 2 leaves an orphan blob (garbage for a sweeper), never an index
row without its blob.  Any failure raises `StorageError`; nothing is half-delivered
because step 2 is a single transaction.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass

from pymail.mail.mime import parse_structure
from pymail.store.interfaces import BlobStore, Delivery, DeliveryTarget, Index, Stored


#: Messages larger than this are parsed in a thread so other sessions are not held up.
PARSE_IN_THREAD_ABOVE = 256 * 1024


def _structure_json(message: bytes) -> str:
    return parse_structure(message).to_json()


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

    async def deliver(
        self,
        message: bytes,
        targets: Sequence[DeliveryTarget],
        *,
        internal_date: _dt.datetime | None = None,
    ) -> LocalDelivery:
        """Store `message` (already carrying its trace headers) for every target."""
        if len(message) > PARSE_IN_THREAD_ABOVE:
            structure = await asyncio.to_thread(_structure_json, message)
        else:
            structure = _structure_json(message)
        key = await self.blobs.put(message)
        stored = await self.index.deliver(
            Delivery(
                blob_key=key,
                size=len(message),
                internal_date=internal_date or _dt.datetime.now(_dt.timezone.utc),
                structure=structure,
                targets=tuple(targets),
            )
        )
        return LocalDelivery(blob_key=key, size=len(message), stored=stored)
