"""QueueStore conformance (pymail.store.queue): every invariant of the contract, on every
backend.  Times come from the test (the clock is the caller's), so nothing waits.

What is checked, in the contract's order: queue rows are written by `Index.deliver` in the
same transaction as the local copies (both, or neither); `claim` leases each due
recipient to one owner, also when two stores on the same database claim concurrently
(on PostgreSQL real concurrent connections: ``SKIP LOCKED``); an expired lease returns
the work; `record` stores results and ignores final or foreign rows; `release`,
`retry`, `delete`, `purge_finished` (with the blob keys), `stats`; `blob_referenced` and
the orphan sweeper treat a queued blob as referenced."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import TYPE_CHECKING

import pytest

from pymail.store import Delivery, DeliveryTarget, NotFound, StorageError, Store
from pymail.store.gc import sweep_orphans
from pymail.store.queue import (
    QueuedMessage,
    QueuedRecipient,
    QueueStore,
    RecipientResult,
    RecipientStatus,
)

if TYPE_CHECKING:
    from conftest import StoreHarness

T0 = dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=dt.timezone.utc)
MIN = dt.timedelta(minutes=1)
LEASE = dt.timedelta(minutes=10)
STRUCTURE = json.dumps({"v": 1})
S = RecipientStatus


def _queue(store: Store) -> QueueStore:
    assert store.queue is not None
    assert isinstance(store.queue, QueueStore)
    return store.queue


def message(queue_id: str, blob_key: str, *addresses: str, created: dt.datetime = T0,
            **fields: object) -> QueuedMessage:
    return QueuedMessage(
        queue_id=queue_id, blob_key=blob_key, size=123, sender="alice@example.test",
        recipients=tuple(QueuedRecipient(a, a.rpartition("@")[2]) for a in addresses),
        created_at=created, expires_at=created + dt.timedelta(days=5), **fields)


async def enqueue(store: Store, *messages: QueuedMessage, targets: tuple = ()) -> None:
    await store.index.deliver(Delivery("0" * 64, 10, T0, STRUCTURE, targets, queued=messages))


async def user(store: Store, address: str = "carol@example.test") -> int:
    if await store.directory.get_domain("example.test") is None:
        await store.directory.add_domain("example.test")
    u = await store.directory.add_user(address, "{PLAIN}x")
    await store.index.ensure_default_mailboxes(u.id)
    return u.id


def addresses(claims) -> list[str]:
    return sorted(r.recipient.address for c in claims for r in c.entry.recipients)


# --------------------------------------------------------------------------- enqueue


async def test_queue_rows_commit_with_the_local_copies(store: Store) -> None:
    carol = await user(store)
    data = b"Subject: both\r\n\r\nx\r\n"
    key = await store.blobs.put(data)
    queued = message("Q1", key, "bob@remote.test", "dave@other.test",
                     envid="env-1", ret="HDRS", requiretls=True, smtputf8=True, body="8BITMIME",
                     origin="submission", auth_user="alice@example.test")
    stored = await store.index.deliver(
        Delivery(key, len(data), T0, STRUCTURE, (DeliveryTarget(carol),), queued=(queued,)))
    assert len(stored) == 1
    entry = await _queue(store).get("Q1")
    assert entry is not None
    got = entry.message
    assert (got.queue_id, got.blob_key, got.size, got.sender, got.envid, got.ret, got.requiretls,
            got.smtputf8, got.body, got.origin, got.auth_user) == (
        "Q1", key, 123, "alice@example.test", "env-1", "HDRS", True, True, "8BITMIME",
        "submission", "alice@example.test")
    assert (got.created_at, got.expires_at) == (T0, T0 + dt.timedelta(days=5))
    assert got.created_at.tzinfo is not None
    assert [r.recipient.address for r in entry.recipients] == ["bob@remote.test", "dave@other.test"]
    for r in entry.recipients:
        assert (r.status, r.attempts, r.next_attempt, r.lease_owner) == (S.QUEUED, 0, T0, None)
    assert await _queue(store).get("nope") is None


async def test_recipient_fields_round_trip(store: Store) -> None:
    m = QueuedMessage(
        queue_id="Q2", blob_key="a" * 64, size=5, sender="", created_at=T0,
        expires_at=T0 + MIN, origin="dsn",
        recipients=(QueuedRecipient("Bob@Remote.test", "REMOTE.test", route="smtp:10.0.0.1:2525",
                                    orcpt="rfc822;bob@remote.test",
                                    notify=frozenset({"FAILURE", "DELAY"})),
                    QueuedRecipient("x@relay.test", "relay.test", route="relay",
                                    notify=frozenset({"NEVER"}))))
    await enqueue(store, m)
    entry = await _queue(store).get("Q2")
    assert entry is not None
    assert entry.message.sender == ""
    first, second = (r.recipient for r in entry.recipients)
    assert first == QueuedRecipient("Bob@Remote.test", "remote.test", "smtp:10.0.0.1:2525",
                                    "rfc822;bob@remote.test", frozenset({"DELAY", "FAILURE"}))
    assert second == QueuedRecipient("x@relay.test", "relay.test", "relay", None,
                                     frozenset({"NEVER"}))
    assert entry.message.recipients == (first, second)


async def test_a_failed_delivery_queues_nothing(store: Store) -> None:
    """Atomic: a local target that does not exist fails the whole delivery, and its
    queue rows are not written either."""
    carol = await user(store)
    key = await store.blobs.put(b"Subject: x\r\n\r\n")
    with pytest.raises(NotFound):
        await store.index.deliver(Delivery(key, 14, T0, STRUCTURE,
                                           (DeliveryTarget(carol), DeliveryTarget(carol + 999)),
                                           queued=(message("Q3", key, "bob@remote.test"),)))
    assert await _queue(store).get("Q3") is None
    box = await store.index.get_mailbox(carol, "INBOX")
    assert box is not None and await store.index.list_messages(box.id) == []
    # the queue id of a failed delivery can be used again; a duplicate one fails whole
    await enqueue(store, message("Q3", key, "bob@remote.test"))
    with pytest.raises((ValueError, StorageError, Exception)):
        await store.index.deliver(Delivery(key, 14, T0, STRUCTURE, (DeliveryTarget(carol),),
                                           queued=(message("Q3", key, "eve@remote.test"),)))
    assert await store.index.list_messages(box.id) == []
    entry = await _queue(store).get("Q3")
    assert entry is not None and [r.recipient.address for r in entry.recipients] == ["bob@remote.test"]


async def test_delivery_without_local_targets(store: Store) -> None:
    key = await store.blobs.put(b"Subject: only remote\r\n\r\n")
    stored = await store.index.deliver(Delivery(key, 24, T0, STRUCTURE, (),
                                                queued=(message("Q4", key, "b@remote.test"),)))
    assert stored == []
    assert await store.index.get_structure(key) is None  # no mailbox copy: no structure row
    assert (await _queue(store).stats()).messages == 1
    with pytest.raises(ValueError):
        await enqueue(store, QueuedMessage("Q5", key, 1, "", (), T0, T0))


# --------------------------------------------------------------------------- claim


async def test_claim_leases_due_recipients_to_one_owner(store: Store) -> None:
    q = _queue(store)
    await enqueue(store, message("A", "a" * 64, "1@r.test", "2@r.test"),
                  message("B", "b" * 64, "3@r.test", created=T0 + MIN),
                  message("C", "c" * 64, "4@r.test", created=T0 + 10 * MIN))
    assert await q.claim(owner="n1", now=T0 - MIN, lease=LEASE, limit=10) == []  # not due yet
    claims = await q.claim(owner="n1", now=T0 + 2 * MIN, lease=LEASE, limit=10)
    # grouped per message; C is not due yet
    assert [c.entry.message.queue_id for c in claims] == ["A", "B"]
    assert [len(c.entry.recipients) for c in claims] == [2, 1]
    until = T0 + 2 * MIN + LEASE
    for c in claims:
        assert c.lease_until == until
        for r in c.entry.recipients:
            # leased, and the next attempt pushed to the lease's end before any SMTP
            assert (r.lease_owner, r.lease_until, r.next_attempt) == ("n1", until, until)
    stored = await q.get("A")
    assert stored is not None and {r.lease_owner for r in stored.recipients} == {"n1"}
    # nobody else gets them while the lease lives, C comes when due
    assert await q.claim(owner="n2", now=T0 + 5 * MIN, lease=LEASE, limit=10) == []
    later = await q.claim(owner="n2", now=T0 + 11 * MIN, lease=LEASE, limit=10)
    assert addresses(later) == ["4@r.test"]


async def test_claim_limit_takes_the_oldest_first(store: Store) -> None:
    q = _queue(store)
    await enqueue(store, message("A", "a" * 64, "1@r.test", "2@r.test", "3@r.test"),
                  message("B", "b" * 64, "4@r.test", created=T0 - MIN))
    first = await q.claim(owner="n1", now=T0, lease=LEASE, limit=2)
    assert addresses(first) == ["1@r.test", "4@r.test"]
    rest = await q.claim(owner="n1", now=T0, lease=LEASE, limit=10)
    assert addresses(rest) == ["2@r.test", "3@r.test"]
    assert await q.claim(owner="n1", now=T0, lease=LEASE, limit=0) == []


async def test_an_expired_lease_returns_the_work(store: Store) -> None:
    """A node killed mid-delivery loses nothing: after its lease another takes over."""
    q = _queue(store)
    await enqueue(store, message("A", "a" * 64, "1@r.test"))
    [claim] = await q.claim(owner="dead", now=T0, lease=LEASE, limit=5)
    assert await q.claim(owner="n2", now=T0 + LEASE - dt.timedelta(seconds=1), lease=LEASE, limit=5) == []
    [taken] = await q.claim(owner="n2", now=T0 + LEASE, lease=LEASE, limit=5)
    assert taken.entry.recipients[0].lease_owner == "n2"
    # the dead owner's late result is ignored: the recipient is n2's now
    rid = claim.entry.recipients[0].id
    await q.record("dead", [RecipientResult(rid, S.DELIVERED, reply_code=250, at=T0)])
    entry = await q.get("A")
    assert entry is not None and entry.recipients[0].status is S.QUEUED
    await q.record("n2", [RecipientResult(rid, S.DELIVERED, reply_code=250, at=T0 + LEASE)])
    entry = await q.get("A")
    assert entry is not None and entry.recipients[0].status is S.DELIVERED


async def _claim_concurrently(stores: list[Store], total: int) -> dict[str, list[int]]:
    owners = {f"node{i}": [] for i in range(len(stores))}  # type: dict[str, list[int]]

    async def drain(owner: str, q: QueueStore) -> None:
        while True:
            claims = await q.claim(owner=owner, now=T0 + MIN, lease=LEASE, limit=7)
            if not claims:
                return
            owners[owner] += [r.id for c in claims for r in c.entry.recipients]

    await asyncio.gather(*(drain(owner, _queue(s)) for owner, s in zip(owners, stores)
                           for _ in range(3)))
    return owners


async def test_concurrent_claims_never_share_a_recipient(harness: StoreHarness) -> None:
    """Two stores on one database (two pools, two writers): every recipient is leased
    exactly once, whatever the interleaving (PostgreSQL: SKIP LOCKED on real concurrent
    connections)."""
    async with harness.opened() as first, harness.opened() as second:
        total = 0
        for n in range(20):
            rcpts = [f"r{n}-{i}@d{i % 3}.test" for i in range(10)]
            total += len(rcpts)
            await enqueue(first, message(f"M{n}", "a" * 64, *rcpts))
        owners = await _claim_concurrently([first, second], total)
        taken = [rid for ids in owners.values() for rid in ids]
        assert len(taken) == total == len(set(taken))  # all of them, none twice
        if harness.backend.name.startswith("postgres"):  # SQLite may batch one node's first
            assert all(owners.values()), owners  # both nodes got work
        entries = await _queue(first).list_entries(limit=100)
        leased = {r.id: r.lease_owner for e in entries for r in e.recipients}
        for owner, ids in owners.items():
            assert {leased[i] for i in ids} <= {owner}


# --------------------------------------------------------------------------- record


async def test_record_stores_results_and_never_reopens_a_final_one(store: Store) -> None:
    q = _queue(store)
    await enqueue(store, message("A", "a" * 64, "ok@r.test", "later@r.test", "bad@r.test"))
    [claim] = await q.claim(owner="n1", now=T0, lease=LEASE, limit=10)
    ok, later, bad = claim.entry.recipients
    text = "5.1.1 <bad@r.test>: Recipient address rejected:\nUser unknown in virtual mailbox table"
    await q.record("n1", [
        RecipientResult(ok.id, S.DELIVERED, reply_code=250, enhanced_code="2.0.0",
                        reply_text="2.0.0 Ok: queued as 4F2", remote_host="mx.r.test", at=T0),
        RecipientResult(later.id, S.QUEUED, next_attempt=T0 + 5 * MIN, reply_code=451,
                        enhanced_code="4.7.1", reply_text="greylisted", remote_host="mx.r.test",
                        at=T0, delay_notified=True),
        RecipientResult(bad.id, S.FAILED, reply_code=550, enhanced_code="5.1.1",
                        reply_text=text, remote_host="mx.r.test", at=T0),
    ])
    entry = await q.get("A")
    assert entry is not None
    got = {r.recipient.address: r for r in entry.recipients}
    assert (got["ok@r.test"].status, got["ok@r.test"].reply_code, got["ok@r.test"].attempts) == (
        S.DELIVERED, 250, 1)
    g = got["later@r.test"]
    assert (g.status, g.next_attempt, g.reply_code, g.enhanced_code, g.reply_text, g.remote_host,
            g.last_attempt, g.lease_owner, g.lease_until, g.delay_notified, g.attempts) == (
        S.QUEUED, T0 + 5 * MIN, 451, "4.7.1", "greylisted", "mx.r.test", T0, None, None, True, 1)
    assert got["bad@r.test"].reply_text == text  # the remote's full text, every line
    # a final status is never changed back: not by record, not by claim
    await q.record("n1", [RecipientResult(ok.id, S.QUEUED, next_attempt=T0),
                          RecipientResult(bad.id, S.DELIVERED)])
    assert await q.claim(owner="n1", now=T0 + 4 * MIN, lease=LEASE, limit=10) == []
    [again] = await q.claim(owner="n2", now=T0 + 5 * MIN, lease=LEASE, limit=10)
    assert addresses([again]) == ["later@r.test"]
    # a recipient leased to someone else is not the caller's to record
    await q.record("n1", [RecipientResult(later.id, S.FAILED, reply_code=554)])
    entry = await q.get("A")
    assert entry is not None
    got = {r.recipient.address: r for r in entry.recipients}
    assert (got["ok@r.test"].status, got["bad@r.test"].status) == (S.DELIVERED, S.FAILED)
    assert (got["later@r.test"].status, got["later@r.test"].lease_owner) == (S.QUEUED, "n2")
    # not an attempt (e.g. given back at shutdown): the count and the last reply stay
    await q.record("n2", [RecipientResult(later.id, S.QUEUED, next_attempt=T0 + 6 * MIN,
                                          attempted=False)])
    entry = await q.get("A")
    assert entry is not None
    g = {r.recipient.address: r for r in entry.recipients}["later@r.test"]
    assert (g.attempts, g.reply_code, g.next_attempt, g.lease_owner) == (1, 451, T0 + 6 * MIN, None)


# --------------------------------------------------------------------------- operator


async def test_release_makes_the_owners_recipients_due_again(store: Store) -> None:
    q = _queue(store)
    await enqueue(store, message("A", "a" * 64, "1@r.test", "2@r.test"),
                  message("B", "b" * 64, "3@r.test"))
    await q.claim(owner="n1", now=T0 + MIN, lease=LEASE, limit=2)
    await q.claim(owner="n2", now=T0 + MIN, lease=LEASE, limit=2)
    assert await q.release("n1") == 2
    assert await q.release("n1") == 0
    # due at once (at the time of the claim), the other owner's lease untouched
    claims = await q.claim(owner="n3", now=T0 + MIN, lease=LEASE, limit=10)
    assert addresses(claims) == ["1@r.test", "2@r.test"]
    entry = await q.get("B")
    assert entry is not None and entry.recipients[0].lease_owner == "n2"


async def test_retry_makes_queued_recipients_due_now(store: Store) -> None:
    q = _queue(store)
    await enqueue(store, message("A", "a" * 64, "1@r.test"), message("B", "b" * 64, "2@r.test"),
                  message("C", "c" * 64, "3@r.test"))
    claims = await q.claim(owner="n1", now=T0, lease=LEASE, limit=10)
    ids = {r.recipient.address: r.id for c in claims for r in c.entry.recipients}
    await q.record("n1", [RecipientResult(ids["1@r.test"], S.QUEUED, next_attempt=T0 + 60 * MIN),
                          RecipientResult(ids["2@r.test"], S.QUEUED, next_attempt=T0 + 60 * MIN)])
    # C is still leased to n1: retry leaves it alone
    now = T0 + 2 * MIN
    assert await q.retry("A", now) == 1
    assert addresses(await q.claim(owner="n2", now=now, lease=LEASE, limit=10)) == ["1@r.test"]
    assert await q.retry(None, now) == 1  # B; A and C are leased now
    assert addresses(await q.claim(owner="n2", now=now, lease=LEASE, limit=10)) == ["2@r.test"]
    assert await q.retry("missing", now) == 0


async def test_delete_removes_a_message_and_its_recipients(store: Store) -> None:
    q = _queue(store)
    await enqueue(store, message("A", "a" * 64, "1@r.test", "2@r.test"))
    assert await q.delete("A") is True
    assert await q.delete("A") is False
    assert await q.get("A") is None
    assert await q.claim(owner="n1", now=T0, lease=LEASE, limit=10) == []
    assert (await q.stats()).by_status == {}


async def test_purge_finished_and_list_entries(store: Store) -> None:
    q = _queue(store)
    await enqueue(store, message("A", "a" * 64, "1@r.test", "2@r.test"),
                  message("B", "b" * 64, "3@r.test", created=T0 + MIN),
                  message("C", "a" * 64, "4@r.test", created=T0 + 2 * MIN))
    claims = await q.claim(owner="n1", now=T0 + 3 * MIN, lease=LEASE, limit=10)
    ids = {r.recipient.address: r.id for c in claims for r in c.entry.recipients}
    await q.record("n1", [RecipientResult(ids["1@r.test"], S.DELIVERED),
                          RecipientResult(ids["2@r.test"], S.QUEUED, next_attempt=T0),
                          RecipientResult(ids["3@r.test"], S.FAILED),
                          RecipientResult(ids["4@r.test"], S.EXPIRED)])
    waiting = await q.list_entries()
    assert [e.message.queue_id for e in waiting] == ["A"]
    assert [r.recipient.address for r in waiting[0].recipients] == ["2@r.test"]
    everything = await q.list_entries(include_final=True)
    assert [e.message.queue_id for e in everything] == ["A", "B", "C"]  # oldest first
    assert [r.status for r in everything[0].recipients] == [S.DELIVERED, S.QUEUED]
    assert [e.message.queue_id for e in await q.list_entries(include_final=True, limit=2)] == ["A", "B"]
    # B and C are all final: gone, with their blob keys (C shares A's)
    assert await q.purge_finished() == sorted({"a" * 64, "b" * 64})
    assert await q.purge_finished() == []
    assert [e.message.queue_id for e in await q.list_entries(include_final=True)] == ["A"]


async def test_stats(store: Store) -> None:
    q = _queue(store)
    empty = await q.stats()
    assert (empty.messages, empty.recipients_queued, empty.oldest, empty.by_status) == (0, 0, None, {})
    await enqueue(store, message("A", "a" * 64, "1@r.test", "2@r.test"),
                  message("B", "b" * 64, "3@r.test", created=T0 + MIN))
    claims = await q.claim(owner="n1", now=T0 + MIN, lease=LEASE, limit=10)
    ids = {r.recipient.address: r.id for c in claims for r in c.entry.recipients}
    await q.record("n1", [RecipientResult(ids["1@r.test"], S.DELIVERED),
                          RecipientResult(ids["2@r.test"], S.FAILED)])
    stats = await q.stats()
    assert (stats.messages, stats.recipients_queued) == (2, 1)
    assert stats.oldest == T0 + MIN  # A has no QUEUED recipient left
    assert stats.by_status == {"delivered": 1, "failed": 1, "queued": 1}


# --------------------------------------------------------------------------- blobs


async def test_queued_blobs_are_referenced_and_survive_the_sweeper(store: Store) -> None:
    q = _queue(store)
    data = b"Subject: waiting for the remote\r\n\r\nx\r\n"
    key = await store.blobs.put(data)
    await enqueue(store, message("A", key, "1@r.test"))
    assert await store.index.blob_referenced(key)
    assert await store.index.forget_blob(key) is False
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1)
    report = await sweep_orphans(store.blobs, store.index, grace_seconds=60, now=later)
    assert (report.deleted, report.referenced) == (0, 1)
    assert await store.blobs.get(key) == data
    # delivered and purged: now the blob is an orphan for the sweeper
    [claim] = await q.claim(owner="n1", now=T0, lease=LEASE, limit=1)
    await q.record("n1", [RecipientResult(claim.entry.recipients[0].id, S.DELIVERED)])
    assert await q.purge_finished() == [key]
    assert not await store.index.blob_referenced(key)
    report = await sweep_orphans(store.blobs, store.index, grace_seconds=60, now=later)
    assert report.deleted == 1
    assert not await store.blobs.exists(key)


async def test_a_blob_in_a_mailbox_and_the_queue_stays_until_both_let_go(store: Store) -> None:
    q = _queue(store)
    carol = await user(store)
    data = b"Subject: local and remote\r\n\r\n"
    key = await store.blobs.put(data)
    await store.index.deliver(Delivery(key, len(data), T0, STRUCTURE, (DeliveryTarget(carol),),
                                       queued=(message("A", key, "1@r.test"),)))
    box = await store.index.get_mailbox(carol, "INBOX")
    assert box is not None
    await store.index.store_flags(box.id, [1], frozenset({"\\Deleted"}), "add")
    assert await store.index.expunge(box.id) == [1]
    assert await store.index.blob_referenced(key)  # the queue still needs it
    assert await store.index.forget_blob(key) is False
    assert await store.index.get_structure(key) == STRUCTURE
    assert await q.delete("A")
    assert await store.index.forget_blob(key) is True
