"""The authentication cache (pymail.auth.cache) on its own with an injected clock, and
inside the Authenticator over a real (embedded) directory: a hit skips the hash, a
changed hash or a disabled row misses at once, a failure is never cached, a wrong
password for a cached user is verified in full and counted."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pymail import metrics
from pymail.auth import service as auth_service
from pymail.auth.cache import AuthCache
from pymail.auth.passwords import hash_password
from pymail.auth.service import Authenticator, authenticator_from_config
from pymail.config.schema import AuthConfig
from pymail.store import Store, open_store

PASSWORD = "correct horse"
ALICE = "alice@example.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the cache itself --------------------------------------------------------------------


def test_a_remembered_check_is_accepted_for_the_same_password_and_hash_only() -> None:
    cache = AuthCache(60, clock=Clock())
    assert not cache.accepts(ALICE, PASSWORD, "{X}h1")
    cache.remember(ALICE, PASSWORD, "{X}h1")
    assert cache.accepts(ALICE, PASSWORD, "{X}h1")
    assert not cache.accepts(ALICE, "other", "{X}h1")  # verify in full; entry kept
    assert cache.accepts(ALICE, PASSWORD, "{X}h1")
    assert not cache.accepts("bob@example.test", PASSWORD, "{X}h1")
    assert not cache.accepts(ALICE, PASSWORD, "{X}h2")  # the password was changed
    assert len(cache) == 0 and not cache.accepts(ALICE, PASSWORD, "{X}h1")


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = AuthCache(3600, clock=clock)
    cache.remember(ALICE, PASSWORD, "h")
    clock.now += 3599.9
    assert cache.accepts(ALICE, PASSWORD, "h")
    clock.now += 0.1
    assert not cache.accepts(ALICE, PASSWORD, "h") and len(cache) == 0


def test_the_least_recently_used_entry_goes_first() -> None:
    cache = AuthCache(60, max_entries=3, clock=Clock())
    for n in range(3):
        cache.remember(f"u{n}@example.test", PASSWORD, "h")
    assert cache.accepts("u0@example.test", PASSWORD, "h")  # u0 used: u1 is now the oldest
    cache.remember("u3@example.test", PASSWORD, "h")
    assert len(cache) == 3
    assert not cache.accepts("u1@example.test", PASSWORD, "h")
    assert all(cache.accepts(f"u{n}@example.test", PASSWORD, "h") for n in (0, 2, 3))
    for n in range(100):
        cache.remember(f"v{n}@example.test", PASSWORD, "h")
    assert len(cache) == 3


def test_ttl_zero_is_off_and_nothing_is_kept_in_clear() -> None:
    off = AuthCache(0)
    off.remember(ALICE, PASSWORD, "h")
    assert not off.enabled and len(off) == 0 and not off.accepts(ALICE, PASSWORD, "h")
    cache = AuthCache(60)
    cache.remember(ALICE, PASSWORD, "h")
    [entry] = cache._entries.values()
    assert PASSWORD.encode() not in entry.digest and len(entry.digest) == 32
    assert AuthCache(60)._key != cache._key  # a key per cache, i.e. per process


# -- inside the Authenticator -------------------------------------------------------------


class CountingJail:
    """The part of `Jail` the Authenticator calls, counting failures."""

    def __init__(self) -> None:
        self.failures: list[tuple[str, str]] = []

    async def is_banned(self, ip: str) -> bool:
        return False

    async def throttle(self, account: str) -> None:
        return None

    async def record_failure(self, ip: str, account: str, *, service: str) -> None:
        self.failures.append((ip, account))


def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario) -> list[str]:  # noqa: ANN001
    """Run `scenario(auth, store, jail)`; the hash verifications it caused, in order."""
    hashes: list[str] = []
    real_verify, real_dummy = auth_service.verify_password, auth_service.dummy_verify
    monkeypatch.setattr(auth_service, "verify_password",
                        lambda p, h: hashes.append("real") or real_verify(p, h))
    monkeypatch.setattr(auth_service, "dummy_verify",
                        lambda p, *cost: hashes.append("dummy") or real_dummy(p, *cost))

    async def main() -> None:
        store = open_store(f"sqlite://{tmp_path / 'i.sqlite3'}", f"file://{tmp_path / 'b'}")
        await store.migrate()
        try:
            await store.directory.add_domain("example.test")
            await store.directory.add_user(ALICE, hash_password(PASSWORD))
            jail = CountingJail()
            auth = Authenticator(store.directory, jail=jail, cache=AuthCache(3600))  # type: ignore[arg-type]
            await scenario(auth, store, jail)
        finally:
            await store.close()

    asyncio.run(main())
    return hashes


async def login(auth: Authenticator, password: str, user: str = ALICE) -> bool:
    return await auth.authenticate(user, password, client_ip="192.0.2.7", service="imap") is not None


def test_the_second_login_is_a_hit_without_a_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hits = metrics.AUTH_CACHE_HITS._value.get()

    async def scenario(auth: Authenticator, store: Store, jail: CountingJail) -> None:
        assert await login(auth, PASSWORD)
        assert await login(auth, PASSWORD)
        assert await login(auth, PASSWORD, user="ALICE@Example.Test")

    assert run(tmp_path, monkeypatch, scenario) == ["real"]
    assert metrics.AUTH_CACHE_HITS._value.get() == hits + 2


def test_a_failure_is_never_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(auth: Authenticator, store: Store, jail: CountingJail) -> None:
        assert not await login(auth, "guess")
        assert not await login(auth, "guess")
        assert len(auth.cache) == 0 and len(jail.failures) == 2

    assert run(tmp_path, monkeypatch, scenario) == ["real", "real"]


def test_a_wrong_password_for_a_cached_user_is_verified_in_full_and_counted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(auth: Authenticator, store: Store, jail: CountingJail) -> None:
        assert await login(auth, PASSWORD)
        assert not await login(auth, "guess")
        assert jail.failures == [("192.0.2.7", ALICE)]
        assert await login(auth, PASSWORD)  # the real user's entry survived the guess

    assert run(tmp_path, monkeypatch, scenario) == ["real", "real"]


def test_a_changed_password_misses_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(auth: Authenticator, store: Store, jail: CountingJail) -> None:
        assert await login(auth, PASSWORD)
        await store.directory.set_password(ALICE, hash_password("new one"))  # pymail user passwd
        assert not await login(auth, PASSWORD)
        assert await login(auth, "new one")
        assert await login(auth, "new one")

    assert run(tmp_path, monkeypatch, scenario) == ["real", "real", "real"]


@pytest.mark.parametrize("what", ["user", "domain"])
def test_a_disabled_user_or_domain_is_refused_though_cached(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, what: str) -> None:
    async def scenario(auth: Authenticator, store: Store, jail: CountingJail) -> None:
        assert await login(auth, PASSWORD)
        if what == "user":
            await store.directory.set_user_active(ALICE, False)
        else:
            await store.directory.set_domain_active("example.test", False)
        assert not await login(auth, PASSWORD)
        assert len(jail.failures) == 1 and len(auth.cache) == 0

    assert run(tmp_path, monkeypatch, scenario) == ["real", "dummy"]


def test_the_config_sets_the_ttl_and_zero_turns_it_off() -> None:
    auth = authenticator_from_config(AuthConfig(cache_ttl="10m"), None, None)  # type: ignore[arg-type]
    assert auth.cache.ttl == 600 and auth.cache.enabled
    assert AuthConfig().cache_ttl == 3600
    assert not authenticator_from_config(AuthConfig(cache_ttl=0), None, None).cache.enabled  # type: ignore[arg-type]
