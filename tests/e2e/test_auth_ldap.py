"""LDAP domains end to end: a real pymail process (both storage pairs), a real slapd
(tests/services/slapd.py), imaplib LOGIN over IMAPS.

A domain with ``auth_type='ldap'`` logs its users in by binding to LDAP; each user has a
``virtual_users`` row (made by ``pymail user add`` without a password) for its mailboxes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymail.auth.ldap import user_dn, user_filter
from tests.conftest import StorageSetup
from tests.e2e.imap_login import imap_login, start_with_imaps
from tests.pymail_harness import PymailServer
from tests.services.slapd import PEOPLE, PEOPLE_DN, SERVICE_DN, SERVICE_PASSWORD, SlapdService, password_of

DOMAIN = "ldap.test"
FAILED = "[AUTHENTICATIONFAILED] Authentication failed"
UNAVAILABLE = "[UNAVAILABLE] Temporary failure, try again later"

#: Tests here fail logins from 127.0.0.1 on purpose: bans must not get in the way.
NO_BANS = """
[auth.ban]
max_failures = 1000
account_max_failures = 0
"""


def ldap_config(slapd: SlapdService, url: str | None = None, **extra: str) -> str:
    """[auth.ldap] for `slapd` (its ldap:// URL unless `url`), `extra` keys as TOML
    values, and bans out of the way."""
    lines = [f'url = "{url or slapd.url}"', "timeout = 2.0"]
    lines += [f"{key} = {value}" for key, value in extra.items()]
    return "[auth.ldap]\n" + "\n".join(lines) + "\n" + NO_BANS


def start_server(tmp_path: Path, storage: StorageSetup, config: str) -> PymailServer:
    srv = PymailServer(tmp_path, storage_config=storage.config, imaps=True, extra_config=config)
    srv.cli("domain", "add", DOMAIN, "--auth", "ldap", "--ldap-base-dn", PEOPLE_DN)
    srv.add_user("local@example.test")  # a local domain beside the LDAP one
    return srv


def failures(srv: PymailServer) -> list[str]:
    """`reason=` of every "authentication failed" line, in order."""
    return re.findall(r"authentication failed: service=imap rip=\S+ user=<[^>]*> reason=(\S+)", srv.log())


def slapd_binds(slapd: SlapdService, dn: str) -> int:
    """How many BINDs slapd has logged for `dn` so far (its -d stats log)."""
    return slapd.log_path.read_text(errors="replace").count(f'BIND dn="{dn}" method=')


@pytest.fixture
def ldap_server(tmp_path: Path, storage: StorageSetup, slapd_service: SlapdService) -> Iterator[PymailServer]:
    srv = start_server(tmp_path, storage, ldap_config(slapd_service))
    srv.cli("user", "add", f"alice@{DOMAIN}")
    srv.cli("user", "add", f"dave+x@{DOMAIN}")
    start_with_imaps(srv)
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def test_ldap_user_logs_in_with_the_ldap_password(ldap_server: PymailServer, slapd_service: SlapdService) -> None:
    srv = ldap_server
    assert imap_login(srv, f"alice@{DOMAIN}", password_of("alice")) == "OK"
    assert imap_login(srv, "Alice@LDAP.test", password_of("alice")) == "OK"
    assert imap_login(srv, f"dave+x@{DOMAIN}", password_of("dave+x")) == "OK"  # an escaped DN
    assert imap_login(srv, "local@example.test", "secret-pw") == "OK"  # local domains unchanged
    assert imap_login(srv, f"alice@{DOMAIN}", "wrong") == FAILED
    # the {LDAP} marker in the row is not a password, and neither is the LDAP one elsewhere
    assert imap_login(srv, f"alice@{DOMAIN}", "{LDAP}") == FAILED
    # an LDAP entry without a virtual_users row has no mailbox: refused after the bind
    assert imap_login(srv, f"bob@{DOMAIN}", password_of("bob")) == FAILED
    # no such entry at all
    assert imap_login(srv, f"nobody@{DOMAIN}", "x") == FAILED
    assert failures(srv) == ["ldap_invalid_credentials", "ldap_invalid_credentials", "unknown_user",
                             "ldap_invalid_credentials"]
    log = srv.log()
    assert f"authenticated: service=imap rip=127.0.0.1 user=<alice@{DOMAIN}>" in log
    for uid in ("alice", "bob", "dave+x"):
        assert password_of(uid) not in log


def test_empty_password_never_reaches_a_bind(ldap_server: PymailServer, slapd_service: SlapdService) -> None:
    dn = PEOPLE["alice"]
    binds = slapd_binds(slapd_service, dn)
    assert imap_login(ldap_server, f"alice@{DOMAIN}", "") == FAILED
    assert failures(ldap_server) == ["empty_password"]
    assert slapd_binds(slapd_service, dn) == binds  # LDAP would have said yes (anonymous)
    assert imap_login(ldap_server, f"alice@{DOMAIN}", password_of("alice")) == "OK"
    assert slapd_binds(slapd_service, dn) == binds + 1


def test_disabled_ldap_user_is_refused(ldap_server: PymailServer) -> None:
    ldap_server.cli("user", "disable", f"alice@{DOMAIN}")
    assert imap_login(ldap_server, f"alice@{DOMAIN}", password_of("alice")) == FAILED
    ldap_server.cli("domain", "disable", DOMAIN)
    ldap_server.cli("user", "enable", f"alice@{DOMAIN}")
    assert imap_login(ldap_server, f"alice@{DOMAIN}", password_of("alice")) == FAILED
    assert failures(ldap_server) == ["user_disabled", "domain_disabled"]


def test_ldap_down_or_hung_is_a_temporary_failure(ldap_server: PymailServer,
                                                  slapd_service: SlapdService) -> None:
    user, password = f"alice@{DOMAIN}", password_of("alice")
    slapd_service.stop_server()
    try:
        assert imap_login(ldap_server, user, password) == UNAVAILABLE
        assert imap_login(ldap_server, user, "wrong") == UNAVAILABLE  # never "wrong password"
    finally:
        slapd_service.start_server()
    assert imap_login(ldap_server, user, password) == "OK"  # back without a pymail restart
    slapd_service.pause()  # accepts connections, never answers: the timeout (2 s)
    try:
        assert imap_login(ldap_server, user, password) == UNAVAILABLE
    finally:
        slapd_service.resume()
    assert imap_login(ldap_server, user, password) == "OK"
    log = ldap_server.log()
    assert failures(ldap_server) == []  # an outage is not a failed login (fail2ban ignores it)
    assert len(re.findall(r"authentication unavailable: service=imap rip=127\.0\.0\.1 "
                          rf"user=<alice@{DOMAIN}> reason=ldap_unavailable", log)) == 3
    assert "Connection refused" in log and "timed out" in log


def test_search_with_service_account_over_ldaps(tmp_path: Path, slapd_service: SlapdService,
                                                request: pytest.FixtureRequest) -> None:
    from tests.conftest import make_storage

    storage = make_storage("sqlite+file", request, tmp_path)
    secret = tmp_path / "ldap.secret"
    secret.write_text(SERVICE_PASSWORD + "\n")
    config = ldap_config(
        slapd_service,
        url=slapd_service.ldaps_url,
        ca_file=f'"{slapd_service.ca_file}"',
        bind_dn=f'"{SERVICE_DN}"',
        bind_password_file=f'"{secret}"',
        user_filter='"(&(objectClass=inetOrgPerson)(uid={localpart}))"',
    )
    srv = start_server(tmp_path, storage, config)
    for uid in ("alice", "carol", "twin"):
        srv.cli("user", "add", f"{uid}@{DOMAIN}")
    start_with_imaps(srv)
    try:
        # carol's entry is cn=Carol Example,ou=staff,...: only a search finds it
        assert imap_login(srv, f"carol@{DOMAIN}", password_of("carol")) == "OK"
        assert imap_login(srv, f"alice@{DOMAIN}", password_of("alice")) == "OK"
        assert imap_login(srv, f"carol@{DOMAIN}", password_of("alice")) == FAILED
        assert imap_login(srv, f"twin@{DOMAIN}", password_of("twin")) == FAILED  # two entries
        assert imap_login(srv, f'"*@{DOMAIN}"', password_of("alice")) == FAILED  # escaped: no match
        assert failures(srv) == ["ldap_invalid_credentials", "ldap_ambiguous_entry", "ldap_no_entry"]
    finally:
        srv.stop()
    check = srv.cli("check-config").stdout
    assert f'bind_password_file = "{secret}"' in check
    for text in (srv.log(), check):
        assert SERVICE_PASSWORD not in text
        assert password_of("carol") not in text


def test_starttls_with_an_untrusted_certificate_is_unavailable(tmp_path: Path, slapd_service: SlapdService,
                                                               request: pytest.FixtureRequest) -> None:
    """StartTLS to a server whose CA pymail does not trust: no password is sent."""
    from tests.conftest import make_storage

    storage = make_storage("sqlite+file", request, tmp_path)
    srv = start_server(tmp_path, storage, ldap_config(slapd_service, starttls="true"))
    srv.cli("user", "add", f"alice@{DOMAIN}")
    start_with_imaps(srv)
    try:
        assert imap_login(srv, f"alice@{DOMAIN}", password_of("alice")) == UNAVAILABLE
    finally:
        srv.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in srv.log()


def test_cli_for_ldap_domains(tmp_path: Path, slapd_service: SlapdService) -> None:
    srv = PymailServer(tmp_path, extra_config=ldap_config(slapd_service))
    srv.cli("domain", "add", DOMAIN, "--auth", "ldap", "--ldap-base-dn", PEOPLE_DN)
    assert srv.cli("user", "add", f"alice@{DOMAIN}").stdout.strip() == f"user alice@{DOMAIN} added"
    refused = srv.cli("user", "add", f"bob@{DOMAIN}", "--password-stdin", input="pw\n", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith("(leave out --password-stdin)")
    refused = srv.cli("user", "passwd", f"alice@{DOMAIN}", "--password-stdin", input="pw\n", check=False)
    assert refused.returncode == 1 and "change the password in the LDAP directory" in refused.stderr
    (tmp_path / "bad").mkdir()
    bad = PymailServer(tmp_path / "bad", extra_config='[auth.ldap]\nurl = "http://ldap.example"\n')
    result = bad.cli("check-config", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("auth.ldap.url: invalid LDAP URL 'http://ldap.example' "
                                          "(expected ldap://host or ldaps://host)")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_missing_bind_password_file_stops_the_start_with_one_line(tmp_path: Path,
                                                                   slapd_service: SlapdService) -> None:
    srv = PymailServer(tmp_path, imaps=True, extra_config=ldap_config(
        slapd_service, bind_dn=f'"{SERVICE_DN}"', bind_password_file=f'"{tmp_path / "nope.secret"}"',
        user_filter='"(uid={localpart})"'))
    with pytest.raises(RuntimeError, match="exited with 1"):
        start_with_imaps(srv)
    errors = [line for line in srv.log().splitlines() if "ERROR" in line]
    assert len(errors) == 1
    assert errors[0].endswith(f"cannot start: auth.ldap.bind_password_file: cannot read "
                              f"{tmp_path / 'nope.secret'}: No such file or directory")


# --------------------------------------------------------------------------- escaping


@pytest.mark.parametrize(
    ("localpart", "dn"),
    [
        ("alice", "uid=alice,ou=people,dc=example,dc=test"),
        ("a,ou=admins", "uid=a\\,ou\\=admins,ou=people,dc=example,dc=test"),
        ("dave+x", "uid=dave\\+x,ou=people,dc=example,dc=test"),
        ('q"<>;\\', 'uid=q\\"\\<\\>\\;\\\\,ou=people,dc=example,dc=test'),
        ("#lead", "uid=\\#lead,ou=people,dc=example,dc=test"),
        ("", None),
    ],
)
def test_user_dn_escapes_the_local_part(localpart: str, dn: str | None) -> None:
    assert user_dn(localpart, PEOPLE_DN) == dn


def test_user_filter_escapes_every_value() -> None:
    template = "(&(objectClass=inetOrgPerson)(|(uid={localpart})(mail={address}))(o={domain}))"
    assert user_filter(template, "*)(uid=*", "ex(ample).test") == (
        "(&(objectClass=inetOrgPerson)(|(uid=\\2a\\29\\28uid=\\2a)"
        "(mail=\\2a\\29\\28uid=\\2a@ex\\28ample\\29.test))(o=ex\\28ample\\29.test))"
    )
    assert user_filter("(uid={localpart})", "back\\slash\x00", "d") == "(uid=back\\5cslash\\00)"


def test_submission_with_an_ldap_user_and_a_454_during_an_outage(
        tmp_path: Path, storage: StorageSetup, slapd_service: SlapdService) -> None:
    """The issue's SMTP case: an LDAP-domain user sends through submission with the LDAP
    password; with slapd down the same AUTH is ``454 4.7.0``, never an accept."""
    import base64
    import smtplib
    import ssl

    srv = PymailServer(tmp_path, storage_config=storage.config, submission=True,
                       extra_config=ldap_config(slapd_service))
    srv.cli("domain", "add", DOMAIN, "--auth", "ldap", "--ldap-base-dn", PEOPLE_DN)
    srv.cli("user", "add", f"alice@{DOMAIN}")
    srv.add_user("bob@example.test")
    srv.start()
    user, password = f"alice@{DOMAIN}", password_of("alice")
    context = ssl.create_default_context(cafile=str(srv.ca_file))

    def auth(secret: str) -> tuple[int, bytes, smtplib.SMTP]:
        client = smtplib.SMTP("127.0.0.1", srv.submission_port, timeout=30)
        client.starttls(context=context)
        client.ehlo("client.example")
        token = base64.b64encode(f"\0{user}\0{secret}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {token}")
        return code, text, client

    try:
        code, _, client = auth(password)
        assert code == 235
        client.sendmail(user, ["bob@example.test"], b"Subject: from ldap\r\n\r\nhi\r\n")
        client.quit()
        assert [blob.split(b"Subject: ")[1][:9] for _, blob, _ in srv.inbox("bob@example.test")] == [b"from ldap"]
        code, text, client = auth("wrong")
        assert (code, text[:5]) == (535, b"5.7.8")
        client.quit()
        slapd_service.stop_server()
        try:
            for secret in (password, "wrong"):
                code, text, client = auth(secret)
                assert (code, text[:5]) == (454, b"4.7.0"), (code, text)
                code, _ = client.docmd("MAIL", f"FROM:<{user}>")
                assert code == 530  # still not authenticated
                client.quit()
        finally:
            slapd_service.start_server()
        code, _, client = auth(password)
        assert code == 235
        client.quit()
    finally:
        srv.stop()
