"""SqliteIndex: the `Index` (mailboxes and messages) on SQLite.

Invariants (RFC 3501 section 2.3.1.1, RFC 7162 section 3.1):

* `deliver` is one write job, so one transaction: the outbound queue's rows
  (``Delivery.queued``, `pymail.store.sqlite.queue.insert_queued`), the `message_blobs`
  row (written once per blob), and for each target the mailbox's UIDNEXT and
  HIGHESTMODSEQ bump and the `messages` row.  Any failure, e.g. an unknown user, rolls all of it back.  Concurrent
  deliveries are serialised by the single writer, so UIDs are handed out strictly
  ascending, each once; they are committed together by group commit.
* A message's UID is the mailbox's UIDNEXT at delivery and its MODSEQ the mailbox's new
  HIGHESTMODSEQ (which starts at 1 for an empty mailbox, so the first message has 2).
* UIDVALIDITY comes from one database-wide counter: ``max(now in seconds, last + 1)``.  It
  tracks the clock, survives restarts, and a mailbox re-created under an old name always
  gets a greater value, even within the same second or after the clock stepped back.
  The default mailboxes created together share one value (distinct mailboxes may).
* "INBOX" is case-insensitive (RFC 3501 section 5.1) and stored as "INBOX"; other names
  are stored as given.
* `forget_blob` is one write job: the `message_blobs` row goes only if no message and no
  queued message refers to it (the single writer makes the check and the delete atomic).

Change feed (`watch`): several processes may share the file, so a change stream polls.
Each delivery bumps the database-wide counter ``sequences.changes`` in its own
transaction and stamps the mailboxes it changed with the new value (``change_seq``); a
stream remembers the last value it saw and asks for the mailboxes stamped later.  Between
changes a poll costs one ``PRAGMA data_version`` (it changes only when another
connection committed), so idle streams are nearly free.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence

from pymail.store.interfaces import (
    DEFAULT_MAILBOXES,
    AlreadyExists,
    Delivery,
    FlagUpdate,
    Mailbox,
    MailboxChange,
    MailboxStatus,
    MessageRecord,
    NotFound,
    StorageError,
    Stored,
)
from pymail.store.rules import FLAG_MODES, check_rename, flags_to_text, mailbox_name, plan_flags, uid_set
from pymail.store.sqlite.queue import insert_queued
from pymail.store.sqlite.database import (
    SqliteDatabase,
    bool_from_db,
    constraint_violated,
    datetime_from_micros,
    micros_from_datetime,
)

__all__ = ["SqliteChangeStream", "SqliteIndex"]

#: `Mailbox.subscribed` is whether a subscription of that name exists (RFC 3501 section
#: 6.3.6: subscriptions are names); `mailboxes.subscribed` is not read since step 6.
_MAILBOX_COLUMNS = (
    "id, user_id, name, special_use, uidvalidity, uidnext, highestmodseq,"
    " EXISTS (SELECT 1 FROM subscriptions s"
    " WHERE s.user_id = mailboxes.user_id AND s.name = mailboxes.name)"
)
_MESSAGE_COLUMNS = "mailbox_id, uid, blob_key, size, internal_date, flags, modseq"
_UIDVALIDITY_MAX = 0xFFFFFFFF  # a 32-bit nz-number


def _mailbox(row: tuple) -> Mailbox:
    id_, user_id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed = row
    return Mailbox(
        id=id_,
        user_id=user_id,
        name=name,
        special_use=special_use,
        uidvalidity=uidvalidity,
        uidnext=uidnext,
        highestmodseq=highestmodseq,
        subscribed=bool_from_db(subscribed),
    )


def _message(row: tuple) -> MessageRecord:
    mailbox_id, uid, blob_key, size, internal_date, flags, modseq = row
    return MessageRecord(
        mailbox_id=mailbox_id,
        uid=uid,
        blob_key=blob_key,
        size=size,
        internal_date=datetime_from_micros(internal_date),
        flags=frozenset(flags.split()),
        modseq=modseq,
    )


class SqliteIndex:
    """The `Index` on a `SqliteDatabase` (see the module docstring).

    `clock` returns Unix seconds; it only seeds UIDVALIDITY (inject one in tests)."""

    def __init__(
        self,
        db: SqliteDatabase,
        *,
        clock: Callable[[], float] = time.time,
        watch_interval: float = 0.2,
    ) -> None:
        self.db = db
        self.clock = clock
        self.watch_interval = watch_interval

    # ------------------------------------------------------------------ writer-side helpers

    def _next_uidvalidity(self, conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM sequences WHERE name = 'uidvalidity'").fetchone()
        value = max(int(self.clock()), (row[0] if row else 0) + 1)
        if value > _UIDVALIDITY_MAX:
            raise StorageError("UIDVALIDITY space exhausted (past 2106?)")
        conn.execute(
            "INSERT INTO sequences (name, value) VALUES ('uidvalidity', ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (value,),
        )
        return value

    @staticmethod
    def _require_user(conn: sqlite3.Connection, user_id: int) -> None:
        if conn.execute("SELECT 1 FROM virtual_users WHERE id = ?", (user_id,)).fetchone() is None:
            raise NotFound(f"no user with id {user_id}")

    def _insert_mailbox(
        self,
        conn: sqlite3.Connection,
        user_id: int,
        name: str,
        special_use: str | None,
        uidvalidity: int | None = None,
    ) -> Mailbox:
        if uidvalidity is None:
            uidvalidity = self._next_uidvalidity(conn)
        try:
            rows = conn.execute(
                "INSERT INTO mailboxes (user_id, name, special_use, uidvalidity)"
                f" VALUES (?, ?, ?, ?) RETURNING {_MAILBOX_COLUMNS}",
                (user_id, name, special_use, uidvalidity),
            ).fetchall()
        except sqlite3.IntegrityError as exc:
            if constraint_violated(exc) == "unique":
                raise AlreadyExists(f"mailbox {name!r} exists") from None
            raise
        return _mailbox(rows[0])

    def _ensure_defaults(self, conn: sqlite3.Connection, user_id: int) -> None:
        self._require_user(conn, user_id)
        have = {
            name
            for (name,) in conn.execute("SELECT name FROM mailboxes WHERE user_id = ?", (user_id,))
        }
        missing = [(n, su) for n, su in DEFAULT_MAILBOXES if n not in have]
        if missing:
            # One value for all of them: distinct mailboxes may share a UIDVALIDITY, and
            # the counter then drifts ahead of the clock by one per user, not six.
            uidvalidity = self._next_uidvalidity(conn)
            for name, special_use in missing:
                self._insert_mailbox(conn, user_id, name, special_use, uidvalidity)
                # the default mailboxes start subscribed (a CREATE does not subscribe)
                conn.execute("INSERT OR IGNORE INTO subscriptions (user_id, name) VALUES (?, ?)",
                             (user_id, name))

    # ------------------------------------------------------------------ mailboxes

    async def ensure_default_mailboxes(self, user_id: int) -> None:
        """Create whichever of DEFAULT_MAILBOXES the user lacks; `NotFound` for no user."""
        await self.db.write(lambda conn: self._ensure_defaults(conn, user_id))

    async def create_mailbox(
        self, user_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        """`AlreadyExists` if the user has a mailbox of that name; `NotFound` for no user."""
        stored_name = mailbox_name(name)

        def job(conn: sqlite3.Connection) -> Mailbox:
            self._require_user(conn, user_id)
            return self._insert_mailbox(conn, user_id, stored_name, special_use)

        return await self.db.write(job)

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None:
        stored_name = mailbox_name(name)

        def query(conn: sqlite3.Connection) -> Mailbox | None:
            row = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = ? AND name = ?",
                (user_id, stored_name),
            ).fetchone()
            return _mailbox(row) if row else None

        return await self.db.read(query)

    async def list_mailboxes(self, user_id: int) -> list[Mailbox]:
        """The user's mailboxes in creation order (the defaults in DEFAULT_MAILBOXES order)."""

        def query(conn: sqlite3.Connection) -> list[Mailbox]:
            rows = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = ? ORDER BY id",
                (user_id,),
            )
            return [_mailbox(r) for r in rows]

        return await self.db.read(query)

    # ------------------------------------------------------------------ delivery

    async def deliver(self, delivery: Delivery) -> list[Stored]:
        """Index one blob into every target mailbox in one durable transaction.

        A missing mailbox gets the user's default mailboxes created; if it is still missing
        the copy goes to INBOX.  `NotFound` (and nothing stored) if a target user does not
        exist.  Results are in target order."""
        (stored,) = await self.deliver_many((delivery,))
        return stored

    async def deliver_many(self, deliveries: Sequence[Delivery]) -> list[list[Stored]]:
        """`deliver` for several blobs in ONE durable transaction (MULTIAPPEND, RFC 3502
        section 3: all or none): one write job, so a failure of any rolls back all; the
        UIDs of one mailbox ascend in the order given.  One result list per delivery."""
        jobs = []
        for delivery in deliveries:
            if delivery.size < 0:
                raise ValueError(f"negative size {delivery.size}")
            targets = [
                (t.user_id, mailbox_name(t.mailbox), flags_to_text(t.flags))
                for t in delivery.targets
            ]
            jobs.append((delivery, micros_from_datetime(delivery.internal_date), targets,
                         tuple(delivery.queued)))
        if not any(targets or queued for _, _, targets, queued in jobs):
            return [[] for _ in jobs]

        def job(conn: sqlite3.Connection) -> list[list[Stored]]:
            return [self._deliver_in(conn, d, when, targets, queued)
                    for d, when, targets, queued in jobs]

        return await self.db.write(job)

    def _deliver_in(self, conn: sqlite3.Connection, delivery: Delivery, internal_date: int,
                    targets: list[tuple[int, str, str]],
                    queued: tuple) -> list[Stored]:
        """The rows of one delivery, inside the caller's transaction."""
        # the outbound queue's rows first: the same transaction as the mailboxes'
        insert_queued(conn, queued)
        if not targets:
            return []
        conn.execute(
            "INSERT OR IGNORE INTO message_blobs (blob_key, size, structure)"
            " VALUES (?, ?, ?)",
            (delivery.blob_key, delivery.size, delivery.structure),
        )
        change = self._next_change(conn)
        stored: list[Stored] = []
        for user_id, name, flags in targets:
            slot = self._take_uid(conn, user_id, name, change)
            if slot is None:
                self._ensure_defaults(conn, user_id)  # NotFound for an unknown user
                slot = self._take_uid(conn, user_id, name, change) or self._take_uid(
                    conn, user_id, "INBOX", change
                )
                if slot is None:  # cannot happen: the defaults include INBOX
                    raise StorageError(f"user {user_id} has no INBOX")
            mailbox_id, uid, modseq = slot
            conn.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (mailbox_id, uid, delivery.blob_key, delivery.size, internal_date, flags,
                 modseq),
            )
            stored.append(Stored(user_id=user_id, mailbox_id=mailbox_id, uid=uid))
        return stored

    @staticmethod
    def _next_change(conn: sqlite3.Connection) -> int:
        """Bump the database-wide change counter (the change feed's); its new value."""
        (value,) = conn.execute(
            "INSERT INTO sequences (name, value) VALUES ('changes', 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1 RETURNING value"
        ).fetchone()
        return int(value)

    @staticmethod
    def _take_uid(
        conn: sqlite3.Connection, user_id: int, name: str, change: int
    ) -> tuple[int, int, int] | None:
        """(mailbox id, uid, modseq) for a new message, bumping UIDNEXT and HIGHESTMODSEQ
        and stamping the mailbox with `change`; None if the user has no such mailbox."""
        rows = conn.execute(
            "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1,"
            " change_seq = ? WHERE user_id = ? AND name = ?"
            " RETURNING id, uidnext - 1, highestmodseq",
            (change, user_id, name),
        ).fetchall()
        return (rows[0][0], rows[0][1], rows[0][2]) if rows else None

    # ------------------------------------------------------------------ reading

    async def list_messages(
        self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None
    ) -> list[MessageRecord]:
        """Messages with `uid_min` <= UID <= `uid_max` (no upper bound if None), UID order."""

        def query(conn: sqlite3.Connection) -> list[MessageRecord]:
            if uid_max is None:
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                    " WHERE mailbox_id = ? AND uid >= ? ORDER BY uid",
                    (mailbox_id, uid_min),
                )
            else:
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                    " WHERE mailbox_id = ? AND uid BETWEEN ? AND ? ORDER BY uid",
                    (mailbox_id, uid_min, uid_max),
                )
            return [_message(r) for r in rows]

        return await self.db.read(query)

    # ------------------------------------------------------------------ session changes
    #
    # Each method below is one write job (one transaction).  A mailbox changed by a call
    # is bumped once (`_bump`: HIGHESTMODSEQ + 1, UIDNEXT + the UIDs taken) and stamped
    # with the call's value of the change counter, so `watch()` reports it; the messages
    # it changed get the new HIGHESTMODSEQ as MODSEQ.

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        return await self.db.read(lambda conn: self._mailbox_by_id(conn, mailbox_id))

    @staticmethod
    def _mailbox_by_id(conn: sqlite3.Connection, mailbox_id: int) -> Mailbox | None:
        row = conn.execute(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE id = ?", (mailbox_id,)
        ).fetchone()
        return _mailbox(row) if row else None

    def _require_mailbox(self, conn: sqlite3.Connection, mailbox_id: int) -> Mailbox:
        box = self._mailbox_by_id(conn, mailbox_id)
        if box is None:
            raise NotFound(f"no mailbox with id {mailbox_id}")
        return box

    @staticmethod
    def _bump(
        conn: sqlite3.Connection, mailbox_id: int, change: int, take: int = 0
    ) -> tuple[int, int]:
        """Raise the mailbox's HIGHESTMODSEQ once and UIDNEXT by `take`, stamp it with
        `change`; (the first UID taken, the new HIGHESTMODSEQ)."""
        row = conn.execute(
            "UPDATE mailboxes SET uidnext = uidnext + ?, highestmodseq = highestmodseq + 1,"
            " change_seq = ? WHERE id = ? RETURNING uidnext - ?, highestmodseq",
            (take, change, mailbox_id, take),
        ).fetchone()
        if row is None:
            raise NotFound(f"no mailbox with id {mailbox_id}")
        return int(row[0]), int(row[1])

    async def first_recent_uid(self, mailbox_id: int, advance_to: int | None = None) -> int:
        """See `Index.first_recent_uid`; the single writer makes the move atomic."""

        def read(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT first_recent_uid FROM mailboxes WHERE id = ?", (mailbox_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no mailbox with id {mailbox_id}")
            return int(row[0])

        if advance_to is None:
            return await self.db.read(read)

        def job(conn: sqlite3.Connection) -> int:
            before = read(conn)
            if advance_to > before:
                conn.execute("UPDATE mailboxes SET first_recent_uid = ? WHERE id = ?",
                             (advance_to, mailbox_id))
            return before

        return await self.db.write(job)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        """Counts for STATUS/SELECT; `NotFound` if the mailbox does not exist."""

        def query(conn: sqlite3.Connection) -> MailboxStatus:
            box = self._require_mailbox(conn, mailbox_id)
            messages, unseen, deleted, size = conn.execute(
                "SELECT count(*),"
                " coalesce(sum(instr(' ' || flags || ' ', ' \\Seen ') = 0), 0),"
                " coalesce(sum(instr(' ' || flags || ' ', ' \\Deleted ') > 0), 0),"
                " coalesce(sum(size), 0)"
                " FROM messages WHERE mailbox_id = ?",
                (mailbox_id,),
            ).fetchone()
            return MailboxStatus(box, int(messages), int(unseen), int(deleted), int(size))

        return await self.db.read(query)

    async def storage_used(self, user_id: int) -> int:
        """Octets in all the user's mailboxes (see `Index.storage_used`)."""

        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT coalesce(sum(m.size), 0) FROM messages m"
                " JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_id = ?",
                (user_id,),
            ).fetchone()
            return int(row[0])

        return await self.db.read(query)

    async def rename_mailbox(self, user_id: int, old: str, new: str) -> Mailbox:
        """Rename `old` and its children (see `Index.rename_mailbox`); renaming INBOX
        moves its messages to a new mailbox `new` (with a new UIDVALIDITY, the messages
        keep their UIDs) and leaves INBOX and its children as they are.  `ValueError` for
        a name under `old` itself."""
        old_name, new_name = mailbox_name(old), mailbox_name(new)
        check_rename(old_name, new_name)

        def job(conn: sqlite3.Connection) -> Mailbox:
            row = conn.execute(
                f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = ? AND name = ?",
                (user_id, old_name),
            ).fetchone()
            if row is None:
                raise NotFound(f"no mailbox {old_name!r}")
            source = _mailbox(row)
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE user_id = ? AND name = ?", (user_id, new_name)
            ).fetchone():
                raise AlreadyExists(f"mailbox {new_name!r} exists")
            change = self._next_change(conn)
            if old_name == "INBOX":
                target = self._insert_mailbox(conn, user_id, new_name, None)
                conn.execute(
                    "UPDATE mailboxes SET uidnext = ? WHERE id = ?", (source.uidnext, target.id)
                )
                _, modseq = self._bump(conn, target.id, change)
                moved = conn.execute(
                    "UPDATE messages SET mailbox_id = ?, modseq = ? WHERE mailbox_id = ?",
                    (target.id, modseq, source.id),
                ).rowcount
                if moved:
                    self._bump(conn, source.id, change)
                if source.subscribed:
                    conn.execute("INSERT OR IGNORE INTO subscriptions (user_id, name) VALUES (?, ?)",
                                 (user_id, new_name))
                return self._require_mailbox(conn, target.id)
            prefix = old_name + "/"
            boxes = [(source.id, old_name)] + [
                (i, n)
                for i, n in conn.execute(
                    "SELECT id, name FROM mailboxes WHERE user_id = ?"
                    " AND substr(name, 1, ?) = ? ORDER BY id",
                    (user_id, len(prefix), prefix),
                )
            ]
            renamed = {i: new_name + n[len(old_name):] for i, n in boxes}
            taken = {
                n
                for (n,) in conn.execute(
                    "SELECT name FROM mailboxes WHERE user_id = ? AND name IN"
                    " (SELECT value FROM json_each(?))",
                    (user_id, json.dumps(list(renamed.values()))),
                )
            } - {n for _, n in boxes}
            if taken:
                raise AlreadyExists(f"mailbox {min(taken)!r} exists")
            # Two steps, so no row collides with one not renamed yet.
            for i, _ in boxes:
                conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (f"\0{i}", i))
            for i, name in renamed.items():
                conn.execute("UPDATE mailboxes SET name = ? WHERE id = ?", (name, i))
                self._bump(conn, i, change)
            # the subscriptions of the renamed mailboxes move along (all removed first:
            # no new name is an old one, check_rename and `taken` saw to that)
            names = dict(boxes)
            subscribed = [
                renamed[i] for i in renamed
                if conn.execute("DELETE FROM subscriptions WHERE user_id = ? AND name = ?"
                                " RETURNING 1", (user_id, names[i])).fetchall()
            ]
            conn.executemany("INSERT OR IGNORE INTO subscriptions (user_id, name) VALUES (?, ?)",
                             [(user_id, n) for n in subscribed])
            return self._require_mailbox(conn, source.id)

        return await self.db.write(job)

    async def delete_mailbox(self, user_id: int, name: str) -> None:
        """Delete the mailbox (not its children) and its message rows; the blobs and
        their `message_blobs` rows stay for the orphan sweeper.  `ValueError` for INBOX,
        `NotFound`."""
        stored_name = mailbox_name(name)
        if stored_name == "INBOX":
            raise ValueError("INBOX cannot be deleted")

        def job(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT id FROM mailboxes WHERE user_id = ? AND name = ?", (user_id, stored_name)
            ).fetchone()
            if row is None:
                raise NotFound(f"no mailbox {stored_name!r}")
            conn.execute("DELETE FROM messages WHERE mailbox_id = ?", (row[0],))
            conn.execute("DELETE FROM mailboxes WHERE id = ?", (row[0],))

        await self.db.write(job)

    async def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> None:
        """See `Index.set_subscribed`: subscriptions are names."""
        stored_name = mailbox_name(name)

        def job(conn: sqlite3.Connection) -> None:
            exists = conn.execute(
                "SELECT 1 FROM mailboxes WHERE user_id = ? AND name = ?", (user_id, stored_name)
            ).fetchone() is not None
            if subscribed:
                if not exists:
                    raise NotFound(f"no mailbox {stored_name!r}")
                conn.execute("INSERT OR IGNORE INTO subscriptions (user_id, name) VALUES (?, ?)",
                             (user_id, stored_name))
                return
            removed = conn.execute(
                "DELETE FROM subscriptions WHERE user_id = ? AND name = ? RETURNING 1",
                (user_id, stored_name),
            ).fetchall()
            if not removed and not exists:
                raise NotFound(f"no mailbox {stored_name!r}")

        await self.db.write(job)

    async def list_subscriptions(self, user_id: int) -> list[str]:
        def query(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT name FROM subscriptions WHERE user_id = ?", (user_id,))
            return sorted(name for (name,) in rows)  # code point order, as in PostgreSQL

        return await self.db.read(query)

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        flags: frozenset[str],
        mode: str,
        *,
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        """STORE (see `Index.store_flags`); `NotFound` for no mailbox, `ValueError` for a
        bad flag or mode."""
        wanted = frozenset(flags_to_text(flags).split())
        if mode not in FLAG_MODES:
            raise ValueError(f"invalid store mode {mode!r}")
        uid_list = uid_set(uids)

        def job(conn: sqlite3.Connection) -> FlagUpdate:
            self._require_mailbox(conn, mailbox_id)
            rows = conn.execute(
                "SELECT uid, flags, modseq FROM messages WHERE mailbox_id = ?"
                " AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
                (mailbox_id, json.dumps(uid_list)),
            ).fetchall()
            updates, failed = plan_flags(rows, wanted, mode, unchanged_since)
            if not updates:
                return FlagUpdate(changed=[], failed=failed)
            _, modseq = self._bump(conn, mailbox_id, self._next_change(conn))
            conn.executemany(
                "UPDATE messages SET flags = ?, modseq = ? WHERE mailbox_id = ? AND uid = ?",
                [(text, modseq, mailbox_id, uid) for uid, text in updates],
            )
            changed = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE mailbox_id = ?"
                " AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
                (mailbox_id, json.dumps([uid for uid, _ in updates])),
            ).fetchall()
            return FlagUpdate(changed=[_message(r) for r in changed], failed=failed)

        return await self.db.write(job)

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove the \\Deleted messages (only among `uids` if given); their UIDs,
        ascending.  UIDNEXT stays; `NotFound` for no mailbox."""
        uid_list = None if uids is None else uid_set(uids)

        def job(conn: sqlite3.Connection) -> list[int]:
            self._require_mailbox(conn, mailbox_id)
            sql = (
                "DELETE FROM messages WHERE mailbox_id = ?"
                " AND instr(' ' || flags || ' ', ' \\Deleted ') > 0"
            )
            args: tuple = (mailbox_id,)
            if uid_list is not None:
                sql += " AND uid IN (SELECT value FROM json_each(?))"
                args += (json.dumps(uid_list),)
            gone = sorted(
                int(u) for (u,) in conn.execute(sql + " RETURNING uid", args).fetchall()
            )
            if gone:
                self._bump(conn, mailbox_id, self._next_change(conn))
            return gone

        return await self.db.write(job)

    async def copy_messages(
        self, source_mailbox_id: int, uids: Sequence[int], target_mailbox_id: int
    ) -> list[tuple[int, int]]:
        """COPY (see `Index.copy_messages`); `NotFound` for a missing mailbox."""
        return await self._copy(source_mailbox_id, uids, target_mailbox_id, move=False)

    async def move_messages(
        self, source_mailbox_id: int, uids: Sequence[int], target_mailbox_id: int
    ) -> list[tuple[int, int]]:
        """MOVE: copy then remove from the source, in one transaction."""
        return await self._copy(source_mailbox_id, uids, target_mailbox_id, move=True)

    async def _copy(
        self, source_id: int, uids: Sequence[int], target_id: int, *, move: bool
    ) -> list[tuple[int, int]]:
        uid_list = uid_set(uids)

        def job(conn: sqlite3.Connection) -> list[tuple[int, int]]:
            source = self._require_mailbox(conn, source_id)
            target = self._require_mailbox(conn, target_id)
            if source.user_id != target.user_id:
                raise ValueError("source and target mailboxes belong to different users")
            found = [
                int(u)
                for (u,) in conn.execute(
                    "SELECT uid FROM messages WHERE mailbox_id = ?"
                    " AND uid IN (SELECT value FROM json_each(?)) ORDER BY uid",
                    (source_id, json.dumps(uid_list)),
                )
            ]
            if not found:
                return []
            change = self._next_change(conn)
            first, modseq = self._bump(conn, target_id, change, take=len(found))
            pairs = [(uid, first + i) for i, uid in enumerate(found)]
            conn.executemany(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS})"
                " SELECT ?, ?, blob_key, size, internal_date, flags, ?"
                " FROM messages WHERE mailbox_id = ? AND uid = ?",
                [(target_id, new, modseq, source_id, old) for old, new in pairs],
            )
            if move:
                conn.executemany(
                    "DELETE FROM messages WHERE mailbox_id = ? AND uid = ?",
                    [(source_id, old) for old, _ in pairs],
                )
                if source_id != target_id:
                    self._bump(conn, source_id, change)
            return pairs

        return await self.db.write(job)

    async def get_structure(self, blob_key: str) -> str | None:
        """The JSON structure stored with the blob at delivery."""

        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT structure FROM message_blobs WHERE blob_key = ?", (blob_key,)
            ).fetchone()
            return row[0] if row else None

        return await self.db.read(query)

    async def blob_referenced(self, blob_key: str) -> bool:
        """Whether any message row refers to the blob (the orphan sweeper asks this)."""

        def query(conn: sqlite3.Connection) -> bool:
            return self._referenced(conn, blob_key)

        return await self.db.read(query)

    @staticmethod
    def _referenced(conn: sqlite3.Connection, blob_key: str) -> bool:
        """A message row or an outbound queue entry refers to the blob."""
        return conn.execute(
            "SELECT EXISTS (SELECT 1 FROM messages WHERE blob_key = ?)"
            " OR EXISTS (SELECT 1 FROM queue_messages WHERE blob_key = ?)",
            (blob_key, blob_key),
        ).fetchone()[0] == 1

    async def forget_blob(self, blob_key: str) -> bool:
        """Drop the blob's row if no message refers to it, atomically (one write job);
        True if the index no longer knows the blob, False if a message refers to it."""

        def job(conn: sqlite3.Connection) -> bool:
            if self._referenced(conn, blob_key):
                return False
            conn.execute("DELETE FROM message_blobs WHERE blob_key = ?", (blob_key,))
            return True

        return await self.db.write(job)

    # ------------------------------------------------------------------ change feed

    def watch(self) -> SqliteChangeStream:
        """Committed mailbox changes from every process sharing the file (polled every
        `watch_interval` seconds; see `SqliteChangeStream`)."""
        return SqliteChangeStream(self.db, interval=self.watch_interval)


class SqliteChangeStream:
    """An async iterator of `MailboxChange`, polling the change counter on its own
    read connection.

    * Listening starts at the first ``__anext__`` or at ``async with`` / `start()`:
      changes committed after that are yielded, each mailbox once per poll with its state
      at that poll (several deliveries between two polls are one change), in commit
      order.
    * A poll runs in a thread: ``PRAGMA data_version`` first, and the counter and the
      changed mailboxes only when another connection committed since the last poll.
    * `aclose()` (or leaving ``async with``, or closing the database) closes the
      connection; a waiting ``__anext__`` then ends the iteration.  SQLite errors are
      raised as `StorageError`.
    """

    def __init__(self, db: SqliteDatabase, *, interval: float = 0.2) -> None:
        self._db = db
        self.interval = interval
        self._items: deque[MailboxChange] = deque()
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one poll at a time; close waits for it
        self._wake = asyncio.Event()
        self._closed = False
        self._data_version = -1
        self._seen = 0  # the last value of the change counter reported

    def __aiter__(self) -> SqliteChangeStream:
        return self

    async def __aenter__(self) -> SqliteChangeStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the connection and note where the counter stands (idempotent)."""
        async with self._lock:
            if self._conn is not None or self._closed:
                return
            self._conn = await asyncio.to_thread(self._open_sync)
            self._db.register_stream(self)

    def _open_sync(self) -> sqlite3.Connection:
        conn = self._db.connect_reader()
        try:
            self._data_version = conn.execute("PRAGMA data_version").fetchone()[0]
            conn.execute("BEGIN")
            try:
                self._seen = self._counter(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.close()
            raise StorageError(f"sqlite: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _counter(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM sequences WHERE name = 'changes'").fetchone()
        return int(row[0]) if row else 0

    def _poll_sync(self, conn: sqlite3.Connection) -> list[MailboxChange]:
        try:
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version:
                return []
            self._data_version = version
            conn.execute("BEGIN")
            try:
                counter = self._counter(conn)
                if counter <= self._seen:
                    return []
                rows = conn.execute(
                    "SELECT user_id, id, uidnext, highestmodseq FROM mailboxes"
                    " WHERE change_seq > ? ORDER BY change_seq, id",
                    (self._seen,),
                ).fetchall()
                self._seen = counter
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"sqlite: {exc}") from exc
        return [MailboxChange(*row) for row in rows]

    async def __anext__(self) -> MailboxChange:
        if not self._items and self._closed:
            raise StopAsyncIteration
        await self.start()
        while not self._items:
            async with self._lock:
                if self._closed or self._conn is None:
                    raise StopAsyncIteration
                # A cancelled await must not release the lock while the thread still
                # uses the connection (aclose would close it under the poll): wait for
                # the thread, then let the cancellation through.
                poll = asyncio.ensure_future(asyncio.to_thread(self._poll_sync, self._conn))
                try:
                    self._items.extend(await asyncio.shield(poll))
                except asyncio.CancelledError:
                    await asyncio.wait({poll})
                    raise
            if self._items:
                break
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except asyncio.TimeoutError:
                pass
        return self._items.popleft()

    async def aclose(self) -> None:
        """Stop polling and close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        async with self._lock:  # not while a poll uses the connection
            conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.close)  # never block the event loop on SQLite
