"""The SMTP server: aiosmtpd, extended where a production MX needs more than it gives.

aiosmtpd parses the command stream (RFC 5321); `PymailSMTP` subclasses its `SMTP`
protocol through its documented hooks and a few overridden methods:

* **DATA is read in large chunks** (`read_message_data`), not line by line: the
  end-of-data line `CRLF . CRLF` (RFC 5321 section 4.1.1.4) is found with
  `StreamReader.readuntil`, dot-stuffing is undone in one pass (section 4.5.2).  Data
  after the terminator stays in the reader, so pipelined commands (RFC 2920) work.
* **Bare CR or LF in DATA is refused** (`550 5.6.0`): only CRLF ends a line, so SMTP
  smuggling (a second message hidden behind `LF . LF` or `CR . CR`) cannot happen here or
  downstream.
* **PIPELINING and ENHANCEDSTATUSCODES** are advertised (RFC 2920, RFC 2034) and every
  2xx/4xx/5xx reply after the greeting carries an RFC 3463 code (`push`).
* **Addresses** are parsed by `pymail.mail.address` (strict RFC 5321/6531), not by the
  RFC 5322 header parser aiosmtpd uses; source routes are kept so RCPT can refuse them.
* **The client** is the socket's peer, or the source of the PROXY header a trusted load
  balancer sent (`pymail.net.proxy`; aiosmtpd's own PROXY support is not used, so every
  listener of every protocol reads the header the same way).  Before the greeting the
  client's address must be under ``limits.connections_per_ip`` (`pymail.net.limits`,
  ``421 4.7.0 Too many connections from your address``) and pass the gate (bans).

`MxHandler` holds the policy (who may receive, who may relay: nobody on the MX) and the
delivery: `250` to DATA only after `LocalDeliverer` made the message durable for every
accepted recipient; any storage failure is `451 4.3.0` (docs/architecture.md, "The
durability rule").  Each transaction and each refused recipient logs one line.

Invariants: no client input reaches a reply or a log line unsanitised; an exception in
a handler becomes a 451 (never a traceback to the client, never a silent accept); a
client that disconnects during delivery does not interrupt the store (it is shielded).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import logging
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session, syntax

from pymail import metrics
from pymail.delivery.local import LocalDeliverer
from pymail.delivery.router import RecipientStatus, Router
from pymail.mail import trace
from pymail.mail.address import AddressError, Mailbox, parse_mailbox, split_path, split_route
from pymail.net.limits import ConnectionLimiter, ConnectionSlot
from pymail.net.listen import bound_addresses
from pymail.net.proxy import ClientAddress, ProxyListener, TrustedProxies, start_listener
from pymail.store.interfaces import DeliveryTarget, StorageError, User

log = logging.getLogger("pymail.smtp")


class Reply:
    """Replies pymail sends itself (RFC 5321 section 4.2 codes, RFC 3463 enhanced codes).

    Client-facing text stays generic; the reason goes to the log."""

    SENDER_OK = "250 2.1.0 Sender ok"
    RECIPIENT_OK = "250 2.1.5 Recipient ok"
    QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
    BAD_SENDER = "553 5.1.7 Bad sender address syntax"
    BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
    NEED_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    RELAY_DENIED = "554 5.7.1 Relay access denied"
    UNKNOWN_USER = "550 5.1.1 Recipient address rejected: user unknown"
    DOMAIN_DISABLED = "550 5.1.1 Recipient address rejected: domain disabled"
    USER_DISABLED = "550 5.2.1 Recipient address rejected: mailbox disabled"
    ALIAS_LOOP = "554 5.4.6 Recipient address rejected: alias loop"
    FORWARD_UNAVAILABLE = "451 4.3.0 Recipient address cannot be served now, try later"
    TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
    MAILBOX_FULL = "452 4.2.2 Recipient's mailbox is full, try again later"
    TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"
    TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
    BARE_LINE_END = "550 5.6.0 Bare CR or LF in message data; lines must end with CRLF"
    SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing connection"
    TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address"


#: RFC 3463 defaults for replies that aiosmtpd composes without an enhanced code.
_DEFAULT_ENHANCED = {
    "221": "2.0.0", "235": "2.7.0", "250": "2.0.0", "251": "2.1.5", "252": "2.5.0",
    "421": "4.3.0", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "534": "5.7.9", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0",
    "551": "5.1.6", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}  # fmt: skip
_HAS_ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")

_END_OF_DATA = b"\r\n.\r\n"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _safe(text: object) -> str:
    """Client-supplied text made safe for one log line."""
    return _CONTROL.sub("?", str(text))


def with_enhanced_code(reply: bytes) -> bytes:
    """Insert the RFC 3463 code a 2xx/4xx/5xx reply lacks (RFC 2034 section 3)."""
    if len(reply) < 4 or reply[:1] not in b"245" or _HAS_ENHANCED.match(reply):
        return reply
    code = reply[:3].decode("ascii", "replace")
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None or code == "220":
        return reply
    return reply[:4] + enhanced.encode() + b" " + reply[4:]


class DataTooBig(Exception):
    """The DATA content exceeded the size limit (it was read to its end and dropped)."""


async def read_message_data(
    reader: asyncio.StreamReader, limit: int | None, on_progress: Callable[[], Any] = lambda: None
) -> bytes:
    """Read DATA content up to the end-of-data line and return it still dot-stuffed.

    The terminator is `CRLF . CRLF` where the first CRLF may be the one that ended the
    DATA command (an empty message).  Until the consumed bytes can no longer be the start
    of a terminator, bytes are read one at a time; after that `readuntil` finds the
    terminator in large chunks.  A chunk that overruns the reader's limit is consumed up
    to the last 4 bytes, so a terminator split across reads is still found.
    Content beyond `limit` is read and discarded, then `DataTooBig` is raised.
    """
    head = bytearray(b"\r\n")  # the CRLF of the DATA command line
    while any(head.endswith(_END_OF_DATA[:k]) for k in (1, 2, 3, 4)):
        head += await reader.readexactly(1)
        if head.endswith(_END_OF_DATA):
            return bytes(head[2:-3])
    parts: list[bytes] = [bytes(head[2:])]
    size = len(head) - 2
    too_big = False
    while True:
        try:
            chunk = await reader.readuntil(_END_OF_DATA)
            finished = True
        except asyncio.LimitOverrunError as overrun:
            chunk = await reader.readexactly(overrun.consumed)
            finished = False
        on_progress()
        size += len(chunk)
        if limit is not None and size - (3 if finished else 0) > limit:
            too_big = True
            parts.clear()
        elif not too_big:
            parts.append(chunk)
        if finished:
            break
    if too_big:
        raise DataTooBig()
    data = b"".join(parts)
    return data[:-3]  # keep the CRLF that ends the last line, drop ".\r\n"


def has_bare_line_end(data: bytes) -> bool:
    """True if `data` has a CR not followed by LF or an LF not preceded by CR."""
    crlf = data.count(b"\r\n")
    return data.count(b"\r") != crlf or data.count(b"\n") != crlf


def undo_dot_stuffing(data: bytes) -> bytes:
    """RFC 5321 section 4.5.2: drop the first '.' of every line that starts with one."""
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n")


def new_queue_id() -> str:
    return secrets.token_hex(5).upper()


class PymailEnvelope(Envelope):
    """aiosmtpd's envelope plus what pymail decides during the transaction."""

    def __init__(self) -> None:
        super().__init__()
        self.queue_id: str = ""
        self.sender: str = ""  #: canonical reverse-path, "" for the null sender
        #: user id → target, one per mailbox owner, whichever RCPT reached them first
        self.targets: dict[int, DeliveryTarget] = {}
        self.recipients: list[str] = []  #: canonical accepted RCPT addresses


class _ImplicitTls:
    """Stands in for aiosmtpd's STARTTLS protocol object on implicit-TLS listeners."""

    def __bool__(self) -> bool:
        return True


_IMPLICIT_TLS = _ImplicitTls()


class PymailSMTP(SMTP):
    """aiosmtpd's protocol with pymail's DATA reader, replies and address parser."""

    #: aiosmtpd sizes its StreamReader with this; a larger buffer lets DATA be read in
    #: big chunks.  Command lines stay limited by `command_size_limit` (512, RFC 5321
    #: section 4.5.3.1.4), checked after reading.
    line_length_limit = 64 * 1024

    def __init__(self, handler: Any, *, connections: set["PymailSMTP"],
                 gate: Callable[[str], Awaitable[str | None]] | None = None,
                 implicit_tls: bool = False, client: ClientAddress | None = None,
                 limiter: ConnectionLimiter | None = None, **kwargs: Any) -> None:
        """`gate(client_ip)` runs before the greeting: a reply (e.g. ``421 4.7.0`` for a
        banned address) refuses the connection with it.  `implicit_tls`: the listener
        wraps every connection in TLS before SMTP starts (RFC 8314, port 465).
        `client`: the real client a trusted PROXY header named (None: the socket's
        peer); it is ``session.peer`` for the whole session, STARTTLS included.
        `limiter` counts the connection against its client address before the gate."""
        self._implicit_tls = implicit_tls
        self._starttls_protocol: Any = None
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._gate = gate
        self._client = client
        self._limiter = limiter
        self._plain_replies = False  # while answering EHLO/HELO (no enhanced codes)

    # aiosmtpd knows TLS only as STARTTLS: it asks ``self._tls_protocol`` whether the
    # session is encrypted (to offer AUTH, to accept it, to skip "530 Must issue a
    # STARTTLS command first").  On an implicit-TLS listener the answer is always yes.
    @property
    def _tls_protocol(self) -> Any:
        if self._starttls_protocol is None and self._implicit_tls:
            return _IMPLICIT_TLS
        return self._starttls_protocol

    @_tls_protocol.setter
    def _tls_protocol(self, value: Any) -> None:
        self._starttls_protocol = value

    def _create_envelope(self) -> PymailEnvelope:
        return PymailEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connections.add(self)
        super().connection_made(transport)  # a new session (again after STARTTLS)
        if self.session is not None and self._client is not None:
            self.session.peer = self._client
        if self._implicit_tls and self.session is not None and self.session.ssl is None:
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}

    async def _handle_client(self) -> None:
        # The connection's slot is held by this task: released when it ends, whether
        # by QUIT, a timeout, the client leaving (aiosmtpd cancels it) or shutdown.
        slot: ConnectionSlot | None = None
        try:
            if self._limiter is not None:
                slot = self._limiter.acquire(self._peer_ip())
                if slot is None:
                    self._refuse(Reply.TOO_MANY_CONNECTIONS,
                                 f"too_many_connections limit={self._limiter.limit}")
                    return
            if self._gate is not None:
                try:
                    refusal = await self._gate(self._peer_ip())
                except Exception:  # noqa: BLE001 - the gate must never crash a session
                    log.exception("connection gate failed; letting the client in")
                    refusal = None
                if refusal:
                    self._refuse(refusal)
                    return
            await super()._handle_client()
        finally:
            if slot is not None:
                slot.release()

    def _refuse(self, reply: str, reason: str = "") -> None:
        """Say `reply` instead of the greeting and close; one log line."""
        log.info("connection refused rip=%s%s reply=\"%s\"", self._peer_ip(),
                 f" reason={reason}" if reason else "", reply)
        if self.transport is not None:
            self.transport.write(reply.encode("ascii") + b"\r\n")
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        self._connections.discard(self)
        super().connection_lost(error)

    def shutdown(self) -> None:
        """Say 421 and close (used when the server stops)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(Reply.SHUTTING_DOWN.encode() + b"\r\n")
            self.transport.close()

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii", "replace")
        if not self._plain_replies:
            status = with_enhanced_code(status)
        await super().push(status)

    async def smtp_EHLO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_EHLO(hostname)
        finally:
            self._plain_replies = False

    async def smtp_HELO(self, hostname: str) -> None:
        self._plain_replies = True
        try:
            await super().smtp_HELO(hostname)
        finally:
            self._plain_replies = False

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split a MAIL/RCPT argument into (path, parameters) with pymail's parser.

        The null reverse-path comes back as "<>" (aiosmtpd treats "" as missing)."""
        if not arg:
            return "", ""
        try:
            path, rest = split_path(arg)
        except AddressError:
            return None, None
        return (path or "<>"), rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 5.5.1 Error: need RCPT command")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data = await read_message_data(
                self._reader, self.data_size_limit, on_progress=self._reset_timeout
            )
        except DataTooBig:
            await self._call_handler_hook("DATA_REFUSED", Reply.TOO_BIG, "size limit")
            self._set_post_data_state()
            await self.push(Reply.TOO_BIG)
            return
        except asyncio.IncompleteReadError:
            log.info("connection closed during DATA rip=%s", self._peer_ip())
            if self.transport is not None:
                self.transport.close()
            return
        if has_bare_line_end(data):
            await self._call_handler_hook("DATA_REFUSED", Reply.BARE_LINE_END, "bare CR or LF")
            self._set_post_data_state()
            await self.push(Reply.BARE_LINE_END)
            return
        content = undo_dot_stuffing(data)
        self.envelope.content = self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    def _peer_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)


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
        service: str = "smtp",
    ) -> None:
        self.service = service  #: the [listen] name, a metrics label
        self.router = router
        self.deliverer = deliverer
        self.hostname = hostname
        self.max_recipients = max_recipients
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

    # -- hooks -----------------------------------------------------------------------

    async def handle_EHLO(
        self, server: PymailSMTP, session: Session, envelope: Envelope, hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
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
        declared = 0
        for option in envelope.mail_options:
            if option.upper().startswith("SIZE=") and option[5:].isdigit():
                declared = int(option[5:])
        for user in users:
            if user.quota and await self.deliverer.index.storage_used(user.id) + declared > user.quota:
                return user
        return None

    async def handle_DATA_REFUSED(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope, reply: str,
        reason: str,
    ) -> None:
        """Not an aiosmtpd hook: PymailSMTP calls it when DATA content is refused."""
        self._log(envelope, session, "reject", reply, extra=f"reason={reason.replace(' ', '_')}")
        metrics.SMTP_TRANSACTIONS.labels(self.service, "reject").inc()

    async def handle_DATA(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope
    ) -> str:
        # Shielded: a client hanging up must not cancel a store half-way; the outcome
        # is still logged.
        task = asyncio.ensure_future(self._deliver(server, session, envelope))
        self.deliveries_in_flight.add(task)
        task.add_done_callback(self.deliveries_in_flight.discard)
        return await asyncio.shield(task)

    async def _deliver(
        self, server: PymailSMTP, session: Session, envelope: PymailEnvelope
    ) -> str:
        content = envelope.original_content or b""
        now = _dt.datetime.now(_dt.timezone.utc)
        protocol = trace.protocol_keyword(
            esmtp=session.extended_smtp,
            tls=session.ssl is not None,
            authenticated=bool(session.authenticated),
            smtputf8=envelope.smtp_utf8,
        )
        headers = trace.return_path(envelope.sender) + trace.received(
            helo=session.host_name or "",
            client_ip=self._client_ip(session),
            client_name=None,
            by_host=self.hostname,
            protocol=protocol,
            queue_id=envelope.queue_id,
            recipient=envelope.recipients[0] if len(envelope.recipients) == 1 else None,
            when=now,
        )
        message = headers + content
        started = time.perf_counter()
        try:
            result = await self.deliverer.deliver(
                message, list(envelope.targets.values()), internal_date=now
            )
        except StorageError as e:
            self._log(envelope, session, "tempfail", Reply.TEMPFAIL, size=len(message),
                      extra=f"reason=storage({_safe(e)})")
            metrics.STORAGE_ERRORS.labels("deliver").inc()
            metrics.SMTP_TRANSACTIONS.labels(self.service, "tempfail").inc()
            return Reply.TEMPFAIL
        except Exception:
            log.exception("%s: delivery failed", envelope.queue_id)
            self._log(envelope, session, "tempfail", Reply.TEMPFAIL, size=len(message),
                      extra="reason=internal_error")
            metrics.SMTP_TRANSACTIONS.labels(self.service, "tempfail").inc()
            return Reply.TEMPFAIL
        metrics.DELIVERY_SECONDS.observe(time.perf_counter() - started)
        metrics.MESSAGE_BYTES.inc(len(message))
        metrics.SMTP_TRANSACTIONS.labels(self.service, "accepted").inc()
        reply = Reply.QUEUED.format(queue_id=envelope.queue_id)
        self._log(envelope, session, "accepted", reply, size=len(message),
                  extra=f"mailboxes={len(result.stored)} blob={result.blob_key[:16]}")
        return reply

    async def handle_exception(self, error: Exception) -> str:
        log.error("SMTP session error: %s: %s", type(error).__name__, _safe(error))
        return Reply.TEMPFAIL


class SmtpService:
    """One SMTP service (the MX, submission or submissions) on its listening addresses,
    and its connections.

    `tls_context` offers STARTTLS (RFC 3207), or with `implicit_tls` wraps every
    connection in TLS before the greeting (RFC 8314, port 465); `require_starttls`
    refuses mail commands before STARTTLS.  `limiter` refuses a client address over its
    connection limit (``421 4.7.0``), then `gate(client_ip)` may refuse a connection
    before the greeting (bans).  Connections from `trusted_proxies` start with a PROXY
    header whose source is the client (`pymail.net.proxy`).  `protocol_class` and
    `protocol_options` choose the protocol (`PymailSMTP`, or the submission one)."""

    def __init__(
        self,
        name: str,
        addresses: list[tuple[str, int]],
        handler: MxHandler,
        *,
        hostname: str,
        message_size: int,
        timeout: float,
        reuse_port: bool = False,
        tls_context: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
        require_starttls: bool = False,
        gate: Callable[[str], Awaitable[str | None]] | None = None,
        protocol_class: type[PymailSMTP] | None = None,
        protocol_options: dict[str, Any] | None = None,
        trusted_proxies: TrustedProxies | None = None,
        limiter: ConnectionLimiter | None = None,
    ) -> None:
        self.name = name
        self.addresses = addresses
        self.handler = handler
        self.hostname = hostname
        self.message_size = message_size
        self.timeout = timeout
        self.reuse_port = reuse_port
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.require_starttls = require_starttls
        self.gate = gate
        self.protocol_class = protocol_class or PymailSMTP
        self.protocol_options = protocol_options or {}
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.limiter = limiter
        self.connections: set[PymailSMTP] = set()
        self.servers: list[asyncio.AbstractServer | ProxyListener] = []

    def _protocol(self, client: ClientAddress | None) -> PymailSMTP:
        return self.protocol_class(
            self.handler,
            connections=self.connections,
            gate=self.gate,
            implicit_tls=self.implicit_tls,
            client=client,
            limiter=self.limiter,
            tls_context=None if self.implicit_tls else self.tls_context,
            require_starttls=self.require_starttls and not self.implicit_tls,
            hostname=self.hostname,
            ident="ESMTP pymail",
            data_size_limit=self.message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            timeout=self.timeout,
            loop=asyncio.get_running_loop(),
            **self.protocol_options,
        )

    async def start(self) -> list[str]:
        """Bind every address; returns them as "host:port" (the real port if 0 was asked)."""
        bound = []
        tls = self.tls_context if self.implicit_tls else None
        for host, port in self.addresses:
            server = await start_listener(
                self.name, self._protocol, host, port, tls=tls, trusted=self.trusted_proxies,
                reuse_port=self.reuse_port,
            )
            self.servers.append(server)
            bound += bound_addresses(server.sockets)
        return bound

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let deliveries in progress finish (up to `grace` s), close."""
        for server in self.servers:
            server.close()
        pending = list(self.handler.deliveries_in_flight)
        if pending:
            await asyncio.wait(pending, timeout=grace)
        for connection in list(self.connections):
            connection.shutdown()
        for server in self.servers:  # bounded: a stuck peer must not hold the stop
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
