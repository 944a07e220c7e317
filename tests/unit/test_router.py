"""Recipient routing over a real (embedded) directory: aliases, catch-alls, loops."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pymail.delivery.router import MAX_DEPTH, RecipientStatus, Router
from pymail.store import open_store


def scenario(tmp_path: Path, setup, checks) -> None:
    async def run() -> None:
        store = open_store(f"sqlite://{tmp_path / 'i.sqlite3'}", f"file://{tmp_path / 'blobs'}")
        await store.migrate()
        try:
            d = store.directory
            await d.add_domain("example.test")
            await d.add_domain("other.test")
            for user in ("alice@example.test", "bob@example.test", "carl@other.test"):
                await d.add_user(user, "{PLAIN}x")
            await setup(d)
            router = Router(d)
            for address, status, users in checks:
                result = await router.resolve(address)
                assert result.status is status, (address, result)
                assert sorted(u.address for u in result.users) == sorted(users), address
        finally:
            await store.close()

    asyncio.run(run())


L = RecipientStatus


def test_users_domains_and_case(tmp_path: Path) -> None:
    async def setup(d) -> None:
        await d.add_domain("off.test")
        await d.add_user("zed@off.test", "{PLAIN}x")
        await d.set_domain_active("off.test", False)
        await d.add_user("gone@example.test", "{PLAIN}x")
        await d.set_user_active("gone@example.test", False)
        await d.add_domain("relay.test", transport="smtp:[10.0.0.1]")

    scenario(tmp_path, setup, [
        ("alice@example.test", L.LOCAL, ["alice@example.test"]),
        ("ALICE@Example.TEST", L.LOCAL, ["alice@example.test"]),
        ("nobody@example.test", L.UNKNOWN_USER, []),
        ("x@elsewhere.test", L.NOT_LOCAL, []),
        ("zed@off.test", L.DOMAIN_DISABLED, []),
        ("gone@example.test", L.USER_DISABLED, []),
        ("x@relay.test", L.FORWARD_UNAVAILABLE, []),
    ])


def test_aliases(tmp_path: Path) -> None:
    async def setup(d) -> None:
        await d.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
        await d.add_alias("sales@example.test", ["team@example.test", "carl@other.test"])
        await d.add_alias("alice@example.test", ["alice@example.test", "bob@example.test"])  # keep + copy
        await d.add_alias("outside@example.test", ["someone@remote.example"])
        await d.add_alias("a@example.test", ["b@example.test"])
        await d.add_alias("b@example.test", ["a@example.test"])
        await d.add_alias("loopy@example.test", ["loopy@example.test.x", "bob@example.test"])
        await d.add_alias("@other.test", ["@example.test"])  # domain alias

    scenario(tmp_path, setup, [
        ("team@example.test", L.LOCAL, ["alice@example.test", "bob@example.test"]),
        ("sales@example.test", L.LOCAL, ["alice@example.test", "bob@example.test", "carl@other.test"]),
        ("alice@example.test", L.LOCAL, ["alice@example.test", "bob@example.test"]),
        ("outside@example.test", L.FORWARD_UNAVAILABLE, []),
        ("a@example.test", L.LOOP, []),
        ("alice@other.test", L.LOCAL, ["alice@example.test", "bob@example.test"]),  # via @example.test
        ("carl@other.test", L.LOCAL, ["carl@other.test"]),  # a real user wins over the catch-all
        ("nobody@other.test", L.UNKNOWN_USER, []),
    ])


def test_deep_chain_is_cut(tmp_path: Path) -> None:
    async def setup(d) -> None:
        for n in range(MAX_DEPTH + 5):
            await d.add_alias(f"hop{n}@example.test", [f"hop{n + 1}@example.test"])
        await d.add_alias(f"hop{MAX_DEPTH + 5}@example.test", ["alice@example.test"])
        await d.add_alias("short0@example.test", ["short1@example.test"])
        await d.add_alias("short1@example.test", ["alice@example.test"])

    scenario(tmp_path, setup, [
        ("hop0@example.test", L.LOOP, []),
        ("short0@example.test", L.LOCAL, ["alice@example.test"]),
    ])
