"""BanStore conformance (failed logins and bans in the index) and the `Jail` policy on top
of it, on every backend: what one process records, another store on the same database
sees; the policy's clock is injected, so no test waits."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import TYPE_CHECKING

import pytest

from pymail.auth.ban import CACHE_SECONDS, PRUNE_INTERVAL, BanPolicy, Jail, ban_key
from pymail.store import BanStore, StorageError, Store

if TYPE_CHECKING:
    from conftest import StoreHarness

T0 = dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=dt.timezone.utc)
MIN = dt.timedelta(minutes=1)


def _bans(store: Store) -> BanStore:
    assert store.bans is not None
    assert isinstance(store.bans, BanStore)
    return store.bans


class Clock:
    """Wall clock and monotonic clock moved by the test."""

    def __init__(self) -> None:
        self.now = T0
        self.mono = 1000.0
        self.slept: list[float] = []

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)
        self.mono += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def _jail(store: Store, clock: Clock, **policy: object) -> Jail:
    return Jail(store.bans, BanPolicy(**policy), clock=lambda: clock.now,  # type: ignore[arg-type]
                monotonic=lambda: clock.mono, sleep=clock.sleep)


# --------------------------------------------------------------------------- the store


async def test_failures_are_counted_per_address_and_per_account_in_the_window(store: Store) -> None:
    bans = _bans(store)
    counts = [await bans.record_failure("192.0.2.1", "alice@example.test", T0 + n * MIN, T0)
              for n in range(3)]
    assert [(c.ip, c.account) for c in counts] == [(1, 1), (2, 2), (3, 3)]
    other = await bans.record_failure("192.0.2.2", "alice@example.test", T0 + 3 * MIN, T0)
    assert (other.ip, other.account) == (1, 4)  # a new address, the same account
    # only failures at or after `since` count
    late = await bans.record_failure("192.0.2.1", "bob@example.test", T0 + 20 * MIN, T0 + 2 * MIN)
    assert (late.ip, late.account) == (2, 1)


async def test_ban_is_visible_until_it_ends_and_uses_up_the_failures(store: Store) -> None:
    bans = _bans(store)
    for n in range(5):
        await bans.record_failure("192.0.2.9", "alice@example.test", T0, T0)
    ban = await bans.ban("192.0.2.9", T0 + 30 * MIN, failures=5, reason="authentication", now=T0)
    assert (ban.ip, ban.until, ban.failures, ban.reason, ban.created_at) == (
        "192.0.2.9", T0 + 30 * MIN, 5, "authentication", T0)
    assert await bans.get_ban("192.0.2.9", T0 + 29 * MIN) == ban
    assert await bans.get_ban("192.0.2.9", T0 + 30 * MIN) is None  # ends at `until`
    assert await bans.get_ban("192.0.2.10", T0) is None
    assert await bans.list_bans(T0 + MIN) == [ban]
    assert await bans.list_bans(T0 + 31 * MIN) == []
    # the ban used up the address's failures; the account's other failures stay
    after = await bans.record_failure("192.0.2.9", "alice@example.test", T0 + MIN, T0)
    assert after.ip == 1 and after.account == 1


async def test_banning_twice_keeps_one_row_with_the_later_end(store: Store) -> None:
    bans = _bans(store)
    first = await bans.ban("2001:db8::/64", T0 + 30 * MIN, failures=5, reason="authentication", now=T0)
    assert (first.until, first.created_at, first.failures) == (T0 + 30 * MIN, T0, 5)
    # a second process banning at (about) the same time with an earlier end: kept as is
    second = await bans.ban("2001:db8::/64", T0 + 20 * MIN, failures=6, reason="authentication",
                            now=T0 + MIN)
    assert (second.until, second.created_at, second.failures) == (T0 + 30 * MIN, T0, 6)
    third = await bans.ban("2001:db8::/64", T0 + 40 * MIN, failures=5, reason="authentication",
                           now=T0 + 2 * MIN)
    assert third.until == T0 + 40 * MIN and third.created_at == T0
    # after the ban ended, a new one starts afresh
    fresh = await bans.ban("2001:db8::/64", T0 + 90 * MIN, failures=5, reason="authentication",
                           now=T0 + 60 * MIN)
    assert (fresh.until, fresh.created_at, fresh.failures) == (T0 + 90 * MIN, T0 + 60 * MIN, 5)
    assert [b.ip for b in await bans.list_bans(T0 + 61 * MIN)] == ["2001:db8::/64"]


async def test_remove_ban_and_prune(store: Store) -> None:
    bans = _bans(store)
    await bans.ban("192.0.2.1", T0 + 10 * MIN, failures=5, reason="authentication", now=T0)
    await bans.ban("192.0.2.2", T0 + 30 * MIN, failures=5, reason="authentication", now=T0)
    await bans.ban("192.0.2.3", T0 + 30 * MIN, failures=5, reason="authentication", now=T0)
    await bans.record_failure("192.0.2.3", "x@example.test", T0, T0)
    assert await bans.remove_ban("192.0.2.3") is True
    assert await bans.remove_ban("192.0.2.3") is False
    # remove_ban forgot the failures too
    assert (await bans.record_failure("192.0.2.3", "y@example.test", T0, T0)).ip == 1
    await bans.record_failure("192.0.2.4", "x@example.test", T0 + 15 * MIN, T0)
    ended = await bans.prune(T0 + 10 * MIN, T0 + 10 * MIN)
    assert [b.ip for b in ended] == ["192.0.2.1"]
    assert await bans.prune(T0 + 10 * MIN, T0 + 10 * MIN) == []  # each ended ban once
    assert [b.ip for b in await bans.list_bans(T0 + 10 * MIN)] == ["192.0.2.2"]
    # failures before the cut are gone, later ones stay
    assert (await bans.record_failure("192.0.2.3", "z@example.test", T0 + 16 * MIN, T0)).ip == 1
    assert (await bans.record_failure("192.0.2.4", "z@example.test", T0 + 16 * MIN, T0)).ip == 2


async def test_two_stores_on_one_database_share_failures_and_bans(harness: StoreHarness) -> None:
    async with harness.opened() as one, harness.opened() as two:
        a, b = _bans(one), _bans(two)
        await asyncio.gather(*(
            (a if n % 2 else b).record_failure("198.51.100.7", "alice@example.test", T0, T0)
            for n in range(8)
        ))
        last = await a.record_failure("198.51.100.7", "alice@example.test", T0, T0)
        assert last.ip == 9  # every concurrent failure counted, from both stores
        await b.ban("198.51.100.7", T0 + 30 * MIN, failures=9, reason="authentication", now=T0)
        seen = await a.get_ban("198.51.100.7", T0 + MIN)
        assert seen is not None and seen.failures == 9


# --------------------------------------------------------------------------- the policy


async def test_fifth_failure_bans_the_address_for_ban_time(store: Store, caplog) -> None:  # noqa: ANN001
    clock = Clock()
    jail = _jail(store, clock, max_failures=5, find_time=600, ban_time=1800)
    with caplog.at_level(logging.INFO, "pymail.auth.ban"):
        for n in range(4):
            assert await jail.record_failure("192.0.2.50", f"u{n}@example.test", service="imap") is None
            clock.advance(60)
        assert not await jail.is_banned("192.0.2.50")
        ban = await jail.record_failure("192.0.2.50", "u9@example.test", service="pop3")
    assert ban is not None and ban.until == clock.now + dt.timedelta(seconds=1800)
    assert await jail.is_banned("192.0.2.50")
    assert not await jail.is_banned("192.0.2.51")
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ban:")]
    assert line == f"ban: rip=192.0.2.50 failures=5 until={ban.until:%Y-%m-%dT%H:%M:%SZ} reason=authentication service=pop3"
    # ban_time later (and the cache expired) it is over, and the address starts from zero
    clock.advance(1800)
    assert not await jail.is_banned("192.0.2.50")
    assert await jail.record_failure("192.0.2.50", "u0@example.test", service="imap") is None


async def test_failures_older_than_find_time_do_not_count(store: Store) -> None:
    clock = Clock()
    jail = _jail(store, clock, max_failures=3, find_time=600, ban_time=1800)
    for _ in range(2):
        await jail.record_failure("192.0.2.60", "a@example.test", service="imap")
    clock.advance(601)
    assert await jail.record_failure("192.0.2.60", "a@example.test", service="imap") is None
    assert await jail.record_failure("192.0.2.60", "a@example.test", service="imap") is None
    assert await jail.record_failure("192.0.2.60", "a@example.test", service="imap") is not None


async def test_ignored_networks_are_never_banned(store: Store) -> None:
    clock = Clock()
    jail = Jail(store.bans, BanPolicy.from_networks(["10.0.0.0/8", "2001:db8::1"], max_failures=2),
                clock=lambda: clock.now, monotonic=lambda: clock.mono, sleep=clock.sleep)
    for _ in range(5):
        assert await jail.record_failure("10.1.2.3", "a@example.test", service="imap") is None
        assert await jail.record_failure("2001:db8::1", "b@example.test", service="imap") is None
    assert not await jail.is_banned("10.1.2.3") and not await jail.is_banned("2001:db8::1")
    # loopback is not ignored by default
    for _ in range(2):
        await jail.record_failure("127.0.0.1", "a@example.test", service="imap")
    assert await jail.is_banned("127.0.0.1")


async def test_ipv6_is_banned_by_64_and_mapped_ipv4_as_ipv4(store: Store) -> None:
    clock = Clock()
    jail = _jail(store, clock, max_failures=2)
    await jail.record_failure("2001:db8:1:2::5", "a@example.test", service="imap")
    ban = await jail.record_failure("2001:db8:1:2:ffff::9", "a@example.test", service="imap")
    assert ban is not None and ban.ip == "2001:db8:1:2::/64"
    assert await jail.is_banned("2001:db8:1:2::77")
    assert not await jail.is_banned("2001:db8:1:3::5")
    await jail.record_failure("::ffff:192.0.2.70", "a@example.test", service="imap")
    await jail.record_failure("192.0.2.70", "a@example.test", service="imap")
    assert await jail.is_banned("192.0.2.70") and await jail.is_banned("::ffff:192.0.2.70")
    assert ban_key("not-an-ip") is None and not await jail.is_banned("not-an-ip")
    assert await jail.unban("2001:db8:1:2::1")  # an address inside the /64 lifts it
    assert not await jail.is_banned("2001:db8:1:2::77")


async def test_account_failures_throttle_without_banning_anyone(store: Store, caplog) -> None:  # noqa: ANN001
    clock = Clock()
    jail = _jail(store, clock, max_failures=5, account_max_failures=3, account_delay=2.0)
    with caplog.at_level(logging.INFO, "pymail.auth.ban"):
        for n in range(3):  # three addresses, one failure each
            await jail.record_failure(f"203.0.113.{n}", "alice@example.test", service="imap")
    await jail.throttle("ALICE@example.test")
    await jail.throttle("bob@example.test")
    assert clock.slept == [2.0]  # only alice's logins wait
    assert "throttle: user=<alice@example.test> failures=3 delay=2s" in caplog.text
    assert [await jail.is_banned(f"203.0.113.{n}") for n in range(3)] == [False] * 3
    clock.advance(601)  # find_time later the throttle is over
    await jail.throttle("alice@example.test")
    assert clock.slept == [2.0]


async def test_a_ban_from_another_process_is_seen_within_the_cache_time(harness: StoreHarness) -> None:
    async with harness.opened() as one, harness.opened() as two:
        clock = Clock()
        here, there = _jail(one, clock, max_failures=2), _jail(two, clock, max_failures=2)
        assert not await here.is_banned("192.0.2.80")  # cached: not banned
        await there.record_failure("192.0.2.80", "a@example.test", service="imap")
        assert await there.record_failure("192.0.2.80", "a@example.test", service="imap") is not None
        assert await there.is_banned("192.0.2.80")  # at once where it was made
        clock.advance(CACHE_SECONDS)
        assert await here.is_banned("192.0.2.80")  # within CACHE_SECONDS elsewhere
        assert await here.unban("192.0.2.80")
        assert not await here.is_banned("192.0.2.80")
        clock.advance(CACHE_SECONDS)
        assert not await there.is_banned("192.0.2.80")


async def test_ended_bans_are_pruned_and_logged_once(harness: StoreHarness, caplog) -> None:  # noqa: ANN001
    async with harness.opened() as one, harness.opened() as two:
        clock = Clock()
        a, b = _jail(one, clock, max_failures=1, ban_time=60), _jail(two, clock, max_failures=1, ban_time=60)
        await a.record_failure("192.0.2.90", "a@example.test", service="imap")
        clock.advance(max(PRUNE_INTERVAL, 61))
        with caplog.at_level(logging.INFO, "pymail.auth.ban"):
            assert not await a.is_banned("192.0.2.90")
            assert not await b.is_banned("192.0.2.90")
        unbans = [r.getMessage() for r in caplog.records if r.getMessage().startswith("unban:")]
        assert unbans == ["unban: rip=192.0.2.90 reason=expired until=2026-03-02T10:01:00Z"]


async def test_disabled_policy_counts_nothing(store: Store) -> None:
    clock = Clock()
    jail = _jail(store, clock, enabled=False, max_failures=1)
    assert await jail.record_failure("192.0.2.99", "a@example.test", service="imap") is None
    assert not await jail.is_banned("192.0.2.99")
    assert (await _bans(store).record_failure("192.0.2.99", "a@example.test", T0, T0)).ip == 1


async def test_index_outage_fails_open(harness: StoreHarness) -> None:
    if harness.backend.outage is None:
        pytest.skip("an embedded backend has no server to stop")
    async with harness.opened() as store:
        clock = Clock()
        jail = _jail(store, clock, max_failures=1)
        await jail.record_failure("192.0.2.2", "a@example.test", service="imap")  # banned
        assert await jail.is_banned("192.0.2.2")
        clock.advance(CACHE_SECONDS)
        async with harness.backend.outage(harness, "fast"):
            with pytest.raises(StorageError):
                await _bans(store).get_ban("192.0.2.1", T0)
            assert await jail.is_banned("192.0.2.1") is False
            # the lookup failed: for CACHE_SECONDS the jail answers from memory alone
            calls = []
            real_get_ban = store.bans.get_ban

            async def counting_get_ban(ip: str, now: dt.datetime):  # noqa: ANN202
                calls.append(ip)
                return await real_get_ban(ip, now)

            store.bans.get_ban = counting_get_ban  # type: ignore[method-assign]
            assert await jail.is_banned("192.0.2.3") is False
            assert await jail.is_banned("192.0.2.2") is True  # remembered
            assert calls == []
            assert await jail.record_failure("192.0.2.1", "a@example.test", service="imap") is None
