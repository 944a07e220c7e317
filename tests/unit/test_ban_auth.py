"""The Authenticator with its Jail, over a real (embedded) store: failures are counted,
the fifth bans, a banned address is refused whatever the password, an outage is not a
failure.  (tests/conformance/test_bans.py runs the Jail itself on both backends.)"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import pytest

from pymail.auth import service as auth_service
from pymail.auth.ban import BanPolicy, Jail
from pymail.auth.passwords import hash_password
from pymail.auth.service import AuthUnavailable, Authenticator, authenticator_from_config
from pymail.config.schema import AuthConfig
from pymail.store import Store, open_store

PASSWORD = "correct horse"
T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)


def run(tmp_path: Path, scenario, **policy: object) -> list[float]:  # noqa: ANN001
    """Run `scenario(auth, store)` with users alice and bob; the delays it slept."""
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def main() -> None:
        store = open_store(f"sqlite://{tmp_path / 'i.sqlite3'}", f"file://{tmp_path / 'b'}")
        await store.migrate()
        try:
            d = store.directory
            await d.add_domain("example.test")
            await d.add_user("alice@example.test", hash_password(PASSWORD))
            await d.add_user("bob@example.test", hash_password(PASSWORD))
            await d.add_domain("ldap.test", auth_type="ldap", ldap_base_dn="ou=people,dc=ldap,dc=test")
            await d.add_user("carol@ldap.test", "{LDAP}")
            jail = Jail(store.bans, BanPolicy(**policy), sleep=sleep)  # type: ignore[arg-type]
            await scenario(Authenticator(d, jail=jail), store)
        finally:
            await store.close()

    asyncio.run(main())
    return slept


async def login(auth: Authenticator, user: str, password: str, ip: str) -> bool:
    return await auth.authenticate(user, password, client_ip=ip, service="imap") is not None


def test_fifth_failure_bans_and_a_banned_address_is_refused_without_a_hash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario(auth: Authenticator, store: Store) -> None:
        for n in range(4):
            assert not await login(auth, "alice@example.test", f"guess{n}", "198.51.100.1")
        assert not await auth.is_banned("198.51.100.1")
        # a success from the same address clears nothing (another account, even)
        assert await login(auth, "bob@example.test", PASSWORD, "198.51.100.1")
        assert not await login(auth, "nobody@example.test", "x", "198.51.100.1")  # the fifth
        assert await auth.is_banned("198.51.100.1")
        hashes: list[str] = []
        monkeypatch.setattr(auth_service, "verify_password", lambda p, h: hashes.append("real"))
        monkeypatch.setattr(auth_service, "dummy_verify", lambda p: hashes.append("dummy"))
        assert not await login(auth, "alice@example.test", PASSWORD, "198.51.100.1")
        assert hashes == []  # refused before any hash
        monkeypatch.undo()
        assert await login(auth, "alice@example.test", PASSWORD, "198.51.100.2")
        assert store.bans is not None
        [ban] = await store.bans.list_bans(dt.datetime.now(dt.timezone.utc))
        assert (ban.ip, ban.failures) == ("198.51.100.1", 5)

    with caplog.at_level(logging.INFO, "pymail.auth"):
        run(tmp_path, scenario, max_failures=5)
    messages = [r.getMessage() for r in caplog.records]
    assert [m for m in messages if m.startswith("ban:")][0].startswith(
        "ban: rip=198.51.100.1 failures=5 until=")
    refusals = [m for m in messages if m.endswith("reason=banned")]
    assert refusals == ["authentication failed: service=imap rip=198.51.100.1 user=<alice@example.test> reason=banned"]
    assert PASSWORD not in caplog.text


def test_an_attacked_account_is_throttled_not_locked(tmp_path: Path) -> None:
    async def scenario(auth: Authenticator, store: Store) -> None:
        for n in range(3):  # three addresses, one guess each: nobody is banned
            assert not await login(auth, "alice@example.test", "guess", f"203.0.113.{n}")
        # the real user still gets in, after the delay; other accounts do not wait
        assert await login(auth, "alice@example.test", PASSWORD, "192.0.2.1")
        assert await login(auth, "bob@example.test", PASSWORD, "192.0.2.1")
        for n in range(3):
            assert not await auth.is_banned(f"203.0.113.{n}")

    slept = run(tmp_path, scenario, max_failures=5, account_max_failures=3, account_delay=2.0)
    assert slept == [2.0]


def test_an_outage_is_not_a_failed_login(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(auth: Authenticator, store: Store) -> None:
        for _ in range(3):  # carol's domain uses LDAP, which is not configured
            with pytest.raises(AuthUnavailable):
                await login(auth, "carol@ldap.test", PASSWORD, "198.51.100.9")
        assert not await auth.is_banned("198.51.100.9")
        assert store.bans is not None
        counts = await store.bans.record_failure("198.51.100.9", "carol@ldap.test", T0, T0 - dt.timedelta(days=1))
        assert (counts.ip, counts.account) == (1, 1)  # nothing was recorded before

    with caplog.at_level(logging.INFO, "pymail.auth"):
        run(tmp_path, scenario, max_failures=2)
    assert "authentication failed" not in caplog.text


def test_authenticator_from_config(tmp_path: Path) -> None:
    secret = tmp_path / "ldap.secret"
    secret.write_text("s3cret-service-pw\n")
    auth_config = AuthConfig.model_validate({
        "ldap": {"url": "ldaps://ldap.example.com", "bind_dn": "cn=pymail,dc=example,dc=com",
                 "bind_password_file": str(secret), "user_filter": "(uid={localpart})"},
        "ban": {"max_failures": 7, "find_time": "5m", "ban_time": "1h", "ignore_ips": ["10.0.0.0/8"]},
    })
    auth = authenticator_from_config(auth_config, directory=None, bans=None)  # type: ignore[arg-type]
    assert auth.ldap is not None and auth.ldap.settings.bind_password == "s3cret-service-pw"
    assert "s3cret" not in repr(auth.ldap.settings)
    assert auth.jail is not None
    policy = auth.jail.policy
    assert (policy.max_failures, policy.find_time, policy.ban_time) == (7, 300.0, 3600.0)
    assert auth.jail.is_ignored("10.1.2.3") and not auth.jail.is_ignored("127.0.0.1")
    secret.write_text("\n")
    with pytest.raises(ValueError, match=f"^auth.ldap.bind_password_file: {secret} is empty$"):
        authenticator_from_config(auth_config, directory=None, bans=None)  # type: ignore[arg-type]
