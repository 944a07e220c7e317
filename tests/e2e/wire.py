"""Raw clients for the IMAP/POP3 hardening tests: a real socket (TLS verified against
the embedded CA, or plaintext) driven byte by byte, as an attacker or a slow client
would, plus the seeding of large messages through the storage interfaces.

`Wire.response` reads an IMAP response up to its tagged line, skipping literals
(``{n}`` and ``~{n}``) without holding them unless asked: a test can read hundreds of
megabytes of FETCH output in bounded memory of its own.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import socket
import ssl
import struct
import time
from dataclasses import dataclass, field

from pymail.mail.mime import parse_structure
from pymail.store import Delivery, DeliveryTarget
from tests.pymail_harness import PymailServer

_LITERAL_AT_END = re.compile(rb"~?\{([0-9]+)\}\r\n\Z")


def tls_context(server: PymailServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def old_tls_context() -> ssl.SSLContext:
    """A client that offers only TLS 1.0/1.1 (which pymail refuses)."""
    import warnings

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("ALL:@SECLEVEL=0")
    return context


@dataclass
class Response:
    lines: list[bytes] = field(default_factory=list)  #: text lines, literals left out
    literal_sizes: list[int] = field(default_factory=list)
    literals: list[bytes] = field(default_factory=list)  #: kept when asked

    @property
    def tagged(self) -> bytes:
        return self.lines[-1].split(b" ", 1)[1] if self.lines else b""


class Wire:
    """One client connection over a real socket."""

    def __init__(self, port: int, *, context: ssl.SSLContext | None = None, timeout: float = 30.0) -> None:
        self.sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if context is not None:
            self.sock = context.wrap_socket(self.sock, server_hostname="127.0.0.1")
        self.buffer = bytearray()

    # -- plain I/O --
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(256 * 1024)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def readline(self) -> bytes:
        """One line with its CRLF; b"" at the end of the stream."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end + 1])
                del self.buffer[:end + 1]
                return line
            if not self._fill():
                line, self.buffer = bytes(self.buffer), bytearray()
                return line

    def read_exactly(self, size: int, *, keep: bool) -> bytes:
        kept = bytearray()
        while size > 0:
            if not self.buffer and not self._fill():
                raise EOFError("connection closed inside a literal")
            take = min(size, len(self.buffer))
            if keep:
                kept += self.buffer[:take]
            del self.buffer[:take]
            size -= take
        return bytes(kept)

    def closed_by_server(self, within: float) -> bytes:
        """What the server still sent, once it closed the connection (within
        `within` seconds; AssertionError if it did not)."""
        self.sock.settimeout(within)
        got = bytes(self.buffer)
        self.buffer = bytearray()
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return got
                got += chunk
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return got
        except TimeoutError:
            pass
        raise AssertionError(f"the server kept the connection open for {within}s; got {got[-200:]!r}")

    def reset(self) -> None:
        """Hang up with a TCP RST (what a killed client or a lost network does)."""
        raw = self.sock
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()

    def close(self) -> None:
        self.sock.close()

    # -- IMAP --
    def command(self, tag: str, text: str | bytes, *, keep_literals: bool = False) -> Response:
        data = text if isinstance(text, bytes) else text.encode()
        self.send(tag.encode() + b" " + data + b"\r\n")
        return self.response(tag, keep_literals=keep_literals)

    def response(self, tag: str, *, keep_literals: bool = False) -> Response:
        """Lines up to the tagged one; literals skipped (their sizes kept)."""
        out = Response()
        prefix = tag.encode() + b" "
        current = b""
        while True:
            line = self.readline()
            if not line:
                raise EOFError(f"connection closed before {tag}'s response: {out.lines[-3:]!r}")
            marker = _LITERAL_AT_END.search(line)
            if marker is not None:
                size = int(marker.group(1))
                out.literal_sizes.append(size)
                data = self.read_exactly(size, keep=keep_literals)
                if keep_literals:
                    out.literals.append(data)
                current += line
                continue
            current += line
            out.lines.append(current.rstrip(b"\r\n"))
            if current.startswith(prefix):
                return out
            current = b""


def login(wire: Wire, user: str, password: str = "secret-pw") -> None:
    greeting = wire.readline()
    assert greeting.startswith(b"* OK"), greeting
    answer = wire.command("L1", f"LOGIN {user} {password}")
    assert answer.tagged.startswith(b"OK"), answer.lines


def seed_message(server: PymailServer, address: str, raw: bytes, mailbox: str = "INBOX") -> None:
    """Store `raw` in the user's mailbox through the BlobStore/Index interfaces (what
    delivery does), faster than SMTP for tens of megabytes."""

    async def store_it() -> None:
        store = server.store()
        try:
            user = await store.directory.get_user(address)
            assert user is not None
            key = await store.blobs.put(raw)
            await store.index.deliver(Delivery(
                blob_key=key, size=len(raw), internal_date=dt.datetime.now(dt.timezone.utc),
                structure=parse_structure(raw).to_json(),
                targets=(DeliveryTarget(user.id, mailbox, frozenset()),),
            ))
        finally:
            await store.close()

    asyncio.run(store_it())


def create_mailboxes(server: PymailServer, address: str, names: list[str]) -> None:
    """Mailboxes made through the Index interface, bypassing IMAP's limits: what a user
    may hold from before the limits existed."""

    async def create() -> None:
        store = server.store()
        try:
            user = await store.directory.get_user(address)
            assert user is not None
            for name in names:
                await store.index.create_mailbox(user.id, name)
        finally:
            await store.close()

    asyncio.run(create())


def mailbox_names(server: PymailServer, address: str) -> list[str]:
    async def names() -> list[str]:
        store = server.store()
        try:
            user = await store.directory.get_user(address)
            assert user is not None
            return sorted(b.name for b in await store.index.list_mailboxes(user.id))
        finally:
            await store.close()

    return asyncio.run(names())


def big_message(size: int, *, base64_body: bool = False) -> bytes:
    """A message of about `size` octets: lines of text, or one base64 body part."""
    import base64 as b64

    header = (b"From: Carol <carol@remote.example>\r\nTo: alice@example.test\r\n"
              b"Subject: big\r\nMessage-ID: <big@remote.example>\r\nMIME-Version: 1.0\r\n")
    if base64_body:
        payload = bytes(range(256)) * (size * 3 // 4 // 256 + 1)
        header += b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        return header + b"\r\n" + b64.encodebytes(payload).replace(b"\n", b"\r\n")
    line = b"0123456789abcdef" * 4 + b"\r\n"
    return header + b"\r\n" + line * (size // len(line) + 1)
