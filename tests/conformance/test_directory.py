"""Directory conformance: domains, users, aliases (the seed's schema), migrations, and
`open_store`'s URLs."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pymail.store import (
    AlreadyExists,
    BlobStore,
    Delivery,
    DeliveryTarget,
    Directory,
    Index,
    NotFound,
    PostgresSettings,
    StorageError,
    Store,
    open_store,
)

if TYPE_CHECKING:
    from conftest import StoreHarness

HASH = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c2FsdA$aGFzaA"


async def _deliver(store: Store, user_id: int, data: bytes = b"Subject: x\r\n\r\nx\r\n") -> str:
    key = await store.blobs.put(data)
    await store.index.deliver(
        Delivery(key, len(data), dt.datetime.now(dt.timezone.utc), "{}", [DeliveryTarget(user_id)])
    )
    return key


# --------------------------------------------------------------------------- domains


async def test_add_domain_has_the_seed_defaults(store: Store) -> None:
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    d = await store.directory.add_domain("Example.COM")
    assert d.name == "example.com"
    assert d.transport == "virtual:"
    assert d.auth_type == "local"
    assert d.ldap_base_dn is None and d.company_id is None
    assert d.is_active is True
    assert d.created_at.tzinfo is not None
    assert before <= d.created_at <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)
    assert await store.directory.get_domain("EXAMPLE.com") == d


async def test_add_domain_with_every_field(store: Store) -> None:
    d = await store.directory.add_domain(
        "corp.example",
        transport="lmtp:unix:private/dovecot-lmtp",
        auth_type="ldap",
        ldap_base_dn="ou=people,dc=corp,dc=example",
        company_id=42,
    )
    assert (d.transport, d.auth_type, d.ldap_base_dn, d.company_id) == (
        "lmtp:unix:private/dovecot-lmtp",
        "ldap",
        "ou=people,dc=corp,dc=example",
        42,
    )
    assert await store.directory.get_domain("corp.example") == d


async def test_duplicate_domain_in_any_case(store: Store) -> None:
    await store.directory.add_domain("example.com")
    with pytest.raises(AlreadyExists):
        await store.directory.add_domain("EXAMPLE.com")
    assert len(await store.directory.list_domains()) == 1


async def test_auth_type_check_refuses_other_values(store: Store, harness: StoreHarness) -> None:
    with pytest.raises(ValueError):
        await store.directory.add_domain("bad.example", auth_type="kerberos")
    assert await store.directory.get_domain("bad.example") is None
    # the CHECK is in the schema itself, not only in pymail's code
    with pytest.raises(Exception, match="(?i)check"):
        await harness.execute_raw(
            ["INSERT INTO domains (domain_name, auth_type) VALUES ('raw.example', 'kerberos')"]
        )


async def test_list_and_activate_domains(store: Store) -> None:
    for name in ("b.example", "a.example", "c.example"):
        await store.directory.add_domain(name)
    assert [d.name for d in await store.directory.list_domains()] == [
        "a.example",
        "b.example",
        "c.example",
    ]
    await store.directory.set_domain_active("B.example", False)
    assert (await store.directory.get_domain("b.example")).is_active is False
    await store.directory.set_domain_active("b.example", True)
    assert (await store.directory.get_domain("b.example")).is_active is True
    with pytest.raises(NotFound):
        await store.directory.set_domain_active("nowhere.example", False)
    assert await store.directory.get_domain("nowhere.example") is None


async def test_remove_domain_cascades(store: Store) -> None:
    await store.directory.add_domain("gone.example")
    await store.directory.add_domain("kept.example")
    gone = await store.directory.add_user("ann@gone.example", HASH)
    kept = await store.directory.add_user("ann@kept.example", HASH)
    await store.directory.add_alias("info@gone.example", ["ann@gone.example"])
    await store.directory.add_alias("info@kept.example", ["ann@kept.example"])
    key = await _deliver(store, gone.id, b"for gone")
    kept_key = await _deliver(store, kept.id, b"for kept")
    inbox = await store.index.get_mailbox(gone.id, "INBOX")
    assert inbox is not None

    await store.directory.remove_domain("GONE.example")

    assert await store.directory.get_domain("gone.example") is None
    assert await store.directory.get_user("ann@gone.example") is None
    assert await store.directory.get_user_by_id(gone.id) is None
    assert await store.directory.get_alias_destinations("info@gone.example") == []
    assert await store.directory.list_aliases("gone.example") == []
    assert await store.index.list_mailboxes(gone.id) == []
    assert await store.index.list_messages(inbox.id) == []
    assert not await store.index.blob_referenced(key)
    # the other domain is untouched
    assert await store.directory.get_user("ann@kept.example") == kept
    assert await store.directory.get_alias_destinations("info@kept.example") == [
        "ann@kept.example"
    ]
    assert await store.index.blob_referenced(kept_key)
    with pytest.raises(NotFound):
        await store.directory.remove_domain("gone.example")


# --------------------------------------------------------------------------- users


async def test_users(store: Store) -> None:
    domain = await store.directory.add_domain("example.com")
    with pytest.raises(NotFound):
        await store.directory.add_user("ann@unknown.example", HASH)

    ann = await store.directory.add_user("Ann.Smith@Example.COM", HASH, quota=1 << 30)
    assert ann.address == "ann.smith@example.com"
    assert ann.domain_id == domain.id
    assert ann.password_hash == HASH
    assert ann.quota == 1 << 30
    assert ann.is_active is True
    assert ann.created_at.tzinfo is not None
    assert await store.directory.get_user("ANN.SMITH@example.com") == ann
    assert await store.directory.get_user_by_id(ann.id) == ann
    assert await store.directory.get_user("nobody@example.com") is None
    assert await store.directory.get_user_by_id(ann.id + 1000) is None

    with pytest.raises(AlreadyExists):
        await store.directory.add_user("ann.smith@EXAMPLE.com", HASH)

    bob = await store.directory.add_user("bob@example.com", HASH)
    assert bob.quota == 0
    await store.directory.add_domain("other.example")
    carl = await store.directory.add_user("carl@other.example", HASH)
    assert [u.address for u in await store.directory.list_users()] == [
        "ann.smith@example.com",
        "bob@example.com",
        "carl@other.example",
    ]
    assert await store.directory.list_users("OTHER.example") == [carl]
    assert await store.directory.list_users("unknown.example") == []


async def test_add_user_creates_no_mailbox(store: Store) -> None:
    await store.directory.add_domain("example.com")
    ann = await store.directory.add_user("ann@example.com", HASH)
    assert await store.index.list_mailboxes(ann.id) == []


async def test_set_password_and_active(store: Store) -> None:
    await store.directory.add_domain("example.com")
    await store.directory.add_user("ann@example.com", HASH)
    await store.directory.set_password("ANN@example.com", "{BLF-CRYPT}$2b$new")
    await store.directory.set_user_active("ann@EXAMPLE.com", False)
    ann = await store.directory.get_user("ann@example.com")
    assert ann.password_hash == "{BLF-CRYPT}$2b$new"
    assert ann.is_active is False
    await store.directory.set_user_active("ann@example.com", True)
    assert (await store.directory.get_user("ann@example.com")).is_active is True
    with pytest.raises(NotFound):
        await store.directory.set_password("nobody@example.com", HASH)
    with pytest.raises(NotFound):
        await store.directory.set_user_active("nobody@example.com", True)


async def test_remove_user_removes_mailboxes_and_messages(store: Store) -> None:
    await store.directory.add_domain("example.com")
    ann = await store.directory.add_user("ann@example.com", HASH)
    bob = await store.directory.add_user("bob@example.com", HASH)
    key = await _deliver(store, ann.id)
    await _deliver(store, bob.id, b"bob's")
    inbox = await store.index.get_mailbox(ann.id, "INBOX")

    await store.directory.remove_user("ANN@example.com")

    assert await store.directory.get_user("ann@example.com") is None
    assert await store.index.list_mailboxes(ann.id) == []
    assert await store.index.list_messages(inbox.id) == []
    assert not await store.index.blob_referenced(key)
    assert len(await store.index.list_mailboxes(bob.id)) > 0
    with pytest.raises(NotFound):
        await store.directory.remove_user("ann@example.com")


# --------------------------------------------------------------------------- aliases


async def test_aliases(store: Store) -> None:
    domain = await store.directory.add_domain("example.com")
    rows = await store.directory.add_alias(
        "Sales@Example.com", ["Ann@example.com", "bob@other.example"]
    )
    assert [(a.source, a.destination, a.domain_id, a.is_active) for a in rows] == [
        ("sales@example.com", "ann@example.com", domain.id, True),
        ("sales@example.com", "bob@other.example", domain.id, True),
    ]
    # existing pairs are kept, new ones added
    again = await store.directory.add_alias(
        "sales@example.com", ["ann@EXAMPLE.com", "carl@example.com"]
    )
    assert again[0] == rows[0]
    assert await store.directory.get_alias_destinations("SALES@example.com") == [
        "ann@example.com",
        "bob@other.example",
        "carl@example.com",
    ]
    assert len(await store.directory.list_aliases()) == 3

    # catch-all is its own source, never consulted for other sources
    await store.directory.add_alias("@example.com", ["ann@example.com"])
    assert await store.directory.get_alias_destinations("@example.com") == ["ann@example.com"]
    assert await store.directory.get_alias_destinations("nobody@example.com") == []

    with pytest.raises(NotFound):
        await store.directory.add_alias("x@unknown.example", ["ann@example.com"])


async def test_list_and_remove_aliases(store: Store) -> None:
    await store.directory.add_domain("a.example")
    await store.directory.add_domain("b.example")
    await store.directory.add_alias("x@a.example", ["1@z.example", "2@z.example", "3@z.example"])
    await store.directory.add_alias("y@b.example", ["1@z.example"])
    assert {a.source for a in await store.directory.list_aliases("A.example")} == {"x@a.example"}

    assert await store.directory.remove_alias("X@a.example", "2@Z.example") == 1
    assert await store.directory.get_alias_destinations("x@a.example") == [
        "1@z.example",
        "3@z.example",
    ]
    with pytest.raises(NotFound):
        await store.directory.remove_alias("x@a.example", "2@z.example")
    assert await store.directory.remove_alias("x@a.example") == 2
    assert await store.directory.get_alias_destinations("x@a.example") == []
    with pytest.raises(NotFound):
        await store.directory.remove_alias("x@a.example")
    assert await store.directory.get_alias_destinations("y@b.example") == ["1@z.example"]


# --------------------------------------------------------------------------- migrations


async def test_migrate_twice_is_a_no_op(harness: StoreHarness) -> None:
    async with harness.opened() as store:
        await store.directory.add_domain("example.com")
        ann = await store.directory.add_user("ann@example.com", HASH)
        await store.directory.add_alias("info@example.com", ["ann@example.com"])
        key = await _deliver(store, ann.id)
        inbox = await store.index.get_mailbox(ann.id, "INBOX")
        await store.migrate()
        await store.migrate()
    async with harness.opened() as store:  # migrates once more on open
        await store.migrate()
        assert await store.directory.get_user("ann@example.com") == ann
        assert await store.directory.get_alias_destinations("info@example.com") == [
            "ann@example.com"
        ]
        assert await store.index.get_mailbox(ann.id, "INBOX") == inbox
        assert [m.blob_key for m in await store.index.list_messages(inbox.id)] == [key]


async def test_migrate_reports_nothing_to_do_the_second_time(harness: StoreHarness) -> None:
    async with harness.opened(migrate=False) as store:
        first = await store.database.migrate()
        assert first and first == sorted(first)
        assert await store.database.migrate() == []


async def test_concurrent_migrators_apply_each_step_once(harness: StoreHarness) -> None:
    """Two nodes starting at once on a fresh database (PostgreSQL: the advisory lock)."""
    async with harness.opened(migrate=False) as one, harness.opened(migrate=False) as two:
        results = await asyncio.gather(*(s.database.migrate() for s in (one, two, one, two)))
        applied = sorted(v for r in results for v in r)
        assert applied == sorted(set(applied)), f"a step was applied twice: {results}"
        assert await one.database.migrate() == []
        await one.directory.add_domain("example.com")
        assert (await two.directory.get_domain("example.com")) is not None


async def test_check_reaches_a_healthy_store(store: Store) -> None:
    await store.check()
    await store.database.check()


async def test_opening_does_not_migrate(harness: StoreHarness) -> None:
    async with harness.opened(migrate=False):
        pass
    # the tables do not exist yet, so an operator's own schema can still be created
    await harness.execute_raw(harness.backend.legacy_seed_sql)


async def test_migrate_keeps_an_existing_postfix_dovecot_directory(
    harness: StoreHarness,
) -> None:
    await harness.execute_raw(harness.backend.legacy_seed_sql)
    async with harness.opened() as store:
        domain = await store.directory.get_domain("legacy.example")
        assert domain is not None
        assert (domain.id, domain.company_id, domain.transport, domain.auth_type) == (
            1,
            7,
            "virtual:",
            "local",
        )
        assert domain.is_active
        bob = await store.directory.get_user("bob@legacy.example")
        assert bob is not None
        assert (bob.id, bob.domain_id, bob.password_hash) == (1, 1, "{SHA512-CRYPT}$6$salt$hash")
        assert bob.is_active and bob.quota == 0
        assert await store.directory.get_alias_destinations("postmaster@legacy.example") == [
            "bob@legacy.example"
        ]

        # pymail works on top of them
        carol = await store.directory.add_user("carol@legacy.example", HASH)
        assert carol.id == 2
        await store.directory.add_alias("postmaster@legacy.example", ["carol@legacy.example"])
        stored = await store.index.deliver(
            Delivery(
                await store.blobs.put(b"hi bob"),
                6,
                dt.datetime.now(dt.timezone.utc),
                "{}",
                [DeliveryTarget(bob.id), DeliveryTarget(carol.id)],
            )
        )
        assert [s.uid for s in stored] == [1, 1]
    async with harness.opened() as store:
        assert [u.address for u in await store.directory.list_users("legacy.example")] == [
            "bob@legacy.example",
            "carol@legacy.example",
        ]
        assert await store.directory.get_alias_destinations("postmaster@legacy.example") == [
            "bob@legacy.example",
            "carol@legacy.example",
        ]


# --------------------------------------------------------------------------- open_store


async def test_store_parts_implement_the_interfaces(store: Store) -> None:
    assert isinstance(store.directory, Directory)
    assert isinstance(store.index, Index)
    assert isinstance(store.blobs, BlobStore)


@pytest.mark.parametrize(
    "index_url, blobs_url, bad",
    [
        ("mysql://db/pymail", "file:///tmp/blobs", "mysql://db/pymail"),
        ("sqlite://relative/index.db", "file:///tmp/blobs", "sqlite://relative/index.db"),
        ("sqlite:///tmp/index.db", "s3:///blobs", "s3:///blobs"),
        ("sqlite:///tmp/index.db", "ftp://bucket/blobs", "ftp://bucket/blobs"),
        ("sqlite:///tmp/index.db", "file://relative", "file://relative"),
        ("sqlite:///tmp/index.db", "/tmp/blobs", "/tmp/blobs"),
    ],
)
def test_open_store_refuses_unknown_urls(index_url: str, blobs_url: str, bad: str) -> None:
    with pytest.raises(ValueError) as info:
        open_store(index_url, blobs_url)
    assert bad in str(info.value)


def test_open_store_creates_directories_and_nothing_else(tmp_path: Path) -> None:
    index = tmp_path / "a" / "b" / "index.sqlite3"
    blobs = tmp_path / "c" / "blobs"
    store = open_store(f"sqlite://{index}", f"file://{blobs}")
    assert index.parent.is_dir() and blobs.is_dir()
    assert not index.exists()  # no schema until migrate()
    asyncio.run(store.close())


# --------------------------------------------------------------------------- check(): one line


def test_sqlite_check_names_the_problem(tmp_path: Path) -> None:
    async def main() -> None:
        missing = open_store(
            f"sqlite://{tmp_path / 'new' / 'i.sqlite3'}", f"file://{tmp_path / 'b'}"
        )
        try:
            await missing.database.check()  # fine: migrate will create it
            assert not (tmp_path / "new" / "i.sqlite3").exists()
        finally:
            await missing.close()
        garbage = tmp_path / "garbage.sqlite3"
        garbage.write_bytes(b"this is not a database" * 100)
        store = open_store(f"sqlite://{garbage}", f"file://{tmp_path / 'b'}")
        try:
            with pytest.raises(StorageError) as info:
                await store.check()
        finally:
            await store.close()
        text = str(info.value)
        assert "\n" not in text
        assert str(garbage) in text and "not a database" in text

    asyncio.run(main())


def test_postgres_check_names_the_problem(postgres_service, tmp_path: Path) -> None:  # noqa: ANN001
    """Wrong port, wrong database, wrong password: StorageError, one line naming
    host:port/dbname and the reason, never the password."""
    from tests.services.postgres import PASSWORD_ROLE

    svc = postgres_service
    secret = "s3cr3t-Pa55"
    wrong = "not-the-Pa55word"

    async def failure(dsn: str) -> str:
        store = open_store(dsn, f"file://{tmp_path / 'blobs'}",
                           postgres=PostgresSettings(connect_timeout=5.0))
        try:
            with pytest.raises(StorageError) as info:
                await store.database.check()
            with pytest.raises(StorageError):  # any call, not only check()
                await store.directory.get_domain("example.com")
        finally:
            await store.close()
        text = str(info.value)
        assert "\n" not in text, text
        assert secret not in text and wrong not in text, text
        return text

    async def main() -> None:
        await svc.execute(f"DROP ROLE IF EXISTS {PASSWORD_ROLE}")
        await svc.execute(f"CREATE ROLE {PASSWORD_ROLE} LOGIN PASSWORD '{secret}'")
        with socket.socket() as s:  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]

        text = await failure(f"postgresql://postgres:{wrong}@127.0.0.1:{closed_port}/pymail")
        assert text == (
            f"cannot connect to PostgreSQL at 127.0.0.1:{closed_port}/pymail: connection refused"
        )
        text = await failure(svc.dsn("no_such_db"))
        assert text == (
            f"cannot connect to PostgreSQL at 127.0.0.1:{svc.port}/no_such_db: "
            'database "no_such_db" does not exist'
        )
        text = await failure(svc.dsn("postgres", user=PASSWORD_ROLE, password=wrong))
        assert text.startswith(f"cannot connect to PostgreSQL at 127.0.0.1:{svc.port}/postgres: ")
        assert "password authentication failed" in text

        # the right password works
        store = open_store(svc.dsn("postgres", user=PASSWORD_ROLE, password=secret),
                           f"file://{tmp_path / 'blobs'}")
        try:
            await store.database.check()
            assert "***" in repr(store.database) and secret not in repr(store.database)
        finally:
            await store.close()

    asyncio.run(main())
