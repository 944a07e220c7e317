"""SqliteIndex: the `Index` (mailboxes and messages) on SQLite.

Invariants (RFC 3501 section 2.3.1.1, RFC 7162 section 3.1):

* `deliver` is one write job, so one transaction: the `message_blobs` row (written once per
  blob), and for each target the mailbox's UIDNEXT and HIGHESTMODSEQ bump and the
  `messages` row.  Any failure, e.g. an unknown user, rolls all of it back.  Concurrent
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
* `forget_blob` is one write job: the `message_blobs` row goes only if no message refers
  to it (the single writer makes the check and the delete atomic).

Change feed (`watch`): several processes may share the file, so a change stream polls.
Each delivery bumps the database-wide counter ``sequences.changes`` in its own
transaction and stamps the mailboxes it changed with the new value (``change_seq``); a
stream remembers the last value it saw and asks for the mailboxes stamped later.  Between
changes a poll costs one ``PRAGMA data_version`` (it changes only when another
connection committed), so idle streams are nearly free.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence

from pymail.store.interfaces import (
    DEFAULT_MAILBOXES,
    AlreadyExists,
    Delivery,
    Mailbox,
    MailboxChange,
    MessageRecord,
    NotFound,
    StorageError,
    Stored,
)
from pymail.store.rules import flags_to_text, mailbox_name
from pymail.store.sqlite.database import (
    SqliteDatabase,
    bool_from_db,
    constraint_violated,
    datetime_from_micros,
    micros_from_datetime,
)

__all__ = ["SqliteChangeStream", "SqliteIndex"]

_MAILBOX_COLUMNS = (
    "id, user_id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed"
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
        if delivery.size < 0:
            raise ValueError(f"negative size {delivery.size}")
        internal_date = micros_from_datetime(delivery.internal_date)
        targets = [
            (t.user_id, mailbox_name(t.mailbox), flags_to_text(t.flags)) for t in delivery.targets
        ]
        if not targets:
            return []

        def job(conn: sqlite3.Connection) -> list[Stored]:
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
                    (
                        mailbox_id,
                        uid,
                        delivery.blob_key,
                        delivery.size,
                        internal_date,
                        flags,
                        modseq,
                    ),
                )
                stored.append(Stored(user_id=user_id, mailbox_id=mailbox_id, uid=uid))
            return stored

        return await self.db.write(job)

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
            row = conn.execute(
                "SELECT 1 FROM messages WHERE blob_key = ? LIMIT 1", (blob_key,)
            ).fetchone()
            return row is not None

        return await self.db.read(query)

    async def forget_blob(self, blob_key: str) -> bool:
        """Drop the blob's row if no message refers to it, atomically (one write job);
        True if the index no longer knows the blob, False if a message refers to it."""

        def job(conn: sqlite3.Connection) -> bool:
            if conn.execute(
                "SELECT 1 FROM messages WHERE blob_key = ? LIMIT 1", (blob_key,)
            ).fetchone():
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
                self._items.extend(await asyncio.to_thread(self._poll_sync, self._conn))
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
            conn.close()
