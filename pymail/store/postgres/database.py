"""PostgresDatabase: the asyncpg pool shared by the PostgreSQL index and directory.

Invariants:

* Opening is cheap: the pool is created on first use (under an `asyncio.Lock`, so
  concurrent first calls make one pool).  A failed creation leaves nothing behind and the
  next call tries again, so pymail started while PostgreSQL is down recovers by itself.
* Every session runs with ``synchronous_commit = on`` (a committed delivery survives a
  crash of the server) and ``application_name = pymail``.
* `run(fn)` runs ``fn(connection)`` inside one transaction (``BEGIN`` ... ``COMMIT``); an
  exception from `fn` rolls it back.  Deadlocks and serialization failures (PostgreSQL
  rolled the whole transaction back) are retried.  A connection found dead at ``BEGIN``
  (the server restarted while it sat in the pool) is terminated and the transaction
  started again on another one: nothing had run yet.  Reads are run again the same way.
  A failure after that is never retried here (the COMMIT may have happened): the caller
  gets `StorageError`.
* Errors: connection failures (refused, reset, timed out, "terminating connection due to
  administrator command", "the database system is starting up"), every other server or
  driver error → `StorageError`, one line, never the DSN's password.  Constraint
  violations the caller did not handle itself → `AlreadyExists` (unique), `NotFound`
  (foreign key), `ValueError` (check, not-null); invalid data (SQLSTATE class 22, e.g. a
  value too long for its column) → `ValueError`.  `NotFound`, `AlreadyExists`,
  `ValueError` and `StorageError` raised by `fn` pass through.
* asyncpg prepares every statement with arguments and caches it per connection, so the
  hot path (`deliver`, lookups) runs prepared statements.
* The pool replaces broken connections by itself (a closed connection is reconnected at
  acquire), so after a PostgreSQL restart the next call works without reopening.
* `close()` closes the pool and every change stream; idempotent.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import asyncpg
import asyncpg.exceptions as pgerr

from pymail.store.interfaces import AlreadyExists, NotFound, StorageError
from pymail.store.postgres import schema

if TYPE_CHECKING:
    from pymail.store import PostgresSettings

__all__ = [
    "PostgresDatabase",
    "describe_error",
    "is_connection_error",
    "redact_dsn",
    "storage_error",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Session settings of every pymail connection.
SERVER_SETTINGS = {"synchronous_commit": "on", "application_name": "pymail"}

#: Transactions rolled back by PostgreSQL itself are retried this many times.
_ROLLBACK_RETRIES = 3


# --------------------------------------------------------------------------- DSN helpers


def redact_dsn(dsn: str) -> str:
    """The DSN with its password (in the authority or ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparsable PostgreSQL URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{hostinfo}"
    query = parts.query
    if query:
        query = "&".join(
            ("password=***" if item.lower().startswith("password=") else item)
            for item in query.split("&")
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def describe_target(dsn: str) -> str:
    """``host:port/dbname`` named by the DSN (no user, no password) for messages."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = parts.hostname or (query.get("host") or ["localhost"])[0]
        port = parts.port or int((query.get("port") or ["5432"])[0].split(",")[0])
        user = unquote(parts.username) if parts.username else (query.get("user") or [""])[0]
        dbname = unquote(parts.path.lstrip("/")) or (query.get("dbname") or [user])[0]
    except ValueError:
        return redact_dsn(dsn)
    if host.startswith("/"):
        return f"{host} (port {port})/{dbname}"
    return f"{host}:{port}/{dbname}"


def _dsn_password(dsn: str) -> str | None:
    try:
        parts = urlsplit(dsn)
        if parts.password:
            return unquote(parts.password)
        values = parse_qs(parts.query).get("password")
        return values[0] if values else None
    except ValueError:
        return None


# --------------------------------------------------------------------------- errors

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, broken pipe, unreachable
    asyncio.TimeoutError,
    pgerr.PostgresConnectionError,  # 08xxx, and asyncpg's "connection was closed"
    pgerr.AdminShutdownError,  # 57P01 terminating connection due to administrator command
    pgerr.CrashShutdownError,  # 57P02
    pgerr.CannotConnectNowError,  # 57P03 the database system is starting up / shutting down
)


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` says the connection (or the server) is gone, not the statement."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, pgerr.InterfaceError):
        text = str(exc).lower()
        return "connection is closed" in text or "connection was closed" in text
    return False


def describe_error(exc: BaseException, *, timeout: float | None = None) -> str:
    """One line saying what went wrong, e.g. "connection refused"."""
    if isinstance(exc, asyncio.TimeoutError):
        return f"no answer within {timeout:g} s" if timeout else "timed out"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError)
        and (exc.errno == errno.ECONNREFUSED or "connect call failed" in str(exc).lower())
    ):
        return "connection refused"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, pgerr.PostgresError):
        text = exc.args[0] if exc.args else ""
        text = str(text or exc)
    else:
        text = str(exc)
    text = " ".join(text.split())  # one line
    return text or type(exc).__name__


def storage_error(exc: BaseException, where: str, password: str | None = None) -> StorageError:
    """A `StorageError` for a backend failure, naming `where` (host:port/dbname)."""
    text = f"PostgreSQL at {where}: {describe_error(exc)}"
    if password:
        text = text.replace(password, "***")
    err = StorageError(text)
    err.__cause__ = exc
    return err


def map_error(exc: BaseException, where: str, password: str | None = None) -> BaseException:
    """The exception pymail's callers see for `exc` (see the module docstring)."""
    if isinstance(exc, (StorageError, NotFound, AlreadyExists, asyncio.CancelledError)):
        return exc
    if isinstance(exc, pgerr.IntegrityConstraintViolationError):
        detail = describe_error(exc)
        mapped: BaseException
        if isinstance(exc, pgerr.UniqueViolationError):
            mapped = AlreadyExists(detail)
        elif isinstance(exc, pgerr.ForeignKeyViolationError):
            mapped = NotFound(detail)
        else:
            mapped = ValueError(detail)
        mapped.__cause__ = exc
        return mapped
    if isinstance(exc, pgerr.DataError):  # SQLSTATE class 22: the value, not the server
        mapped = ValueError(describe_error(exc))
        mapped.__cause__ = exc
        return mapped
    if isinstance(exc, pgerr._base.DataError):  # asyncpg refused to encode an argument
        mapped = ValueError(describe_error(exc))
        mapped.__cause__ = exc
        return mapped
    if isinstance(
        exc, (pgerr.PostgresError, pgerr.InterfaceError, pgerr.InternalClientError, OSError,
              asyncio.TimeoutError)
    ):
        return storage_error(exc, where, password)
    return exc  # ValueError from pymail's own checks, bugs


_POOL_HAS_RESET = "reset" in inspect.signature(asyncpg.create_pool).parameters  # 0.30+


async def _no_reset(_conn: asyncpg.Connection) -> None:
    return None


class _StaleConnection(Exception):
    """A pooled connection died before the transaction started (internal)."""


def _dead(exc: BaseException, conn: asyncpg.Connection) -> bool:
    """Whether `exc` (raised before anything was done on `conn`) says that the pooled
    connection is dead; if so it is terminated, so the pool makes a new one.

    Besides the plain connection errors: a connection whose server process was
    terminated while it sat idle in the pool has received the FATAL message but maybe not
    the end of the stream yet, and asyncpg then refuses the next statement with an
    InternalClientError ("cannot switch to state ...")."""
    if isinstance(exc, asyncio.TimeoutError):
        return False  # a hung server: trying again would only wait again
    if not (is_connection_error(exc) or isinstance(exc, pgerr.InternalClientError)):
        return False
    try:
        if not conn.is_closed():
            conn.terminate()
    except pgerr.InterfaceError:
        pass  # closed already: the pool took it back
    return True


# --------------------------------------------------------------------------- the database


class PostgresDatabase:
    """One PostgreSQL database: a lazily created asyncpg pool (see the module docstring)."""

    def __init__(self, dsn: str, settings: PostgresSettings) -> None:
        if not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"unsupported PostgreSQL URL {redact_dsn(dsn)!r}")
        self.dsn = dsn
        self.settings = settings
        #: ``host:port/dbname`` for messages (never the password).
        self.where = describe_target(dsn)
        self._password = _dsn_password(dsn)
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        #: Open change streams (`PostgresIndex.watch`), closed with the database.
        self._streams: weakref.WeakSet[Any] = weakref.WeakSet()
        #: Transactions committed through `run` (tests and benchmarks read it).
        self.commits = 0

    def __repr__(self) -> str:
        return f"PostgresDatabase({redact_dsn(self.dsn)!r})"

    # ------------------------------------------------------------------ errors

    def error(self, exc: BaseException) -> StorageError:
        """A `StorageError` naming this database for a backend failure."""
        return storage_error(exc, self.where, self._password)

    def _map(self, exc: BaseException) -> BaseException:
        return map_error(exc, self.where, self._password)

    # ------------------------------------------------------------------ connections

    def connect_kwargs(self, application_name: str = "pymail") -> dict[str, Any]:
        """Arguments for `asyncpg.connect` / `create_pool` (besides the DSN)."""
        return {
            "timeout": self.settings.connect_timeout,
            "command_timeout": self.settings.command_timeout,
            "server_settings": {**SERVER_SETTINGS, "application_name": application_name},
        }

    async def connect(self, application_name: str = "pymail") -> asyncpg.Connection:
        """A dedicated connection outside the pool (the caller closes it);
        `StorageError` if it cannot be made."""
        if self._closed:
            raise StorageError("database is closed")
        try:
            return await asyncpg.connect(self.dsn, **self.connect_kwargs(application_name))
        except Exception as exc:
            raise self._connect_error(exc) from exc

    def _connect_error(self, exc: BaseException) -> StorageError:
        if isinstance(exc, pgerr.ClientConfigurationError) or (
            isinstance(exc, ValueError) and not isinstance(exc, pgerr.PostgresError)
        ):
            reason = f"invalid URL {redact_dsn(self.dsn)}: {describe_error(exc)}"
        else:
            reason = describe_error(exc, timeout=self.settings.connect_timeout)
        text = f"cannot connect to PostgreSQL at {self.where}: {reason}"
        if self._password:
            text = text.replace(self._password, "***")
        err = StorageError(text)
        err.__cause__ = exc
        return err

    async def pool(self) -> asyncpg.Pool:
        """The pool, created on first use; `StorageError` if PostgreSQL cannot be reached."""
        pool = self._pool
        if pool is not None:
            return pool
        async with self._lock:
            if self._closed:
                raise StorageError("database is closed")
            if self._pool is None:
                settings = self.settings
                extra: dict[str, Any] = {}
                if _POOL_HAS_RESET:
                    # pymail leaves no session state behind (no LISTEN, no session
                    # locks, no SET on pooled connections): skip asyncpg's reset query
                    # on every release, one round trip per call.  An open transaction is
                    # still rolled back by asyncpg itself.
                    extra["reset"] = _no_reset
                try:
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=max(0, min(settings.pool_min, settings.pool_max)),
                        max_size=max(1, settings.pool_max),
                        **self.connect_kwargs(),
                        **extra,
                    )
                except Exception as exc:
                    raise self._connect_error(exc) from exc
            return self._pool

    # ------------------------------------------------------------------ running work

    async def run(
        self,
        fn: Callable[[asyncpg.Connection], Awaitable[_T]],
        *,
        transaction: bool = True,
        isolation: str | None = None,
        readonly: bool = False,
        idempotent: bool = False,
    ) -> _T:
        """``await fn(connection)`` on a pooled connection, inside one transaction unless
        `transaction` is false (then `fn` is one statement, its own transaction).  An
        `idempotent` `fn` (a read) is run again when its connection dies under it."""
        rollbacks = stale = 0
        while True:
            try:
                return await self._run_once(fn, transaction, isolation, readonly, idempotent)
            except _StaleConnection as exc:
                cause = exc.__cause__ or exc
                stale += 1
                # Every pooled connection may be dead (the server restarted while they
                # sat idle); each one found is terminated, so this ends.
                if stale > self.settings.pool_max + 1:
                    raise self._map(cause) from cause
                log.info("replacing a dead PostgreSQL connection: %s", describe_error(cause))
            except (pgerr.DeadlockDetectedError, pgerr.SerializationError) as exc:
                rollbacks += 1
                if rollbacks > _ROLLBACK_RETRIES:
                    raise self._map(exc) from exc
                log.info("PostgreSQL rolled back a transaction, retrying: %s", exc)
                await asyncio.sleep(0.005 * rollbacks)
            except BaseException as exc:
                mapped = self._map(exc)
                if mapped is exc:
                    raise
                raise mapped from exc

    async def _run_once(
        self,
        fn: Callable[[asyncpg.Connection], Awaitable[_T]],
        transaction: bool,
        isolation: str | None,
        readonly: bool,
        idempotent: bool,
    ) -> _T:
        if self._closed:
            raise StorageError("database is closed")
        pool = await self.pool()
        async with pool.acquire(timeout=self.settings.command_timeout) as conn:
            if not transaction:
                try:
                    return await fn(conn)
                except Exception as exc:
                    if idempotent and _dead(exc, conn):
                        raise _StaleConnection() from exc
                    raise
            tr = conn.transaction(isolation=isolation, readonly=readonly)
            try:
                await tr.start()
            except Exception as exc:
                if _dead(exc, conn):
                    raise _StaleConnection() from exc
                raise
            try:
                result = await fn(conn)
            except BaseException:
                try:
                    await tr.rollback()
                except Exception:  # the connection is gone: the server rolled back
                    pass
                raise
            await tr.commit()
            self.commits += 1
            return result

    # shortcuts: one statement, its own implicit transaction

    async def fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        """Rows of a read-only statement (run again on a connection found dead)."""
        return await self.run(lambda c: c.fetch(sql, *args), transaction=False, idempotent=True)

    async def fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        """The first row of a read-only statement, or None."""
        return await self.run(
            lambda c: c.fetchrow(sql, *args), transaction=False, idempotent=True
        )

    async def fetchval(self, sql: str, *args: object) -> Any:
        """The first value of a read-only statement, or None."""
        return await self.run(
            lambda c: c.fetchval(sql, *args), transaction=False, idempotent=True
        )

    async def execute(self, sql: str, *args: object) -> str:
        """Run one writing statement in a transaction (so a dead pooled connection is
        replaced before it runs, never after); its status, e.g. "UPDATE 1"."""
        return await self.run(lambda c: c.execute(sql, *args))

    async def execute_fetchval(self, sql: str, *args: object) -> Any:
        """Run one writing statement in a transaction; the first value it returns."""
        return await self.run(lambda c: c.fetchval(sql, *args))

    # ------------------------------------------------------------------ lifecycle

    async def check(self) -> None:
        """Connect once and ``SELECT 1``; `StorageError` with a one-line reason, e.g.
        "cannot connect to PostgreSQL at 127.0.0.1:5432/pymail: connection refused"."""
        if self._closed:
            raise StorageError("database is closed")
        try:
            conn = await asyncpg.connect(self.dsn, **self.connect_kwargs())
        except Exception as exc:
            raise self._connect_error(exc) from exc
        try:
            await conn.fetchval("SELECT 1", timeout=self.settings.connect_timeout)
        except Exception as exc:
            raise self._connect_error(exc) from exc
        finally:
            conn.terminate()

    async def migrate(self) -> list[int]:
        """Apply the schema migrations not applied yet (idempotent); their versions."""
        if self._closed:
            raise StorageError("database is closed")
        try:
            conn = await self.connect("pymail-migrate")
            try:
                return await schema.migrate(conn)
            finally:
                await _close_quietly(conn)
        except BaseException as exc:
            mapped = self._map(exc)
            if mapped is exc:
                raise
            raise mapped from exc

    def register_stream(self, stream: object) -> None:
        self._streams.add(stream)

    async def close(self) -> None:
        """Close every change stream and the pool; idempotent, never raises for a dead
        server."""
        if self._closed:
            return
        self._closed = True
        for stream in list(self._streams):
            try:
                await stream.aclose()
            except Exception:  # noqa: BLE001 - closing must go on
                log.exception("closing a change stream failed")
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except Exception as exc:  # noqa: BLE001 - dead server, stuck connection
            log.warning("closing the PostgreSQL pool: %s; terminating it", describe_error(exc))
            pool.terminate()


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=5)
    except Exception:  # noqa: BLE001
        conn.terminate()
