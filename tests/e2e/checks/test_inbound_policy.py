"""The policy from config, over real sockets: a scanner outage let in with
X-Pymail-Unscanned when the admin says ``error = "accept"``, the oversize tag, a policy
that turns SPF fail into a refusal, and submission's checks (virus-scanned, not
SPF/DMARC-checked).  tests/unit/test_checks_verdict.py covers the whole table."""

from __future__ import annotations

import smtplib
import ssl
from pathlib import Path

from pymail.mail.headers import parse_header
from tests.e2e.checks.conftest import RECIPIENT, SENDER_IP, STRANGER_IP, Inbound, message
from tests.internet import Internet
from tests.pymail_harness import PymailServer, free_port
from tests.services.clamd import eicar_bytes

HOSTNAME = "mail.example.test"


def start(tmp_path: Path, internet: Internet, checks: str, **kwargs) -> PymailServer:
    server = PymailServer(tmp_path, hostname=HOSTNAME, extra_config=internet.dns_config() + checks,
                          **kwargs)
    server.add_user(RECIPIENT)
    server.add_user("alice@example.test")
    return server.start()


def send(server: PymailServer, raw: bytes, *, sender: str = "alice@signed.test",
         source: str = SENDER_IP) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", server.port, local_hostname="mx.remote.test", timeout=60,
                      source_address=(source, 0)) as client:
        client.ehlo()
        client.mail(sender)
        client.rcpt(RECIPIENT)
        code, text = client.data(raw)
        return code, text.decode()


def test_scanner_outage_accepted_with_unscanned_header_when_configured(
        inbound: Inbound, tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    server = start(tmp_path, inbound.internet, f"""
[checks]
rspamd_url = "http://{dead}"
clamav = "{dead}"
clamav_max_size = "1KB"
[checks.policy]
rspamd.error = "accept"
clamav.error = "accept"
""")
    try:
        assert send(server, inbound.sign(message("unscanned")))[0] == 250
        assert send(server, inbound.sign(message("big", body="x" * 2000 + "\r\n")))[0] == 250
        first, second = [raw for _, raw, _ in server.inbox(RECIPIENT)]
        unscanned = parse_header(first).get("X-Pymail-Unscanned").value
        assert unscanned.startswith("rspamd (") and "; clamav (" in unscanned, unscanned
        assert "clamav (over the scan size limit)" in parse_header(second).get("X-Pymail-Unscanned").value
        assert server.log().count("clamav: unavailable:") == 1
        assert "mail is accepted with X-Pymail-Unscanned" in server.log()
    finally:
        server.stop()


def test_policy_from_config_refuses_spf_fail_and_checks_nothing_from_skip_networks(
        inbound: Inbound, tmp_path: Path) -> None:
    server = start(tmp_path, inbound.internet, """
[checks]
[checks.policy]
spf.fail = "reject"
""")
    try:
        code, text = send(server, message("spf fail"), source=STRANGER_IP)
        assert (code, text) == (550, "5.7.1 Message rejected by policy")
        assert "reason=checks(spf.fail)" in server.log()
        # this host's own programs (127.0.0.1, skip_networks): no check at all
        assert send(server, message("local"), source="127.0.0.1")[0] == 250
        [(_, raw, _)] = server.inbox(RECIPIENT)
        assert parse_header(raw).get("Authentication-Results") is None
    finally:
        server.stop()


def test_submission_is_virus_scanned_but_not_sender_checked(
        inbound: Inbound, clamd_service, tmp_path: Path) -> None:
    server = start(tmp_path, inbound.internet, f"""
[checks]
clamav = "{clamd_service.socket_path}"
[checks.policy]
spf.fail = "reject"
""", submission=True)
    try:
        context = ssl.create_default_context(cafile=str(server.ca_file))
        with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=60,
                          source_address=(STRANGER_IP, 0)) as client:
            client.starttls(context=context)
            client.login("alice@example.test", "secret-pw")
            client.mail("alice@example.test")
            client.rcpt(RECIPIENT)
            code, text = client.data(message("virus", sender="alice@example.test",
                                             body=eicar_bytes().decode() + "\r\n"))
            assert (code, text.decode()) == (554, "5.7.1 Message content rejected")
            client.mail("alice@example.test")
            client.rcpt(RECIPIENT)
            code, _ = client.data(message("clean", sender="alice@example.test"))
            assert code == 250  # from an address SPF does not authorise, yet not refused
        [(_, raw, _)] = server.inbox(RECIPIENT)
        assert parse_header(raw).get("Authentication-Results") is None
    finally:
        server.stop()
