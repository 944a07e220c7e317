"""DKIM signing wired into the running server: a key made with `pymail dkim keygen`,
its printed record published in the tests' NSD, then alice submits (587, STARTTLS +
AUTH) to bob@remote.test.  The copy waiting in the queue carries pymail's signature
and Rspamd, the independent verifier, says R_DKIM_ALLOW (SPF and DMARC pass too, as
pymail's address is example.test's MX).  Mail whose From is in a domain without a key
goes unsigned.  (Delivery to Postfix is the queue runner's test.)"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.internet import PYMAIL_ADDRESS, PYMAIL_HOSTNAME, Internet
from tests.pymail_harness import PymailServer

ALICE, PASSWORD = "alice@example.test", "secret-pw"


@pytest.fixture
def server(tmp_path: Path, internet: Internet) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, hostname=PYMAIL_HOSTNAME, submission=True,
                       extra_config=internet.dns_config() + '\n[dkim]\nselector = "pmsub"\n')
    srv.add_user(ALICE)
    srv.add_user("dave@other.test")
    made = srv.cli("dkim", "keygen", "example.test")
    [record] = [line for line in made.stdout.splitlines() if " TXT " in line]
    assert record.startswith("pmsub._domainkey.example.test. TXT ")
    internet.add_records("example.test", record)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def submit(server: PymailServer, sender: str, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as client:
        client.starttls(context=ssl.create_default_context(cafile=str(server.ca_file)))
        client.login(sender, PASSWORD)
        client.sendmail(sender, ["bob@remote.test"], message)


def queued_copies(server: PymailServer) -> list[bytes]:
    async def read() -> list[bytes]:
        store = server.store()
        try:
            assert store.queue is not None
            found = await store.queue.list_entries(include_final=True)
            return [await store.blobs.get(e.message.blob_key) for e in found]
        finally:
            await store.close()

    return asyncio.run(read())


def test_submitted_mail_is_queued_signed_and_rspamd_verifies_it(
        server: PymailServer, internet: Internet) -> None:
    message = (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
               b"Subject: signed on the way out\r\nMessage-ID: <sub-1@example.test>\r\n"
               b"Date: Wed, 02 Dec 2026 07:00:00 +0000\r\n\r\nHello Bob.\r\n")
    submit(server, ALICE, message)
    [copy] = queued_copies(server)
    assert copy.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
    assert b"\ts=pmsub;" in copy and copy.endswith(message)
    result = internet.rspamd.check(copy, ip=PYMAIL_ADDRESS, helo=PYMAIL_HOSTNAME,
                                   hostname=PYMAIL_HOSTNAME, mail_from=ALICE, rcpt="bob@remote.test")
    assert result.has("R_DKIM_ALLOW", "R_SPF_ALLOW", "DMARC_POLICY_ALLOW"), result
    assert result.symbols["R_DKIM_ALLOW"]["options"] == ["example.test:s=pmsub"]


def test_a_domain_without_a_key_is_sent_unsigned(server: PymailServer) -> None:
    submit(server, "dave@other.test",
           b"From: dave@other.test\r\nTo: bob@remote.test\r\nSubject: x\r\n\r\nunsigned\r\n")
    [copy] = queued_copies(server)
    assert b"DKIM-Signature" not in copy
