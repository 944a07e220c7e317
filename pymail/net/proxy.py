"""Listeners, and the PROXY protocol header read from trusted load balancers.

``[server] proxy_protocol_from`` names the peers (addresses or networks, like Dovecot's
``haproxy_trusted_networks``) that put a PROXY header (v1 or v2, `pymail.proto.proxy`)
in front of every connection they open.  For such a peer:

* the header MUST come first, within `PROXY_HEADER_TIMEOUT` seconds; a connection
  without one, with a malformed one, or that closes first is closed without a greeting
  and logged (the spec forbids guessing whether a header is there, section 2);
* the header's source address is the client from then on: every log line (``rip=``),
  the ban check, the Received header and the per-address connection limit use it.
  A LOCAL (v2) or UNKNOWN header keeps the socket's peer as the client.

Every other peer is served directly, and a PROXY header from it is just bytes of the
protocol (a syntax error there): its claim is never honoured.

On an implicit-TLS port the header comes before the TLS handshake (HAProxy
``send-proxy`` in TCP mode), so such a listener accepts plain TCP and starts TLS itself
after the header.  The header is read with ``MSG_PEEK`` and only its own bytes are
consumed, so the bytes behind it (a ClientHello, an SMTP command) stay in the kernel for
the TLS layer or the protocol: nothing is read past the header.

`start_listener` binds one address.  Without trusted peers it is asyncio's own
``create_server`` (the hot path is unchanged); with them, or for an implicit-TLS service
that wants to hear of failed handshakes (``tls_failed``: IMAP and POP3 log each as one
line), a `ProxyListener` accepts, reads the header from trusted peers, then hands the
socket to asyncio (``connect_accepted_socket``, TLS included).  Both give the protocol factory the client
address: the PROXY source, or None for "the socket's peer".
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Iterable

from pymail.proto.proxy import (
    MAX_HEADER_LENGTH,
    NEED_DATA,
    ProxyHeader,
    ProxyHeaderError,
    parse_proxy_header,
)

__all__ = [
    "PROXY_HEADER_TIMEOUT",
    "TLS_HANDSHAKE_TIMEOUT",
    "ClientAddress",
    "TlsFailureHook",
    "ProxyListener",
    "TrustedProxies",
    "read_proxy_header",
    "start_listener",
]

log = logging.getLogger("pymail.proxy")

#: Seconds a trusted peer has to send the whole PROXY header.
PROXY_HEADER_TIMEOUT = 10.0
#: Seconds an implicit-TLS client has to finish the handshake.
TLS_HANDSHAKE_TIMEOUT = 30.0

#: (address, port) of the real client as a PROXY header gave it.
ClientAddress = tuple[str, int]
#: Makes the protocol of one connection; gets the PROXY source, or None (the peer).
ProtocolFactory = Callable[[ClientAddress | None], asyncio.BaseProtocol]
#: Told of a failed implicit-TLS handshake: (client address, the error).
TlsFailureHook = Callable[[str, BaseException], None]

#: accept() errors that mean "out of resources": wait a little before the next accept.
_ACCEPT_BACKOFF_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The peers allowed (and required) to send a PROXY header: ``networks``."""

    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = [ipaddress.ip_network(n, strict=False) for n in networks]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, ip: object) -> bool:
        address = _address(str(ip))
        return address is not None and any(
            address.version == net.version and address in net for net in self.networks
        )


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()
    fd = sock.fileno()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


async def read_proxy_header(sock: socket.socket) -> ProxyHeader:
    """Read the PROXY header at the start of the non-blocking socket `sock`, consuming
    exactly its bytes.  Raises `ProxyHeaderError` (also for a connection closed before
    the header is complete) or `OSError`."""
    loop = asyncio.get_running_loop()
    consumed = b""  # header bytes already taken from the socket
    while True:
        await _readable(loop, sock)
        try:
            peeked = sock.recv(MAX_HEADER_LENGTH - len(consumed), socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            continue
        if not peeked:
            raise ProxyHeaderError("connection closed before the PROXY header")
        result = parse_proxy_header(consumed + peeked)
        if result is NEED_DATA:
            # The header is not complete, so every byte peeked belongs to it: take them
            # (else the socket stays readable and this loop would spin).
            _recv_exactly(sock, len(peeked))
            consumed += peeked
            continue
        header, length = result  # type: ignore[misc]
        _recv_exactly(sock, length - len(consumed))
        return header


def _recv_exactly(sock: socket.socket, size: int) -> None:
    """Take `size` bytes that MSG_PEEK has shown to be there."""
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            raise ProxyHeaderError("connection closed in the PROXY header")
        size -= len(chunk)


class ProxyListener:
    """One listening address whose connections from `trusted` peers start with a PROXY
    header.  The shape of `asyncio.Server` the services use: ``sockets``, `close`,
    `wait_closed`.

    ``service`` names the listener in log lines; ``tls`` wraps each connection in TLS
    after the header (implicit TLS); ``tls_failed(client_ip, error)``, when given, hears
    of each TLS handshake that fails (the service logs it); ``admissions`` are the
    connections between accept and their protocol's start (reading the header, TLS
    handshake)."""

    def __init__(self, service: str, sockets: list[socket.socket], factory: ProtocolFactory,
                 *, trusted: TrustedProxies, tls: ssl.SSLContext | None,
                 header_timeout: float = PROXY_HEADER_TIMEOUT,
                 tls_failed: TlsFailureHook | None = None) -> None:
        self.service = service
        self._sockets = sockets
        self.factory = factory
        self.trusted = trusted
        self.tls = tls
        self.header_timeout = header_timeout
        self.tls_failed = tls_failed
        self.admissions: set[asyncio.Task[None]] = set()
        self._acceptors: list[asyncio.Task[None]] = []
        self._closed = False

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._sockets)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._acceptors = [loop.create_task(self._accept(sock)) for sock in self._sockets]

    def close(self) -> None:
        """Stop accepting (connections already handed to their protocol go on)."""
        self._closed = True
        for task in [*self._acceptors, *self.admissions]:
            task.cancel()

    async def wait_closed(self) -> None:
        tasks = [*self._acceptors, *self.admissions]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self._closed:
                try:
                    conn, peer = await loop.sock_accept(sock)
                except OSError as error:
                    log.warning("%s: accept failed: %s", self.service, error)
                    if error.errno in _ACCEPT_BACKOFF_ERRNOS:
                        await asyncio.sleep(1.0)
                    continue
                task = loop.create_task(self._admit(conn, peer))
                self.admissions.add(task)
                task.add_done_callback(self.admissions.discard)
        finally:
            sock.close()

    async def _admit(self, conn: socket.socket, peer: tuple) -> None:
        """Read the header if `peer` is trusted, then start the connection's protocol."""
        loop = asyncio.get_running_loop()
        handed_over = False
        try:
            client: ClientAddress | None = None
            peer_ip = str(peer[0])
            conn.setblocking(False)
            if peer_ip in self.trusted:
                client = await self._header(conn, peer_ip)
            handed_over = True
            await loop.connect_accepted_socket(
                lambda: self.factory(client), conn, ssl=self.tls,
                ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if self.tls is not None else None,
            )
        except _Refused:
            pass
        except (OSError, asyncio.TimeoutError, ssl.SSLError) as error:
            # a failed TLS handshake or a peer gone: asyncio closed the socket
            if handed_over and self.tls is not None and self.tls_failed is not None:
                self.tls_failed(client[0] if client is not None else peer_ip, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: connection from %s failed", self.service, peer)
        finally:
            if not handed_over:
                conn.close()

    async def _header(self, conn: socket.socket, peer_ip: str) -> ClientAddress | None:
        """The client the header names (None: the peer itself); `_Refused` after
        logging why there is none."""
        try:
            header = await asyncio.wait_for(read_proxy_header(conn), self.header_timeout)
        except asyncio.TimeoutError:
            reason = f"no PROXY header within {self.header_timeout:g}s"
        except ProxyHeaderError as error:
            reason = str(error)
        except OSError as error:
            reason = f"connection error: {error.strerror or error}"
        else:
            if header.source is not None:
                log.debug("%s: PROXY v%d from peer=%s rip=%s", self.service, header.version,
                          peer_ip, header.source[0])
            return header.source
        log.info('proxy header refused: service=%s peer=%s reason="%s"', self.service, peer_ip,
                 reason)
        raise _Refused()


class _Refused(Exception):
    """A trusted peer's connection without a valid PROXY header (already logged)."""


def _bind(host: str, port: int, *, reuse_port: bool, backlog: int) -> list[socket.socket]:
    """Listening sockets for "host:port", as `loop.create_server` makes them (an IPv6
    socket is IPv6-only, so "0.0.0.0" and "::" can share a port)."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM,
                               0, socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def start_listener(service: str, factory: ProtocolFactory, host: str, port: int, *,
                         tls: ssl.SSLContext | None, trusted: TrustedProxies,
                         reuse_port: bool = False, backlog: int = 1024,
                         tls_failed: TlsFailureHook | None = None,
                         ) -> asyncio.AbstractServer | ProxyListener:
    """Listen on host:port; each connection gets ``factory(client)``'s protocol, wrapped
    in TLS first when `tls` is given (implicit TLS).  With `trusted` peers, connections
    from them must start with a PROXY header (see the module docstring).  With
    `tls_failed`, a `ProxyListener` accepts (asyncio's own server gives no word of a
    failed handshake) and tells it of each failed TLS handshake."""
    if not trusted and (tls is None or tls_failed is None):
        loop = asyncio.get_running_loop()
        return await loop.create_server(
            lambda: factory(None), host, port, ssl=tls,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls is not None else None,
            reuse_port=reuse_port or None, backlog=backlog,
        )
    listener = ProxyListener(service, _bind(host, port, reuse_port=reuse_port, backlog=backlog),
                             factory, trusted=trusted, tls=tls, tls_failed=tls_failed)
    listener.start()
    return listener
