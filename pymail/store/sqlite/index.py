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
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence

from pymail.store.interfaces import (
    DEFAULT_MAILBOXES,
    AlreadyExists,
    Delivery,
    Mailbox,
    MessageRecord,
    NotFound,
    StorageError,
    Stored,
)
from pymail.store.sqlite.database import (
    SqliteDatabase,
    bool_from_db,
    constraint_violated,
    datetime_from_micros,
    micros_from_datetime,
)

__all__ = ["SqliteIndex", "mailbox_name"]

_MAILBOX_COLUMNS = (
    "id, user_id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed"
)
_MESSAGE_COLUMNS = "mailbox_id, uid, blob_key, size, internal_date, flags, modseq"
_UIDVALIDITY_MAX = 0xFFFFFFFF  # a 32-bit nz-number


def mailbox_name(name: str) -> str:
    """The stored spelling of a mailbox name: INBOX in any case is "INBOX"."""
    if not name or any(c in name for c in "\r\n\0"):
        raise ValueError(f"invalid mailbox name {name!r}")
    return "INBOX" if name.upper() == "INBOX" else name


def _flags_to_db(flags: frozenset[str] | Sequence[str]) -> str:
    for flag in flags:
        if not flag or any(c.isspace() for c in flag):
            raise ValueError(f"invalid flag {flag!r}")
    return " ".join(sorted(flags))


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

    def __init__(self, db: SqliteDatabase, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

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
            (t.user_id, mailbox_name(t.mailbox), _flags_to_db(t.flags)) for t in delivery.targets
        ]
        if not targets:
            return []

        def job(conn: sqlite3.Connection) -> list[Stored]:
            conn.execute(
                "INSERT OR IGNORE INTO message_blobs (blob_key, size, structure)"
                " VALUES (?, ?, ?)",
                (delivery.blob_key, delivery.size, delivery.structure),
            )
            stored: list[Stored] = []
            for user_id, name, flags in targets:
                slot = self._take_uid(conn, user_id, name)
                if slot is None:
                    self._ensure_defaults(conn, user_id)  # NotFound for an unknown user
                    slot = self._take_uid(conn, user_id, name) or self._take_uid(
                        conn, user_id, "INBOX"
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
    def _take_uid(
        conn: sqlite3.Connection, user_id: int, name: str
    ) -> tuple[int, int, int] | None:
        """(mailbox id, uid, modseq) for a new message, bumping UIDNEXT and HIGHESTMODSEQ;
        None if the user has no such mailbox."""
        rows = conn.execute(
            "UPDATE mailboxes SET uidnext = uidnext + 1, highestmodseq = highestmodseq + 1"
            " WHERE user_id = ? AND name = ? RETURNING id, uidnext - 1, highestmodseq",
            (user_id, name),
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
