"""Storage: the interfaces (`BlobStore`, `Index`, `Directory`) and `open_store`.

`open_store(index_url, blobs_url)` picks the backends from two URLs:

* index and directory: ``sqlite:///abs/path/index.sqlite3`` ("sqlite://" + absolute path);
* blobs: ``file:///abs/path/blobs`` ("file://" + absolute path).

Invariants: opening is cheap and never changes the schema (it creates missing directories,
nothing else); `Store.migrate()` brings the schema up to date and is idempotent;
`Store.close()` closes every part, blobs first, and may be called twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pymail.store.interfaces import (
    DEFAULT_MAILBOXES,
    Alias,
    AlreadyExists,
    BlobStore,
    Delivery,
    DeliveryTarget,
    Directory,
    Domain,
    Index,
    Mailbox,
    MessageRecord,
    NotFound,
    StorageError,
    Stored,
    User,
)

__all__ = [
    "DEFAULT_MAILBOXES",
    "Alias",
    "AlreadyExists",
    "BlobStore",
    "Delivery",
    "DeliveryTarget",
    "Directory",
    "Domain",
    "Index",
    "Mailbox",
    "MessageRecord",
    "NotFound",
    "StorageError",
    "Store",
    "Stored",
    "User",
    "open_store",
]


class SchemaOwner(Protocol):
    """What holds the index's and directory's schema and connections (a database)."""

    async def migrate(self) -> object: ...

    async def close(self) -> None: ...


@dataclass(eq=False, slots=True)
class Store:
    """The three storage parts of one pymail installation."""

    directory: Directory
    index: Index
    blobs: BlobStore
    #: The database behind `index` and `directory` (for SQLite, the `SqliteDatabase`).
    database: SchemaOwner

    async def migrate(self) -> None:
        """Create or upgrade the schema; a no-op when it is current."""
        await self.database.migrate()

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


def open_store(index_url: str, blobs_url: str) -> Store:
    """The `Store` named by the two URLs; `ValueError` naming a URL this cannot open.

    Cheap: creates missing directories, opens nothing until first use, never migrates."""
    if index_url.startswith("sqlite:"):
        db_path = _absolute_path(index_url, "sqlite")
    else:
        raise ValueError(f"unsupported index URL {index_url!r} (expected \"sqlite:///path\")")
    if blobs_url.startswith("file:"):
        blob_root = _absolute_path(blobs_url, "file")
    else:
        raise ValueError(f"unsupported blobs URL {blobs_url!r} (expected \"file:///path\")")

    # Backends are imported when chosen: a later one may need an optional dependency.
    from pymail.store.blob.fs import FileBlobStore
    from pymail.store.sqlite import SqliteDatabase, SqliteDirectory, SqliteIndex

    try:
        db_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StorageError(f"cannot create {db_path.parent}: {exc}") from exc
    database = SqliteDatabase(db_path)
    blobs = FileBlobStore(blob_root)
    return Store(
        directory=SqliteDirectory(database),
        index=SqliteIndex(database),
        blobs=blobs,
        database=database,
    )
