"""The MX's policy and delivery: aiosmtpd handler hooks that build a delivery
`Transaction` at MAIL and RCPT and hand it to the `Pipeline` (pymail.delivery.pipeline)
after DATA.

* **Recipients** are parsed by `pymail.mail.address` and routed by `Pipeline.route`; the
  bare ``<Postmaster>`` (no domain, any case) is accepted as RFC 5321 section 4.5.1
  requires and routed as ``server.postmaster`` (`ServerConfig.postmaster_address`).
  Nobody relays through the MX (``554 5.7.1``): a recipient is accepted when it routes to
  local mailboxes, to an alias's destinations outside (queued, sender SRS-rewritten), to
  a domain we relay for (``domains.transport``), or back through one of our SRS
  addresses.  Source routes, address literals and %/!/@ in local parts are refused as
  relay attempts before routing.
* **DSN** (RFC 3461) and **REQUIRETLS** (RFC 8689, on a TLS session) are advertised;
  their parameters (RET, ENVID at MAIL; NOTIFY, ORCPT at RCPT) are validated (``501``
  for bad ones) and stored with the queued copies.
* **Trace headers** (Return-Path, Received; pymail.mail.trace) are made when DATA starts,
  so the content can be hashed and spooled with them as it arrives.  Return-Path only when
  a recipient is local (RFC 5321 section 4.4: final delivery adds it; a relay does not).
* **Inbound checks** (pymail.checks): a `CheckSession` per SMTP session, started at
  each MAIL (iprev once, SPF per transaction); after DATA its verdict either refuses the
  message (``550``/``554 5.7.1``, ``451 4.7.1``) or goes to the pipeline with it (header
  edits, Junk).  The log line carries what each check found (``checks=...``).
* **Delivery**: ``250`` only after `Pipeline.deliver` made the message durable for every
  accepted recipient, local copies and queue entries in one index transaction; a storage
  failure is ``451 4.3.0`` for the whole transaction (``452 4.3.1`` when the spool's or
  the blobs' file system is full: ENOSPC), never a silent accept or half a delivery
  (docs/architecture.md, "The durability rule").  The delivery runs in a task of its
  own, shielded: a client that hangs up does not interrupt a store half-way.  The spool
  file, if any, is removed when it ends.

Each transaction and each refused recipient logs one line (``rip=``, ``helo=``,
``from=``, ``to=``, ``reply=``); no client input reaches a log line unsanitised.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import re
import time
from typing import TYPE_CHECKING

from aiosmtpd.smtp import Envelope, Session

from pymail import metrics
from pymail.delivery.pipeline import Pipeline, new_queue_id
from pymail.delivery.spool import MessageContent
from pymail.delivery.transaction import (
    ClientFacts,
    LocalTarget,
    Recipient,
    Rejection,
    RemoteTarget,
    Transaction,
)
from pymail.mail import trace
from pymail.mail.address import AddressError, Mailbox, parse_mailbox, split_route
from pymail.proto.smtp.params import ParameterError, mail_parameters, rcpt_parameters
from pymail.proto.smtp.replies import Reply
from pymail.store.interfaces import StorageError, is_no_space
from pymail.store.space import FreeSpace

if TYPE_CHECKING:
    from pymail.checks.session import Checks, CheckSession
    from pymail.net.smtp import PymailSMTP

__all__ = ["MxHandler", "PymailEnvelope", "POSTMASTER", "new_queue_id"]

log = logging.getLogger("pymail.smtp")

#: RFC 5321 section 4.5.1: "<Postmaster>" without a domain, case-insensitive.
POSTMASTER = "postmaster"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Octets RFC 3461 section 4 (RET, ENVID: 100; NOTIFY, ORCPT: 500) and RFC 8689
#: (" REQUIRETLS") add to the MAIL and RCPT command lines, beyond SIZE and SMTPUTF8.
MAIL_EXTRA = 26 + 10 + 100 + 11
RCPT_EXTRA = 500


def _safe(text: object) -> str:
    """Client-supplied text made safe for one log line."""
    return _CONTROL.sub("?", str(text))


def _declared_size(mail_options: list[str]) -> int:
    """The SIZE= a client declared at MAIL (RFC 1870), 0 when it did not."""
    for option in mail_options:
        if option.upper().startswith("SIZE=") and option[5:].isdigit():
            return int(option[5:])
    return 0


def _body(mail_options: list[str]) -> str:
    """RFC 6152 BODY= (7BIT unless 8BITMIME was declared; aiosmtpd checked the value)."""
    for option in mail_options:
        if option.upper() == "BODY=8BITMIME":
            return "8BITMIME"
    return "7BIT"


class PymailEnvelope(Envelope):
    """aiosmtpd's envelope plus what pymail decides during the transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.queue_id: str = ""
        self.sender: str = ""  #: canonical reverse-path, "" for the null sender
        #: the delivery transaction, made at MAIL; its recipients are the accepted RCPTs
        self.txn: Transaction | None = None
        #: what the accepted recipients route to (local mailboxes, queue entries)
        self.targets: list[LocalTarget | RemoteTarget] = []
        self.recipients: list[str] = []  #: canonical accepted RCPT addresses
        self.received_at: _dt.datetime | None = None  #: when DATA started (Received, INTERNALDATE)
        self.message: MessageContent | None = None  #: the content, once received

    @property
    def has_local(self) -> bool:
        return any(isinstance(t, LocalTarget) for t in self.targets)


class MxHandler:
    """Policy for the MX service (aiosmtpd handler hooks); delivery is the pipeline's.

    Nobody relays through the MX: see the module docstring."""

    def __init__(
        self,
        *,
        pipeline: Pipeline,
        hostname: str,
        max_recipients: int,
        postmaster: str,
        service: str = "smtp",
        space: FreeSpace | None = None,
        checks: Checks | None = None,
    ) -> None:
        self.service = service
        #: the inbound checks (None or inactive: none configured)
        self.checks = checks if checks is not None and checks.active else None  #: the [listen] name, a metrics label
        #: free space of the local file systems; below the minimum MAIL gets 452 4.3.1
        self.space = space
        self.pipeline = pipeline
        self.hostname = hostname
        self.max_recipients = max_recipients
        self.postmaster = postmaster  #: where <Postmaster> goes (server.postmaster)
        self.deliveries_in_flight: set[asyncio.Future[str]] = set()

    @property
    def router(self):  # noqa: ANN201 - the pipeline's (submission asks it about senders)
        return self.pipeline.router

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

    def _client_facts(self, session: Session) -> ClientFacts:
        return ClientFacts(service=self.service, ip=self._client_ip(session),
                           helo=session.host_name or "", tls=self._tls_text(session),
                           user=None)

    @staticmethod
    def _tls_text(session: Session) -> str | None:
        ssl = session.ssl
        if ssl is None:
            return None
        obj = ssl.get("ssl_object") if isinstance(ssl, dict) else None
        if obj is None:
            return "TLS"
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0]}" if cipher else str(obj.version())

    def trace_headers(self, session: Session, envelope: PymailEnvelope) -> bytes:
        """Return-Path (when a recipient is local) and Received for the message DATA is
        about to receive (RFC 5321 section 4.4); notes the time in
        ``envelope.received_at`` and the transaction's."""
        now = envelope.received_at = _dt.datetime.now(_dt.timezone.utc)
        if envelope.txn is not None:
            envelope.txn.received_at = now
        protocol = trace.protocol_keyword(
            esmtp=session.extended_smtp,
            tls=session.ssl is not None,
            authenticated=bool(session.authenticated),
            smtputf8=envelope.smtp_utf8,
        )
        return_path = trace.return_path(envelope.sender) if envelope.has_local else b""
        return return_path + trace.received(
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
        server.command_size_limits["MAIL"] = server.command_size_limit + MAIL_EXTRA
        server.command_size_limits["RCPT"] = server.command_size_limit + RCPT_EXTRA
        # RFC 2920 PIPELINING, RFC 2034 ENHANCEDSTATUSCODES, RFC 3461 DSN, RFC 8689
        # REQUIRETLS (only over TLS); "250 HELP" stays last.
        extensions = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN"]
        if session.ssl is not None:
            extensions.append("250-REQUIRETLS")
        return [*responses[:-1], *extensions, responses[-1]]

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
        try:
            found = server.extension_params
            if isinstance(found, ParameterError):
                raise found
            params = mail_parameters(found, tls=session.ssl is not None)
        except ParameterError as e:
            log.info("NOQUEUE: reject rip=%s from=<%s> reason=mail_parameters reply=%r",
                     self._client_ip(session), _safe(sender), e.reply)
            return e.reply
        declared = _declared_size(mail_options)
        if self.space is not None and not self.space.room_for(declared):
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
        envelope.txn = Transaction(
            queue_id=envelope.queue_id, sender=sender, recipients=[],
            client=self._client_facts(session), received_at=_dt.datetime.now(_dt.timezone.utc),
            envid=params.envid, ret=params.ret, requiretls=params.requiretls,
            smtputf8=bool(envelope.smtp_utf8), body=_body(mail_options), size=declared,
        )
        checks = self._check_session(session, envelope.txn.client)
        if checks is not None:
            checks.mail_from(envelope.txn.client, sender, session.host_name or "")
        return Reply.SENDER_OK

    def _check_session(self, session: Session, client: ClientFacts) -> CheckSession | None:
        """The session's inbound checks, made at its first MAIL (None: no checks)."""
        if self.checks is None:
            return None
        found = getattr(session, "pymail_checks", None)
        if found is None:
            found = self.checks.session(client)
            session.pymail_checks = found  # type: ignore[attr-defined]
        return found

    async def handle_RCPT(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope, address: str,
        rcpt_options: list[str],
    ) -> str:
        reply, reason, canonical, targets = await self._route(server, session, envelope, address)
        if targets is None:
            self._log(envelope, session, "reject", reply, to=f"<{canonical}>", extra=f"reason={reason}")
            metrics.SMTP_RECIPIENTS_REFUSED.labels(self.service, reason.split("(", 1)[0]).inc()
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.recipients.append(canonical)
        envelope.targets.extend(targets)
        return Reply.RECIPIENT_OK

    async def _route(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope, address: str
    ) -> tuple[str, str, str, list[LocalTarget | RemoteTarget] | None]:
        """(reply, reason for the log, address as logged, targets or None if refused)."""
        txn = envelope.txn
        assert txn is not None
        if len(envelope.recipients) >= self.max_recipients:
            return Reply.TOO_MANY_RECIPIENTS, "recipient_limit", address, None
        found = server.extension_params
        try:
            if isinstance(found, ParameterError):
                raise found
            params = rcpt_parameters(found)
        except ParameterError as e:
            return e.reply, "rcpt_parameters", address, None
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
        recipient = Recipient(canonical, orcpt=params.orcpt, notify=params.notify)
        try:
            routed = await self.pipeline.route(txn, recipient)
        except StorageError as e:
            metrics.STORAGE_ERRORS.labels("recipient_lookup").inc()
            return Reply.TEMPFAIL, f"storage({e})", canonical, None
        if isinstance(routed, Rejection):
            return routed.reply, _safe(routed.reason), canonical, None
        txn.recipients.append(recipient)
        return Reply.RECIPIENT_OK, "", canonical, routed

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
        txn = envelope.txn
        assert txn is not None
        txn.message = message
        try:
            verdict = None
            checks = getattr(session, "pymail_checks", None) if self.checks else None
            if checks is not None:
                verdict = await checks.verdict(txn, message)
                if verdict.reply is not None:
                    return self._refused(session, envelope, message, verdict)
            result = await self.pipeline.deliver(txn, envelope.targets, verdict)
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
        finally:
            txn.message = None
        metrics.DELIVERY_SECONDS.observe(time.perf_counter() - started)
        metrics.MESSAGE_BYTES.inc(message.size)
        metrics.SMTP_TRANSACTIONS.labels(self.service, "accepted").inc()
        reply = Reply.QUEUED.format(queue_id=envelope.queue_id)
        extra = f"mailboxes={len(result.stored)}"
        if result.blob_key:
            extra += f" blob={result.blob_key[:16]}"
        if result.queued:
            queued = sum(len(m.recipients) for m in result.queued)
            extra += f" queued={queued}" + (" signed" if result.signed else "")
        if verdict is not None:
            extra += (" junk" if verdict.junk else "") + (f" {verdict.log}" if verdict.log else "")
        self._log(envelope, session, "accepted", reply, size=message.size, extra=extra)
        return reply

    def _refused(self, session: Session, envelope: PymailEnvelope, message: MessageContent,
                 verdict) -> str:  # noqa: ANN001 - pymail.checks.verdict.Verdict
        """Log and count a message the checks refused; its reply."""
        reply = verdict.reply
        kind = "tempfail" if reply.startswith("4") else "reject"
        self._log(envelope, session, kind, reply, size=message.size,
                  extra=f"reason=checks({verdict.decided_by}) {verdict.log}".rstrip())
        metrics.SMTP_TRANSACTIONS.labels(self.service, kind).inc()
        return reply

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s: %s", type(error).__name__, _safe(error))
        return Reply.TEMPFAIL
