"""The pure parts of pymail.checks.rspamd and pymail.checks.training: the verdict parser
(every ``milter.add_headers`` shape Rspamd sends), the metadata headers, which mailbox
move teaches what, and the trainer's queue (retry, drop, bound) with a scripted learner.
The real Rspamd: tests/e2e/test_rspamd_client.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from pymail.checks.results import ScannerError
from pymail.checks.rspamd import LearnRefused, RspamdMeta, parse_verdict
from pymail.checks.training import JunkLearning, SpamTrainer, learn_kind
from pymail.store import Mailbox
from pymail.store.interfaces import NotFound


def box(name: str, special_use: str | None = None) -> Mailbox:
    return Mailbox(id=hash(name) & 0xFFFF, user_id=1, name=name, special_use=special_use,
                   uidvalidity=1, uidnext=1, highestmodseq=1, subscribed=True)


INBOX, JUNK, TRASH = box("INBOX"), box("Junk", "\\Junk"), box("Trash", "\\Trash")
ARCHIVE, FOLDER = box("Archive", "\\Archive"), box("Work/Projects")


# -- the verdict ------------------------------------------------------------------------------


def test_a_full_answer() -> None:
    verdict = parse_verdict({
        "action": "add header", "score": 7.5, "required_score": 15, "subject": None,
        "symbols": {"A": {"score": 1.0}, "B": {"score": 5.5}, "C": {"score": -1},
                    "D": {"score": 1.0}, "E": {}},
        "messages": {"smtp_message": "Spam"},
        "milter": {
            "add_headers": {
                "X-Spam": "Yes",
                "X-Spam-Status": {"value": "Yes, score=7.5", "order": 0},
                "X-Two": [{"value": "one", "order": 0}, "two", {"order": 1}],
                "X-Bad": 7,
            },
            "remove_headers": {"X-Spam": 0, "X-Spam-Status": 1},
        },
    })
    assert verdict.action == "add header"
    assert (verdict.score, verdict.required_score) == (7.5, 15.0)
    assert verdict.symbols == ("B", "A", "D", "E", "C")  # score descending, then name
    assert verdict.smtp_message == "Spam" and verdict.subject is None
    assert verdict.add_headers == (("X-Spam", "Yes"), ("X-Spam-Status", "Yes, score=7.5"),
                                   ("X-Two", "one"), ("X-Two", "two"))
    assert verdict.remove_headers == ("X-Spam", "X-Spam-Status")


def test_a_header_value_cannot_smuggle_a_line() -> None:
    verdict = parse_verdict({"action": "add header",
                             "milter": {"add_headers": {"X-A": "yes\r\nBcc: evil@example.test"}}})
    assert verdict.add_headers == (("X-A", "yes Bcc: evil@example.test"),)


def test_the_smallest_answers() -> None:
    assert parse_verdict({"action": "no action"}).symbols == ()
    verdict = parse_verdict({"action": "rewrite subject", "subject": "*** SPAM *** t",
                             "milter": {"remove_headers": ["X-Spam"]}})
    assert verdict.subject == "*** SPAM *** t" and verdict.remove_headers == ("X-Spam",)


@pytest.mark.parametrize("data", [
    {}, {"action": "deliver"}, {"action": None}, {"action": 3}, [], "no action", None,
])
def test_no_known_action_is_an_outage(data) -> None:
    with pytest.raises(ScannerError):
        parse_verdict(data)


# -- the metadata ------------------------------------------------------------------------------


def test_the_headers_rspamd_is_told() -> None:
    meta = RspamdMeta(ip="192.0.2.1", helo="mx.example.test", hostname="mx.example.test",
                      mail_from="a@example.test", rcpts=["b@example.test", "c@example.test"],
                      queue_id="Q1", user="a@example.test", tls_cipher="TLS_AES_128_GCM_SHA256",
                      tls_version="TLSv1.3")
    assert meta.headers() == [
        ("IP", "192.0.2.1"), ("From", "a@example.test"), ("Helo", "mx.example.test"),
        ("Hostname", "mx.example.test"), ("Rcpt", "b@example.test"), ("Rcpt", "c@example.test"),
        ("Queue-Id", "Q1"), ("User", "a@example.test"), ("TLS-Cipher", "TLS_AES_128_GCM_SHA256"),
        ("TLS-Version", "TLSv1.3"),
    ]


def test_what_is_left_out() -> None:
    headers = RspamdMeta(ip="192.0.2.1", helo="bad\r\nPass: all").headers()
    # a bounce is "<>"; no Hostname (unknown), no User, no TLS; never "Pass"
    assert headers == [("IP", "192.0.2.1"), ("From", "<>"), ("Helo", "bad Pass: all")]


# -- which move teaches what ---------------------------------------------------------------------


@pytest.mark.parametrize("source, target, kind", [
    (INBOX, JUNK, "spam"), (FOLDER, JUNK, "spam"), (TRASH, JUNK, "spam"), (ARCHIVE, JUNK, "spam"),
    (JUNK, INBOX, "ham"), (JUNK, FOLDER, "ham"), (JUNK, ARCHIVE, "ham"),
    (JUNK, TRASH, None), (JUNK, JUNK, None), (INBOX, TRASH, None), (INBOX, ARCHIVE, None),
    (TRASH, INBOX, None),
])
def test_learn_kind(source: Mailbox, target: Mailbox, kind: str | None) -> None:
    assert learn_kind(source, target) == kind
    assert JunkLearning(SpamTrainer(Learner(), load)).wants(source, target) is (kind is not None)


# -- the trainer -------------------------------------------------------------------------------------


class Learner:
    """Scripted: raises the queued exceptions in turn, then learns."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.learned: list[tuple[str, bytes]] = []

    async def learn(self, kind: str, message: bytes) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.learned.append((kind, message))


async def load(key: str) -> bytes:
    if key.startswith("gone"):
        raise NotFound(key)
    return key.encode()


def test_a_job_survives_outages_and_is_learned_once_back() -> None:
    async def go() -> None:
        learner = Learner(ScannerError("down"), ScannerError("still down"))
        trainer = SpamTrainer(learner, load, first_retry=0.01, max_retry=0.02)
        trainer.submit("spam", "m1")
        trainer.submit("ham", "m2")
        trainer.start()
        await asyncio.wait_for(trainer.idle(), 5)
        await trainer.stop()
        assert learner.learned == [("spam", b"m1"), ("ham", b"m2")]
        assert (trainer.learned, trainer.dropped, trainer.failing) == (2, 0, None)

    asyncio.run(go())


def test_gone_and_refused_are_dropped_not_retried() -> None:
    async def go() -> None:
        learner = Learner(LearnRefused("too few tokens"))
        trainer = SpamTrainer(learner, load, first_retry=10, max_retry=10)
        trainer.start()
        for key in ("short", "gone-1", "m3"):
            trainer.submit("spam", key)
        await asyncio.wait_for(trainer.idle(), 2)  # no 10 s retry wait
        await trainer.stop()
        assert learner.learned == [("spam", b"m3")]
        assert (trainer.learned, trainer.dropped) == (1, 2)

    asyncio.run(go())


def test_the_queue_is_bounded_and_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        learner = Learner()
        trainer = SpamTrainer(learner, load, max_pending=3)
        with caplog.at_level(logging.WARNING, "pymail.checks.training"):
            for i in range(5):
                trainer.submit("spam", f"m{i}")
            trainer.submit("eggs", "m9")  # unknown kind: a log line, nothing queued
        assert trainer.pending == 3 and trainer.dropped == 2
        trainer.start()
        await asyncio.wait_for(trainer.idle(), 2)
        await trainer.stop()
        assert [m for _, m in learner.learned] == [b"m2", b"m3", b"m4"]

    asyncio.run(go())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("dropped the oldest" in w for w in warnings) == 2
    assert any("unknown kind" in w for w in warnings)


def test_stop_keeps_the_job_in_hand_for_a_later_start() -> None:
    async def go() -> None:
        learner = Learner(ScannerError("down"))
        trainer = SpamTrainer(learner, load, first_retry=60)
        trainer.start()
        trainer.submit("spam", "m1")
        while trainer.failing is None:
            await asyncio.sleep(0.01)
        await trainer.stop()
        assert trainer.pending == 1
        trainer.first_retry = 0.01
        trainer.start()
        await asyncio.wait_for(trainer.idle(), 2)
        await trainer.stop()
        assert learner.learned == [("spam", b"m1")]

    asyncio.run(go())


def test_submit_never_raises_and_never_waits() -> None:
    trainer = SpamTrainer(Learner(), load)  # no loop running, never started
    trainer.submit("spam", "m1")
    trainer.submit(None, None)  # type: ignore[arg-type]
    assert trainer.pending == 1
