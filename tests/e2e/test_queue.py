"""The outbound queue end to end, on both backend pairs: a real pymail, real SMTP clients
(smtplib over STARTTLS with AUTH on submission, plain on the MX), the real CLI.

What must hold: submission to a remote address gets 250 and the message waits in the
queue with its blob (``pymail queue list`` shows it); one message for local and remote
recipients is durable for both at the 250, and a storage failure in the middle leaves
neither; an alias pointing outside is queued with an SRS sender, and a bounce to that
SRS address goes back to the original sender; kill -9 right after a 250 loses nothing;
DSN parameters are advertised, validated and stored.  Nothing here reaches a remote
server: the queue runner's DNS is a dead resolver port, so what it tries stays queued
(tests/e2e/outbound/test_queue_runner.py delivers for real)."""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymail.config import load_config
from pymail.store.queue import QueueEntry
from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer
from tests.services.nsd import free_dns_port

ALICE, CAROL, PASSWORD = "alice@example.test", "carol@example.test", "secret-pw"
BODY = b"From: Alice <alice@example.test>\r\nSubject: to the outside\r\n\r\nhello\r\n"


def dead_dns() -> str:
    """No test here needs DNS: a resolver port nobody answers on, never the system's."""
    return f'[dns]\nnameservers = ["127.0.0.1"]\nport = {free_dns_port()}\ntimeout = "1s"\n'


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, storage_config=storage.config, submission=True, http=True,
                       extra_config=dead_dns())
    srv.add_user(ALICE)
    srv.add_user(CAROL)
    srv.cli("alias", "add", "fwd@example.test", "friend@remote.test")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def submission(server: PymailServer) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30)
    client.ehlo("client.example")
    client.starttls(context=ssl.create_default_context(cafile=str(server.ca_file)))
    client.ehlo("client.example")
    client.login(ALICE, PASSWORD)
    return client


def mx(server: PymailServer) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=30)
    client.ehlo("mail.gmail.example")
    return client


def queue_id_of(reply: bytes) -> str:
    match = re.search(rb"queued as ([0-9A-F]{10})", reply)
    assert match, reply
    return match.group(1).decode()


def entries(server: PymailServer) -> list[QueueEntry]:
    async def read() -> list[QueueEntry]:
        store = server.store()
        try:
            assert store.queue is not None
            return await store.queue.list_entries(include_final=True)
        finally:
            await store.close()

    return asyncio.run(read())


def blob(server: PymailServer, key: str) -> bytes:
    async def read() -> bytes:
        store = server.store()
        try:
            return await store.blobs.get(key)
        finally:
            await store.close()

    return asyncio.run(read())


def test_submission_to_a_remote_address_is_queued(server: PymailServer) -> None:
    with submission(server) as client:
        client.mail(ALICE)
        code, text = client.rcpt("bob@remote.test")
        assert (code, text[:5]) == (250, b"2.1.5"), (code, text)  # no more 451 4.3.2
        code, text = client.data(BODY)
        assert code == 250, text
    queue_id = queue_id_of(text)
    [entry] = entries(server)
    m = entry.message
    assert (m.queue_id, m.sender, m.origin, m.auth_user) == (queue_id, ALICE, "submission", ALICE)
    [r] = entry.recipients
    assert (r.recipient.address, r.recipient.domain, r.recipient.route, r.status.value) == (
        "bob@remote.test", "remote.test", "mx", "queued")
    # the blob: our Received on top, no Return-Path (only final delivery adds one)
    data = blob(server, m.blob_key)
    assert data.startswith(b"Received: from client.example") and data.endswith(BODY)
    assert b"Return-Path" not in data and m.size == len(data)
    # the operator sees it
    listed = server.cli("queue", "list").stdout
    line = next(l for l in listed.splitlines() if l.startswith(queue_id))
    # (the queue runner may have tried already: DNS is dead here, so it stays queued and
    # the line says why)
    assert f"<{ALICE}>" in line
    assert re.search(r"<bob@remote\.test> \(queued, (due now|being delivered|"
                     r"1 attempt, next in \d+[sm]: .+)\)$", line), line
    assert "1 recipient(s) waiting" in listed
    shown = server.cli("queue", "show", queue_id).stdout
    assert "recipient:  <bob@remote.test>" in shown and "route:        mx (domain remote.test)" in shown
    assert f"accepted rip=127.0.0.1" in server.log() and "queued=1" in server.log()
    # and /metrics counts it
    status, metrics = server.http_get("/metrics")
    assert status == 200
    assert re.search(r"^pymail_queue_messages 1\.0$", metrics, re.M), metrics
    assert re.search(r'^pymail_queue_recipients\{status="queued"\} 1\.0$', metrics, re.M)
    assert re.search(r"^pymail_queue_oldest_age_seconds \d", metrics, re.M)


def test_local_and_remote_recipients_in_one_message(server: PymailServer) -> None:
    with submission(server) as client:
        refused = client.sendmail(ALICE, [CAROL, "bob@remote.test", "dave@other.test"], BODY)
        assert refused == {}
    # carol has it, with the Return-Path of final delivery
    [(_, local, _)] = server.inbox(CAROL)
    assert local.startswith(b"Return-Path: <alice@example.test>\r\nReceived: ") and local.endswith(BODY)
    # the remote copies wait, in one message, with their own blob (no Return-Path)
    [entry] = entries(server)
    assert sorted(r.recipient.address for r in entry.recipients) == ["bob@remote.test", "dave@other.test"]
    assert blob(server, entry.message.blob_key) == local[len(b"Return-Path: <alice@example.test>\r\n"):]


def _fail_queue_inserts(server: PymailServer) -> None:
    """Make the index itself refuse a queue row for addresses starting with "fail" (a
    trigger): the failure strikes after the mailbox rows were written in the same
    transaction."""
    url = load_config(server.config_path).index_url
    if url.startswith("sqlite://"):
        import sqlite3

        conn = sqlite3.connect(url[len("sqlite://"):], timeout=30)
        conn.execute("CREATE TRIGGER fail_queue BEFORE INSERT ON queue_recipients"
                     " WHEN NEW.address LIKE 'fail%' BEGIN SELECT RAISE(ABORT, 'injected'); END")
        conn.commit()
        conn.close()
        return
    import asyncpg

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "CREATE FUNCTION fail_queue() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF NEW.address LIKE 'fail%' THEN RAISE EXCEPTION 'injected'; END IF;"
                " RETURN NEW; END $$")
            await conn.execute("CREATE TRIGGER fail_queue BEFORE INSERT ON queue_recipients"
                               " FOR EACH ROW EXECUTE FUNCTION fail_queue()")
        finally:
            await conn.close()

    asyncio.run(create())


def test_a_storage_failure_in_the_middle_leaves_neither(server: PymailServer) -> None:
    _fail_queue_inserts(server)
    with submission(server) as client:
        client.mail(ALICE)
        assert client.rcpt(CAROL)[0] == 250
        assert client.rcpt("fail@remote.test")[0] == 250
        code, text = client.data(BODY)
        assert (code, text[:5]) == (451, b"4.3.0"), (code, text)  # one 451 for all of it
        # nothing half-done: no local copy, no queue row
        assert server.inbox(CAROL) == []
        assert entries(server) == []
        # the same session goes on; mail without the failing recipient is delivered
        refused = client.sendmail(ALICE, [CAROL, "bob@remote.test"], BODY)
        assert refused == {}
    assert len(server.inbox(CAROL)) == 1
    assert [e.recipients[0].recipient.address for e in entries(server)] == ["bob@remote.test"]
    assert "reason=storage(" in server.log()


def test_alias_outside_is_queued_with_srs_and_bounces_come_back(server: PymailServer) -> None:
    with mx(server) as client:
        # the MX still relays for nobody
        client.mail("carol@gmail.example")
        code, text = client.rcpt("someone@remote.test")
        assert (code, text[:5]) == (554, b"5.7.1"), (code, text)
        code, text = client.rcpt("fwd@example.test")
        assert (code, text[:5]) == (250, b"2.1.5"), (code, text)  # no more 451 4.3.0
        code, text = client.data(b"From: carol@gmail.example\r\nSubject: fwd\r\n\r\nx\r\n")
        assert code == 250, text
    [entry] = entries(server)
    m = entry.message
    assert m.origin == "forward"
    assert re.fullmatch(r"SRS0=[^=]{4}=[A-Z2-7]{2}=gmail\.example=carol@example\.test", m.sender), m.sender
    [r] = entry.recipients
    assert (r.recipient.address, r.recipient.orcpt) == ("friend@remote.test", "rfc822;fwd@example.test")
    # friend's server bounces it to the SRS address: it goes back to carol
    with mx(server) as client:
        client.mail("")
        code, text = client.rcpt(m.sender)
        assert code == 250, (code, text)
        assert client.data(b"From: MAILER-DAEMON@remote.test\r\nSubject: bounce\r\n\r\nx\r\n")[0] == 250
        # a forged SRS address is nobody's
        client.mail("")
        forged = "SRS0=AAAA" + m.sender[9:]
        code, text = client.rcpt(forged)
        assert (code, text[:5]) == (550, b"5.1.1"), (code, text)
    bounce = next(e for e in entries(server) if e.message.queue_id != m.queue_id)
    assert bounce.message.sender == ""
    assert [r.recipient.address for r in bounce.recipients] == ["carol@gmail.example"]


def test_kill_9_right_after_250_loses_nothing(server: PymailServer) -> None:
    with submission(server) as client:
        client.mail(ALICE)
        client.rcpt("bob@remote.test")
        code, text = client.data(BODY)
        assert code == 250
        server.kill()  # at once, before anything else happens
    queue_id = queue_id_of(text)
    server.start()
    [entry] = entries(server)
    assert entry.message.queue_id == queue_id
    assert blob(server, entry.message.blob_key).endswith(BODY)
    assert f"<bob@remote.test>" in server.cli("queue", "show", queue_id).stdout


def test_dsn_parameters_are_advertised_validated_and_stored(server: PymailServer) -> None:
    with mx(server) as client:
        assert client.has_extn("dsn")
        assert not client.has_extn("requiretls")  # only over TLS (RFC 8689)
        code, text = client.docmd("MAIL", "FROM:<carol@gmail.example> RET=FULL REQUIRETLS")
        assert (code, text[:6]) == (530, b"5.7.10"), (code, text)
        code, text = client.docmd("MAIL", "FROM:<carol@gmail.example> RET=SOME")
        assert (code, text[:5]) == (501, b"5.5.4"), (code, text)
        code, _ = client.docmd("MAIL", "FROM:<carol@gmail.example> RET=HDRS ENVID=Track+2B42")
        assert code == 250
        code, text = client.docmd("RCPT", "TO:<fwd@example.test> NOTIFY=NEVER,SUCCESS")
        assert (code, text[:5]) == (501, b"5.5.4"), (code, text)
        code, text = client.docmd("RCPT", "TO:<fwd@example.test> ORCPT=Bob@remote.test")
        assert (code, text[:5]) == (501, b"5.5.4"), (code, text)
        code, text = client.docmd(
            "RCPT", "TO:<fwd@example.test> NOTIFY=success,failure ORCPT=rfc822;Fwd+40Example.test")
        assert code == 250, text
        code, text = client.data(b"Subject: dsn\r\n\r\nx\r\n")
        assert code == 250, text
    [entry] = entries(server)
    m, r = entry.message, entry.recipients[0].recipient
    assert (m.ret, m.envid) == ("HDRS", "Track+42")
    assert (r.notify, r.orcpt) == (frozenset({"SUCCESS", "FAILURE"}), "rfc822;Fwd@Example.test")
    shown = server.cli("queue", "show", m.queue_id).stdout
    assert "RET=HDRS ENVID=Track+42" in shown and "NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;Fwd@Example.test" in shown
    # over TLS, REQUIRETLS is offered and stored
    with submission(server) as client:
        assert client.has_extn("requiretls") and client.has_extn("dsn")
        code, _ = client.docmd("MAIL", f"FROM:<{ALICE}> REQUIRETLS")
        assert code == 250
        assert client.rcpt("bob@remote.test")[0] == 250
        assert client.data(BODY)[0] == 250
    assert any(e.message.requiretls for e in entries(server))


def test_queue_commands(server: PymailServer) -> None:
    assert server.cli("queue", "list").stdout.strip() == "the queue is empty"
    with submission(server) as client:
        client.sendmail(ALICE, ["bob@remote.test"], BODY)
    [entry] = entries(server)
    queue_id = entry.message.queue_id
    # The commands work on the index whether pymail runs or not; stopped, its queue
    # runner (which would lease the recipient for its attempts) leaves the counts alone.
    assert server.stop() == 0
    assert "1 recipient(s) due now" in server.cli("queue", "retry", queue_id).stdout
    assert "1 recipient(s) due now" in server.cli("queue", "flush").stdout
    missing = server.cli("queue", "show", "NOSUCHID", check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr and "Traceback" not in missing.stderr
    assert server.cli("queue", "retry", "NOSUCHID", check=False).returncode == 1
    assert server.cli("queue", "delete", "NOSUCHID", check=False).returncode == 1
    assert server.cli("queue", check=False).returncode == 2  # usage
    assert "deleted" in server.cli("queue", "delete", queue_id).stdout
    assert entries(server) == []


def test_postgres_outage_between_rcpt_and_data_leaves_neither(
        tmp_path: Path, s3_service, request: pytest.FixtureRequest) -> None:
    """The outage trick of test_outages.py: the recipients are routed, then PostgreSQL
    stops; the blobs reach S3 but the one index transaction cannot commit: 451, and once
    the database is back neither the local copy nor the queue entry exists."""
    from tests.e2e.test_outages import storage_toml
    from tests.services.postgres import start_postgres_service

    own_pg = start_postgres_service()
    request.addfinalizer(own_pg.stop)
    dsn = own_pg.create_database_sync("qout")
    bucket = s3_service.unique_bucket("qout")
    s3_service.create_bucket(bucket)
    srv = PymailServer(tmp_path, storage_config=storage_toml(dsn, s3_service, bucket,
                                                             tmp_path / "secret"),
                       submission=True, extra_config=dead_dns())
    srv.add_user(ALICE)
    srv.add_user(CAROL)
    srv.start()
    try:
        with submission(srv) as client:
            client.mail(ALICE)
            assert client.rcpt(CAROL)[0] == 250
            assert client.rcpt("bob@remote.test")[0] == 250
            own_pg.stop_server(mode="immediate")
            code, text = client.data(BODY)
            assert (code, text[:5]) == (451, b"4.3.0"), (code, text)
        own_pg.start_server()
        assert srv.inbox(CAROL) == []
        assert entries(srv) == []
    finally:
        srv.stop()
