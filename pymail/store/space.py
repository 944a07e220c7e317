"""Free space on the local file systems pymail writes to, and a reserve for deleting.

A mail server that fills its disk must go on letting users delete mail, and must refuse
new mail with a temporary error before it is too late, never half-store it.  Two pieces:

* `FreeSpace` watches every local file system pymail writes to (``data_dir`` with the
  spool, the SQLite index, file blobs; an S3 or PostgreSQL backend is not local and not
  watched).  It reads ``statvfs`` in a thread every `REFRESH_SECONDS` and says `low`
  when any of them has less than ``storage.min_free_space`` free (Postfix's
  ``queue_minfree`` rule: by default 1.5 x ``limits.message_size``).  While low, new mail
  is refused (SMTP ``452 4.3.1`` at MAIL, IMAP APPEND ``NO [OVERQUOTA]``) and
  ``/healthz`` says ``degraded: disk full``; flag changes and EXPUNGE go on, so users
  can make room.
* `SpaceReserve` is a file of `RESERVE_BYTES` kept beside the SQLite index.  When the
  disk fills anyway (another program filled it), a write that SQLite refuses with
  SQLITE_FULL releases the reserve and is retried once (`SqliteDatabase`), so the
  metadata change that lets a user delete mail still commits.  `FreeSpace` makes the
  reserve again once the file system has room for it above the minimum.

Invariants: a reading never blocks the event loop (``statvfs`` runs in a thread); the
reserve is made atomically (a temporary file renamed into place), released by unlinking
(idempotent, safe from any thread), and only made when it leaves the minimum free.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FreeSpace", "SpaceReading", "SpaceReserve", "RESERVE_BYTES", "REFRESH_SECONDS"]

log = logging.getLogger("pymail.store.space")

#: Size of the reserve beside the SQLite index: room for the WAL frames of thousands of
#: flag changes and expunges.
RESERVE_BYTES = 8 * 1024 * 1024
#: Seconds between readings of the free space.
REFRESH_SECONDS = 5.0
RESERVE_NAME = "pymail-space-reserve"

MiB = 1024 * 1024


class SpaceReserve:
    """A file of `size` bytes at `path`, given back to the file system on demand."""

    def __init__(self, path: Path, size: int = RESERVE_BYTES) -> None:
        self.path = Path(path)
        self.size = size
        self._lock = threading.Lock()

    @property
    def present(self) -> bool:
        return self.path.exists()

    def release(self) -> bool:
        """Remove the reserve; True if there was one to give back (thread-safe)."""
        with self._lock:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                return False
            except OSError as exc:
                log.warning("space reserve: cannot remove %s: %s", self.path, exc)
                return False
        log.warning("space reserve: released %d MiB at %s for a write the full disk refused",
                    self.size // MiB, self.path)
        return True

    def ensure(self) -> bool:
        """Make the reserve if it is missing; True if it exists afterwards (blocking)."""
        with self._lock:
            if self.path.exists():
                return True
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            try:
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    try:
                        os.posix_fallocate(fd, 0, self.size)
                    except OSError as exc:
                        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                            raise  # no fallocate on this file system: write zeros
                        block = bytes(MiB)
                        for _ in range(self.size // MiB):
                            os.write(fd, block)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temporary, self.path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                log.info("space reserve: cannot make %s now: %s", self.path, exc.strerror or exc)
                return False
        return True


@dataclass(frozen=True, slots=True)
class SpaceReading:
    """One file system's free space at the last reading."""

    path: Path  #: a directory pymail writes to on it
    free: int  #: bytes available to pymail (f_bavail)


class FreeSpace:
    """Watches `paths` (one reading per file system) against `minimum` free bytes."""

    def __init__(self, paths: list[Path], minimum: int, reserve: SpaceReserve | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.minimum = minimum
        self.reserve = reserve
        self.readings: list[SpaceReading] = []
        self._task: asyncio.Task[None] | None = None
        self._was_low = False

    # -- what callers ask ----------------------------------------------------------

    @property
    def low(self) -> bool:
        """Some watched file system has less than the minimum free (last reading)."""
        return any(r.free < self.minimum for r in self.readings)

    def room_for(self, size: int) -> bool:
        """Whether `size` more bytes leave every watched file system above the minimum."""
        return all(r.free - size >= self.minimum for r in self.readings)

    def describe(self) -> str:
        """One line naming the fullest file system (for /healthz and logs)."""
        if not self.readings:
            return "no local file system watched"
        fullest = min(self.readings, key=lambda r: r.free)
        return (f"{fullest.path} has {fullest.free / MiB:.1f} MiB free, "
                f"below min_free_space {self.minimum / MiB:.1f} MiB" if self.low else
                f"{fullest.path} has {fullest.free / MiB:.1f} MiB free")

    # -- readings ------------------------------------------------------------------

    def read(self) -> list[SpaceReading]:
        """Read every file system now (blocking: call from a thread), and make the
        reserve when there is room for it."""
        readings = self._statvfs_all()
        if self.reserve is not None and not self.reserve.present:
            # the reserve is made only from space above the minimum
            if all(r.free - self.reserve.size >= self.minimum for r in readings):
                if self.reserve.ensure():
                    readings = self._statvfs_all()
        self.readings = readings
        low = self.low
        if low != self._was_low:
            self._was_low = low
            if low:
                log.warning("disk full: %s; new mail is refused until there is room", self.describe())
            else:
                log.info("disk space back: %s; new mail is accepted again", self.describe())
        return readings

    def _statvfs_all(self) -> list[SpaceReading]:
        seen: set[int] = set()
        readings = []
        for path in self.paths:
            try:
                device = path.stat().st_dev
                if device in seen:
                    continue
                stat = os.statvfs(path)
            except OSError as exc:
                log.warning("free space: cannot read %s: %s", path, exc.strerror or exc)
                continue
            seen.add(device)
            readings.append(SpaceReading(path, stat.f_bavail * stat.f_frsize))
        return readings

    async def refresh(self) -> None:
        await asyncio.to_thread(self.read)

    def start(self, interval: float = REFRESH_SECONDS) -> None:
        """Read every `interval` seconds until `stop`."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._run(interval))

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad reading
                log.exception("free space: reading failed")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
