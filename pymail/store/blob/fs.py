"""FileBlobStore: message blobs as files, the embedded default `BlobStore`.

Layout: ``root/ab/cd/<key>`` where ``key`` is the lower-case hex SHA-256 of the bytes and
``ab``, ``cd`` are its first two byte pairs (65536 leaf directories at most, so no
directory grows past a few thousand entries at a hundred million messages).

Invariants:

* A file named ``<key>`` is complete and its bytes hash to ``key``: it is written under a
  temporary name in the same directory, flushed and fsynced, then renamed over the final
  name (rename is atomic), then the directory is fsynced so the new name survives power
  loss.  A directory this store creates has its parent fsynced too.
* `put` returns only after all of that.  Putting bytes that are already stored renews the
  file's mtime (the orphan sweeper's grace period counts from the latest `put`) and
  fsyncs the leaf directory (the name may have been made visible by a process that was
  killed before its own directory fsync).
* `put_file` (the `BlobFileStore` capability) keeps the same rules for a file written
  elsewhere (the SMTP spool), without reading it into memory: on the same file system
  the file is fsynced, then hard-linked under the final name (link, like rename, makes
  a complete name appear atomically, and never replaces an existing one), then the leaf
  directory is fsynced; across file systems it is copied 1 MiB at a time into a
  temporary file, hashed on the way (a mismatch with the caller's key is refused), and
  then stored like `put`.  The linked file's bytes were hashed by the caller as it wrote
  them (`put_file`'s contract), so ``<key>`` still names bytes that hash to it.
* `delete_if_stale` (the sweeper's delete) first renames the file aside, then looks at
  its mtime: a `put` that renewed it in the meantime wins and the file is put back; a
  `put` that came after the rename finds no file and writes a new one.  So a blob a
  delivery has just `put` is never deleted under it.
* Temporary files are named ``.tmp-<key>-<random>``; `keys` never yields them and
  `sweep_temp` removes the ones a crash left behind.
* Blocking file I/O runs on this store's own thread pool, never on the event loop.
* `OSError` becomes `StorageError`; an absent blob is `NotFound`.  A malformed key cannot
  name a stored blob, so it is treated as absent (it never reaches the file system).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import functools
import hashlib
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from pymail.store.interfaces import BlobInfo, NotFound, StorageError

__all__ = ["FileBlobStore"]

_T = TypeVar("_T")
_KEY_RE = re.compile(r"^[0-9a-f]{64}\Z")
_FANOUT_RE = re.compile(r"^[0-9a-f]{2}\Z")
_TEMP_PREFIX = ".tmp-"


#: link() errors that mean "no hard link here" (another file system, or one without
#: links): the file is copied instead.
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})
#: Octets copied per read when `put_file` cannot link.
_COPY_CHUNK = 1024 * 1024


def _fsync_file(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the directory's entries (names created, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStore:
    """Immutable message bytes in files under `root` (see the module docstring)."""

    def __init__(self, root: Path, *, max_threads: int = 8) -> None:
        self.root = Path(root)
        self._max_threads = max_threads
        self._executor: ThreadPoolExecutor | None = None
        self._closed = False
        try:
            self._make_dirs(self.root, stop=Path(self.root.anchor))
        except OSError as exc:
            raise StorageError(f"cannot create blob directory {self.root}: {exc}") from exc

    # ------------------------------------------------------------------ helpers

    def path_for(self, key: str) -> Path:
        """Where the blob `key` lives (whether or not it exists)."""
        return self.root / key[0:2] / key[2:4] / key

    async def _run(self, fn: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise StorageError("blob store is closed")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._max_threads, thread_name_prefix="pymail-blobs"
            )
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except (NotFound, StorageError):
            raise
        except OSError as exc:
            raise StorageError(f"blob store {self.root}: {exc}",
                               no_space=exc.errno in (errno.ENOSPC, errno.EDQUOT)) from exc
        except RuntimeError as exc:  # executor shut down underneath us
            raise StorageError(f"blob store {self.root}: {exc}") from exc

    def _make_dirs(self, leaf: Path, stop: Path | None = None) -> None:
        """Create `leaf` and its missing parents below `stop` (default: root), fsyncing
        the parent of each directory created."""
        stop = self.root if stop is None else stop
        missing: list[Path] = []
        p = leaf
        while p != stop and not p.is_dir():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                os.mkdir(d)
            except FileExistsError:
                pass
            _fsync_dir(d.parent)

    # ------------------------------------------------------------------ BlobStore

    async def put(self, data: bytes) -> str:
        """Store durably and return the key (see the module docstring for the protocol)."""
        return await self._run(self._put_sync, bytes(data))

    def _put_sync(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self.path_for(key)
        leaf = path.parent
        try:
            os.utime(path)  # already stored: renew its age for the orphan sweeper
        except FileNotFoundError:
            pass
        else:
            _fsync_dir(leaf)
            return key
        try:
            fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{key}-", dir=leaf)
        except FileNotFoundError:
            self._make_dirs(leaf)
            fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{key}-", dir=leaf)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(leaf)
        return key

    async def put_file(self, path: Path, key: str) -> str:
        """Store the file's bytes as blob `key` (their SHA-256, which the caller computed)
        without reading them into memory; see the module docstring."""
        if not _KEY_RE.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return await self._run(self._put_file_sync, Path(path), key)

    def _put_file_sync(self, source: Path, key: str) -> str:
        path = self.path_for(key)
        leaf = path.parent
        try:
            os.utime(path)  # already stored: renew its age for the orphan sweeper
        except FileNotFoundError:
            pass
        else:
            _fsync_dir(leaf)
            return key
        _fsync_file(source)  # the bytes are durable before any name of ours points at them
        self._make_dirs(leaf)
        try:
            os.link(source, path)
        except FileExistsError:  # a concurrent put of the same bytes won
            pass
        except OSError as exc:
            if exc.errno not in _NO_LINK:
                raise
            self._copy_in(source, path, key)
            return key
        os.utime(path)  # the link keeps the spool file's mtime: this put is the last write
        _fsync_dir(leaf)
        return key

    def _copy_in(self, source: Path, path: Path, key: str) -> None:
        """`put` for a file on another file system: copied in chunks, checked, renamed."""
        fd, tmp = tempfile.mkstemp(prefix=f"{_TEMP_PREFIX}{key}-", dir=path.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                while chunk := src.read(_COPY_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != key:
                raise StorageError(f"blob store {self.root}: {source} does not hash to {key}")
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(path.parent)

    async def get(self, key: str) -> bytes:
        """All bytes of the blob; `NotFound` if absent."""
        if not _KEY_RE.match(key):
            raise NotFound(f"no blob {key!r}")
        return await self._run(self._read_sync, key, 0, None)

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from offset `start` (fewer at the end); `NotFound` if absent."""
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        if not _KEY_RE.match(key):
            raise NotFound(f"no blob {key!r}")
        return await self._run(self._read_sync, key, start, length)

    def _read_sync(self, key: str, start: int, length: int | None) -> bytes:
        try:
            f = open(self.path_for(key), "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFound(f"no blob {key}") from None
        with f:
            if length is None:
                return f.read()
            if start:
                f.seek(start)
            return f.read(length)

    async def exists(self, key: str) -> bool:
        if not _KEY_RE.match(key):
            return False
        return await self._run(os.path.isfile, self.path_for(key))

    async def delete(self, key: str) -> None:
        """Remove the blob durably; an absent key is not an error."""
        if not _KEY_RE.match(key):
            return
        await self._run(self._delete_sync, key)

    def _delete_sync(self, key: str) -> None:
        path = self.path_for(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        _fsync_dir(path.parent)

    async def delete_if_stale(self, key: str, cutoff: _dt.datetime) -> bool:
        """Delete the blob only if it was last written before `cutoff`; True if deleted."""
        if not _KEY_RE.match(key):
            return False
        return await self._run(self._delete_if_stale_sync, key, cutoff.timestamp())

    def _delete_if_stale_sync(self, key: str, cutoff: float) -> bool:
        path = self.path_for(key)
        aside = path.with_name(f"{_TEMP_PREFIX}{key}-delete-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False
        if os.stat(aside).st_mtime >= cutoff:  # a put renewed it: keep it
            try:
                os.link(aside, path)
            except FileExistsError:  # a put after the rename wrote it anew
                pass
            os.unlink(aside)
            _fsync_dir(path.parent)
            return False
        os.unlink(aside)
        _fsync_dir(path.parent)
        return True

    async def check(self) -> None:
        """The blob directory exists (or can be made) and is a directory."""
        await self._run(self._check_sync)

    def _check_sync(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise OSError(f"{self.root} is not writable")

    async def entries(self) -> AsyncIterator[BlobInfo]:
        """Every stored blob with size and mtime, one top-level directory per thread hop."""
        tops = await self._run(self._list_fanout, self.root)
        for top in tops:
            for info in await self._run(self._list_entries_under, top):
                yield info

    def _list_entries_under(self, top: Path) -> list[BlobInfo]:
        out: list[BlobInfo] = []
        for mid in self._list_fanout(top):
            try:
                with os.scandir(mid) as it:
                    for e in it:
                        if not _KEY_RE.match(e.name):
                            continue
                        try:
                            st = e.stat(follow_symlinks=False)
                        except FileNotFoundError:
                            continue
                        modified = _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc)
                        out.append(BlobInfo(e.name, st.st_size, modified))
            except FileNotFoundError:
                continue
        return out

    async def keys(self) -> AsyncIterator[str]:
        """Every stored key, one top-level directory per thread hop."""
        tops = await self._run(self._list_fanout, self.root)
        for top in tops:
            for key in await self._run(self._list_keys_under, top):
                yield key

    @staticmethod
    def _list_fanout(directory: Path) -> list[Path]:
        try:
            with os.scandir(directory) as it:
                return sorted(
                    Path(e.path) for e in it if _FANOUT_RE.match(e.name) and e.is_dir()
                )
        except FileNotFoundError:
            return []

    def _list_keys_under(self, top: Path) -> list[str]:
        keys: list[str] = []
        for mid in self._list_fanout(top):
            try:
                with os.scandir(mid) as it:
                    keys.extend(e.name for e in it if _KEY_RE.match(e.name))
            except FileNotFoundError:
                continue
        return keys

    async def sweep_temp(self, older_than_seconds: float) -> int:
        """Remove temporary files older than `older_than_seconds`; returns how many.

        A temporary file is what a `put` interrupted by a crash leaves; a `put` in progress
        holds its file for milliseconds, so an age of minutes is a safe threshold."""
        return await self._run(self._sweep_temp_sync, time.time() - older_than_seconds)

    def _sweep_temp_sync(self, cutoff: float) -> int:
        removed = 0
        for top in self._list_fanout(self.root):
            for mid in self._list_fanout(top):
                touched = False
                try:
                    with os.scandir(mid) as it:
                        entries = [e for e in it if e.name.startswith(_TEMP_PREFIX)]
                except FileNotFoundError:
                    continue
                for e in entries:
                    try:
                        if e.stat(follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(e.path)
                            removed += 1
                            touched = True
                    except FileNotFoundError:
                        continue
                if touched:
                    _fsync_dir(mid)
        return removed

    async def close(self) -> None:
        """Wait for running operations and release the thread pool.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, True)

    def __repr__(self) -> str:
        return f"FileBlobStore({str(self.root)!r})"
