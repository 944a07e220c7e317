"""APPEND (RFC 3501 section 6.3.11, RFC 3502 MULTIAPPEND, RFC 4315 APPENDUID, RFC 3516
literal8, RFC 7889 APPENDLIMIT, RFC 9208 quota) as a part of `ImapSession` (a mixin:
the session provides ``store``, ``pipeline``, ``channel``, ``user``, ``user_id``,
``append_limit`` and ``_name``), and `LiteralSpool`, where the connection puts a large
APPEND literal while it arrives.

Invariants:

* A literal up to ``limits.spool_threshold`` comes whole in the command; a larger one
  (after login) comes from the reader in pieces (`pymail.proto.imap.reader.LiteralData`)
  that the connection writes into a `LiteralSpool` as they arrive: the spool SMTP DATA
  uses (`pymail.delivery.spool`, one `Spool` per process), a file from the first octet,
  hashed as it streams (`pymail.proto.content.ContentMeter`: the SHA-256 is the blob
  key).  So a connection holds one write batch of an APPEND, never the message.
* What the reader checks before a literal is read stays there: APPENDLIMIT (``NO
  [TOOBIG]`` before the ``+``), the pre-login limit, LITERAL+ (RFC 7888).  A NUL in a
  non-literal8 literal is ``BAD`` once the literal is consumed.  After the literal:
  the mailbox (``NO [TRYCREATE]``), the user's quota (``NO [OVERQUOTA]``), the free
  space (``store.space.room_for``, ``NO [OVERQUOTA] Not enough disk space``; a spool
  that runs out of space says the same).
* Durable before OK (docs/architecture.md, "The durability rule"): the message is a
  delivery `Transaction` (``service="imap"``, the authenticated user, no envelope) with
  one `LocalTarget` -- the mailbox, the flags (without \\Recent) and the internal date
  the client gave -- handed to `Pipeline.deliver`, the one delivery path of the MX,
  submission, APPEND and pymail's bounces: blob first (from the spool file for a
  streamed literal: hard link or streamed PUT; the MIME parse of a large message in a
  thread), then the index commit, and only then the tagged ``OK [APPENDUID]``.
* MULTIAPPEND (RFC 3502 section 3): one APPEND may carry several messages (each with
  its own flags and date); all are appended or none.  Each is at most APPENDLIMIT, all
  together at most the reader's ``max_append_total`` (4 x APPENDLIMIT) and the quota
  and free space; the blobs of all go first, then ONE index transaction for all
  (`Pipeline.deliver_all`, `Index.deliver_many`), then ``OK [APPENDUID v uid-set]``.
  A zero-length message is ``NO`` (RFC 3502 section 6.3.11: a client cancels so).
* Stored exactly as appended (RFC 3501 section 6.3.11): no Return-Path or Received is
  added (delivery adds none; the MX writes its trace headers itself), so BODY[] gives
  back the octets sent.
* Every spool file is removed once the command ends, whatever ended it (OK, NO, BAD, a
  hang-up inside the literal, a deadline, shutdown): the connection drops a literal no
  command took, the command its `MessageContent`.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
from typing import TYPE_CHECKING

from pymail.delivery.local import PARSE_IN_THREAD_ABOVE
from pymail.delivery.pipeline import new_queue_id
from pymail.delivery.spool import MessageContent, Spool
from pymail.delivery.transaction import ClientFacts, LocalTarget, Recipient, Transaction
from pymail.net.imap.refusals import Refusal
from pymail.proto.content import ContentMeter
from pymail.proto.imap import responses as r
from pymail.proto.imap.flags import keep_keyword_spelling
from pymail.proto.imap.types import Append, Command

if TYPE_CHECKING:
    from pymail.net.imap.session import ImapSession

TEXT_NO_MAILBOX = "No such mailbox"
TEXT_NO_SPACE = "Not enough disk space"
TEXT_TOO_BIG = "Message too big"
TEXT_OVER_QUOTA = "Quota exceeded"
TEXT_EMPTY = "Empty message; nothing appended"


class LiteralSpool:
    """One streamed APPEND literal on its way to the spool: its octets hashed as they
    come (`ContentMeter`) and written by a `SpoolWriter` that makes its file at once
    (the size is known and above the threshold)."""

    def __init__(self, spool: Spool, size: int) -> None:
        self.size = size  #: the literal's declared octets
        self.received = 0  #: octets written so far
        self._meter = ContentMeter()
        self._writer = spool.writer(expected_size=size)

    @property
    def complete(self) -> bool:
        """All its octets came (the next `LiteralData` is another literal's)."""
        return self.received >= self.size

    async def write(self, data: bytes) -> None:
        self.received += len(data)
        await self._writer.write(self._meter.take(data))

    async def finish(self) -> MessageContent:
        """The whole literal as delivery takes it (`SpoolError` if the spool failed, its
        file removed); the caller owns the file now."""
        return await self._writer.finish(self._meter.key)

    def discard(self) -> None:
        """Drop it (idempotent; nothing to do once `finish` handed the file over)."""
        self._writer.discard()


class AppendCommand:
    """APPEND and MULTIAPPEND for `ImapSession` (see the module docstring)."""

    async def cmd_append(self: ImapSession, command: Command):
        args = command.arguments
        assert isinstance(args, Append)
        messages = args.messages  # MULTIAPPEND (RFC 3502): one or more, all or none
        name = self._name(args.mailbox)
        box = await self.store.index.get_mailbox(self.user_id, name)
        if box is None:
            raise Refusal(TEXT_NO_MAILBOX, r.TRYCREATE)
        for m in messages:
            if not m.size:  # RFC 3502 section 6.3.11: NO, a client's way to cancel
                raise Refusal(TEXT_EMPTY)
            if m.size > self.append_limit:  # RFC 7889, per message; the reader checks first
                raise Refusal(TEXT_TOO_BIG, r.TOOBIG)
        total = sum(m.size for m in messages)
        await self._check_quota(total)
        space = self.store.space
        if space is not None and not space.room_for(total):
            # below storage.min_free_space: new mail waits, deleting still works
            raise Refusal(TEXT_NO_SPACE, r.OVERQUOTA)
        now = _dt.datetime.now(_dt.timezone.utc)
        assert self.user is not None
        contents: list[MessageContent] = []
        try:
            items: list[tuple[Transaction, LocalTarget]] = []
            for m in messages:
                # a streamed literal: its spool file, in order (a SpoolError is a
                # StorageError: NO); the connection drops those no message took
                content = (await self.channel.streamed_literal() if m.streamed
                           else await _in_memory(m.message))
                contents.append(content)
                txn = Transaction(
                    queue_id=new_queue_id(), sender="",
                    recipients=[Recipient(self.user.address)],
                    client=ClientFacts(service="imap", ip=self.channel.client_ip,
                                       tls="TLS" if self.channel.tls else None, user=self.user),
                    received_at=now)
                txn.message = content
                # system flags arrive canonical from the parser (RFC 3501 section 2.3.2)
                flags = keep_keyword_spelling(
                    (f for f in (m.flags or ()) if f != "\\Recent"), ())
                items.append((txn, LocalTarget(self.user_id, box.name, flags,
                                               m.internal_date or now)))
            if len(items) == 1:
                txn, target = items[0]
                delivered = [await self.pipeline.deliver(txn, (target,))]
            else:  # every blob, then one index transaction (RFC 3502 section 3)
                delivered = await self.pipeline.deliver_all(items)
        finally:
            for content in contents:
                content.discard()
        uids = []
        for d in delivered:
            if not d.stored or d.stored[0].mailbox_id != box.id:  # mailbox deleted meanwhile
                raise Refusal(TEXT_NO_MAILBOX, r.TRYCREATE)
            uids.append(d.stored[0].uid)
        # RFC 4315 section 3: APPENDUID's uid-set names every new message, in order
        return "APPEND completed", r.code_appenduid(box.uidvalidity, uids)

    async def _check_quota(self: ImapSession, adding: int) -> None:
        """NO [OVERQUOTA] (RFC 9208 section 4.3) when `adding` octets exceed the
        user's quota (``virtual_users.quota``, 0 = unlimited)."""
        assert self.user is not None
        if self.user.quota and await self._storage_used() + adding > self.user.quota:
            raise Refusal(TEXT_OVER_QUOTA, r.OVERQUOTA)


async def _in_memory(data: bytes) -> MessageContent:
    """A literal that came whole, as delivery takes it (its SHA-256 hashed in a thread
    when it is large, as its parse will be)."""
    if len(data) > PARSE_IN_THREAD_ABOVE:
        key = await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())
    else:
        key = hashlib.sha256(data).hexdigest()
    return MessageContent(size=len(data), key=key, data=data)
