"""Index conformance for what an IMAP/POP3 session changes: mailbox status, rename,
delete, subscribe, STORE, EXPUNGE, COPY, MOVE (RFC 3501 6.3/6.4, RFC 4315, RFC 6851,
RFC 7162), and that each change is announced on the change feed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import pytest

from pymail.store import (
    AlreadyExists,
    Delivery,
    DeliveryTarget,
    FlagUpdate,
    Mailbox,
    MailboxChange,
    MailboxStatus,
    NotFound,
    Store,
    User,
)

HASH = "{PLAIN}secret"
STRUCTURE = json.dumps({"envelope": {"subject": "hi"}, "body": {"type": "text/plain"}})
WHEN = dt.datetime(2024, 5, 17, 9, 30, 15, 123456, tzinfo=dt.timezone(dt.timedelta(hours=9)))

SEEN, DELETED, FLAGGED = "\\Seen", "\\Deleted", "\\Flagged"


async def _users(store: Store, *names: str) -> list[User]:
    if await store.directory.get_domain("example.com") is None:
        await store.directory.add_domain("example.com")
    users = [await store.directory.add_user(f"{n}@example.com", HASH) for n in names]
    for u in users:
        await store.index.ensure_default_mailboxes(u.id)
    return users


async def _fill(
    store: Store, user: User, mailbox: str, *flag_sets: frozenset[str], when: dt.datetime = WHEN
) -> Mailbox:
    """Deliver one message per flag set to `mailbox`; the mailbox afterwards."""
    for i, flags in enumerate(flag_sets):
        data = b"Subject: %d %s\r\n\r\nbody\r\n" % (i, mailbox.encode())
        key = await store.blobs.put(data)
        await store.index.deliver(
            Delivery(
                key,
                len(data),
                when + dt.timedelta(minutes=i),
                STRUCTURE,
                [DeliveryTarget(user.id, mailbox, frozenset(flags))],
            )
        )
    box = await store.index.get_mailbox(user.id, mailbox)
    assert box is not None
    return box


def _fs(*flags: str) -> frozenset[str]:
    return frozenset(flags)


async def _box(store: Store, mailbox_id: int) -> Mailbox:
    box = await store.index.get_mailbox_by_id(mailbox_id)
    assert box is not None
    return box


# --------------------------------------------------------------------------- lookups


async def test_get_mailbox_by_id(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    inbox = await store.index.get_mailbox(ann.id, "INBOX")
    assert await store.index.get_mailbox_by_id(inbox.id) == inbox
    assert await store.index.get_mailbox_by_id(inbox.id + 10_000) is None


async def test_mailbox_status(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    inbox = await store.index.get_mailbox(ann.id, "INBOX")
    empty = await store.index.mailbox_status(inbox.id)
    assert empty == MailboxStatus(inbox, 0, 0, 0, 0)
    box = await _fill(
        store, ann, "INBOX", _fs(), _fs(SEEN), _fs(SEEN, DELETED), _fs(DELETED), _fs("$Seen")
    )
    status = await store.index.mailbox_status(inbox.id)
    sizes = sum(m.size for m in await store.index.list_messages(inbox.id))
    assert status.mailbox == box
    # "$Seen" is a keyword, not \Seen
    assert (status.messages, status.unseen, status.deleted, status.size) == (5, 3, 2, sizes)
    assert sizes > 0
    with pytest.raises(NotFound):
        await store.index.mailbox_status(inbox.id + 10_000)


# --------------------------------------------------------------------------- subscribe


async def test_set_subscribed(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    await store.index.set_subscribed(ann.id, "Sent", False)
    assert not (await store.index.get_mailbox(ann.id, "Sent")).subscribed
    await store.index.set_subscribed(ann.id, "inbox", False)  # INBOX in any case
    assert not (await store.index.get_mailbox(ann.id, "INBOX")).subscribed
    await store.index.set_subscribed(ann.id, "Sent", True)
    assert (await store.index.get_mailbox(ann.id, "Sent")).subscribed
    with pytest.raises(NotFound):
        await store.index.set_subscribed(ann.id, "Nope", True)
    with pytest.raises(NotFound):
        await store.index.set_subscribed(ann.id, "Nope", False)


async def test_subscriptions_are_names(store: Store) -> None:
    # RFC 3501 sections 6.3.3-6.3.6: CREATE does not subscribe, DELETE does not
    # unsubscribe, RENAME takes the subscriptions along
    (ann,) = await _users(store, "ann")
    await store.index.create_mailbox(ann.id, "Work")
    await store.index.create_mailbox(ann.id, "Work/Old")
    assert not (await store.index.get_mailbox(ann.id, "Work")).subscribed
    assert "Work" not in await store.index.list_subscriptions(ann.id)
    await store.index.set_subscribed(ann.id, "Work/Old", True)
    await store.index.rename_mailbox(ann.id, "Work", "Job")
    subscriptions = await store.index.list_subscriptions(ann.id)
    assert "Job/Old" in subscriptions and "Work/Old" not in subscriptions
    assert subscriptions == sorted(subscriptions)
    await store.index.delete_mailbox(ann.id, "Job/Old")
    assert "Job/Old" in await store.index.list_subscriptions(ann.id)
    await store.index.create_mailbox(ann.id, "Job/Old")  # the name is subscribed again
    assert (await store.index.get_mailbox(ann.id, "Job/Old")).subscribed
    await store.index.delete_mailbox(ann.id, "Job/Old")
    await store.index.set_subscribed(ann.id, "Job/Old", False)  # no mailbox, a subscription
    assert "Job/Old" not in await store.index.list_subscriptions(ann.id)


# --------------------------------------------------------------------------- \\Recent


async def test_first_recent_uid_only_moves_up(store: Store) -> None:
    # RFC 3501 section 2.3.2: the watermark a SELECT takes its \\Recent messages from
    (ann,) = await _users(store, "ann")
    box = await store.index.create_mailbox(ann.id, "Fresh")
    assert await store.index.first_recent_uid(box.id) == 1
    assert await store.index.first_recent_uid(box.id, 5) == 1
    assert await store.index.first_recent_uid(box.id) == 5
    assert await store.index.first_recent_uid(box.id, 3) == 5  # never down
    assert await store.index.first_recent_uid(box.id) == 5
    with pytest.raises(NotFound):
        await store.index.first_recent_uid(box.id + 10_000)
    with pytest.raises(NotFound):
        await store.index.first_recent_uid(box.id + 10_000, 2)


# --------------------------------------------------------------------------- rename


async def test_rename_with_children(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    work = await store.index.create_mailbox(ann.id, "Work", "\\Flagged")
    await _fill(store, ann, "Work", _fs(SEEN), _fs())
    child = await store.index.create_mailbox(ann.id, "Work/2024")
    grandchild = await store.index.create_mailbox(ann.id, "Work/2024/Q1")
    lookalike = await store.index.create_mailbox(ann.id, "Workshop")  # not a child
    before = await store.index.list_messages(work.id)

    renamed = await store.index.rename_mailbox(ann.id, "Work", "Jobs/Old")
    assert renamed.id == work.id
    assert renamed.name == "Jobs/Old"
    assert renamed.uidvalidity == work.uidvalidity
    assert renamed.special_use == "\\Flagged"  # stays with the renamed mailbox
    assert renamed.uidnext == 3
    assert await store.index.list_messages(work.id) == before  # messages untouched
    assert await store.index.get_mailbox(ann.id, "Work") is None
    assert (await store.index.get_mailbox(ann.id, "Jobs/Old/2024")).id == child.id
    q1 = await store.index.get_mailbox(ann.id, "Jobs/Old/2024/Q1")
    assert (q1.id, q1.uidvalidity) == (grandchild.id, grandchild.uidvalidity)
    assert await store.index.get_mailbox(ann.id, "Workshop") == lookalike
    assert await store.index.get_mailbox(ann.id, "Work/2024") is None

    # a mailbox may be renamed back over the names it left free
    again = await store.index.rename_mailbox(ann.id, "Jobs/Old", "Work")
    assert again.id == work.id
    assert (await store.index.get_mailbox(ann.id, "Work/2024/Q1")).id == grandchild.id


async def test_rename_errors(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    await store.index.create_mailbox(ann.id, "A")
    await store.index.create_mailbox(ann.id, "A/x")
    await store.index.create_mailbox(ann.id, "B/x")
    with pytest.raises(NotFound):
        await store.index.rename_mailbox(ann.id, "Missing", "Other")
    with pytest.raises(AlreadyExists):
        await store.index.rename_mailbox(ann.id, "A", "Sent")
    with pytest.raises(AlreadyExists):
        await store.index.rename_mailbox(ann.id, "A", "A")
    # a child's new name is taken: nothing is renamed
    with pytest.raises(AlreadyExists):
        await store.index.rename_mailbox(ann.id, "A", "B")
    assert await store.index.get_mailbox(ann.id, "A") is not None
    assert await store.index.get_mailbox(ann.id, "A/x") is not None
    with pytest.raises(ValueError):
        await store.index.rename_mailbox(ann.id, "A", "A/y")
    # another user's names do not matter
    (bob,) = await _users(store, "bob")
    with pytest.raises(NotFound):
        await store.index.rename_mailbox(bob.id, "A", "C")


async def test_rename_inbox(store: Store) -> None:
    """RFC 3501 6.3.5: the messages move to a new mailbox, INBOX stays, empty."""
    (ann,) = await _users(store, "ann")
    inbox = await _fill(store, ann, "INBOX", _fs(SEEN), _fs(), _fs(FLAGGED))
    child = await store.index.create_mailbox(ann.id, "INBOX/Sub")
    before = await store.index.list_messages(inbox.id)

    old = await store.index.rename_mailbox(ann.id, "inbox", "Old Mail")
    assert old.id != inbox.id
    assert old.name == "Old Mail"
    assert old.special_use is None
    assert old.uidvalidity != inbox.uidvalidity or old.uidvalidity > 0
    moved = await store.index.list_messages(old.id)
    assert [(m.uid, m.blob_key, m.flags, m.internal_date) for m in moved] == [
        (m.uid, m.blob_key, m.flags, m.internal_date) for m in before
    ]
    assert old.uidnext > max(m.uid for m in moved)
    assert all(m.modseq == old.highestmodseq for m in moved)

    after = await store.index.get_mailbox(ann.id, "INBOX")
    assert after.id == inbox.id
    assert after.uidvalidity == inbox.uidvalidity
    assert after.uidnext == inbox.uidnext  # UIDs are never reused
    assert after.highestmodseq > inbox.highestmodseq
    assert await store.index.list_messages(inbox.id) == []
    assert await store.index.get_mailbox(ann.id, "INBOX/Sub") == child  # unaffected
    with pytest.raises(AlreadyExists):
        await store.index.rename_mailbox(ann.id, "INBOX", "Old Mail")

    # the next delivery to INBOX gets a fresh UID
    await _fill(store, ann, "INBOX", _fs())
    (m,) = await store.index.list_messages(inbox.id)
    assert m.uid == inbox.uidnext


# --------------------------------------------------------------------------- delete


async def test_delete_mailbox(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    box = await store.index.create_mailbox(ann.id, "Old")
    child = await store.index.create_mailbox(ann.id, "Old/Child")
    await _fill(store, ann, "Old", _fs(), _fs(SEEN))
    keys = [m.blob_key for m in await store.index.list_messages(box.id)]
    await store.index.delete_mailbox(ann.id, "Old")
    assert await store.index.get_mailbox(ann.id, "Old") is None
    assert await store.index.get_mailbox_by_id(box.id) is None
    assert await store.index.list_messages(box.id) == []
    assert await store.index.get_mailbox(ann.id, "Old/Child") == child  # children stay
    for key in keys:  # the blobs are orphans now; the sweeper takes them
        assert not await store.index.blob_referenced(key)
        assert await store.blobs.exists(key)
        assert await store.index.forget_blob(key) is True
    with pytest.raises(NotFound):
        await store.index.delete_mailbox(ann.id, "Old")
    # re-created: a new mailbox with a greater UIDVALIDITY
    again = await store.index.create_mailbox(ann.id, "Old")
    assert again.id != box.id and again.uidvalidity > box.uidvalidity


async def test_delete_inbox_is_refused(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    inbox = await _fill(store, ann, "INBOX", _fs())
    for name in ("INBOX", "inbox", "Inbox"):
        with pytest.raises(ValueError):
            await store.index.delete_mailbox(ann.id, name)
    assert await store.index.get_mailbox(ann.id, "INBOX") == inbox
    assert len(await store.index.list_messages(inbox.id)) == 1


# --------------------------------------------------------------------------- store_flags


async def test_store_flags_modes(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    box = await _fill(store, ann, "INBOX", _fs(), _fs(SEEN), _fs(FLAGGED))
    m1, m2, m3 = await store.index.list_messages(box.id)

    # add: \Seen to all three; m2 has it already and keeps its MODSEQ
    update = await store.index.store_flags(box.id, [3, 1, 2, 99], _fs(SEEN), "add")
    assert isinstance(update, FlagUpdate)
    after = await _box(store, box.id)
    assert after.highestmodseq == box.highestmodseq + 1  # once per call
    assert [m.uid for m in update.changed] == [1, 3]
    assert update.failed == []
    assert all(m.modseq == after.highestmodseq for m in update.changed)
    n1, n2, n3 = await store.index.list_messages(box.id)
    assert update.changed == [n1, n3]
    assert (n1.flags, n2.flags, n3.flags) == (_fs(SEEN), _fs(SEEN), _fs(SEEN, FLAGGED))
    assert n2 == m2  # unchanged: keeps its MODSEQ
    assert after.uidnext == box.uidnext

    # remove
    update = await store.index.store_flags(box.id, [1, 2, 3], _fs(SEEN, "$Junk"), "remove")
    assert [(m.uid, m.flags) for m in update.changed] == [(1, _fs()), (2, _fs()), (3, _fs(FLAGGED))]
    # replace: only messages whose flags differ change
    update = await store.index.store_flags(box.id, [1, 2, 3], _fs(FLAGGED, "$Work"), "replace")
    assert [m.uid for m in update.changed] == [1, 2, 3]
    mark = await _box(store, box.id)
    update = await store.index.store_flags(box.id, [1, 2, 3], _fs(FLAGGED, "$Work"), "replace")
    assert update == FlagUpdate(changed=[], failed=[])
    assert await _box(store, box.id) == mark  # nothing changed: no bump
    update = await store.index.store_flags(box.id, [2], _fs(), "replace")
    assert [(m.uid, m.flags) for m in update.changed] == [(2, _fs())]

    # absent UIDs only, or none: nothing happens
    before = await _box(store, box.id)
    assert await store.index.store_flags(box.id, [50, 51], _fs(SEEN), "add") == FlagUpdate([], [])
    assert await store.index.store_flags(box.id, [], _fs(SEEN), "add") == FlagUpdate([], [])
    assert await _box(store, box.id) == before
    assert m1.uid == 1 and m3.uid == 3


async def test_store_flags_validates(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    box = await _fill(store, ann, "INBOX", _fs())
    with pytest.raises(ValueError):
        await store.index.store_flags(box.id, [1], _fs("two words"), "add")
    with pytest.raises(ValueError):
        await store.index.store_flags(box.id, [1], _fs(""), "add")
    with pytest.raises(ValueError):
        await store.index.store_flags(box.id, [1], _fs(SEEN), "toggle")
    with pytest.raises(NotFound):
        await store.index.store_flags(box.id + 10_000, [1], _fs(SEEN), "add")
    (m,) = await store.index.list_messages(box.id)
    assert m.flags == _fs()


async def test_store_flags_unchanged_since(store: Store) -> None:
    """RFC 7162 3.1.3: messages modified after UNCHANGEDSINCE are left alone and
    reported; the others are stored."""
    (ann,) = await _users(store, "ann")
    box = await _fill(store, ann, "INBOX", _fs(), _fs(), _fs())
    m1, m2, m3 = await store.index.list_messages(box.id)
    assert m1.modseq < m2.modseq < m3.modseq
    update = await store.index.store_flags(
        box.id, [1, 2, 3], _fs(SEEN), "add", unchanged_since=m2.modseq
    )
    assert [m.uid for m in update.changed] == [1, 2]
    assert update.failed == [3]
    n1, n2, n3 = await store.index.list_messages(box.id)
    assert n3 == m3
    assert n1.modseq == n2.modseq == (await _box(store, box.id)).highestmodseq

    # passing the test but changing nothing: not failed, not changed, MODSEQ kept
    update = await store.index.store_flags(
        box.id, [1, 2], _fs(SEEN), "add", unchanged_since=n1.modseq
    )
    assert update == FlagUpdate(changed=[], failed=[])
    # UNCHANGEDSINCE 0 always fails (every MODSEQ is positive)
    update = await store.index.store_flags(box.id, [1, 2, 3], _fs(FLAGGED), "add", unchanged_since=0)
    assert update == FlagUpdate(changed=[], failed=[1, 2, 3])
    assert await store.index.list_messages(box.id) == [n1, n2, n3]


# --------------------------------------------------------------------------- expunge


async def test_expunge(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    box = await _fill(
        store, ann, "INBOX", _fs(DELETED), _fs(SEEN), _fs(DELETED, SEEN), _fs(DELETED), _fs()
    )
    # UID EXPUNGE: only among the given UIDs (absent ones ignored)
    assert await store.index.expunge(box.id, [4, 2, 77]) == [4]
    mid = await _box(store, box.id)
    assert mid.highestmodseq == box.highestmodseq + 1
    assert await store.index.expunge(box.id) == [1, 3]
    after = await _box(store, box.id)
    assert after.highestmodseq == mid.highestmodseq + 1
    assert after.uidnext == box.uidnext == 6  # never lowered
    assert [m.uid for m in await store.index.list_messages(box.id)] == [2, 5]
    # nothing to expunge: no change
    assert await store.index.expunge(box.id) == []
    assert await store.index.expunge(box.id, []) == []
    assert await _box(store, box.id) == after
    with pytest.raises(NotFound):
        await store.index.expunge(box.id + 10_000)
    # expunge everything: UIDNEXT stays, the next delivery gets a new UID
    await store.index.store_flags(box.id, [2, 5], _fs(DELETED), "add")
    assert await store.index.expunge(box.id) == [2, 5]
    assert (await _box(store, box.id)).uidnext == 6
    await _fill(store, ann, "INBOX", _fs())
    assert [m.uid for m in await store.index.list_messages(box.id)] == [6]


# --------------------------------------------------------------------------- copy / move


async def test_copy_messages(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    src = await _fill(store, ann, "INBOX", _fs(SEEN), _fs(FLAGGED), _fs(), _fs(DELETED))
    dst = await _fill(store, ann, "Archive", _fs())  # UIDNEXT 2
    originals = await store.index.list_messages(src.id)

    pairs = await store.index.copy_messages(src.id, [4, 1, 3, 99, 1], dst.id)
    assert pairs == [(1, 2), (3, 3), (4, 4)]
    copies = await store.index.list_messages(dst.id, 2)
    target = await _box(store, dst.id)
    assert target.uidnext == 5
    assert target.highestmodseq == dst.highestmodseq + 1
    by_uid = {m.uid: m for m in originals}
    for (old, new), copy in zip(pairs, copies, strict=True):
        o = by_uid[old]
        assert copy.uid == new
        assert (copy.blob_key, copy.size, copy.flags) == (o.blob_key, o.size, o.flags)
        assert copy.internal_date == o.internal_date
        assert copy.modseq == target.highestmodseq
    assert await store.index.list_messages(src.id) == originals  # the source is untouched
    assert await _box(store, src.id) == src

    # absent UIDs only: nothing happens
    assert await store.index.copy_messages(src.id, [50], dst.id) == []
    assert await _box(store, dst.id) == target
    # copy into the same mailbox: new UIDs there
    assert await store.index.copy_messages(src.id, [2], src.id) == [(2, 5)]
    with pytest.raises(NotFound):
        await store.index.copy_messages(src.id, [1], dst.id + 10_000)
    with pytest.raises(NotFound):
        await store.index.copy_messages(src.id + 10_000, [1], dst.id)


async def test_copy_between_users_is_refused(store: Store) -> None:
    ann, bob = await _users(store, "ann", "bob")
    src = await _fill(store, ann, "INBOX", _fs())
    bob_inbox = await store.index.get_mailbox(bob.id, "INBOX")
    with pytest.raises(ValueError):
        await store.index.copy_messages(src.id, [1], bob_inbox.id)
    with pytest.raises(ValueError):
        await store.index.move_messages(src.id, [1], bob_inbox.id)
    assert await store.index.list_messages(bob_inbox.id) == []
    assert len(await store.index.list_messages(src.id)) == 1
    assert await _box(store, bob_inbox.id) == bob_inbox


async def test_move_messages(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    src = await _fill(store, ann, "INBOX", _fs(SEEN), _fs(FLAGGED, "$Work"), _fs(), _fs())
    trash = await _fill(store, ann, "Trash", _fs(), _fs())  # UIDNEXT 3
    originals = {m.uid: m for m in await store.index.list_messages(src.id)}

    pairs = await store.index.move_messages(src.id, [4, 2, 1, 42], trash.id)
    assert pairs == [(1, 3), (2, 4), (4, 5)]
    assert [m.uid for m in await store.index.list_messages(src.id)] == [3]
    source = await _box(store, src.id)
    assert source.uidnext == src.uidnext  # never lowered
    assert source.highestmodseq == src.highestmodseq + 1
    target = await _box(store, trash.id)
    assert (target.uidnext, target.highestmodseq) == (6, trash.highestmodseq + 1)
    moved = await store.index.list_messages(trash.id, 3)
    assert [m.uid for m in moved] == [3, 4, 5]
    for (old, _), m in zip(pairs, moved, strict=True):
        o = originals[old]
        assert (m.blob_key, m.flags, m.internal_date, m.size) == (
            o.blob_key,
            o.flags,
            o.internal_date,
            o.size,
        )
        assert m.modseq == target.highestmodseq
        assert await store.index.blob_referenced(m.blob_key)

    # nothing to move: nothing changes
    assert await store.index.move_messages(src.id, [1, 2], trash.id) == []
    assert await _box(store, src.id) == source
    assert await _box(store, trash.id) == target
    with pytest.raises(NotFound):
        await store.index.move_messages(src.id, [3], trash.id + 10_000)
    assert [m.uid for m in await store.index.list_messages(src.id)] == [3]


async def test_concurrent_moves_never_duplicate_or_lose(store: Store) -> None:
    """Moves of the same messages racing: each message ends up exactly once."""
    (ann,) = await _users(store, "ann")
    src = await _fill(store, ann, "INBOX", *[_fs() for _ in range(6)])
    a = await store.index.get_mailbox(ann.id, "Archive")
    t = await store.index.get_mailbox(ann.id, "Trash")
    results = await asyncio.gather(
        store.index.move_messages(src.id, [1, 2, 3, 4], a.id),
        store.index.move_messages(src.id, [3, 4, 5, 6], t.id),
        store.index.copy_messages(src.id, [1, 6], t.id),
    )
    moved = [old for r in results[:2] for old, _ in r]
    assert sorted(moved) == [1, 2, 3, 4, 5, 6]
    assert await store.index.list_messages(src.id) == []
    in_a = await store.index.list_messages(a.id)
    in_t = await store.index.list_messages(t.id)
    assert len(in_a) + len(in_t) == 6 + len(results[2])
    for box, msgs in ((a, in_a), (t, in_t)):
        assert [m.uid for m in msgs] == list(range(1, len(msgs) + 1))
        assert (await _box(store, box.id)).uidnext == len(msgs) + 1


# --------------------------------------------------------------------------- MODSEQ


async def test_highestmodseq_strictly_increases(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    inbox = await _fill(store, ann, "INBOX", _fs(), _fs(), _fs())
    archive = await store.index.get_mailbox(ann.id, "Archive")
    seen = {inbox.id: [inbox.highestmodseq], archive.id: [archive.highestmodseq]}

    async def note(*ids: int) -> None:
        for i in ids:
            seen[i].append((await _box(store, i)).highestmodseq)

    await store.index.store_flags(inbox.id, [1], _fs(SEEN), "add")
    await note(inbox.id)
    await store.index.store_flags(inbox.id, [1, 2], _fs(DELETED), "add")
    await note(inbox.id)
    await store.index.copy_messages(inbox.id, [1, 2, 3], archive.id)
    await note(archive.id)
    await store.index.expunge(inbox.id)
    await note(inbox.id)
    await store.index.move_messages(archive.id, [1], inbox.id)
    await note(inbox.id, archive.id)
    await store.index.store_flags(archive.id, [2, 3], _fs(FLAGGED), "replace")
    await note(archive.id)
    await _fill(store, ann, "Archive", _fs())
    await note(archive.id)
    await store.index.rename_mailbox(ann.id, "Archive", "Archive 2024")
    await note(archive.id)
    for values in seen.values():
        assert all(a < b for a, b in zip(values, values[1:])), values
    # every message's MODSEQ is at most its mailbox's HIGHESTMODSEQ
    for i in seen:
        box = await _box(store, i)
        assert all(m.modseq <= box.highestmodseq for m in await store.index.list_messages(i))


# --------------------------------------------------------------------------- change feed


async def _until(changes, mailbox_id: int, highestmodseq: int, timeout: float = 3.0):  # noqa: ANN001, ANN202
    """Changes read until `mailbox_id` reaches `highestmodseq`."""
    seen: list[MailboxChange] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        change = await asyncio.wait_for(
            changes.__anext__(), max(0.01, deadline - loop.time())
        )
        seen.append(change)
        if change.mailbox_id == mailbox_id and change.highestmodseq >= highestmodseq:
            return seen


async def test_watch_sees_session_changes(store: Store) -> None:
    (ann,) = await _users(store, "ann")
    inbox = await _fill(store, ann, "INBOX", _fs(), _fs(), _fs())
    archive = await store.index.get_mailbox(ann.id, "Archive")
    async with store.index.watch() as changes:
        await store.index.store_flags(inbox.id, [1, 2], _fs(DELETED), "add")
        box = await _box(store, inbox.id)
        seen = await _until(changes, inbox.id, box.highestmodseq)
        assert seen[-1] == MailboxChange(ann.id, inbox.id, box.uidnext, box.highestmodseq)

        assert await store.index.expunge(inbox.id) == [1, 2]
        box = await _box(store, inbox.id)
        seen = await _until(changes, inbox.id, box.highestmodseq)
        assert seen[-1] == MailboxChange(ann.id, inbox.id, box.uidnext, box.highestmodseq)

        # a move announces both mailboxes
        await store.index.move_messages(inbox.id, [3], archive.id)
        src, dst = await _box(store, inbox.id), await _box(store, archive.id)
        seen = await _until(changes, archive.id, dst.highestmodseq)
        if not any(c.mailbox_id == inbox.id and c.highestmodseq >= src.highestmodseq for c in seen):
            seen += await _until(changes, inbox.id, src.highestmodseq)
        assert MailboxChange(ann.id, archive.id, dst.uidnext, dst.highestmodseq) in seen
        assert MailboxChange(ann.id, inbox.id, src.uidnext, src.highestmodseq) in seen


async def test_storage_used_sums_every_mailbox_of_one_user(store: Store) -> None:
    ann, bob = await _users(store, "ann", "bob")
    assert await store.index.storage_used(ann.id) == 0
    inbox = await _fill(store, ann, "INBOX", _fs(), _fs("\\Seen"))
    sent = await _fill(store, ann, "Sent", _fs())
    await _fill(store, bob, "INBOX", _fs())
    sizes = [m.size for box in (inbox, sent) for m in await store.index.list_messages(box.id)]
    assert len(sizes) == 3
    assert await store.index.storage_used(ann.id) == sum(sizes)
    # a copy counts again (the quota is on what the user keeps, as IMAP QUOTA counts it)
    await store.index.copy_messages(inbox.id, [1], sent.id)
    assert await store.index.storage_used(ann.id) == sum(sizes) + sizes[0]
    await store.index.store_flags(inbox.id, [1, 2], _fs("\\Deleted"), "add")
    await store.index.expunge(inbox.id)
    assert await store.index.storage_used(ann.id) == sizes[2] + sizes[0]
    (bob_message,) = await store.index.list_messages((await store.index.get_mailbox(bob.id, "INBOX")).id)
    assert await store.index.storage_used(bob.id) == bob_message.size
