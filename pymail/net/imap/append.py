"""APPEND (RFC 3501 section 6.3.11, RFC 4315 APPENDUID, RFC 3516 literal8, RFC 7889
APPENDLIMIT, RFC 9208 quota) as a part of `ImapSession` (a mixin: the session provides
``store``, ``pipeline``, ``channel``, ``user``, ``user_id``, ``append_limit`` and
``_name``), and `LiteralSpool`, where the connection puts a large APPEND literal while
it arrives.

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
from pymail.net.imap.refusals import Refusal, bad
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
TEXT_EMPTY = "Empty message"


class LiteralSpool:
    """One streamed APPEND literal on its way to the spool: its octets hashed as they
    come (`ContentMeter`) and written by a `SpoolWriter` that makes its file at once
    (the size is known and above the threshold)."""

    def __init__(self, spool: Spool, size: int) -> None:
        self.size = size  #: the literal's declared octets
        self._meter = ContentMeter()
        self._writer = spool.writer(expected_size=size)

    async def write(self, data: bytes) -> None:
        await self._writer.write(self._meter.take(data))

    async def finish(self) -> MessageContent:
        """The whole literal as delivery takes it (`SpoolError` if the spool failed, its
        file removed); the caller owns the file now."""
        return await self._writer.finish(self._meter.key)

    def discard(self) -> None:
        """Drop it (idempotent; nothing to do once `finish` handed the file over)."""
        self._writer.discard()


class AppendCommand:
    """APPEND for `ImapSession` (see the module docstring)."""

    async def cmd_append(self: ImapSession, command: Command):
        args = command.arguments
        assert isinstance(args, Append)
        name = self._name(args.mailbox)
        box = await self.store.index.get_mailbox(self.user_id, name)
        if box is None:
            raise Refusal(TEXT_NO_MAILBOX, r.TRYCREATE)
        if not args.size:
            raise bad(TEXT_EMPTY)
        if args.size > self.append_limit:  # RFC 7889; the reader checks it first
            raise Refusal(TEXT_TOO_BIG, r.TOOBIG)
        await self._check_quota(args.size)
        space = self.store.space
        if space is not None and not space.room_for(args.size):
            # below storage.min_free_space: new mail waits, deleting still works
            raise Refusal(TEXT_NO_SPACE, r.OVERQUOTA)
        # system flags arrive canonical from the parser (RFC 3501 section 2.3.2)
        flags = keep_keyword_spelling((f for f in (args.flags or ()) if f != "\\Recent"), ())
        now = _dt.datetime.now(_dt.timezone.utc)
        assert self.user is not None
        txn = Transaction(
            queue_id=new_queue_id(), sender="", recipients=[Recipient(self.user.address)],
            client=ClientFacts(service="imap", ip=self.channel.client_ip,
                               tls="TLS" if self.channel.tls else None, user=self.user),
            received_at=now)
        target = LocalTarget(self.user_id, box.name, flags, args.internal_date or now)
        # a streamed literal: the spool file (a SpoolError is a StorageError: NO)
        if args.streamed:
            message = await self.channel.streamed_literal()
        else:
            message = await _in_memory(args.message)
        txn.message = message
        try:
            delivered = await self.pipeline.deliver(txn, (target,))
        finally:
            message.discard()
        stored = delivered.stored
        if not stored or stored[0].mailbox_id != box.id:  # mailbox deleted meanwhile
            raise Refusal(TEXT_NO_MAILBOX, r.TRYCREATE)
        return "APPEND completed", r.code_appenduid(box.uidvalidity, [stored[0].uid])

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
