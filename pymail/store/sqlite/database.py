"""SqliteDatabase: one SQLite file shared by the index and the directory, with group commit.

Why the stdlib `sqlite3` module and not aiosqlite: aiosqlite runs each statement as its own
hop to a worker thread and leaves transactions to the caller, so N concurrent deliveries
cost N transactions and N fsyncs.  Here one **writer thread** owns the only write
connection and runs *every job queued at the moment it wakes up* in one transaction: under
load, N deliveries cost one COMMIT and one fsync of the WAL.  That is the hot path of mail
delivery, so it is worth owning.

Invariants:

* Writes: `write(job)` queues `job(connection)`; the writer thread takes all queued jobs
  (at most `max_batch`), opens ``BEGIN IMMEDIATE``, runs each job inside its own
  ``SAVEPOINT`` (a job that raises is rolled back alone and gets its exception; the others
  proceed), then ``COMMIT``s once.  A job's future is resolved only after that COMMIT
  returned, so an awaited `write` means "durable" (``synchronous=FULL`` in WAL mode).  If
  the COMMIT fails, every job of the batch fails with `StorageError`.
* A submitted job runs even if its caller stops waiting (cancellation does not un-queue
  it): the caller learns nothing, but the database is never half-changed.
* Reads: a small thread pool, one read connection per thread, each read inside one
  ``BEGIN``/``COMMIT`` so it sees one snapshot; WAL lets reads run during writes.
* Every connection: ``journal_mode=WAL``, ``synchronous=FULL``, ``foreign_keys=ON``,
  ``busy_timeout`` (several pymail processes may share the file).  Several processes
  opening a new file at once all succeed: the switch to WAL, for which SQLite does not
  honour the busy timeout, is retried within it (`SqliteDatabase._ensure_wal`).
* `sqlite3.Error` and `OSError` from a job surface as `StorageError`; other exceptions
  (`NotFound`, `AlreadyExists`, `ValueError`) are answers about the data and pass through.
* Opening is cheap: no file is touched until the first read or write.  `close()` runs the
  jobs already queued, then joins the threads, and ends every change stream
  (`SqliteIndex.watch`), which each hold a read connection of their own.
* `check()` opens the file once (it must be an SQLite database, or not exist yet in a
  directory pymail may write) and creates nothing.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import errno
import logging
import os
import queue
import random
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pymail.store.interfaces import StorageError
from pymail.store.rules import aware
from pymail.store.space import SpaceReserve
from pymail.store.sqlite import schema

__all__ = [
    "MIN_SQLITE_VERSION",
    "SqliteDatabase",
    "bool_from_db",
    "constraint_violated",
    "datetime_from_micros",
    "micros_from_datetime",
    "timestamp_from_db",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: RETURNING (3.35) is used on the delivery path.
MIN_SQLITE_VERSION = (3, 35, 0)

_STOP = object()


@dataclass(slots=True)
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _is_full(exc: BaseException) -> bool:
    """SQLITE_FULL (the database or its disk is full), or an OSError ENOSPC/EDQUOT."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        return code is not None and code & 0xFF == sqlite3.SQLITE_FULL
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _to_storage_error(exc: BaseException) -> BaseException:
    if isinstance(exc, (sqlite3.Error, OSError)):
        err = StorageError(f"sqlite: {exc}", no_space=_is_full(exc))
        err.__cause__ = exc
        return err
    return exc


def _is_busy(exc: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (primary codes, whatever the extended one)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc)  # pragma: no cover - Python < 3.11 has no error codes


def _resolve(job: _Job, ok: bool, value: Any) -> None:
    """Hand a result to the job's event loop (called from the writer thread)."""

    def settle() -> None:
        if job.future.done():  # the caller was cancelled
            return
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)

    try:
        job.loop.call_soon_threadsafe(settle)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


class SqliteDatabase:
    """One SQLite file: a group-committing writer thread and a pool of readers."""

    def __init__(
        self,
        path: Path,
        *,
        readers: int = 2,
        busy_timeout_ms: int = 10_000,
        max_batch: int = 256,
        reserve: SpaceReserve | None = None,
    ) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise StorageError(
                f"SQLite {sqlite3.sqlite_version} is too old, pymail needs "
                f"{'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.max_batch = max_batch
        #: Transactions the writer committed (a batch of jobs is one).  Tests and
        #: benchmarks read it to see group commit working.
        self.commits = 0
        #: Given back to the file system when a write hits SQLITE_FULL, so that the
        #: write (a user deleting mail on a full disk) is retried once and commits.
        self.reserve = reserve
        #: Write jobs run (successful or not).
        self.write_jobs = 0
        self._queue: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._writer_conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._readers = ThreadPoolExecutor(
            max_workers=readers, thread_name_prefix="pymail-sqlite-read"
        )
        self._local = threading.local()
        self._read_conns: list[sqlite3.Connection] = []
        self._read_conns_lock = threading.Lock()
        self._closed = False
        #: Open change streams (`SqliteIndex.watch`), ended by `close()`.
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()

    # ------------------------------------------------------------------ connections

    def _connect(self, *, read_only: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,  # we issue BEGIN/SAVEPOINT/COMMIT ourselves
            check_same_thread=False,  # closed by close() from another thread
            cached_statements=256,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            self._ensure_wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            if read_only:
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_wal(self, conn: sqlite3.Connection) -> None:
        """Put the file in WAL mode (it stays so: later opens only read the mode).

        Switching a file (a new one is in rollback mode) to WAL needs an exclusive lock,
        and SQLite does not wait for it as it waits for other locks: when two connections
        (two pymail processes, or a CLI command beside the daemon) switch the same new
        file at once, each holds a shared lock and wants the exclusive one, and SQLite
        answers one of them "database is locked" at once instead of calling the busy
        handler, which would deadlock them ("If SQLite determines that invoking the busy
        handler could result in a deadlock, it will go ahead and return SQLITE_BUSY",
        sqlite3_busy_handler()).  That connection's statement has ended and released its
        lock, so the other one proceeds: retry here, with growing pauses, for as long as
        the busy timeout allows."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        pause = 0.001
        while True:
            try:
                # reading the mode takes a shared lock, for which SQLite does wait
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                    return
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() == "wal":
                    return
                raise sqlite3.OperationalError(f"cannot switch {self.path} to WAL (journal_mode is {mode})")
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause * (0.5 + random.random()))  # jitter: two retriers drift apart
            pause = min(pause * 2, 0.1)

    def connect_reader(self) -> sqlite3.Connection:
        """A read-only connection of the caller's own (change streams poll on one); the
        caller closes it.  Blocking: call it from a thread."""
        if self._closed:
            raise StorageError("database is closed")
        try:
            return self._connect(read_only=True)
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"sqlite: {exc}") from exc

    def register_stream(self, stream: object) -> None:
        """Have `close()` end `stream` (an object with ``async aclose()``)."""
        self._streams.add(stream)

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ writes

    async def write(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn(connection)` in the next group-committed transaction; durable on return."""
        loop = asyncio.get_running_loop()
        job = _Job(fn, loop, loop.create_future())
        with self._lock:  # orders this put before close()'s _STOP
            if self._closed:
                raise StorageError("database is closed")
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._writer_main, name="pymail-sqlite-writer", daemon=True
                )
                self._writer.start()
            self._queue.put(job)
        return await job.future

    def _writer_main(self) -> None:
        pending: deque[_Job] = deque()
        stopping = False
        while True:
            if not pending:
                if stopping:
                    break
                item = self._queue.get()
                if item is _STOP:
                    break
                pending.append(item)  # type: ignore[arg-type]
            while len(pending) < self.max_batch and not stopping:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                else:
                    pending.append(item)  # type: ignore[arg-type]
            batch = [pending.popleft() for _ in range(min(len(pending), self.max_batch))]
            try:
                leftover = self._run_batch(batch)
            except BaseException as exc:  # a bug here must not strand the callers
                log.exception("sqlite writer: batch failed unexpectedly")
                err = StorageError(f"sqlite writer failed: {exc!r}")
                for job in batch:
                    _resolve(job, False, err)
                self._drop_writer_conn()
                leftover = []
            pending.extendleft(reversed(leftover))
        if self._writer_conn is not None:
            try:
                self._writer_conn.close()
            except sqlite3.Error:
                log.exception("closing the sqlite write connection failed")
            self._writer_conn = None

    def _run_batch(self, batch: list[_Job]) -> list[_Job]:
        """Run `batch` in one transaction; returns jobs to retry in a new transaction.

        Jobs come back for a retry only when SQLite itself aborted the transaction in the
        middle of the batch (e.g. SQLITE_FULL): the jobs that had run are failed, the job
        that hit it gets its error, the rest are not lost."""
        try:
            if self._writer_conn is None:
                self._writer_conn = self._connect(read_only=False)
            conn = self._writer_conn
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, OSError) as exc:
            err = _to_storage_error(exc)
            for job in batch:
                _resolve(job, False, err)
            if self._writer_conn is not None and not isinstance(exc, sqlite3.OperationalError):
                self._drop_writer_conn()
            return []

        outcomes: list[tuple[_Job, bool, Any]] = []
        for i, job in enumerate(batch):
            self.write_jobs += 1
            try:
                conn.execute("SAVEPOINT job")
                result = job.fn(conn)
                conn.execute("RELEASE job")
                outcomes.append((job, True, result))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                if self._retry_after_releasing_space(exc, conn):
                    return batch
                err = _to_storage_error(exc)
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    except sqlite3.Error:
                        # The job's writes cannot be undone alone: undo the batch.
                        log.exception("rolling back a failed write job failed")
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            self._drop_writer_conn()
                if self._writer_conn is None or not conn.in_transaction:
                    # SQLite aborted the whole transaction: what ran before is lost.
                    lost = StorageError(f"sqlite transaction aborted: {err}")
                    for done_job, _, _ in outcomes:
                        _resolve(done_job, False, lost)
                    _resolve(job, False, err)
                    return batch[i + 1 :]
                outcomes.append((job, False, err))

        try:
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            if self._retry_after_releasing_space(exc, conn):
                return batch
            err = StorageError(f"sqlite commit failed: {exc}", no_space=_is_full(exc))
            err.__cause__ = exc
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                self._drop_writer_conn()
            for job, ok, value in outcomes:
                _resolve(job, False, err if ok else value)
            return []
        self.commits += 1
        for job, ok, value in outcomes:
            _resolve(job, ok, value)
        return []

    def _retry_after_releasing_space(self, exc: BaseException, conn: sqlite3.Connection) -> bool:
        """On a full disk with the space reserve still there: give it back, undo the
        batch's transaction and say to run the whole batch again (nothing of it was
        answered yet).  The reserve goes once, so a batch is retried at most once."""
        if not _is_full(exc) or self.reserve is None or not self.reserve.release():
            return False
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            self._drop_writer_conn()
        return True

    def _drop_writer_conn(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error:
                pass

    # ------------------------------------------------------------------ reads

    async def read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `fn(connection)` on a reader thread, inside one read transaction."""
        if self._closed:
            raise StorageError("database is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._readers, self._read_sync, fn)
        except RuntimeError as exc:  # executor shut down by a concurrent close()
            if self._closed:
                raise StorageError("database is closed") from exc
            raise

    def _read_sync(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        try:
            conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._connect(read_only=True)
                self._local.conn = conn
                with self._read_conns_lock:
                    self._read_conns.append(conn)
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")
        except BaseException as exc:
            mapped = _to_storage_error(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    # ------------------------------------------------------------------ lifecycle

    async def check(self) -> None:
        """Open the file once and read its schema; `StorageError` with a one-line reason
        (not a database, unreadable, a directory that cannot be written).  A missing file
        is fine (migrate creates it) and is not created here."""
        if self._closed:
            raise StorageError("database is closed")

        def probe() -> None:
            if not self.path.exists():
                parent = self.path.parent
                if not parent.is_dir():
                    raise OSError(f"directory {parent} does not exist")
                if not os.access(parent, os.W_OK | os.X_OK):
                    raise OSError(f"directory {parent} is not writable")
                return
            uri = f"file:{urllib.parse.quote(str(self.path))}?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_ms / 1000)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            finally:
                conn.close()

        try:
            await asyncio.to_thread(probe)
        except (sqlite3.Error, OSError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise StorageError(f"cannot open SQLite database {self.path}: {reason}") from exc

    async def migrate(self) -> list[int]:
        """Apply the schema migrations not applied yet (idempotent); their versions."""
        return await self.write(schema.migrate)

    async def close(self) -> None:
        """Run the writes already queued, then stop the threads and close connections."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for stream in list(self._streams):
            try:
                await stream.aclose()
            except Exception:  # noqa: BLE001 - closing must go on
                log.exception("closing a change stream failed")
        with self._lock:
            writer = self._writer
            if writer is not None:
                self._queue.put(_STOP)  # after every job already queued
        if writer is not None:
            await asyncio.to_thread(writer.join)
        await asyncio.to_thread(self._readers.shutdown, True)
        with self._read_conns_lock:
            conns, self._read_conns = self._read_conns, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.Error:
                log.exception("closing a sqlite read connection failed")

    def __repr__(self) -> str:
        return f"SqliteDatabase({str(self.path)!r})"


# --------------------------------------------------------------------------- row helpers
# Shared by the index and the directory.  Seed tables may have been filled by other tools,
# so values are read tolerantly.

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def timestamp_from_db(value: object) -> _dt.datetime:
    """A timezone-aware UTC datetime from a ``TIMESTAMP`` column (SQLite's
    ``CURRENT_TIMESTAMP`` text is UTC); NULL or garbage reads as the Unix epoch."""
    if isinstance(value, (int, float)):
        return _EPOCH + _dt.timedelta(seconds=value)
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value)
        except ValueError:
            return _EPOCH
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=_dt.timezone.utc)
        return parsed.astimezone(_dt.timezone.utc)
    return _EPOCH


def bool_from_db(value: object) -> bool:
    """SQLite stores TRUE as 1; text from a PostgreSQL dump says 't'/'true'; NULL is false
    (as in a SQL ``WHERE is_active``)."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "t", "true", "y", "yes", "on"}
    return bool(value)


def micros_from_datetime(value: _dt.datetime) -> int:
    """Exact integer microseconds since the epoch (no float rounding)."""
    return (aware(value) - _EPOCH) // _dt.timedelta(microseconds=1)


def datetime_from_micros(value: int) -> _dt.datetime:
    return _EPOCH + _dt.timedelta(microseconds=value)


def constraint_violated(exc: sqlite3.IntegrityError) -> str:
    """``"unique"``, ``"check"``, ``"foreignkey"``, ``"notnull"``, ``"primarykey"`` or
    ``""`` for the constraint an IntegrityError reports."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name.startswith("SQLITE_CONSTRAINT_"):
        return name.removeprefix("SQLITE_CONSTRAINT_").lower()
    text = str(exc).upper()  # older Pythons: fall back on the message
    for kind in ("UNIQUE", "CHECK", "FOREIGN KEY", "NOT NULL", "PRIMARY KEY"):
        if text.startswith(kind):
            return kind.replace(" ", "").lower()
    return ""
