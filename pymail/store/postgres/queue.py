"""PostgresQueueStore: the outbound queue (`pymail.store.queue.QueueStore`) in PostgreSQL,
shared by every pymail node on the database.

The same behaviour as `SqliteQueueStore` (the conformance suite runs both):

* Tables `queue_messages` and `queue_recipients` (schema step 4), times ``TIMESTAMPTZ``.
* Queue rows are written by `insert_queued` inside `PostgresIndex.deliver`'s transaction:
  the mailbox rows and the queue rows of one message commit together or not at all.
* `claim` is one statement, its own short committed transaction: the due rows are picked
  with ``FOR UPDATE SKIP LOCKED`` (a row another node is claiming at this moment is
  skipped, never waited for), then leased (``lease_owner``, ``lease_until``, and
  ``next_attempt`` moved to the lease's end).  Under READ COMMITTED a row another claim
  committed meanwhile is re-checked against the condition on its new version
  (no longer due), so two nodes never lease the same recipient.
* `record` updates only rows that are still QUEUED and leased to the caller, in one
  transaction: a final status is never changed back, and a late result of an owner whose
  lease ran out and was taken by another node is ignored.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

import asyncpg

from pymail.store.postgres.database import PostgresDatabase
from pymail.store.queue import (
    Claim,
    QueuedMessage,
    QueuedRecipient,
    QueueEntry,
    QueueStats,
    RecipientResult,
    RecipientState,
    RecipientStatus,
)
from pymail.store.rules import aware

__all__ = ["PostgresQueueStore", "insert_queued"]

_QUEUED = RecipientStatus.QUEUED.value
_MESSAGE_COLUMNS = (
    "id, queue_id, blob_key, size, sender, origin, auth_user, envid, ret, requiretls,"
    " smtputf8, body, created_at, expires_at"
)
_RECIPIENT_COLUMNS = (
    "id, message_id, address, domain, route, orcpt, notify, status, attempts, next_attempt,"
    " last_attempt, lease_owner, lease_until, reply_code, enhanced_code, reply_text,"
    " remote_host, delay_notified"
)

#: One message and its recipients in one round trip.
_INSERT = """
WITH m AS (
    INSERT INTO queue_messages (queue_id, blob_key, size, sender, origin, auth_user, envid,
                                ret, requiretls, smtputf8, body, created_at, expires_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
    RETURNING id, created_at
)
INSERT INTO queue_recipients (message_id, address, domain, route, orcpt, notify, status,
                              next_attempt)
SELECT m.id, r.address, r.domain, r.route, r.orcpt, r.notify, 'queued', m.created_at
  FROM m, unnest($14::text[], $15::text[], $16::text[], $17::text[], $18::text[])
          WITH ORDINALITY AS r(address, domain, route, orcpt, notify, n)
 ORDER BY r.n"""

#: $1 owner, $2 now, $3 lease end, $4 limit.
_CLAIM = f"""
WITH due AS (
    SELECT id FROM queue_recipients
     WHERE status = 'queued' AND next_attempt <= $2
       AND (lease_until IS NULL OR lease_until <= $2)
     ORDER BY next_attempt, id
     LIMIT $4
       FOR UPDATE SKIP LOCKED
)
UPDATE queue_recipients q
   SET lease_owner = $1, lease_until = $3, leased_at = $2, next_attempt = $3
  FROM due
 WHERE q.id = due.id
RETURNING {", ".join("q." + c.strip() for c in _RECIPIENT_COLUMNS.split(","))}"""


def _notify_text(notify: frozenset[str]) -> str:
    return ",".join(sorted(n.upper() for n in notify))


async def insert_queued(conn: asyncpg.Connection, messages: Sequence[QueuedMessage]) -> None:
    """Write the queue rows of `messages` in the caller's transaction: each recipient
    QUEUED, due at the message's `created_at`.  `ValueError` for a message without
    recipients."""
    for m in messages:
        if not m.recipients:
            raise ValueError(f"queued message {m.queue_id} has no recipients")
        rs = m.recipients
        await conn.execute(
            _INSERT, m.queue_id, m.blob_key, m.size, m.sender, m.origin, m.auth_user, m.envid,
            m.ret, bool(m.requiretls), bool(m.smtputf8), m.body, aware(m.created_at),
            aware(m.expires_at),
            [r.address for r in rs], [r.domain.lower() for r in rs], [r.route for r in rs],
            [r.orcpt for r in rs], [_notify_text(r.notify) for r in rs],
        )


def _recipient(row: asyncpg.Record) -> tuple[int, RecipientState]:
    state = RecipientState(
        id=int(row["id"]),
        recipient=QueuedRecipient(
            address=row["address"], domain=row["domain"], route=row["route"],
            orcpt=row["orcpt"], notify=frozenset(n for n in row["notify"].split(",") if n),
        ),
        status=RecipientStatus(row["status"]),
        attempts=int(row["attempts"]),
        next_attempt=row["next_attempt"],
        last_attempt=row["last_attempt"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        reply_code=row["reply_code"],
        enhanced_code=row["enhanced_code"],
        reply_text=row["reply_text"],
        remote_host=row["remote_host"],
        delay_notified=bool(row["delay_notified"]),
    )
    return int(row["message_id"]), state


def _entry(row: asyncpg.Record, recipients: Sequence[RecipientState]) -> QueueEntry:
    message = QueuedMessage(
        queue_id=row["queue_id"], blob_key=row["blob_key"], size=int(row["size"]),
        sender=row["sender"], recipients=tuple(s.recipient for s in recipients),
        created_at=row["created_at"], expires_at=row["expires_at"], origin=row["origin"],
        auth_user=row["auth_user"], envid=row["envid"], ret=row["ret"],
        requiretls=bool(row["requiretls"]), smtputf8=bool(row["smtputf8"]), body=row["body"],
    )
    return QueueEntry(id=int(row["id"]), message=message, recipients=tuple(recipients))


async def _entries(conn: asyncpg.Connection, message_ids: Sequence[int],
                   recipients: dict[int, list[RecipientState]]) -> list[QueueEntry]:
    rows = await conn.fetch(
        f"SELECT {_MESSAGE_COLUMNS} FROM queue_messages WHERE id = ANY($1::bigint[])",
        list(message_ids),
    )
    by_id = {int(r["id"]): r for r in rows}
    return [_entry(by_id[i], recipients.get(i, [])) for i in message_ids if i in by_id]


class PostgresQueueStore:
    """The `QueueStore` on a `PostgresDatabase` (see the module docstring)."""

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db

    async def claim(self, *, owner: str, now: _dt.datetime, lease: _dt.timedelta,
                    limit: int) -> list[Claim]:
        if limit <= 0:
            return []
        now = aware(now)
        until = now + lease

        async def tx(conn: asyncpg.Connection) -> list[Claim]:
            rows = await conn.fetch(_CLAIM, owner, now, until, limit)
            by_message: dict[int, list[RecipientState]] = {}
            for row in sorted(rows, key=lambda r: r["id"]):
                message_id, state = _recipient(row)
                by_message.setdefault(message_id, []).append(state)
            entries = await _entries(conn, sorted(by_message), by_message)
            return [Claim(entry=e, lease_until=until) for e in entries]

        return await self.db.run(tx)

    async def record(self, owner: str, results: Sequence[RecipientResult]) -> None:
        if not results:
            return

        async def tx(conn: asyncpg.Connection) -> None:
            for r in results:
                attempted = bool(r.attempted)
                await conn.execute(
                    "UPDATE queue_recipients SET status = $3,"
                    " lease_owner = NULL, lease_until = NULL, leased_at = NULL,"
                    " next_attempt = coalesce($4, next_attempt),"
                    " attempts = attempts + CASE WHEN $5 THEN 1 ELSE 0 END,"
                    " reply_code = CASE WHEN $5 THEN $6 ELSE reply_code END,"
                    " enhanced_code = CASE WHEN $5 THEN $7 ELSE enhanced_code END,"
                    " reply_text = CASE WHEN $5 THEN $8 ELSE reply_text END,"
                    " remote_host = CASE WHEN $5 THEN $9 ELSE remote_host END,"
                    " last_attempt = CASE WHEN $5 AND $10::timestamptz IS NOT NULL"
                    "  THEN $10 ELSE last_attempt END,"
                    " delay_notified = coalesce($11, delay_notified)"
                    " WHERE id = $1 AND lease_owner = $2 AND status = 'queued'",
                    r.recipient_id, owner, RecipientStatus(r.status).value,
                    None if r.next_attempt is None else aware(r.next_attempt), attempted,
                    r.reply_code, r.enhanced_code, r.reply_text, r.remote_host,
                    None if r.at is None else aware(r.at), r.delay_notified,
                )

        await self.db.run(tx)

    async def release(self, owner: str) -> int:
        status = await self.db.execute(
            "UPDATE queue_recipients SET next_attempt = coalesce(leased_at, next_attempt),"
            " lease_owner = NULL, lease_until = NULL, leased_at = NULL"
            " WHERE lease_owner = $1 AND status = 'queued'",
            owner,
        )
        return int(status.split()[-1])

    async def _read(self, where: str, args: tuple, *, include_final: bool = True,
                    limit: int | None = None) -> list[QueueEntry]:
        async def tx(conn: asyncpg.Connection) -> list[QueueEntry]:
            sql = f"SELECT id FROM queue_messages m WHERE {where}"
            params = list(args)
            if not include_final:
                sql += (" AND EXISTS (SELECT 1 FROM queue_recipients r"
                        " WHERE r.message_id = m.id AND r.status = 'queued')")
            sql += " ORDER BY created_at, id"
            if limit is not None:
                params.append(limit)
                sql += f" LIMIT ${len(params)}"
            ids = [int(r[0]) for r in await conn.fetch(sql, *params)]
            rows = await conn.fetch(
                f"SELECT {_RECIPIENT_COLUMNS} FROM queue_recipients"
                " WHERE message_id = ANY($1::bigint[])"
                + ("" if include_final else " AND status = 'queued'") + " ORDER BY id",
                ids,
            )
            by_message: dict[int, list[RecipientState]] = {}
            for row in rows:
                message_id, state = _recipient(row)
                by_message.setdefault(message_id, []).append(state)
            return await _entries(conn, ids, by_message)

        return await self.db.run(tx, readonly=True)

    async def get(self, queue_id: str) -> QueueEntry | None:
        entries = await self._read("queue_id = $1", (queue_id,))
        return entries[0] if entries else None

    async def list_entries(self, *, include_final: bool = False,
                           limit: int = 1000) -> list[QueueEntry]:
        return await self._read("TRUE", (), include_final=include_final, limit=limit)

    async def retry(self, queue_id: str | None, now: _dt.datetime) -> int:
        sql = ("UPDATE queue_recipients SET next_attempt = $1"
               " WHERE status = 'queued' AND (lease_until IS NULL OR lease_until <= $1)")
        args: list[object] = [aware(now)]
        if queue_id is not None:
            sql += " AND message_id IN (SELECT id FROM queue_messages WHERE queue_id = $2)"
            args.append(queue_id)
        status = await self.db.execute(sql, *args)
        return int(status.split()[-1])

    async def delete(self, queue_id: str) -> bool:
        status = await self.db.execute("DELETE FROM queue_messages WHERE queue_id = $1", queue_id)
        return int(status.split()[-1]) > 0

    async def purge_finished(self) -> list[str]:
        async def tx(conn: asyncpg.Connection) -> list[str]:
            rows = await conn.fetch(
                "DELETE FROM queue_messages m WHERE NOT EXISTS (SELECT 1 FROM queue_recipients r"
                " WHERE r.message_id = m.id AND r.status = 'queued') RETURNING blob_key"
            )
            return sorted({r[0] for r in rows})

        return await self.db.run(tx)

    async def stats(self) -> QueueStats:
        async def tx(conn: asyncpg.Connection) -> QueueStats:
            messages = await conn.fetchval("SELECT count(*) FROM queue_messages")
            by_status = {r[0]: int(r[1]) for r in await conn.fetch(
                "SELECT status, count(*) FROM queue_recipients GROUP BY status")}
            oldest = await conn.fetchval(
                "SELECT min(m.created_at) FROM queue_messages m WHERE EXISTS"
                " (SELECT 1 FROM queue_recipients r WHERE r.message_id = m.id"
                "  AND r.status = 'queued')"
            )
            return QueueStats(messages=int(messages), recipients_queued=by_status.get(_QUEUED, 0),
                              oldest=oldest, by_status=by_status)

        return await self.db.run(tx, readonly=True)
