"""BlobStore conformance: content addressing, ranges, idempotence, durability, NotFound,
listings with size and last-written time, and the start-up check."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pymail.store import BlobInfo, NotFound, Store

if TYPE_CHECKING:
    from conftest import StoreHarness

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: hi\r\n\r\nHello.\r\n"
ABSENT = "0" * 64


async def test_put_returns_sha256_and_get_returns_the_bytes(store: Store) -> None:
    key = await store.blobs.put(MESSAGE)
    assert key == hashlib.sha256(MESSAGE).hexdigest()
    assert await store.blobs.get(key) == MESSAGE
    assert await store.blobs.exists(key)


async def test_empty_and_large_blobs(store: Store) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    for data in (b"", big):
        key = await store.blobs.put(data)
        assert await store.blobs.get(key) == data
    assert await store.blobs.get_range(hashlib.sha256(big).hexdigest(), 2_000_000, 5) == big[
        2_000_000:2_000_005
    ]


async def test_put_is_idempotent(store: Store) -> None:
    first = await store.blobs.put(MESSAGE)
    second = await store.blobs.put(bytearray(MESSAGE))
    concurrent = await asyncio.gather(*(store.blobs.put(MESSAGE) for _ in range(20)))
    assert {first, second, *concurrent} == {first}
    assert await store.blobs.get(first) == MESSAGE
    assert [k async for k in store.blobs.keys()] == [first]


async def test_get_range(store: Store) -> None:
    key = await store.blobs.put(MESSAGE)
    assert await store.blobs.get_range(key, 0, 4) == b"From"
    assert await store.blobs.get_range(key, 6, 13) == MESSAGE[6:19]
    assert await store.blobs.get_range(key, len(MESSAGE) - 3, 100) == MESSAGE[-3:]
    assert await store.blobs.get_range(key, len(MESSAGE) + 10, 5) == b""
    assert await store.blobs.get_range(key, 3, 0) == b""


async def test_absent_blob(store: Store) -> None:
    assert not await store.blobs.exists(ABSENT)
    with pytest.raises(NotFound):
        await store.blobs.get(ABSENT)
    with pytest.raises(NotFound):
        await store.blobs.get_range(ABSENT, 0, 10)
    await store.blobs.delete(ABSENT)  # not an error


@pytest.mark.parametrize("key", ["", "../../etc/passwd", "ABC", "g" * 64, "A" * 64, "0" * 63])
async def test_malformed_key_is_absent(store: Store, key: str) -> None:
    assert not await store.blobs.exists(key)
    with pytest.raises(NotFound):
        await store.blobs.get(key)
    await store.blobs.delete(key)


async def test_delete(store: Store) -> None:
    keep = await store.blobs.put(b"keep")
    gone = await store.blobs.put(b"gone")
    await store.blobs.delete(gone)
    await store.blobs.delete(gone)  # idempotent
    assert not await store.blobs.exists(gone)
    with pytest.raises(NotFound):
        await store.blobs.get(gone)
    assert await store.blobs.get(keep) == b"keep"
    assert [k async for k in store.blobs.keys()] == [keep]
    assert await store.blobs.put(b"gone") == gone  # can come back
    assert await store.blobs.get(gone) == b"gone"


async def test_keys_lists_every_blob(store: Store) -> None:
    assert [k async for k in store.blobs.keys()] == []
    datas = [f"message {i}".encode() for i in range(50)]
    put = await asyncio.gather(*(store.blobs.put(d) for d in datas))
    assert sorted([k async for k in store.blobs.keys()]) == sorted(put)


async def test_blobs_survive_reopen(harness: StoreHarness) -> None:
    async with harness.opened() as store:
        key = await store.blobs.put(MESSAGE)
    async with harness.opened() as store:
        assert await store.blobs.get(key) == MESSAGE
        assert [k async for k in store.blobs.keys()] == [key]


async def test_entries_give_size_and_last_written_time(store: Store) -> None:
    assert [e async for e in store.blobs.entries()] == []
    # S3 keeps LastModified to the second: allow for the truncation
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=2)
    datas = [b"", MESSAGE, os.urandom(70_000)]
    keys = [await store.blobs.put(d) for d in datas]
    after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=2)
    entries = [e async for e in store.blobs.entries()]
    assert all(isinstance(e, BlobInfo) for e in entries)
    assert sorted((e.key, e.size) for e in entries) == sorted(
        (k, len(d)) for k, d in zip(keys, datas, strict=True)
    )
    for e in entries:
        assert e.modified.tzinfo is not None and e.modified.utcoffset() is not None
        assert before <= e.modified <= after
    assert sorted(e.key for e in entries) == sorted([k async for k in store.blobs.keys()])


async def test_put_again_renews_the_last_written_time(store: Store) -> None:
    """The orphan sweeper's grace period counts from the last put: a delivery that puts
    bytes already stored (and long unreferenced) must not lose them before its commit."""
    key = await store.blobs.put(MESSAGE)
    other = await store.blobs.put(b"other")
    first = {e.key: e.modified async for e in store.blobs.entries()}
    await asyncio.sleep(1.1)  # S3's LastModified has one-second resolution
    assert await store.blobs.put(MESSAGE) == key
    second = {e.key: e.modified async for e in store.blobs.entries()}
    assert second[key] > first[key]
    assert second[other] == first[other]
    assert await store.blobs.get(key) == MESSAGE


async def test_check_passes_on_a_working_store(store: Store) -> None:
    await store.blobs.check()
    key = await store.blobs.put(MESSAGE)
    await store.blobs.check()
    assert await store.blobs.get(key) == MESSAGE


async def test_get_range_across_a_large_blob(store: Store) -> None:
    big = os.urandom(1_500_000)
    key = await store.blobs.put(big)
    for start, length in ((0, 1), (65_535, 3), (1_000_000, 600_000), (1_499_999, 10)):
        assert await store.blobs.get_range(key, start, length) == big[start : start + length]
    assert await store.blobs.get_range(key, 1_500_000, 1) == b""


# --------------------------------------------------------------------------- file backends


def _blob_file(harness: StoreHarness, store: Store, key: str) -> Path:
    if harness.backend.blob_file is None:
        pytest.skip("this backend does not keep blobs in files")
    return harness.backend.blob_file(store, key)


async def test_put_leaves_the_file_and_no_temporary(harness: StoreHarness) -> None:
    async with harness.opened() as store:
        key = await store.blobs.put(MESSAGE)
        path = _blob_file(harness, store, key)
        assert path.read_bytes() == MESSAGE
        assert path.name == key
        assert sorted(os.listdir(path.parent)) == [key]  # no temporary file left


async def test_put_fsyncs_file_then_directories(
    harness: StoreHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability evidence: the bytes are fsynced before the rename, then the directory
    holding the new name, and the parent of every directory the put created."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name fsynced descriptors")
    fsynced: list[str] = []
    real_fsync = os.fsync

    def tracing_fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    async with harness.opened() as store:
        monkeypatch.setattr(os, "fsync", tracing_fsync)
        key = await store.blobs.put(MESSAGE)
        monkeypatch.setattr(os, "fsync", real_fsync)
        path = _blob_file(harness, store, key)
        leaf, mid, root = path.parent, path.parent.parent, path.parent.parent.parent
        # the data: a temporary file in the leaf directory, fsynced before the leaf dir
        data_syncs = [i for i, p in enumerate(fsynced) if Path(p).parent == leaf]
        assert data_syncs and Path(fsynced[data_syncs[0]]).name.startswith(".")
        assert fsynced[-1] == str(leaf)  # the rename made durable, last
        assert data_syncs[0] < len(fsynced) - 1
        assert str(root) in fsynced and str(mid) in fsynced  # new directories' parents

        # a second put of other bytes in a fresh leaf still fsyncs data then directory
        fsynced.clear()
        monkeypatch.setattr(os, "fsync", tracing_fsync)
        key2 = await store.blobs.put(MESSAGE + b"2")
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert fsynced[-1] == str(_blob_file(harness, store, key2).parent)


async def test_leftover_temporary_files_are_ignored_and_swept(harness: StoreHarness) -> None:
    async with harness.opened() as store:
        key = await store.blobs.put(MESSAGE)
        leaf = _blob_file(harness, store, key).parent
        sweep = getattr(store.blobs, "sweep_temp", None)
        if sweep is None:
            pytest.skip("backend has no temporary files")
        old = leaf / f".tmp-{key}-crashed"
        fresh = leaf / f".tmp-{key}-inflight"
        old.write_bytes(b"half a mess")
        fresh.write_bytes(b"being written")
        an_hour_ago = time.time() - 3600
        os.utime(old, (an_hour_ago, an_hour_ago))

        assert [k async for k in store.blobs.keys()] == [key]
        assert await sweep(600) == 1
        assert not old.exists() and fresh.exists()
        assert await store.blobs.get(key) == MESSAGE
        assert await sweep(0) == 1
        assert sorted(os.listdir(leaf)) == [key]
