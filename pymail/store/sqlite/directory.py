"""SqliteDirectory: the `Directory` (domains, users, aliases) on the seed's tables.

Invariants:

* Domain names and addresses are lower-cased on write and on lookup (the tables are read
  with ``=`` so their UNIQUE indexes serve every lookup).  A row written in mixed case by
  another tool is not found; pymail never writes one.
* The seed's CHECK on `domains.auth_type` is the authority on valid values: an invalid one
  is refused by the database and reported as `ValueError`.
* Removing a domain removes its aliases and users explicitly (an operator's older tables
  may lack ``ON DELETE CASCADE``); a user's mailboxes and messages go by the cascades of
  pymail's own tables.
* `add_user` creates no mailbox: the index does, on first delivery or on
  `Index.ensure_default_mailboxes`.
* Every write is one job of the shared `SqliteDatabase`, so it commits atomically.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from pymail.store.interfaces import Alias, AlreadyExists, Domain, NotFound, User
from pymail.store.rules import normalize_address, normalize_domain
from pymail.store.sqlite.database import (
    SqliteDatabase,
    bool_from_db,
    constraint_violated,
    timestamp_from_db,
)

__all__ = ["SqliteDirectory"]

_DOMAIN_COLUMNS = (
    "id, domain_name, transport, company_id, auth_type, ldap_base_dn, is_active, created_at"
)
_USER_COLUMNS = "id, domain_id, email, password, quota, is_active, created_at"
_ALIAS_COLUMNS = "id, domain_id, source, destination, is_active"


def _domain(row: sqlite3.Row | tuple) -> Domain:
    id_, name, transport, company_id, auth_type, base_dn, active, created = row
    return Domain(
        id=id_,
        name=name,
        transport=transport if transport is not None else "virtual:",
        company_id=company_id,
        auth_type=auth_type if auth_type is not None else "local",
        ldap_base_dn=base_dn,
        is_active=bool_from_db(active),
        created_at=timestamp_from_db(created),
    )


def _user(row: sqlite3.Row | tuple) -> User:
    id_, domain_id, email, password, quota, active, created = row
    return User(
        id=id_,
        domain_id=domain_id,
        address=email,
        password_hash=password,
        quota=int(quota or 0),
        is_active=bool_from_db(active),
        created_at=timestamp_from_db(created),
    )


def _alias(row: sqlite3.Row | tuple) -> Alias:
    id_, domain_id, source, destination, active = row
    return Alias(
        id=id_,
        domain_id=domain_id,
        source=source,
        destination=destination,
        is_active=bool_from_db(active),
    )


def _domain_id(conn: sqlite3.Connection, domain: str) -> int:
    row = conn.execute("SELECT id FROM domains WHERE domain_name = ?", (domain,)).fetchone()
    if row is None:
        raise NotFound(f"no domain {domain}")
    return int(row[0])


class SqliteDirectory:
    """The `Directory` on a `SqliteDatabase` (see the module docstring)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    # ------------------------------------------------------------------ domains

    async def add_domain(
        self,
        name: str,
        *,
        transport: str = "virtual:",
        auth_type: str = "local",
        ldap_base_dn: str | None = None,
        company_id: int | None = None,
    ) -> Domain:
        """Create a domain; `AlreadyExists` if it does, `ValueError` for a bad auth_type."""
        domain = normalize_domain(name)

        def job(conn: sqlite3.Connection) -> Domain:
            try:
                rows = conn.execute(
                    "INSERT INTO domains"
                    " (domain_name, transport, company_id, auth_type, ldap_base_dn)"
                    f" VALUES (?, ?, ?, ?, ?) RETURNING {_DOMAIN_COLUMNS}",
                    (domain, transport, company_id, auth_type, ldap_base_dn),
                ).fetchall()
            except sqlite3.IntegrityError as exc:
                kind = constraint_violated(exc)
                if kind == "unique":
                    raise AlreadyExists(f"domain {domain} exists") from None
                if kind == "check":
                    raise ValueError(
                        f"invalid auth_type {auth_type!r} (expected 'local' or 'ldap')"
                    ) from None
                raise
            return _domain(rows[0])

        return await self.db.write(job)

    async def get_domain(self, name: str) -> Domain | None:
        domain = name.lower()

        def query(conn: sqlite3.Connection) -> Domain | None:
            row = conn.execute(
                f"SELECT {_DOMAIN_COLUMNS} FROM domains WHERE domain_name = ?", (domain,)
            ).fetchone()
            return _domain(row) if row else None

        return await self.db.read(query)

    async def list_domains(self) -> list[Domain]:
        def query(conn: sqlite3.Connection) -> list[Domain]:
            rows = conn.execute(f"SELECT {_DOMAIN_COLUMNS} FROM domains ORDER BY domain_name")
            return [_domain(r) for r in rows]

        return await self.db.read(query)

    async def set_domain_active(self, name: str, active: bool) -> None:
        """`NotFound` if there is no such domain."""
        domain = name.lower()

        def job(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                "UPDATE domains SET is_active = ? WHERE domain_name = ?", (bool(active), domain)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no domain {domain}")

        await self.db.write(job)

    async def remove_domain(self, name: str) -> None:
        """Remove the domain, its aliases, users, mailboxes and messages; `NotFound`."""
        domain = name.lower()

        def job(conn: sqlite3.Connection) -> None:
            domain_id = _domain_id(conn, domain)
            conn.execute("DELETE FROM virtual_aliases WHERE domain_id = ?", (domain_id,))
            conn.execute("DELETE FROM virtual_users WHERE domain_id = ?", (domain_id,))
            conn.execute("DELETE FROM domains WHERE id = ?", (domain_id,))

        await self.db.write(job)

    # ------------------------------------------------------------------ users

    async def add_user(self, address: str, password_hash: str, *, quota: int = 0) -> User:
        """Create a user (no mailboxes); `NotFound` for an unknown domain, `AlreadyExists`."""
        email, domain = normalize_address(address)
        if quota < 0:
            raise ValueError(f"quota {quota} is negative (0 means unlimited)")

        def job(conn: sqlite3.Connection) -> User:
            domain_id = _domain_id(conn, domain)
            try:
                rows = conn.execute(
                    "INSERT INTO virtual_users (domain_id, email, password, quota)"
                    f" VALUES (?, ?, ?, ?) RETURNING {_USER_COLUMNS}",
                    (domain_id, email, password_hash, quota),
                ).fetchall()
            except sqlite3.IntegrityError as exc:
                if constraint_violated(exc) == "unique":
                    raise AlreadyExists(f"user {email} exists") from None
                raise
            return _user(rows[0])

        return await self.db.write(job)

    async def get_user(self, address: str) -> User | None:
        email = address.lower()

        def query(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS} FROM virtual_users WHERE email = ?", (email,)
            ).fetchone()
            return _user(row) if row else None

        return await self.db.read(query)

    async def get_user_by_id(self, user_id: int) -> User | None:
        def query(conn: sqlite3.Connection) -> User | None:
            row = conn.execute(
                f"SELECT {_USER_COLUMNS} FROM virtual_users WHERE id = ?", (user_id,)
            ).fetchone()
            return _user(row) if row else None

        return await self.db.read(query)

    async def list_users(self, domain: str | None = None) -> list[User]:
        """Users ordered by address; of one domain if given (none for an unknown one)."""

        def query(conn: sqlite3.Connection) -> list[User]:
            if domain is None:
                rows = conn.execute(f"SELECT {_USER_COLUMNS} FROM virtual_users ORDER BY email")
            else:
                rows = conn.execute(
                    f"SELECT {_USER_COLUMNS} FROM virtual_users WHERE domain_id ="
                    " (SELECT id FROM domains WHERE domain_name = ?) ORDER BY email",
                    (domain.lower(),),
                )
            return [_user(r) for r in rows]

        return await self.db.read(query)

    async def _update_user(self, address: str, column: str, value: object) -> None:
        email = address.lower()

        def job(conn: sqlite3.Connection) -> None:
            cur = conn.execute(
                f"UPDATE virtual_users SET {column} = ? WHERE email = ?", (value, email)
            )
            if cur.rowcount == 0:
                raise NotFound(f"no user {email}")

        await self.db.write(job)

    async def set_password(self, address: str, password_hash: str) -> None:
        """`NotFound` if there is no such user."""
        await self._update_user(address, "password", password_hash)

    async def set_user_active(self, address: str, active: bool) -> None:
        """`NotFound` if there is no such user."""
        await self._update_user(address, "is_active", bool(active))

    async def remove_user(self, address: str) -> None:
        """Remove the user, its mailboxes and messages; `NotFound` if absent."""
        email = address.lower()

        def job(conn: sqlite3.Connection) -> None:
            cur = conn.execute("DELETE FROM virtual_users WHERE email = ?", (email,))
            if cur.rowcount == 0:
                raise NotFound(f"no user {email}")

        await self.db.write(job)

    # ------------------------------------------------------------------ aliases

    async def add_alias(self, source: str, destinations: Sequence[str]) -> list[Alias]:
        """One row per destination, existing pairs kept; the rows, in `destinations` order.

        `NotFound` if the source's domain is not a local domain."""
        src, domain = normalize_address(source, allow_empty_local=True)
        dests: list[str] = []
        for d in destinations:
            value = d.lower()
            if not value or any(c.isspace() for c in value) or "," in value:
                raise ValueError(f"invalid alias destination {d!r}")
            if value not in dests:
                dests.append(value)

        def job(conn: sqlite3.Connection) -> list[Alias]:
            domain_id = _domain_id(conn, domain)
            aliases = []
            for dest in dests:
                conn.execute(
                    "INSERT INTO virtual_aliases (domain_id, source, destination)"
                    " SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM virtual_aliases"
                    " WHERE source = ? AND destination = ?)",
                    (domain_id, src, dest, src, dest),
                )
                row = conn.execute(
                    f"SELECT {_ALIAS_COLUMNS} FROM virtual_aliases"
                    " WHERE source = ? AND destination = ? ORDER BY id LIMIT 1",
                    (src, dest),
                ).fetchone()
                aliases.append(_alias(row))
            return aliases

        return await self.db.write(job)

    async def get_alias_destinations(self, source: str) -> list[str]:
        """Destinations of the active rows for exactly `source` (no catch-all logic)."""
        src = source.lower()

        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT destination, is_active FROM virtual_aliases WHERE source = ?"
                " ORDER BY id",
                (src,),
            )
            return [dest for dest, active in rows if bool_from_db(active)]

        return await self.db.read(query)

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        """Aliases ordered by source; of one domain if given."""

        def query(conn: sqlite3.Connection) -> list[Alias]:
            if domain is None:
                rows = conn.execute(
                    f"SELECT {_ALIAS_COLUMNS} FROM virtual_aliases ORDER BY source, id"
                )
            else:
                rows = conn.execute(
                    f"SELECT {_ALIAS_COLUMNS} FROM virtual_aliases WHERE domain_id ="
                    " (SELECT id FROM domains WHERE domain_name = ?) ORDER BY source, id",
                    (domain.lower(),),
                )
            return [_alias(r) for r in rows]

        return await self.db.read(query)

    async def remove_alias(self, source: str, destination: str | None = None) -> int:
        """Remove rows for `source` (one destination, or all); `NotFound` if none."""
        src = source.lower()

        def job(conn: sqlite3.Connection) -> int:
            if destination is None:
                cur = conn.execute("DELETE FROM virtual_aliases WHERE source = ?", (src,))
            else:
                cur = conn.execute(
                    "DELETE FROM virtual_aliases WHERE source = ? AND destination = ?",
                    (src, destination.lower()),
                )
            if cur.rowcount == 0:
                raise NotFound(f"no alias {src}" + (f" -> {destination}" if destination else ""))
            return cur.rowcount

        return await self.db.write(job)
