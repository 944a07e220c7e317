"""pymail.delivery.spool on real files: memory below the threshold, one 0600 file above
it, everything removed when the message is done, dropped or abandoned."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path

import pytest

from pymail.delivery.spool import SPOOL_PREFIX, WRITE_BATCH, Spool, SpoolError


async def _drain() -> None:
    """Let the worker threads' removals run (they are not awaited, by design)."""
    for _ in range(50):
        await asyncio.sleep(0.01)


def test_prepare_makes_0700_and_removes_leftovers(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o755)
    (directory / f"{SPOOL_PREFIX}crashed").write_bytes(b"half")
    (directory / "README").write_text("not ours")
    assert Spool(directory, 1024).prepare() == 1
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert os.listdir(directory) == ["README"]
    assert Spool(tmp_path / "new" / "spool", 1024).prepare() == 0  # made with parents


def test_small_message_stays_in_memory(tmp_path: Path) -> None:
    async def main() -> None:
        writer = Spool(tmp_path, 100).writer()
        for part in (b"abc", b"", b"def" * 30):
            await writer.write(part)
        message = await writer.finish("k" * 64)
        assert message.data == b"abc" + b"def" * 30 and message.path is None
        assert message.size == 93 and message.key == "k" * 64 and not writer.spooled
        assert os.listdir(tmp_path) == []

    asyncio.run(main())


def test_a_message_announced_larger_than_the_threshold_goes_to_its_file_at_once(tmp_path: Path) -> None:
    """An APPEND literal's size is known: above the threshold nothing is kept in memory
    first (before: the first `threshold` octets were)."""
    async def main() -> None:
        writer = Spool(tmp_path, 1000).writer(expected_size=3000)
        await writer.write(b"a" * 10)
        assert writer.spooled and len(os.listdir(tmp_path)) == 1
        for _ in range(299):
            await writer.write(b"b" * 10)
        message = await writer.finish("e" * 64)
        assert message.path is not None and message.path.read_bytes() == b"a" * 10 + b"b" * 2990
        small = Spool(tmp_path / "x", 1000).writer(expected_size=1000)  # at the threshold
        await small.write(b"c" * 1000)
        assert not small.spooled and (await small.finish("c" * 64)).data == b"c" * 1000
        message.discard()
        await _drain()

    asyncio.run(main())


def test_large_message_goes_to_one_file(tmp_path: Path) -> None:
    async def main() -> None:
        writer = Spool(tmp_path, 1000).writer()
        parts = [bytes([n]) * 700 for n in range(1, 10)] + [b"z" * (WRITE_BATCH + 5)]
        for part in parts:
            await writer.write(part)
        assert writer.spooled
        (name,) = os.listdir(tmp_path)
        assert name.startswith(SPOOL_PREFIX)
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600
        message = await writer.finish("f" * 64)
        assert message.data is None and message.path == tmp_path / name
        assert message.path.read_bytes() == b"".join(parts) and message.size == sum(map(len, parts))
        writer.discard()  # the file belongs to the message now: untouched
        await _drain()
        assert message.path.exists()
        message.discard()
        message.discard()
        await _drain()
        assert os.listdir(tmp_path) == []

    asyncio.run(main())


def test_discard_from_a_cancelled_reader_removes_the_file(tmp_path: Path) -> None:
    async def main() -> None:
        writer = Spool(tmp_path, 10).writer()

        async def reader() -> None:
            while True:
                await writer.write(b"x" * 100_000)

        task = asyncio.ensure_future(reader())
        while not os.listdir(tmp_path):
            await asyncio.sleep(0.001)
        task.cancel()  # e.g. the client hung up while a write was in a thread
        with pytest.raises(asyncio.CancelledError):
            await task
        writer.discard()
        await _drain()
        assert os.listdir(tmp_path) == []

    asyncio.run(main())


def test_a_spool_that_cannot_write_fails_at_finish(tmp_path: Path) -> None:
    async def main() -> None:
        gone = tmp_path / "gone"
        gone.mkdir()
        writer = Spool(gone, 10).writer()
        gone.rmdir()  # the spool directory vanished
        for _ in range(5):
            await writer.write(b"y" * 100)  # reading goes on; nothing is kept
        assert writer.size == 500
        with pytest.raises(SpoolError) as failed:
            await writer.finish("0" * 64)
        assert not failed.value.no_space and "No such file" in str(failed.value)

    asyncio.run(main())


def test_a_full_file_system_is_no_space(tmp_path: Path) -> None:
    async def main() -> None:
        writer = Spool(tmp_path, 10).writer()
        writer._error = OSError(errno.ENOSPC, "No space left on device")
        assert writer._failure().no_space

    asyncio.run(main())
