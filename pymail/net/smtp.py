"""The SMTP server: aiosmtpd's protocol, extended where a production MX needs more than
it gives, and `SmtpService`, one listening service (MX, submission or submissions).

aiosmtpd parses the command stream (RFC 5321); `PymailSMTP` subclasses its `SMTP`
protocol.  The policy and the delivery are the handler's (pymail.net.mx).  What the
protocol adds:

* **DATA in bounded memory.**  The content is read in chunks of at most the reader's
  buffer (`line_length_limit`, 64 KiB; the reader stops the socket at twice that) and
  decoded as it arrives by `pymail.proto.smtp.data.DataDecoder` (end of data, RFC 5321
  section 4.1.1.4; dot-unstuffing, 4.5.2; bare CR or LF refused, ``550 5.6.0``, against
  SMTP smuggling; the size limit, ``552 5.3.4`` after reading to the end; the trace
  headers first and the SHA-256 of the whole).  The decoded octets go to the spool
  (`pymail.delivery.spool`): in memory up to ``limits.spool_threshold``, else to a file
  written in 256 KiB batches by a thread.  So one connection holds at most
  spool_threshold + 2 MiB of message (the reader's buffer: twice 64 KiB plus one read;
  the decoder's copies of one chunk; one write batch), whatever the client sends;
  delivery then works from the spool file (pymail.delivery.pipeline).  Data after the end
  of data stays in the reader: pipelined commands (RFC 2920) work.
* **Time limits that trickling cannot stretch** (`pymail.net.smtp_deadlines`): the
  idle limit (``limits.smtp_timeout``), a deadline for each command line from its first
  octet (``limits.command_timeout``), a minimum average rate for DATA content
  (``limits.min_data_rate``) and, on submission, a login deadline from connect
  (``limits.login_timeout``).  Past one: ``421 4.4.2`` and close, one log line.
* **STARTTLS once** (RFC 3207 section 4.2): inside TLS, on 25 and 587 after STARTTLS
  and on 465, it is ``503 5.5.1``; a nested TLS handshake never starts.
* **One INFO line when a client leaves**: a hang-up anywhere, or a TLS handshake that
  fails (TLS 1.0/1.1 offered, garbage, a reset), is one sentence with ``rip=``; never an
  ERROR or a traceback.
* **PIPELINING and ENHANCEDSTATUSCODES** are advertised (RFC 2920, RFC 2034) and every
  2xx/4xx/5xx reply after the greeting carries an RFC 3463 code (`push`).
* **Addresses** are parsed by `pymail.mail.address` (strict RFC 5321/6531), not by the
  RFC 5322 header parser aiosmtpd uses; source routes are kept so RCPT can refuse them.
  The DSN (RFC 3461) and REQUIRETLS (RFC 8689) parameters are taken out of MAIL and RCPT
  before aiosmtpd sees them (it would refuse them and upper-case their xtext) and left
  to the handler in ``extension_params`` (pymail.proto.smtp.params); the command line
  limits grow by what RFC 3461 section 4 and RFC 8689 allow for them, per connection.
* **The client** is the socket's peer, or the source of the PROXY header a trusted load
  balancer sent (`pymail.net.proxy`).  Before the greeting the client's address must be
  under ``limits.connections_per_ip`` (`pymail.net.limits`, ``421 4.7.0``) and pass the
  gate (bans).

`PymailSMTP` relies on aiosmtpd internals (listed beside the class), so pyproject.toml
pins ``aiosmtpd<1.5``.

Invariants: no client input reaches a reply or a log line unsanitised; an exception in
a handler becomes a 451 (never a traceback to the client, never a silent accept); a
client that disconnects during delivery does not interrupt the store (it is shielded).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiosmtpd.smtp import SMTP, TLSSetupException, syntax

from pymail.delivery.spool import MessageContent, Spool, SpoolError, SpoolWriter
from pymail.mail.address import AddressError, split_path
from pymail.net.limits import ConnectionLimiter, ConnectionSlot, Refused
from pymail.net.listen import bound_addresses
from pymail.net.mx import MxHandler, PymailEnvelope
from pymail.net.proxy import ClientAddress, ProxyListener, TrustedProxies, start_listener
from pymail.net.smtp_deadlines import ClientDeadlines
from pymail.proto.smtp.data import TERMINATOR, DataDecoder, Refusal
from pymail.proto.smtp.params import ParameterError, split_extensions
from pymail.proto.smtp.replies import Reply, with_enhanced_code

__all__ = ["PymailSMTP", "SmtpService"]

log = logging.getLogger("pymail.smtp")

#: aiosmtpd's built-in SASL mechanisms, which a service without AUTH (the MX) excludes.
_BUILTIN_SASL = ("LOGIN", "PLAIN")

#: What the log says for each client time limit passed (pymail.net.smtp_deadlines).
_TIMEOUT_TEXT = {
    "idle": "client silent for {seconds:g}s",
    "command": "command line not complete within {seconds:g}s",
    "data": "message content slower than {rate} octets/s after {seconds:g}s",
    "login": "no login within {seconds:g}s of connecting",
}


class _ImplicitTls:
    """Stands in for aiosmtpd's STARTTLS protocol object on implicit-TLS listeners."""

    def __bool__(self) -> bool:
        return True


_IMPLICIT_TLS = _ImplicitTls()


def _tls_failure(error: BaseException | None) -> str:
    """A few words on why a TLS handshake failed, for the log."""
    if isinstance(error, ssl.SSLError):
        return (error.reason or error.__class__.__name__).replace("_", " ").lower()
    if isinstance(error, (ConnectionError, asyncio.IncompleteReadError)):
        return "the client hung up"
    if isinstance(error, TimeoutError):
        return "timed out"
    return type(error).__name__ if error is not None else "unknown"


class PymailSMTP(SMTP):
    """aiosmtpd's protocol with pymail's DATA path, deadlines, replies and addresses."""

    # aiosmtpd 1.4 internals this class relies on (pyproject.toml pins aiosmtpd<1.5;
    # check each of them before raising the pin):
    # * private methods overridden: _handle_client (wrapped: limit, gate, hang-ups),
    #   _reset_timeout (its one timer, restarted per command, replaced by
    #   ClientDeadlines), _create_envelope, _getaddr;
    # * private attribute replaced: _tls_protocol (a property: implicit TLS counts);
    # * private attributes read or set: _timeout_handle (set to the ClientDeadlines,
    #   which aiosmtpd's connection_lost cancels), _timeout_duration (smtp_timeout),
    #   _reader (DATA content, AUTH answers), command_size_limits (a class attribute in
    #   aiosmtpd, replaced by one per connection);
    # * private methods called: _call_handler_hook, _set_post_data_state;
    # * public methods overridden: push, handle_exception, connection_made,
    #   connection_lost, data_received, smtp_EHLO, smtp_HELO, smtp_STARTTLS, smtp_QUIT,
    #   smtp_DATA.  The submission subclass adds its own (pymail.net.submission).

    #: aiosmtpd sizes its StreamReader with this; a larger buffer lets DATA be read in
    #: big chunks.  Command lines stay limited by `command_size_limit` (512, RFC 5321
    #: section 4.5.3.1.4), checked after reading.
    line_length_limit = 64 * 1024

    def __init__(self, handler: MxHandler, *, connections: set["PymailSMTP"], spool: Spool,
                 gate: Callable[[str], Awaitable[str | None]] | None = None,
                 implicit_tls: bool = False, client: ClientAddress | None = None,
                 limiter: ConnectionLimiter | None = None, command_timeout: float = 60.0,
                 min_data_rate: float = 500.0, login_timeout: float | None = None,
                 **kwargs: Any) -> None:
        """`gate(client_ip)` runs before the greeting: a reply (e.g. ``421 4.7.0`` for a
        banned address) refuses the connection with it.  `implicit_tls`: the listener
        wraps every connection in TLS before SMTP starts (RFC 8314, port 465).
        `client`: the real client a trusted PROXY header named (None: the socket's
        peer); it is ``session.peer`` for the whole session, STARTTLS included.
        `limiter` counts the connection against its client address before the gate.
        `spool` keeps DATA content; the timeouts are the ``[limits]`` of the same
        names (`login_timeout` None: no login is expected)."""
        self._implicit_tls = implicit_tls
        self._starttls_protocol: Any = None
        kwargs.setdefault("auth_exclude_mechanism", _BUILTIN_SASL)
        super().__init__(handler, **kwargs)
        self._connections = connections
        self._spool = spool
        self._gate = gate
        self._client = client
        self._limiter = limiter
        self._plain_replies = False  # while answering EHLO/HELO (no enhanced codes)
        self._command_timeout = command_timeout
        self._min_data_rate = min_data_rate
        self._login_timeout = login_timeout
        self._deadlines: ClientDeadlines | None = None  #: made when the connection is
        self._in_content = False  #: DATA content is being received
        self._tls_started = False  #: STARTTLS succeeded on this connection
        self._closed_by_server = False  #: pymail ended it (QUIT, timeout, refusal, stop)
        self._end_logged = False  #: the connection's end has its log line already
        # aiosmtpd keeps these limits in one dict shared by every connection (a class
        # attribute it clears per connection and grows per EHLO): this one is ours.
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        #: The RFC 3461 / RFC 8689 parameters of the MAIL or RCPT being handled, taken
        #: out of the raw text before aiosmtpd upper-cases it (`_getaddr`), or the
        #: refusal they earned; the handler reads them (pymail.proto.smtp.params).
        self.extension_params: dict[str, str | None] | ParameterError = {}

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

    # -- the connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._connections.add(self)
        if self._deadlines is None:
            self._deadlines = ClientDeadlines(
                self.loop, self._deadline_passed, idle=self._timeout_duration,
                command=self._command_timeout, min_data_rate=self._min_data_rate,
                login=self._login_timeout)
        else:  # again, after STARTTLS: what was pipelined in plaintext is dropped
            self._tls_started = True
            self._deadlines.forget_line()
        super().connection_made(transport)  # a new session (again after STARTTLS)
        if self.session is not None and self._client is not None:
            self.session.peer = self._client
        if self._implicit_tls and self.session is not None and self.session.ssl is None:
            self.session.ssl = {"ssl_object": transport.get_extra_info("ssl_object")}

    def data_received(self, data: bytes) -> None:
        if self._deadlines is not None:
            self._deadlines.received(data)
        super().data_received(data)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd restarts one timer on every command; ClientDeadlines keeps pymail's
        # limits instead.  aiosmtpd cancels its "timeout handle" when the connection is
        # lost: that is the deadlines object.
        self._timeout_handle = self._deadlines  # type: ignore[assignment]

    async def _handle_client(self) -> None:
        # The connection's slot is held by this task: released when it ends, whether
        # by QUIT, a timeout, the client leaving (aiosmtpd cancels it) or shutdown.
        slot: ConnectionSlot | None = None
        try:
            if self._limiter is not None:
                admitted = self._limiter.admit(self._peer_ip())
                if isinstance(admitted, Refused):  # too many at once, or too fast
                    self._refuse(Reply.TOO_MANY_CONNECTIONS, f"{admitted.reason} {admitted.detail}")
                    return
                slot = admitted
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
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: connection_lost logs it, once
        except RuntimeError:
            if self.transport is not None and not self.transport.is_closing():
                raise
            # a reply written to a connection that is already gone
        finally:
            if slot is not None:
                slot.release()

    def _refuse(self, reply: str, reason: str = "") -> None:
        """Say `reply` instead of the greeting and close; one log line."""
        log.info("connection refused rip=%s%s reply=\"%s\"", self._peer_ip(),
                 f" reason={reason}" if reason else "", reply)
        self._say_goodbye(reply)

    def _say_goodbye(self, reply: str) -> None:
        """Write `reply` and close: pymail ends this connection."""
        self._closed_by_server = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply.encode("ascii") + b"\r\n")
            self.transport.close()

    def _deadline_passed(self, limit: str, seconds: float) -> None:
        text = _TIMEOUT_TEXT[limit].format(seconds=seconds, rate=self._min_data_rate)
        log.info("timeout: %s rip=%s after=%s reply=\"%s\"", text, self._peer_ip(),
                 self._stage(), Reply.TIMEOUT)
        self._say_goodbye(Reply.TIMEOUT)

    def connection_lost(self, error: Exception | None) -> None:
        self._connections.discard(self)
        if not self._closed_by_server and not self._end_logged:
            self._end_logged = True
            log.info("client hung up after %s rip=%s", self._stage(), self._peer_ip())
        super().connection_lost(error)

    def shutdown(self) -> None:
        """Say 421 and close (used when the server stops)."""
        self._say_goodbye(Reply.SHUTTING_DOWN)

    def _stage(self) -> str:
        """Where the session is, as Postfix's "lost connection after ..." says it."""
        session, envelope = self.session, self.envelope
        if self._in_content:
            return "DATA"
        if envelope is not None and envelope.rcpt_tos:
            return "RCPT"
        if envelope is not None and envelope.mail_from:
            return "MAIL"
        if session is not None and session.authenticated:
            return "AUTH"
        if session is not None and session.host_name:
            return "EHLO" if session.extended_smtp else "HELO"
        return "STARTTLS" if self._tls_started else "CONNECT"

    def _peer_ip(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            # aiosmtpd closes the connection after this: it is this connection's one line
            self._closed_by_server = self._end_logged = True
            log.info("TLS handshake failed (%s) rip=%s", _tls_failure(error.__cause__), self._peer_ip())
            return Reply.TEMPFAIL
        if isinstance(error, (ConnectionError, asyncio.IncompleteReadError)):
            return Reply.TEMPFAIL  # the client went away; connection_lost logs it
        return await super().handle_exception(error)

    # -- replies ---------------------------------------------------------------------

    async def push(self, status: str | bytes) -> None:
        if isinstance(status, str):
            status = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii", "replace")
        if not self._plain_replies:
            status = with_enhanced_code(status)
        await super().push(status)
        if self._deadlines is not None:
            self._deadlines.replied()

    # -- commands --------------------------------------------------------------------

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

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol:  # RFC 3207 section 4.2: TLS once per connection
            await self.push(Reply.TLS_ALREADY)
            return
        await super().smtp_STARTTLS(arg)

    async def smtp_QUIT(self, arg: str) -> None:
        if not arg:
            self._closed_by_server = True  # aiosmtpd closes after its 221
        await super().smtp_QUIT(arg)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """Split a MAIL/RCPT argument into (path, parameters) with pymail's parser.

        The null reverse-path comes back as "<>" (aiosmtpd treats "" as missing)."""
        self.extension_params = {}
        if not arg:
            return "", ""
        try:
            path, rest = split_path(arg)
        except AddressError:
            return None, None
        if rest and self.session is not None and self.session.extended_smtp:
            # DSN and REQUIRETLS parameters keep their case (xtext) and are the
            # handler's; aiosmtpd checks the rest (SIZE, BODY, SMTPUTF8)
            try:
                rest, self.extension_params = split_extensions(rest)
            except ParameterError as e:
                rest, self.extension_params = "", e
        return (path or "<>"), rest

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        envelope = self.envelope
        assert isinstance(envelope, PymailEnvelope) and self.session is not None
        if not envelope.rcpt_tos:
            await self.push(Reply.NEED_RCPT)
            return
        if arg:
            await self.push(Reply.DATA_SYNTAX)
            return
        await self.push(Reply.START_DATA)
        handler: MxHandler = self.event_handler
        decoder = DataDecoder(prefix=handler.trace_headers(self.session, envelope),
                              size_limit=self.data_size_limit)
        writer = self._spool.writer()
        message: MessageContent | None = None
        try:
            await self._receive_content(decoder, writer)
            refusal = decoder.refusal
            if refusal is not None:
                reply = Reply.TOO_BIG if refusal is Refusal.TOO_BIG else Reply.BARE_LINE_END
                await self._refuse_content(reply, refusal.value, decoder.message_size)
                return
            try:
                message = await writer.finish(decoder.key)
            except SpoolError as e:
                reply = Reply.NO_SPACE if e.no_space else Reply.TEMPFAIL
                await self._refuse_content(reply, f"spool({e})", decoder.message_size)
                return
            # the handler's delivery task owns the message (and its spool file) now
            envelope.message, message = message, None
            assert self._deadlines is not None
            with self._deadlines.server_busy():
                status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push(status)
        finally:
            writer.discard()
            if message is not None:
                message.discard()

    async def _receive_content(self, decoder: DataDecoder, writer: SpoolWriter) -> None:
        """Read the content up to and including the end of data, never past it."""
        assert self._deadlines is not None
        reader = self._reader
        self._in_content = True
        self._deadlines.start_content()
        try:
            while not decoder.done:
                limit = decoder.read_limit()
                if limit:  # an end of data may have begun: take only what completes it
                    chunk = await reader.readexactly(limit)
                else:
                    try:
                        chunk = await reader.readuntil(TERMINATOR)
                    except asyncio.LimitOverrunError as overrun:
                        chunk = await reader.readexactly(overrun.consumed)
                decoded = decoder.feed(chunk)
                if decoded:
                    await writer.write(decoded)
        finally:
            self._in_content = False
            self._deadlines.end_content()
        assert not decoder.trailing  # read_limit kept the next command in the reader

    async def _refuse_content(self, reply: str, reason: str, size: int) -> None:
        await self._call_handler_hook("DATA_REFUSED", reply, reason, size)
        self._set_post_data_state()
        await self.push(reply)


class SmtpService:
    """One SMTP service (the MX, submission or submissions) on its listening addresses,
    and its connections.

    `tls_context` offers STARTTLS (RFC 3207), or with `implicit_tls` wraps every
    connection in TLS before the greeting (RFC 8314, port 465); `require_starttls`
    refuses mail commands before STARTTLS.  `limiter` refuses a client address over its
    connection limit (``421 4.7.0``), then `gate(client_ip)` may refuse a connection
    before the greeting (bans).  Connections from `trusted_proxies` start with a PROXY
    header whose source is the client (`pymail.net.proxy`).  `spool` keeps DATA content
    (``limits.spool_threshold``); `timeout`, `command_timeout` and `min_data_rate` are
    the client's time limits (``limits.smtp_timeout`` and the same names).
    `protocol_class` and `protocol_options` choose the protocol (`PymailSMTP`, or the
    submission one)."""

    def __init__(
        self,
        name: str,
        addresses: list[tuple[str, int]],
        handler: MxHandler,
        *,
        hostname: str,
        message_size: int,
        timeout: float,
        spool: Spool,
        command_timeout: float = 60.0,
        min_data_rate: float = 500.0,
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
        self.spool = spool
        self.command_timeout = command_timeout
        self.min_data_rate = min_data_rate
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
            spool=self.spool,
            gate=self.gate,
            implicit_tls=self.implicit_tls,
            client=client,
            limiter=self.limiter,
            command_timeout=self.command_timeout,
            min_data_rate=self.min_data_rate,
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
                reuse_port=self.reuse_port, tls_failed=self._tls_failed,
            )
            self.servers.append(server)
            bound += bound_addresses(server.sockets)
        return bound

    def _tls_failed(self, client_ip: str, error: BaseException) -> None:
        """An implicit-TLS handshake (port 465) failed or the client left during it:
        one INFO line, as for a failed STARTTLS."""
        log.info("TLS handshake failed (%s) rip=%s", _tls_failure(error), client_ip)

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
