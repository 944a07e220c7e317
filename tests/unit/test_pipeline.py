"""The delivery pipeline (pymail.delivery.pipeline) over a real embedded store: who may
send where (route), what becomes durable (deliver: local copy, outbound copy without
Return-Path, queue rows with their DSN parameters), signing decisions, SRS for forwards
and back, and pymail's own DSNs.  The Signer is a recording stand-in for P3's DKIM
signer (its own tests are its own); everything else is the real thing."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from pathlib import Path

import pytest

from pymail.config.schema import Config
from pymail.delivery.pipeline import Pipeline, from_domain
from pymail.delivery.router import Router
from pymail.delivery.spool import MessageContent
from pymail.delivery.srs import SenderRewriter
from pymail.delivery.transaction import (
    ClientFacts,
    LocalTarget,
    Recipient,
    Rejection,
    RemoteTarget,
    Transaction,
)
from pymail.mail import trace
from pymail.store import NotFound, open_store

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)


class RecordingSigner:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes]] = []

    async def signature(self, message: MessageContent, domain: str) -> bytes | None:
        assert message.data is not None
        self.calls.append((domain, message.data))
        return f"DKIM-Signature: v=1; d={domain}; b=fake\r\n".encode()


def run(tmp_path: Path, test, *, relay_host: str | None = None) -> None:
    async def main() -> None:
        store = open_store(f"sqlite://{tmp_path / 'i.sqlite3'}", f"file://{tmp_path / 'blobs'}")
        await store.migrate()
        try:
            d = store.directory
            await d.add_domain("example.test")
            await d.add_domain("relay.test", transport="smtp:[127.0.0.5]:2525")
            for address in ("alice@example.test", "carol@example.test"):
                u = await d.add_user(address, "{PLAIN}x")
                await store.index.ensure_default_mailboxes(u.id)
            await d.add_alias("fwd@example.test", ["friend@remote.test", "carol@example.test"])
            config = Config.model_validate({"server": {"hostname": "mx.example.test",
                                                       "data_dir": str(tmp_path)},
                                            "delivery": {"relay_host": relay_host}})
            signer = RecordingSigner()
            pipeline = Pipeline(store=store, router=Router(d), signer=signer, config=config,
                                clock=lambda: T0, srs=SenderRewriter([b"test-secret"]))
            await test(store, pipeline, signer)
        finally:
            await store.close()

    asyncio.run(main())


def txn(sender: str, *, user=None, service: str = "smtp") -> Transaction:
    return Transaction(queue_id="ABCDEF0123", sender=sender, recipients=[],
                       client=ClientFacts(service=service, ip="192.0.2.1", user=user),
                       received_at=T0)


def content(data: bytes) -> MessageContent:
    return MessageContent(size=len(data), key=hashlib.sha256(data).hexdigest(), data=data)


BODY = b"From: Alice <alice@example.test>\r\nSubject: hi\r\n\r\nhello\r\n"


def test_route_who_may_send_where(tmp_path: Path) -> None:
    async def test(store, pipeline, signer) -> None:
        alice = await store.directory.get_user("alice@example.test")
        mx, sub = txn("carol@gmail.example"), txn("alice@example.test", user=alice,
                                                   service="submission")
        # a stranger on the MX: no relaying; our user on submission: queued
        refused = await pipeline.route(mx, Recipient("bob@remote.test"))
        assert isinstance(refused, Rejection) and refused.reply.startswith("554 5.7.1")
        assert await pipeline.route(sub, Recipient("bob@remote.test", notify=frozenset({"NEVER"}))) == [
            RemoteTarget("bob@remote.test", "remote.test", "mx", None, frozenset({"NEVER"}))]
        # a domain we relay for: from anyone, to its transport
        assert await pipeline.route(mx, Recipient("x@relay.test")) == [
            RemoteTarget("x@relay.test", "127.0.0.5", "smtp:127.0.0.5:2525")]
        # local users; unknown ones refused
        [local] = await pipeline.route(mx, Recipient("carol@example.test"))
        assert isinstance(local, LocalTarget)
        unknown = await pipeline.route(mx, Recipient("nobody@example.test"))
        assert isinstance(unknown, Rejection) and unknown.reply.startswith("550 5.1.1")
        # an alias outside, from a stranger: the local copy, and a forward with SRS and
        # ORCPT naming the alias
        targets = await pipeline.route(mx, Recipient("fwd@example.test"))
        remote = [t for t in targets if isinstance(t, RemoteTarget)]
        assert [type(t) for t in targets].count(LocalTarget) == 1 and len(remote) == 1
        (fwd,) = remote
        assert (fwd.address, fwd.domain, fwd.route, fwd.orcpt) == (
            "friend@remote.test", "remote.test", "mx", "rfc822;fwd@example.test")
        assert fwd.sender is not None and fwd.sender.startswith("SRS0=")
        assert fwd.sender.endswith("=gmail.example=carol@example.test")
        # our own sender is not rewritten (its SPF is ours)
        [_, own] = await pipeline.route(txn("alice@example.test"), Recipient("fwd@example.test"))
        assert isinstance(own, RemoteTarget) and own.sender is None

    run(tmp_path, test)


def test_srs_bounces_go_back_and_forgeries_are_refused(tmp_path: Path) -> None:
    async def test(store, pipeline, signer) -> None:
        srs = SenderRewriter([b"test-secret"])
        address = srs.forward("carol@gmail.example", "example.test")
        bounce = txn("")
        assert await pipeline.route(bounce, Recipient(address)) == [
            RemoteTarget("carol@gmail.example", "gmail.example", "mx",
                         f"rfc822;{address}")]
        forged = "SRS0=AAAA" + address[9:]
        refused = await pipeline.route(bounce, Recipient(forged))
        assert isinstance(refused, Rejection) and refused.reply.startswith("550 5.1.1")
        # an SRS address of a domain that is not ours is nobody's to reverse: relaying
        foreign = await pipeline.route(bounce, Recipient(address.replace("@example.test", "@remote.test")))
        assert isinstance(foreign, Rejection) and foreign.reply.startswith("554 5.7.1")

    run(tmp_path, test)


def test_relay_host_takes_mx_routes_but_not_explicit_transports(tmp_path: Path) -> None:
    async def test(store, pipeline, signer) -> None:
        alice = await store.directory.get_user("alice@example.test")
        sub = txn("alice@example.test", user=alice, service="submission")
        assert await pipeline.route(sub, Recipient("bob@remote.test")) == [
            RemoteTarget("bob@remote.test", "remote.test", "relay")]
        assert await pipeline.route(sub, Recipient("x@relay.test")) == [
            RemoteTarget("x@relay.test", "127.0.0.5", "smtp:127.0.0.5:2525")]

    run(tmp_path, test, relay_host="smtp.isp.example:587")


def test_deliver_local_and_remote_in_one_transaction(tmp_path: Path) -> None:
    async def test(store, pipeline, signer) -> None:
        alice = await store.directory.get_user("alice@example.test")
        t = txn("alice@example.test", user=alice, service="submission")
        t.envid, t.ret, t.body = "env-7", "HDRS", "8BITMIME"
        targets = []
        for rcpt in (Recipient("carol@example.test"),
                     Recipient("bob@remote.test", orcpt="rfc822;Bob@remote.test",
                               notify=frozenset({"SUCCESS", "FAILURE"}))):
            routed = await pipeline.route(t, rcpt)
            assert not isinstance(routed, Rejection)
            targets += routed
        data = trace.return_path("alice@example.test") + b"Received: by us\r\n" + BODY
        t.message = content(data)
        delivered = await pipeline.deliver(t, targets)
        assert len(delivered.stored) == 1 and delivered.signed
        # the local copy is the content as received
        assert await store.blobs.get(delivered.blob_key) == data
        # the outbound copy: signed for the From domain, no Return-Path
        [(domain, signed_over)] = signer.calls
        assert domain == "example.test" and signed_over == b"Received: by us\r\n" + BODY
        [queued] = delivered.queued
        outbound = await store.blobs.get(queued.blob_key)
        assert outbound == b"DKIM-Signature: v=1; d=example.test; b=fake\r\n" + signed_over
        entry = await store.queue.get("ABCDEF0123")
        assert entry is not None
        m = entry.message
        assert (m.sender, m.origin, m.auth_user, m.envid, m.ret, m.body, m.size) == (
            "alice@example.test", "submission", "alice@example.test", "env-7", "HDRS",
            "8BITMIME", len(outbound))
        assert m.expires_at == T0 + dt.timedelta(days=5)
        [r] = entry.recipients
        assert (r.recipient.orcpt, r.recipient.notify) == ("rfc822;Bob@remote.test",
                                                           frozenset({"SUCCESS", "FAILURE"}))

    run(tmp_path, test)


def test_an_append_is_stored_as_given_in_its_mailbox_with_its_flags_and_date(tmp_path: Path) -> None:
    """IMAP APPEND's transaction: one LocalTarget naming a mailbox, flags and an internal
    date; the content (here with a Return-Path of its own) is stored byte for byte,
    nothing queued or signed.  Local targets with different dates are a caller's bug."""
    async def test(store, pipeline, signer) -> None:
        alice = await store.directory.get_user("alice@example.test")
        t = txn("", user=alice, service="imap")
        data = b"Return-Path: <x@remote.test>\r\n" + BODY
        t.message = content(data)
        date = dt.datetime(2020, 1, 5, 12, 0, tzinfo=dt.timezone.utc)
        target = LocalTarget(alice.id, "Drafts", frozenset({"\\Draft"}), date)
        delivered = await pipeline.deliver(t, [target])
        assert not delivered.queued and not delivered.signed and signer.calls == []
        drafts = await store.index.get_mailbox(alice.id, "Drafts")
        assert drafts is not None and [s.mailbox_id for s in delivered.stored] == [drafts.id]
        [record] = await store.index.list_messages(drafts.id)
        assert (record.flags, record.internal_date, record.size) == (
            frozenset({"\\Draft"}), date, len(data))
        assert await store.blobs.get(record.blob_key) == data
        other = LocalTarget(alice.id, "INBOX")  # received_at, not the APPEND's date
        with pytest.raises(ValueError, match="different internal dates"):
            await pipeline.deliver(t, [target, other])

    run(tmp_path, test)


def test_deliver_all_stores_every_blob_then_one_index_commit(tmp_path: Path) -> None:
    """MULTIAPPEND's batch (RFC 3502 section 3): every message's blob, then ONE index
    transaction for all (one SQLite commit), UIDs in order; a failing target (no such
    user) leaves none of them indexed."""
    async def test(store, pipeline, signer) -> None:
        alice = await store.directory.get_user("alice@example.test")
        date = dt.datetime(2020, 1, 5, 12, 0, tzinfo=dt.timezone.utc)
        items = []
        for n in range(3):
            t = txn("", user=alice, service="imap")
            t.message = content(BODY + b"part %d\r\n" % n)
            items.append((t, LocalTarget(alice.id, "Drafts", frozenset({"\\Draft"}) if n else
                                         frozenset(), date if n == 1 else None)))
        commits = store.database.commits
        delivered = await pipeline.deliver_all(items)
        assert store.database.commits - commits == 1
        assert [[s.uid for s in d.stored] for d in delivered] == [[1], [2], [3]]
        drafts = await store.index.get_mailbox(alice.id, "Drafts")
        records = await store.index.list_messages(drafts.id)
        assert [await store.blobs.get(r.blob_key) for r in records] == [
            t.message.data for t, _ in items]
        assert [r.internal_date for r in records] == [T0, date, T0]
        bad = txn("", user=alice, service="imap")
        bad.message = content(b"Subject: x\r\n\r\nnever\r\n")
        with pytest.raises(NotFound):
            await pipeline.deliver_all([items[0], (bad, LocalTarget(alice.id + 1000, "INBOX"))])
        assert len(await store.index.list_messages(drafts.id)) == 3

    run(tmp_path, test)


def test_forwarded_mail_is_not_signed_and_gets_its_own_sender(tmp_path: Path) -> None:
    async def test(store, pipeline, signer) -> None:
        t = txn("carol@gmail.example")
        routed = await pipeline.route(t, Recipient("fwd@example.test"))
        remote = await pipeline.route(t, Recipient("x@relay.test"))
        t.message = content(b"Received: by us\r\nFrom: carol@gmail.example\r\n\r\nx\r\n")
        delivered = await pipeline.deliver(t, [*routed, *remote])
        assert signer.calls == [] and not delivered.signed
        first, second = delivered.queued
        # the original sender (relay domain) first, the SRS copy as a message of its own
        assert (first.queue_id, first.sender, first.origin) == ("ABCDEF0123", "carol@gmail.example",
                                                                "transport")
        assert second.queue_id == "ABCDEF0123-2" and second.sender.startswith("SRS0=")
        assert second.origin == "forward" and second.blob_key == first.blob_key

    run(tmp_path, test)


def test_a_signer_refusing_leaves_the_message_unsigned(tmp_path: Path) -> None:
    async def test(store, pipeline, signer) -> None:
        alice = await store.directory.get_user("alice@example.test")
        t = txn("alice@example.test", user=alice, service="submission")
        routed = await pipeline.route(t, Recipient("bob@remote.test"))
        # From a domain the user does not own: not signed for it
        t.message = content(b"From: boss@bank.example\r\n\r\nx\r\n")
        delivered = await pipeline.deliver(t, routed)
        assert not delivered.signed and signer.calls == []

    run(tmp_path, test)


def test_submit_dsn_local_and_remote(tmp_path: Path) -> None:
    async def test(store, pipeline, signer) -> None:
        dsn = b"From: MAILER-DAEMON@mx.example.test\r\nSubject: Undelivered\r\n\r\nsorry\r\n"
        local = await pipeline.submit_dsn(dsn, to="alice@example.test", queue_id="ORIG1")
        assert local is not None and not local.queued and len(local.stored) == 1
        assert await store.blobs.get(local.blob_key) == b"Return-Path: <>\r\n" + dsn
        remote = await pipeline.submit_dsn(dsn, to="carol@gmail.example", queue_id="ORIG2")
        assert remote is not None and remote.stored == []
        [queued] = remote.queued
        assert (queued.sender, queued.origin, queued.recipients[0].address) == (
            "", "dsn", "carol@gmail.example")
        # signed for the From domain (our host name), without Return-Path
        assert signer.calls == [("mx.example.test", dsn)]
        assert await store.blobs.get(queued.blob_key) == (
            b"DKIM-Signature: v=1; d=mx.example.test; b=fake\r\n" + dsn)
        assert await pipeline.submit_dsn(dsn, to="", queue_id="X") is None
        assert await pipeline.submit_dsn(dsn, to="nobody@example.test", queue_id="X") is None

    run(tmp_path, test)


def test_spooled_content_is_copied_without_return_path(tmp_path: Path) -> None:
    async def test(store, pipeline, signer) -> None:
        alice = await store.directory.get_user("alice@example.test")
        t = txn("alice@example.test", user=alice, service="submission")
        targets = [*await pipeline.route(t, Recipient("carol@example.test")),
                   *await pipeline.route(t, Recipient("bob@remote.test"))]
        spool = tmp_path / "spool"
        spool.mkdir()
        big = b"Return-Path: <alice@example.test>\r\n" + BODY + b"x" * 3_000_000 + b"\r\n"
        path = spool / "msg-test"
        path.write_bytes(big)
        t.message = MessageContent(size=len(big), key=hashlib.sha256(big).hexdigest(), path=path)
        pipeline.signer = None
        delivered = await pipeline.deliver(t, targets)
        assert await store.blobs.get(delivered.blob_key) == big
        [queued] = delivered.queued
        assert await store.blobs.get(queued.blob_key) == big[len(b"Return-Path: <alice@example.test>\r\n"):]
        await asyncio.sleep(0.2)  # the copy's removal runs in a thread
        assert sorted(p.name for p in spool.iterdir()) == ["msg-test"]  # no temporary copy left

    run(tmp_path, test)


def test_from_domain() -> None:
    assert from_domain(b"From: A <a@Ex.Test>\r\n\r\n") == "ex.test"
    assert from_domain(b"Subject: none\r\n\r\n") is None
    assert from_domain(b"From: a@x.test\r\nFrom: b@y.test\r\n\r\n") is None
    assert from_domain(b"From: a@x.test, b@y.test\r\n\r\n") is None
