"""The IMAP listener: TLS, and the per-connection loop that feeds client bytes to the
sans-IO `CommandReader` and its commands to an `ImapSession`.

* ``imaps`` (RFC 8314 implicit TLS, port 993) wraps every connection in TLS 1.2+ before
  the greeting; ``imap`` (port 143) starts in plaintext, offers STARTTLS and refuses
  every password (LOGINDISABLED) until TLS is up (RFC 3501 section 6.2.1, RFC 8314).
* After STARTTLS the reader is replaced, so bytes a client pipelined in plaintext behind
  STARTTLS are never read as commands (command injection, RFC 2595 section 3.1); if any
  arrived, the connection is closed.
* Reader errors are answered with the reply they carry (``BadCommand`` -> the tagged
  BAD/NO, the session goes on; ``FatalProtocolError`` -> ``* BYE`` and close).  Nothing
  else reaches the client: an unexpected exception is logged and the connection closed.
* A client silent for `AUTOLOGOUT_SECONDS` (RFC 3501 section 5.4: at least 30 minutes
  once authenticated) or `PREAUTH_TIMEOUT_SECONDS` before login gets ``* BYE``.
* The client is the socket's peer, or the source of a trusted load balancer's PROXY
  header (`pymail.net.proxy`, read before TLS on ``imaps``).  Before the greeting its
  address must be under ``limits.connections_per_ip`` (`pymail.net.limits`; else
  ``* BYE Too many connections from your address``) and not banned (``* BYE``): a BYE
  greeting refuses the connection (RFC 3501 section 7.1.5).
* `stop` stops accepting, waits (bounded) for commands in progress, then says ``* BYE``
  to every connection and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from pymail.auth.service import Authenticator
from pymail.net.imap.session import DEFAULT_APPEND_LIMIT, ImapSession, Logout
from pymail.net.imap.watch import MailboxWatcher
from pymail.net.limits import ConnectionLimiter, ConnectionSlot
from pymail.net.listen import READ_SIZE, StreamService
from pymail.net.proxy import ClientAddress, TrustedProxies
from pymail.proto.imap import responses as r
from pymail.proto.imap.errors import BadCommand, FatalProtocolError
from pymail.proto.imap.parser import CONNECTION_CLOSED, NEED_DATA, CommandReader, NeedContinuation
from pymail.proto.imap.states import ConnectionState
from pymail.proto.imap.types import Command
from pymail.store import Store

log = logging.getLogger("pymail.imap")

AUTOLOGOUT_SECONDS = 30 * 60
PREAUTH_TIMEOUT_SECONDS = 60
TOO_MANY_CONNECTIONS = "Too many connections from your address"


class ImapConnection:
    """One client connection: the stream pair, the command reader, the session.

    Fields: ``tls`` whether the stream is encrypted now; ``client_ip`` the client's
    address (a trusted PROXY header's source, else the peer); ``busy`` while a command
    runs (shutdown waits for it); ``task`` the task serving the connection."""

    def __init__(self, service: ImapService, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, tls: bool,
                 client: ClientAddress | None = None) -> None:
        self.service = service
        self.reader = reader
        self.writer = writer
        self.tls = tls
        peer = client or writer.get_extra_info("peername")
        self.client_ip = str(peer[0]) if peer else "unknown"
        self.commands = CommandReader(max_append=service.append_limit)
        self.session = ImapSession(service.store, service.authenticator, self,
                                   starttls_available=not service.implicit_tls,
                                   append_limit=service.append_limit, watcher=service.watcher)
        self.busy = False
        self.task: asyncio.Task[None] | None = None

    # -- the Channel the session uses ---------------------------------------------------

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def expect_continuation_line(self) -> None:
        self.commands.expect_continuation_line()

    def expect_idle_done(self) -> None:
        self.commands.expect_idle_done()

    async def next_event(self, timeout: float | None = None) -> object:
        """The next reader event; None if `timeout` passes first.  Without `timeout`,
        the autologout timer applies and raises TimeoutError."""
        while True:
            event = self.commands.next_event()
            if event is not NEED_DATA:
                return event
            limit = timeout if timeout is not None else self._autologout()
            busy, self.busy = self.busy, False  # waiting on the client (IDLE, SASL) is idle
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), limit)
            except asyncio.TimeoutError:
                if timeout is not None:
                    return None
                raise
            finally:
                self.busy = busy
            self.commands.receive_data(data)

    async def start_tls(self) -> None:
        pending = len(getattr(self.reader, "_buffer", b"")) + self.commands.buffered
        if pending:  # plaintext behind STARTTLS: refuse to carry it over
            raise Logout()
        await self.writer.start_tls(self.service.ssl_context)
        self.commands = CommandReader(max_append=self.service.append_limit)
        self.tls = True

    def _autologout(self) -> float:
        if self.session.state is ConnectionState.NOT_AUTHENTICATED:
            return PREAUTH_TIMEOUT_SECONDS
        return AUTOLOGOUT_SECONDS

    # -- the loop -------------------------------------------------------------------------

    async def serve(self) -> None:
        slot: ConnectionSlot | None = None
        try:
            if self.service.limiter is not None:
                slot = self.service.limiter.acquire(self.client_ip)
                if slot is None:
                    log.info("imap connection refused rip=%s reason=too_many_connections limit=%d",
                             self.client_ip, self.service.limiter.limit)
                    await self.send(r.untagged_status(r.STATUS_BYE, TOO_MANY_CONNECTIONS))
                    return
            if await self.service.authenticator.is_banned(self.client_ip):
                # RFC 3501 section 7.1.5: BYE as the greeting refuses the connection
                log.info("imap connection refused rip=%s reason=banned", self.client_ip)
                await self.send(r.untagged_status(r.STATUS_BYE, "Your address is temporarily blocked"))
                return
            await self.send(self.session.greeting())
            while True:
                try:
                    event = await self.next_event()
                except BadCommand as error:
                    await self.send(error.reply)
                    continue
                if event is CONNECTION_CLOSED:
                    return
                if isinstance(event, NeedContinuation):
                    await self.send(event.reply)
                    continue
                if isinstance(event, Command):
                    self.busy = True
                    try:
                        await self.session.run_command(event)
                    except BadCommand as error:  # during a SASL exchange or IDLE
                        await self.send(error.reply)
                    finally:
                        self.busy = False
        except FatalProtocolError as error:
            with contextlib.suppress(Exception):
                await self.send(error.reply)
        except asyncio.TimeoutError:
            with contextlib.suppress(Exception):
                await self.send(r.untagged_status(r.STATUS_BYE, "Autologout; idle for too long"))
        except Logout:
            pass
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("imap connection from %s failed", self.client_ip)
        finally:
            if slot is not None:
                slot.release()
            self.writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.writer.wait_closed(), 5)

    async def shutdown(self) -> None:
        """Say BYE and close (server shutdown)."""
        with contextlib.suppress(Exception):
            self.writer.write(r.untagged_status(r.STATUS_BYE, "Server shutting down"))
        if self.task is not None:
            self.task.cancel()
        self.writer.close()


class ImapService(StreamService):
    """One IMAP service (``imap`` or ``imaps``) on its addresses, and its connections
    (`StreamService`: listening, PROXY headers, stop)."""

    connection_class = ImapConnection

    def __init__(self, name: str, addresses: list[tuple[str, int]], store: Store,
                 authenticator: Authenticator, ssl_context: ssl.SSLContext, *,
                 implicit_tls: bool, reuse_port: bool = False,
                 append_limit: int = DEFAULT_APPEND_LIMIT,
                 watcher: MailboxWatcher | None = None,
                 trusted_proxies: TrustedProxies | None = None,
                 limiter: ConnectionLimiter | None = None) -> None:
        """`append_limit` is APPENDLIMIT (RFC 7889: the largest message APPEND takes,
        pymail's ``limits.message_size``); `watcher` is shared by the services of one
        process so that they hold one change feed between them."""
        super().__init__(name, addresses, store, authenticator, ssl_context,
                         implicit_tls=implicit_tls, reuse_port=reuse_port,
                         trusted_proxies=trusted_proxies, limiter=limiter)
        self.append_limit = append_limit
        self.watcher = watcher if watcher is not None else MailboxWatcher(store)
