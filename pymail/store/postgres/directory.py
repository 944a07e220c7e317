"""PostgresDirectory: the `Directory` (domains, users, aliases) on the seed's tables.

The same behaviour as `SqliteDirectory` (the conformance suite runs both):

* Domain names and addresses are lower-cased on write and on lookup (plain ``=`` so the
  UNIQUE indexes serve every lookup); validation follows `pymail.store.rules`
  (`normalize_domain`, `normalize_address`), as in the SQLite backend.
* The seed's CHECK on `domains.auth_type` is the authority on valid values: a refused
  value is reported as `ValueError`.
* Removing a domain removes its aliases and users explicitly (an operator's older tables
  may lack ``ON DELETE CASCADE``), in one transaction; a user's mailboxes and messages go
  by the cascades of pymail's own tables.
* `add_user` creates no mailbox.
* Values written by other tools are read tolerantly: NULL quota is 0, NULL or textual
  booleans as SQL would take them, NULL transport/auth_type as the seed's defaults.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

import asyncpg
import asyncpg.exceptions as pgerr

from pymail.store.interfaces import Alias, AlreadyExists, Domain, NotFound, User
from pymail.store.postgres.database import PostgresDatabase
from pymail.store.rules import normalize_address, normalize_domain

__all__ = ["PostgresDirectory", "bool_from_db", "timestamp_from_db"]

_DOMAIN_COLUMNS = (
    "id, domain_name, transport, company_id, auth_type, ldap_base_dn, is_active,"
    " created_at::timestamptz"
)
_USER_COLUMNS = "id, domain_id, email, password, quota, is_active, created_at::timestamptz"
_ALIAS_COLUMNS = "id, domain_id, source, destination, is_active"

#: Lists are sorted bytewise, as SQLite sorts them, whatever the database's collation.
_BYTEWISE = 'COLLATE "C"'

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def bool_from_db(value: object) -> bool:
    """BOOLEAN as is; an integer or text column from an older schema as SQL reads it;
    NULL is false (as in ``WHERE is_active``)."""
    if isinstance(value, str):
        return value.strip().lower() in {"1", "t", "true", "y", "yes", "on"}
    return bool(value)


def timestamp_from_db(value: object) -> _dt.datetime:
    """A timezone-aware datetime (UTC); NULL reads as the Unix epoch."""
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=_dt.timezone.utc)
        return value.astimezone(_dt.timezone.utc)
    return _EPOCH


def _domain(row: asyncpg.Record) -> Domain:
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


def _user(row: asyncpg.Record) -> User:
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


def _alias(row: asyncpg.Record) -> Alias:
    id_, domain_id, source, destination, active = row
    return Alias(
        id=id_,
        domain_id=domain_id,
        source=source,
        destination=destination,
        is_active=bool_from_db(active),
    )


async def _domain_id(conn: asyncpg.Connection, domain: str) -> int:
    value = await conn.fetchval("SELECT id FROM domains WHERE domain_name = $1", domain)
    if value is None:
        raise NotFound(f"no domain {domain}")
    return int(value)


class PostgresDirectory:
    """The `Directory` on a `PostgresDatabase` (see the module docstring)."""

    def __init__(self, db: PostgresDatabase) -> None:
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

        async def tx(conn: asyncpg.Connection) -> Domain:
            try:
                row = await conn.fetchrow(
                    "INSERT INTO domains"
                    " (domain_name, transport, company_id, auth_type, ldap_base_dn)"
                    f" VALUES ($1, $2, $3, $4, $5) RETURNING {_DOMAIN_COLUMNS}",
                    domain,
                    transport,
                    company_id,
                    auth_type,
                    ldap_base_dn,
                )
            except pgerr.UniqueViolationError:
                raise AlreadyExists(f"domain {domain} exists") from None
            except pgerr.CheckViolationError:
                raise ValueError(
                    f"invalid auth_type {auth_type!r} (expected 'local' or 'ldap')"
                ) from None
            assert row is not None
            return _domain(row)

        return await self.db.run(tx)

    async def get_domain(self, name: str) -> Domain | None:
        row = await self.db.fetchrow(
            f"SELECT {_DOMAIN_COLUMNS} FROM domains WHERE domain_name = $1", name.lower()
        )
        return _domain(row) if row else None

    async def list_domains(self) -> list[Domain]:
        rows = await self.db.fetch(
            f"SELECT {_DOMAIN_COLUMNS} FROM domains ORDER BY domain_name {_BYTEWISE}"
        )
        return [_domain(r) for r in rows]

    async def set_domain_active(self, name: str, active: bool) -> None:
        """`NotFound` if there is no such domain."""
        domain = name.lower()
        status = await self.db.execute(
            "UPDATE domains SET is_active = $1 WHERE domain_name = $2", bool(active), domain
        )
        if status.endswith(" 0"):
            raise NotFound(f"no domain {domain}")

    async def remove_domain(self, name: str) -> None:
        """Remove the domain, its aliases, users, mailboxes and messages; `NotFound`."""
        domain = name.lower()

        async def tx(conn: asyncpg.Connection) -> None:
            domain_id = await _domain_id(conn, domain)
            await conn.execute("DELETE FROM virtual_aliases WHERE domain_id = $1", domain_id)
            await conn.execute("DELETE FROM virtual_users WHERE domain_id = $1", domain_id)
            await conn.execute("DELETE FROM domains WHERE id = $1", domain_id)

        await self.db.run(tx)

    # ------------------------------------------------------------------ users

    async def add_user(self, address: str, password_hash: str, *, quota: int = 0) -> User:
        """Create a user (no mailboxes); `NotFound` for an unknown domain, `AlreadyExists`."""
        email, domain = normalize_address(address)
        if quota < 0:
            raise ValueError(f"quota {quota} is negative (0 means unlimited)")

        async def tx(conn: asyncpg.Connection) -> User:
            domain_id = await _domain_id(conn, domain)
            try:
                row = await conn.fetchrow(
                    "INSERT INTO virtual_users (domain_id, email, password, quota)"
                    f" VALUES ($1, $2, $3, $4) RETURNING {_USER_COLUMNS}",
                    domain_id,
                    email,
                    password_hash,
                    quota,
                )
            except pgerr.UniqueViolationError:
                raise AlreadyExists(f"user {email} exists") from None
            except pgerr.ForeignKeyViolationError:  # the domain went away meanwhile
                raise NotFound(f"no domain {domain}") from None
            assert row is not None
            return _user(row)

        return await self.db.run(tx)

    async def get_user(self, address: str) -> User | None:
        row = await self.db.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM virtual_users WHERE email = $1", address.lower()
        )
        return _user(row) if row else None

    async def get_user_by_id(self, user_id: int) -> User | None:
        row = await self.db.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM virtual_users WHERE id = $1", user_id
        )
        return _user(row) if row else None

    async def list_users(self, domain: str | None = None) -> list[User]:
        """Users ordered by address; of one domain if given (none for an unknown one)."""
        if domain is None:
            rows = await self.db.fetch(
                f"SELECT {_USER_COLUMNS} FROM virtual_users ORDER BY email {_BYTEWISE}"
            )
        else:
            rows = await self.db.fetch(
                f"SELECT {_USER_COLUMNS} FROM virtual_users WHERE domain_id ="
                " (SELECT id FROM domains WHERE domain_name = $1)"
                f" ORDER BY email {_BYTEWISE}",
                domain.lower(),
            )
        return [_user(r) for r in rows]

    async def _update_user(self, address: str, column: str, value: object) -> None:
        email = address.lower()
        status = await self.db.execute(
            f"UPDATE virtual_users SET {column} = $1 WHERE email = $2", value, email
        )
        if status.endswith(" 0"):
            raise NotFound(f"no user {email}")

    async def set_password(self, address: str, password_hash: str) -> None:
        """`NotFound` if there is no such user."""
        await self._update_user(address, "password", password_hash)

    async def set_user_active(self, address: str, active: bool) -> None:
        """`NotFound` if there is no such user."""
        await self._update_user(address, "is_active", bool(active))

    async def remove_user(self, address: str) -> None:
        """Remove the user, its mailboxes and messages; `NotFound` if absent."""
        email = address.lower()
        status = await self.db.execute("DELETE FROM virtual_users WHERE email = $1", email)
        if status.endswith(" 0"):
            raise NotFound(f"no user {email}")

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

        async def tx(conn: asyncpg.Connection) -> list[Alias]:
            domain_id = await _domain_id(conn, domain)
            aliases = []
            for dest in dests:
                # ON CONFLICT: a concurrent add of the same pair (where the UNIQUE exists);
                # NOT EXISTS: an operator's table without that UNIQUE.
                await conn.execute(
                    "INSERT INTO virtual_aliases (domain_id, source, destination)"
                    " SELECT $1, $2::varchar, $3::varchar WHERE NOT EXISTS (SELECT 1 FROM"
                    " virtual_aliases WHERE source = $2 AND destination = $3)"
                    " ON CONFLICT DO NOTHING",
                    domain_id,
                    src,
                    dest,
                )
                row = await conn.fetchrow(
                    f"SELECT {_ALIAS_COLUMNS} FROM virtual_aliases"
                    " WHERE source = $1 AND destination = $2 ORDER BY id LIMIT 1",
                    src,
                    dest,
                )
                assert row is not None
                aliases.append(_alias(row))
            return aliases

        return await self.db.run(tx)

    async def get_alias_destinations(self, source: str) -> list[str]:
        """Destinations of the active rows for exactly `source` (no catch-all logic)."""
        rows = await self.db.fetch(
            "SELECT destination, is_active FROM virtual_aliases WHERE source = $1 ORDER BY id",
            source.lower(),
        )
        return [dest for dest, active in rows if bool_from_db(active)]

    async def list_aliases(self, domain: str | None = None) -> list[Alias]:
        """Aliases ordered by source; of one domain if given."""
        if domain is None:
            rows = await self.db.fetch(
                f"SELECT {_ALIAS_COLUMNS} FROM virtual_aliases ORDER BY source {_BYTEWISE}, id"
            )
        else:
            rows = await self.db.fetch(
                f"SELECT {_ALIAS_COLUMNS} FROM virtual_aliases WHERE domain_id ="
                " (SELECT id FROM domains WHERE domain_name = $1)"
                f" ORDER BY source {_BYTEWISE}, id",
                domain.lower(),
            )
        return [_alias(r) for r in rows]

    async def remove_alias(self, source: str, destination: str | None = None) -> int:
        """Remove rows for `source` (one destination, or all); `NotFound` if none."""
        src = source.lower()
        if destination is None:
            status = await self.db.execute("DELETE FROM virtual_aliases WHERE source = $1", src)
        else:
            status = await self.db.execute(
                "DELETE FROM virtual_aliases WHERE source = $1 AND destination = $2",
                src,
                destination.lower(),
            )
        count = int(status.rsplit(" ", 1)[-1])
        if count == 0:
            raise NotFound(f"no alias {src}" + (f" -> {destination}" if destination else ""))
        return count
