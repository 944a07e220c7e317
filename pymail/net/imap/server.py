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
* Before login the reader takes no literal above ``limits.prelogin_literal`` (a larger
  synchronising one is refused before its ``+``, a larger ``{n+}`` ends the connection).
* After login an APPEND literal above ``limits.spool_threshold`` is not held: the
  reader hands it out in pieces as they arrive, which go into a `LiteralSpool`
  (`pymail.net.imap.append`: the process's one spool, hashed as it streams) until the
  APPEND takes it (`streamed_literal`).  A literal no command took -- the client hung
  up inside it, the command was refused, a deadline passed -- is dropped with its
  spool file.
* Deadlines (`pymail.net.listen.Deadlines`), each answered with ``* BYE`` and close:
  ``limits.login_timeout`` from connect (TLS handshake included) until login,
  ``limits.command_timeout`` for a command line once its first byte came,
  ``limits.min_data_rate`` for literal data, and the autologout of RFC 3501 section 5.4
  (`AUTOLOGOUT_SECONDS`, 30 minutes) for a logged-in client silent between commands.
  Output waits for the client to read it, at most ``limits.send_timeout``.
* A client that hangs up, fails a TLS handshake or stops reading ends with one INFO
  line (``imap connection closed: rip=... reason=...``), never a traceback.
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
import logging
import ssl

from pymail.auth.service import Authenticator
from pymail.delivery.pipeline import Pipeline
from pymail.delivery.spool import MessageContent, Spool
from pymail.net.imap.append import LiteralSpool
from pymail.net.imap.refusals import Logout
from pymail.net.imap.session import (
    DEFAULT_APPEND_LIMIT, DEFAULT_FETCH_SECTIONS, CopyObserver, ImapSession,
)
from pymail.net.imap.watch import MailboxWatcher
from pymail.net.limits import ConnectionLimiter, ConnectionSlot, Refused
from pymail.net.listen import (
    AUTOLOGOUT, CLIENT_GONE, COMMAND_TIMEOUT, DATA_RATE, HUNG_UP, LOGIN_TIMEOUT, ClientTimeout,
    ClientTimeouts, StreamConnection, StreamService,
)
from pymail.net.proxy import ClientAddress, TrustedProxies
from pymail.proto.imap import responses as r
from pymail.proto.imap.errors import BadCommand, FatalProtocolError
from pymail.proto.imap.names import MailboxLimits
from pymail.proto.imap.reader import (
    CONNECTION_CLOSED, NEED_DATA, CommandReader, LiteralData, NeedContinuation,
)
from pymail.proto.imap.states import ConnectionState
from pymail.proto.imap.types import Command
from pymail.store import Store

log = logging.getLogger("pymail.imap")

AUTOLOGOUT_SECONDS = 30 * 60
TOO_MANY_CONNECTIONS = "Too many connections from your address"
DEFAULT_PRELOGIN_LITERAL = 8 * 1024

#: What ``* BYE`` says for each missed deadline.
BYE_TEXTS = {
    LOGIN_TIMEOUT: "Login took too long",
    COMMAND_TIMEOUT: "Command line took too long",
    DATA_RATE: "Literal data too slow",
    AUTOLOGOUT: "Autologout; idle for too long",
}


class ImapConnection(StreamConnection):
    """One client connection: the stream pair, the command reader, the session
    (`StreamConnection` has the fields they share with POP3)."""

    protocol = "imap"
    log = log

    def __init__(self, service: ImapService, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, *, tls: bool,
                 client: ClientAddress | None = None, connected_at: float | None = None) -> None:
        super().__init__(service, reader, writer, tls=tls, client=client, connected_at=connected_at)
        self.imap = service
        self.commands = self._reader()
        #: the streamed APPEND literals arriving, or arrived and not yet taken, in order
        #: (MULTIAPPEND, RFC 3502, may stream several in one command)
        self.literals: list[LiteralSpool] = []
        self.session = ImapSession(service.store, service.authenticator, self,
                                   starttls_available=not service.implicit_tls,
                                   append_limit=service.append_limit, watcher=service.watcher,
                                   mailbox_limits=service.mailbox_limits,
                                   fetch_sections=service.fetch_sections,
                                   pipeline=service.pipeline, on_copied=service.on_copied)

    def _reader(self) -> CommandReader:
        spool = self.imap.spool
        return CommandReader(max_append=self.imap.append_limit,
                             prelogin_literal=self.imap.prelogin_literal,
                             stream_literal_above=spool.threshold if spool is not None else None)

    # -- the Channel the session uses ---------------------------------------------------

    def expect_continuation_line(self) -> None:
        self.commands.expect_continuation_line()

    def expect_idle_done(self) -> None:
        self.commands.expect_idle_done()

    def logged_in(self) -> None:
        self.commands.logged_in()

    async def streamed_literal(self) -> MessageContent:
        if not self.literals:
            raise RuntimeError("no streamed literal for this APPEND")
        return await self.literals.pop(0).finish()

    def drop_literal(self) -> None:
        """Drop the streamed literals no command took (and their spool files)."""
        literals, self.literals = self.literals, []
        for literal in literals:
            literal.discard()

    async def next_event(self, timeout: float | None = None) -> object:
        """The next reader event; None if `timeout` passes first.  The deadlines apply
        (`ClientTimeout`).  The pieces of a streamed literal go to its spool here."""
        while True:
            try:
                event = self.commands.next_event()
            except (BadCommand, FatalProtocolError):
                self.drop_literal()  # the command it belonged to was refused
                raise
            if isinstance(event, LiteralData):
                self.current = "APPEND"  # only an APPEND literal streams (for the log)
                if not self.literals or self.literals[-1].complete:  # the next literal
                    assert self.imap.spool is not None
                    self.literals.append(LiteralSpool(self.imap.spool, event.literal_size))
                await self.literals[-1].write(event.data)
                continue
            if event is CONNECTION_CLOSED:
                self.drop_literal()
            if event is not NEED_DATA:
                return event
            logged_in = self.session.state is not ConnectionState.NOT_AUTHENTICATED
            busy, self.busy = self.busy, False  # waiting on the client (IDLE, SASL) is idle
            try:
                data = await self.receive(self.commands.progress(), logged_in=logged_in,
                                          idle=AUTOLOGOUT_SECONDS, wait=timeout)
            finally:
                self.busy = busy
            if data is None:
                return None
            self.commands.receive_data(data)

    async def start_tls(self) -> None:
        if self.pending_input() + self.commands.buffered:
            raise Logout()  # plaintext behind STARTTLS: refuse to carry it over
        await self.upgrade_to_tls()
        self.commands = self._reader()

    # -- the loop -------------------------------------------------------------------------

    async def serve(self) -> None:
        slot: ConnectionSlot | None = None
        try:
            if self.service.limiter is not None:
                admitted = self.service.limiter.admit(self.client_ip)
                if isinstance(admitted, Refused):  # too many at once, or too fast
                    log.info("imap connection refused rip=%s %s", self.client_ip, admitted)
                    await self.send(r.untagged_status(r.STATUS_BYE, TOO_MANY_CONNECTIONS))
                    return
                slot = admitted
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
                    self.busy, self.current = True, event.name
                    try:
                        await self.session.run_command(event)
                    except BadCommand as error:  # during a SASL exchange or IDLE
                        await self.send(error.reply)
                    finally:
                        self.busy = False
                        self.drop_literal()  # a refused APPEND did not take it
                    self.current = None  # kept for the log line if the command failed
        except FatalProtocolError as error:
            self.log_closed("protocol_error", error.text)
            await self.goodbye(error.reply)
        except ClientTimeout as timeout:
            self.log_closed(timeout.reason)
            await self.goodbye(r.untagged_status(r.STATUS_BYE, BYE_TEXTS[timeout.reason]))
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
                log.exception("imap connection from rip=%s failed", self.client_ip)
        finally:
            self.drop_literal()
            if slot is not None:
                slot.release()
            await self.close()

    async def shutdown(self) -> None:
        """Say BYE and close (server shutdown)."""
        try:
            self.writer.write(r.untagged_status(r.STATUS_BYE, "Server shutting down"))
        except Exception:  # noqa: BLE001 - the transport is gone already
            pass
        if self.task is not None:
            self.task.cancel()
        self.writer.close()


class ImapService(StreamService):
    """One IMAP service (``imap`` or ``imaps``) on its addresses, and its connections
    (`StreamService`: listening, PROXY headers, stop)."""

    connection_class = ImapConnection
    protocol = "imap"
    log = log

    def __init__(self, name: str, addresses: list[tuple[str, int]], store: Store,
                 authenticator: Authenticator, ssl_context: ssl.SSLContext, *,
                 implicit_tls: bool, reuse_port: bool = False,
                 append_limit: int = DEFAULT_APPEND_LIMIT,
                 watcher: MailboxWatcher | None = None,
                 trusted_proxies: TrustedProxies | None = None,
                 limiter: ConnectionLimiter | None = None,
                 timeouts: ClientTimeouts | None = None,
                 prelogin_literal: int = DEFAULT_PRELOGIN_LITERAL,
                 mailbox_limits: MailboxLimits = MailboxLimits(),
                 fetch_sections: int = DEFAULT_FETCH_SECTIONS,
                 spool: Spool | None = None,
                 pipeline: Pipeline,
                 on_copied: CopyObserver | None = None) -> None:
        """`append_limit` is APPENDLIMIT (RFC 7889: the largest message APPEND takes,
        pymail's ``limits.message_size``); `watcher` is shared by the services of one
        process so that they hold one change feed between them; `timeouts`,
        `prelogin_literal`, `mailbox_limits` and `fetch_sections` come from ``[limits]``;
        `spool` takes APPEND literals above its threshold as they arrive (None: every
        literal is held whole), `pipeline` delivers what APPEND takes (the one the MX
        and submission deliver through); `on_copied` is told of every COPY/MOVE
        (spam training, `pymail.checks.training.JunkLearning`; None: nobody)."""
        super().__init__(name, addresses, store, authenticator, ssl_context,
                         implicit_tls=implicit_tls, reuse_port=reuse_port,
                         trusted_proxies=trusted_proxies, limiter=limiter, timeouts=timeouts)
        self.append_limit = append_limit
        self.watcher = watcher if watcher is not None else MailboxWatcher(store)
        self.prelogin_literal = prelogin_literal
        self.mailbox_limits = mailbox_limits
        self.fetch_sections = fetch_sections
        self.spool = spool
        self.pipeline = pipeline
        self.on_copied = on_copied
