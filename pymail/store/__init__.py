"""Storage: the interfaces (`BlobStore`, `Index`, `Directory`) and `open_store`.

`open_store(index_url, blobs_url, s3=..., postgres=...)` picks the backends from two URLs:

* index and directory: ``sqlite:///abs/path/index.sqlite3`` ("sqlite://" + absolute path)
  or ``postgresql://user@host:port/dbname`` (asyncpg; `PostgresSettings` sizes the pool);
* blobs: ``file:///abs/path/blobs`` ("file://" + absolute path) or ``s3://bucket`` /
  ``s3://bucket/prefix`` (aiobotocore; `S3Settings` names the endpoint and credentials).

Invariants: opening is cheap and never changes the schema (it creates missing directories,
nothing else); `Store.migrate()` brings the schema up to date and is idempotent;
`Store.close()` closes every part, blobs first, and may be called twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pymail.store.space import FreeSpace
from pymail.store.interfaces import (
    DEFAULT_MAILBOXES,
    Alias,
    AlreadyExists,
    Ban,
    BanStore,
    BlobFileStore,
    BlobInfo,
    BlobStore,
    ChangeFeed,
    Delivery,
    DeliveryTarget,
    Directory,
    Domain,
    FailureCounts,
    FlagUpdate,
    Index,
    Mailbox,
    MailboxChange,
    MailboxStatus,
    MessageRecord,
    NotFound,
    StorageError,
    Stored,
    User,
)
from pymail.store.queue import QueueStore

__all__ = [
    "DEFAULT_MAILBOXES",
    "Alias",
    "AlreadyExists",
    "Ban",
    "BanStore",
    "BlobFileStore",
    "BlobInfo",
    "BlobStore",
    "ChangeFeed",
    "Delivery",
    "DeliveryTarget",
    "Directory",
    "Domain",
    "FailureCounts",
    "FlagUpdate",
    "Index",
    "Mailbox",
    "MailboxChange",
    "MailboxStatus",
    "MessageRecord",
    "NotFound",
    "PostgresSettings",
    "QueueStore",
    "S3Settings",
    "StorageError",
    "Store",
    "Stored",
    "User",
    "open_store",
]


class SchemaOwner(Protocol):
    """What holds the index's and directory's schema and connections (a database)."""

    async def migrate(self) -> object: ...

    async def check(self) -> None:
        """Connect once; `StorageError` with a one-line reason if that fails."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class S3Settings:
    """How to reach an S3 service (MinIO, moto, AWS) for `s3://` blob URLs."""

    endpoint_url: str | None = None  #: None: AWS's own endpoint for `region`
    region: str = "us-east-1"
    access_key_id: str | None = None  #: None: botocore's usual sources (environment, ...)
    secret_access_key: str | None = field(default=None, repr=False)
    addressing_style: str = "path"  #: "path" for MinIO, "virtual" or "auto"
    max_connections: int = 64  #: the client's HTTP connection pool
    connect_timeout: float = 5.0
    read_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class PostgresSettings:
    """The asyncpg connection pool for `postgresql://` index URLs."""

    pool_min: int = 2
    pool_max: int = 10
    connect_timeout: float = 10.0
    command_timeout: float = 60.0


@dataclass(eq=False, slots=True)
class Store:
    """The three storage parts of one pymail installation."""

    directory: Directory
    index: Index
    blobs: BlobStore
    #: The database behind `index` and `directory` (for SQLite, the `SqliteDatabase`).
    database: SchemaOwner
    #: Failed logins and bans in the same database (pymail.auth.ban); None for a backend
    #: without them.
    bans: BanStore | None = None
    #: The outbound queue in the same database (`pymail.store.queue`); None for a
    #: backend without one.
    queue: QueueStore | None = None
    #: Free space of the local file systems this installation writes to (set by the
    #: daemon from the config, `pymail.store.space`); None: not watched.
    space: FreeSpace | None = None

    async def migrate(self) -> None:
        """Create or upgrade the schema; a no-op when it is current."""
        await self.database.migrate()

    async def check(self) -> None:
        """Reach the database and the blob backend once (used at start)."""
        await self.database.check()
        await self.blobs.check()

    async def close(self) -> None:
        """Close the blob store and the database (both, even if one fails)."""
        try:
            await self.blobs.close()
        finally:
            await self.database.close()


def _absolute_path(url: str, scheme: str) -> Path:
    prefix = f"{scheme}://"
    rest = url[len(prefix) :] if url.startswith(prefix) else ""
    if not rest.startswith("/") or rest.startswith("//") or "?" in rest or "#" in rest:
        raise ValueError(
            f"unsupported storage URL {url!r} (expected \"{scheme}:///absolute/path\")"
        )
    return Path(rest)


def open_store(
    index_url: str,
    blobs_url: str,
    *,
    s3: S3Settings | None = None,
    postgres: PostgresSettings | None = None,
) -> Store:
    """The `Store` named by the two URLs; `ValueError` naming a URL this cannot open.

    Cheap: creates missing directories, opens nothing until first use, never migrates.
    Backends are imported when chosen, so an unused one costs nothing."""
    blobs: BlobStore
    if blobs_url.startswith("file:"):
        from pymail.store.blob.fs import FileBlobStore

        blobs = FileBlobStore(_absolute_path(blobs_url, "file"))
    elif blobs_url.startswith("s3://"):
        from pymail.store.blob.s3 import S3BlobStore

        bucket, _, prefix = blobs_url[len("s3://"):].partition("/")
        if not bucket:
            raise ValueError(f"unsupported blobs URL {blobs_url!r} (expected \"s3://bucket\")")
        blobs = S3BlobStore(bucket, prefix.strip("/"), s3 or S3Settings())
    else:
        raise ValueError(
            f"unsupported blobs URL {blobs_url!r} (expected \"file:///path\" or \"s3://bucket\")"
        )

    if index_url.startswith("sqlite:"):
        from pymail.store.sqlite import SqliteDatabase, SqliteDirectory, SqliteIndex

        db_path = _absolute_path(index_url, "sqlite")
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {db_path.parent}: {exc}") from exc
        from pymail.store.sqlite.bans import SqliteBanStore

        from pymail.store.space import RESERVE_NAME, SpaceReserve

        # a reserve beside the index, released when a write meets a full disk
        sqlite_db = SqliteDatabase(db_path, reserve=SpaceReserve(db_path.parent / RESERVE_NAME))
        from pymail.store.sqlite.queue import SqliteQueueStore

        return Store(
            SqliteDirectory(sqlite_db), SqliteIndex(sqlite_db), blobs, sqlite_db,
            SqliteBanStore(sqlite_db), queue=SqliteQueueStore(sqlite_db),
        )
    if index_url.startswith(("postgresql://", "postgres://")):
        from pymail.store.postgres import PostgresDatabase, PostgresDirectory, PostgresIndex

        from pymail.store.postgres.bans import PostgresBanStore

        from pymail.store.postgres.queue import PostgresQueueStore

        pg_db = PostgresDatabase(index_url, postgres or PostgresSettings())
        return Store(
            PostgresDirectory(pg_db), PostgresIndex(pg_db), blobs, pg_db, PostgresBanStore(pg_db),
            queue=PostgresQueueStore(pg_db),
        )
    raise ValueError(
        f"unsupported index URL {index_url!r} (expected \"sqlite:///path\" or "
        "\"postgresql://user@host/dbname\")"
    )
