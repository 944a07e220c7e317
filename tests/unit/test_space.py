"""Free-space readings, the space reserve, and SQLite's retry on a full disk.

The full-disk cases use a real tmpfs of a few MiB (root can mount one); SQLite really
answers SQLITE_FULL there."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymail.store import StorageError
from pymail.store.space import FreeSpace, SpaceReserve
from pymail.store.sqlite import SqliteDatabase

MiB = 1024 * 1024


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs (skipped where mounting is not allowed)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> Path:
    """Write to `path`/filler until the file system refuses another byte."""
    filler = path / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (MiB, 65536, 4096, 512, 1):
            block = b"x" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_low_and_room_for_follow_the_minimum(tmp_path: Path) -> None:
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    space = FreeSpace([tmp_path, tmp_path / "."], minimum=1)
    space.read()
    assert len(space.readings) == 1  # one reading per file system
    assert not space.low and space.room_for(1000)
    assert not space.room_for(free + 1)
    space.minimum = free * 2
    assert space.low and "below min_free_space" in space.describe()


def test_reserve_is_made_above_the_minimum_and_given_back_once(small_fs: Path) -> None:
    reserve = SpaceReserve(small_fs / "reserve", size=2 * MiB)
    space = FreeSpace([small_fs], minimum=5 * MiB, reserve=reserve)
    space.read()
    assert not reserve.present  # 6 MiB - 2 MiB would leave less than the minimum
    space.minimum = 1 * MiB
    space.read()
    assert reserve.present and reserve.path.stat().st_size == 2 * MiB
    assert reserve.release() and not reserve.present
    assert not reserve.release()


def _truncate_wal(path: Path) -> None:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.mark.parametrize("with_reserve", [True, False])
def test_a_full_disk_still_commits_a_delete_by_releasing_the_reserve(small_fs: Path, with_reserve: bool) -> None:
    """With the reserve, a user's flag change and expunge commit on a full disk; without
    it (the control case) SQLite refuses them with SQLITE_FULL."""

    async def scenario() -> None:
        reserve = SpaceReserve(small_fs / "reserve", size=1 * MiB) if with_reserve else None
        db = SqliteDatabase(small_fs / "index.sqlite3", reserve=reserve)
        try:
            await db.write(lambda c: c.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, flags TEXT, pad BLOB)"))
            await db.write(lambda c: c.executemany("INSERT INTO m (flags, pad) VALUES ('', randomblob(300))",
                                                   [()] * 2000))
            await asyncio.to_thread(_truncate_wal, small_fs / "index.sqlite3")  # a WAL with no room
            if reserve is not None:
                assert reserve.ensure()
            filler = await asyncio.to_thread(fill, small_fs)

            async def delete_mail() -> None:  # what a user deleting mail does
                await db.write(lambda c: c.execute("UPDATE m SET flags = '\\Deleted' WHERE id <= 1000"))
                await db.write(lambda c: c.execute("DELETE FROM m WHERE id <= 1000"))

            if reserve is None:
                with pytest.raises(StorageError) as refused:
                    await delete_mail()
                assert refused.value.no_space
                return
            await delete_mail()
            assert not reserve.present
            count = await db.read(lambda c: c.execute("SELECT count(*) FROM m").fetchone()[0])
            assert count == 1000
            # with the reserve gone, a write that needs space is a no_space StorageError
            with pytest.raises(StorageError) as refused:
                await db.write(lambda c: c.executemany(
                    "INSERT INTO m (flags, pad) VALUES ('', randomblob(3000))", [()] * 2000))
            assert refused.value.no_space
            filler.unlink()
        finally:
            await db.close()

    asyncio.run(scenario())
