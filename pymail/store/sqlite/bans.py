"""SqliteBanStore: the `BanStore` (failed logins, banned addresses) on the shared SQLite file.

Invariants:

* Tables `auth_failures` and `auth_bans` (schema step 4); times are integer microseconds
  since the Unix epoch, UTC, so comparisons are exact and indexed.
* Every write is one job of the shared `SqliteDatabase` (one transaction, group-committed
  with the deliveries); `record_failure` inserts and counts inside that job, so two
  processes on the file never both miss each other's failure.
* `ban` on an address banned already keeps the ban's start and the later of the two ends
  (two processes banning at once end with one row), and deletes the address's recorded
  failures in the same transaction.
* `prune` deletes with ``RETURNING``: each ended ban is returned to exactly one caller,
  whichever process pruned first.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3

from pymail.store.interfaces import Ban, FailureCounts
from pymail.store.sqlite.database import (
    SqliteDatabase,
    datetime_from_micros,
    micros_from_datetime,
)

__all__ = ["SqliteBanStore"]

_BAN_COLUMNS = "ip, until, failures, reason, created_at"


def _ban(row: tuple) -> Ban:
    ip, until, failures, reason, created = row
    return Ban(
        ip=ip,
        until=datetime_from_micros(until),
        failures=int(failures),
        reason=reason,
        created_at=datetime_from_micros(created),
    )


class SqliteBanStore:
    """The `BanStore` on a `SqliteDatabase` (see the module docstring)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def record_failure(
        self, ip: str, account: str, at: _dt.datetime, since: _dt.datetime
    ) -> FailureCounts:
        at_us, since_us = micros_from_datetime(at), micros_from_datetime(since)

        def job(conn: sqlite3.Connection) -> FailureCounts:
            conn.execute(
                "INSERT INTO auth_failures (ip, account, at) VALUES (?, ?, ?)",
                (ip, account, at_us),
            )
            (by_ip,) = conn.execute(
                "SELECT count(*) FROM auth_failures WHERE ip = ? AND at >= ?", (ip, since_us)
            ).fetchone()
            (by_account,) = conn.execute(
                "SELECT count(*) FROM auth_failures WHERE account = ? AND at >= ?",
                (account, since_us),
            ).fetchone()
            return FailureCounts(ip=int(by_ip), account=int(by_account))

        return await self.db.write(job)

    async def ban(
        self, ip: str, until: _dt.datetime, *, failures: int, reason: str, now: _dt.datetime
    ) -> Ban:
        until_us, now_us = micros_from_datetime(until), micros_from_datetime(now)

        def job(conn: sqlite3.Connection) -> Ban:
            row = conn.execute(
                # An active ban (ends after now) keeps its start and the later end; an
                # ended one is replaced.
                f"INSERT INTO auth_bans ({_BAN_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (ip) DO UPDATE SET"
                "  until = CASE WHEN auth_bans.until > excluded.created_at"
                "   THEN max(auth_bans.until, excluded.until) ELSE excluded.until END,"
                "  failures = CASE WHEN auth_bans.until > excluded.created_at"
                "   THEN max(auth_bans.failures, excluded.failures) ELSE excluded.failures END,"
                "  created_at = CASE WHEN auth_bans.until > excluded.created_at"
                "   THEN auth_bans.created_at ELSE excluded.created_at END,"
                "  reason = excluded.reason"
                f" RETURNING {_BAN_COLUMNS}",
                (ip, until_us, failures, reason, now_us),
            ).fetchone()
            conn.execute("DELETE FROM auth_failures WHERE ip = ?", (ip,))
            return _ban(row)

        return await self.db.write(job)

    async def get_ban(self, ip: str, now: _dt.datetime) -> Ban | None:
        now_us = micros_from_datetime(now)

        def query(conn: sqlite3.Connection) -> Ban | None:
            row = conn.execute(
                f"SELECT {_BAN_COLUMNS} FROM auth_bans WHERE ip = ? AND until > ?", (ip, now_us)
            ).fetchone()
            return _ban(row) if row else None

        return await self.db.read(query)

    async def list_bans(self, now: _dt.datetime) -> list[Ban]:
        now_us = micros_from_datetime(now)

        def query(conn: sqlite3.Connection) -> list[Ban]:
            rows = conn.execute(
                f"SELECT {_BAN_COLUMNS} FROM auth_bans WHERE until > ? ORDER BY ip", (now_us,)
            )
            return [_ban(r) for r in rows]

        return await self.db.read(query)

    async def remove_ban(self, ip: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM auth_bans WHERE ip = ?", (ip,))
            conn.execute("DELETE FROM auth_failures WHERE ip = ?", (ip,))
            return cur.rowcount > 0

        return await self.db.write(job)

    async def prune(self, failures_before: _dt.datetime, now: _dt.datetime) -> list[Ban]:
        before_us, now_us = micros_from_datetime(failures_before), micros_from_datetime(now)

        def job(conn: sqlite3.Connection) -> list[Ban]:
            conn.execute("DELETE FROM auth_failures WHERE at < ?", (before_us,))
            rows = conn.execute(
                f"DELETE FROM auth_bans WHERE until <= ? RETURNING {_BAN_COLUMNS}", (now_us,)
            ).fetchall()
            return sorted((_ban(r) for r in rows), key=lambda b: b.ip)

        return await self.db.write(job)
