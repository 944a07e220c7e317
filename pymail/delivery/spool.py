"""The spool: where a message being received waits until it is delivered.

A `SpoolWriter` takes a message's octets as they arrive.  Up to `Spool.threshold`
(``limits.spool_threshold``) they stay in memory; past it, what was kept and everything
after goes to a file of its own in the spool directory (``<data_dir>/spool``, mode 0700),
written by a worker thread in batches of `WRITE_BATCH` octets.  A message whose size is
known before it arrives (an IMAP APPEND literal) and is larger than the threshold goes
to its file from its first octet.  `SpoolWriter.finish` gives the `MessageContent`
delivery works from: the bytes, or the file.  One spool serves SMTP DATA and IMAP
APPEND (`pymail.app` makes it).

Invariants:

* One message holds at most ``threshold`` octets in memory (in memory) or `WRITE_BATCH`
  plus one incoming chunk (spooled), whatever its size; a message announced larger than
  the threshold only the latter.
* Spool files are not fsynced here: nothing was acknowledged for them.  Delivery makes
  the blob durable from the file (`BlobStore.put_file` fsyncs it) before the index
  commit and the ``250``.  A crash leaves spool files nobody acknowledged;
  `Spool.prepare`, run at start before any connection, removes them.
* Every spool file is removed once its message is delivered, refused or abandoned
  (`SpoolWriter.discard` / `MessageContent.discard`, idempotent, safe to call from a
  cancelled task: the removal runs in a thread after any write still in flight).
* File I/O runs in threads, never on the event loop.  A failure to write the spool
  (``ENOSPC``, a missing directory) does not stop the reading: the rest of the message
  is read and dropped, and `finish` raises `SpoolError` for a ``4xx`` reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pymail.store.interfaces import StorageError

__all__ = ["MessageContent", "Spool", "SpoolError", "SpoolWriter", "WRITE_BATCH"]

log = logging.getLogger("pymail.spool")

#: Octets gathered before a spooled message's next write to its file.
WRITE_BATCH = 256 * 1024
#: Name prefix of spool files (anything else in the directory is left alone).
SPOOL_PREFIX = "msg-"


class SpoolError(StorageError):
    """The spool could not keep a message; `no_space` when the file system is full."""


@dataclass(eq=False)
class MessageContent:
    """A received message as delivery sees it: `data` in memory, or the spool file
    `path`.  `key` is the SHA-256 (hex) of its octets, computed while they arrived."""

    size: int
    key: str
    data: bytes | None = None
    path: Path | None = None
    _discarded: bool = field(default=False, repr=False)

    def discard(self) -> None:
        """Remove the spool file (in a thread; idempotent).  Call once delivery is over."""
        if self.path is not None and not self._discarded:
            self._discarded = True
            asyncio.get_running_loop().run_in_executor(None, _close_and_remove, None, self.path)


def _close_and_remove(fd: int | None, path: Path | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
    if path is None:
        return
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.warning("cannot remove spool file %s: %s", path, e.strerror or e)


class Spool:
    """The spool directory and the threshold above which a message goes there."""

    def __init__(self, directory: Path, threshold: int) -> None:
        self.directory = Path(directory)
        self.threshold = threshold

    def prepare(self) -> int:
        """Create the directory (0700) or make it 0700, and remove the spool files a
        previous run left (crash, kill -9); returns how many.  Run at start, before
        any connection is served, once per installation (not per worker)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        removed = 0
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(SPOOL_PREFIX) and entry.is_file(follow_symlinks=False):
                    _close_and_remove(None, Path(entry.path))
                    removed += 1
        return removed

    def writer(self, expected_size: int | None = None) -> SpoolWriter:
        """A writer for one message; `expected_size` when its size is known already."""
        return SpoolWriter(self, expected_size)


class SpoolWriter:
    """One message's octets while they arrive (see the module docstring).

    The file descriptor and path are set by the worker thread that creates the file;
    the event loop reads them only once that thread's future is done."""

    def __init__(self, spool: Spool, expected_size: int | None = None) -> None:
        self._spool = spool
        #: octets kept in memory before the file is made: none for a message known to
        #: be larger than the threshold
        self._spill_above = (0 if expected_size is not None and expected_size > spool.threshold
                             else spool.threshold)
        self._loop = asyncio.get_running_loop()
        self.size = 0  #: octets written so far
        self._parts: list[bytes] = []  #: octets not in the file (yet)
        self._buffered = 0
        self._fd: int | None = None
        self._path: Path | None = None
        self._spilled = False
        self._inflight: asyncio.Future[None] | None = None
        self._error: OSError | None = None
        self._discarded = False

    @property
    def spooled(self) -> bool:
        """Whether the message went to a file."""
        return self._spilled

    async def write(self, data: bytes) -> None:
        if not data or self._discarded:
            return
        self.size += len(data)
        if self._error is not None:
            return  # keep reading, drop the octets: `finish` reports the failure
        self._parts.append(data)
        self._buffered += len(data)
        if not self._spilled:
            if self.size > self._spill_above:
                self._spilled = True
                await self._in_thread(self._create_sync)
                await self._flush()
        elif self._buffered >= WRITE_BATCH:
            await self._flush()

    async def _in_thread(self, work: Callable[..., None], *args: object) -> None:
        """Run `work` in a worker thread.  Shielded: a cancelled reader leaves it to
        finish, and `discard` cleans up after it."""
        self._inflight = self._loop.run_in_executor(None, work, *args)
        await asyncio.shield(self._inflight)

    def _create_sync(self) -> None:
        try:
            fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, dir=self._spool.directory)
        except OSError as e:
            self._error = e
            return
        self._fd, self._path = fd, Path(name)

    async def _flush(self) -> None:
        parts, self._parts, self._buffered = self._parts, [], 0
        if self._error is None:
            await self._in_thread(self._write_sync, parts)

    def _write_sync(self, parts: list[bytes]) -> None:
        fd = self._fd
        if fd is None or self._error is not None:
            return
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    view = view[os.write(fd, view):]
        except OSError as e:
            self._error = e

    def _close_sync(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def finish(self, key: str) -> MessageContent:
        """The whole message, with the key its feeder computed.  The writer is done and
        the file, if any, now belongs to the `MessageContent`.  `SpoolError` if the
        spool failed (the file is removed)."""
        if not self._spilled:
            data = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
            self._parts = []
            return MessageContent(size=self.size, key=key, data=data)
        try:
            await self._flush()
            if self._error is None:
                await self._in_thread(self._close_sync)
        except BaseException:
            self.discard()
            raise
        if self._error is not None:
            failure = self._failure()
            self.discard()
            raise failure
        path, self._path = self._path, None
        assert path is not None
        return MessageContent(size=self.size, key=key, path=path)

    def _failure(self) -> SpoolError:
        error = self._error
        assert error is not None
        no_space = error.errno in (errno.ENOSPC, errno.EDQUOT)
        return SpoolError(f"spool {self._spool.directory}: {error.strerror or error}", no_space=no_space)

    def discard(self) -> None:
        """Drop the message: memory now, the file in a thread once any work in flight
        is done.  Idempotent; does nothing to a file `finish` handed over."""
        if self._discarded:
            return
        self._discarded = True
        self._parts, self._buffered = [], 0
        inflight = self._inflight
        if inflight is not None and not inflight.done():
            inflight.add_done_callback(lambda _done: self._remove_file())
        else:
            self._remove_file()

    def _remove_file(self) -> None:
        fd, path = self._fd, self._path
        self._fd = self._path = None
        if fd is not None or path is not None:
            self._loop.run_in_executor(None, _close_and_remove, fd, path)
