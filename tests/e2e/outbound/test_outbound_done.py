"""Issue 11's "done means", end to end in the test internet, as an admin would try it:
a key made with `pymail dkim keygen` and its record published in DNS; alice
authenticates on 587 and writes to bob@remote.test (the remote Postfix) and
carol@example.test (local) in one message: carol has it in her INBOX over IMAP, Postfix
has it with pymail's DKIM signature, and Rspamd -- the independent verifier, asking the
same DNS -- says DKIM, SPF and DMARC pass; a message to nobody@remote.test comes back to
alice's INBOX as a DSN quoting Postfix's 550; `pymail queue list` shows what waits and
why (a message for a domain whose MX is down)."""

from __future__ import annotations

import email
import email.policy
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.internet import PYMAIL_HOSTNAME, Internet
from tests.pymail_harness import PymailServer
from tests.services.postfix import UNKNOWN_USER_REPLY

ALICE, CAROL, PASSWORD = "alice@example.test", "carol@example.test", "secret-pw"


@pytest.fixture
def server(tmp_path: Path, internet: Internet) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, hostname=PYMAIL_HOSTNAME, submission=True, imaps=True,
                       extra_config=internet.dns_config()
                       + '\n[delivery]\nretry_first = "60s"\n')
    srv.add_user(ALICE)
    srv.add_user(CAROL)
    made = srv.cli("dkim", "keygen", "example.test")
    [record] = [line for line in made.stdout.splitlines() if " TXT " in line]
    internet.add_records("example.test", record)
    # down.test: an MX nobody answers on (127.0.0.9:25 is closed)
    internet.set_zone("down.test", "@ MX 10 mx\nmx A 127.0.0.9\n")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def submit(server: PymailServer, recipients: list[str], message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(server.ca_file)))
        client.login(ALICE, PASSWORD)
        assert client.sendmail(ALICE, recipients, message) == {}


def wait_inbox(server: PymailServer, user: str, count: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        found = server.inbox(user)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def imap_messages(server: PymailServer, user: str) -> list[bytes]:
    client = server.imaps_client(user, PASSWORD)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.uid("SEARCH", None, "ALL")
        out = []
        for uid in data[0].split():
            _, parts = client.uid("FETCH", uid, "(BODY.PEEK[])")
            out.append(parts[0][1])
        return out
    finally:
        client.logout()


def test_alice_writes_out_and_in_and_gets_the_bounce(server: PymailServer, internet: Internet) -> None:
    message = (b"From: Alice <alice@example.test>\r\nTo: bob@remote.test, carol@example.test\r\n"
               b"Subject: hello from pymail\r\nDate: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
               b"Message-ID: <done-1@example.test>\r\n\r\nHello Bob and Carol.\r\n")
    submit(server, ["bob@remote.test", CAROL], message)
    # carol, local: in her INBOX (over IMAP)
    assert wait_inbox(server, CAROL, 1)
    [carols] = imap_messages(server, CAROL)
    assert b"Subject: hello from pymail" in carols
    # bob, at Postfix: DKIM-signed by pymail, and Rspamd says DKIM, SPF and DMARC pass
    [raw] = internet.postfix.wait_for_messages("bob", timeout=30)
    assert b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;" in raw
    verdict = internet.verify_delivered(raw)
    assert verdict.has("R_DKIM_ALLOW", "R_SPF_ALLOW", "DMARC_POLICY_ALLOW"), verdict

    # nobody@remote.test: Postfix says 550; the DSN comes back to alice's INBOX
    submit(server, ["nobody@remote.test"],
           b"From: Alice <alice@example.test>\r\nTo: nobody@remote.test\r\n"
           b"Subject: to nobody\r\nMessage-ID: <done-2@example.test>\r\n\r\nAnyone?\r\n")
    assert wait_inbox(server, ALICE, 1)
    [bounce] = imap_messages(server, ALICE)
    dsn = email.message_from_bytes(bounce, policy=email.policy.default)
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["From"].addresses[0].addr_spec == f"MAILER-DAEMON@{PYMAIL_HOSTNAME}"
    assert dsn["Auto-Submitted"] == "auto-generated"
    reply = UNKNOWN_USER_REPLY.format(address="nobody@remote.test")
    human = dsn.get_payload()[0].get_content()
    assert reply in " ".join(human.split()), human
    status = dsn.get_payload()[1]
    assert status.get_content_type() == "message/delivery-status"
    text = status.as_string()
    assert "Action: failed" in text and "Status: 5.1.1" in text
    assert "Final-Recipient: rfc822; nobody@remote.test" in text.replace("rfc822;nobody", "rfc822; nobody")
    assert "Remote-MTA: dns; mx.remote.test" in text

    # down.test: waits in the queue; `pymail queue list` says so and why
    submit(server, ["someone@down.test"],
           b"From: Alice <alice@example.test>\r\nTo: someone@down.test\r\n"
           b"Subject: to a dead MX\r\n\r\nStill there?\r\n")
    deadline = time.monotonic() + 30
    while True:
        listing = server.cli("queue", "list").stdout
        if "someone@down.test" in listing and "127.0.0.9" in listing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert "someone@down.test" in listing and "127.0.0.9" in listing, listing
    waiting = [line for line in listing.splitlines() if "someone@down.test" in line]
    assert len(waiting) == 1 and "(queued, 1 attempt, next in" in waiting[0], listing
    assert "connect to mx.down.test[127.0.0.9] failed" in waiting[0], listing
    # what already went is shown as done until the queue purges it
    for line in listing.splitlines():
        if "<bob@remote.test>" in line:
            assert "(delivered, 1 attempt: 250 " in line, listing
        if "<nobody@remote.test>" in line:
            assert f"(failed, 1 attempt: {reply})" in line, listing
    assert "1 recipient(s) waiting" in listing.splitlines()[-1], listing
