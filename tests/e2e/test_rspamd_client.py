"""pymail's Rspamd client (pymail.checks.rspamd) and spam trainer (pymail.checks.training)
against a real Rspamd (tests/services/rspamd.py) asking the tests' NSD, with its
controller on and its Bayes statistics in a private Redis (tests/services/redis.py).

* Verdicts: clean mail -> ``no action`` (SPF found in NSD: the metadata headers arrive);
  GTUBE -> ``reject``; the add-header and rewrite-subject test patterns -> those actions
  (the rewritten subject, the milter headers); a spooled message is streamed from its
  file.
* Outages: Rspamd stopped, a server answering garbage or nothing -> `ScannerError`;
  Rspamd back -> verdicts again (same client, no restart).
* Learning: a family of spam and one of ham taught through the controller; then a new
  message of the spam family gets ``BAYES_SPAM``.  Already learned is done; a message
  too short is refused for good (`LearnRefused`); a wrong password or Redis down is an
  outage.  The trainer keeps a job while the controller is down and learns it once it
  is back.
* Training from the mailbox: over IMAP, a message moved or copied into Junk is learned
  as spam, one moved out of Junk to INBOX as ham, Junk -> Trash and INBOX -> Archive
  teach nothing (pymail.checks.training.JunkLearning on a real pymail worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from pymail.checks.results import ScannerError
from pymail.checks.rspamd import LearnRefused, RspamdClient, RspamdMeta
from pymail.app import Worker, prepare_spool, prepare_tls
from pymail.checks.training import JunkLearning, SpamTrainer
from pymail.config import load_config
from pymail.delivery.spool import MessageContent
from tests.internet import PYMAIL_ADDRESS, PYMAIL_HOSTNAME, default_zones
from tests.services.nsd import NsdService, start_nsd_service
from tests.services.redis import RedisService, start_redis_service
from tests.pymail_harness import PymailServer
from tests.services.rspamd import RspamdService

PASSWORD = "learn-secret"
ALICE = "alice@example.test"
TEST_PATTERN = b"JS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE = b"X" + TEST_PATTERN  #: reject
ADD_HEADER = b"Y" + TEST_PATTERN  #: add header
REWRITE_SUBJECT = b"Z" + TEST_PATTERN  #: rewrite subject
META = RspamdMeta(ip=PYMAIL_ADDRESS, helo=PYMAIL_HOSTNAME, hostname=PYMAIL_HOSTNAME,
                  mail_from="alice@example.test", rcpts=["bob@remote.test", "carol@remote.test"],
                  queue_id="Q1", tls_cipher="TLS_AES_256_GCM_SHA384", tls_version="TLSv1.3")

SPAM_WORDS = ("cheap viagra pills pharmacy discount offer limited casino bonus winner "
              "lottery prize claim crypto investment guaranteed profit rolex replica "
              "weight loss miracle cure refinance mortgage credit approved urgent").split()
HAM_WORDS = ("meeting agenda quarterly report budget review project schedule deadline "
             "release notes deployment database migration backup server maintenance "
             "invoice attached regards colleague conference minutes draft proposal").split()


def message(subject: str, body: bytes | str, *, msgid: str | None = None) -> bytes:
    if isinstance(body, str):
        body = body.encode()
    msgid = msgid or f"{time.monotonic_ns()}.{random.randrange(10**9)}@example.test"
    return (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
            b"Subject: " + subject.encode() + b"\r\nDate: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
            b"Message-ID: <" + msgid.encode() + b">\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body + b"\r\n")


def family(words: list[str], seed: int, n: int = 60) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(words) for _ in range(n))


def content(raw: bytes) -> MessageContent:
    return MessageContent(size=len(raw), key="k", data=raw)


@pytest.fixture(scope="module")
def nsd() -> Iterator[NsdService]:
    service = start_nsd_service(default_zones())
    yield service
    service.stop()


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisService]:
    service = start_redis_service()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def rspamd(nsd: NsdService, redis: RedisService) -> Iterator[RspamdService]:
    service = RspamdService(nsd.port, controller=True, controller_password=PASSWORD,
                            redis=redis.address, bayes_min_learns=5,
                            milter_headers=("x-spam-status", "x-rspamd-queue-id"))
    service.start()
    yield service
    service.stop()


@pytest.fixture
def running(rspamd: RspamdService, redis: RedisService) -> Iterator[RspamdService]:
    """The module's Rspamd, started again after a test that stopped it."""
    yield rspamd
    if redis.proc is None:
        redis.start_server()
    if rspamd.proc is None:
        rspamd.start_server()


def client_for(rspamd: RspamdService, **kwargs) -> RspamdClient:
    return RspamdClient(rspamd.url, controller_url=rspamd.controller_url, password=PASSWORD, **kwargs)


def run(coro):
    return asyncio.run(coro)


async def scan(client: RspamdClient, raw: bytes | MessageContent, meta: RspamdMeta = META):
    try:
        return await client.check(raw if isinstance(raw, MessageContent) else content(raw), meta)
    finally:
        await client.close()


# -- verdicts ----------------------------------------------------------------------------------


def test_clean_mail_is_no_action_and_the_metadata_arrives(running: RspamdService) -> None:
    verdict = run(scan(client_for(running), message("lunch", "Shall we meet for lunch at noon?")))
    assert verdict.action == "no action", verdict
    assert verdict.score < verdict.required_score
    assert verdict.required_score > 0
    # IP and From went through: SPF "mx -all" for example.test, looked up in NSD
    assert "R_SPF_ALLOW" in verdict.symbols, verdict
    # so did Hostname: no HFILTER_HOSTNAME_UNKNOWN (+2.5)
    assert "HFILTER_HOSTNAME_UNKNOWN" not in verdict.symbols, verdict
    assert verdict.subject is None


def test_no_hostname_is_sent_as_unknown(running: RspamdService) -> None:
    meta = RspamdMeta(ip=PYMAIL_ADDRESS, helo=PYMAIL_HOSTNAME, mail_from="alice@example.test",
                      rcpts=["bob@remote.test"])
    verdict = run(scan(client_for(running), message("lunch", "Shall we meet for lunch at noon?"), meta))
    assert "HFILTER_HOSTNAME_UNKNOWN" in verdict.symbols, verdict


def test_symbols_come_highest_score_first(running: RspamdService) -> None:
    meta = RspamdMeta(ip="127.0.0.9", helo="[127.0.0.9]", mail_from="alice@example.test",
                      rcpts=["bob@remote.test"])
    raw = message("x", "hello", msgid="order@example.test")
    verdict = run(scan(client_for(running), raw, meta))
    # the same scan through the test service's own client, which keeps the scores
    plain = running.check(raw, ip=meta.ip, helo=meta.helo, mail_from=meta.mail_from, rcpt=meta.rcpts)
    scores = {name: info["score"] for name, info in plain.symbols.items()}
    assert set(verdict.symbols) == set(scores) and len(scores) > 3
    assert list(verdict.symbols) == sorted(scores, key=lambda name: (-scores[name], name))
    assert scores[verdict.symbols[0]] > 0 > scores[verdict.symbols[-1]] or scores[verdict.symbols[-1]] <= 0
    assert "R_SPF_FAIL" in verdict.symbols  # 127.0.0.9 is not example.test's MX


def test_gtube_is_rejected(running: RspamdService) -> None:
    verdict = run(scan(client_for(running), message("t", GTUBE)))
    assert verdict.action == "reject", verdict
    assert verdict.symbols == ("GTUBE",)
    assert verdict.smtp_message == "Gtube pattern"


def test_the_add_header_pattern(running: RspamdService) -> None:
    verdict = run(scan(client_for(running), message("t", ADD_HEADER)))
    assert verdict.action == "add header", verdict
    assert verdict.symbols == ("GTUBE",)
    assert verdict.subject is None


def test_milter_headers_to_add_and_remove(running: RspamdService) -> None:
    # not on a test pattern: GTUBE and its siblings skip every module, milter_headers too
    verdict = run(scan(client_for(running), message("lunch", "Shall we meet for lunch at noon?")))
    headers = dict(verdict.add_headers)
    assert headers["X-Spam-Status"].startswith("No, score="), verdict.add_headers
    assert headers["X-Rspamd-Queue-Id"] == "Q1"
    assert "X-Spam-Status" in verdict.remove_headers  # replaced, not doubled


def test_the_rewrite_subject_pattern(running: RspamdService) -> None:
    verdict = run(scan(client_for(running), message("t", REWRITE_SUBJECT)))
    assert verdict.action == "rewrite subject", verdict
    assert verdict.subject == "*** SPAM *** t"


def test_a_spooled_message_is_streamed_from_its_file(running: RspamdService, tmp_path: Path) -> None:
    # GTUBE is looked for in small text parts: a short one, then a 2 MB attachment
    attachment = b"".join(b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2\r\n"
                          for _ in range(32000))
    raw = (b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: big\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain\r\n\r\n" + GTUBE + b"\r\n"
           b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + attachment + b"--b1--\r\n")
    path = tmp_path / "msg-spooled"
    path.write_bytes(raw)
    assert len(raw) > 2_000_000
    verdict = run(scan(client_for(running), MessageContent(size=len(raw), key="k", path=path)))
    assert verdict.action == "reject", verdict


def test_ping(running: RspamdService) -> None:
    async def go() -> None:
        client = client_for(running)
        try:
            await client.ping()
        finally:
            await client.close()

    run(go())


# -- outages -------------------------------------------------------------------------------------


def test_rspamd_stopped_is_a_scanner_error_and_back_is_verdicts_again(running: RspamdService) -> None:
    async def go() -> None:
        client = client_for(running, timeout=5)
        try:
            assert (await client.check(content(message("t", GTUBE)), META)).action == "reject"
            running.stop_server()
            with pytest.raises(ScannerError, match="rspamd http://127.0.0.1") as exc:
                await client.check(content(message("t", GTUBE)), META)
            assert "\n" not in str(exc.value)
            with pytest.raises(ScannerError):
                await client.ping()
            running.start_server()  # not in a thread: its death signal would follow the thread
            assert (await client.check(content(message("t", GTUBE)), META)).action == "reject"
        finally:
            await client.close()

    run(go())


async def _garbage_server(answers: dict[str, web.StreamResponse | None],
                          release: asyncio.Event) -> tuple[web.AppRunner, str]:
    """A loopback HTTP server answering each path with a canned response (None: not
    before `release` is set)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        answer = answers[request.path]
        if answer is None:
            await release.wait()
            return web.Response(status=500)
        return answer

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("answer, reason", [
    (lambda: web.Response(text="hello"), "no JSON"),
    (lambda: web.json_response({"score": 1.0}), "no known action"),
    (lambda: web.json_response({"action": "deliver happily"}), "no known action"),
    (lambda: web.json_response(["no action"]), "not an object"),
    (lambda: web.Response(status=503, text="busy"), "HTTP 503"),
    (lambda: None, "no answer within 0.5 s"),
], ids=["text", "no-action", "unknown-action", "json-list", "503", "silence"])
def test_garbage_or_silence_is_a_scanner_error(answer, reason: str) -> None:
    async def go() -> None:
        release = asyncio.Event()
        runner, url = await _garbage_server({"/checkv2": answer(), "/ping": web.Response(text="hello")},
                                            release)
        client = RspamdClient(url, timeout=0.5, controller_url=url)
        try:
            with pytest.raises(ScannerError, match=reason) as exc:
                await client.check(content(message("t", "hi")), META)
            assert "\n" not in str(exc.value)
            with pytest.raises(ScannerError, match="hello"):
                await client.ping()
        finally:
            await client.close()
            release.set()
            await runner.cleanup()

    run(go())


# -- learning ----------------------------------------------------------------------------------------


def test_bayes_learns_a_family_of_spam_and_knows_it_again(running: RspamdService, redis: RedisService) -> None:
    redis.flush()
    n = 10  # bayes_min_learns is 5 in this Rspamd (stock: 200)

    async def go() -> None:
        client = client_for(running)
        try:
            for i in range(n):
                await client.learn("spam", message("Exclusive offer " + str(i), family(SPAM_WORDS, i)))
                await client.learn("ham", message("Project status " + str(i), family(HAM_WORDS, 100 + i)))
            started = time.monotonic()
            verdict = await client.check(content(message("Exclusive offer", family(SPAM_WORDS, 999))), META)
            assert "BAYES_SPAM" in verdict.symbols, verdict
            ham = await client.check(content(message("Project status", family(HAM_WORDS, 998))), META)
            assert "BAYES_HAM" in ham.symbols, ham
            assert time.monotonic() - started < 10
        finally:
            await client.close()

    run(go())


def test_learning_twice_is_done_and_too_short_is_refused(running: RspamdService) -> None:
    async def go() -> None:
        client = client_for(running)
        raw = message("once", family(SPAM_WORDS, 4242))
        try:
            await client.learn("spam", raw)
            await client.learn("spam", raw)  # 208 "has been already learned as spam": done
            with pytest.raises(LearnRefused, match="204"):
                await client.learn("ham", message("x", "too short"))
        finally:
            await client.close()

    run(go())


def test_a_wrong_password_or_redis_down_is_an_outage(running: RspamdService, redis: RedisService) -> None:
    async def go() -> None:
        wrong = RspamdClient(running.url, controller_url=running.controller_url, password="nope")
        client = client_for(running)
        try:
            with pytest.raises(ScannerError, match="401") as exc:
                await wrong.learn("spam", message("a", family(SPAM_WORDS, 1)))
            assert not isinstance(exc.value, LearnRefused)
            redis.stop_server()
            with pytest.raises(ScannerError) as exc:
                await client.learn("spam", message("b", family(SPAM_WORDS, 2)))
            assert not isinstance(exc.value, LearnRefused)
        finally:
            await wrong.close()
            await client.close()

    run(go())


def test_the_trainer_keeps_a_job_while_the_controller_is_down(running: RspamdService) -> None:
    blobs = {"spam-1": message("Exclusive offer", family(SPAM_WORDS, 5150)),
             "ham-1": message("Project status", family(HAM_WORDS, 5151))}

    async def load(key: str) -> bytes:
        return blobs[key]

    async def go() -> None:
        client = client_for(running, timeout=3)
        trainer = SpamTrainer(client, load, first_retry=0.2, max_retry=1.0)
        trainer.start()
        try:
            running.stop_server()
            trainer.submit("spam", "spam-1")
            trainer.submit("ham", "ham-1")
            deadline = time.monotonic() + 10
            while trainer.failing is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert trainer.failing is not None and "rspamd" in trainer.failing
            await asyncio.sleep(1.0)  # a few retries
            assert trainer.pending == 2 and trainer.learned == 0
            running.start_server()  # not in a thread: its death signal would follow the thread
            await asyncio.wait_for(trainer.idle(), 15)
            assert (trainer.learned, trainer.dropped, trainer.failing) == (2, 0, None)
        finally:
            await trainer.stop()
            await client.close()

    run(go())


# -- the IMAP side: COPY/MOVE into and out of Junk -------------------------------------------


def test_moving_into_and_out_of_junk_over_imap_teaches_rspamd(
        running: RspamdService, redis: RedisService, tmp_path: Path) -> None:
    """A real pymail worker (in this process, so that the test can hang the trainer on
    it as pymail.app will) and a real IMAP client over TLS."""
    redis.flush()
    server = PymailServer(tmp_path, imaps=True)
    server.add_user(ALICE)
    config = load_config(server.config_path)
    prepare_spool(config)
    prepare_tls(config)
    spam = message("Exclusive offer", family(SPAM_WORDS, 7001), msgid="spam-7001@example.test")
    ham = message("Project status", family(HAM_WORDS, 7002), msgid="ham-7002@example.test")
    other = message("Exclusive offer", family(SPAM_WORDS, 7003), msgid="spam-7003@example.test")

    def imap_session() -> None:
        client = server.imaps_client(ALICE)
        try:
            for raw in (spam, ham, other):
                assert client.append("INBOX", None, None, raw)[0] == "OK"
            client.select("INBOX")
            assert client.uid("MOVE", "1", "Junk")[0] == "OK"  # spam -> learned as spam
            assert client.uid("COPY", "2:3", "Junk")[0] == "OK"  # both learned as spam
            assert client.uid("COPY", "2", "Archive")[0] == "OK"  # nothing learned
            client.select("Junk")  # UIDs 1 (spam), 2 (ham), 3 (other)
            assert client.uid("MOVE", "2", "INBOX")[0] == "OK"  # ham: learned as ham
            assert client.uid("MOVE", "3", "Trash")[0] == "OK"  # thrown away: nothing
            client.logout()
        finally:
            with contextlib.suppress(Exception):
                client.shutdown()

    async def go() -> None:
        client = client_for(running)
        worker = Worker(config)
        trainer = SpamTrainer(client, lambda key: worker.store.blobs.get(key))
        worker.copy_observer = JunkLearning(trainer)
        trainer.start()
        try:
            await worker.start()
            await asyncio.to_thread(imap_session)
            await asyncio.wait_for(trainer.idle(), 20)
        finally:
            await trainer.stop()
            await worker.stop()
            await client.close()
        assert (trainer.learned, trainer.dropped) == (4, 0)

    mark = running.learned()
    run(go())
    # Rspamd's own word, from its log: what it learned, in order
    assert running.learned()[len(mark):] == [
        ("spam", "spam-7001@example.test"),  # INBOX -> Junk (MOVE)
        ("spam", "ham-7002@example.test"),  # INBOX -> Junk (COPY)
        ("spam", "spam-7003@example.test"),
        ("ham", "ham-7002@example.test"),  # Junk -> INBOX (MOVE)
    ]
