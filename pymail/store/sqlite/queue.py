"""SqliteQueueStore: the outbound queue (`pymail.store.queue.QueueStore`) on the shared
SQLite file.

Invariants (beside those of the contract in pymail.store.queue):

* Tables `queue_messages` and `queue_recipients` (schema step 5); times are integer
  microseconds since the Unix epoch, UTC, so comparisons are exact and indexed.
* Queue rows are written by `insert_queued`, called inside `SqliteIndex.deliver`'s write
  job: the mailbox rows and the queue rows of one message commit together or not at all.
* Every change is one job of the single writer (`SqliteDatabase.write`), across every
  process on the file (``BEGIN IMMEDIATE``): a `claim` reads the due rows and leases them
  in one transaction nobody else writes in meanwhile, so two owners never hold the same
  recipient -- SQLite's single-node equivalent of PostgreSQL's ``SKIP LOCKED``.
* A recipient is due when it is QUEUED, its next attempt has come and it holds no live
  lease.  `record` and `claim` never touch a final row.
"""

from __future__ import annotations

import datetime as _dt
import sqlite3
from collections.abc import Sequence

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
from pymail.store.sqlite.database import (
    SqliteDatabase,
    bool_from_db,
    datetime_from_micros,
    micros_from_datetime,
)

__all__ = ["SqliteQueueStore", "insert_queued"]

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


def _notify_text(notify: frozenset[str]) -> str:
    return ",".join(sorted(n.upper() for n in notify))


def _micros(value: _dt.datetime | None) -> int | None:
    return None if value is None else micros_from_datetime(value)


def _when(value: int | None) -> _dt.datetime | None:
    return None if value is None else datetime_from_micros(value)


def insert_queued(conn: sqlite3.Connection, messages: Sequence[QueuedMessage]) -> None:
    """Write the queue rows of `messages` (inside the caller's write job): each
    recipient QUEUED, due at the message's `created_at`.  `ValueError` for a message
    without recipients."""
    for m in messages:
        if not m.recipients:
            raise ValueError(f"queued message {m.queue_id} has no recipients")
        created = micros_from_datetime(m.created_at)
        (message_id,) = conn.execute(
            "INSERT INTO queue_messages (queue_id, blob_key, size, sender, origin, auth_user,"
            " envid, ret, requiretls, smtputf8, body, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (m.queue_id, m.blob_key, m.size, m.sender, m.origin, m.auth_user, m.envid, m.ret,
             bool(m.requiretls), bool(m.smtputf8), m.body, created,
             micros_from_datetime(m.expires_at)),
        ).fetchone()
        conn.executemany(
            "INSERT INTO queue_recipients (message_id, address, domain, route, orcpt, notify,"
            " status, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(message_id, r.address, r.domain.lower(), r.route, r.orcpt, _notify_text(r.notify),
              _QUEUED, created) for r in m.recipients],
        )


def _message(row: tuple, recipients: tuple[RecipientState, ...]) -> QueueEntry:
    (id_, queue_id, blob_key, size, sender, origin, auth_user, envid, ret, requiretls,
     smtputf8, body, created, expires) = row
    message = QueuedMessage(
        queue_id=queue_id, blob_key=blob_key, size=int(size), sender=sender,
        recipients=tuple(s.recipient for s in recipients),
        created_at=datetime_from_micros(created), expires_at=datetime_from_micros(expires),
        origin=origin, auth_user=auth_user, envid=envid, ret=ret,
        requiretls=bool_from_db(requiretls), smtputf8=bool_from_db(smtputf8), body=body,
    )
    return QueueEntry(id=int(id_), message=message, recipients=recipients)


def _recipient(row: tuple) -> tuple[int, RecipientState]:
    (id_, message_id, address, domain, route, orcpt, notify, status, attempts, next_attempt,
     last_attempt, lease_owner, lease_until, reply_code, enhanced_code, reply_text,
     remote_host, delay_notified) = row
    state = RecipientState(
        id=int(id_),
        recipient=QueuedRecipient(
            address=address, domain=domain, route=route, orcpt=orcpt,
            notify=frozenset(n for n in notify.split(",") if n),
        ),
        status=RecipientStatus(status),
        attempts=int(attempts),
        next_attempt=datetime_from_micros(next_attempt),
        last_attempt=_when(last_attempt),
        lease_owner=lease_owner,
        lease_until=_when(lease_until),
        reply_code=reply_code,
        enhanced_code=enhanced_code,
        reply_text=reply_text,
        remote_host=remote_host,
        delay_notified=bool_from_db(delay_notified),
    )
    return int(message_id), state


def _entries(conn: sqlite3.Connection, message_ids: Sequence[int],
             recipients: dict[int, list[RecipientState]]) -> list[QueueEntry]:
    """Entries for `message_ids` (in that order) with the given recipients each."""
    entries = []
    for message_id in message_ids:
        row = conn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM queue_messages WHERE id = ?", (message_id,)
        ).fetchone()
        if row is not None:
            entries.append(_message(row, tuple(recipients.get(message_id, ()))))
    return entries


class SqliteQueueStore:
    """The `QueueStore` on a `SqliteDatabase` (see the module docstring)."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    async def claim(self, *, owner: str, now: _dt.datetime, lease: _dt.timedelta,
                    limit: int) -> list[Claim]:
        if limit <= 0:
            return []
        now_us = micros_from_datetime(now)
        until = now + lease
        until_us = micros_from_datetime(until)

        def job(conn: sqlite3.Connection) -> list[Claim]:
            rows = conn.execute(
                f"UPDATE queue_recipients SET lease_owner = ?, lease_until = ?, leased_at = ?,"
                " next_attempt = ?"
                " WHERE id IN (SELECT id FROM queue_recipients"
                "  WHERE status = ? AND next_attempt <= ?"
                "   AND (lease_until IS NULL OR lease_until <= ?)"
                "  ORDER BY next_attempt, id LIMIT ?)"
                f" RETURNING {_RECIPIENT_COLUMNS}",
                (owner, until_us, now_us, until_us, _QUEUED, now_us, now_us, limit),
            ).fetchall()
            by_message: dict[int, list[RecipientState]] = {}
            for row in sorted(rows, key=lambda r: r[0]):
                message_id, state = _recipient(row)
                by_message.setdefault(message_id, []).append(state)
            return [Claim(entry=e, lease_until=until)
                    for e in _entries(conn, sorted(by_message), by_message)]

        return await self.db.write(job)

    async def record(self, owner: str, results: Sequence[RecipientResult]) -> None:
        if not results:
            return

        def job(conn: sqlite3.Connection) -> None:
            for r in results:
                status = RecipientStatus(r.status).value
                sets = ["status = ?", "lease_owner = NULL", "lease_until = NULL",
                        "leased_at = NULL"]
                args: list[object] = [status]
                if r.next_attempt is not None:
                    sets.append("next_attempt = ?")
                    args.append(micros_from_datetime(r.next_attempt))
                if r.attempted:
                    sets += ["attempts = attempts + 1", "reply_code = ?", "enhanced_code = ?",
                             "reply_text = ?", "remote_host = ?"]
                    args += [r.reply_code, r.enhanced_code, r.reply_text, r.remote_host]
                    if r.at is not None:
                        sets.append("last_attempt = ?")
                        args.append(micros_from_datetime(r.at))
                if r.delay_notified is not None:
                    sets.append("delay_notified = ?")
                    args.append(bool(r.delay_notified))
                conn.execute(
                    f"UPDATE queue_recipients SET {', '.join(sets)}"
                    " WHERE id = ? AND lease_owner = ? AND status = ?",
                    (*args, r.recipient_id, owner, _QUEUED),
                )

        await self.db.write(job)

    async def release(self, owner: str) -> int:
        def job(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE queue_recipients SET next_attempt = coalesce(leased_at, next_attempt),"
                " lease_owner = NULL, lease_until = NULL, leased_at = NULL"
                " WHERE lease_owner = ? AND status = ?",
                (owner, _QUEUED),
            )
            return cur.rowcount

        return await self.db.write(job)

    @staticmethod
    def _read(conn: sqlite3.Connection, where: str, args: tuple,
              include_final: bool = True, limit: int | None = None) -> list[QueueEntry]:
        sql = f"SELECT id FROM queue_messages m WHERE {where}"
        if not include_final:
            sql += (" AND EXISTS (SELECT 1 FROM queue_recipients r"
                    " WHERE r.message_id = m.id AND r.status = ?)")
            args = (*args, _QUEUED)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += " LIMIT ?"
            args = (*args, limit)
        ids = [int(i) for (i,) in conn.execute(sql, args)]
        by_message: dict[int, list[RecipientState]] = {}
        for message_id in ids:
            rows = conn.execute(
                f"SELECT {_RECIPIENT_COLUMNS} FROM queue_recipients WHERE message_id = ?"
                + ("" if include_final else " AND status = ?") + " ORDER BY id",
                (message_id,) if include_final else (message_id, _QUEUED),
            )
            by_message[message_id] = [_recipient(row)[1] for row in rows]
        return _entries(conn, ids, by_message)

    async def get(self, queue_id: str) -> QueueEntry | None:
        entries = await self.db.read(lambda conn: self._read(conn, "queue_id = ?", (queue_id,)))
        return entries[0] if entries else None

    async def list_entries(self, *, include_final: bool = False,
                           limit: int = 1000) -> list[QueueEntry]:
        return await self.db.read(
            lambda conn: self._read(conn, "1 = 1", (), include_final=include_final, limit=limit))

    async def retry(self, queue_id: str | None, now: _dt.datetime) -> int:
        now_us = micros_from_datetime(now)

        def job(conn: sqlite3.Connection) -> int:
            sql = ("UPDATE queue_recipients SET next_attempt = ?"
                   " WHERE status = ? AND (lease_until IS NULL OR lease_until <= ?)")
            args: tuple = (now_us, _QUEUED, now_us)
            if queue_id is not None:
                sql += " AND message_id IN (SELECT id FROM queue_messages WHERE queue_id = ?)"
                args += (queue_id,)
            return conn.execute(sql, args).rowcount

        return await self.db.write(job)

    async def delete(self, queue_id: str) -> bool:
        def job(conn: sqlite3.Connection) -> bool:
            return conn.execute(
                "DELETE FROM queue_messages WHERE queue_id = ?", (queue_id,)
            ).rowcount > 0

        return await self.db.write(job)

    async def purge_finished(self) -> list[str]:
        def job(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "DELETE FROM queue_messages WHERE NOT EXISTS (SELECT 1 FROM queue_recipients r"
                " WHERE r.message_id = queue_messages.id AND r.status = ?) RETURNING blob_key",
                (_QUEUED,),
            ).fetchall()
            return sorted({key for (key,) in rows})

        return await self.db.write(job)

    async def stats(self) -> QueueStats:
        def query(conn: sqlite3.Connection) -> QueueStats:
            (messages,) = conn.execute("SELECT count(*) FROM queue_messages").fetchone()
            by_status = {s: int(n) for s, n in conn.execute(
                "SELECT status, count(*) FROM queue_recipients GROUP BY status")}
            (oldest,) = conn.execute(
                "SELECT min(m.created_at) FROM queue_messages m WHERE EXISTS"
                " (SELECT 1 FROM queue_recipients r WHERE r.message_id = m.id AND r.status = ?)",
                (_QUEUED,),
            ).fetchone()
            return QueueStats(messages=int(messages), recipients_queued=by_status.get(_QUEUED, 0),
                              oldest=_when(oldest), by_status=by_status)

        return await self.db.read(query)
