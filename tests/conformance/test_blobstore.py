"""BlobStore conformance: content addressing, ranges, idempotence, durability, NotFound,
listings with size and last-written time, the start-up check, and the `BlobFileStore`
capability every backend has (a blob from a file, in bounded memory)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import errno
import os
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pymail.store import BlobFileStore, BlobInfo, NotFound, StorageError, Store

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


# --------------------------------------------------------------------------- blobs from files


def _file_store(store: Store) -> BlobFileStore:
    assert isinstance(store.blobs, BlobFileStore), "every backend stores blobs from files"
    return store.blobs


def _write_file(path: Path, chunks: int, chunk: bytes) -> str:
    """Write `chunk` `chunks` times to `path`; the SHA-256 hex of the file."""
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(chunks):
            f.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


async def test_put_file_stores_the_file_and_leaves_it(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "spooled.eml"
    source.write_bytes(MESSAGE)
    key = hashlib.sha256(MESSAGE).hexdigest()
    assert await _file_store(store).put_file(source, key) == key
    assert await store.blobs.get(key) == MESSAGE
    assert source.read_bytes() == MESSAGE  # the caller removes it
    assert await store.blobs.put_file(source, key) == key  # a repeat is harmless
    assert await store.blobs.put(MESSAGE) == key  # the same blob as put's
    assert [k async for k in store.blobs.keys()] == [key]
    other = tmp_path / "other.eml"
    other.write_bytes(b"")
    empty = hashlib.sha256(b"").hexdigest()
    assert await store.blobs.put_file(other, empty) == empty
    assert await store.blobs.get(empty) == b""


async def test_put_file_of_a_large_file_holds_little_memory(store: Store, tmp_path: Path) -> None:
    """20 MiB from a file with at most a few MiB of Python memory held at once
    (tracemalloc traces this process: the client side, not the S3 server)."""
    source = tmp_path / "big.eml"
    chunk = os.urandom(1024 * 1024)
    key = _write_file(source, 20, chunk)
    tracemalloc.start()
    try:
        assert await _file_store(store).put_file(source, key) == key
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 6 * 1024 * 1024, f"put_file held {peak / 2**20:.1f} MiB"
    assert await store.blobs.get_range(key, 19 * len(chunk) + 5, 10) == chunk[5:15]
    assert [(e.key, e.size) async for e in store.blobs.entries()] == [(key, 20 * len(chunk))]


async def test_put_file_renews_the_last_written_time(store: Store, tmp_path: Path) -> None:
    source = tmp_path / "spooled.eml"
    source.write_bytes(MESSAGE)
    key = await _file_store(store).put_file(source, hashlib.sha256(MESSAGE).hexdigest())
    first = {e.key: e.modified async for e in store.blobs.entries()}
    await asyncio.sleep(1.1)  # S3's LastModified has one-second resolution
    assert await store.blobs.put_file(source, key) == key
    second = {e.key: e.modified async for e in store.blobs.entries()}
    assert second[key] > first[key]


@pytest.mark.parametrize("key", ["", "../../etc/passwd", "A" * 64, "0" * 63])
async def test_put_file_refuses_a_malformed_key(store: Store, tmp_path: Path, key: str) -> None:
    source = tmp_path / "spooled.eml"
    source.write_bytes(MESSAGE)
    with pytest.raises(ValueError):
        await _file_store(store).put_file(source, key)
    assert [k async for k in store.blobs.keys()] == []


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


async def test_put_file_fsyncs_the_file_before_its_name(
    harness: StoreHarness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A spooled file was never fsynced: put_file fsyncs its bytes before the name
    ``<key>`` points at them, then the leaf directory."""
    fsynced: list[str] = []
    real_fsync = os.fsync

    def tracing_fsync(fd: int) -> None:
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    source = tmp_path / "spooled.eml"
    source.write_bytes(MESSAGE)
    async with harness.opened() as store:
        monkeypatch.setattr(os, "fsync", tracing_fsync)
        key = await _file_store(store).put_file(source, hashlib.sha256(MESSAGE).hexdigest())
        monkeypatch.setattr(os, "fsync", real_fsync)
        path = _blob_file(harness, store, key)
        assert path.read_bytes() == MESSAGE and sorted(os.listdir(path.parent)) == [key]
        assert str(source) in fsynced
        assert fsynced.index(str(source)) < fsynced.index(str(path.parent))
        assert fsynced[-1] == str(path.parent)


async def test_put_file_across_file_systems_copies_and_checks(
    harness: StoreHarness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No hard link across file systems (EXDEV): the file is copied under a temporary
    name, checked against its key, fsynced and renamed; a wrong key stores nothing."""

    def no_link(*_args: object, **_kwargs: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    source = tmp_path / "spooled.eml"
    data = os.urandom(3 * 1024 * 1024 + 5)
    source.write_bytes(data)
    async with harness.opened() as store:
        blobs = _file_store(store)
        _blob_file(harness, store, ABSENT)  # skips backends without files
        monkeypatch.setattr(os, "link", no_link)
        with pytest.raises(StorageError):
            await blobs.put_file(source, hashlib.sha256(b"something else").hexdigest())
        key = await blobs.put_file(source, hashlib.sha256(data).hexdigest())
        path = _blob_file(harness, store, key)
        assert path.read_bytes() == data and path.stat().st_ino != source.stat().st_ino
        assert sorted(os.listdir(path.parent)) == [key]  # no temporary file left
        assert [k async for k in store.blobs.keys()] == [key]
