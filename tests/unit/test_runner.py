"""The queue runner (pymail.delivery.runner) on a real SQLite store and the real pipeline.

The remote side is a scripted `RemoteSender` (our own seam between the runner and
pymail.delivery.remote, whose own tests speak SMTP to real servers): it answers each
recipient from a table and records what it was given.  The DSN builder is a recording
stand-in for pymail.mail.dsn (built and tested on its own): these tests check what the
runner decides -- statuses, retry times, which notices go out with which fields -- and
that each notice reaches the sender's INBOX through `Pipeline.submit_dsn`."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from pymail.config.schema import Config
from pymail.delivery.attempt import Attempt
from pymail.delivery.pipeline import Pipeline
from pymail.delivery.router import Router
from pymail.delivery.runner import QueueRunner, diagnostic, dsn_status
from pymail.store import Delivery, StorageError, open_store
from pymail.store.queue import (
    QueuedMessage,
    QueuedRecipient,
    RecipientState,
    RecipientStatus,
)

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)
S = RecipientStatus
CONTENT = b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: hi\r\n\r\nhello\r\n"


class Clock:
    """The runner's clock: stands still (the test moves it), or runs from T0 with real
    time when `live` (for tests of the loop that wait for it)."""

    def __init__(self) -> None:
        self.now = T0
        self.live_from: float | None = None

    def live(self) -> None:
        import time

        self.live_from = time.monotonic()

    def __call__(self) -> dt.datetime:
        if self.live_from is not None:
            import time

            return self.now + dt.timedelta(seconds=time.monotonic() - self.live_from)
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += dt.timedelta(**kw)


@dataclass
class Reply:
    code: int
    text: str
    enhanced: str | None = None
    permanent: bool | None = None
    dsn_passed: bool = False


class ScriptedSender:
    """Answers each recipient from `script[address]` (a list: one reply per attempt, the
    last one repeated); records every call."""

    def __init__(self, script: dict[str, list[Reply]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[tuple[str, list[str]]] = []
        self.contents: list[bytes] = []
        self.gate: asyncio.Event | None = None  #: when set: every send waits for it
        self.running = 0
        self.peak = 0
        self.peak_by_domain: dict[str, int] = {}
        self._by_domain: dict[str, int] = {}
        self.closed = False

    async def send(self, message: QueuedMessage, recipients: Sequence[RecipientState],
                   content: bytes) -> list[Attempt]:
        domain = recipients[0].recipient.domain
        assert all(r.recipient.domain == domain for r in recipients)
        self.calls.append((message.queue_id, [r.recipient.address for r in recipients]))
        self.contents.append(content)
        self.running += 1
        self._by_domain[domain] = self._by_domain.get(domain, 0) + 1
        self.peak = max(self.peak, self.running)
        self.peak_by_domain[domain] = max(self.peak_by_domain.get(domain, 0), self._by_domain[domain])
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await asyncio.sleep(0)
        finally:
            self.running -= 1
            self._by_domain[domain] -= 1
        out = []
        for r in recipients:
            replies = self.script.get(r.recipient.address) or [Reply(250, "2.0.0 Ok: queued as X")]
            reply = replies.pop(0) if len(replies) > 1 else replies[0]
            permanent = reply.permanent if reply.permanent is not None else reply.code >= 500
            out.append(Attempt(r.id, reply.code, reply.text, enhanced=reply.enhanced,
                               remote_host="mx.remote.test[127.0.0.2]", permanent=permanent,
                               tls="TLSv1.3 unverified", dsn_passed=reply.dsn_passed))
        return out

    async def close(self) -> None:
        self.closed = True


@dataclass(frozen=True)
class FakeDsnRecipient:  # the contract's DsnRecipient (common.md)
    address: str
    orcpt: str | None
    action: str
    status: str
    remote_mta: str | None
    diagnostic: str | None
    last_attempt: dt.datetime | None
    will_retry_until: dt.datetime | None = None


@dataclass
class RecordingDsn:
    """Stands in for pymail.mail.dsn: records each build, returns a small message."""

    DsnRecipient = FakeDsnRecipient
    built: list[dict] = field(default_factory=list)

    def build_dsn(self, **kw) -> bytes:
        self.built.append(kw)
        actions = ",".join(r.action for r in kw["recipients"])
        return (f"From: MAILER-DAEMON@{kw['reporting_mta']}\r\nTo: {kw['original_sender']}\r\n"
                f"Subject: DSN {actions}\r\nAuto-Submitted: auto-generated\r\n\r\nreport\r\n"
                ).encode()


class Harness:
    def __init__(self, store, pipeline, runner, sender, dsn, clock) -> None:
        self.store, self.pipeline, self.runner = store, pipeline, runner
        self.sender, self.dsn, self.clock = sender, dsn, clock

    @property
    def queue(self):
        return self.store.queue

    async def enqueue(self, queue_id: str, *recipients: QueuedRecipient | str,
                      sender: str = "alice@example.test", **fields) -> QueuedMessage:
        key = await self.store.blobs.put(CONTENT)
        rcpts = tuple(r if isinstance(r, QueuedRecipient) else QueuedRecipient(r, r.rpartition("@")[2])
                      for r in recipients)
        created = fields.pop("created_at", self.clock.now)
        message = QueuedMessage(queue_id=queue_id, blob_key=key, size=len(CONTENT), sender=sender,
                                recipients=rcpts, created_at=created,
                                expires_at=fields.pop("expires_at", created + dt.timedelta(days=5)),
                                **fields)
        await self.store.index.deliver(Delivery(key, len(CONTENT), created, "", (), queued=(message,)))
        return message

    async def round(self) -> None:
        """One claim and every delivery it started, to the end (DSNs included)."""
        await self.runner.run_once()
        await self.runner.drain()

    async def states(self, queue_id: str) -> dict[str, RecipientState]:
        entry = await self.queue.get(queue_id)
        assert entry is not None
        return {r.recipient.address: r for r in entry.recipients}

    async def inbox(self, address: str = "alice@example.test") -> list[bytes]:
        user = await self.store.directory.get_user(address)
        box = await self.store.index.get_mailbox(user.id, "INBOX")
        return [await self.store.blobs.get(m.blob_key)
                for m in await self.store.index.list_messages(box.id)]


def run(tmp_path: Path, test, *, script=None, delivery: dict | None = None, queue_wrapper=None,
        poll_seconds: float = 60.0, real_dsn: bool = False, content_budget: int | None = None) -> None:
    async def main() -> None:
        store = open_store(f"sqlite://{tmp_path / 'i.sqlite3'}", f"file://{tmp_path / 'blobs'}")
        await store.migrate()
        try:
            d = store.directory
            await d.add_domain("example.test")
            u = await d.add_user("alice@example.test", "{PLAIN}x")
            await store.index.ensure_default_mailboxes(u.id)
            config = Config.model_validate({"server": {"hostname": "mx.example.test",
                                                       "data_dir": str(tmp_path)},
                                            "delivery": delivery or {}})
            clock = Clock()
            pipeline = Pipeline(store=store, router=Router(d), signer=None, config=config, clock=clock)
            sender = ScriptedSender(script)
            dsn = RecordingDsn()
            queue = queue_wrapper(store.queue) if queue_wrapper else store.queue
            runner = QueueRunner(queue=queue, blobs=store.blobs, sender=sender, pipeline=pipeline,
                                 config=config, clock=clock, owner="node-a:1:test",
                                 rng=random.Random(1), dsn=None if real_dsn else dsn,
                                 poll_seconds=poll_seconds,
                                 **({} if content_budget is None else {"content_budget": content_budget}))
            await asyncio.wait_for(test(Harness(store, pipeline, runner, sender, dsn, clock)), 60)
        finally:
            await store.close()

    asyncio.run(main())


# --------------------------------------------------------------------------- results


def test_2xx_is_delivered_and_the_sender_hears_nothing(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "bob@remote.test")
        await h.round()
        bob = (await h.states("Q1"))["bob@remote.test"]
        assert (bob.status, bob.attempts, bob.reply_code, bob.reply_text, bob.remote_host) == (
            S.DELIVERED, 1, 250, "2.0.0 Ok: queued as X", "mx.remote.test[127.0.0.2]")
        assert bob.lease_owner is None and bob.last_attempt == T0
        assert h.sender.calls == [("Q1", ["bob@remote.test"])]
        assert h.sender.contents == [CONTENT]
        assert h.dsn.built == [] and await h.inbox() == []

    run(tmp_path, test)


def test_5xx_fails_at_once_and_bounces_quoting_the_remote(tmp_path: Path) -> None:
    text = "5.1.1 <nobody@remote.test>: Recipient address rejected: User unknown"
    script = {"nobody@remote.test": [Reply(550, text, "5.1.1")]}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", QueuedRecipient("nobody@remote.test", "remote.test",
                                              orcpt="rfc822;nobody@remote.test"),
                        envid="ENV-1", ret="HDRS")
        await h.round()
        nobody = (await h.states("Q1"))["nobody@remote.test"]
        assert (nobody.status, nobody.attempts, nobody.reply_code, nobody.enhanced_code) == (
            S.FAILED, 1, 550, "5.1.1")
        [built] = h.dsn.built
        assert built["reporting_mta"] == "mx.example.test"
        assert built["original_sender"] == "alice@example.test"
        assert built["original"] == CONTENT
        assert (built["ret"], built["envid"], built["queue_id"]) == ("HDRS", "ENV-1", "Q1")
        assert built["arrival"] == T0 and built["size_limit"] == 50 * 1024
        assert built["recipients"] == [FakeDsnRecipient(
            address="nobody@remote.test", orcpt="rfc822;nobody@remote.test", action="failed",
            status="5.1.1", remote_mta="mx.remote.test", diagnostic="550 " + text,
            last_attempt=T0)]
        [bounce] = await h.inbox()
        assert b"Subject: DSN failed" in bounce
        assert bounce.startswith(b"Return-Path: <>\r\n")  # MAIL FROM:<> (submit_dsn)
        await h.round()  # a final result is never tried again
        assert len(h.sender.calls) == 1

    run(tmp_path, test, script=script)


def test_4xx_stays_queued_with_a_doubling_retry(tmp_path: Path) -> None:
    script = {"bob@remote.test": [Reply(451, "4.7.1 Try again later", "4.7.1")] * 3
              + [Reply(250, "2.0.0 Ok")]}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "bob@remote.test")
        waits = []
        for n in range(1, 4):
            before = h.clock.now
            await h.round()
            bob = (await h.states("Q1"))["bob@remote.test"]
            assert (bob.status, bob.attempts, bob.reply_code, bob.reply_text) == (
                S.QUEUED, n, 451, "4.7.1 Try again later")
            assert bob.lease_owner is None
            waits.append((bob.next_attempt - before).total_seconds())
            await h.round()  # not due yet: nothing is sent
            assert len(h.sender.calls) == n
            h.clock.now = bob.next_attempt
        for n, wait in enumerate(waits):
            assert 300 * 2 ** n * 0.8 <= wait <= 300 * 2 ** n
        await h.round()
        assert (await h.states("Q1"))["bob@remote.test"].status is S.DELIVERED
        assert h.dsn.built == []  # default NOTIFY, under delay_warning: no notice

    run(tmp_path, test, script=script)


def test_a_temporary_failure_after_the_lifetime_expires_with_a_dsn(tmp_path: Path) -> None:
    text = "4.4.2 mx.remote.test: connection timed out"
    script = {"bob@remote.test": [Reply(0, text, "4.4.2")]}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "bob@remote.test", expires_at=T0 + dt.timedelta(minutes=3))
        await h.round()
        bob = (await h.states("Q1"))["bob@remote.test"]
        assert bob.status is S.QUEUED and bob.reply_code is None
        assert bob.next_attempt == T0 + dt.timedelta(minutes=3)  # one last try at the end
        h.clock.now = bob.next_attempt
        await h.round()
        bob = (await h.states("Q1"))["bob@remote.test"]
        assert (bob.status, bob.attempts) == (S.EXPIRED, 2)
        [built] = h.dsn.built
        [r] = built["recipients"]
        assert (r.action, r.status, r.diagnostic) == ("failed", "5.4.7", text)
        assert len(await h.inbox()) == 1

    run(tmp_path, test, script=script)


def test_partial_acceptance_is_recorded_per_recipient_one_dsn_per_event(tmp_path: Path) -> None:
    script = {
        "bob@remote.test": [Reply(250, "2.0.0 Ok")],
        "nobody@remote.test": [Reply(550, "5.1.1 nobody: User unknown", "5.1.1")],
        "ghost@remote.test": [Reply(550, "5.1.1 ghost: User unknown", "5.1.1")],
        "dave@other.test": [Reply(452, "4.2.2 Mailbox full", "4.2.2")],
    }

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "bob@remote.test", "nobody@remote.test", "ghost@remote.test",
                        "dave@other.test")
        await h.round()
        # one transaction per (domain, route)
        assert sorted(h.sender.calls) == [
            ("Q1", ["bob@remote.test", "nobody@remote.test", "ghost@remote.test"]),
            ("Q1", ["dave@other.test"])]
        states = await h.states("Q1")
        assert {a: s.status for a, s in states.items()} == {
            "bob@remote.test": S.DELIVERED, "nobody@remote.test": S.FAILED,
            "ghost@remote.test": S.FAILED, "dave@other.test": S.QUEUED}
        [built] = h.dsn.built  # one bounce for both failed recipients
        assert [(r.address, r.diagnostic) for r in built["recipients"]] == [
            ("nobody@remote.test", "550 5.1.1 nobody: User unknown"),
            ("ghost@remote.test", "550 5.1.1 ghost: User unknown")]
        assert len(await h.inbox()) == 1

    run(tmp_path, test, script=script)


def test_the_real_bounce_reaches_the_senders_inbox(tmp_path: Path) -> None:
    """With pymail.mail.dsn itself: the report alice gets, parsed with the email library."""
    import email
    import email.policy

    text = "5.1.1 <nobody@remote.test>: Recipient address rejected: User unknown in virtual mailbox table"
    script = {"nobody@remote.test": [Reply(550, text, "5.1.1")]}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "nobody@remote.test", "bob@remote.test", envid="ENV-7")
        await h.round()
        [raw] = await h.inbox()
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Return-Path"] == "<>"
        assert msg["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
        assert msg["To"].addresses[0].addr_spec == "alice@example.test"
        assert msg["Auto-Submitted"] == "auto-generated"
        assert msg["Subject"] == "Undelivered Mail Returned to Sender"
        assert msg.get_content_type() == "multipart/report"
        assert msg.get_param("report-type") == "delivery-status"
        human, status, headers = msg.get_payload()
        assert f"550 {text}" in human.get_content()
        per_message, per_recipient = status.get_payload()
        assert per_message["Reporting-MTA"] == "dns; mx.example.test"
        assert per_message["Original-Envelope-Id"] == "ENV-7"
        assert (per_recipient["Final-Recipient"], per_recipient["Action"], per_recipient["Status"],
                per_recipient["Remote-MTA"], per_recipient["Diagnostic-Code"]) == (
            "rfc822; nobody@remote.test", "failed", "5.1.1", "dns; mx.remote.test",
            f"smtp; 550 {text}")
        assert headers.get_content_type() == "text/rfc822-headers"
        assert "Subject: hi" in headers.get_payload()

    run(tmp_path, test, script=script, real_dsn=True)


def test_a_permanent_result_is_stored_before_the_dsn_is_built(tmp_path: Path) -> None:
    script = {"nobody@remote.test": [Reply(550, "5.1.1 unknown", "5.1.1")]}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "nobody@remote.test")
        seen = []
        build = h.dsn.build_dsn

        def build_after_checking(**kw):
            seen.append(kw)
            raise RuntimeError("builder bug")

        h.dsn.build_dsn = build_after_checking
        await h.round()  # a builder that fails does not undo or stop anything
        assert len(seen) == 1
        assert (await h.states("Q1"))["nobody@remote.test"].status is S.FAILED
        h.dsn.build_dsn = build

    run(tmp_path, test, script=script)


# --------------------------------------------------------------------------- NOTIFY


def _rcpt(address: str, *notify: str) -> QueuedRecipient:
    return QueuedRecipient(address, address.rpartition("@")[2], notify=frozenset(notify))


def test_notify_never_and_the_null_sender_get_no_bounce(tmp_path: Path) -> None:
    script = {a: [Reply(550, "5.1.1 unknown", "5.1.1")] for a in ("x@remote.test", "y@remote.test")}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", _rcpt("x@remote.test", "NEVER"))
        await h.enqueue("Q2", "y@remote.test", sender="")
        await h.round()
        assert (await h.states("Q1"))["x@remote.test"].status is S.FAILED
        assert (await h.states("Q2"))["y@remote.test"].status is S.FAILED
        assert h.dsn.built == [] and await h.inbox() == []

    run(tmp_path, test, script=script)


def test_notify_success_reports_relayed_only_when_the_next_hop_took_no_dsn(tmp_path: Path) -> None:
    script = {"plain@remote.test": [Reply(250, "2.0.0 Ok")],
              "dsn@dsn.test": [Reply(250, "2.0.0 Ok", dsn_passed=True)],
              "default@remote.test": [Reply(250, "2.0.0 Ok")]}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", _rcpt("plain@remote.test", "SUCCESS", "FAILURE"),
                        _rcpt("dsn@dsn.test", "SUCCESS"), "default@remote.test")
        await h.round()
        [built] = h.dsn.built
        [r] = built["recipients"]
        assert (r.address, r.action, r.status) == ("plain@remote.test", "relayed", "2.0.0")
        assert len(await h.inbox()) == 1

    run(tmp_path, test, script=script)


def test_one_delayed_notice_after_delay_warning(tmp_path: Path) -> None:
    temp = [Reply(451, "4.3.0 busy", "4.3.0")]
    script = {"a@remote.test": list(temp), "b@remote.test": list(temp),
              "c@remote.test": list(temp), "d@remote.test": list(temp)}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "a@remote.test", _rcpt("b@remote.test", "DELAY"),
                        _rcpt("c@remote.test", "FAILURE"), _rcpt("d@remote.test", "NEVER"),
                        created_at=T0 - dt.timedelta(hours=3, minutes=58))
        await h.round()  # 3 h 58 min: too early
        assert h.dsn.built == []
        h.clock.advance(minutes=10)
        await h.round()
        [built] = h.dsn.built
        assert [(r.address, r.action, r.status) for r in built["recipients"]] == [
            ("a@remote.test", "delayed", "4.3.0"), ("b@remote.test", "delayed", "4.3.0")]
        assert all(r.will_retry_until == T0 - dt.timedelta(hours=3, minutes=58) + dt.timedelta(days=5)
                   for r in built["recipients"])
        states = await h.states("Q1")
        assert {a: s.delay_notified for a, s in states.items()} == {
            "a@remote.test": True, "b@remote.test": True, "c@remote.test": False,
            "d@remote.test": False}
        h.clock.advance(hours=5)
        await h.round()
        assert len(h.dsn.built) == 1  # once
        assert len(await h.inbox()) == 1

    run(tmp_path, test, script=script, delivery={"retry_first": "1s", "retry_max": "2s"})


def test_dsn_status_keeps_the_remote_code_in_its_class() -> None:
    a = Attempt(1, 550, "x", enhanced="5.7.26")
    assert dsn_status(a, S.FAILED) == "5.7.26"
    assert dsn_status(Attempt(1, 550, "x", enhanced="4.1.1"), S.FAILED) == "5.1.1"
    assert dsn_status(Attempt(1, 554, "x"), S.FAILED) == "5.0.0"
    assert dsn_status(Attempt(1, 450, "x"), S.QUEUED) == "4.0.0"
    assert dsn_status(Attempt(1, 0, "x", enhanced="4.4.1"), S.EXPIRED) == "5.4.7"
    assert dsn_status(Attempt(1, 250, "x"), S.DELIVERED) == "2.0.0"


def test_the_diagnostic_quotes_a_multiline_reply_as_sent() -> None:
    state = RecipientState(1, QueuedRecipient("x@remote.test", "remote.test"), S.QUEUED, 0, T0)
    lines = "5.7.1 Rejected\n5.7.1 see https://remote.test/why"
    assert diagnostic(Attempt(1, 550, lines), state) == (
        "550-5.7.1 Rejected\n550 5.7.1 see https://remote.test/why")
    assert diagnostic(Attempt(1, 550, "5.1.1 unknown"), state) == "550 5.1.1 unknown"
    assert diagnostic(Attempt(1, 0, "connect to mx.remote.test: refused"), state) == (
        "connect to mx.remote.test: refused")
    kept = RecipientState(1, state.recipient, S.QUEUED, 3, T0, reply_code=451, reply_text="4.3.0 busy")
    assert diagnostic(Attempt(1, 0, ""), kept) == "451 4.3.0 busy"


# --------------------------------------------------------------------------- the loop


def test_stop_hands_back_the_leases_of_deliveries_in_progress(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        h.sender.gate = asyncio.Event()  # the remote never answers
        await h.enqueue("Q1", "bob@remote.test")
        h.runner.start()
        for _ in range(200):
            if h.sender.calls:
                break
            await asyncio.sleep(0.01)
        bob = (await h.states("Q1"))["bob@remote.test"]
        assert bob.lease_owner == "node-a:1:test"
        await h.runner.stop(grace=0.2)
        bob = (await h.states("Q1"))["bob@remote.test"]
        assert (bob.status, bob.attempts, bob.lease_owner) == (S.QUEUED, 0, None)
        assert bob.next_attempt <= h.clock.now  # due at once for the next run
        assert h.sender.closed

    run(tmp_path, test)


def test_a_queued_message_wakes_the_runner_at_once(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        h.pipeline.on_queued(h.runner.wake)
        h.runner.start()
        await asyncio.sleep(0.05)  # the runner now waits (poll: 60 s)
        from pymail.delivery.transaction import ClientFacts, Recipient, Transaction
        from pymail.delivery.spool import MessageContent
        import hashlib

        user = await h.store.directory.get_user("alice@example.test")
        txn = Transaction(queue_id="QW", sender="alice@example.test",
                          recipients=[Recipient("bob@remote.test")],
                          client=ClientFacts(service="submission", user=user), received_at=T0)
        targets = await h.pipeline.route(txn, txn.recipients[0])
        txn.message = MessageContent(size=len(CONTENT), key=hashlib.sha256(CONTENT).hexdigest(),
                                     data=CONTENT)
        started = asyncio.get_running_loop().time()
        await h.pipeline.deliver(txn, targets)
        while not h.sender.calls:
            await asyncio.sleep(0.001)
        assert asyncio.get_running_loop().time() - started < 0.5
        await h.runner.stop()
        assert (await h.states("QW"))["bob@remote.test"].status is S.DELIVERED

    run(tmp_path, test)


def test_per_domain_and_global_concurrency_limits_hold(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        h.clock.live()  # a group sent back for a full domain is due again 2 s later
        h.sender.gate = asyncio.Event()
        for n in range(8):
            await h.enqueue(f"B{n}", f"u{n}@big.test")
        for n in range(6):
            await h.enqueue(f"S{n}", f"u{n}@small{n}.test")
        h.runner.start()
        await asyncio.sleep(0.3)
        assert h.sender.peak_by_domain["big.test"] == 3  # per_domain
        assert h.sender.running == 5  # concurrency
        h.sender.gate.set()
        for _ in range(200):
            entries = await h.queue.list_entries(include_final=True)
            if all(r.status is S.DELIVERED for e in entries for r in e.recipients):
                break
            await asyncio.sleep(0.05)
        await h.runner.stop()
        assert h.sender.peak <= 5 and max(h.sender.peak_by_domain.values()) <= 3
        assert h.runner.peak_active <= 5
        entries = await h.queue.list_entries(include_final=True)
        states = [r for e in entries for r in e.recipients]
        assert len(states) == 14 and all(r.status is S.DELIVERED for r in states)
        # a group sent back because its domain was full did not count as an attempt
        assert all(r.attempts == 1 for r in states)

    run(tmp_path, test, delivery={"concurrency": 5, "per_domain": 3}, poll_seconds=0.05)


def test_the_messages_being_sent_hold_at_most_the_content_budget(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        h.sender.gate = asyncio.Event()
        for n in range(6):
            await h.enqueue(f"M{n}", f"u{n}@d{n}.test")
        h.runner.start()
        await asyncio.sleep(0.3)
        assert h.sender.running == 2  # 2 x len(CONTENT) fit in the budget, not 3
        h.sender.gate.set()
        for _ in range(200):
            entries = await h.queue.list_entries(include_final=True)
            if all(r.status is S.DELIVERED for e in entries for r in e.recipients):
                break
            await asyncio.sleep(0.05)
        await h.runner.stop()
        assert h.sender.peak == 2 and h.runner._budget.peak <= 2 * len(CONTENT)
        entries = await h.queue.list_entries(include_final=True)
        assert sum(r.status is S.DELIVERED for e in entries for r in e.recipients) == 6

    run(tmp_path, test, poll_seconds=0.05, content_budget=2 * len(CONTENT) + 10)


class FlakyQueue:
    """The real queue, whose first `failures` claims raise StorageError."""

    def __init__(self, inner, failures: int) -> None:
        self.inner, self.failures, self.claims = inner, failures, 0

    async def claim(self, **kw):
        self.claims += 1
        if self.claims <= self.failures:
            raise StorageError("database is locked")
        return await self.inner.claim(**kw)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_storage_error_backs_off_and_the_loop_goes_on(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "bob@remote.test")
        h.runner.start()
        for _ in range(400):
            if (await h.states("Q1"))["bob@remote.test"].status is S.DELIVERED:
                break
            await asyncio.sleep(0.01)
        await h.runner.stop()
        assert (await h.states("Q1"))["bob@remote.test"].status is S.DELIVERED
        assert h.runner.queue.claims >= 2

    run(tmp_path, test, queue_wrapper=lambda q: FlakyQueue(q, 1), poll_seconds=0.05)


class FlakyRecord:
    """The real queue, whose first `failures` records raise StorageError."""

    def __init__(self, inner, failures: int) -> None:
        self.inner, self.failures, self.records = inner, failures, 0

    async def record(self, owner, results):
        self.records += 1
        if self.records <= self.failures:
            raise StorageError("disk I/O error")
        return await self.inner.record(owner, results)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_result_that_cannot_be_stored_at_first_is_stored_on_a_retry(tmp_path: Path) -> None:
    script = {"nobody@remote.test": [Reply(550, "5.1.1 unknown", "5.1.1")]}

    async def test(h: Harness) -> None:
        await h.enqueue("Q1", "nobody@remote.test")
        await h.round()
        assert h.runner.queue.records == 2
        assert (await h.states("Q1"))["nobody@remote.test"].status is S.FAILED
        assert len(h.dsn.built) == 1

    run(tmp_path, test, script=script, queue_wrapper=lambda q: FlakyRecord(q, 1))


def test_an_attempt_is_cut_off_before_its_lease_ends(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        assert h.runner.send_timeout == 540.0  # lease 600 s, minus a minute
        h.runner.send_timeout = 0.2
        h.sender.gate = asyncio.Event()  # a tarpit: never answers
        await h.enqueue("Q1", "bob@remote.test")
        await h.round()
        bob = (await h.states("Q1"))["bob@remote.test"]
        assert (bob.status, bob.attempts, bob.lease_owner, bob.enhanced_code) == (
            S.QUEUED, 1, None, "4.4.2")
        assert bob.reply_text == "the attempt took longer than 0s"

    run(tmp_path, test)


def test_a_sender_that_raises_is_a_temporary_failure(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        async def broken(*args):
            raise RuntimeError("bug")

        h.sender.send = broken
        await h.enqueue("Q1", "bob@remote.test")
        await h.round()
        bob = (await h.states("Q1"))["bob@remote.test"]
        assert (bob.status, bob.attempts, bob.reply_text) == (
            S.QUEUED, 1, "internal error: RuntimeError")

    run(tmp_path, test)


def test_a_missing_blob_is_temporary_not_a_silent_drop(tmp_path: Path) -> None:
    async def test(h: Harness) -> None:
        message = await h.enqueue("Q1", "bob@remote.test")
        await h.store.blobs.delete(message.blob_key)
        await h.round()
        bob = (await h.states("Q1"))["bob@remote.test"]
        assert bob.status is S.QUEUED and "missing" in bob.reply_text
        assert h.sender.calls == []

    run(tmp_path, test)
