"""Conformance fixtures: every test here runs once per storage backend in `BACKENDS`.

The tests speak only the interfaces (`pymail.store`); what a test cannot do through them
(raw SQL for an operator's pre-existing tables, where a blob lies on disk, how many
transactions were committed) is a field of `Backend`, so a new backend is one new entry:

    BACKENDS["postgres+s3"] = Backend(name=..., open=..., execute_raw=..., ...)

Tests are ``async def``.  pytest-asyncio is not a dependency: `pytest_pyfunc_call` below
runs a coroutine test with `asyncio.run`, and a fixture whose value must live in that
event loop returns a `Deferred` (an async context manager factory) that the hook enters
inside the loop, e.g. `store`: a fresh, migrated `Store` in `tmp_path`, closed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pymail.store import Store, open_store

#: Seconds a single conformance test may take before it is failed as hung.
TEST_TIMEOUT = 120


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class Backend:
    name: str
    #: A `Store` for the installation at `location` (a fresh tmp dir), not migrated.
    open: Callable[[Path], Store]
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


# --------------------------------------------------------------------------- harness


class Deferred:
    """A fixture value made inside the test's event loop: `make()` is an async context
    manager whose value is passed to the test."""

    def __init__(self, make: Callable[[], contextlib.AbstractAsyncContextManager[object]]):
        self.make = make


class StoreHarness:
    """One backend at one location: open stores there, run raw SQL, read counters."""

    def __init__(self, backend: Backend, location: Path) -> None:
        self.backend = backend
        self.location = location

    @contextlib.asynccontextmanager
    async def opened(self, *, migrate: bool = True) -> AsyncIterator[Store]:
        """A store at this location (migrated unless told otherwise), closed on exit."""
        store = self.backend.open(self.location)
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
def harness(backend: Backend, tmp_path: Path) -> StoreHarness:
    return StoreHarness(backend, tmp_path)


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
