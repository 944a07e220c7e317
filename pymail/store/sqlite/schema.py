"""The SQLite schema and its versioned migrations.

Tables:

* the seed's directory, so an existing Postfix/Dovecot database fits: `domains` exactly as
  the seed defines it (``SERIAL`` becomes ``INTEGER PRIMARY KEY AUTOINCREMENT``, nothing
  else changes), `virtual_users`, `virtual_aliases` (column names of the classic
  Postfix/Dovecot tutorials);
* pymail's index: `mailboxes`, `message_blobs` (one row per blob: size and the JSON
  structure computed at delivery), `messages` (one row per message in a mailbox),
  `sequences` (named counters: ``uidvalidity``, and ``changes`` for the change feed,
  mirrored per mailbox in `mailboxes.change_seq`);
* `auth_failures` and `auth_bans`: failed logins and banned client addresses
  (`SqliteBanStore`), so every process on the file shares them;
* `queue_messages` and `queue_recipients`: the outbound queue (`SqliteQueueStore`,
  pymail.store.queue), one row per queued message and one per recipient;
* `subscriptions`: the mailbox names each user subscribed to (IMAP SUBSCRIBE), which
  may outlive their mailbox;
* `schema_migrations`: which steps below have been applied.

Invariants:

* A step is applied once, inside the writer's transaction, and recorded in
  `schema_migrations`; running `migrate` again applies nothing.
* The seed's tables may exist already, created by an operator for Postfix/Dovecot: they
  are created with ``IF NOT EXISTS`` and never dropped or rewritten.  A column pymail
  reads that an older table lacks is *added* (``ALTER TABLE ... ADD COLUMN`` with the
  seed's default), which leaves every existing value untouched.
* AUTOINCREMENT on every id pymail hands out, so an id (user, mailbox) is never reused
  after a delete.
* `messages.internal_date` is integer microseconds since the Unix epoch, UTC; `flags` is
  the space-separated sorted set of flags and keywords (IMAP atoms contain no spaces).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pymail.store.interfaces import StorageError

__all__ = ["MIGRATIONS", "Migration", "migrate", "schema_version"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(*sql: str) -> Callable[[sqlite3.Connection], None]:
    # One execute() per statement: executescript() would COMMIT the writer's transaction.
    def apply(conn: sqlite3.Connection) -> None:
        for statement in sql:
            conn.execute(statement)

    return apply


# --------------------------------------------------------------------------- step 1

DOMAINS = """
CREATE TABLE IF NOT EXISTS domains (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
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
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    email VARCHAR(255) UNIQUE NOT NULL,
    password VARCHAR(255) NOT NULL,
    quota BIGINT DEFAULT 0,
    is_active BOOLEAN DEFAULT TRUE,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
)"""

VIRTUAL_ALIASES = """
CREATE TABLE IF NOT EXISTS virtual_aliases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    domain_id INTEGER NOT NULL REFERENCES domains(id) ON DELETE CASCADE,
    source VARCHAR(255) NOT NULL,
    destination VARCHAR(255) NOT NULL,
    is_active BOOLEAN DEFAULT TRUE,
    UNIQUE (source, destination)
)"""

#: Columns pymail reads that a pre-existing seed table might lack, with the DDL that adds
#: them.  SQLite cannot ADD COLUMN with DEFAULT CURRENT_TIMESTAMP: such a `created_at`
#: stays NULL for old rows and is read as the Unix epoch.
_ADOPTED_COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "domains": (
        ("transport", "VARCHAR(255) DEFAULT 'virtual:'"),
        ("company_id", "INTEGER"),
        (
            "auth_type",
            "VARCHAR(10) DEFAULT 'local' CHECK (auth_type IN ('ldap', 'local'))",
        ),
        ("ldap_base_dn", "VARCHAR(255)"),
        ("is_active", "BOOLEAN DEFAULT TRUE"),
        ("created_at", "TIMESTAMP"),
    ),
    "virtual_users": (
        ("quota", "BIGINT DEFAULT 0"),
        ("is_active", "BOOLEAN DEFAULT TRUE"),
        ("created_at", "TIMESTAMP"),
    ),
    "virtual_aliases": (("is_active", "BOOLEAN DEFAULT TRUE"),),
}


def _directory(conn: sqlite3.Connection) -> None:
    for statement in (DOMAINS, VIRTUAL_USERS, VIRTUAL_ALIASES):
        conn.execute(statement)
    for table, columns in _ADOPTED_COLUMNS.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, ddl in columns:
            if name not in have:
                log.info("adding column %s.%s to the existing table", table, name)
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {ddl}")
    conn.execute(
        "CREATE INDEX IF NOT EXISTS virtual_users_domain_id ON virtual_users (domain_id)"
    )
    conn.execute(
        "CREATE INDEX IF NOT EXISTS virtual_aliases_source ON virtual_aliases (source)"
    )


# --------------------------------------------------------------------------- step 2

_INDEX = _statements(
    """
    CREATE TABLE IF NOT EXISTS sequences (
        name TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    )""",
    """
    CREATE TABLE IF NOT EXISTS mailboxes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id INTEGER NOT NULL REFERENCES virtual_users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        special_use TEXT,
        uidvalidity INTEGER NOT NULL,
        uidnext INTEGER NOT NULL DEFAULT 1,
        highestmodseq INTEGER NOT NULL DEFAULT 1,
        subscribed BOOLEAN NOT NULL DEFAULT TRUE,
        UNIQUE (user_id, name)
    )""",
    """
    CREATE TABLE IF NOT EXISTS message_blobs (
        blob_key TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        structure TEXT NOT NULL,
        created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
    )""",
    """
    CREATE TABLE IF NOT EXISTS messages (
        mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id) ON DELETE CASCADE,
        uid INTEGER NOT NULL,
        blob_key TEXT NOT NULL REFERENCES message_blobs(blob_key),
        size INTEGER NOT NULL,
        internal_date INTEGER NOT NULL,
        flags TEXT NOT NULL DEFAULT '',
        modseq INTEGER NOT NULL,
        PRIMARY KEY (mailbox_id, uid)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS messages_blob_key ON messages (blob_key)",
)


# --------------------------------------------------------------------------- step 3

#: The change feed (`SqliteIndex.watch`): ``sequences.changes`` is bumped by every write
#: that changes mailboxes, in the same transaction, and the changed mailboxes get its new
#: value in `mailboxes.change_seq`.  The single writer makes the counter follow commit
#: order, so a poller that remembers the last value it saw misses nothing.
_CHANGES = _statements(
    "ALTER TABLE mailboxes ADD COLUMN change_seq INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX IF NOT EXISTS mailboxes_change_seq ON mailboxes (change_seq)",
    "INSERT OR IGNORE INTO sequences (name, value) VALUES ('changes', 0)",
)


# --------------------------------------------------------------------------- step 4

#: Failed logins and bans (`SqliteBanStore`, pymail.auth.ban), shared by every process on
#: the file.  Times are integer microseconds since the Unix epoch, UTC.
_BANS = _statements(
    """
    CREATE TABLE IF NOT EXISTS auth_failures (
        id INTEGER PRIMARY KEY,
        ip TEXT NOT NULL,
        account TEXT NOT NULL,
        at INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS auth_failures_ip ON auth_failures (ip, at)",
    "CREATE INDEX IF NOT EXISTS auth_failures_account ON auth_failures (account, at)",
    "CREATE INDEX IF NOT EXISTS auth_failures_at ON auth_failures (at)",
    """
    CREATE TABLE IF NOT EXISTS auth_bans (
        ip TEXT PRIMARY KEY,
        until INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        reason TEXT NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS auth_bans_until ON auth_bans (until)",
)


# --------------------------------------------------------------------------- step 5

#: The outbound queue (`SqliteQueueStore`, pymail.store.queue).  Times are integer
#: microseconds since the Unix epoch, UTC; `notify` is the comma-separated sorted set of
#: RFC 3461 NOTIFY values ("" = the default); `leased_at` is the `now` of the claim that
#: holds the lease (`release` makes the recipient due at that time).  A blob a queue row
#: names is referenced (`blob_referenced`, `forget_blob`).
_QUEUE = _statements(
    """
    CREATE TABLE IF NOT EXISTS queue_messages (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        queue_id TEXT NOT NULL UNIQUE,
        blob_key TEXT NOT NULL,
        size INTEGER NOT NULL,
        sender TEXT NOT NULL,
        origin TEXT NOT NULL,
        auth_user TEXT,
        envid TEXT,
        ret TEXT,
        requiretls BOOLEAN NOT NULL DEFAULT FALSE,
        smtputf8 BOOLEAN NOT NULL DEFAULT FALSE,
        body TEXT NOT NULL DEFAULT '7BIT',
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS queue_messages_blob_key ON queue_messages (blob_key)",
    """
    CREATE TABLE IF NOT EXISTS queue_recipients (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id INTEGER NOT NULL REFERENCES queue_messages(id) ON DELETE CASCADE,
        address TEXT NOT NULL,
        domain TEXT NOT NULL,
        route TEXT NOT NULL,
        orcpt TEXT,
        notify TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL,
        last_attempt INTEGER,
        lease_owner TEXT,
        lease_until INTEGER,
        leased_at INTEGER,
        reply_code INTEGER,
        enhanced_code TEXT,
        reply_text TEXT,
        remote_host TEXT,
        delay_notified BOOLEAN NOT NULL DEFAULT FALSE
    )""",
    "CREATE INDEX IF NOT EXISTS queue_recipients_message ON queue_recipients (message_id)",
    "CREATE INDEX IF NOT EXISTS queue_recipients_due ON queue_recipients (status, next_attempt)",
    "CREATE INDEX IF NOT EXISTS queue_recipients_owner ON queue_recipients (lease_owner)",
)


# --------------------------------------------------------------------------- step 6

#: Subscriptions are names, not mailboxes (RFC 3501 section 6.3.6: a subscription stays
#: when its mailbox is deleted, section 6.3.4; RFC 5258 section 3.1 lists it as
#: \\NonExistent).  The rows take over from `mailboxes.subscribed`, which is no longer
#: read or written (kept: the seed rule never drops a column).
_SUBSCRIPTIONS = _statements(
    """
    CREATE TABLE IF NOT EXISTS subscriptions (
        user_id INTEGER NOT NULL REFERENCES virtual_users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        PRIMARY KEY (user_id, name)
    ) WITHOUT ROWID""",
    "INSERT OR IGNORE INTO subscriptions (user_id, name)"
    " SELECT user_id, name FROM mailboxes WHERE subscribed",
)


# --------------------------------------------------------------------------- step 7

#: \\Recent (RFC 3501 section 2.3.2): `mailboxes.first_recent_uid` is the lowest UID not
#: yet seen by a session that selected the mailbox; the next SELECT (not EXAMINE) takes
#: the messages from there as its \\Recent ones and moves it up to UIDNEXT (Dovecot's
#: first_recent_uid).  The messages already stored are not recent.
_RECENT = _statements(
    "ALTER TABLE mailboxes ADD COLUMN first_recent_uid INTEGER NOT NULL DEFAULT 1",
    "UPDATE mailboxes SET first_recent_uid = uidnext",
)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "directory: domains, virtual_users, virtual_aliases (the seed)", _directory),
    Migration(2, "index: sequences, mailboxes, message_blobs, messages", _INDEX),
    Migration(3, "index: mailbox change counter for the change feed", _CHANGES),
    Migration(4, "auth: failed logins and bans", _BANS),
    Migration(5, "queue: outbound messages and recipients", _QUEUE),
    Migration(6, "imap: subscriptions by name, kept when the mailbox goes", _SUBSCRIPTIONS),
    Migration(7, "imap: \\Recent watermark per mailbox", _RECENT),
)


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration, 0 for a database pymail never migrated."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return 0
    (version,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(version)


def migrate(
    conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS
) -> list[int]:
    """Apply the steps not applied yet; returns their versions.  Runs in the caller's
    transaction (the writer's), so a failing step leaves nothing behind."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY,"
        " applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)"
    )
    applied = {v for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    known = {m.version for m in migrations}
    if applied - known:
        raise StorageError(
            f"the database has schema version {max(applied)}, newer than this pymail "
            f"knows ({max(known)}): upgrade pymail"
        )
    done: list[int] = []
    for m in sorted(migrations, key=lambda m: m.version):
        if m.version in applied:
            continue
        log.info("applying schema migration %d: %s", m.version, m.description)
        m.apply(conn)
        conn.execute("INSERT INTO schema_migrations (version) VALUES (?)", (m.version,))
        done.append(m.version)
    return done
