"""The MX's policy and delivery: aiosmtpd handler hooks for who may receive mail here
(nobody relays through the MX), the trace headers, and the delivery behind the ``250``.

* **Recipients** are parsed by `pymail.mail.address` and routed by the `Router`; the
  bare ``<Postmaster>`` (no domain, any case) is accepted as RFC 5321 section 4.5.1
  requires and routed as ``server.postmaster`` (`ServerConfig.postmaster_address`).
* **Trace headers** (Return-Path, Received; pymail.mail.trace) are made when DATA starts,
  so the content can be hashed and spooled with them as it arrives.
* **Delivery**: ``250`` only after `LocalDeliverer` made the message durable for every
  accepted recipient; a storage failure is ``451 4.3.0`` (``452 4.3.1`` when the
  spool's or the blobs' file system is full: ENOSPC), never a silent accept
  (docs/architecture.md, "The durability rule").  The delivery runs in a task of its
  own, shielded: a client that hangs up does not interrupt a store half-way.  The spool file, if any, is removed when it ends.

Each transaction and each refused recipient logs one line (``rip=``, ``helo=``,
``from=``, ``to=``, ``reply=``); no client input reaches a log line unsanitised.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import re
import secrets
import time
from typing import TYPE_CHECKING

from aiosmtpd.smtp import Envelope, Session

from pymail import metrics
from pymail.delivery.local import LocalDeliverer
from pymail.delivery.router import RecipientStatus, Router
from pymail.delivery.spool import MessageContent
from pymail.mail import trace
from pymail.mail.address import AddressError, Mailbox, parse_mailbox, split_route
from pymail.proto.smtp.replies import Reply
from pymail.store.interfaces import DeliveryTarget, StorageError, User, is_no_space
from pymail.store.space import FreeSpace

if TYPE_CHECKING:
    from pymail.net.smtp import PymailSMTP

__all__ = ["MxHandler", "PymailEnvelope", "POSTMASTER", "new_queue_id"]

log = logging.getLogger("pymail.smtp")

#: RFC 5321 section 4.5.1: "<Postmaster>" without a domain, case-insensitive.
POSTMASTER = "postmaster"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _safe(text: object) -> str:
    """Client-supplied text made safe for one log line."""
    return _CONTROL.sub("?", str(text))


def new_queue_id() -> str:
    return secrets.token_hex(5).upper()


def _declared_size(mail_options: list[str]) -> int:
    """The SIZE= a client declared at MAIL (RFC 1870), 0 when it did not."""
    for option in mail_options:
        if option.upper().startswith("SIZE=") and option[5:].isdigit():
            return int(option[5:])
    return 0


class PymailEnvelope(Envelope):
    """aiosmtpd's envelope plus what pymail decides during the transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.queue_id: str = ""
        self.sender: str = ""  #: canonical reverse-path, "" for the null sender
        #: user id → target, one per mailbox owner, whichever RCPT reached them first
        self.targets: dict[int, DeliveryTarget] = {}
        self.recipients: list[str] = []  #: canonical accepted RCPT addresses
        self.received_at: _dt.datetime | None = None  #: when DATA started (Received, INTERNALDATE)
        self.message: MessageContent | None = None  #: the content, once received


class MxHandler:
    """Policy and delivery for the MX service (aiosmtpd handler hooks).

    Nobody relays through the MX: every recipient must route to a local mailbox."""

    def __init__(
        self,
        *,
        router: Router,
        deliverer: LocalDeliverer,
        hostname: str,
        max_recipients: int,
        postmaster: str,
        service: str = "smtp",
        space: FreeSpace | None = None,
    ) -> None:
        self.service = service  #: the [listen] name, a metrics label
        #: free space of the local file systems; below the minimum MAIL gets 452 4.3.1
        self.space = space
        self.router = router
        self.deliverer = deliverer
        self.hostname = hostname
        self.max_recipients = max_recipients
        self.postmaster = postmaster  #: where <Postmaster> goes (server.postmaster)
        self.deliveries_in_flight: set[asyncio.Future[str]] = set()

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def _client_ip(session: Session) -> str:
        peer = session.peer
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    def _log(self, envelope: PymailEnvelope, session: Session, verdict: str, reply: str,
             *, to: str | None = None, size: int | None = None, extra: str = "") -> None:
        rcpts = to if to is not None else ",".join(f"<{r}>" for r in envelope.recipients)
        parts = [
            f"{envelope.queue_id or 'NOQUEUE'}:",
            verdict,
            f"rip={self._client_ip(session)}",
            f"helo=<{_safe(session.host_name or '')}>",
            f"from=<{_safe(envelope.sender)}>",
            f"to={_safe(rcpts)}",
        ]
        if size is not None:
            parts.append(f"size={size}")
        if extra:
            parts.append(extra)
        parts.append(f'reply="{reply}"')
        log.info(" ".join(parts))

    def trace_headers(self, session: Session, envelope: PymailEnvelope) -> bytes:
        """Return-Path and Received for the message DATA is about to receive (RFC 5321
        section 4.4); notes the time in ``envelope.received_at``."""
        now = envelope.received_at = _dt.datetime.now(_dt.timezone.utc)
        protocol = trace.protocol_keyword(
            esmtp=session.extended_smtp,
            tls=session.ssl is not None,
            authenticated=bool(session.authenticated),
            smtputf8=envelope.smtp_utf8,
        )
        return trace.return_path(envelope.sender) + trace.received(
            helo=session.host_name or "",
            client_ip=self._client_ip(session),
            client_name=None,
            by_host=self.hostname,
            protocol=protocol,
            queue_id=envelope.queue_id,
            recipient=envelope.recipients[0] if len(envelope.recipients) == 1 else None,
            when=now,
        )

    # -- hooks -----------------------------------------------------------------------

    async def handle_EHLO(
        self, server: PymailSMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        # A service without SASL mechanisms (the MX) advertises no AUTH at all.
        responses = [r for r in responses if r.rstrip() != "250-AUTH"]
        # RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES; "250 HELP" stays last.
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope, address: str,
        mail_options: list[str],
    ) -> str:
        if address == "<>":
            sender = ""
        else:
            # RFC 5321 Appendix C: a source route in the reverse-path is ignored.
            _route, mailbox_text = split_route(address)
            try:
                mailbox = parse_mailbox(mailbox_text)
            except AddressError as e:
                log.info("NOQUEUE: reject rip=%s from=<%s> reason=%s reply=%r",
                         self._client_ip(session), _safe(address), _safe(e), Reply.BAD_SENDER)
                return Reply.BAD_SENDER
            if not mailbox.address.isascii() and not envelope.smtp_utf8:
                return Reply.NEED_SMTPUTF8
            sender = mailbox.address
        if self.space is not None and not self.space.room_for(_declared_size(mail_options)):
            # Postfix's queue_minfree: refuse now, while the client still holds the
            # message, rather than fail the DATA it would send (RFC 1870 section 6.2).
            log.info("NOQUEUE: reject rip=%s from=<%s> reason=disk_full(%s) reply=%r",
                     self._client_ip(session), _safe(sender), self.space.describe(), Reply.NO_SPACE)
            metrics.SMTP_TRANSACTIONS.labels(self.service, "tempfail").inc()
            return Reply.NO_SPACE
        envelope.mail_from = sender or "<>"
        envelope.sender = sender
        envelope.mail_options.extend(mail_options)
        envelope.queue_id = new_queue_id()
        return Reply.SENDER_OK

    async def handle_RCPT(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        reply, reason, canonical, users = await self._route(session, envelope, address)
        if users is None:
            self._log(envelope, session, "reject", reply, to=f"<{canonical}>", extra=f"reason={reason}")
            metrics.SMTP_RECIPIENTS_REFUSED.labels(self.service, reason.split("(", 1)[0]).inc()
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.recipients.append(canonical)
        for user_id in users:
            envelope.targets.setdefault(user_id, DeliveryTarget(user_id=user_id))
        return Reply.RECIPIENT_OK

    async def _route(
        self, session: Session, envelope: PymailEnvelope, address: str
    ) -> tuple[str, str, str, list[int] | None]:
        """(reply, reason for the log, address as logged, user ids or None if refused)."""
        if len(envelope.recipients) >= self.max_recipients:
            return Reply.TOO_MANY_RECIPIENTS, "recipient_limit", address, None
        route, mailbox_text = split_route(address)
        if route:
            # A source route asks us to forward: refuse it like any relay attempt.
            return Reply.RELAY_DENIED, "source_route", address, None
        if mailbox_text.lower() == POSTMASTER:
            # RFC 5321 section 4.5.1: must be accepted without a domain; it means the
            # postmaster of this server's domain, from config.
            mailbox_text = self.postmaster
        try:
            mailbox: Mailbox = parse_mailbox(mailbox_text)
        except AddressError as e:
            return Reply.BAD_RECIPIENT, f"syntax({e})", address, None
        canonical = mailbox.address
        if not canonical.isascii() and not envelope.smtp_utf8:
            return Reply.NEED_SMTPUTF8, "smtputf8_required", canonical, None
        if mailbox.is_literal:
            return Reply.RELAY_DENIED, "address_literal", canonical, None
        # Sender-specified routing (user%host@us, host!user@us, "user@host"@us) would
        # make a classic server forward the mail: refuse it as a relay attempt.
        if any(c in mailbox.local_part for c in "%!@"):
            return Reply.RELAY_DENIED, "sender_routing", canonical, None
        try:
            resolution = await self.router.resolve(canonical)
        except StorageError as e:
            metrics.STORAGE_ERRORS.labels("recipient_lookup").inc()
            return Reply.TEMPFAIL, f"storage({e})", canonical, None
        status = resolution.status
        if status is RecipientStatus.LOCAL:
            try:
                full = await self._over_quota(resolution.users, envelope)
            except StorageError as e:
                metrics.STORAGE_ERRORS.labels("recipient_lookup").inc()
                return Reply.TEMPFAIL, f"storage({e})", canonical, None
            if full is not None:
                return Reply.MAILBOX_FULL, f"over_quota(user=<{_safe(full.address)}>)", canonical, None
            return Reply.RECIPIENT_OK, "", canonical, [u.id for u in resolution.users]
        if status is RecipientStatus.NOT_LOCAL:
            # The MX never relays; authenticated submission is another service.
            return Reply.RELAY_DENIED, "relay", canonical, None
        reply = {
            RecipientStatus.UNKNOWN_USER: Reply.UNKNOWN_USER,
            RecipientStatus.USER_DISABLED: Reply.USER_DISABLED,
            RecipientStatus.DOMAIN_DISABLED: Reply.DOMAIN_DISABLED,
            RecipientStatus.LOOP: Reply.ALIAS_LOOP,
            RecipientStatus.FORWARD_UNAVAILABLE: Reply.FORWARD_UNAVAILABLE,
        }[status]
        return reply, status.value + (f"({resolution.detail})" if resolution.detail else ""), canonical, None

    async def _over_quota(self, users: list[User], envelope: PymailEnvelope) -> User | None:
        """The first of `users` whose quota (``virtual_users.quota``, 0 = none) this
        message would exceed: what the user keeps now plus the size the client declared
        with MAIL SIZE= (RFC 1870; 0 when it did not).  The whole recipient is refused
        then (``452 4.2.2``, temporary: the sender retries once the user made room), an
        alias included, rather than silently leaving one member's copy out."""
        declared = _declared_size(envelope.mail_options)
        for user in users:
            if user.quota and await self.deliverer.index.storage_used(user.id) + declared > user.quota:
                return user
        return None

    async def handle_DATA_REFUSED(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope, reply: str,
        reason: str, size: int,
    ) -> None:
        """Not an aiosmtpd hook: PymailSMTP calls it when DATA content is refused."""
        self._log(envelope, session, "reject", reply, size=size, extra=f"reason={_safe(reason)}")
        metrics.SMTP_TRANSACTIONS.labels(self.service, "reject").inc()

    async def handle_DATA(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope
    ) -> str:
        # Shielded: a client hanging up must not cancel a store half-way; the outcome
        # is still logged.  The task owns envelope.message from here on.
        task = asyncio.ensure_future(self._deliver(session, envelope))
        self.deliveries_in_flight.add(task)
        task.add_done_callback(self.deliveries_in_flight.discard)
        return await asyncio.shield(task)

    async def _deliver(self, session: Session, envelope: PymailEnvelope) -> str:
        message = envelope.message
        assert message is not None
        try:
            return await self._store(session, envelope, message)
        finally:
            message.discard()

    async def _store(self, session: Session, envelope: PymailEnvelope, message: MessageContent) -> str:
        started = time.perf_counter()
        try:
            result = await self.deliverer.deliver(
                message, list(envelope.targets.values()), internal_date=envelope.received_at
            )
        except StorageError as e:
            reply = Reply.NO_SPACE if is_no_space(e) else Reply.TEMPFAIL
            self._log(envelope, session, "tempfail", reply, size=message.size,
                      extra=f"reason=storage({_safe(e)})")
            metrics.STORAGE_ERRORS.labels("deliver").inc()
            metrics.SMTP_TRANSACTIONS.labels(self.service, "tempfail").inc()
            return reply
        except Exception:
            log.exception("%s: delivery failed", envelope.queue_id)
            self._log(envelope, session, "tempfail", Reply.TEMPFAIL, size=message.size,
                      extra="reason=internal_error")
            metrics.SMTP_TRANSACTIONS.labels(self.service, "tempfail").inc()
            return Reply.TEMPFAIL
        metrics.DELIVERY_SECONDS.observe(time.perf_counter() - started)
        metrics.MESSAGE_BYTES.inc(message.size)
        metrics.SMTP_TRANSACTIONS.labels(self.service, "accepted").inc()
        reply = Reply.QUEUED.format(queue_id=envelope.queue_id)
        self._log(envelope, session, "accepted", reply, size=message.size,
                  extra=f"mailboxes={len(result.stored)} blob={result.blob_key[:16]}")
        return reply

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s: %s", type(error).__name__, _safe(error))
        return Reply.TEMPFAIL
