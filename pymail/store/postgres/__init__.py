"""The production PostgreSQL backend (asyncpg): `PostgresIndex` and `PostgresDirectory`
on one `PostgresDatabase`.

One database holds the seed's directory tables and pymail's index, so a user's removal
removes its mailboxes in the same transaction (foreign-key cascades), and several pymail
nodes share one database: new-mail events travel between them through LISTEN/NOTIFY
(`PostgresIndex.watch`).  `pymail.store.open_store` picks this backend for a
``postgresql://`` index URL.
"""

from pymail.store.postgres.database import PostgresDatabase
from pymail.store.postgres.directory import PostgresDirectory
from pymail.store.postgres.index import PostgresChangeStream, PostgresIndex

__all__ = ["PostgresChangeStream", "PostgresDatabase", "PostgresDirectory", "PostgresIndex"]
