"""What the listening services share: the bound-address log format, `StreamService`
(the listener of the line-based protocols served from asyncio streams, IMAP and POP3)
and `StreamConnection` (what their connections share: bounded output, deadlines on
input, and the one log line that says how a connection ended).

`StreamService` owns the listening sockets (through `pymail.net.proxy.start_listener`,
which reads a trusted load balancer's PROXY header first and, for implicit TLS, reports
each failed handshake: one INFO line), one connection object per client (its subclass's
`connection_class`, with ``serve()``, ``shutdown()``, ``busy`` and ``task``), and the
stop sequence: stop accepting, let commands in progress finish within the grace period,
then shut every connection down.

Invariants of a `StreamConnection`:

* Output is flow-controlled: the transport pauses at `WRITE_BUFFER_HIGH` octets, every
  `send` waits for it to drain (below `WRITE_BUFFER_LOW`), and a client that leaves it
  undrained for ``limits.send_timeout`` is cut off (`SendTimeout`): the transport is
  aborted, which frees its buffers.  A writer of large responses sends them in pieces
  of at most `SEND_CHUNK`, so a connection holds at most about one piece plus the
  high-water mark of output, whatever the client reads or does not.
* Input has deadlines (`Deadlines`, from the reader's ``progress()``), none of them
  restarted by each byte: ``limits.login_timeout`` from connect until login;
  ``limits.command_timeout`` from the first byte of a command line until the line is
  complete (time spent in literal data does not count); literal data at
  ``limits.min_data_rate`` octets per second on average after ``command_timeout`` of
  grace; and, between commands, the protocol's autologout for an idle client.  A missed
  deadline raises `ClientTimeout` with the reason; the protocol says goodbye its way.
* A client that goes away (reset, broken pipe, EOF in TLS, a failed handshake, a send
  timeout) ends its connection with one INFO line (`log_closed`: ``rip=`` and the
  reason), never an ERROR with a traceback; only a bug in pymail logs a traceback.
  `send` refuses to write once the output reaches no one (`output_lost`: the transport
  is closing, or on TLS the client closed its TCP end, after which the TLS layer drops
  every write, logging asyncio's "SSL connection is closed" for each), and an unexpected exception
  raised while the output is lost is the client's hang-up too (`peer_gone`): asyncio's
  transports can fail in odd ways once the peer has closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import select
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from pymail.net.proxy import (
    TLS_HANDSHAKE_TIMEOUT, ClientAddress, ProxyListener, TrustedProxies, start_listener,
)
from pymail.proto.progress import READING_LINE, WAITING_FOR_COMMAND, ReadProgress

if TYPE_CHECKING:
    from pymail.auth.service import Authenticator
    from pymail.config.schema import LimitsConfig
    from pymail.net.limits import ConnectionLimiter
    from pymail.store import Store

#: poll() events meaning the client closed its end (FIN) or the socket failed.
_PEER_CLOSED = getattr(select, "POLLRDHUP", 0) | getattr(select, "POLLHUP", 0) | getattr(select, "POLLERR", 0)
#: StreamReader buffer of a connection: what one read may take.
READ_SIZE = 64 * 1024
#: Output a connection's transport buffers before it pauses the writer, and the level
#: it must drain to before the writer goes on.
WRITE_BUFFER_HIGH = 256 * 1024
WRITE_BUFFER_LOW = 64 * 1024
#: The largest piece a large response (FETCH, RETR) is written in.
SEND_CHUNK = 256 * 1024
#: Seconds a departing client gets to take pymail's last line and TLS close.
GOODBYE_SECONDS = 2.0

# `ClientTimeout.reason` / the ``reason=`` of the log line.
LOGIN_TIMEOUT = "login_timeout"
COMMAND_TIMEOUT = "command_timeout"
DATA_RATE = "min_data_rate"
AUTOLOGOUT = "autologout"
SEND_TIMED_OUT = "send_timeout"
HUNG_UP = "client_hung_up"
TLS_FAILED = "tls_handshake_failed"


def bound_addresses(sockets: Iterable[socket.socket]) -> list[str]:
    """The "host:port" ("[v6]:port") each listening socket is bound to (the real port when
    port 0 was asked), as the start-up log lines show them."""
    out = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


@dataclass(frozen=True)
class ClientTimeouts:
    """``limits.login_timeout``, ``command_timeout``, ``min_data_rate`` (octets/s) and
    ``send_timeout``, in seconds."""

    login: float = 60.0
    command: float = 60.0
    min_data_rate: float = 500.0
    send: float = 60.0

    @classmethod
    def from_limits(cls, limits: LimitsConfig) -> ClientTimeouts:
        return cls(login=limits.login_timeout, command=limits.command_timeout,
                   min_data_rate=float(limits.min_data_rate), send=limits.send_timeout)


class ClientTimeout(TimeoutError):
    """The client missed a deadline; ``reason`` is one of LOGIN_TIMEOUT,
    COMMAND_TIMEOUT, DATA_RATE, AUTOLOGOUT."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SendTimeout(ConnectionError):
    """The client left pymail's output unread for ``limits.send_timeout``: the
    connection was aborted (its buffers freed)."""


class TlsHandshakeFailed(ConnectionError):
    """STARTTLS/STLS did not end in a TLS session (``detail`` says why, for the log)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Deadlines:
    """When the client must have sent what it owes, from its reader's progress.

    Fields: ``login_by`` (connect + login_timeout); the current command line's start
    and the time it spent in literals (``_line_started``, ``_in_literals``); the literal
    being read (``_literal_number``, ``_literal_started``)."""

    def __init__(self, timeouts: ClientTimeouts, connected_at: float) -> None:
        self.timeouts = timeouts
        self.login_by = connected_at + timeouts.login
        self._phase = WAITING_FOR_COMMAND
        self._line_started: float | None = None
        self._in_literals = 0.0
        self._literal_number = 0
        self._literal_started = 0.0

    def next(self, progress: ReadProgress, now: float, *, idle: float,
             logged_in: bool) -> tuple[float, str]:
        """(deadline, reason) for the read about to start at `now`; `idle` is the
        protocol's autologout for a client between commands."""
        phase = progress.phase
        if self._phase != READING_LINE and self._phase != WAITING_FOR_COMMAND and (
                phase != self._phase or progress.literal_number != self._literal_number):
            self._in_literals += now - self._literal_started  # a literal has ended
        if phase == WAITING_FOR_COMMAND:
            self._line_started, self._in_literals = None, 0.0
            when, reason = now + idle, AUTOLOGOUT
        else:
            if self._line_started is None:
                self._line_started = now
            if phase == READING_LINE:
                when = self._line_started + self._in_literals + self.timeouts.command
                reason = COMMAND_TIMEOUT
            else:
                if progress.literal_number != self._literal_number or self._phase != phase:
                    self._literal_number, self._literal_started = progress.literal_number, now
                # on average min_data_rate octets/s, after command_timeout of grace
                when = (self._literal_started + self.timeouts.command
                        + progress.literal_received / self.timeouts.min_data_rate)
                reason = DATA_RATE
        self._phase = phase
        if not logged_in and self.login_by < when:
            return self.login_by, LOGIN_TIMEOUT
        return when, reason


def describe_error(error: BaseException) -> str:
    """A short text for the log: the TLS library's reason, the system's words for a
    socket error, else the error's own text or name."""
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    text = str(error).strip().replace('"', "'")
    return text if text else type(error).__name__


def is_tls_failure(error: BaseException) -> bool:
    """A TLS handshake that failed (TLS said no, or timed out), rather than a client
    that just went away during it."""
    return isinstance(error, ssl.SSLError) or "handshake" in str(error).lower()


#: What a client going away looks like to a connection (SendTimeout is a ConnectionError).
CLIENT_GONE = (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, EOFError)


class StreamConnection:
    """What the IMAP and POP3 connections share (see the module invariants).

    Fields: ``tls`` whether the stream is encrypted now; ``client_ip`` the client's
    address (a trusted PROXY header's source, else the peer); ``deadlines`` its input
    deadlines; ``current`` the command running (for the log), ``busy`` while one runs
    (shutdown waits for it); ``task`` the task serving the connection."""

    #: "imap" / "pop3": the first word of the log lines
    protocol: ClassVar[str]
    log: ClassVar[logging.Logger]

    def __init__(self, service: StreamService, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, tls: bool, client: ClientAddress | None = None,
                 connected_at: float | None = None) -> None:
        self.service = service
        self.reader = reader
        self.writer = writer
        self.tls = tls
        peer = client or writer.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "unknown"
        self.loop = asyncio.get_running_loop()
        self.timeouts = service.timeouts
        self.deadlines = Deadlines(self.timeouts, connected_at if connected_at is not None
                                   else self.loop.time())
        self.current: str | None = None
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self._poller: select.poll | None = None  # made by the first `_peer_closed`
        self._limit_write_buffer()

    def _limit_write_buffer(self) -> None:
        with contextlib.suppress(AttributeError, NotImplementedError, RuntimeError):
            self.writer.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH, low=WRITE_BUFFER_LOW)

    # -- output ---------------------------------------------------------------------------

    def output_lost(self) -> bool:
        """Whether what is written now reaches no one: the transport is closing, or, on
        TLS, the client has closed its end of the TCP connection.  After that low-level
        EOF the TLS layer (uvloop's and asyncio's alike) drops every write -- logging
        asyncio's "SSL connection is closed" for each one -- without closing the
        transport, and since nothing reaches the socket no RST comes back to end it.
        Plain TCP is left to ``is_closing()``: a half-closed client may still read."""
        if self.writer.transport.is_closing():
            return True
        return self.tls and self._peer_closed()

    def _peer_closed(self) -> bool:
        """Whether the socket has seen the client's FIN or an error (poll, no wait)."""
        if self._poller is None:
            socket_ = self.writer.get_extra_info("socket")
            fileno = getattr(socket_, "fileno", None)
            if fileno is None or not hasattr(select, "poll"):
                return False
            self._poller = select.poll()
            self._poller.register(fileno(), _PEER_CLOSED)
        try:
            return any(events & _PEER_CLOSED for _fd, events in self._poller.poll(0))
        except (OSError, ValueError):
            return True

    def peer_gone(self, error: BaseException) -> bool:
        """Whether `error`, raised while serving, is the client's hang-up: one of
        `CLIENT_GONE` (also inside an exception group), or anything at all once the
        output is lost (asyncio's transports may raise e.g. AttributeError or
        RuntimeError after the peer closed)."""
        if isinstance(error, CLIENT_GONE):
            return True
        if isinstance(error, BaseExceptionGroup):
            return all(self.peer_gone(inner) for inner in error.exceptions)
        return isinstance(error, Exception) and self.output_lost()

    async def send(self, data: bytes) -> None:
        """Write `data` and wait until the client has taken enough of it (at most
        ``send_timeout``); large data goes in `SEND_CHUNK` pieces.  `ConnectionResetError`
        once the output is lost (`output_lost`)."""
        if len(data) <= SEND_CHUNK:
            if self.output_lost():
                raise ConnectionResetError("connection lost")
            self.writer.write(data)
            await self.drain()
            return
        view = memoryview(data)
        for start in range(0, len(view), SEND_CHUNK):
            if self.output_lost():
                raise ConnectionResetError("connection lost")
            self.writer.write(view[start:start + SEND_CHUNK])
            await self.drain()

    async def drain(self) -> None:
        """Wait until the transport takes more (at most ``send_timeout``)."""
        protocol = getattr(self.writer, "_protocol", None)
        if not getattr(protocol, "_paused", True):  # the common case: nothing to wait for
            await self.writer.drain()
            return
        timeout = asyncio.timeout(self.timeouts.send)
        try:
            async with timeout:
                await self.writer.drain()
        except TimeoutError:
            if not timeout.expired():
                raise ConnectionResetError("connection timed out") from None
            self.writer.transport.abort()  # frees what is buffered
            raise SendTimeout("output not read") from None

    # -- input ----------------------------------------------------------------------------

    async def receive(self, progress: ReadProgress, *, logged_in: bool, idle: float,
                      wait: float | None = None) -> bytes | None:
        """One read of client bytes within the deadline that applies now (`ClientTimeout`
        past it); None if `wait` seconds pass first."""
        now = self.loop.time()
        when, reason = self.deadlines.next(progress, now, idle=idle, logged_in=logged_in)
        quiet_ok = wait is not None and now + wait < when
        if quiet_ok:
            when = now + wait  # type: ignore[operator]
        timeout = asyncio.timeout_at(when)
        try:
            async with timeout:
                return await self.reader.read(READ_SIZE)
        except TimeoutError:
            if not timeout.expired():  # the socket's own ETIMEDOUT
                raise ConnectionResetError("connection timed out") from None
            if quiet_ok:
                return None
            raise ClientTimeout(reason) from None

    def pending_input(self) -> int:
        """Octets the stream holds that no reader has taken yet."""
        return len(getattr(self.reader, "_buffer", b""))

    async def upgrade_to_tls(self) -> None:
        """STARTTLS/STLS: the handshake, within the login deadline (and the handshake
        timeout); `TlsHandshakeFailed` if it fails."""
        remaining = max(0.1, min(self.deadlines.login_by - self.loop.time(), TLS_HANDSHAKE_TIMEOUT))
        try:
            async with asyncio.timeout(remaining + 1):
                await self.writer.start_tls(self.service.ssl_context, ssl_handshake_timeout=remaining)
        except (*CLIENT_GONE, TimeoutError) as error:
            with contextlib.suppress(Exception):
                self.writer.transport.abort()
            if not is_tls_failure(error) and not isinstance(error, TimeoutError):
                raise  # the client went away: a hang-up like any other
            raise TlsHandshakeFailed(describe_error(error)) from None
        self.tls = True
        self._limit_write_buffer()

    # -- the end --------------------------------------------------------------------------

    def log_closed(self, reason: str, error: BaseException | str | None = None) -> None:
        """The one line that says why the connection ended (INFO: the client's doing)."""
        during = f" during={self.current}" if self.current else ""
        detail = ""
        if error is not None:
            detail = f' error="{error if isinstance(error, str) else describe_error(error)}"'
        self.log.info("%s connection closed: rip=%s reason=%s%s%s", self.protocol,
                      self.client_ip, reason, during, detail)

    def closed_by_client(self, error: BaseException) -> None:
        """Log the end of a connection the client broke off (`CLIENT_GONE`)."""
        if isinstance(error, SendTimeout):
            self.log_closed(SEND_TIMED_OUT)
        elif isinstance(error, TlsHandshakeFailed):
            self.log_closed(TLS_FAILED, error.detail)
        else:
            self.log_closed(HUNG_UP, error)

    async def goodbye(self, line: bytes) -> None:
        """pymail ends the connection (a missed deadline, a protocol error): the last
        line if the client takes it within `GOODBYE_SECONDS`, then an abort -- a client
        still sending must not keep the connection alive through a TLS shutdown."""
        try:
            self.writer.write(line)
            await asyncio.wait_for(self.writer.drain(), GOODBYE_SECONDS)
        except Exception:  # noqa: BLE001 - gone already: nothing more to say
            pass
        with contextlib.suppress(Exception):
            self.writer.transport.abort()

    async def close(self) -> None:
        """The end of a connection: a TLS close, bounded, then the socket closed."""
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), GOODBYE_SECONDS)
        with contextlib.suppress(Exception):  # ends a TLS shutdown left hanging
            self.writer.transport.abort()


class StreamService:
    """One service (e.g. ``imaps``) on its addresses, and its connections.

    `trusted_proxies` send a PROXY header first; `limiter` (shared by every service of
    the process) counts connections per client address; `implicit_tls` wraps each
    connection in TLS (`ssl_context`) before the greeting, else the protocol may offer
    STARTTLS/STLS with the same context; `timeouts` are the client deadlines."""

    #: The per-connection class: ``connection_class(service, reader, writer, tls=...,
    #: client=..., connected_at=...)``.
    connection_class: ClassVar[type[Any]]
    #: "imap" / "pop3", for the log lines of the listener itself
    protocol: ClassVar[str] = "stream"
    log: ClassVar[logging.Logger] = logging.getLogger("pymail")

    def __init__(self, name: str, addresses: list[tuple[str, int]], store: Store,
                 authenticator: Authenticator, ssl_context: ssl.SSLContext, *,
                 implicit_tls: bool, reuse_port: bool = False,
                 trusted_proxies: TrustedProxies | None = None,
                 limiter: ConnectionLimiter | None = None,
                 timeouts: ClientTimeouts | None = None) -> None:
        self.name = name
        self.addresses = addresses
        self.store = store
        self.authenticator = authenticator
        self.ssl_context = ssl_context
        self.implicit_tls = implicit_tls
        self.reuse_port = reuse_port
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.limiter = limiter
        self.timeouts = timeouts or ClientTimeouts()
        self.connections: set[Any] = set()
        self.servers: list[asyncio.AbstractServer | ProxyListener] = []

    def _protocol(self, client: ClientAddress | None) -> asyncio.StreamReaderProtocol:
        """What the listener makes per connection, knowing the client (made at accept,
        before an implicit-TLS handshake: the login deadline counts from here)."""
        reader = asyncio.StreamReader(limit=READ_SIZE)
        connected_at = asyncio.get_running_loop().time()
        return asyncio.StreamReaderProtocol(
            reader, functools.partial(self._handle, client=client, connected_at=connected_at))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                      client: ClientAddress | None = None, connected_at: float | None = None) -> None:
        connection = self.connection_class(self, reader, writer, tls=self.implicit_tls,
                                           client=client, connected_at=connected_at)
        connection.task = asyncio.current_task()
        self.connections.add(connection)
        try:
            await connection.serve()
        except asyncio.CancelledError:
            # `shutdown` cancelled the connection: the task ends normally, else the
            # StreamReaderProtocol of Python 3.11 logs the cancellation as an error.
            pass
        finally:
            self.connections.discard(connection)

    def _tls_failed(self, client_ip: str, error: BaseException) -> None:
        """An implicit-TLS handshake failed (e.g. a TLS 1.0 client) or the client left
        during it: one INFO line."""
        reason = TLS_FAILED if is_tls_failure(error) else HUNG_UP
        self.log.info("%s connection closed: rip=%s reason=%s during=TLS error=\"%s\"",
                      self.protocol, client_ip, reason, describe_error(error))

    async def start(self) -> list[str]:
        """Bind every address; returns them as "host:port" (the real port if 0 was asked)."""
        bound = []
        for host, port in self.addresses:
            server = await start_listener(
                self.name, self._protocol, host, port,
                tls=self.ssl_context if self.implicit_tls else None,
                trusted=self.trusted_proxies, reuse_port=self.reuse_port,
                tls_failed=self._tls_failed,
            )
            self.servers.append(server)
            bound += bound_addresses(server.sockets)
        return bound

    async def stop(self, grace: float = 30.0) -> None:
        """Stop accepting, let commands in progress finish (up to `grace` s), then shut
        every connection down (the protocol says goodbye its own way)."""
        for server in self.servers:
            server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while any(c.busy for c in self.connections) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            await connection.shutdown()
        for server in self.servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
