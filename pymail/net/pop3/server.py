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
* Deadlines (`pymail.net.listen.Deadlines`), each answered with ``-ERR`` and a close
  without entering the UPDATE state (nothing is removed): ``limits.login_timeout``
  from connect (TLS handshake included) until login, ``limits.command_timeout`` for a
  command line once its first byte came, and, once logged in, `AUTOLOGOUT_SECONDS`
  (RFC 1939 section 3: at least 10 minutes) for a client silent between commands.
  Before login the login deadline replaces RFC 1939's 10 idle minutes: a client that
  has not logged in holds nothing worth waiting for, and ``limits.connections_per_ip``
  plus the deadline bound what such clients can hold.  Output (RETR, TOP, listings)
  waits for the client to read it, at most ``limits.send_timeout``.
* A client that hangs up, fails a TLS handshake or stops reading ends with one INFO
  line (``pop3 connection closed: rip=... reason=...``), never a traceback.
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
import logging
import ssl

from pymail.auth.service import Authenticator
from pymail.net.limits import ConnectionLimiter, ConnectionSlot, Refused
from pymail.net.listen import (
    AUTOLOGOUT, CLIENT_GONE, COMMAND_TIMEOUT, DATA_RATE, HUNG_UP, LOGIN_TIMEOUT, ClientTimeout,
    ClientTimeouts, StreamConnection, StreamService,
)
from pymail.net.pop3.session import Logout, MaildropLocks, Pop3Session
from pymail.net.proxy import ClientAddress, TrustedProxies
from pymail.proto.pop3 import responses as r
from pymail.proto.pop3.errors import CommandError
from pymail.proto.pop3.reader import CONNECTION_CLOSED, NEED_DATA, Command, CommandReader
from pymail.proto.pop3.states import Pop3State
from pymail.store import Store

log = logging.getLogger("pymail.pop3")

AUTOLOGOUT_SECONDS = 10 * 60  # RFC 1939 section 3, once logged in
TOO_MANY_CONNECTIONS = "Too many connections from your address"

#: What the last ``-ERR`` says for each missed deadline.
GOODBYE_TEXTS = {
    LOGIN_TIMEOUT: "Login took too long",
    COMMAND_TIMEOUT: "Command line took too long",
    DATA_RATE: "Command line took too long",  # POP3 has no literals: not reached
    AUTOLOGOUT: "Disconnected for inactivity",
}


class Pop3Connection(StreamConnection):
    """One client connection: the stream pair, the command reader, the session
    (`StreamConnection` has the fields they share with IMAP)."""

    protocol = "pop3"
    log = log

    def __init__(self, service: Pop3Service, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, tls: bool,
                 client: ClientAddress | None = None, connected_at: float | None = None) -> None:
        super().__init__(service, reader, writer, tls=tls, client=client, connected_at=connected_at)
        self.commands = CommandReader()
        self.session = Pop3Session(service.store, service.authenticator, self, service.locks,
                                   starttls_available=not service.implicit_tls)

    # -- the Channel the session uses ---------------------------------------------------

    def expect_sasl_response(self) -> None:
        self.commands.expect_sasl_response()

    async def next_event(self) -> object:
        """The next reader event; the deadlines apply (`ClientTimeout`)."""
        while True:
            event = self.commands.next_event()
            if event is not NEED_DATA:
                return event
            logged_in = self.session.state is not Pop3State.AUTHORIZATION
            busy, self.busy = self.busy, False  # waiting on the client (SASL) is idle
            try:
                data = await self.receive(self.commands.progress(), logged_in=logged_in,
                                          idle=AUTOLOGOUT_SECONDS)
            finally:
                self.busy = busy
            assert data is not None
            self.commands.receive_data(data)

    async def start_tls(self) -> None:
        """Discard the plaintext behind STLS (in the reader and in the stream's buffer,
        which the TLS transport would otherwise hand on as if it had come encrypted),
        then handshake."""
        stream_buffer = getattr(self.reader, "_buffer", None)
        pending = self.commands.buffered + self.pending_input()
        # No await between this and the transport pausing its reads inside start_tls,
        # so no plaintext can slip in between.
        if pending:
            log.warning("pop3: discarded %d octets pipelined behind STLS from rip=%s",
                        pending, self.client_ip)
            if stream_buffer is not None:
                stream_buffer.clear()
        self.commands = CommandReader()
        await self.upgrade_to_tls()

    # -- the loop -------------------------------------------------------------------------

    async def serve(self) -> None:
        slot: ConnectionSlot | None = None
        try:
            if self.service.limiter is not None:
                admitted = self.service.limiter.admit(self.client_ip)
                if isinstance(admitted, Refused):  # too many at once, or too fast
                    log.info("pop3 connection refused rip=%s %s", self.client_ip, admitted)
                    await self.send(r.err(TOO_MANY_CONNECTIONS, r.CODE_SYS_TEMP))
                    return
                slot = admitted
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
                    self.busy, self.current = True, event.name
                    try:
                        await self.session.run_command(event)
                    finally:
                        self.busy = False
                    self.current = None  # kept for the log line if the command failed
                # a SaslResponse outside a SASL exchange cannot happen: the reader
                # returns one only after expect_sasl_response()
        except ClientTimeout as timeout:
            self.log_closed(timeout.reason)
            await self.goodbye(r.err(GOODBYE_TEXTS[timeout.reason]))
        except Logout:
            pass
        except CLIENT_GONE as error:
            self.closed_by_client(error)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if self.peer_gone(error):  # an odd error from a transport already lost
                self.log_closed(HUNG_UP, error)
            else:
                log.exception("pop3 connection from rip=%s failed", self.client_ip)
        finally:
            if slot is not None:
                slot.release()
            self.session.close()
            await self.close()

    async def shutdown(self) -> None:
        """Say -ERR and close (server shutdown); marked messages are not removed."""
        try:
            self.writer.write(r.err("Server shutting down", r.CODE_SYS_TEMP))
        except Exception:  # noqa: BLE001 - the transport is gone already
            pass
        if self.task is not None:
            self.task.cancel()
        self.session.close()
        self.writer.close()


class Pop3Service(StreamService):
    """One POP3 service (``pop3`` or ``pop3s``) on its addresses, and its connections
    (`StreamService`: listening, PROXY headers, stop).  ``locks`` is shared with the
    other POP3 service of the same worker; `timeouts` come from ``[limits]``."""

    connection_class = Pop3Connection
    protocol = "pop3"
    log = log

    def __init__(self, name: str, addresses: list[tuple[str, int]], store: Store,
                 authenticator: Authenticator, ssl_context: ssl.SSLContext, *,
                 implicit_tls: bool, locks: MaildropLocks | None = None,
                 reuse_port: bool = False, trusted_proxies: TrustedProxies | None = None,
                 limiter: ConnectionLimiter | None = None,
                 timeouts: ClientTimeouts | None = None) -> None:
        super().__init__(name, addresses, store, authenticator, ssl_context,
                         implicit_tls=implicit_tls, reuse_port=reuse_port,
                         trusted_proxies=trusted_proxies, limiter=limiter, timeouts=timeouts)
        self.locks = locks if locks is not None else MaildropLocks()
