"""The PostgreSQL schema and its versioned migrations.

Tables (the same as the SQLite backend's, in PostgreSQL types):

* the seed's directory: `domains` exactly as the seed defines it, `virtual_users`,
  `virtual_aliases` (the classic Postfix/Dovecot columns);
* pymail's index: `sequences` (named counters; ``uidvalidity`` lives there), `mailboxes`,
  `message_blobs` (one row per blob: size and the JSON structure computed at delivery),
  `messages` (one row per message in a mailbox);
* `auth_failures` and `auth_bans`: failed logins and banned client addresses
  (`PostgresBanStore`), shared by every node;
* `queue_messages` and `queue_recipients`: the outbound queue (`PostgresQueueStore`,
  pymail.store.queue), shared by every node;
* `subscriptions`: the mailbox names each user subscribed to (IMAP SUBSCRIBE), which
  may outlive their mailbox;
* `pymail_schema_migrations (version, applied_at)`: which steps below have been applied.

Invariants:

* Each step runs in its own transaction that first takes ``pg_advisory_xact_lock`` on
  `ADVISORY_LOCK_KEY`, then re-reads which steps are applied: two pymail nodes migrating
  at once apply every step exactly once, and a failing step leaves nothing behind.
* The seed's tables may exist already, created by an operator for Postfix/Dovecot: they are
  created with ``IF NOT EXISTS`` and never dropped or rewritten.  A column pymail reads
  that an older table lacks is added (``ADD COLUMN IF NOT EXISTS`` with the seed's
  default; PostgreSQL 11+ adds a column with a constant default without rewriting the
  table), which leaves every existing value untouched.  Only missing columns are altered,
  so tables owned by another role are fine as long as nothing is missing.
* `mailboxes.change_xid` is the transaction that last changed the mailbox (UIDNEXT,
  HIGHESTMODSEQ): a change stream that lost its connection asks for every mailbox whose
  change is not visible in its last known snapshot (``pg_visible_in_snapshot``), so it
  misses nothing.  Needs PostgreSQL 13 or newer (``xid8``); `migrate` checks.
* `messages.internal_date` is ``TIMESTAMPTZ`` (microseconds, an instant); `flags` is the
  space-separated sorted set of flags and keywords, as in SQLite.
* Timestamps of the seed's tables are ``TIMESTAMP`` (without time zone, as the seed has
  them), written by ``CURRENT_TIMESTAMP`` in the session's time zone and read back with
  ``::timestamptz`` in the same zone.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from pymail.store.interfaces import StorageError

__all__ = [
    "ADVISORY_LOCK_KEY",
    "DOMAINS",
    "MIGRATIONS",
    "MIN_SERVER_VERSION",
    "Migration",
    "migrate",
    "schema_version",
]

log = logging.getLogger(__name__)

#: ``pg_advisory_xact_lock`` key of the migrator ("pymail" in ASCII, as an int8).
ADVISORY_LOCK_KEY = 0x70796D61696C
#: xid8, pg_current_xact_id and pg_visible_in_snapshot arrived in PostgreSQL 13.
MIN_SERVER_VERSION = 130000


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[asyncpg.Connection], Awaitable[None]]


def _statements(*sql: str) -> Callable[[asyncpg.Connection], Awaitable[None]]:
    async def apply(conn: asyncpg.Connection) -> None:
        for statement in sql:
            await conn.execute(statement)

    return apply


# --------------------------------------------------------------------------- step 1

#: The seed's DDL, verbatim (with IF NOT EXISTS).
DOMAINS = """
CREATE TABLE IF NOT EXISTS domains (
    id SERIAL PRIMARY KEY,
    domain_name VARCHAR(255) UNIQUE NOT NULL,
    transport VARCHAR(255) DEFAULT 'virtual:',
    company_id INTEGER,
    auth_type VARCHAR(10) DEFAULT 'local' CHECK (auth_type IN ('ldap', 'local')),
    ldap_base_dn VARCHAR(255),
    is_active BOOLEAN DEFAULT TRUE,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)"""

VIRTUAL_USERS = """
CREATE TABLE IF NOT EXISTS virtual_users (
    id SERIAL PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    email VARCHAR(255) UNIQUE NOT NULL,
    password VARCHAR(255) NOT NULL,
    quota BIGINT DEFAULT 0,
    is_active BOOLEAN DEFAULT TRUE,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)"""

VIRTUAL_ALIASES = """
CREATE TABLE IF NOT EXISTS virtual_aliases (
    id SERIAL PRIMARY KEY,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    source VARCHAR(255) NOT NULL,
    destination VARCHAR(255) NOT NULL,
    is_active BOOLEAN DEFAULT TRUE,
    UNIQUE (source, destination)
)"""

#: Columns pymail reads that a pre-existing seed table might lack, with their DDL.
_ADOPTED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "domains": (
        ("transport", "VARCHAR(255) DEFAULT 'virtual:'"),
        ("company_id", "INTEGER"),
        ("auth_type", "VARCHAR(10) DEFAULT 'local' CHECK (auth_type IN ('ldap', 'local'))"),
        ("ldap_base_dn", "VARCHAR(255)"),
        ("is_active", "BOOLEAN DEFAULT TRUE"),
        ("created_at", "TIMESTAMP DEFAULT CURRENT_TIMESTAMP"),
    ),
    "virtual_users": (
        ("quota", "BIGINT DEFAULT 0"),
        ("is_active", "BOOLEAN DEFAULT TRUE"),
        ("created_at", "TIMESTAMP DEFAULT CURRENT_TIMESTAMP"),
    ),
    "virtual_aliases": (("is_active", "BOOLEAN DEFAULT TRUE"),),
}


async def _directory(conn: asyncpg.Connection) -> None:
    for statement in (DOMAINS, VIRTUAL_USERS, VIRTUAL_ALIASES):
        await conn.execute(statement)
    rows = await conn.fetch(
        "SELECT table_name::text, column_name::text FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ANY($1::text[])",
        list(_ADOPTED_COLUMNS),
    )
    have = {(r[0], r[1]) for r in rows}
    for table, columns in _ADOPTED_COLUMNS.items():
        for name, ddl in columns:
            if (table, name) not in have:
                log.info("adding column %s.%s to the existing table", table, name)
                await conn.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {name} {ddl}")
    await conn.execute(
        "CREATE INDEX IF NOT EXISTS virtual_users_domain_id ON virtual_users (domain_id)"
    )
    await conn.execute(
        "CREATE INDEX IF NOT EXISTS virtual_aliases_source ON virtual_aliases (source)"
    )


# --------------------------------------------------------------------------- step 2

_INDEX = _statements(
    """
    CREATE TABLE IF NOT EXISTS sequences (
        name VARCHAR(64) PRIMARY KEY,
        value BIGINT NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS mailboxes (
        id SERIAL PRIMARY KEY,
        user_id INTEGER NOT NULL REFERENCES virtual_users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        special_use VARCHAR(64),
        uidvalidity BIGINT NOT NULL,
        uidnext BIGINT NOT NULL DEFAULT 1,
        highestmodseq BIGINT NOT NULL DEFAULT 1,
        subscribed BOOLEAN NOT NULL DEFAULT TRUE,
        change_xid xid8,
        UNIQUE (user_id, name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS message_blobs (
        blob_key TEXT PRIMARY KEY,
        size BIGINT NOT NULL,
        structure TEXT NOT NULL,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    """
    CREATE TABLE IF NOT EXISTS messages (
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid BIGINT NOT NULL,
        blob_key TEXT NOT NULL REFERENCES message_blobs(blob_key),
        size BIGINT NOT NULL,
        internal_date TIMESTAMPTZ NOT NULL,
        flags TEXT NOT NULL DEFAULT '',
        modseq BIGINT NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    )""",
    "CREATE INDEX IF NOT EXISTS messages_blob_key ON messages (blob_key)",
)


# --------------------------------------------------------------------------- step 3

#: Failed logins and bans (`PostgresBanStore`, pymail.auth.ban), shared by every node.
_BANS = _statements(
    """
    CREATE TABLE IF NOT EXISTS auth_failures (
        id BIGSERIAL PRIMARY KEY,
        ip TEXT NOT NULL,
        account TEXT NOT NULL,
        at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS auth_failures_ip ON auth_failures (ip, at)",
    "CREATE INDEX IF NOT EXISTS auth_failures_account ON auth_failures (account, at)",
    "CREATE INDEX IF NOT EXISTS auth_failures_at ON auth_failures (at)",
    """
    CREATE TABLE IF NOT EXISTS auth_bans (
        ip TEXT PRIMARY KEY,
        until TIMESTAMPTZ NOT NULL,
        failures INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created_at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS auth_bans_until ON auth_bans (until)",
)


# --------------------------------------------------------------------------- step 4

#: The outbound queue (`PostgresQueueStore`, pymail.store.queue), shared by every node.
#: `notify` is the comma-separated sorted set of RFC 3461 NOTIFY values ("" = default);
#: `leased_at` is the `now` of the claim holding the lease (`release` goes back to it).
#: The partial index serves `claim`: only QUEUED rows, by next attempt.
_QUEUE = _statements(
    """
    CREATE TABLE IF NOT EXISTS queue_messages (
        id BIGSERIAL PRIMARY KEY,
        queue_id TEXT NOT NULL UNIQUE,
        blob_key TEXT NOT NULL,
        size BIGINT NOT NULL,
        sender TEXT NOT NULL,
        origin TEXT NOT NULL,
        auth_user TEXT,
        envid TEXT,
        ret TEXT,
        requiretls BOOLEAN NOT NULL DEFAULT FALSE,
        smtputf8 BOOLEAN NOT NULL DEFAULT FALSE,
        body TEXT NOT NULL DEFAULT '7BIT',
        created_at TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS queue_messages_blob_key ON queue_messages (blob_key)",
    """
    CREATE TABLE IF NOT EXISTS queue_recipients (
        id BIGSERIAL PRIMARY KEY,
        message_id BIGINT NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        route TEXT NOT NULL,
        orcpt TEXT,
        notify TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt TIMESTAMPTZ NOT NULL,
        last_attempt TIMESTAMPTZ,
        lease_owner TEXT,
        lease_until TIMESTAMPTZ,
        leased_at TIMESTAMPTZ,
        reply_code INTEGER,
        enhanced_code TEXT,
        reply_text TEXT,
        remote_host TEXT,
        delay_notified BOOLEAN NOT NULL DEFAULT FALSE
    )""",
    "CREATE INDEX IF NOT EXISTS queue_recipients_message ON queue_recipients (message_id)",
    "CREATE INDEX IF NOT EXISTS queue_recipients_due ON queue_recipients (next_attempt)"
    " WHERE status = 'queued'",
    "CREATE INDEX IF NOT EXISTS queue_recipients_owner ON queue_recipients (lease_owner)"
    " WHERE lease_owner IS NOT NULL",
)


# --------------------------------------------------------------------------- step 5

#: Subscriptions are names, not mailboxes (RFC 3501 sections 6.3.4 and 6.3.6; RFC 5258
#: section 3.1 \\NonExistent), as in SQLite step 6; `mailboxes.subscribed` is no
#: longer read or written.
_SUBSCRIPTIONS = _statements(
    """
    CREATE TABLE IF NOT EXISTS subscriptions (
        user_id INTEGER NOT NULL REFERENCES virtual_users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        PRIMARY KEY (user_id, name)
    )""",
    "INSERT INTO subscriptions (user_id, name)"
    " SELECT user_id, name FROM mailboxes WHERE subscribed ON CONFLICT DO NOTHING",
)


# --------------------------------------------------------------------------- step 6

#: \\Recent (RFC 3501 section 2.3.2), as in SQLite step 7: `mailboxes.first_recent_uid`
#: is the lowest UID no session that selected the mailbox has taken as \\Recent yet.
_RECENT = _statements(
    "ALTER TABLE mailboxes ADD COLUMN IF NOT EXISTS first_recent_uid BIGINT NOT NULL DEFAULT 1",
    "UPDATE mailboxes SET first_recent_uid = uidnext",
)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "directory: domains, virtual_users, virtual_aliases (the seed)", _directory),
    Migration(2, "index: sequences, mailboxes, message_blobs, messages", _INDEX),
    Migration(3, "auth: failed logins and bans", _BANS),
    Migration(4, "queue: outbound messages and recipients", _QUEUE),
    Migration(5, "imap: subscriptions by name, kept when the mailbox goes", _SUBSCRIPTIONS),
    Migration(6, "imap: \\Recent watermark per mailbox", _RECENT),
)

_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS pymail_schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)"""


async def schema_version(conn: asyncpg.Connection) -> int:
    """The highest applied migration, 0 for a database pymail never migrated."""
    if await conn.fetchval("SELECT to_regclass('pymail_schema_migrations')") is None:
        return 0
    return int(
        await conn.fetchval("SELECT coalesce(max(version), 0) FROM pymail_schema_migrations")
    )


async def _applied(conn: asyncpg.Connection, migrations: Sequence[Migration]) -> set[int]:
    applied = {r[0] for r in await conn.fetch("SELECT version FROM pymail_schema_migrations")}
    known = {m.version for m in migrations}
    if applied - known:
        raise StorageError(
            f"the database has schema version {max(applied)}, newer than this pymail "
            f"knows ({max(known)}): upgrade pymail"
        )
    return applied


async def migrate(
    conn: asyncpg.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Apply the steps not applied yet, each in its own locked transaction; their
    versions.  `conn` must not be inside a transaction."""
    server_version = conn.get_server_version()
    version_num = server_version.major * 10000 + server_version.minor
    if server_version.major >= 10:
        version_num = server_version.major * 10000
    if version_num < MIN_SERVER_VERSION:
        raise StorageError(
            f"PostgreSQL {server_version.major}.{server_version.minor} is too old: pymail "
            "needs PostgreSQL 13 or newer"
        )
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        await conn.execute(_MIGRATIONS_TABLE)
        applied = await _applied(conn, migrations)
    done: list[int] = []
    for m in sorted(migrations, key=lambda m: m.version):
        if m.version in applied:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
            if m.version in await _applied(conn, migrations):
                continue  # another migrator did it while we waited for the lock
            log.info("applying schema migration %d: %s", m.version, m.description)
            await m.apply(conn)
            await conn.execute(
                "INSERT INTO pymail_schema_migrations (version) VALUES ($1)", m.version
            )
        done.append(m.version)
    return done
