"""The delivery pipeline: the one way a message becomes durable, for the MX, submission,
IMAP APPEND and pymail's own bounces.

Two steps, both over a `Transaction` (pymail.delivery.transaction):

1. `Pipeline.route` at RCPT: each recipient becomes targets, as data -- `LocalTarget`
   (a user's mailbox), `RemoteTarget` (the outbound queue) -- or a `Rejection` with its
   reply.  Who may send where:

   * a domain that is not ours goes to the queue only for a client that may relay: an
     authenticated user (submission) or pymail itself (bounces); the MX answers
     ``554 5.7.1`` to everyone else (it never relays for strangers);
   * an alias pointing outside is a forward, accepted from anyone (it is our user's
     choice): its copy is queued with an SRS-rewritten envelope sender
     (pymail.delivery.srs) and an ORCPT naming the address it was sent to;
   * a domain whose ``domains.transport`` is ``smtp:[host]:port`` is relayed there
     (route ``smtp:host:port``) from anyone, as Postfix's relay_domains;
   * ``[delivery] relay_host`` turns every MX route into ``relay`` (the smarthost).  An
     explicit transport of a domain still wins, as Postfix's transport_maps win over its
     relayhost: an internal next hop must not go out through the ISP;
   * an SRS address of one of our domains (a bounce coming back to forwarded mail) is
     reversed and the bounce forwarded to the original sender; a forged or expired one
     routes like any unknown address (``550 5.1.1``).

2. `Pipeline.deliver` after DATA (or an APPEND literal): the blob(s) first -- the
   local copy (the content as received, trace headers included) and the outbound copy
   (the same content without the Return-Path, which only final delivery adds, RFC 5321
   section 4.4; with the DKIM signature on top when it is signed) -- then ONE
   `Index.deliver` with the mailbox rows and the queue rows.  Its return means both
   are durable: the caller replies only then (docs/architecture.md, "The durability
   rule"); any `StorageError` means nothing was
   indexed (an orphan blob at most, for the sweeper).  Forwarded copies whose sender SRS
   rewrote are queued as a message of their own (a queue row has one sender), in the
   same transaction.

IMAP APPEND (pymail.net.imap.append) skips step 1: its one `LocalTarget` is the
user's own mailbox, with the flags and internal date the client gave.  `deliver` adds
no header to any content (the MX writes Return-Path and Received into the spool before
the content), so an appended message is stored exactly as appended (RFC 3501 section
6.3.11).  The quota and free-space refusals are the command's (``NO [OVERQUOTA]``),
before `deliver`; a `StorageError` out of it is ``NO [UNAVAILABLE]``.  MULTIAPPEND
(RFC 3502) hands its messages to `deliver_all` together: all their blobs, then one
index transaction for all.

Signing (`Signer`, implemented by pymail.delivery.dkim): the outbound copy of mail from
an authenticated user whose header From is in the user's domain or the envelope
sender's (which submission checked the user owns), and pymail's own DSNs (for the From
domain, our host name).  Forwarded mail is not signed: pymail only adds trace headers, so
the author's own DKIM signature survives and DMARC passes on it; a signature of ours
would vouch for mail we did not write, and DKIM cannot help the SPF failure that SRS
fixes.  (ARC is the mechanism for forwarders, later.)

The inbound checks (pymail.checks) run between the transaction and its targets: the
MX and submission ask them for a `Verdict` after DATA and refuse the message when it
says so; otherwise `deliver` gets the verdict and, before any blob is written, applies
its header edits (Authentication-Results on top, forged fields removed, the scanners'
headers; pymail.mail.headeredit) to the one copy every target shares, and files the
local copies into each user's \\Junk mailbox when it says junk.  The trace headers and
the verdict's fields are thus part of the content-addressed blob (one per message, the
same for all its recipients: the verdict is per message), so IMAP serves stored octets
as they are, and RFC822.SIZE, BODY[] and POP3 RETR agree without any splicing.  An
APPEND gets no verdict (the user's own copy, stored as given).

Seam left for later work: Sieve turns a user's `LocalTarget` (made in
`_local_targets`) into fileinto/flag targets.

Invariants: no blocking work on the event loop (spool files are copied, hashed and
parsed in threads); a temporary spool file made for an outbound copy is removed when
`deliver` returns, whatever happens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import errno
import email.utils
import hashlib
import logging
import os
import secrets
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from pymail.delivery.local import structure_json, structure_json_of_file
from pymail.delivery.router import NextHop, RecipientStatus, Router
from pymail.delivery.spool import SPOOL_PREFIX, MessageContent, SpoolError
from pymail.delivery.srs import SenderRewriter, is_srs_address
from pymail.delivery.transaction import (
    ClientFacts,
    LocalTarget,
    Recipient,
    Rejection,
    RemoteTarget,
    Transaction,
)
from pymail.mail import trace
from pymail.mail.headeredit import HeaderEdit, edit_header
from pymail.mail.headers import parse_header
from pymail.proto.smtp.replies import Reply
from pymail.store.interfaces import BlobFileStore, Delivery, DeliveryTarget, Stored, User
from pymail.store.queue import QueuedMessage, QueuedRecipient

if TYPE_CHECKING:
    from pymail.checks.verdict import Verdict
    from pymail.config.schema import Config
    from pymail.store import Store

__all__ = ["Delivered", "Pipeline", "Signer", "new_queue_id", "now_utc"]

log = logging.getLogger("pymail.delivery")

Target = LocalTarget | RemoteTarget

#: Bytes of the header block read to find the From field (a header larger than this is
#: not signed: it has no From we could find cheaply).
HEADER_SCAN = 256 * 1024
_COPY_CHUNK = 256 * 1024


def now_utc() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def new_queue_id() -> str:
    """The id of a transaction in log lines, Received and `pymail queue`."""
    return secrets.token_hex(5).upper()


@runtime_checkable
class Signer(Protocol):
    """DKIM signing (pymail.delivery.dkim implements it)."""

    async def signature(self, message: MessageContent, domain: str) -> bytes | None:
        """DKIM-Signature header field(s) to put on top of `message` for `domain`
        (the RFC5322.From domain), or None when the domain has no key."""
        ...


@dataclass(frozen=True, slots=True)
class Delivered:
    """What `Pipeline.deliver` made durable."""

    queue_id: str
    blob_key: str | None  #: the local copy's blob (None: no local target)
    stored: list[Stored]  #: one per local target
    queued: list[QueuedMessage]  #: the queue entries (several when SRS split senders)
    signed: bool = False  #: the outbound copy carries our DKIM signature


class Pipeline:
    """Routing and durable delivery (see the module docstring)."""

    def __init__(self, *, store: Store, router: Router, signer: Signer | None, config: Config,
                 clock: Callable[[], _dt.datetime] = now_utc,
                 srs: SenderRewriter | None = None) -> None:
        self.store = store
        self.router = router
        self.signer = signer
        self.config = config
        self.clock = clock
        #: made from the configured secret on first need (reading it is file I/O)
        self._srs = srs
        self._file_blobs = store.blobs if isinstance(store.blobs, BlobFileStore) else None
        self._listeners: list[Callable[[Sequence[QueuedMessage]], None]] = []

    # ------------------------------------------------------------------ listeners

    def on_queued(self, callback: Callable[[Sequence[QueuedMessage]], None]) -> None:
        """Call `callback(messages)` after each commit that queued messages (the queue
        runner wakes up on it instead of waiting for its next poll)."""
        self._listeners.append(callback)

    # ------------------------------------------------------------------ routing

    @staticmethod
    def may_relay(txn: Transaction) -> bool:
        """Whether mail of this transaction may go to domains that are not ours: from an
        authenticated user, or pymail's own."""
        return txn.client.user is not None or txn.client.service == "internal"

    async def route(self, txn: Transaction, recipient: Recipient) -> list[Target] | Rejection:
        """The targets of one recipient, or its refusal (see the module docstring).
        `StorageError` when the directory cannot be read (answer 451)."""
        address = recipient.address
        if is_srs_address(address):
            reversed_ = await self._reverse_srs(address)
            if reversed_ is not None:
                return await self._route_bounce(txn, recipient, reversed_)
        resolution = await self.router.resolve(address)
        status = resolution.status
        if status is RecipientStatus.LOCAL:
            full = await self._over_quota(resolution.users, txn.size)
            if full is not None:
                return Rejection(Reply.MAILBOX_FULL, f"over_quota(user=<{full.address}>)")
            targets: list[Target] = self._local_targets(resolution.users)
            if resolution.forwards:
                sender = await self._forward_sender(txn.sender, address.rpartition("@")[2])
                for forward in resolution.forwards:
                    targets.append(self._remote(forward.address, forward.nexthop, recipient,
                                                sender=sender if sender != txn.sender else None))
            return targets
        if status is RecipientStatus.REMOTE:
            if not self.may_relay(txn):
                return Rejection(Reply.RELAY_DENIED, "relay")
            assert resolution.nexthop is not None
            return [self._remote(address, resolution.nexthop, recipient)]
        if status is RecipientStatus.RELAY_DOMAIN:
            assert resolution.nexthop is not None
            return [self._remote(address, resolution.nexthop, recipient)]
        reply = {
            RecipientStatus.UNKNOWN_USER: Reply.UNKNOWN_USER,
            RecipientStatus.USER_DISABLED: Reply.USER_DISABLED,
            RecipientStatus.DOMAIN_DISABLED: Reply.DOMAIN_DISABLED,
            RecipientStatus.LOOP: Reply.ALIAS_LOOP,
            RecipientStatus.UNSUPPORTED_TRANSPORT: Reply.FORWARD_UNAVAILABLE,
        }[status]
        detail = f"({resolution.detail})" if resolution.detail else ""
        return Rejection(reply, status.value + detail)

    @staticmethod
    def _local_targets(users: list[User]) -> list[Target]:
        """A user's copy (the Sieve seam: fileinto/flag targets will be made here)."""
        return [LocalTarget(user_id=u.id) for u in users]

    def _remote(self, address: str, nexthop: NextHop, recipient: Recipient, *,
                sender: str | None = None) -> RemoteTarget:
        route = nexthop.route
        if route == "mx" and self.config.delivery.relay_host:
            route = "relay"
        orcpt = recipient.orcpt
        if orcpt is None and address.lower() != recipient.address.lower():
            orcpt = f"rfc822;{recipient.address}"  # RFC 3461 section 4.2: where it was sent
        return RemoteTarget(address=address, domain=nexthop.domain, route=route, orcpt=orcpt,
                            notify=recipient.notify, sender=sender)

    async def _over_quota(self, users: list[User], declared: int) -> User | None:
        """The first user whose quota (``virtual_users.quota``, 0 = none) this message
        would exceed: what they keep now plus the size declared at MAIL (RFC 1870).  The
        whole recipient is refused then (``452 4.2.2``, temporary), an alias included,
        rather than silently leaving one member's copy out."""
        for user in users:
            if user.quota and await self.store.index.storage_used(user.id) + declared > user.quota:
                return user
        return None

    async def _is_our_domain(self, domain: str) -> bool:
        found = await self.store.directory.get_domain(domain.lower())
        return found is not None and found.is_active

    async def _forward_sender(self, sender: str, via_domain: str) -> str:
        """The envelope sender of a forwarded copy: SRS at `via_domain` (the alias's
        domain, whose SPF names us), unless null or one of our own domains."""
        if not sender or await self._is_our_domain(sender.rpartition("@")[2]):
            return sender
        rewritten = (await self._rewriter()).forward(sender, via_domain)
        if rewritten is None:
            log.info("SRS: cannot rewrite <%s> (too long); forwarding with it", sender)
            return sender
        return rewritten

    async def _rewriter(self) -> SenderRewriter:
        if self._srs is None:
            from pymail.delivery.srs import load_srs_secrets

            delivery, data_dir = self.config.delivery, self.config.server.data_dir
            found = await asyncio.to_thread(load_srs_secrets, delivery.srs_secret_file, data_dir)
            self._srs = SenderRewriter(found)
        return self._srs

    async def _reverse_srs(self, address: str) -> str | None:
        """The address an SRS address of one of our domains stands for; None if it is
        not ours, forged or expired."""
        if not await self._is_our_domain(address.rpartition("@")[2]):
            return None
        from pymail.delivery.srs import SrsError

        try:
            return (await self._rewriter()).reverse(address)
        except SrsError as e:
            log.info("SRS: refusing <%s>: %s", address, e)
            return None

    async def _route_bounce(self, txn: Transaction, recipient: Recipient,
                            original: str) -> list[Target] | Rejection:
        """A message (normally a bounce) to one of our SRS addresses: on to the address
        it stands for, keeping its own sender."""
        resolution = await self.router.resolve(original)
        if resolution.status is RecipientStatus.LOCAL and not resolution.forwards:
            return self._local_targets(resolution.users)
        if resolution.nexthop is not None:
            return [self._remote(original, resolution.nexthop, recipient)]
        return Rejection(Reply.UNKNOWN_USER, f"srs({resolution.status.value})")

    # ------------------------------------------------------------------ delivery

    async def deliver(self, txn: Transaction, targets: Sequence[Target],
                      verdict: Verdict | None = None) -> Delivered:
        """Make `txn.message` durable for every target: blobs, then one index
        transaction for mailbox and queue rows (see the module docstring), with the
        inbound checks' `verdict` applied first.  `StorageError` when anything failed
        (nothing is indexed then)."""
        message = txn.message
        if message is None:
            raise ValueError(f"{txn.queue_id}: no message content")
        if verdict is not None and verdict.junk:
            targets = await self._into_junk(targets)
        if verdict is None or verdict.edit.empty:
            return await self._deliver(txn, message, targets)
        edited = await _edited(message, verdict.edit)
        try:
            return await self._deliver(txn, edited, targets)
        finally:
            if edited is not message:
                edited.discard()

    async def deliver_all(
            self, items: Sequence[tuple[Transaction, LocalTarget]]) -> list[Delivered]:
        """Several messages, each with one local target, made durable together
        (MULTIAPPEND, RFC 3502 section 3: all or none): every blob first, then ONE index
        transaction for all (`Index.deliver_many`), so the durability rule holds for the
        batch and a failure of any leaves none indexed (`StorageError`, `NotFound`; a
        blob already put is left to the collector, as after a failed `deliver`).  No
        inbound checks and no remote targets: this is for a client's own messages."""
        blobs = []
        for txn, _ in items:
            if txn.message is None:
                raise ValueError(f"{txn.queue_id}: no message content")
            blobs.append(await self._store_blob(txn.message, parse=True))
        stored = await self.store.index.deliver_many([
            Delivery(blob_key=key, size=txn.message.size,
                     internal_date=target.internal_date or txn.received_at, structure=structure,
                     targets=(DeliveryTarget(target.user_id, target.mailbox, target.flags),))
            for (txn, target), (key, structure) in zip(items, blobs, strict=True)
            if txn.message is not None
        ])
        return [Delivered(txn.queue_id, key, s, [])
                for (txn, _), (key, _s), s in zip(items, blobs, stored, strict=True)]

    async def _into_junk(self, targets: Sequence[Target]) -> list[Target]:
        """The local copies that would go to INBOX filed into the user's \\Junk
        mailbox (RFC 6154) instead; ``Junk`` (made with the defaults) if it has none."""
        out: list[Target] = []
        for t in targets:
            if isinstance(t, LocalTarget) and t.mailbox.upper() == "INBOX":
                boxes = await self.store.index.list_mailboxes(t.user_id)
                junk = next((b.name for b in boxes if b.special_use == "\\Junk"), "Junk")
                t = dataclasses.replace(t, mailbox=junk)
            out.append(t)
        return out

    async def _deliver(self, txn: Transaction, message: MessageContent,
                       targets: Sequence[Target]) -> Delivered:
        local: dict[tuple[int, str], LocalTarget] = {}
        remote: dict[tuple[str, str], RemoteTarget] = {}
        for t in targets:
            if isinstance(t, LocalTarget):
                local.setdefault((t.user_id, t.mailbox), t)
            else:
                remote.setdefault((t.address.lower(), t.sender or txn.sender), t)
        if not local and not remote:
            raise ValueError(f"{txn.queue_id}: no targets")
        dates = {t.internal_date or txn.received_at for t in local.values()}
        if len(dates) > 1:
            raise ValueError(f"{txn.queue_id}: local targets with different internal dates")
        local_key, structure = None, ""
        if local:
            local_key, structure = await self._store_blob(message, parse=True)
        queued: list[QueuedMessage] = []
        signed = False
        outbound_key, outbound_size = local_key, message.size
        if remote:
            outbound_key, outbound_size, signed = await self._store_outbound(txn, message)
            queued = self._queue_entries(txn, list(remote.values()), outbound_key, outbound_size)
        stored = await self.store.index.deliver(Delivery(
            blob_key=local_key or outbound_key or "",
            size=message.size if local else outbound_size,
            internal_date=dates.pop() if dates else txn.received_at,
            structure=structure,
            targets=tuple(DeliveryTarget(t.user_id, t.mailbox, t.flags) for t in local.values()),
            queued=tuple(queued),
        ))
        if queued:
            for callback in self._listeners:
                try:
                    callback(queued)
                except Exception:  # noqa: BLE001 - a listener must not fail a delivery
                    log.exception("queue listener failed")
        return Delivered(txn.queue_id, local_key, stored, queued, signed)

    def _queue_entries(self, txn: Transaction, targets: list[RemoteTarget], blob_key: str,
                       size: int) -> list[QueuedMessage]:
        """One queued message per envelope sender (SRS gives forwarded copies their own)."""
        by_sender: dict[str, list[RemoteTarget]] = {}
        for t in targets:
            by_sender.setdefault(t.sender if t.sender is not None else txn.sender, []).append(t)
        now = self.clock()
        expires = now + _dt.timedelta(seconds=self.config.delivery.max_lifetime)
        user = txn.client.user
        entries = []
        for n, (sender, group) in enumerate(sorted(by_sender.items(),
                                                   key=lambda kv: kv[0] != txn.sender)):
            if txn.client.service == "internal":
                origin = "dsn"
            elif user is not None:
                origin = "submission"
            elif sender == txn.sender and all(t.route.startswith("smtp:") for t in group):
                origin = "transport"
            else:
                origin = "forward"
            entries.append(QueuedMessage(
                queue_id=txn.queue_id if n == 0 else f"{txn.queue_id}-{n + 1}",
                blob_key=blob_key, size=size, sender=sender,
                recipients=tuple(QueuedRecipient(t.address, t.domain.lower(), t.route, t.orcpt,
                                                 t.notify) for t in group),
                created_at=now, expires_at=expires, origin=origin,
                auth_user=user.address if user is not None else None,
                envid=txn.envid, ret=txn.ret, requiretls=txn.requiretls,
                smtputf8=txn.smtputf8 or not all(t.address.isascii() for t in group)
                or not sender.isascii(),
                body=txn.body,
            ))
        return entries

    async def _store_blob(self, message: MessageContent, *, parse: bool) -> tuple[str, str]:
        """Put `message` (memory or spool file) durably; (key, JSON structure or "")."""
        if message.path is not None:
            structure = ""
            if parse:
                structure = await asyncio.to_thread(structure_json_of_file, message.path)
            if self._file_blobs is not None:
                key = await self._file_blobs.put_file(message.path, message.key)
            else:  # a backend without the capability (none of pymail's): read whole
                key = await self.store.blobs.put(await asyncio.to_thread(message.path.read_bytes))
            return key, structure
        assert message.data is not None
        structure = await structure_json(message.data) if parse else ""
        return await self.store.blobs.put(message.data), structure

    async def _store_outbound(self, txn: Transaction,
                              message: MessageContent) -> tuple[str, int, bool]:
        """The outbound copy as a blob: (key, size, signed)."""
        made: list[MessageContent] = []
        try:
            content = await _without_return_path(message)
            if content is not message:
                made.append(content)
            signed = False
            domain = await self._signing_domain(txn, content)
            if domain is not None:
                assert self.signer is not None
                signature = await self.signer.signature(content, domain)
                if signature:
                    content = await _with_prefix(content, signature, skip=0)
                    made.append(content)
                    signed = True
            key, _ = await self._store_blob(content, parse=False)
            return key, content.size, signed
        finally:
            for extra in made:
                extra.discard()

    async def _signing_domain(self, txn: Transaction, content: MessageContent) -> str | None:
        """The domain to sign the outbound copy for, or None (see the module docstring)."""
        if self.signer is None or not self.config.dkim.sign:
            return None
        user = txn.client.user
        if user is None and txn.client.service != "internal":
            return None  # mail from outside (forwards, relay domains): not ours to sign
        domain = from_domain(await _header_block(content))
        if domain is None:
            return None
        if txn.client.service == "internal":
            return domain
        assert user is not None
        allowed = {user.address.rpartition("@")[2].lower(), txn.sender.rpartition("@")[2].lower()}
        if domain not in allowed or not await self._is_our_domain(domain):
            return None
        return domain

    # ------------------------------------------------------------------ pymail's bounces

    async def submit_dsn(self, dsn: bytes, *, to: str, queue_id: str) -> Delivered | None:
        """Deliver pymail's own DSN about message `queue_id` to `to` (its sender):
        ``MAIL FROM:<>``, routed like any message (a local sender gets it in its INBOX,
        a remote one through the queue, signed for the From domain when there is a key).
        Durable on return; `StorageError` otherwise.  None when it cannot be routed (the
        null sender, an unknown local user: logged)."""
        if not to:
            log.warning("%s: no DSN to the null sender", queue_id)
            return None
        txn = Transaction(queue_id=new_queue_id(), sender="", recipients=[Recipient(to)],
                          client=ClientFacts(service="internal"), received_at=self.clock())
        routed = await self.route(txn, txn.recipients[0])
        if isinstance(routed, Rejection):
            log.warning("%s: DSN for %s to <%s> not delivered: %s (%s)", txn.queue_id, queue_id,
                        to, routed.reason, routed.reply)
            return None
        data = trace.return_path("") + dsn
        txn.message = MessageContent(size=len(data), key=hashlib.sha256(data).hexdigest(), data=data)
        delivered = await self.deliver(txn, routed)
        log.info("%s: DSN for %s to <%s> %s", txn.queue_id, queue_id, to,
                 "queued" if delivered.queued else "delivered")
        return delivered


# --------------------------------------------------------------------------- content


def from_domain(header_block: bytes) -> str | None:
    """The domain of the one address in the one From field of a header block, lower
    case; None if there is not exactly one."""
    try:
        values = parse_header(header_block).get_all("From")
        if len(values) != 1:
            return None
        found = [a for _, a in email.utils.getaddresses([values[0].value]) if a]
    except Exception:  # noqa: BLE001 - malformed headers: nothing to sign for
        return None
    if len(found) != 1 or "@" not in found[0]:
        return None
    return found[0].rpartition("@")[2].strip().lower() or None


async def _header_block(content: MessageContent) -> bytes:
    if content.data is not None:
        head = content.data[:HEADER_SCAN]
    else:
        assert content.path is not None
        path = content.path

        def read() -> bytes:
            with open(path, "rb") as f:
                return f.read(HEADER_SCAN)

        head = await asyncio.to_thread(read)
    end = head.find(b"\r\n\r\n")
    return head if end < 0 else head[: end + 4]


def _return_path_length(head: bytes) -> int:
    """Octets of a leading Return-Path field (ours: one line), 0 if there is none."""
    if head[:12].lower() != b"return-path:":
        return 0
    end = head.find(b"\r\n")
    return 0 if end < 0 else end + 2


async def _without_return_path(message: MessageContent) -> MessageContent:
    """`message` without its leading Return-Path (RFC 5321 section 4.4: only final
    delivery adds one); the same object when it has none."""
    if message.data is not None:
        skip = _return_path_length(message.data[:1024])
        if not skip:
            return message
        data = message.data[skip:]
        return MessageContent(size=len(data), key=hashlib.sha256(data).hexdigest(), data=data)
    assert message.path is not None
    path = message.path

    def head() -> bytes:
        with open(path, "rb") as f:
            return f.read(1024)

    skip = _return_path_length(await asyncio.to_thread(head))
    if not skip:
        return message
    return await _with_prefix(message, b"", skip=skip)


async def _edited(message: MessageContent, edit: HeaderEdit) -> MessageContent:
    """`message` with the header `edit` applied (a new copy: in memory, or a spool
    file beside the message's)."""
    head = await _header_block(message)
    fields, replaced = edit_header(head, edit)
    return await _with_prefix(message, fields, skip=replaced)


async def _with_prefix(message: MessageContent, prefix: bytes, *, skip: int) -> MessageContent:
    """`prefix` + `message` without its first `skip` octets: in memory, or as a new
    spool file beside the message's, copied and hashed in a thread."""
    if message.data is not None:
        data = prefix + message.data[skip:]
        return MessageContent(size=len(data), key=hashlib.sha256(data).hexdigest(), data=data)
    assert message.path is not None
    source = message.path
    try:
        return await asyncio.to_thread(_copy_file, source, prefix, skip)
    except OSError as e:
        raise SpoolError(f"spool {source.parent}: {e.strerror or e}",
                         no_space=e.errno in (errno.ENOSPC, errno.EDQUOT)) from e


def _copy_file(source: Path, prefix: bytes, skip: int) -> MessageContent:
    digest = hashlib.sha256(prefix)
    fd, name = tempfile.mkstemp(prefix=SPOOL_PREFIX, dir=source.parent)
    size = len(prefix)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as f:
            out.write(prefix)
            f.seek(skip)
            while chunk := f.read(_COPY_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return MessageContent(size=size, key=digest.hexdigest(), path=Path(name))
