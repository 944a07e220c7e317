"""The authentication service over a real (embedded) directory."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from pymail.auth import service as auth_service
from pymail.auth.passwords import hash_password
from pymail.auth.service import AuthUnavailable, Authenticator, authzid_allowed
from pymail.store import open_store

PASSWORD = "correct horse"


def run(tmp_path: Path, scenario) -> None:  # noqa: ANN001
    async def main() -> None:
        store = open_store(f"sqlite://{tmp_path / 'i.sqlite3'}", f"file://{tmp_path / 'b'}")
        await store.migrate()
        try:
            d = store.directory
            await d.add_domain("example.test")
            await d.add_user("alice@example.test", hash_password(PASSWORD))
            await d.add_user("gone@example.test", hash_password(PASSWORD))
            await d.set_user_active("gone@example.test", False)
            await d.add_domain("off.test")
            await d.add_user("bob@off.test", hash_password(PASSWORD))
            await d.set_domain_active("off.test", False)
            await d.add_domain("ldap.test", auth_type="ldap", ldap_base_dn="ou=people,dc=ldap,dc=test")
            await d.add_user("carol@ldap.test", hash_password(PASSWORD))
            await scenario(Authenticator(d))
        finally:
            await store.close()

    asyncio.run(main())


def test_good_password(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(auth: Authenticator) -> None:
        user = await auth.authenticate("Alice@Example.TEST", PASSWORD, client_ip="192.0.2.7", service="imap")
        assert user is not None and user.address == "alice@example.test"

    with caplog.at_level(logging.INFO, "pymail.auth"):
        run(tmp_path, scenario)
    assert "authenticated: service=imap rip=192.0.2.7 user=<alice@example.test>" in caplog.text
    assert PASSWORD not in caplog.text


@pytest.mark.parametrize(
    ("username", "password", "reason"),
    [
        ("alice@example.test", "wrong", "wrong_password"),
        ("nobody@example.test", PASSWORD, "unknown_user"),
        ("no-at-sign", PASSWORD, "unknown_user"),
        ("gone@example.test", PASSWORD, "user_disabled"),
        ("bob@off.test", PASSWORD, "domain_disabled"),
        ("evil\r\nrip=10.0.0.1@example.test", PASSWORD, "unknown_user"),
    ],
)
def test_every_failure_is_the_same_answer_after_one_hash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    username: str, password: str, reason: str,
) -> None:
    hashes: list[str] = []
    real_verify, real_dummy = auth_service.verify_password, auth_service.dummy_verify
    monkeypatch.setattr(auth_service, "verify_password", lambda p, h: hashes.append("real") or real_verify(p, h))
    monkeypatch.setattr(auth_service, "dummy_verify", lambda p, *cost: hashes.append("dummy") or real_dummy(p, *cost))

    async def scenario(auth: Authenticator) -> None:
        assert await auth.authenticate(username, password, client_ip="198.51.100.9", service="imap") is None

    with caplog.at_level(logging.INFO, "pymail.auth"):
        run(tmp_path, scenario)
    assert len(hashes) == 1  # exactly one hash verification, whatever the failure
    [line] = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    assert line.startswith("authentication failed: service=imap rip=198.51.100.9 user=<")
    assert line.endswith(f"reason={reason}")
    assert "\n" not in line and "\r" not in line
    assert PASSWORD not in caplog.text


def test_sasl_authzid_other_than_the_user_fails_after_one_hash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashes: list[str] = []
    real_dummy = auth_service.dummy_verify
    monkeypatch.setattr(auth_service, "dummy_verify", lambda p, *cost: hashes.append("dummy") or real_dummy(p, *cost))

    async def scenario(auth: Authenticator) -> None:
        assert await auth.authenticate("alice@example.test", PASSWORD, client_ip="192.0.2.7",
                                       service="smtp", authzid="bob@example.test") is None
        same = await auth.authenticate("alice@example.test", PASSWORD, client_ip="192.0.2.7",
                                       service="smtp", authzid="ALICE@example.test")
        assert same is not None and same.address == "alice@example.test"

    with caplog.at_level(logging.INFO, "pymail.auth"):
        run(tmp_path, scenario)
    assert hashes == ["dummy"]
    assert "rip=192.0.2.7 user=<alice@example.test> reason=authzid_mismatch" in caplog.text
    assert authzid_allowed(None, "a@b") and authzid_allowed("", "a@b")
    assert authzid_allowed(" A@B ", "a@b") and not authzid_allowed("c@b", "a@b")


def test_ldap_domain_without_ldap_config_is_a_temporary_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(auth: Authenticator) -> None:
        with pytest.raises(AuthUnavailable):
            await auth.authenticate("carol@ldap.test", PASSWORD, client_ip="192.0.2.8", service="imap")
        # an empty password never gets as far as LDAP: a plain failure
        assert await auth.authenticate("carol@ldap.test", "", client_ip="192.0.2.8", service="imap") is None

    with caplog.at_level(logging.INFO, "pymail.auth"):
        run(tmp_path, scenario)
    assert "authentication unavailable: service=imap rip=192.0.2.8 user=<carol@ldap.test>" in caplog.text
    assert "[auth.ldap] url is not set" in caplog.text
    failed = [r.getMessage() for r in caplog.records if "authentication failed" in r.getMessage()]
    assert failed == ["authentication failed: service=imap rip=192.0.2.8 user=<carol@ldap.test> reason=empty_password"]
    assert PASSWORD not in caplog.text
