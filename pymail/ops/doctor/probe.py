"""A small client for the doctor's probes: connect to one of our listeners as a remote
client would, read its greeting, upgrade to TLS (implicit, STARTTLS or STLS), and speak
a few lines of SMTP, IMAP, POP3 or HTTP.

Why not smtplib/imaplib/poplib: they take the TLS server name from the address they
connect to, and the doctor connects to 127.0.0.1 (or the listener's own address) while it
verifies the certificate for the configured host name.  Here the two are separate.

Invariants: every read and write is bounded by `timeout`; a reply line is at most
`MAX_LINE` octets; nothing here raises anything but `ProbeError` (with a sentence for
the checklist) or `ssl.SSLError`/`ssl.SSLCertVerificationError` from a handshake.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl

__all__ = ["Conversation", "ProbeError", "connect", "probe_address"]

MAX_LINE = 8192
TIMEOUT = 10.0


class ProbeError(Exception):
    """The listener did not answer as the protocol says (the message says how)."""


def probe_address(host: str) -> str:
    """Where to connect for a listener bound to `host`: the loopback of the same family
    for a wildcard (0.0.0.0, ::), else the address itself."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if address.is_unspecified:
        return "127.0.0.1" if address.version == 4 else "::1"
    return str(address)


class Conversation:
    """One connection: line reads, writes, and the in-band TLS upgrade."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout = timeout

    async def line(self) -> str:
        try:
            data = await asyncio.wait_for(self.reader.readuntil(b"\n"), self.timeout)
        except asyncio.IncompleteReadError as e:
            raise ProbeError("the server closed the connection"
                             + (f" after {e.partial[:80]!r}" if e.partial else "")) from None
        except asyncio.LimitOverrunError:
            raise ProbeError(f"a reply line longer than {MAX_LINE} octets") from None
        except TimeoutError:
            raise ProbeError(f"no answer within {self.timeout:g}s") from None
        except (OSError, ssl.SSLError) as e:
            raise ProbeError(f"connection failed: {e}") from None
        return data.decode("utf-8", "replace").rstrip("\r\n")

    async def send(self, text: str) -> None:
        try:
            self.writer.write(text.encode("utf-8") + b"\r\n")
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except TimeoutError:
            raise ProbeError(f"could not send within {self.timeout:g}s") from None
        except (OSError, ssl.SSLError) as e:
            raise ProbeError(f"connection failed: {e}") from None

    async def smtp_reply(self) -> tuple[int, list[str]]:
        """An SMTP reply (RFC 5321 section 4.2): (code, text lines)."""
        lines = []
        while True:
            line = await self.line()
            if len(line) < 3 or not line[:3].isdigit() or line[3:4] not in ("", " ", "-"):
                raise ProbeError(f"not an SMTP reply: {line[:80]!r}")
            lines.append(line[4:])
            if line[3:4] != "-":
                return int(line[:3]), lines
            if len(lines) > 100:
                raise ProbeError("an SMTP reply of more than 100 lines")

    async def smtp(self, command: str) -> tuple[int, list[str]]:
        await self.send(command)
        return await self.smtp_reply()

    async def imap(self, tag: str, command: str) -> tuple[str, list[str]]:
        """Send ``tag command``; (tagged status line, untagged lines before it)."""
        await self.send(f"{tag} {command}")
        untagged = []
        while True:
            line = await self.line()
            if line.startswith(tag + " "):
                return line[len(tag) + 1:], untagged
            untagged.append(line)
            if len(untagged) > 1000:
                raise ProbeError("more than 1000 untagged lines")

    async def start_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        """Upgrade in band (after STARTTLS/STLS was accepted)."""
        try:
            await self.writer.start_tls(context, server_hostname=server_hostname,
                                        ssl_handshake_timeout=self.timeout)
        except TimeoutError:
            raise ProbeError(f"no TLS handshake within {self.timeout:g}s") from None
        except ssl.SSLError:
            raise
        except OSError as e:
            raise ProbeError(f"the TLS handshake failed: {e.strerror or type(e).__name__}") from None

    def tls(self) -> ssl.SSLObject | None:
        return self.writer.get_extra_info("ssl_object")

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (OSError, ssl.SSLError, TimeoutError):
            pass


async def connect(host: str, port: int, *, context: ssl.SSLContext | None = None,
                  server_hostname: str | None = None, source: str | None = None,
                  timeout: float = TIMEOUT) -> Conversation:
    """Open a connection (TLS from the first byte when `context` is given); `source`: the
    local address to connect from."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            host, port, ssl=context, server_hostname=server_hostname if context else None,
            local_addr=(source, 0) if source else None, limit=MAX_LINE,
            ssl_handshake_timeout=timeout if context else None), timeout)
    except TimeoutError:
        raise ProbeError(f"no connection within {timeout:g}s") from None
    except ssl.SSLError:
        raise
    except OSError as e:
        if context is not None and isinstance(e, ConnectionResetError):
            raise ProbeError("the TLS handshake failed: the connection was reset") from None
        raise ProbeError(f"cannot connect: {e.strerror or e}") from None
    return Conversation(reader, writer, timeout)
