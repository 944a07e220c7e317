"""The embedded SQLite backend: `SqliteIndex` and `SqliteDirectory` on one `SqliteDatabase`.

One database file holds the seed's directory tables and pymail's index; one writer thread
group-commits all writes (see `database`), so the index and the directory stay consistent
with each other (removing a user removes its mailboxes in the same transaction).
"""

from pymail.store.sqlite.database import SqliteDatabase
from pymail.store.sqlite.directory import SqliteDirectory
from pymail.store.sqlite.index import SqliteIndex

__all__ = ["SqliteDatabase", "SqliteDirectory", "SqliteIndex"]
