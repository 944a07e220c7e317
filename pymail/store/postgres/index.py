"""PostgresIndex: the `Index` (mailboxes and messages) and its `ChangeFeed` on PostgreSQL.

The same behaviour as `SqliteIndex` (RFC 3501 section 2.3.1.1, RFC 7162 section 3.1; the
conformance suite runs both):

* `deliver` is one transaction: the outbound queue's rows (``Delivery.queued``,
  `pymail.store.postgres.queue.insert_queued`); ``INSERT INTO message_blobs ... ON
  CONFLICT DO NOTHING``;
  each target's mailbox resolved (a user without it gets the default mailboxes, then
  INBOX is the fallback); per target one statement bumps the mailbox's UIDNEXT and
  HIGHESTMODSEQ (``UPDATE ... RETURNING``), inserts the `messages` row and announces the
  change with ``pg_notify``.  Any failure (e.g. an unknown user) rolls all of it back.
  The common case, one target whose mailbox exists, is all of that in one statement
  (BEGIN, it, COMMIT: three round trips); it changes nothing when the mailbox is missing,
  and the general way follows in the same transaction.
* Concurrency: the ``UPDATE`` takes the mailbox row's lock until COMMIT, so concurrent
  deliveries to one mailbox get strictly ascending UIDs, each once, in commit order.
  Mailboxes are bumped in ascending id order and default mailboxes created in ascending
  user order, so two deliveries to the same users in different orders never deadlock.
* A message's UID is the mailbox's UIDNEXT at delivery and its MODSEQ the mailbox's new
  HIGHESTMODSEQ (1 for an empty mailbox, so the first message has 2).
* UIDVALIDITY comes from one counter row: ``max(now in seconds, last + 1)`` (the same rule
  as SQLite); the default mailboxes created together share one value.
* "INBOX" is case-insensitive and stored as "INBOX"; other names are stored as given.
* `forget_blob` is one statement: the `message_blobs` row goes only if no message and no
  queued message refers to it; a delivery committing at the same moment makes it answer
  False (the foreign key protects the row), never a dangling message.  (A queue row has
  no foreign key: an enqueue committing during a sweep is protected by the blob's age,
  which its `put` renewed, `pymail.store.gc`.)

Change feed (`watch`): every committed mailbox change is announced inside the changing
transaction with ``pg_notify('pymail_mailbox', '<user_id> <mailbox_id> <uidnext>
<highestmodseq>')``; PostgreSQL delivers it at COMMIT, to every node, in commit order.
`PostgresChangeStream` holds one dedicated connection (not from the pool) that LISTENs;
see its docstring for reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence

import asyncpg

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
from pymail.store.postgres.database import PostgresDatabase, describe_error, is_connection_error
from pymail.store.postgres.queue import insert_queued
from pymail.store.rules import (
    FLAG_MODES,
    aware,
    check_rename,
    flags_to_text,
    mailbox_name,
    plan_flags,
    uid_set,
)
# The session-change value rules, shared so both backends behave identically.

__all__ = ["CHANNEL", "PostgresChangeStream", "PostgresIndex"]

log = logging.getLogger(__name__)

#: The LISTEN/NOTIFY channel of mailbox changes.
CHANNEL = "pymail_mailbox"

#: `Mailbox.subscribed` is whether a subscription of that name exists (RFC 3501 section
#: 6.3.6: subscriptions are names); `mailboxes.subscribed` is not read since step 5.
_MAILBOX_COLUMNS = (
    "id, user_id, name, special_use, uidvalidity, uidnext, highestmodseq,"
    " EXISTS (SELECT 1 FROM subscriptions s"
    " WHERE s.user_id = mailboxes.user_id AND s.name = mailboxes.name)"
)
_MESSAGE_COLUMNS = "mailbox_id, uid, blob_key, size, internal_date, flags, modseq"
_UIDVALIDITY_MAX = 0xFFFFFFFF  # a 32-bit nz-number

_NEXT_UIDVALIDITY = """
INSERT INTO sequences (name, value) VALUES ('uidvalidity', $1)
ON CONFLICT (name) DO UPDATE SET value = GREATEST(EXCLUDED.value, sequences.value + 1)
RETURNING value"""

#: The blob's row and the target mailboxes' ids in one round trip.  $1 blob key, $2 size,
#: $3 structure, $4 user ids, $5 mailbox names.
_INSERT_BLOB_AND_RESOLVE = """
WITH blob AS (
    INSERT INTO message_blobs (blob_key, size, structure) VALUES ($1, $2, $3)
    ON CONFLICT (blob_key) DO NOTHING
)
SELECT user_id, name, id FROM mailboxes
 WHERE user_id = ANY($4::int[]) AND name = ANY($5::text[])"""

_RESOLVE = """
SELECT user_id, name, id FROM mailboxes
 WHERE user_id = ANY($1::int[]) AND name = ANY($2::text[])"""

#: One target: bump the mailbox, insert the message, announce the change (delivered to
#: listeners at COMMIT).  $1 mailbox id, $2 blob key, $3 size, $4 internal date, $5 flags.
_TAKE_UID_AND_STORE = f"""
WITH mb AS (
    UPDATE mailboxes
       SET uidnext = uidnext + 1,
           highestmodseq = highestmodseq + 1,
           change_xid = pg_current_xact_id()
     WHERE id = $1
 RETURNING id, user_id, uidnext - 1 AS uid, uidnext, highestmodseq
), msg AS (
    INSERT INTO messages ({_MESSAGE_COLUMNS})
    SELECT id, uid, $2, $3, $4, $5, highestmodseq FROM mb
)
SELECT uid,
       pg_notify('{CHANNEL}', concat_ws(' ', user_id, id, uidnext, highestmodseq))::text
  FROM mb"""

#: The common case in one statement: one target whose mailbox exists.  Changes nothing
#: (no row) if the mailbox does not exist.  $1 user id, $2 mailbox name, $3 blob key,
#: $4 size, $5 structure, $6 internal date, $7 flags.
_DELIVER_ONE = f"""
WITH mb AS (
    UPDATE mailboxes
       SET uidnext = uidnext + 1,
           highestmodseq = highestmodseq + 1,
           change_xid = pg_current_xact_id()
     WHERE user_id = $1 AND name = $2
 RETURNING id, user_id, uidnext - 1 AS uid, uidnext, highestmodseq
), blob AS (
    INSERT INTO message_blobs (blob_key, size, structure)
    SELECT $3, $4, $5 WHERE EXISTS (SELECT 1 FROM mb)
    ON CONFLICT (blob_key) DO NOTHING
), msg AS (
    INSERT INTO messages ({_MESSAGE_COLUMNS})
    SELECT id, uid, $3, $4, $6, $7, highestmodseq FROM mb
)
SELECT id, uid,
       pg_notify('{CHANNEL}', concat_ws(' ', user_id, id, uidnext, highestmodseq))::text
  FROM mb"""

#: Bump a mailbox changed by a session call once: HIGHESTMODSEQ + 1, UIDNEXT + $2 (UIDs
#: taken), stamp change_xid and announce it as `deliver` does.  $1 mailbox id, $2 count.
#: Returns the first UID taken and the new HIGHESTMODSEQ.
_BUMP = f"""
WITH mb AS (
    UPDATE mailboxes
       SET uidnext = uidnext + $2::bigint,
           highestmodseq = highestmodseq + 1,
           change_xid = pg_current_xact_id()
     WHERE id = $1
 RETURNING id, user_id, uidnext, highestmodseq
)
SELECT uidnext - $2::bigint, highestmodseq,
       pg_notify('{CHANNEL}', concat_ws(' ', user_id, id, uidnext, highestmodseq))::text
  FROM mb"""

#: A mailbox and its STATUS counts in one statement.  $1 mailbox id.
_STATUS = f"""
SELECT {_MAILBOX_COLUMNS},
       (SELECT count(*) FROM messages WHERE mailbox_id = $1),
       (SELECT count(*) FROM messages WHERE mailbox_id = $1
           AND position(' \\Seen ' in ' ' || flags || ' ') = 0),
       (SELECT count(*) FROM messages WHERE mailbox_id = $1
           AND position(' \\Deleted ' in ' ' || flags || ' ') > 0),
       (SELECT coalesce(sum(size), 0) FROM messages WHERE mailbox_id = $1)
  FROM mailboxes WHERE id = $1"""

_FORGET_BLOB = """
WITH gone AS (
    DELETE FROM message_blobs
     WHERE blob_key = $1
       AND NOT EXISTS (SELECT 1 FROM messages WHERE blob_key = $1)
       AND NOT EXISTS (SELECT 1 FROM queue_messages WHERE blob_key = $1)
 RETURNING 1
)
SELECT NOT EXISTS (SELECT 1 FROM messages WHERE blob_key = $1)
   AND NOT EXISTS (SELECT 1 FROM queue_messages WHERE blob_key = $1)"""


def _mailbox(row: asyncpg.Record) -> Mailbox:
    id_, user_id, name, special_use, uidvalidity, uidnext, highestmodseq, subscribed = row
    return Mailbox(
        id=id_,
        user_id=user_id,
        name=name,
        special_use=special_use,
        uidvalidity=uidvalidity,
        uidnext=uidnext,
        highestmodseq=highestmodseq,
        subscribed=bool(subscribed),
    )


def _message(row: asyncpg.Record) -> MessageRecord:
    mailbox_id, uid, blob_key, size, internal_date, flags, modseq = row
    return MessageRecord(
        mailbox_id=mailbox_id,
        uid=uid,
        blob_key=blob_key,
        size=size,
        internal_date=internal_date,
        flags=frozenset(flags.split()),
        modseq=modseq,
    )


def _forgotten(blob_key: str) -> StorageError:
    # forget_blob removed the blob's row between our INSERT (a no-op on the committed
    # row) and the message's reference to it: deliver again later (put renews the blob).
    return StorageError(f"blob {blob_key} was forgotten by a concurrent sweep; retry")


class PostgresIndex:
    """The `Index` and `ChangeFeed` on a `PostgresDatabase` (see the module docstring).

    `clock` returns Unix seconds; it only seeds UIDVALIDITY (inject one in tests)."""

    def __init__(
        self,
        db: PostgresDatabase,
        *,
        clock: Callable[[], float] = time.time,
        watch_heartbeat: float = 5.0,
    ) -> None:
        self.db = db
        self.clock = clock
        self.watch_heartbeat = watch_heartbeat

    # ------------------------------------------------------------------ helpers (in a tx)

    async def _next_uidvalidity(self, conn: asyncpg.Connection) -> int:
        value = int(await conn.fetchval(_NEXT_UIDVALIDITY, int(self.clock())))
        if value > _UIDVALIDITY_MAX:
            raise StorageError("UIDVALIDITY space exhausted (past 2106?)")
        return value

    @staticmethod
    async def _require_user(conn: asyncpg.Connection, user_id: int) -> None:
        if await conn.fetchval("SELECT 1 FROM virtual_users WHERE id = $1", user_id) is None:
            raise NotFound(f"no user with id {user_id}")

    async def _ensure_defaults(self, conn: asyncpg.Connection, user_id: int) -> None:
        await self._require_user(conn, user_id)
        have = {
            r[0] for r in await conn.fetch("SELECT name FROM mailboxes WHERE user_id = $1", user_id)
        }
        missing = [(n, su) for n, su in DEFAULT_MAILBOXES if n not in have]
        if not missing:
            return
        # One value for all of them, as in SQLite.  ON CONFLICT: a concurrent delivery
        # made them meanwhile (it committed first; we waited for its row lock).
        uidvalidity = await self._next_uidvalidity(conn)
        await conn.execute(
            "INSERT INTO mailboxes (user_id, name, special_use, uidvalidity)"
            " SELECT $1, n, s, $4 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY"
            " AS t(n, s, o) ORDER BY o"
            " ON CONFLICT (user_id, name) DO NOTHING",
            user_id,
            [n for n, _ in missing],
            [su for _, su in missing],
            uidvalidity,
        )
        # the default mailboxes start subscribed (a CREATE does not subscribe)
        await conn.execute(
            "INSERT INTO subscriptions (user_id, name) SELECT $1, unnest($2::text[])"
            " ON CONFLICT DO NOTHING",
            user_id,
            [n for n, _ in missing],
        )

    # ------------------------------------------------------------------ mailboxes

    async def ensure_default_mailboxes(self, user_id: int) -> None:
        """Create whichever of DEFAULT_MAILBOXES the user lacks; `NotFound` for no user."""
        await self.db.run(lambda conn: self._ensure_defaults(conn, user_id))

    async def create_mailbox(
        self, user_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        """`AlreadyExists` if the user has a mailbox of that name; `NotFound` for no user."""
        stored_name = mailbox_name(name)

        async def tx(conn: asyncpg.Connection) -> Mailbox:
            await self._require_user(conn, user_id)
            uidvalidity = await self._next_uidvalidity(conn)
            try:
                row = await conn.fetchrow(
                    "INSERT INTO mailboxes (user_id, name, special_use, uidvalidity)"
                    f" VALUES ($1, $2, $3, $4) RETURNING {_MAILBOX_COLUMNS}",
                    user_id,
                    stored_name,
                    special_use,
                    uidvalidity,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists(f"mailbox {stored_name!r} exists") from None
            except asyncpg.ForeignKeyViolationError:  # the user went away meanwhile
                raise NotFound(f"no user with id {user_id}") from None
            assert row is not None
            return _mailbox(row)

        return await self.db.run(tx)

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None:
        row = await self.db.fetchrow(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = $1 AND name = $2",
            user_id,
            mailbox_name(name),
        )
        return _mailbox(row) if row else None

    async def list_mailboxes(self, user_id: int) -> list[Mailbox]:
        """The user's mailboxes in creation order (the defaults in DEFAULT_MAILBOXES order)."""
        rows = await self.db.fetch(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE user_id = $1 ORDER BY id", user_id
        )
        return [_mailbox(r) for r in rows]

    # ------------------------------------------------------------------ delivery

    async def deliver(self, delivery: Delivery) -> list[Stored]:
        """Index one blob into every target mailbox in one durable transaction.

        A missing mailbox gets the user's default mailboxes created; if it is still missing
        the copy goes to INBOX.  `NotFound` (and nothing stored) if a target user does not
        exist.  Results are in target order."""
        (stored,) = await self.deliver_many((delivery,))
        return stored

    async def deliver_many(self, deliveries: Sequence[Delivery]) -> list[list[Stored]]:
        """`deliver` for several blobs in ONE transaction (MULTIAPPEND, RFC 3502 section
        3: all or none); the UIDs of one mailbox ascend in the order given.  One result
        list per delivery."""
        jobs = []
        for delivery in deliveries:
            if delivery.size < 0:
                raise ValueError(f"negative size {delivery.size}")
            targets = [
                (t.user_id, mailbox_name(t.mailbox), flags_to_text(t.flags))
                for t in delivery.targets
            ]
            jobs.append((delivery, aware(delivery.internal_date), targets,
                         tuple(delivery.queued)))
        if not any(targets or queued for _, _, targets, queued in jobs):
            return [[] for _ in jobs]

        async def tx(conn: asyncpg.Connection) -> list[list[Stored]]:
            return [await self._deliver_in(conn, d, when, targets, queued)
                    for d, when, targets, queued in jobs]

        return await self.db.run(tx)

    async def _deliver_in(self, conn: asyncpg.Connection, delivery: Delivery,
                          internal_date, targets: list[tuple[int, str, str]],
                          queued: tuple) -> list[Stored]:
        """The rows of one delivery, inside the caller's transaction."""
        user_ids = sorted({user_id for user_id, _, _ in targets})
        names = sorted({name for _, name, _ in targets} | {"INBOX"})
        # the outbound queue's rows: the same transaction as the mailboxes'
        await insert_queued(conn, queued)
        if not targets:
            return []
        if len(targets) == 1:  # the common case: one statement
            user_id, name, flags = targets[0]
            try:
                row = await conn.fetchrow(
                    _DELIVER_ONE,
                    user_id,
                    name,
                    delivery.blob_key,
                    delivery.size,
                    delivery.structure,
                    internal_date,
                    flags,
                )
            except asyncpg.ForeignKeyViolationError:
                raise _forgotten(delivery.blob_key) from None
            if row is not None:
                return [Stored(user_id=user_id, mailbox_id=row[0], uid=row[1])]
            # no such mailbox: nothing changed; the general way below
        rows = await conn.fetch(
            _INSERT_BLOB_AND_RESOLVE,
            delivery.blob_key,
            delivery.size,
            delivery.structure,
            user_ids,
            names,
        )
        ids = {(r[0], r[1]): r[2] for r in rows}
        lacking = sorted({u for u, name, _ in targets if (u, name) not in ids})
        if lacking:
            for user_id in lacking:  # ascending: a canonical lock order
                await self._ensure_defaults(conn, user_id)  # NotFound for no user
            rows = await conn.fetch(_RESOLVE, lacking, names)
            ids.update({(r[0], r[1]): r[2] for r in rows})
        mailbox_ids = []
        for user_id, name, _ in targets:
            mailbox_id = ids.get((user_id, name)) or ids.get((user_id, "INBOX"))
            if mailbox_id is None:  # cannot happen: the defaults include INBOX
                raise StorageError(f"user {user_id} has no INBOX")
            mailbox_ids.append(mailbox_id)

        stored: list[Stored | None] = [None] * len(targets)
        # Lock (bump) mailboxes in ascending id order: no deadlock between deliveries.
        for i in sorted(range(len(targets)), key=lambda i: (mailbox_ids[i], i)):
            user_id, _, flags = targets[i]
            try:
                row = await conn.fetchrow(
                    _TAKE_UID_AND_STORE,
                    mailbox_ids[i],
                    delivery.blob_key,
                    delivery.size,
                    internal_date,
                    flags,
                )
            except asyncpg.ForeignKeyViolationError:
                raise _forgotten(delivery.blob_key) from None
            if row is None:  # the mailbox went away since it was resolved
                await self._require_user(conn, user_id)
                raise StorageError(f"mailbox {mailbox_ids[i]} vanished; retry")
            stored[i] = Stored(user_id=user_id, mailbox_id=mailbox_ids[i], uid=row[0])
        return [s for s in stored if s is not None]

    # ------------------------------------------------------------------ reading

    async def list_messages(
        self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None
    ) -> list[MessageRecord]:
        """Messages with `uid_min` <= UID <= `uid_max` (no upper bound if None), UID order."""
        if uid_max is None:
            rows = await self.db.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                " WHERE mailbox_id = $1 AND uid >= $2 ORDER BY uid",
                mailbox_id,
                uid_min,
            )
        else:
            rows = await self.db.fetch(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                " WHERE mailbox_id = $1 AND uid BETWEEN $2 AND $3 ORDER BY uid",
                mailbox_id,
                uid_min,
                uid_max,
            )
        return [_message(r) for r in rows]

    # ------------------------------------------------------------------ session changes
    #
    # Each method below is one transaction.  It first locks the mailbox rows it changes
    # (``FOR UPDATE``, ascending id, as deliveries do), so concurrent calls on a mailbox
    # are serialised.  A changed mailbox is bumped once (`_BUMP`: HIGHESTMODSEQ + 1,
    # UIDNEXT + the UIDs taken, change_xid, pg_notify as `deliver`); the messages it
    # changed get the new HIGHESTMODSEQ as MODSEQ.

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        row = await self.db.fetchrow(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE id = $1", mailbox_id
        )
        return _mailbox(row) if row else None

    @staticmethod
    async def _lock_mailboxes(conn: asyncpg.Connection, *ids: int) -> dict[int, Mailbox]:
        """Lock the mailboxes (ascending id); `NotFound` if one does not exist."""
        rows = await conn.fetch(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE id = ANY($1::int[])"
            " ORDER BY id FOR UPDATE",
            sorted(set(ids)),
        )
        boxes = {r[0]: _mailbox(r) for r in rows}
        for i in ids:
            if i not in boxes:
                raise NotFound(f"no mailbox with id {i}")
        return boxes

    @staticmethod
    async def _bump(
        conn: asyncpg.Connection, mailbox_id: int, take: int = 0
    ) -> tuple[int, int]:
        row = await conn.fetchrow(_BUMP, mailbox_id, take)
        if row is None:
            raise NotFound(f"no mailbox with id {mailbox_id}")
        return int(row[0]), int(row[1])

    async def first_recent_uid(self, mailbox_id: int, advance_to: int | None = None) -> int:
        """See `Index.first_recent_uid`; the row lock makes the move atomic."""
        if advance_to is None:
            value = await self.db.fetchval(
                "SELECT first_recent_uid FROM mailboxes WHERE id = $1", mailbox_id)
        else:
            value = await self.db.execute_fetchval(
                "UPDATE mailboxes m SET first_recent_uid = GREATEST(old.first_recent_uid, $2)"
                " FROM (SELECT id, first_recent_uid FROM mailboxes WHERE id = $1 FOR UPDATE) old"
                " WHERE m.id = old.id RETURNING old.first_recent_uid",
                mailbox_id,
                advance_to,
            )
        if value is None:
            raise NotFound(f"no mailbox with id {mailbox_id}")
        return int(value)

    async def mailbox_status(self, mailbox_id: int) -> MailboxStatus:
        """Counts for STATUS/SELECT (one statement, one snapshot); `NotFound`."""
        row = await self.db.fetchrow(_STATUS, mailbox_id)
        if row is None:
            raise NotFound(f"no mailbox with id {mailbox_id}")
        return MailboxStatus(
            _mailbox(row[:8]), int(row[8]), int(row[9]), int(row[10]), int(row[11])
        )

    async def storage_used(self, user_id: int) -> int:
        """Octets in all the user's mailboxes (see `Index.storage_used`)."""
        return int(await self.db.fetchval(
            "SELECT coalesce(sum(m.size), 0) FROM messages m"
            " JOIN mailboxes b ON b.id = m.mailbox_id WHERE b.user_id = $1",
            user_id,
        ))

    async def rename_mailbox(self, user_id: int, old: str, new: str) -> Mailbox:
        """Rename `old` and its children (see `Index.rename_mailbox`); renaming INBOX
        moves its messages to a new mailbox `new` (with a new UIDVALIDITY, the messages
        keep their UIDs) and leaves INBOX and its children as they are.  `ValueError` for
        a name under `old` itself."""
        old_name, new_name = mailbox_name(old), mailbox_name(new)
        check_rename(old_name, new_name)

        async def tx(conn: asyncpg.Connection) -> Mailbox:
            prefix = old_name + "/"
            rows = await conn.fetch(
                "SELECT id, name FROM mailboxes WHERE user_id = $1"
                " AND (name = $2 OR left(name, $3) = $4) ORDER BY id FOR UPDATE",
                user_id,
                old_name,
                len(prefix),
                prefix,
            )
            source_id = next((r[0] for r in rows if r[1] == old_name), None)
            if source_id is None:
                raise NotFound(f"no mailbox {old_name!r}")
            if await conn.fetchval(
                "SELECT 1 FROM mailboxes WHERE user_id = $1 AND name = $2", user_id, new_name
            ):
                raise AlreadyExists(f"mailbox {new_name!r} exists")
            if old_name == "INBOX":
                uidvalidity = await self._next_uidvalidity(conn)
                try:
                    target_id = await conn.fetchval(
                        "INSERT INTO mailboxes (user_id, name, special_use, uidvalidity, uidnext)"
                        " SELECT user_id, $2, NULL, $3, uidnext FROM mailboxes WHERE id = $1"
                        " RETURNING id",
                        source_id,
                        new_name,
                        uidvalidity,
                    )
                except asyncpg.UniqueViolationError:
                    raise AlreadyExists(f"mailbox {new_name!r} exists") from None
                _, modseq = await self._bump(conn, target_id)
                moved = await conn.execute(
                    "UPDATE messages SET mailbox_id = $1, modseq = $2 WHERE mailbox_id = $3",
                    target_id,
                    modseq,
                    source_id,
                )
                if moved != "UPDATE 0":
                    await self._bump(conn, source_id)
                await conn.execute(
                    "INSERT INTO subscriptions (user_id, name) SELECT $1, $2 WHERE EXISTS"
                    " (SELECT 1 FROM subscriptions WHERE user_id = $1 AND name = 'INBOX')"
                    " ON CONFLICT DO NOTHING",
                    user_id,
                    new_name,
                )
                return await self._fetch_mailbox(conn, target_id)
            boxes = [(r[0], r[1]) for r in rows if r[1] == old_name or r[1].startswith(prefix)]
            renamed = {i: new_name + n[len(old_name):] for i, n in boxes}
            taken = {
                r[0]
                for r in await conn.fetch(
                    "SELECT name FROM mailboxes WHERE user_id = $1 AND name = ANY($2::text[])",
                    user_id,
                    list(renamed.values()),
                )
            } - {n for _, n in boxes}
            if taken:
                raise AlreadyExists(f"mailbox {min(taken)!r} exists")
            # Two steps, so no row collides with one not renamed yet.
            await conn.execute(
                "UPDATE mailboxes SET name = chr(1) || id::text WHERE id = ANY($1::int[])",
                list(renamed),
            )
            try:
                await conn.execute(
                    "UPDATE mailboxes m SET name = t.name"
                    " FROM unnest($1::int[], $2::text[]) AS t(id, name) WHERE m.id = t.id",
                    list(renamed),
                    list(renamed.values()),
                )
            except asyncpg.UniqueViolationError:  # created meanwhile
                raise AlreadyExists(f"mailbox {new_name!r} exists") from None
            for i in sorted(renamed):
                await self._bump(conn, i)
            # the subscriptions of the renamed mailboxes move along (all removed first:
            # no new name is an old one, check_rename and `taken` saw to that)
            names = dict(boxes)
            moved_names = await conn.fetch(
                "DELETE FROM subscriptions WHERE user_id = $1 AND name = ANY($2::text[])"
                " RETURNING name",
                user_id,
                [names[i] for i in renamed],
            )
            new_names = {names[i]: n for i, n in renamed.items()}
            await conn.execute(
                "INSERT INTO subscriptions (user_id, name) SELECT $1, unnest($2::text[])"
                " ON CONFLICT DO NOTHING",
                user_id,
                [new_names[r[0]] for r in moved_names],
            )
            return await self._fetch_mailbox(conn, source_id)

        return await self.db.run(tx)

    @staticmethod
    async def _fetch_mailbox(conn: asyncpg.Connection, mailbox_id: int) -> Mailbox:
        row = await conn.fetchrow(
            f"SELECT {_MAILBOX_COLUMNS} FROM mailboxes WHERE id = $1", mailbox_id
        )
        if row is None:
            raise NotFound(f"no mailbox with id {mailbox_id}")
        return _mailbox(row)

    async def delete_mailbox(self, user_id: int, name: str) -> None:
        """Delete the mailbox (not its children) and its message rows; the blobs and
        their `message_blobs` rows stay for the orphan sweeper.  `ValueError` for INBOX,
        `NotFound`."""
        stored_name = mailbox_name(name)
        if stored_name == "INBOX":
            raise ValueError("INBOX cannot be deleted")

        async def tx(conn: asyncpg.Connection) -> None:
            mailbox_id = await conn.fetchval(
                "SELECT id FROM mailboxes WHERE user_id = $1 AND name = $2 FOR UPDATE",
                user_id,
                stored_name,
            )
            if mailbox_id is None:
                raise NotFound(f"no mailbox {stored_name!r}")
            await conn.execute("DELETE FROM messages WHERE mailbox_id = $1", mailbox_id)
            await conn.execute("DELETE FROM mailboxes WHERE id = $1", mailbox_id)

        await self.db.run(tx)

    async def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> None:
        """See `Index.set_subscribed`: subscriptions are names."""
        stored_name = mailbox_name(name)

        async def tx(conn: asyncpg.Connection) -> None:
            exists = await conn.fetchval(
                "SELECT 1 FROM mailboxes WHERE user_id = $1 AND name = $2", user_id, stored_name
            ) is not None
            if subscribed:
                if not exists:
                    raise NotFound(f"no mailbox {stored_name!r}")
                await conn.execute(
                    "INSERT INTO subscriptions (user_id, name) VALUES ($1, $2)"
                    " ON CONFLICT DO NOTHING",
                    user_id,
                    stored_name,
                )
                return
            removed = await conn.fetchval(
                "DELETE FROM subscriptions WHERE user_id = $1 AND name = $2 RETURNING 1",
                user_id,
                stored_name,
            )
            if removed is None and not exists:
                raise NotFound(f"no mailbox {stored_name!r}")

        await self.db.run(tx)

    async def list_subscriptions(self, user_id: int) -> list[str]:
        rows = await self.db.fetch(
            "SELECT name FROM subscriptions WHERE user_id = $1", user_id
        )
        return sorted(r[0] for r in rows)  # code point order, whatever the collation

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

        async def tx(conn: asyncpg.Connection) -> FlagUpdate:
            await self._lock_mailboxes(conn, mailbox_id)
            rows = await conn.fetch(
                "SELECT uid, flags, modseq FROM messages"
                " WHERE mailbox_id = $1 AND uid = ANY($2::bigint[]) ORDER BY uid",
                mailbox_id,
                uid_list,
            )
            updates, failed = plan_flags(
                [(r[0], r[1], r[2]) for r in rows], wanted, mode, unchanged_since
            )
            if not updates:
                return FlagUpdate(changed=[], failed=failed)
            _, modseq = await self._bump(conn, mailbox_id)
            changed = await conn.fetch(
                "UPDATE messages m SET flags = t.flags, modseq = $2"
                " FROM unnest($3::bigint[], $4::text[]) AS t(uid, flags)"
                " WHERE m.mailbox_id = $1 AND m.uid = t.uid"
                " RETURNING m.mailbox_id, m.uid, m.blob_key, m.size, m.internal_date,"
                " m.flags, m.modseq",
                mailbox_id,
                modseq,
                [u for u, _ in updates],
                [f for _, f in updates],
            )
            records = sorted((_message(r) for r in changed), key=lambda m: m.uid)
            return FlagUpdate(changed=records, failed=failed)

        return await self.db.run(tx)

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove the \\Deleted messages (only among `uids` if given); their UIDs,
        ascending.  UIDNEXT stays; `NotFound` for no mailbox."""
        uid_list = None if uids is None else uid_set(uids)

        async def tx(conn: asyncpg.Connection) -> list[int]:
            await self._lock_mailboxes(conn, mailbox_id)
            rows = await conn.fetch(
                "DELETE FROM messages WHERE mailbox_id = $1"
                " AND position(' \\Deleted ' in ' ' || flags || ' ') > 0"
                " AND ($2::bigint[] IS NULL OR uid = ANY($2::bigint[]))"
                " RETURNING uid",
                mailbox_id,
                uid_list,
            )
            gone = sorted(int(r[0]) for r in rows)
            if gone:
                await self._bump(conn, mailbox_id)
            return gone

        return await self.db.run(tx)

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

        async def tx(conn: asyncpg.Connection) -> list[tuple[int, int]]:
            boxes = await self._lock_mailboxes(conn, source_id, target_id)
            if boxes[source_id].user_id != boxes[target_id].user_id:
                raise ValueError("source and target mailboxes belong to different users")
            found = [
                int(r[0])
                for r in await conn.fetch(
                    "SELECT uid FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])"
                    " ORDER BY uid",
                    source_id,
                    uid_list,
                )
            ]
            if not found:
                return []
            first, modseq = await self._bump(conn, target_id, len(found))
            pairs = [(uid, first + i) for i, uid in enumerate(found)]
            await conn.execute(
                f"INSERT INTO messages ({_MESSAGE_COLUMNS})"
                " SELECT $1, t.new, m.blob_key, m.size, m.internal_date, m.flags, $2"
                " FROM unnest($4::bigint[], $5::bigint[]) AS t(old, new)"
                " JOIN messages m ON m.mailbox_id = $3 AND m.uid = t.old",
                target_id,
                modseq,
                source_id,
                [old for old, _ in pairs],
                [new for _, new in pairs],
            )
            if move:
                await conn.execute(
                    "DELETE FROM messages WHERE mailbox_id = $1 AND uid = ANY($2::bigint[])",
                    source_id,
                    found,
                )
                if source_id != target_id:
                    await self._bump(conn, source_id)
            return pairs

        return await self.db.run(tx)

    async def get_structure(self, blob_key: str) -> str | None:
        """The JSON structure stored with the blob at delivery."""
        return await self.db.fetchval(
            "SELECT structure FROM message_blobs WHERE blob_key = $1", blob_key
        )

    async def blob_referenced(self, blob_key: str) -> bool:
        """Whether any message row or queued message refers to the blob (the orphan
        sweeper asks this)."""
        return bool(
            await self.db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM messages WHERE blob_key = $1)"
                " OR EXISTS (SELECT 1 FROM queue_messages WHERE blob_key = $1)", blob_key
            )
        )

    async def forget_blob(self, blob_key: str) -> bool:
        """Drop the blob's row if no message refers to it, atomically; True if the index
        no longer knows the blob, False if a message (maybe one committing right now)
        still refers to it."""
        try:
            return bool(await self.db.execute_fetchval(_FORGET_BLOB, blob_key))
        except NotFound:  # foreign key: a delivery referenced it meanwhile
            return False

    # ------------------------------------------------------------------ change feed

    def watch(self) -> PostgresChangeStream:
        """Committed mailbox changes from every node (see `PostgresChangeStream`)."""
        return PostgresChangeStream(self.db, heartbeat=self.watch_heartbeat)


class PostgresChangeStream:
    """An async iterator of `MailboxChange` fed by LISTEN on one dedicated connection.

    * Listening starts at the first ``__anext__`` or at ``async with`` / `start()` (which
      return once LISTEN is in place: changes committed after that are yielded).  If the
      first connection cannot be made, that call raises `StorageError`.
    * Order: PostgreSQL delivers notifications in commit order; they are yielded as they
      came.
    * The connection dropped (server restart, terminated backend): reconnect with
      exponential backoff (capped at `max_backoff` seconds, forever while open), LISTEN
      again, then report every mailbox changed by a transaction that the last confirmed
      snapshot did not see (``mailboxes.change_xid``), so no change is lost, though one
      may be reported twice.  The snapshot is confirmed by a heartbeat query every
      `heartbeat` seconds, which also detects a silently dead connection; the snapshot
      used is one heartbeat old, so a notification in flight at the drop is covered.
    * `aclose()` (or leaving ``async with``, or closing the database) releases the
      connection; a waiting ``__anext__`` then ends the iteration.
    """

    def __init__(
        self, db: PostgresDatabase, *, heartbeat: float = 5.0, max_backoff: float = 2.0
    ) -> None:
        self._db = db
        self.heartbeat = heartbeat
        self.max_backoff = max_backoff
        self._items: deque[MailboxChange] = deque()
        self._wake = asyncio.Event()
        self._start_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        #: pg_snapshot (text): every change it does not see was notified to us or will be
        #: reported by a resync.
        self._watermark: str | None = None
        self._pending: str | None = None  # the latest heartbeat's, promoted at the next
        #: Times the connection was made again after a drop (tests read it).
        self.reconnects = 0

    # ------------------------------------------------------------------ iterator protocol

    def __aiter__(self) -> PostgresChangeStream:
        return self

    async def __anext__(self) -> MailboxChange:
        if not self._items and self._closed:
            raise StopAsyncIteration
        await self.start()
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._wake.clear()
            await self._wake.wait()
        return self._items.popleft()

    async def __aenter__(self) -> PostgresChangeStream:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Connect and LISTEN (idempotent); `StorageError` if PostgreSQL is unreachable."""
        if self._started or self._closed:
            return
        async with self._start_lock:
            if self._started or self._closed:
                return
            conn = await self._db.connect("pymail-watch")
            try:
                # The snapshot before LISTEN: what it does not see is ours to report.
                self._watermark = await conn.fetchval("SELECT pg_current_snapshot()::text")
                lost = await self._listen(conn)
            except BaseException as exc:
                conn.terminate()
                if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                    raise self._db.error(exc) from exc
                raise
            self._conn = conn
            self._db.register_stream(self)
            self._task = asyncio.create_task(self._supervise(conn, lost), name="pymail-watch")
            self._started = True

    async def aclose(self) -> None:
        """Stop listening and release the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close_quietly(conn)

    # ------------------------------------------------------------------ internals

    def _push(self, change: MailboxChange) -> None:
        if self._closed:
            return
        self._items.append(change)
        self._wake.set()

    def _on_notify(
        self, _conn: object, _pid: int, _channel: str, payload: str
    ) -> None:
        try:
            user_id, mailbox_id, uidnext, highestmodseq = (int(x) for x in payload.split())
        except ValueError:
            log.warning("ignoring a malformed %s notification %r", CHANNEL, payload)
            return
        self._push(MailboxChange(user_id, mailbox_id, uidnext, highestmodseq))

    async def _listen(self, conn: asyncpg.Connection) -> asyncio.Event:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _c: lost.set())
        await conn.add_listener(CHANNEL, self._on_notify)
        return lost

    async def _supervise(self, conn: asyncpg.Connection | None, lost: asyncio.Event) -> None:
        backoff = 0.05
        while not self._closed:
            if conn is not None:
                await self._watch_connection(conn, lost)
                self._conn = None
                conn.terminate()
                conn = None
                if self._closed:
                    return
                log.warning("the change feed lost its PostgreSQL connection; reconnecting")
            try:
                conn = await self._db.connect("pymail-watch")
                lost = await self._listen(conn)
                await self._resync(conn)
            except asyncio.CancelledError:
                if conn is not None:
                    conn.terminate()
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying while open
                if conn is not None:
                    conn.terminate()
                    conn = None
                log.info("change feed: reconnect failed: %s", describe_error(exc))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            self._conn = conn
            self.reconnects += 1
            backoff = 0.05
            log.info("the change feed is listening again")

    async def _watch_connection(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection is gone (closed, or the heartbeat failed)."""
        while not self._closed and not conn.is_closed():
            try:
                await asyncio.wait_for(lost.wait(), self.heartbeat)
                return
            except asyncio.TimeoutError:
                pass
            try:
                snapshot = await conn.fetchval(
                    "SELECT pg_current_snapshot()::text", timeout=self.heartbeat
                )
            except Exception as exc:  # noqa: BLE001
                if not is_connection_error(exc):
                    log.warning("change feed heartbeat failed: %s", describe_error(exc))
                return
            if self._pending is not None:
                self._watermark = self._pending
            self._pending = snapshot

    async def _resync(self, conn: asyncpg.Connection) -> None:
        """Report the mailboxes changed by transactions the watermark did not see."""
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await conn.fetchval("SELECT pg_current_snapshot()::text")
            rows = await conn.fetch(
                "SELECT user_id, id, uidnext, highestmodseq FROM mailboxes"
                " WHERE change_xid IS NOT NULL"
                " AND NOT pg_visible_in_snapshot(change_xid, $1::text::pg_snapshot)"
                " ORDER BY id",
                self._watermark,
            )
        for user_id, mailbox_id, uidnext, highestmodseq in rows:
            self._push(MailboxChange(user_id, mailbox_id, uidnext, highestmodseq))
        self._watermark, self._pending = snapshot, None


async def _close_quietly(conn: asyncpg.Connection) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except Exception:  # noqa: BLE001
        conn.terminate()
