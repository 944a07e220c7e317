"""`pymail doctor` against a running pymail on the tests' small internet: a correct setup
(records from `pymail dns records` served by NSD, the reverse zone's PTR, a DKIM key,
every listener on, Rspamd and SpamAssassin judging the test message) is all green and
scores at least 9/10; then each misconfiguration of the issue — the SPF record removed,
a relay opened by a relay domain that is not ours, an expired certificate, a DKIM record
with someone else's key — shows as ✗ with its reason and a non-zero exit.

The server's certificates come from the embedded default's private CA (`--cafile`).
Each test checks a domain of its own (``docXXXXXX.test``, its zone made from `pymail dns
records`): Rspamd, shared by the session, caches the SPF and DKIM records it looked up,
so a domain whose records one test changed must never be judged by it again.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.internet import PYMAIL_ADDRESS, PYMAIL_HOSTNAME, dkim_record, make_dkim_key
from tests.pymail_harness import PymailServer
from tests.tls_ca import CA



def start(tmp_path: Path, internet, extra: str = "") -> PymailServer:  # noqa: ANN001
    server = PymailServer(
        tmp_path, hostname=PYMAIL_HOSTNAME, submission=True, submissions=True, imap=True,
        imaps=True, pop3=True, pop3s=True, http=True,
        extra_config=f"""
[publish]
ipv4 = ["{PYMAIL_ADDRESS}"]

[dkim]
selector = "s1"

[checks]
rspamd_url = "{internet.rspamd.url}"

{internet.dns_config()}
{extra}
""")
    server.domain = f"doc{secrets.token_hex(3)}.test"
    server.user = f"alice@{server.domain}"
    server.add_user(server.user)
    server.cli("dkim", "keygen", server.domain)
    internet.set_zone(server.domain, server.cli("dns", "records", server.domain).stdout)
    return server.start()


def doctor(server: PymailServer, *args: str, ca: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**server.env, "PYMAIL_DOCTOR_PASSWORD": "secret-pw"}
    return subprocess.run(
        [sys.executable, "-m", "pymail", "--config", str(server.config_path), "doctor",
         "--cafile", str(ca or server.ca_file), "--login", server.user, "--source", "127.0.0.9", *args],
        capture_output=True, text=True, env=env, timeout=300)


def marks(output: str) -> dict[str, str]:
    """check name -> its mark (✓ ✗ ! –)."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"^  ([✓✗!–]) (.+?)(?:: |  \(-|$)", line)
        if m:
            found[m[2]] = m[1]
    return found


def line_of(output: str, name: str) -> str:
    [found] = [x for x in output.splitlines() if re.match(rf"^  . {re.escape(name)}(: |$)", x)]
    return found


@pytest.fixture
def server(tmp_path: Path, internet):  # noqa: ANN001, ANN201
    s = start(tmp_path, internet)
    yield s
    s.stop()


def test_correct_setup_is_green_and_scores_9(server: PymailServer, internet) -> None:  # noqa: ANN001
    result = doctor(server)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    found = marks(out)
    assert "✗" not in found.values(), out
    # every checkpoint of the seed was made, not skipped
    for name in (f"HELO name {PYMAIL_HOSTNAME}", f"reverse DNS of {PYMAIL_ADDRESS}",
                 f"DKIM s1._domainkey.{server.domain} (rsa-sha256)", "SPF", "DKIM", "DMARC",
                 "Rspamd", "SpamAssassin", f"open relay probe 127.0.0.1:{server.port}",
                 f"smtp 127.0.0.1:{server.port} answers",
                 f"smtp 127.0.0.1:{server.port} TLS certificate",
                 f"imaps 127.0.0.1:{server.imaps_port} login",
                 f"pop3 127.0.0.1:{server.pop3_port} login",
                 f"submission 127.0.0.1:{server.submission_port} login",
                 f"submissions 127.0.0.1:{server.submissions_port} TLS versions",
                 f"http 127.0.0.1:{server.http_port} answers"):
        assert found.get(name) == "✓", f"{name}: {found.get(name)}\n{out}"
    assert found[f"TXT {server.domain}"] == "✓"
    assert "6 relay vectors refused" in line_of(out, f"open relay probe 127.0.0.1:{server.port}")
    assert "TLS 1.0 and 1.1 refused" in line_of(out, f"imaps 127.0.0.1:{server.imaps_port} TLS versions")
    score = float(re.search(r"^Score: ([0-9.]+)/10$", out, re.M)[1])
    assert score >= 9.0, out
    report = json.loads(doctor(server, "--json").stdout)
    assert report["ok"] is True and report["score"] >= 9.0
    assert {c["section"] for c in report["checks"]} >= {"host", "dns", "dkim", "listeners",
                                                         "relay", "deliverability"}
    # the relay probe came from 127.0.0.9 and sent no DATA: nothing was queued or stored
    assert "rip=127.0.0.9" in server.log()
    assert server.queue_stats().messages == 0
    assert server.inbox(server.user) == []


def test_spf_removed_and_wrong_dkim_record(server: PymailServer, internet) -> None:  # noqa: ANN001
    zone = internet.zone(server.domain)
    _pem, other_key = make_dkim_key()
    kept = [x for x in zone.splitlines()
            if not x.startswith((f"{server.domain}. 3600 IN TXT", "s1._domainkey."))]
    internet.set_zone(server.domain, "\n".join(kept) + "\n" + dkim_record("s1", other_key) + "\n")
    result = doctor(server)
    out = result.stdout
    assert result.returncode == 1, out
    assert line_of(out, f"TXT {server.domain}").startswith("  ✗ ")
    assert "missing" in line_of(out, f"TXT {server.domain}")
    assert "none for 127.0.0.1" in line_of(out, "SPF")
    dkim = line_of(out, f"TXT s1._domainkey.{server.domain}")
    assert dkim.startswith("  ✗ ") and "the key is not ours" in dkim, out
    signed = line_of(out, f"DKIM s1._domainkey.{server.domain} (rsa-sha256)")
    assert signed.startswith("  ✗ ") and "fail: signature did not verify" in signed
    assert line_of(out, "DKIM").startswith("  ✗ ")
    assert line_of(out, "DMARC").startswith("  ✗ ")
    score = float(re.search(r"^Score: ([0-9.]+)/10$", out, re.M)[1])
    assert score <= 5.0, out


def test_relay_domain_that_is_not_ours(server: PymailServer, internet) -> None:  # noqa: ANN001
    # The misconfiguration: remote.test (Postfix's domain, MX mx.remote.test) added as a
    # relay domain; anyone can now send to remote.test through pymail.
    server.cli("domain", "add", "remote.test", "--transport", "smtp:[127.0.0.2]")
    result = doctor(server)
    out = result.stdout
    assert result.returncode == 1, out
    relay = line_of(out, "relay domain remote.test")
    assert relay.startswith("  ✗ "), out
    assert "anyone can send mail to remote.test through pymail" in relay
    assert "its MX is mx.remote.test, not mail.example.test" in relay
    assert "pymail domain remove remote.test" in out
    # the generic vectors are still refused
    assert line_of(out, f"open relay probe 127.0.0.1:{server.port}").startswith("  ✓ ")


def test_expired_certificate(tmp_path: Path, internet) -> None:  # noqa: ANN001
    ca = CA()
    not_after = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=20)
    pair = ca.issue([PYMAIL_HOSTNAME], not_after=not_after)  # expires while pymail runs
    (tmp_path / "ca.pem").write_bytes(ca.pem)
    (tmp_path / "cert.pem").write_bytes(pair.cert_pem)
    (tmp_path / "key.pem").write_bytes(pair.key_pem)
    server = start(tmp_path, internet, f"""
[tls]
cert = "{tmp_path / 'cert.pem'}"
key = "{tmp_path / 'key.pem'}"
""")
    try:
        left = not_after.timestamp() - time.time()
        if left > 0:
            time.sleep(left + 1)
        result = doctor(server, ca=tmp_path / "ca.pem")
        out = result.stdout
        assert result.returncode == 1, out
        cert = line_of(out, f"imaps 127.0.0.1:{server.imaps_port} TLS certificate")
        assert cert.startswith("  ✗ ") and "the certificate expired on" in cert, out
        assert "pymail acme renew" in out
    finally:
        server.stop()


def test_bad_command_line(server: PymailServer) -> None:
    env = {k: v for k, v in server.env.items() if k != "PYMAIL_DOCTOR_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "pymail", "--config", str(server.config_path), "doctor",
         "--login", server.user], capture_output=True, text=True, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2 or result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "PYMAIL_DOCTOR_PASSWORD" in result.stderr
    assert "Traceback" not in result.stderr
