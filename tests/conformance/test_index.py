"""Index conformance: mailboxes, delivery, UIDs, UIDVALIDITY, MODSEQ, group commit."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import TYPE_CHECKING

import pytest

from pymail.store import (
    DEFAULT_MAILBOXES,
    AlreadyExists,
    ChangeFeed,
    Delivery,
    DeliveryTarget,
    MailboxChange,
    NotFound,
    StorageError,
    Store,
    User,
)

if TYPE_CHECKING:
    from conftest import StoreHarness

HASH = "{PLAIN}secret"
STRUCTURE = json.dumps({"envelope": {"subject": "hi"}, "body": {"type": "text/plain"}})
WHEN = dt.datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=9)))


async def _users(store: Store, *names: str) -> list[User]:
    if await store.directory.get_domain("example.com") is None:
        await store.directory.add_domain("example.com")
    return [await store.directory.add_user(f"{n}@example.com", HASH) for n in names]


async def _delivery(store: Store, data: bytes, *targets: DeliveryTarget) -> Delivery:
    key = await store.blobs.put(data)
    return Delivery(key, len(data), WHEN, STRUCTURE, targets)


# --------------------------------------------------------------------------- mailboxes


async def test_default_mailboxes(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    await store.index.ensure_default_mailboxes(ann.id)
    boxes = await store.index.list_mailboxes(ann.id)
    assert [(b.name, b.special_use) for b in boxes] == list(DEFAULT_MAILBOXES)
    for b in boxes:
        assert b.user_id == ann.id
        assert b.uidnext == 1
        assert 0 < b.uidvalidity < 2**32
        assert b.highestmodseq >= 0
        assert b.subscribed
    # idempotent, and fills in only what is missing
    await store.index.ensure_default_mailboxes(ann.id)
    assert await store.index.list_mailboxes(ann.id) == boxes
    with pytest.raises(NotFound):
        await store.index.ensure_default_mailboxes(ann.id + 1000)


async def test_create_and_get_mailbox(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    box = await store.index.create_mailbox(ann.id, "Projects/2024")
    assert (box.name, box.special_use, box.uidnext) == ("Projects/2024", None, 1)
    assert await store.index.get_mailbox(ann.id, "Projects/2024") == box
    assert await store.index.get_mailbox(ann.id, "projects/2024") is None  # case matters
    with pytest.raises(AlreadyExists):
        await store.index.create_mailbox(ann.id, "Projects/2024")
    flagged = await store.index.create_mailbox(ann.id, "Important", "\\Flagged")
    assert flagged.special_use == "\\Flagged"
    with pytest.raises(NotFound):
        await store.index.create_mailbox(ann.id + 1000, "X")

    # INBOX is case-insensitive (RFC 3501 section 5.1)
    inbox = await store.index.create_mailbox(ann.id, "inbox")
    assert inbox.name == "INBOX"
    assert await store.index.get_mailbox(ann.id, "Inbox") == inbox
    with pytest.raises(AlreadyExists):
        await store.index.create_mailbox(ann.id, "INBOX")
    # the rest of the defaults are added around the existing ones
    await store.index.ensure_default_mailboxes(ann.id)
    names = [b.name for b in await store.index.list_mailboxes(ann.id)]
    defaults = [n for n, _ in DEFAULT_MAILBOXES]
    assert sorted(names) == sorted(["Projects/2024", "Important", *defaults])


# --------------------------------------------------------------------------- delivery


async def test_deliver_to_three_users_then_again(store: Store) -> None:
    users = await _users(store, "ann", "bob", "carl")
    first = await store.index.deliver(
        await _delivery(store, b"one", *(DeliveryTarget(u.id) for u in users))
    )
    assert [(s.user_id, s.uid) for s in first] == [(u.id, 1) for u in users]
    for u, s in zip(users, first, strict=True):
        inbox = await store.index.get_mailbox(u.id, "INBOX")
        assert s.mailbox_id == inbox.id
        assert inbox.uidnext == 2
        # the first delivery made the user's default mailboxes
        assert [b.name for b in await store.index.list_mailboxes(u.id)] == [
            n for n, _ in DEFAULT_MAILBOXES
        ]
    second = await store.index.deliver(
        await _delivery(store, b"two", *(DeliveryTarget(u.id) for u in reversed(users)))
    )
    assert [(s.user_id, s.uid) for s in second] == [(u.id, 2) for u in reversed(users)]


async def test_message_record(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    delivery = await _delivery(
        store,
        b"Subject: hi\r\n\r\nbody\r\n",
        DeliveryTarget(ann.id, "INBOX", frozenset({"\\Seen", "$Forwarded"})),
    )
    (stored,) = await store.index.deliver(delivery)
    (record,) = await store.index.list_messages(stored.mailbox_id)
    assert record.mailbox_id == stored.mailbox_id
    assert record.uid == stored.uid == 1
    assert record.blob_key == delivery.blob_key
    assert record.size == delivery.size
    assert record.flags == frozenset({"\\Seen", "$Forwarded"})
    assert record.internal_date == WHEN  # the same instant
    assert record.internal_date.utcoffset() is not None
    inbox = await store.index.get_mailbox(ann.id, "INBOX")
    assert record.modseq == inbox.highestmodseq


async def test_deliver_to_a_named_mailbox_and_fallback_to_inbox(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    junk, lost = await store.index.deliver(
        await _delivery(
            store, b"spam", DeliveryTarget(ann.id, "Junk"), DeliveryTarget(ann.id, "No/Such")
        )
    )
    assert junk.mailbox_id == (await store.index.get_mailbox(ann.id, "Junk")).id
    assert lost.mailbox_id == (await store.index.get_mailbox(ann.id, "INBOX")).id
    assert await store.index.get_mailbox(ann.id, "No/Such") is None
    assert (junk.uid, lost.uid) == (1, 1)
    (custom,) = await store.index.deliver(
        await _delivery(store, b"x", DeliveryTarget(ann.id, "inbox"))
    )
    assert (custom.mailbox_id, custom.uid) == (lost.mailbox_id, 2)


async def test_concurrent_deliveries_get_ascending_unique_uids(
    store: Store, harness: StoreHarness
) -> None:
    ann, bob = await _users(store, "ann", "bob")
    await store.index.ensure_default_mailboxes(ann.id)
    commits_before = harness.commits(store)
    n = 200
    deliveries = [
        await _delivery(
            store, f"message {i}".encode(), DeliveryTarget(ann.id), DeliveryTarget(bob.id)
        )
        for i in range(n)
    ]
    results = await asyncio.gather(*(store.index.deliver(d) for d in deliveries))

    for who in (0, 1):
        uids = [r[who].uid for r in results]
        assert sorted(uids) == list(range(1, n + 1))  # no duplicates, no gaps
    inbox = await store.index.get_mailbox(ann.id, "INBOX")
    records = await store.index.list_messages(inbox.id)
    assert [m.uid for m in records] == list(range(1, n + 1))
    assert [m.modseq for m in records] == sorted({m.modseq for m in records})  # ascending
    by_uid = {r[0].uid: d.blob_key for r, d in zip(results, deliveries, strict=True)}
    assert all(by_uid[m.uid] == m.blob_key for m in records)
    assert inbox.uidnext == n + 1

    if commits_before is not None:
        commits = harness.commits(store) - commits_before
        assert 1 <= commits < n, f"{commits} commits for {n} deliveries: no group commit"


async def test_delivery_is_atomic(store: Store) -> None:
    ann, bob = await _users(store, "ann", "bob")
    await store.index.ensure_default_mailboxes(ann.id)
    before = await store.index.get_mailbox(ann.id, "INBOX")
    delivery = await _delivery(
        store,
        b"half",
        DeliveryTarget(ann.id),
        DeliveryTarget(bob.id + 1000),  # no such user
        DeliveryTarget(bob.id),
    )
    with pytest.raises(NotFound):
        await store.index.deliver(delivery)
    assert await store.index.get_mailbox(ann.id, "INBOX") == before
    assert await store.index.list_messages(before.id) == []
    assert await store.index.list_mailboxes(bob.id) == []
    assert not await store.index.blob_referenced(delivery.blob_key)
    assert await store.index.get_structure(delivery.blob_key) is None
    # the next delivery is unaffected
    (ok,) = await store.index.deliver(await _delivery(store, b"whole", DeliveryTarget(ann.id)))
    assert ok.uid == 1


async def test_deliver_many_is_one_transaction_in_order(
    store: Store, harness: StoreHarness
) -> None:
    """MULTIAPPEND's batch (RFC 3502 section 3): several blobs, one commit, UIDs
    ascending in the order given (APPENDUID's uid-set, RFC 4315 section 3)."""
    (ann,) = await _users(store, "ann")
    await store.index.ensure_default_mailboxes(ann.id)
    (first,) = await store.index.deliver(await _delivery(store, b"before", DeliveryTarget(ann.id)))
    batch = [
        await _delivery(store, b"part %d" % i,
                        DeliveryTarget(ann.id, "INBOX", frozenset({"\\Seen"} if i else ())))
        for i in range(3)
    ]
    commits_before = harness.commits(store)
    results = await store.index.deliver_many(batch)
    if commits_before is not None:
        assert harness.commits(store) - commits_before == 1
    assert [[s.uid for s in r] for r in results] == [[2], [3], [4]]
    records = await store.index.list_messages(first.mailbox_id)
    assert [m.blob_key for m in records[1:]] == [d.blob_key for d in batch]
    assert [m.flags for m in records[1:]] == [frozenset(), *[frozenset({"\\Seen"})] * 2]
    inbox = await store.index.get_mailbox(ann.id, "INBOX")
    assert inbox.uidnext == 5
    assert await store.index.deliver_many([]) == []


async def test_deliver_many_is_all_or_nothing(store: Store) -> None:
    """A failing delivery in the batch (here: its user does not exist) rolls back the
    ones before it (RFC 3502 section 3: "none of the messages are appended")."""
    (ann,) = await _users(store, "ann")
    await store.index.ensure_default_mailboxes(ann.id)
    before = await store.index.get_mailbox(ann.id, "INBOX")
    good = await _delivery(store, b"good", DeliveryTarget(ann.id))
    bad = await _delivery(store, b"bad", DeliveryTarget(ann.id + 1000))
    with pytest.raises(NotFound):
        await store.index.deliver_many([good, good, bad])
    assert await store.index.get_mailbox(ann.id, "INBOX") == before
    assert await store.index.list_messages(before.id) == []
    assert not await store.index.blob_referenced(good.blob_key)
    (ok,) = await store.index.deliver(good)
    assert ok.uid == 1


async def test_failed_delivery_does_not_hurt_concurrent_ones(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    nobody = DeliveryTarget(ann.id + 1000)
    good = [await _delivery(store, b"good %d" % i, DeliveryTarget(ann.id)) for i in range(20)]
    bad = [await _delivery(store, b"bad %d" % i, nobody) for i in range(5)]
    jobs = [store.index.deliver(d) for d in good[:10] + bad + good[10:]]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 5 and all(isinstance(f, NotFound) for f in failures)
    uids = sorted(r[0].uid for r in results if not isinstance(r, BaseException))
    assert uids == list(range(1, 21))


async def test_highestmodseq_increases(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    await store.index.ensure_default_mailboxes(ann.id)
    seen = [(await store.index.get_mailbox(ann.id, "INBOX")).highestmodseq]
    for i in range(5):
        delivery = await _delivery(store, bytes([i]), DeliveryTarget(ann.id))
        (s,) = await store.index.deliver(delivery)
        inbox = await store.index.get_mailbox(ann.id, "INBOX")
        seen.append(inbox.highestmodseq)
        (record,) = await store.index.list_messages(inbox.id, s.uid, s.uid)
        assert record.modseq == inbox.highestmodseq
    assert all(a < b for a, b in zip(seen, seen[1:]))
    # other mailboxes are unaffected
    assert (await store.index.get_mailbox(ann.id, "Sent")).highestmodseq == seen[0]


async def test_list_messages_range(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    for i in range(6):
        await store.index.deliver(await _delivery(store, f"m{i}".encode(), DeliveryTarget(ann.id)))
    inbox = await store.index.get_mailbox(ann.id, "INBOX")
    assert [m.uid for m in await store.index.list_messages(inbox.id)] == [1, 2, 3, 4, 5, 6]
    assert [m.uid for m in await store.index.list_messages(inbox.id, 3)] == [3, 4, 5, 6]
    assert [m.uid for m in await store.index.list_messages(inbox.id, 2, 4)] == [2, 3, 4]
    assert [m.uid for m in await store.index.list_messages(inbox.id, 7)] == []
    assert await store.index.list_messages(inbox.id + 1000) == []


# --------------------------------------------------------------------------- UIDVALIDITY, reopen


async def test_uidvalidity_is_stable_and_data_survives_reopen(harness: StoreHarness) -> None:
    async with harness.opened() as store:
        (ann,) = await _users(store, "ann")
        target = DeliveryTarget(ann.id, "INBOX", frozenset({"\\Flagged"}))
        delivery = await _delivery(store, b"keep me", target)
        (stored,) = await store.index.deliver(delivery)
        boxes = await store.index.list_mailboxes(ann.id)
        records = await store.index.list_messages(stored.mailbox_id)
    async with harness.opened() as store:
        assert await store.index.list_mailboxes(ann.id) == boxes
        assert await store.index.list_messages(stored.mailbox_id) == records
        assert await store.index.get_structure(delivery.blob_key) == STRUCTURE
        assert await store.blobs.get(delivery.blob_key) == b"keep me"
        more = await _delivery(store, b"more", DeliveryTarget(ann.id))
        (next_one,) = await store.index.deliver(more)
        assert next_one.uid == 2


async def test_recreated_mailbox_gets_a_greater_uidvalidity(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    first = await store.index.create_mailbox(ann.id, "INBOX")
    # the same address re-created: an IMAP client that cached ann's INBOX must resync
    await store.directory.remove_user("ann@example.com")
    (ann2,) = await _users(store, "ann")
    second = await store.index.create_mailbox(ann2.id, "INBOX")
    assert second.uidvalidity > first.uidvalidity
    # and all at once, within one second
    values = []
    for i in range(5):
        box = await store.index.create_mailbox(ann2.id, f"tmp{i}")
        values.append(box.uidvalidity)
    assert len(set(values)) == len(values)


# --------------------------------------------------------------------------- blobs in the index


async def test_get_structure_and_blob_referenced(store: Store) -> None:
    ann, bob = await _users(store, "ann", "bob")
    delivery = await _delivery(store, b"shared", DeliveryTarget(ann.id), DeliveryTarget(bob.id))
    assert await store.index.get_structure(delivery.blob_key) is None
    assert not await store.index.blob_referenced(delivery.blob_key)
    await store.index.deliver(delivery)
    assert await store.index.get_structure(delivery.blob_key) == STRUCTURE
    assert await store.index.blob_referenced(delivery.blob_key)
    # the same blob delivered again keeps its first structure (it is stored once)
    again = Delivery(delivery.blob_key, delivery.size, WHEN, "{}", [DeliveryTarget(ann.id)])
    (s,) = await store.index.deliver(again)
    assert s.uid == 2
    assert await store.index.get_structure(delivery.blob_key) == STRUCTURE
    assert await store.index.get_structure("f" * 64) is None
    assert not await store.index.blob_referenced("f" * 64)
    await store.directory.remove_user("ann@example.com")
    assert await store.index.blob_referenced(delivery.blob_key)  # bob still has it
    await store.directory.remove_user("bob@example.com")
    assert not await store.index.blob_referenced(delivery.blob_key)


async def test_deliver_validates_its_input(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    key = await store.blobs.put(b"x")
    naive = dt.datetime(2024, 1, 1)
    with pytest.raises(ValueError):
        await store.index.deliver(Delivery(key, 1, naive, "{}", [DeliveryTarget(ann.id)]))
    with pytest.raises(ValueError):
        await store.index.deliver(
            Delivery(key, 1, WHEN, "{}", [DeliveryTarget(ann.id, flags=frozenset({"two words"}))])
        )
    assert await store.index.deliver(Delivery(key, 1, WHEN, "{}", [])) == []
    assert not await store.index.blob_referenced(key)


async def test_crossed_target_orders_do_not_deadlock(store: Store) -> None:
    """Concurrent deliveries to the same users in opposite orders (PostgreSQL would
    deadlock if mailboxes were locked in target order)."""
    users = await _users(store, "ann", "bob", "carl")
    for u in users[:2]:  # carl's mailboxes are made by the deliveries themselves
        await store.index.ensure_default_mailboxes(u.id)
    n = 60
    deliveries = []
    for i in range(n):
        order = users if i % 2 else list(reversed(users))
        deliveries.append(
            await _delivery(store, b"crossed %d" % i, *(DeliveryTarget(u.id) for u in order))
        )
    results = await asyncio.gather(*(store.index.deliver(d) for d in deliveries))
    for u in users:
        uids = sorted(s.uid for r in results for s in r if s.user_id == u.id)
        assert uids == list(range(1, n + 1))


# --------------------------------------------------------------------------- forget_blob


async def test_forget_blob(store: Store) -> None:
    ann, bob = await _users(store, "ann", "bob")
    delivery = await _delivery(store, b"shared", DeliveryTarget(ann.id), DeliveryTarget(bob.id))
    await store.index.deliver(delivery)
    key = delivery.blob_key
    assert await store.index.forget_blob(key) is False  # referenced: kept
    assert await store.index.get_structure(key) == STRUCTURE
    await store.directory.remove_user("ann@example.com")
    assert await store.index.forget_blob(key) is False  # bob still has it
    await store.directory.remove_user("bob@example.com")
    assert await store.index.forget_blob(key) is True
    assert await store.index.get_structure(key) is None
    assert await store.index.forget_blob(key) is True  # unknown: nothing to keep
    assert await store.index.forget_blob("e" * 64) is True

    # an orphan row (indexed, then its only message gone) is forgotten, and the same
    # blob can be delivered again afterwards
    (carl,) = await _users(store, "carl")
    (s,) = await store.index.deliver(
        Delivery(key, delivery.size, WHEN, "{}", [DeliveryTarget(carl.id)])
    )
    assert await store.index.get_structure(key) == "{}"
    assert [m.blob_key for m in await store.index.list_messages(s.mailbox_id)] == [key]
    assert await store.index.forget_blob(key) is False


async def test_forget_blob_racing_deliveries_never_leaves_a_dangling_message(
    store: Store,
) -> None:
    """forget_blob and deliver of the same blob at once: every message that was stored
    has its blob row; every forget that said True happened before those deliveries."""
    (ann,) = await _users(store, "ann")
    await store.index.ensure_default_mailboxes(ann.id)
    data = b"raced"
    for _ in range(5):
        delivery = await _delivery(store, data, DeliveryTarget(ann.id))
        jobs = [store.index.deliver(delivery) for _ in range(5)]
        jobs += [store.index.forget_blob(delivery.blob_key) for _ in range(5)]
        results = await asyncio.gather(*jobs, return_exceptions=True)
        for r in results:
            # a delivery may be told to retry (StorageError), never anything else
            assert not isinstance(r, BaseException) or isinstance(r, StorageError), r
        if await store.index.blob_referenced(delivery.blob_key):
            assert await store.index.get_structure(delivery.blob_key) is not None
            assert await store.index.forget_blob(delivery.blob_key) is False


# --------------------------------------------------------------------------- change feed


async def _next(changes, timeout: float = 1.0) -> MailboxChange:  # noqa: ANN001
    return await asyncio.wait_for(changes.__anext__(), timeout)


async def _until(  # noqa: ANN001
    changes, mailbox_id: int, highestmodseq: int, timeout: float
) -> list[MailboxChange]:
    """Changes read until `mailbox_id` reaches `highestmodseq` (all of them)."""
    seen: list[MailboxChange] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        change = await _next(changes, max(0.01, deadline - loop.time()))
        seen.append(change)
        if change.mailbox_id == mailbox_id and change.highestmodseq >= highestmodseq:
            return seen


async def test_watch_sees_a_delivery_through_another_store(harness: StoreHarness) -> None:
    """Two stores on one database (two nodes, or two processes on one SQLite file)."""
    async with harness.opened() as node1, harness.opened(migrate=False) as node2:
        assert isinstance(node1.index, ChangeFeed)
        ann, bob = await _users(node1, "ann", "bob")
        await node1.index.deliver(await _delivery(node1, b"before", DeliveryTarget(ann.id)))
        async with node2.index.watch() as changes:
            loop = asyncio.get_running_loop()
            begin = loop.time()
            (s,) = await node1.index.deliver(
                await _delivery(node1, b"after", DeliveryTarget(ann.id))
            )
            change = await _next(changes, 1.0)  # within a second
            assert loop.time() - begin < 1.0
            inbox = await node1.index.get_mailbox(ann.id, "INBOX")
            # the delivery before the watch started is not reported
            assert change == MailboxChange(ann.id, s.mailbox_id, s.uid + 1, inbox.highestmodseq)
            assert (inbox.uidnext, s.uid) == (3, 2)

            # a delivery to two users: both mailboxes are reported
            a, b = await node1.index.deliver(
                await _delivery(node1, b"both", DeliveryTarget(ann.id), DeliveryTarget(bob.id))
            )
            got = {(await _next(changes)).mailbox_id, (await _next(changes)).mailbox_id}
            assert got == {a.mailbox_id, b.mailbox_id}

            # a burst: per mailbox in commit order, up to the final state
            for i in range(10):
                await node1.index.deliver(
                    await _delivery(node1, b"burst %d" % i, DeliveryTarget(ann.id))
                )
            final = await node1.index.get_mailbox(ann.id, "INBOX")
            seen = await _until(changes, final.id, final.highestmodseq, 2.0)
            modseqs = [c.highestmodseq for c in seen if c.mailbox_id == final.id]
            assert modseqs == sorted(modseqs)
            assert seen[-1] == MailboxChange(ann.id, final.id, final.uidnext, final.highestmodseq)

            # its own store's deliveries too
            (own,) = await node2.index.deliver(
                await _delivery(node2, b"own", DeliveryTarget(bob.id))
            )
            change = await _next(changes)
            assert (change.mailbox_id, change.uidnext) == (own.mailbox_id, own.uid + 1)


async def test_watch_can_be_closed_and_ends_with_its_store(harness: StoreHarness) -> None:
    async with harness.opened() as store:
        (ann,) = await _users(store, "ann")
        changes = store.index.watch()
        waiting = asyncio.ensure_future(changes.__anext__())
        await asyncio.sleep(0.3)
        await changes.aclose()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(waiting, 2)
        with pytest.raises(StopAsyncIteration):
            await changes.__anext__()
        await changes.aclose()  # twice is fine

        # async for, then the store closes under a waiting consumer
        other = store.index.watch()
        seen: list[MailboxChange] = []

        async def consume() -> None:
            async for change in other:
                seen.append(change)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.3)  # listening
        await store.index.deliver(await _delivery(store, b"one", DeliveryTarget(ann.id)))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2
        while not seen and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert len(seen) == 1
    await asyncio.wait_for(task, 5)  # the store's close ended the iteration


# --------------------------------------------------------------------------- server faults


async def _call_each(store: Store, ann: User, delivery: Delivery) -> None:
    """Every kind of call; each must raise StorageError (one line) while the server is
    down, quickly."""
    calls = {
        "deliver": lambda: store.index.deliver(delivery),
        "get_mailbox": lambda: store.index.get_mailbox(ann.id, "INBOX"),
        "list_mailboxes": lambda: store.index.list_mailboxes(ann.id),
        "list_messages": lambda: store.index.list_messages(1),
        "create_mailbox": lambda: store.index.create_mailbox(ann.id, "New"),
        "get_structure": lambda: store.index.get_structure(delivery.blob_key),
        "forget_blob": lambda: store.index.forget_blob("e" * 64),
        "get_user": lambda: store.directory.get_user("ann@example.com"),
        "add_domain": lambda: store.directory.add_domain("down.example"),
        "set_password": lambda: store.directory.set_password("ann@example.com", HASH),
        "remove_alias": lambda: store.directory.remove_alias("x@example.com"),
        "check": lambda: store.database.check(),
        "migrate": lambda: store.migrate(),
    }
    for name, call in calls.items():
        with pytest.raises(StorageError) as info:
            await asyncio.wait_for(call(), 15)
        assert "\n" not in str(info.value), (name, str(info.value))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_index_server_outage_then_recovery(harness: StoreHarness, mode: str) -> None:
    """The index's server stops under an open store: every call raises StorageError
    (nothing else); the server comes back: the same store works, without reopening,
    and its change feed goes on."""
    if harness.backend.outage is None:
        pytest.skip(f"{harness.backend.name}: embedded, no server to stop")
    async with harness.opened() as store:
        (ann,) = await _users(store, "ann")
        (first,) = await store.index.deliver(await _delivery(store, b"one", DeliveryTarget(ann.id)))
        second = await _delivery(store, b"two", DeliveryTarget(ann.id))
        async with store.index.watch() as changes:
            async with harness.backend.outage(harness, mode):
                await _call_each(store, ann, second)
            # back: the very first call works (no poisoned pool connection)
            (stored,) = await store.index.deliver(second)
            assert (stored.mailbox_id, stored.uid) == (first.mailbox_id, 2)
            inbox = await store.index.get_mailbox(ann.id, "INBOX")
            assert [m.uid for m in await store.index.list_messages(inbox.id)] == [1, 2]
            assert await store.directory.get_user("ann@example.com") == ann
            await store.check()
            # the feed reconnected and reports the delivery made right after the restart
            # (by notification or by its resync after reconnecting)
            seen = await _until(changes, inbox.id, inbox.highestmodseq, 10.0)
            assert seen[-1].uidnext == 3


async def test_dropped_connections_are_replaced(harness: StoreHarness) -> None:
    """Every connection to the database is terminated (the server stays up): the next
    calls work on new connections and the change feed reconnects."""
    if harness.backend.drop_connections is None:
        pytest.skip(f"{harness.backend.name}: no connections to drop")
    async with harness.opened() as store:
        (ann,) = await _users(store, "ann")
        await store.index.deliver(await _delivery(store, b"one", DeliveryTarget(ann.id)))
        async with store.index.watch() as changes:
            for round_ in range(3):
                await asyncio.gather(
                    *(store.directory.get_user("ann@example.com") for _ in range(5))
                )
                await harness.backend.drop_connections(harness)
                assert await store.directory.get_user("ann@example.com") == ann
                (s,) = await store.index.deliver(
                    await _delivery(store, b"after drop %d" % round_, DeliveryTarget(ann.id))
                )
                assert s.uid == round_ + 2
                inbox = await store.index.get_mailbox(ann.id, "INBOX")
                await _until(changes, inbox.id, inbox.highestmodseq, 10.0)
