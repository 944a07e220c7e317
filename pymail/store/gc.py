"""The orphan-blob sweeper: delete blobs no message refers to any more.

A blob becomes an orphan when a crash falls between its `put` and the index commit
(docs/architecture.md, "The durability rule"), or when the last message that referred to
it is expunged.  The sweeper walks `BlobStore.entries()` and, for each blob last written
before `now - grace`:

1. asks the index to forget it (`Index.forget_blob`: atomic, refuses while a message
   row or an outbound queue entry refers to it);
2. only then deletes it with `BlobStore.delete_if_stale`, which re-checks the age at the
   moment of deleting, so a delivery that has just `put` the same bytes (renewing them)
   keeps its blob.

Invariant: a blob that a committed message row or queue entry refers to is never
deleted (a queued message's blob stays until the queue purges it); the grace
period (default one hour) covers deliveries between their `put` and their commit.
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass

from pymail.store.interfaces import BlobStore, Index

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SweepReport:
    """What one sweep saw and did."""

    blobs: int = 0  #: blobs listed
    young: int = 0  #: within the grace period, left alone
    referenced: int = 0  #: still referred to by a message
    deleted: int = 0
    deleted_bytes: int = 0
    temp_files: int = 0  #: leftovers of interrupted writes removed (file store)


async def sweep_orphans(
    blobs: BlobStore, index: Index, *, grace_seconds: float, now: _dt.datetime | None = None
) -> SweepReport:
    """One pass over every blob (see the module docstring)."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    cutoff = now - _dt.timedelta(seconds=grace_seconds)
    report = SweepReport()
    async for info in blobs.entries():
        report.blobs += 1
        if info.modified >= cutoff:
            report.young += 1
            continue
        if not await index.forget_blob(info.key):
            report.referenced += 1
            continue
        if await blobs.delete_if_stale(info.key, cutoff):
            report.deleted += 1
            report.deleted_bytes += info.size
    sweep_temp = getattr(blobs, "sweep_temp", None)  # file store: interrupted writes
    if sweep_temp is not None:
        report.temp_files = await sweep_temp(grace_seconds)
    log.info(
        "orphan sweep: %d blobs, %d deleted (%d bytes), %d referenced, %d within grace, "
        "%d temp files removed",
        report.blobs, report.deleted, report.deleted_bytes, report.referenced, report.young,
        report.temp_files,
    )
    return report
