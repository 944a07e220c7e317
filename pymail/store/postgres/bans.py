"""PostgresBanStore: the `BanStore` (failed logins, banned addresses) in PostgreSQL, shared
by every pymail node on the database.

The same behaviour as `SqliteBanStore` (the conformance suite runs both):

* Tables `auth_failures` and `auth_bans` (schema step 3), times ``TIMESTAMPTZ``.
* `record_failure` takes ``pg_advisory_xact_lock`` on the address (a hash of it, in its
  own key space next to the migrator's) before it inserts and counts, so concurrent
  failures from one address on several nodes are counted exactly: the fifth one sees 5.
* `ban` is one upsert: an address banned already keeps the ban's start and the later of
  the two ends; its recorded failures are deleted in the same transaction.
* `prune` deletes with ``RETURNING``: each ended ban is returned to exactly one caller.
"""

from __future__ import annotations

import datetime as _dt

import asyncpg

from pymail.store.interfaces import Ban, FailureCounts
from pymail.store.postgres.database import PostgresDatabase
from pymail.store.postgres.directory import timestamp_from_db

__all__ = ["PostgresBanStore"]

_BAN_COLUMNS = "ip, until, failures, reason, created_at"

#: First key of the two-key advisory lock (``pg_advisory_xact_lock(int4, int4)``) that
#: serialises failures of one address; the second is ``hashtext(ip)``.
ADVISORY_LOCK_CLASS = 0x7062616E  # "pban"


def _ban(row: asyncpg.Record) -> Ban:
    ip, until, failures, reason, created = row
    return Ban(
        ip=ip,
        until=timestamp_from_db(until),
        failures=int(failures),
        reason=reason,
        created_at=timestamp_from_db(created),
    )


class PostgresBanStore:
    """The `BanStore` on a `PostgresDatabase` (see the module docstring)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def record_failure(
        self, ip: str, account: str, at: _dt.datetime, since: _dt.datetime
    ) -> FailureCounts:
        async def tx(conn: asyncpg.Connection) -> FailureCounts:
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", ADVISORY_LOCK_CLASS, ip
            )
            await conn.execute(
                "INSERT INTO auth_failures (ip, account, at) VALUES ($1, $2, $3)", ip, account, at
            )
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM auth_failures WHERE ip = $1 AND at >= $3),"
                " (SELECT count(*) FROM auth_failures WHERE account = $2 AND at >= $3)",
                ip, account, since,
            )
            return FailureCounts(ip=int(row[0]), account=int(row[1]))

        return await self.db.run(tx)

    async def ban(
        self, ip: str, until: _dt.datetime, *, failures: int, reason: str, now: _dt.datetime
    ) -> Ban:
        async def tx(conn: asyncpg.Connection) -> Ban:
            row = await conn.fetchrow(
                # An active ban (ends after now) keeps its start and the later end; an
                # ended one is replaced.
                f"INSERT INTO auth_bans AS b ({_BAN_COLUMNS}) VALUES ($1, $2, $3, $4, $5)"
                " ON CONFLICT (ip) DO UPDATE SET"
                "  until = CASE WHEN b.until > EXCLUDED.created_at"
                "   THEN GREATEST(b.until, EXCLUDED.until) ELSE EXCLUDED.until END,"
                "  failures = CASE WHEN b.until > EXCLUDED.created_at"
                "   THEN GREATEST(b.failures, EXCLUDED.failures) ELSE EXCLUDED.failures END,"
                "  created_at = CASE WHEN b.until > EXCLUDED.created_at"
                "   THEN b.created_at ELSE EXCLUDED.created_at END,"
                "  reason = EXCLUDED.reason"
                f" RETURNING {_BAN_COLUMNS}",
                ip, until, failures, reason, now,
            )
            await conn.execute("DELETE FROM auth_failures WHERE ip = $1", ip)
            return _ban(row)

        return await self.db.run(tx)

    async def get_ban(self, ip: str, now: _dt.datetime) -> Ban | None:
        row = await self.db.fetchrow(
            f"SELECT {_BAN_COLUMNS} FROM auth_bans WHERE ip = $1 AND until > $2", ip, now
        )
        return _ban(row) if row else None

    async def list_bans(self, now: _dt.datetime) -> list[Ban]:
        rows = await self.db.fetch(
            f"SELECT {_BAN_COLUMNS} FROM auth_bans WHERE until > $1 ORDER BY ip COLLATE \"C\"",
            now,
        )
        return [_ban(r) for r in rows]

    async def remove_ban(self, ip: str) -> bool:
        async def tx(conn: asyncpg.Connection) -> bool:
            status = await conn.execute("DELETE FROM auth_bans WHERE ip = $1", ip)
            await conn.execute("DELETE FROM auth_failures WHERE ip = $1", ip)
            return status != "DELETE 0"

        return await self.db.run(tx)

    async def prune(self, failures_before: _dt.datetime, now: _dt.datetime) -> list[Ban]:
        async def tx(conn: asyncpg.Connection) -> list[Ban]:
            await conn.execute("DELETE FROM auth_failures WHERE at < $1", failures_before)
            rows = await conn.fetch(
                f"DELETE FROM auth_bans WHERE until <= $1 RETURNING {_BAN_COLUMNS}", now
            )
            return sorted((_ban(r) for r in rows), key=lambda b: b.ip)

        return await self.db.run(tx)
