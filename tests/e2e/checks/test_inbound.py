"""Issue 12's "done means", over real sockets: pymail's MX with SPF, DKIM, DMARC, ARC,
iprev, Rspamd and ClamAV on, the sender's DNS in NSD, a real Rspamd and a real clamd.

* a signed message from an authorised address lands in INBOX with one
  Authentication-Results (spf, dkim, dmarc pass) and the forged one it carried removed;
* the same From with a broken signature from an unauthorised address: 550 (p=reject);
* p=quarantine failing: Junk; GTUBE: 550; EICAR (plain and attached): 554; Rspamd's
  add-header pattern: Junk with X-Spam: Yes;
* outages under a running server: Rspamd stopped, clamd stopped, clamd frozen, NSD
  silent -> 451 4.7.1, and back to normal with no restart.
"""

from __future__ import annotations

import re
import subprocess
import time

from pymail.mail.headers import parse_header
from tests.e2e.checks.conftest import (
    HOSTNAME,
    LIST_IP,
    RECIPIENT,
    SENDER_IP,
    STRANGER_IP,
    Inbound,
    message,
)
from tests.pymail_harness import client_tool
from tests.services.clamd import eicar_bytes, eicar_mime_message

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
ADD_HEADER = b"Y" + GTUBE[1:]


def header(raw: bytes):
    return parse_header(raw)


def our_ar(raw: bytes) -> str:
    ars = [f.value for f in header(raw).get_all("Authentication-Results")
           if f.value.lower().startswith(HOSTNAME)]
    assert len(ars) == 1, ars
    return ars[0]


def test_signed_mail_from_an_authorised_host_lands_in_inbox_with_one_authentication_results(
        inbound: Inbound, tmp_path) -> None:
    client_tool("swaks", "swaks")
    raw = inbound.sign(message("lunch", extra=f"Authentication-Results: {HOSTNAME}; dkim=pass "
                                              "header.d=forged.test\r\n"))
    (tmp_path / "msg.eml").write_bytes(raw)
    before = len(inbound.mailbox())
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{inbound.server.port}", "--local-interface", SENDER_IP,
         "--helo", "mx.remote.test", "--from", "alice@signed.test", "--to", RECIPIENT,
         "--data", f"@{tmp_path / 'msg.eml'}", "--timeout", "60"],
        capture_output=True, text=True, timeout=90)
    assert "<-  250 2.0.0" in result.stdout, result.stdout + result.stderr
    stored = inbound.mailbox()[before:]
    assert len(stored) == 1
    ar = our_ar(stored[0])
    assert re.search(r"spf=pass smtp\.mailfrom=alice@signed\.test", ar), ar
    assert re.search(r"dkim=pass header\.d=signed\.test header\.s=sel1 header\.b=\S{12}", ar), ar
    assert re.search(r"dmarc=pass header\.from=signed\.test", ar), ar
    assert re.search(r"iprev=pass policy\.iprev=127\.0\.0\.2", ar), ar
    assert "forged.test" not in stored[0].decode()
    assert header(stored[0]).get("X-Spam") is None
    log = inbound.server.log()
    assert re.search(r"accepted .*checks=iprev:pass,spf:pass,dkim:pass,arc:none,dmarc:pass,"
                     r"rspamd:no_action,clamav:clean spam=", log), log[-2000:]


def test_broken_signature_from_an_unauthorised_host_is_refused_under_p_reject(inbound: Inbound) -> None:
    signed = inbound.sign(message("invoice"))
    tampered = signed.replace(b"see you tomorrow", b"pay this invoice")
    code, text = inbound.send(tampered, source=STRANGER_IP, helo="stranger.test")
    assert (code, text[:5]) == (550, "5.7.1"), text
    assert re.search(r"reject .*reason=checks\(dmarc\.reject\) checks=iprev:permerror,spf:fail,"
                     r"dkim:fail,arc:none,dmarc:reject", inbound.server.log())


def test_dmarc_quarantine_files_into_junk(inbound: Inbound) -> None:
    before = len(inbound.mailbox("Junk"))
    code, text = inbound.send(message("cheap", sender="carol@quarantine.test"),
                              sender="carol@quarantine.test", source=STRANGER_IP)
    assert code == 250, text
    junk = inbound.mailbox("Junk")[before:]
    assert len(junk) == 1
    assert "dmarc=fail header.from=quarantine.test (p=quarantine dis=QUARANTINE)" in our_ar(junk[0])


def test_forwarded_mail_sealed_by_a_trusted_list_is_not_rejected_on_dmarc(inbound: Inbound) -> None:
    """The list broke the author's signature and sends from its own address: DMARC
    fails under p=reject, but the trusted list's valid ARC chain vouches for it."""
    original = inbound.sign(message("via the list"))
    code, text = inbound.send(inbound.seal(original, "lists.trusted.test"),
                              sender="list-bounces@lists.trusted.test", source=LIST_IP)
    assert code == 250, text
    # delivered (INBOX, or Junk should Rspamd's own score say so: its verdict, not DMARC's)
    [delivered] = [raw for raw in inbound.mailbox() + inbound.mailbox("Junk")
                   if b"Subject: via the list" in raw]
    ar = our_ar(delivered)
    assert "arc=pass" in ar and "dmarc=fail" in ar and "dkim=fail" in ar, ar
    # the same chain from a list we do not trust: DMARC p=reject is obeyed
    code, text = inbound.send(inbound.seal(original, "lists.other.test"),
                              sender="list-bounces@lists.other.test", source=LIST_IP)
    assert (code, text[:5]) == (550, "5.7.1"), text


def test_gtube_is_refused(inbound: Inbound) -> None:
    code, text = inbound.send(inbound.sign(message("gtube", body=GTUBE.decode() + "\r\n")))
    assert (code, text) == (550, "5.7.1 Message rejected as spam")
    assert re.search(r"reason=checks\(rspamd\.reject\) .*spam=\d+\.\d+/\d+\.\d+\(GTUBE",
                     inbound.server.log())


def test_eicar_plain_and_attached_is_refused(inbound: Inbound) -> None:
    code, text = inbound.send(message("plain", body=eicar_bytes().decode() + "\r\n"))
    assert (code, text) == (554, "5.7.1 Message content rejected")
    attached = eicar_mime_message("alice@signed.test", RECIPIENT)
    code, text = inbound.send(attached)
    assert (code, text) == (554, "5.7.1 Message content rejected")
    assert "virus=Eicar-Test-Signature.UNOFFICIAL" in inbound.server.log()


def test_spammy_but_not_rejected_goes_to_junk_with_x_spam(inbound: Inbound) -> None:
    before = len(inbound.mailbox("Junk"))
    code, text = inbound.send(inbound.sign(message("offer", body=ADD_HEADER.decode() + "\r\n")))
    assert code == 250, text
    junk = inbound.mailbox("Junk")[before:]
    assert len(junk) == 1
    fields = header(junk[0])
    assert fields.get("X-Spam").value == "Yes"
    assert re.fullmatch(r"\d+\.\d\d / \d+\.\d\d", fields.get("X-Spam-Score").value)
    our_ar(junk[0])


def _wait_accepting(inbound: Inbound, subject: str, deadline: float = 30.0) -> tuple[int, str]:
    end = time.monotonic() + deadline
    while True:
        code, text = inbound.send(inbound.sign(message(subject)))
        if code == 250 or time.monotonic() > end:
            return code, text
        time.sleep(0.5)


def test_rspamd_stopped_is_451_and_recovers_without_restart(inbound: Inbound) -> None:
    rspamd = inbound.internet.rspamd
    rspamd.stop_server()
    try:
        code, text = inbound.send(inbound.sign(message("while rspamd is down")))
        assert (code, text[:5]) == (451, "4.7.1"), text
        status, body = inbound.server.http_get("/healthz")
        assert status == 503 and body.startswith("degraded: rspamd: down"), body
    finally:
        rspamd.start_server()
    assert _wait_accepting(inbound, "rspamd is back")[0] == 250
    log = inbound.server.log()
    assert log.count("rspamd: unavailable:") == 1, "an outage is logged once per state change"
    assert "rspamd: back after" in log
    status, body = inbound.server.http_get("/metrics")
    assert re.search(r'pymail_check_errors_total\{check="rspamd"\} [1-9]', body)


def test_clamd_stopped_or_frozen_is_451_and_recovers(inbound: Inbound, clamd_service) -> None:
    clamd_service.stop()
    try:
        code, text = inbound.send(message("while clamd is down"))
        assert (code, text[:5]) == (451, "4.7.1"), text
    finally:
        clamd_service.start()
    assert _wait_accepting(inbound, "clamd is back")[0] == 250
    clamd_service.pause()
    try:
        started = time.monotonic()
        code, text = inbound.send(message("while clamd is frozen"))
        assert (code, text[:5]) == (451, "4.7.1"), text
        assert time.monotonic() - started < 12, "the scan is bounded by clamav_timeout"
    finally:
        clamd_service.resume()
    assert _wait_accepting(inbound, "clamd thawed")[0] == 250


def test_silent_dns_is_temperror_and_451_then_recovers(inbound: Inbound) -> None:
    """NSD paused: the sender's records (never asked before, so not cached) time out:
    temperror for SPF, DKIM and DMARC, and DMARC temperror defers (the default)."""
    internet = inbound.internet
    internet.set_zone("fresh.test", f'@ TXT "v=spf1 ip4:{SENDER_IP} -all"\n'
                                    '_dmarc TXT "v=DMARC1; p=reject"\n')
    assert internet.nsd is not None
    internet.nsd.pause()
    try:
        code, text = inbound.send(message("dns down", sender="dave@fresh.test"),
                                  sender="dave@fresh.test")
        assert (code, text[:5]) == (451, "4.7.1"), text
        assert re.search(r"reason=checks\(dmarc\.temperror\) checks=\S*spf:temperror,"
                         r"dkim:none,arc:none,dmarc:temperror", inbound.server.log())
    finally:
        internet.nsd.resume()
    code, text = inbound.send(message("dns back", sender="dave@fresh.test"), sender="dave@fresh.test")
    assert code == 250, text
