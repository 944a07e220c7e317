"""The outbound queue drained end to end: alice submits on 587 (STARTTLS + AUTH), pymail's
queue runner delivers over real SMTP to the test internet's MXes found through its NSD
-- the private Postfix for remote.test, scripted aiosmtpd servers on 127.0.0.4 for the
faults Postfix cannot make on cue -- and every bounce comes back to alice's INBOX, read
over IMAPS and parsed with the email library.

Short retry settings (`retry_first = "1s"`) keep the retries within seconds; the expiry
test needs the smallest `max_lifetime` (60 s) and is marked slow."""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import re
import smtplib
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pymail.store.queue import QueueEntry, RecipientStatus
from tests.conftest import StorageSetup
from tests.internet import PYMAIL_HOSTNAME, Internet, received_facts
from tests.pymail_harness import PymailServer
from tests.services.postfix import UNKNOWN_USER_REPLY
from tests.services.scripted_mx import ScriptedMx

ALICE, PASSWORD = "alice@example.test", "secret-pw"
FAST = '[delivery]\nretry_first = "1s"\nretry_max = "2s"\n'
S = RecipientStatus
FAULTY_ZONE = "@ MX 10 mx\nmx A 127.0.0.4\n"


def body(subject: str) -> bytes:
    return (f"From: Alice <{ALICE}>\r\nTo: someone\r\nSubject: {subject}\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@example.test>\r\n\r\nHello.\r\n").encode()


@pytest.fixture
def start(internet: Internet, tmp_path: Path) -> Iterator[Callable[..., PymailServer]]:
    servers: list[PymailServer] = []

    def make(delivery: str = FAST, storage_config: str = "") -> PymailServer:
        workdir = tmp_path / f"s{len(servers)}"
        workdir.mkdir()
        srv = PymailServer(workdir, hostname=PYMAIL_HOSTNAME, submission=True, imaps=True,
                           storage_config=storage_config,
                           extra_config=internet.dns_config() + delivery)
        srv.add_user(ALICE, PASSWORD)
        srv.start()
        servers.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in servers:
            if srv.proc is not None and srv.proc.poll() is None:
                srv.stop()


@pytest.fixture
def faulty(internet: Internet) -> Iterator[ScriptedMx]:
    internet.set_zone("faulty.test", FAULTY_ZONE)
    with ScriptedMx("127.0.0.4", hostname="mx.faulty.test") as mx:
        yield mx


def submit(server: PymailServer, recipients: list[str], subject: str, *,
           rcpt_options: tuple[str, ...] = ()) -> str:
    client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30)
    try:
        client.ehlo("laptop.example")
        client.starttls(context=ssl.create_default_context(cafile=str(server.ca_file)))
        client.ehlo("laptop.example")
        client.login(ALICE, PASSWORD)
        client.mail(ALICE)
        for r in recipients:
            code, text = client.rcpt(r, list(rcpt_options))
            assert code == 250, (r, code, text)
        code, text = client.data(body(subject))
        assert code == 250, text
    finally:
        client.quit()
    match = re.search(rb"queued as ([0-9A-F]{10})", text)
    assert match, text
    return match.group(1).decode()


def entry(server: PymailServer, queue_id: str) -> QueueEntry | None:
    async def read() -> QueueEntry | None:
        store = server.store()
        try:
            assert store.queue is not None
            return await store.queue.get(queue_id)
        finally:
            await store.close()

    return asyncio.run(read())


def wait_until(server: PymailServer, queue_id: str, check: Callable[[QueueEntry], bool],
               timeout: float = 30.0) -> QueueEntry:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = entry(server, queue_id)
        if last is not None and check(last):
            return last
        time.sleep(0.1)
    raise AssertionError(f"queue entry {queue_id} never got there: {last}\n{server.log()[-4000:]}")


def state(e: QueueEntry, address: str):
    return next(r for r in e.recipients if r.recipient.address == address)


def imap_messages(server: PymailServer, count: int, timeout: float = 30.0) -> list[email.message.EmailMessage]:
    """Alice's INBOX over IMAPS once it holds `count` messages, parsed."""
    deadline = time.monotonic() + timeout
    while True:
        client = server.imaps_client(ALICE, PASSWORD)
        try:
            client.select("INBOX", readonly=True)
            _, data = client.search(None, "ALL")
            numbers = data[0].split()
            if len(numbers) >= count or time.monotonic() > deadline:
                found = []
                for n in numbers:
                    _, parts = client.fetch(n, "(BODY.PEEK[])")
                    found.append(email.message_from_bytes(parts[0][1], policy=email.policy.default))
                assert len(found) == count, [m["Subject"] for m in found]
                return found
        finally:
            client.logout()
        time.sleep(0.2)


def report(dsn: email.message.EmailMessage) -> tuple[str, email.message.Message, list]:
    """(human text, per-message fields, per-recipient field blocks) of a DSN."""
    assert dsn.get_content_type() == "multipart/report"
    assert dsn.get_param("report-type") == "delivery-status"
    human, status, _original = dsn.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = status.get_payload()
    return human.get_content(), per_message, per_recipient


def assert_bounce_envelope(dsn: email.message.EmailMessage) -> None:
    assert dsn["Return-Path"] == "<>"
    assert dsn["From"] == f"Mail Delivery System <MAILER-DAEMON@{PYMAIL_HOSTNAME}>"
    assert dsn["Auto-Submitted"] == "auto-generated"


# --------------------------------------------------------------------------- delivered


def test_submitted_mail_reaches_postfix(internet: Internet, start) -> None:
    server = start()
    queue_id = submit(server, ["bob@remote.test"], "to bob")
    [raw] = internet.postfix.wait_for_messages("bob")
    facts = received_facts(raw)
    assert (facts.ip, facts.helo, facts.mail_from, facts.rcpt) == (
        "127.0.0.1", PYMAIL_HOSTNAME, ALICE, "bob@remote.test")
    assert b"Subject: to bob" in raw
    e = wait_until(server, queue_id, lambda e: state(e, "bob@remote.test").status is S.DELIVERED)
    bob = state(e, "bob@remote.test")
    assert (bob.attempts, bob.reply_code) == (1, 250)
    assert bob.remote_host is not None and bob.remote_host.startswith("mx.remote.test")
    # one log line for the attempt: queue id, recipient, MX, TLS, reply
    [line] = [l for l in server.log().splitlines() if f"{queue_id}: to=<bob@remote.test>" in l]
    assert "relay=mx.remote.test[127.0.0.2]" in line and "status=sent (250 " in line
    assert imap_messages(server, 0) == []  # no notice for a plain delivery


def test_remote_down_is_retried_and_delivered_when_it_comes_back(internet: Internet, start) -> None:
    internet.postfix.stop_server()
    server = start()
    queue_id = submit(server, ["bob@remote.test"], "while down")
    e = wait_until(server, queue_id, lambda e: state(e, "bob@remote.test").attempts >= 2)
    bob = state(e, "bob@remote.test")
    assert bob.status is S.QUEUED and bob.reply_code is None and bob.reply_text
    line = next(l for l in server.cli("queue", "list").stdout.splitlines() if l.startswith(queue_id))
    assert "<bob@remote.test> (queued, " in line and " attempts" in line
    internet.postfix.start_server()
    [raw] = internet.postfix.wait_for_messages("bob", timeout=30)
    assert b"Subject: while down" in raw
    e = wait_until(server, queue_id, lambda e: state(e, "bob@remote.test").status is S.DELIVERED)
    assert state(e, "bob@remote.test").attempts >= 3
    assert imap_messages(server, 0) == []


def test_4xx_at_rcpt_stays_queued_and_the_queue_says_why(faulty: ScriptedMx, start) -> None:
    faulty.script_rcpt("dan@faulty.test", "451 4.3.0 Temporary lookup failure")
    server = start()
    queue_id = submit(server, ["dan@faulty.test"], "four")
    e = wait_until(server, queue_id, lambda e: state(e, "dan@faulty.test").attempts >= 2)
    dan = state(e, "dan@faulty.test")
    assert (dan.status, dan.reply_code, dan.reply_text) == (
        S.QUEUED, 451, "4.3.0 Temporary lookup failure")
    assert faulty.received == []
    line = next(l for l in server.cli("queue", "list").stdout.splitlines() if l.startswith(queue_id))
    assert "<dan@faulty.test> (queued, " in line
    assert line.endswith(": 451 4.3.0 Temporary lookup failure)")
    assert imap_messages(server, 0) == []  # no bounce for a temporary failure


def test_greylisting_4xx_once_then_delivered(faulty: ScriptedMx, start) -> None:
    faulty.script_rcpt("gus@faulty.test", "450 4.2.0 <gus@faulty.test>: Greylisted, try again",
                       "250 2.1.5 Ok")
    server = start()
    queue_id = submit(server, ["gus@faulty.test"], "grey")
    [got] = faulty.wait_for(1)
    assert (got.mail_from, got.rcpt_tos) == (ALICE, ("gus@faulty.test",))
    assert b"Subject: grey" in got.data
    e = wait_until(server, queue_id, lambda e: state(e, "gus@faulty.test").status is S.DELIVERED)
    assert state(e, "gus@faulty.test").attempts == 2
    assert faulty.rcpts == ["gus@faulty.test", "gus@faulty.test"]
    log = server.log()
    assert re.search(rf"{queue_id}: to=<gus@faulty\.test>, relay=mx\.faulty\.test\S*, .*"
                     r"status=deferred \(450 4\.2\.0 <gus@faulty\.test>: Greylisted, try again\)", log)


# --------------------------------------------------------------------------- bounces


def test_5xx_at_rcpt_bounces_to_alice_quoting_postfix(internet: Internet, start) -> None:
    server = start()
    queue_id = submit(server, ["nobody@remote.test", "bob@remote.test"], "partly")
    internet.postfix.wait_for_messages("bob")
    e = wait_until(server, queue_id, lambda e: all(r.status.final for r in e.recipients))
    assert state(e, "nobody@remote.test").status is S.FAILED
    assert state(e, "bob@remote.test").status is S.DELIVERED
    [dsn] = imap_messages(server, 1)
    assert_bounce_envelope(dsn)
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    reply = UNKNOWN_USER_REPLY.format(address="nobody@remote.test")
    human, per_message, [nobody] = report(dsn)
    assert reply in human
    assert per_message["Reporting-MTA"] == f"dns; {PYMAIL_HOSTNAME}"
    assert (nobody["Final-Recipient"], nobody["Action"], nobody["Status"], nobody["Remote-MTA"],
            nobody["Diagnostic-Code"]) == (
        "rfc822; nobody@remote.test", "failed", "5.1.1", "dns; mx.remote.test", f"smtp; {reply}")
    headers = dsn.get_payload()[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: partly" in headers.get_payload()


def test_delivered_and_bounced_on_each_backend(internet: Internet, start,
                                               storage: StorageSetup) -> None:
    """The same runner over SQLite and over PostgreSQL + S3 (leases, records, the DSN's
    own trip through the pipeline)."""
    server = start(storage_config=storage.config)
    queue_id = submit(server, ["carol@remote.test", "nobody@remote.test"], f"on {storage.name}")
    [raw] = internet.postfix.wait_for_messages("carol")
    assert f"Subject: on {storage.name}".encode() in raw
    e = wait_until(server, queue_id, lambda e: all(r.status.final for r in e.recipients))
    assert [(r.recipient.address, r.status, r.attempts) for r in e.recipients] == [
        ("carol@remote.test", S.DELIVERED, 1), ("nobody@remote.test", S.FAILED, 1)]
    [dsn] = imap_messages(server, 1)
    _, _, [r] = report(dsn)
    assert r["Diagnostic-Code"] == "smtp; " + UNKNOWN_USER_REPLY.format(address="nobody@remote.test")


def test_5xx_after_data_bounces_with_the_remote_text(faulty: ScriptedMx, start) -> None:
    reply = "554 5.7.1 Message rejected: looks like spam to us"
    faulty.script_data(reply)
    server = start()
    queue_id = submit(server, ["eve@faulty.test"], "data five")
    e = wait_until(server, queue_id, lambda e: state(e, "eve@faulty.test").status.final)
    eve = state(e, "eve@faulty.test")
    assert (eve.status, eve.attempts, eve.reply_code) == (S.FAILED, 1, 554)
    [dsn] = imap_messages(server, 1)
    assert_bounce_envelope(dsn)
    human, _, [r] = report(dsn)
    assert reply in human
    assert (r["Action"], r["Status"], r["Diagnostic-Code"], r["Remote-MTA"]) == (
        "failed", "5.7.1", f"smtp; {reply}", "dns; mx.faulty.test")


def test_notify_never_gets_no_bounce(internet: Internet, start) -> None:
    server = start()
    queue_id = submit(server, ["nobody@remote.test"], "quiet", rcpt_options=("NOTIFY=NEVER",))
    wait_until(server, queue_id, lambda e: state(e, "nobody@remote.test").status is S.FAILED)
    time.sleep(1)
    assert imap_messages(server, 0) == []


def test_one_delayed_notice_then_delivered(faulty: ScriptedMx, start) -> None:
    faulty.script_rcpt("fay@faulty.test", "451 4.7.1 Service busy, come back later")
    server = start(FAST + 'delay_warning = "3s"\n')
    queue_id = submit(server, ["fay@faulty.test"], "slow")
    [dsn] = imap_messages(server, 1, timeout=30)
    assert_bounce_envelope(dsn)
    assert dsn["Subject"] == "Delayed Mail (still being retried)"
    human, _, [r] = report(dsn)
    assert "451 4.7.1 Service busy, come back later" in human
    assert (r["Action"], r["Status"], r["Diagnostic-Code"]) == (
        "delayed", "4.7.1", "smtp; 451 4.7.1 Service busy, come back later")
    assert r["Will-Retry-Until"]
    e = wait_until(server, queue_id, lambda e: state(e, "fay@faulty.test").attempts >= 4)
    assert state(e, "fay@faulty.test").delay_notified
    faulty.script_rcpt("fay@faulty.test", "250 2.1.5 Ok")
    faulty.wait_for(1)
    wait_until(server, queue_id, lambda e: state(e, "fay@faulty.test").status is S.DELIVERED)
    time.sleep(1)
    assert len(imap_messages(server, 1)) == 1  # once


@pytest.mark.slow
def test_expiry_bounces_after_max_lifetime(faulty: ScriptedMx, start) -> None:
    faulty.script_rcpt("old@faulty.test", "451 4.4.5 Too busy to talk to you")
    server = start('[delivery]\nretry_first = "5s"\nretry_max = "10s"\nmax_lifetime = "60s"\n'
                   'delay_warning = "0s"\n')
    queue_id = submit(server, ["old@faulty.test"], "too old")
    e = wait_until(server, queue_id, lambda e: state(e, "old@faulty.test").status.final, timeout=90)
    old = state(e, "old@faulty.test")
    assert old.status is S.EXPIRED and old.attempts >= 3
    assert old.last_attempt >= e.message.expires_at
    [dsn] = imap_messages(server, 1)
    assert_bounce_envelope(dsn)
    assert dsn["Subject"] == "Undelivered Mail Returned to Sender"
    human, _, [r] = report(dsn)
    assert "451 4.4.5 Too busy to talk to you" in human
    assert (r["Action"], r["Status"], r["Diagnostic-Code"]) == (
        "failed", "5.4.7", "smtp; 451 4.4.5 Too busy to talk to you")
