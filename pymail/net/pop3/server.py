"""The POP3 listener: TLS, and the per-connection loop that feeds client bytes to the
sans-IO `CommandReader` and its commands to a `Pop3Session`.

* ``pop3s`` (RFC 8314 implicit TLS, port 995) wraps every connection in TLS 1.2+ before
  the greeting; ``pop3`` (port 110) starts in plaintext, offers STLS and refuses every
  password until TLS is up (RFC 2595 section 4, RFC 8314).
* STLS (RFC 2595 section 4) discards whatever the client sent behind the STLS line
  (command injection, CVE-2011-0411; RFC 2595 section 3.1 for IMAP says the same) and
  replaces the reader, so plaintext pipelined behind STLS is never read as a command;
  the session goes on over TLS in the AUTHORIZATION state.
* Reader errors are answered with the ``-ERR`` they carry and the session goes on.
  Nothing else reaches the client: an unexpected exception is logged and the
  connection closed.
* A client silent for `AUTOLOGOUT_SECONDS` gets ``-ERR`` and is disconnected without
  entering the UPDATE state: nothing is removed.  RFC 1939 section 3 asks for at least
  10 minutes in every state, so the same timer applies before login (unlike IMAP, whose
  30-minute minimum covers authenticated sessions only); ``limits.connections_per_ip``
  bounds what silent unauthenticated clients can hold.
* The client is the socket's peer, or the source of a trusted load balancer's PROXY
  header (`pymail.net.proxy`, read before TLS on ``pop3s``).  Before the greeting its
  address must be under ``limits.connections_per_ip`` (`pymail.net.limits`; else
  ``-ERR [SYS/TEMP] Too many connections from your address``: RFC 3206's code for a
  temporary condition; ``[IN-USE]`` is about a maildrop already in use, which this is
  not) and not banned (``-ERR [AUTH]``).
* `stop` stops accepting, waits (bounded) for commands in progress (a QUIT removing
  messages finishes), then says ``-ERR`` to every connection and closes it; their
  marked messages stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from pymail.auth.service import Authenticator
from pymail.net.limits import ConnectionLimiter, ConnectionSlot
from pymail.net.listen import READ_SIZE, StreamService
from pymail.net.pop3.session import Logout, MaildropLocks, Pop3Session
from pymail.net.proxy import ClientAddress, TrustedProxies
from pymail.proto.pop3 import responses as r
from pymail.proto.pop3.errors import CommandError
from pymail.proto.pop3.reader import CONNECTION_CLOSED, NEED_DATA, Command, CommandReader
from pymail.proto.pop3.states import Pop3State
from pymail.store import Store

log = logging.getLogger("pymail.pop3")

AUTOLOGOUT_SECONDS = 10 * 60
PREAUTH_TIMEOUT_SECONDS = AUTOLOGOUT_SECONDS  # RFC 1939 section 3: in every state
TOO_MANY_CONNECTIONS = "Too many connections from your address"


class Pop3Connection:
    """One client connection: the stream pair, the command reader, the session.

    Fields: ``tls`` whether the stream is encrypted now; ``client_ip`` the client's
    address (a trusted PROXY header's source, else the peer); ``busy`` while a command
    runs (shutdown waits for it); ``task`` the task serving the connection."""

    def __init__(self, service: Pop3Service, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, tls: bool,
                 client: ClientAddress | None = None) -> None:
        self.service = service
        self.reader = reader
        self.writer = writer
        self.tls = tls
        peer = client or writer.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "unknown"
        self.commands = CommandReader()
        self.session = Pop3Session(service.store, service.authenticator, self, service.locks,
                                   starttls_available=not service.implicit_tls)
        self.busy = False
        self.task: asyncio.Task[None] | None = None

    # -- the Channel the session uses ---------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def expect_sasl_response(self) -> None:
        self.commands.expect_sasl_response()

    async def next_event(self) -> object:
        """The next reader event; raises TimeoutError when the client stays silent."""
        while True:
            event = self.commands.next_event()
            if event is not NEED_DATA:
                return event
            limit = (PREAUTH_TIMEOUT_SECONDS if self.session.state is Pop3State.AUTHORIZATION
                     else AUTOLOGOUT_SECONDS)
            busy, self.busy = self.busy, False  # waiting on the client (SASL) is idle
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), limit)
            finally:
                self.busy = busy
            self.commands.receive_data(data)

    async def start_tls(self) -> None:
        """Discard the plaintext behind STLS (in the reader and in the stream's buffer,
        which the TLS transport would otherwise hand on as if it had come encrypted),
        then handshake."""
        stream_buffer = getattr(self.reader, "_buffer", None)
        pending = self.commands.buffered + (len(stream_buffer) if stream_buffer is not None else 0)
        # No await between this and the transport pausing its reads inside start_tls,
        # so no plaintext can slip in between.
        if pending:
            log.warning("pop3: discarded %d octets pipelined behind STLS from rip=%s",
                        pending, self.client_ip)
            if stream_buffer is not None:
                stream_buffer.clear()
        self.commands = CommandReader()
        await self.writer.start_tls(self.service.ssl_context)
        self.tls = True

    # -- the loop -------------------------------------------------------------------------

    async def serve(self) -> None:
        slot: ConnectionSlot | None = None
        try:
            if self.service.limiter is not None:
                slot = self.service.limiter.acquire(self.client_ip)
                if slot is None:
                    log.info("pop3 connection refused rip=%s reason=too_many_connections limit=%d",
                             self.client_ip, self.service.limiter.limit)
                    await self.send(r.err(TOO_MANY_CONNECTIONS, r.CODE_SYS_TEMP))
                    return
            if await self.service.authenticator.is_banned(self.client_ip):
                log.info("pop3 connection refused rip=%s reason=banned", self.client_ip)
                await self.send(b"-ERR [AUTH] Your address is temporarily blocked\r\n")
                return
            await self.send(self.session.greeting())
            while True:
                try:
                    event = await self.next_event()
                except CommandError as error:
                    await self.send(error.reply)
                    continue
                if event is CONNECTION_CLOSED:
                    return
                if isinstance(event, Command):
                    self.busy = True
                    try:
                        await self.session.run_command(event)
                    finally:
                        self.busy = False
                # a SaslResponse outside a SASL exchange cannot happen: the reader
                # returns one only after expect_sasl_response()
        except asyncio.TimeoutError:
            with contextlib.suppress(Exception):
                await self.send(r.err("Disconnected for inactivity"))
        except Logout:
            pass
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pop3 connection from %s failed", self.client_ip)
        finally:
            if slot is not None:
                slot.release()
            self.session.close()
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 5)

    async def shutdown(self) -> None:
        """Say -ERR and close (server shutdown); marked messages are not removed."""
        with contextlib.suppress(Exception):
            self.writer.write(r.err("Server shutting down", r.CODE_SYS_TEMP))
        if self.task is not None:
            self.task.cancel()
        self.session.close()
        self.writer.close()


class Pop3Service(StreamService):
    """One POP3 service (``pop3`` or ``pop3s``) on its addresses, and its connections
    (`StreamService`: listening, PROXY headers, stop).  ``locks`` is shared with the
    other POP3 service of the same worker."""

    connection_class = Pop3Connection

    def __init__(self, name: str, addresses: list[tuple[str, int]], store: Store,
                 authenticator: Authenticator, ssl_context: ssl.SSLContext, *,
                 implicit_tls: bool, locks: MaildropLocks | None = None,
                 reuse_port: bool = False, trusted_proxies: TrustedProxies | None = None,
                 limiter: ConnectionLimiter | None = None) -> None:
        super().__init__(name, addresses, store, authenticator, ssl_context,
                         implicit_tls=implicit_tls, reuse_port=reuse_port,
                         trusted_proxies=trusted_proxies, limiter=limiter)
        self.locks = locks if locks is not None else MaildropLocks()
