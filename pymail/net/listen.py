"""What the listening services share: the bound-address log format, and
`StreamService`, the listener of the line-based protocols served from asyncio streams
(IMAP, POP3).

`StreamService` owns the listening sockets (through `pymail.net.proxy.start_listener`,
which reads a trusted load balancer's PROXY header first), one connection object per
client (its subclass's `connection_class`, with ``serve()``, ``shutdown()``, ``busy`` and
``task``), and the stop sequence: stop accepting, let commands in progress finish within
the grace period, then shut every connection down.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from pymail.net.proxy import ClientAddress, ProxyListener, TrustedProxies, start_listener

if TYPE_CHECKING:
    from pymail.auth.service import Authenticator
    from pymail.net.limits import ConnectionLimiter
    from pymail.store import Store

#: StreamReader buffer of a connection: what one read may take.
READ_SIZE = 64 * 1024


def bound_addresses(sockets: Iterable[socket.socket]) -> list[str]:
    """The "host:port" ("[v6]:port") each listening socket is bound to (the real port when
    port 0 was asked), as the start-up log lines show them."""
    out = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out


class StreamService:
    """One service (e.g. ``imaps``) on its addresses, and its connections.

    `trusted_proxies` send a PROXY header first; `limiter` (shared by every service of
    the process) counts connections per client address; `implicit_tls` wraps each
    connection in TLS (`ssl_context`) before the greeting, else the protocol may offer
    STARTTLS/STLS with the same context."""

    #: The per-connection class: ``connection_class(service, reader, writer, tls=...,
    #: client=...)``.
    connection_class: ClassVar[type[Any]]

    def __init__(self, name: str, addresses: list[tuple[str, int]], store: Store,
                 authenticator: Authenticator, ssl_context: ssl.SSLContext, *,
                 implicit_tls: bool, reuse_port: bool = False,
                 trusted_proxies: TrustedProxies | None = None,
                 limiter: ConnectionLimiter | None = None) -> None:
        self.name = name
        self.addresses = addresses
        self.store = store
        self.authenticator = authenticator
        self.ssl_context = ssl_context
        self.implicit_tls = implicit_tls
        self.reuse_port = reuse_port
        self.trusted_proxies = trusted_proxies or TrustedProxies()
        self.limiter = limiter
        self.connections: set[Any] = set()
        self.servers: list[asyncio.AbstractServer | ProxyListener] = []

    def _protocol(self, client: ClientAddress | None) -> asyncio.StreamReaderProtocol:
        """What the listener makes per connection, knowing the client."""
        reader = asyncio.StreamReader(limit=READ_SIZE)
        return asyncio.StreamReaderProtocol(reader, functools.partial(self._handle, client=client))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                      client: ClientAddress | None = None) -> None:
        connection = self.connection_class(self, reader, writer, tls=self.implicit_tls, client=client)
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

    async def start(self) -> list[str]:
        """Bind every address; returns them as "host:port" (the real port if 0 was asked)."""
        bound = []
        for host, port in self.addresses:
            server = await start_listener(
                self.name, self._protocol, host, port,
                tls=self.ssl_context if self.implicit_tls else None,
                trusted=self.trusted_proxies, reuse_port=self.reuse_port,
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
