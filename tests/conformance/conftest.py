"""Conformance fixtures: every test here runs once per storage backend in `BACKENDS`.

The tests speak only the interfaces (`pymail.store`); what a test cannot do through them
(raw SQL for an operator's pre-existing tables, where a blob lies on disk, how many
transactions were committed) is a field of `Backend`, so a new backend is one new entry:

    BACKENDS["postgres+s3"] = Backend(name=..., open=..., execute_raw=..., ...)

PostgreSQL: the "postgres+s3" entry, the production pair, runs the PostgreSQL index and
directory (a fresh database per test on one throw-away cluster per session,
`postgres_service`) with blobs in moto's S3 server (tests/services/s3.py).
`PYMAIL_TEST_PG_BLOBS=file` makes it "postgres+file" (blobs in files) for one run.

Tests are ``async def``.  pytest-asyncio is not a dependency: `pytest_pyfunc_call` below
runs a coroutine test with `asyncio.run`, and a fixture whose value must live in that
event loop returns a `Deferred` (an async context manager factory) that the hook enters
inside the loop, e.g. `store`: a fresh, migrated `Store` in `tmp_path`, closed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pymail.store import PostgresSettings, Store, open_store

#: Seconds a single conformance test may take before it is failed as hung.
TEST_TIMEOUT = 120


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Backend:
    name: str
    #: A `Store` for the installation at `location` (a fresh tmp dir), not migrated (or an
    #: awaitable of one).
    open: Callable[[Path], Store | Awaitable[Store]]
    #: Run raw SQL statements on the index database at `location` (before pymail touched
    #: it, or beside it); raises the driver's error.
    execute_raw: Callable[[Path, Sequence[str]], Awaitable[None]]
    #: The seed's three tables as an operator's Postfix/Dovecot install has them (the
    #: classic-tutorial shape: fewer columns than pymail's), with one domain
    #: `legacy.example`, user `bob@legacy.example` and alias `postmaster@legacy.example`.
    legacy_seed_sql: Sequence[str]
    #: Transactions committed so far (None if the backend cannot tell).
    commits: Callable[[Store], int] | None = None
    #: The file holding a blob's bytes, for backends that keep blobs in files.
    blob_file: Callable[[Store, str], Path] | None = None
    #: Prepare `location` before the test (e.g. create a fresh database and note its DSN
    #: there); a context manager run by the sync `harness` fixture.  None: nothing to do.
    provision: (
        Callable[[pytest.FixtureRequest, Path], contextlib.AbstractContextManager[None]] | None
    ) = None
    #: An outage of the index's server: ``async with backend.outage(harness): ...`` stops
    #: it (every call must raise StorageError), and starts it again on exit.  None for an
    #: embedded backend.
    outage: (
        Callable[["StoreHarness", str], contextlib.AbstractAsyncContextManager[None]] | None
    ) = None
    #: Drop every client connection to the index database (the server stays up).
    drop_connections: Callable[["StoreHarness"], Awaitable[None]] | None = None


def _sqlite_open(location: Path) -> Store:
    return open_store(
        f"sqlite://{location / 'index.sqlite3'}", f"file://{location / 'blobs'}"
    )


async def _sqlite_execute_raw(location: Path, statements: Sequence[str]) -> None:
    conn = sqlite3.connect(location / "index.sqlite3", isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("BEGIN")
        for statement in statements:
            conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()


_SQLITE_LEGACY = (
    # domains exactly as the seed (SERIAL spelled the SQLite way)
    """CREATE TABLE domains (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain_name VARCHAR(255) UNIQUE NOT NULL,
        transport VARCHAR(255) DEFAULT 'virtual:',
        company_id INTEGER,
        auth_type VARCHAR(10) DEFAULT 'local' CHECK (auth_type IN ('ldap', 'local')),
        ldap_base_dn VARCHAR(255),
        is_active BOOLEAN DEFAULT TRUE,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    # the classic Postfix/Dovecot tutorial tables: no quota/is_active/created_at
    """CREATE TABLE virtual_users (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        password VARCHAR(106) NOT NULL,
        email VARCHAR(120) NOT NULL UNIQUE
    )""",
    """CREATE TABLE virtual_aliases (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        source VARCHAR(100) NOT NULL,
        destination VARCHAR(100) NOT NULL
    )""",
    "INSERT INTO domains (domain_name, company_id) VALUES ('legacy.example', 7)",
    "INSERT INTO virtual_users (domain_id, password, email)"
    " VALUES (1, '{SHA512-CRYPT}$6$salt$hash', 'bob@legacy.example')",
    "INSERT INTO virtual_aliases (domain_id, source, destination)"
    " VALUES (1, 'postmaster@legacy.example', 'bob@legacy.example')",
)


BACKENDS: dict[str, Backend] = {
    "sqlite+file": Backend(
        name="sqlite+file",
        open=_sqlite_open,
        execute_raw=_sqlite_execute_raw,
        legacy_seed_sql=_SQLITE_LEGACY,
        commits=lambda store: store.database.commits,  # type: ignore[attr-defined]
        blob_file=lambda store, key: store.blobs.path_for(key),  # type: ignore[attr-defined]
    ),
}


# --------------------------------------------------------------------------- PostgreSQL

#: Where the PostgreSQL entry keeps blobs: "file" (FileBlobStore in the test's tmp dir,
#: entry "postgres+file") or "s3" (moto, tests/services/s3.py, entry "postgres+s3").
#: PYMAIL_TEST_PG_BLOBS=file switches it for one run.
PG_BLOBS = os.environ.get("PYMAIL_TEST_PG_BLOBS", "s3")

#: Small and quick: a test opens several stores; a dead server must fail fast.
PG_SETTINGS = PostgresSettings(pool_min=1, pool_max=10, connect_timeout=5.0, command_timeout=30.0)

_PG_DSN_FILE = "postgres.dsn"  # in the test's tmp dir: the DSN of its fresh database


def _pg_dsn(location: Path) -> str:
    return (location / _PG_DSN_FILE).read_text().strip()


def _pg_dbname(location: Path) -> str:
    return _pg_dsn(location).rsplit("/", 1)[1]


@contextlib.contextmanager
def _pg_provision(request: pytest.FixtureRequest, location: Path) -> Iterator[None]:
    """A fresh database for the test (dropped afterwards, with its connections)."""
    service = request.getfixturevalue("postgres_service")
    name = service.unique_name("pymail_t")
    dsn = service.create_database_sync(name)
    (location / _PG_DSN_FILE).write_text(dsn)
    try:
        yield
    finally:
        service.drop_database_sync(name)


@contextlib.contextmanager
def _pg_s3_provision(request: pytest.FixtureRequest, location: Path) -> Iterator[None]:
    """A fresh database and a bucket for the test.  The moto server is started here, in
    the main thread: it dies with the thread that started it."""
    from tests.services.s3 import MotoS3Service, shared_moto_service

    shared_moto_service(False).create_bucket(MotoS3Service.bucket_for(location))
    with _pg_provision(request, location):
        yield


def _pg_file_open(location: Path) -> Store:
    return open_store(_pg_dsn(location), f"file://{location / 'blobs'}", postgres=PG_SETTINGS)


def _pg_s3_open(location: Path) -> Store:
    from tests.services.s3 import MotoS3Service, shared_moto_service

    service = shared_moto_service(False)  # started by _pg_s3_provision
    return open_store(
        _pg_dsn(location),
        f"s3://{MotoS3Service.bucket_for(location)}",
        s3=service.settings(),
        postgres=PG_SETTINGS,
    )


async def _pg_execute_raw(location: Path, statements: Sequence[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(location), timeout=10)
    try:
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def _pg_outage(harness: StoreHarness, mode: str = "fast") -> AsyncIterator[None]:
    service = harness.request.getfixturevalue("postgres_service")
    await asyncio.to_thread(service.stop_server, mode)
    try:
        yield
    finally:
        await asyncio.to_thread(service.start_server)


async def _pg_drop_connections(harness: StoreHarness) -> None:
    service = harness.request.getfixturevalue("postgres_service")
    await service.terminate_connections(_pg_dbname(harness.location))


_PG_LEGACY = (
    # domains exactly as the seed
    """CREATE TABLE domains (
        id SERIAL PRIMARY KEY,
        domain_name VARCHAR(255) UNIQUE NOT NULL,
        transport VARCHAR(255) DEFAULT 'virtual:',
        company_id INTEGER,
        auth_type VARCHAR(10) DEFAULT 'local' CHECK (auth_type IN ('ldap', 'local')),
        ldap_base_dn VARCHAR(255),
        is_active BOOLEAN DEFAULT TRUE,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    # the classic Postfix/Dovecot tutorial tables: no quota/is_active/created_at
    """CREATE TABLE virtual_users (
        id SERIAL PRIMARY KEY,
        domain_id INT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        password VARCHAR(106) NOT NULL,
        email VARCHAR(120) NOT NULL UNIQUE
    )""",
    """CREATE TABLE virtual_aliases (
        id SERIAL PRIMARY KEY,
        domain_id INT NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
        source VARCHAR(100) NOT NULL,
        destination VARCHAR(100) NOT NULL
    )""",
    "INSERT INTO domains (domain_name, company_id) VALUES ('legacy.example', 7)",
    "INSERT INTO virtual_users (domain_id, password, email)"
    " VALUES (1, '{SHA512-CRYPT}$6$salt$hash', 'bob@legacy.example')",
    "INSERT INTO virtual_aliases (domain_id, source, destination)"
    " VALUES (1, 'postmaster@legacy.example', 'bob@legacy.example')",
)


def _file_blob_path(store: Store, key: str) -> Path:
    return store.blobs.path_for(key)  # type: ignore[attr-defined]


def _postgres_backend(blobs: str) -> Backend:
    name = f"postgres+{blobs}"
    return Backend(
        name=name,
        open=_pg_s3_open if blobs == "s3" else _pg_file_open,
        execute_raw=_pg_execute_raw,
        legacy_seed_sql=_PG_LEGACY,
        blob_file=None if blobs == "s3" else _file_blob_path,
        provision=_pg_s3_provision if blobs == "s3" else _pg_provision,
        outage=_pg_outage,
        drop_connections=_pg_drop_connections,
    )


BACKENDS[f"postgres+{PG_BLOBS}"] = _postgres_backend(PG_BLOBS)


@pytest.fixture(scope="session")
def postgres_service(request: pytest.FixtureRequest) -> Iterator[object]:
    """The session's throw-away PostgreSQL cluster: tests/conftest.py's `pg_service` when
    it exists, else one of our own."""
    try:
        shared = request.getfixturevalue("pg_service")
    except pytest.FixtureLookupError:
        shared = None
    if shared is not None:
        yield shared
        return
    from tests.services.postgres import start_postgres_service

    service = start_postgres_service()
    try:
        yield service
    finally:
        service.stop()


# --------------------------------------------------------------------------- harness


class Deferred:
    """A fixture value made inside the test's event loop: `make()` is an async context
    manager whose value is passed to the test."""

    def __init__(self, make: Callable[[], contextlib.AbstractAsyncContextManager[object]]):
        self.make = make


class StoreHarness:
    """One backend at one location: open stores there, run raw SQL, read counters."""

    def __init__(
        self, backend: Backend, location: Path, request: pytest.FixtureRequest | None = None
    ) -> None:
        self.backend = backend
        self.location = location
        self.request = request

    async def open(self) -> Store:
        """A store at this location, not migrated (the caller closes it)."""
        store = self.backend.open(self.location)
        if inspect.isawaitable(store):
            store = await store
        return store

    @contextlib.asynccontextmanager
    async def opened(self, *, migrate: bool = True) -> AsyncIterator[Store]:
        """A store at this location (migrated unless told otherwise), closed on exit."""
        store = await self.open()
        try:
            if migrate:
                await store.migrate()
            yield store
        finally:
            await store.close()

    async def execute_raw(self, statements: Sequence[str]) -> None:
        await self.backend.execute_raw(self.location, statements)

    def commits(self, store: Store) -> int | None:
        return self.backend.commits(store) if self.backend.commits else None


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend:
    return BACKENDS[request.param]


@pytest.fixture
def harness(
    backend: Backend, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[StoreHarness]:
    if backend.provision is None:
        yield StoreHarness(backend, tmp_path, request)
        return
    with backend.provision(request, tmp_path):
        yield StoreHarness(backend, tmp_path, request)


@pytest.fixture
def store(harness: StoreHarness) -> Deferred:
    """A fresh migrated `Store` (made and closed inside the test's event loop)."""
    return Deferred(harness.opened)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run ``async def`` tests with asyncio.run, entering `Deferred` fixtures in the loop."""
    test = pyfuncitem.obj
    if not inspect.iscoroutinefunction(test):
        return None
    names = inspect.signature(test).parameters
    kwargs = {name: pyfuncitem.funcargs[name] for name in names}

    async def main() -> None:
        async with contextlib.AsyncExitStack() as stack:
            for name, value in kwargs.items():
                if isinstance(value, Deferred):
                    kwargs[name] = await stack.enter_async_context(value.make())
            await asyncio.wait_for(test(**kwargs), TEST_TIMEOUT)

    asyncio.run(main())
    return True
