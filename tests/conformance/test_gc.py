"""The orphan-blob sweeper against every backend pair: orphans go, referenced and young
blobs stay, and a blob renewed by a concurrent put survives the sweeper's delete."""

from __future__ import annotations

import datetime as dt
import json

from pymail.store import Delivery, DeliveryTarget, Store
from pymail.store.gc import sweep_orphans

STRUCTURE = json.dumps({"v": 1})
HOUR = dt.timedelta(hours=1)


async def _deliver(store: Store, data: bytes) -> str:
    if await store.directory.get_domain("example.com") is None:
        await store.directory.add_domain("example.com")
    user = await store.directory.get_user("gc@example.com") or await store.directory.add_user(
        "gc@example.com", "{PLAIN}x"
    )
    key = await store.blobs.put(data)
    await store.index.deliver(
        Delivery(key, len(data), dt.datetime.now(dt.timezone.utc), STRUCTURE, (DeliveryTarget(user.id),))
    )
    return key


async def test_sweeper_deletes_only_old_orphans(store: Store) -> None:
    kept = await _deliver(store, b"Subject: kept\r\n\r\nx\r\n")
    orphan = await store.blobs.put(b"Subject: orphan\r\n\r\ncrash between put and commit\r\n")

    now = dt.datetime.now(dt.timezone.utc)
    young = await sweep_orphans(store.blobs, store.index, grace_seconds=3600, now=now)
    assert (young.blobs, young.deleted, young.young) == (2, 0, 2)
    assert await store.blobs.exists(orphan)

    later = await sweep_orphans(store.blobs, store.index, grace_seconds=3600, now=now + 2 * HOUR)
    assert (later.blobs, later.deleted, later.referenced) == (2, 1, 1)
    assert not await store.blobs.exists(orphan)
    assert await store.blobs.exists(kept)
    assert await store.index.get_structure(kept) == STRUCTURE
    assert [k async for k in store.blobs.keys()] == [kept]


async def test_forget_blob_refuses_while_referenced(store: Store) -> None:
    key = await _deliver(store, b"Subject: in use\r\n\r\n")
    assert await store.index.forget_blob(key) is False
    assert await store.index.blob_referenced(key)
    assert await store.index.get_structure(key) == STRUCTURE
    assert await store.index.forget_blob("0" * 64) is True  # unknown: nothing to keep


async def test_put_renews_a_blob_against_the_sweeper(store: Store) -> None:
    data = b"Subject: same bytes again\r\n\r\n"
    key = await store.blobs.put(data)
    entries = {e.key: e for e in [e async for e in store.blobs.entries()]}
    assert entries[key].size == len(data)
    first_write = entries[key].modified
    # the sweeper decided "older than the cutoff" from an old listing; meanwhile a
    # delivery put the same bytes again: the delete must not take them
    cutoff = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    assert await store.blobs.put(data) == key
    assert await store.blobs.delete_if_stale(key, cutoff) is False
    assert await store.blobs.get(key) == data
    # and a truly stale blob is deleted
    assert await store.blobs.delete_if_stale(key, first_write + 2 * HOUR) is True
    assert not await store.blobs.exists(key)
    assert await store.blobs.delete_if_stale(key, first_write + 2 * HOUR) is False
