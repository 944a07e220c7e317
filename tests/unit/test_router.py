"""Recipient routing over a real (embedded) directory: aliases, catch-alls, loops,
forwards outside, and Postfix-style transports."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pymail.delivery.router import MAX_DEPTH, NextHop, RecipientStatus, Router, parse_transport
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
            for address, status, users, *forwards in checks:
                result = await router.resolve(address)
                assert result.status is status, (address, result)
                assert sorted(u.address for u in result.users) == sorted(users), address
                if forwards:
                    assert [(f.address, f.nexthop) for f in result.forwards] == forwards[0], address
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
        ("x@elsewhere.test", L.REMOTE, []),
        ("zed@off.test", L.DOMAIN_DISABLED, []),
        ("gone@example.test", L.USER_DISABLED, []),
        ("x@relay.test", L.RELAY_DOMAIN, []),
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
        ("outside@example.test", L.LOCAL, [], [("someone@remote.example", NextHop("remote.example"))]),
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


def test_forwards_and_transports(tmp_path: Path) -> None:
    async def setup(d) -> None:
        await d.add_domain("relay.test", transport="smtp:[10.0.0.1]:2525")
        await d.add_domain("uucp.test", transport="uucp:somewhere")
        await d.add_alias("mixed@example.test", ["alice@example.test", "x@remote.example",
                                                 "y@relay.test", "x@remote.example"])
        await d.add_alias("odd@example.test", ["z@uucp.test"])

    scenario(tmp_path, setup, [
        # local copies and forwards together; each forward once, in order
        ("mixed@example.test", L.LOCAL, ["alice@example.test"],
         [("x@remote.example", NextHop("remote.example")),
          ("y@relay.test", NextHop("10.0.0.1", "smtp:10.0.0.1:2525"))]),
        ("odd@example.test", L.UNSUPPORTED_TRANSPORT, []),
        ("q@uucp.test", L.UNSUPPORTED_TRANSPORT, []),
    ])


@pytest.mark.parametrize(("transport", "nexthop"), [
    ("smtp:[10.0.0.5]:2525", NextHop("10.0.0.5", "smtp:10.0.0.5:2525")),
    ("smtp:[Mail.Example.NET]", NextHop("mail.example.net", "smtp:mail.example.net:25")),
    ("relay:[10.0.0.5]:25", NextHop("10.0.0.5", "smtp:10.0.0.5:25")),
    ("smtp:backup.example.net", NextHop("backup.example.net")),  # its MX
    ("smtp:backup.example.net:587", NextHop("backup.example.net")),
    ("smtp:", NextHop("d.test")),
    ("SMTP:[10.0.0.5]:25", NextHop("10.0.0.5", "smtp:10.0.0.5:25")),
    ("smtp:[10.0.0.5]:99999", None),
    ("smtp:[10.0.0.5]x", None),
    ("smtp:[10.0.0.5", None),
    ("smtp:[10.0.0.5]:port", None),
    ("error:no such domain", None),
    ("lmtp:unix:/run/dovecot", None),
])
def test_parse_transport(transport: str, nexthop: NextHop | None) -> None:
    assert parse_transport(transport, "d.test") == nexthop
