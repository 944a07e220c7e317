"""The PROXY protocol header, versions 1 and 2 (HAProxy's proxy-protocol.txt), sans-IO.

A load balancer in TCP mode (HAProxy ``send-proxy`` / ``send-proxy-v2``) opens its
connection to pymail with one header that says who the real client is; only then the
client's own bytes follow (for an implicit-TLS port: the TLS ClientHello).  This module
parses that header and nothing else.

* `parse_proxy_header(data)` looks at the first bytes of a connection and returns
  `NEED_DATA` (the header is not complete yet; every byte seen so far belongs to it),
  or ``(ProxyHeader, length)``: the header and how many bytes of `data` it took.  The
  bytes after `length` are the client's and are never looked at.  Anything that is not
  exactly a header raises `ProxyHeaderError`, as early as the bytes show it (section
  2.1: "any sequence which does not exactly match the protocol must be discarded and
  cause the receiver to abort the connection").
* `ProxyHeaderReader` is the same as a byte-stream machine: `receive_data(bytes)`,
  `next_event()` -> `NEED_DATA` or a `ProxyHeader`; after the header, `trailing` holds
  the bytes that followed it, for the protocol behind.

Version 1 (section 2.1): one US-ASCII line ``PROXY TCP4|TCP6 src dst sport dport CRLF``
or ``PROXY UNKNOWN[ anything] CRLF``, at most 107 bytes with the CRLF; single spaces,
canonical addresses, no leading zeroes, only CRLF ends it (a lone CR or LF is an error).

Version 2 (section 2.2): the 12-byte signature, version 2 with the command LOCAL or
PROXY, the family/transport byte, a 16-bit length, then the addresses and TLVs.  TLVs
are skipped.  The length is bounded by `MAX_V2_LENGTH` (the spec allows 65535; a load
balancer's TLVs take a few hundred bytes).

What a header means for the connection (`ProxyHeader.source`):

* ``PROXY`` with TCP over IPv4/IPv6 (v1 ``TCP4``/``TCP6``, v2 ``\\x11``/``\\x21``): the
  client is `source` (address, port);
* ``LOCAL`` (v2: the proxy's own health check), v1 ``UNKNOWN``, v2 ``AF_UNSPEC`` and the
  valid combinations pymail does not serve (UDP, AF_UNIX; section 2.2 says to fall back
  to UNSPEC): `source` is None, the connection's own peer is the client.

Invariants: standard library only, no I/O; the only exception out of this module is
`ProxyHeaderError` (a fuzz test says so); a result never covers a byte past the header.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_HEADER_LENGTH",
    "MAX_V1_LENGTH",
    "MAX_V2_LENGTH",
    "NEED_DATA",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderReader",
    "parse_proxy_header",
]

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: Section 2.1: the longest v1 line, CRLF included.
MAX_V1_LENGTH = 107
#: The most address and TLV bytes pymail takes after the 16 fixed bytes of a v2 header.
MAX_V2_LENGTH = 4096
#: The longest header of either version: what a reader may have to look at.
MAX_HEADER_LENGTH = 16 + MAX_V2_LENGTH

_V2_COMMAND_LOCAL = 0x0
_V2_COMMAND_PROXY = 0x1
#: family/transport byte -> (family name, bytes of addresses and ports it needs).
_V2_TCP = {0x11: ("TCP4", 12), 0x21: ("TCP6", 36)}
#: valid combinations served as "unknown" (section 2.2: fall back to UNSPEC).
_V2_FALLBACK = {0x00: 0, 0x12: 12, 0x22: 36, 0x31: 216, 0x32: 216}


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: More bytes are needed before the header is complete (or known to be wrong).
NEED_DATA = _NeedData()


class ProxyHeaderError(Exception):
    """The bytes are not a valid PROXY header; the connection must be closed.  The
    message says why, for the log (it never goes to the client)."""


@dataclass(frozen=True)
class ProxyHeader:
    """One parsed header.

    ``version`` 1 or 2; ``command`` "PROXY" or "LOCAL" (v2 only); ``family`` "TCP4",
    "TCP6" or "UNKNOWN"; ``source``/``destination`` (address, port) of the proxied
    connection, None when the header does not give them (use the socket's endpoints)."""

    version: int
    command: str
    family: str
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def parse_proxy_header(data: bytes) -> tuple[ProxyHeader, int] | _NeedData:
    """The header at the start of `data` and its length, or `NEED_DATA`.

    Raises `ProxyHeaderError` as soon as `data` cannot be the start of a header."""
    data = bytes(data)
    if not data:
        return NEED_DATA
    if data[:1] == V1_PREFIX[:1]:
        return _parse_v1(data)
    if data[:1] == V2_SIGNATURE[:1]:
        return _parse_v2(data)
    raise ProxyHeaderError("not a PROXY header")


# -- version 1 ------------------------------------------------------------------------


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | _NeedData:
    head = data[:MAX_V1_LENGTH]
    known = min(len(head), len(V1_PREFIX))
    if head[:known] != V1_PREFIX[:known]:
        raise ProxyHeaderError("not a PROXY header")
    end = head.find(b"\n")
    if end == -1:
        if len(data) >= MAX_V1_LENGTH:
            raise ProxyHeaderError(f"v1: no CRLF within {MAX_V1_LENGTH} bytes")
        _check_v1_partial(head)
        return NEED_DATA
    if head[end - 1 : end] != b"\r":
        raise ProxyHeaderError("v1: line ends with LF, not CRLF")
    line, length = head[: end - 1], end + 1
    if b"\r" in line:
        raise ProxyHeaderError("v1: CR not followed by LF")
    family, _, rest = line[len(V1_PREFIX):].partition(b" ")
    if family == b"UNKNOWN":
        # "the receiver must ignore anything presented before the CRLF"
        return ProxyHeader(1, "PROXY", "UNKNOWN"), length
    fields = rest.split(b" ")
    if family not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("v1: unknown protocol family")
    if len(fields) != 4 or not all(f.isascii() for f in fields):
        raise ProxyHeaderError("v1: expected PROXY TCP4|TCP6 src dst sport dport")
    src, dst, sport, dport = (f.decode("ascii") for f in fields)
    if family == b"TCP4":
        source, destination = _ipv4(src), _ipv4(dst)
    else:
        source, destination = _ipv6(src), _ipv6(dst)
    return ProxyHeader(1, "PROXY", family.decode(), (source, _port(sport)),
                       (destination, _port(dport))), length


def _check_v1_partial(head: bytes) -> None:
    """Refuse an incomplete v1 line as soon as what came so far cannot be one."""
    cr = head.find(b"\r")
    if cr != -1 and cr != len(head) - 1:
        raise ProxyHeaderError("v1: CR not followed by LF")
    family, space, rest = head[len(V1_PREFIX):].rstrip(b"\r").partition(b" ")
    if space:
        if family not in (b"TCP4", b"TCP6", b"UNKNOWN"):
            raise ProxyHeaderError("v1: unknown protocol family")
    elif not any(name.startswith(family) for name in (b"TCP4", b"TCP6", b"UNKNOWN")):
        raise ProxyHeaderError("v1: unknown protocol family")
    if family != b"UNKNOWN" and not all(0x20 <= b < 0x7F for b in rest):
        raise ProxyHeaderError("v1: not a printable US-ASCII line")


def _ipv4(text: str) -> str:
    parts = text.split(".")
    if len(parts) != 4 or not all(_decimal(p, 255) is not None for p in parts):
        raise ProxyHeaderError("v1: invalid IPv4 address")
    return text


def _ipv6(text: str) -> str:
    if not text or any(c not in "0123456789abcdefABCDEF:" for c in text):
        raise ProxyHeaderError("v1: invalid IPv6 address")
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyHeaderError("v1: invalid IPv6 address") from None


def _port(text: str) -> int:
    value = _decimal(text, 65535)
    if value is None:
        raise ProxyHeaderError("v1: invalid port")
    return value


def _decimal(text: str, maximum: int) -> int | None:
    """A decimal number without leading zeroes (section 2.1), at most `maximum`."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    if len(text) > 1 and text[0] == "0":
        return None
    value = int(text)
    return value if value <= maximum else None


# -- version 2 ------------------------------------------------------------------------


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | _NeedData:
    signature = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyHeaderError("v2: bad signature")
    if len(data) < 13:
        return NEED_DATA
    version, command = data[12] >> 4, data[12] & 0x0F
    if version != 2:
        raise ProxyHeaderError(f"v2: unsupported version {version}")
    if command not in (_V2_COMMAND_LOCAL, _V2_COMMAND_PROXY):
        raise ProxyHeaderError(f"v2: unknown command {command}")
    if len(data) < 14:
        return NEED_DATA
    family_byte = data[13]
    if command == _V2_COMMAND_PROXY and family_byte not in _V2_TCP and family_byte not in _V2_FALLBACK:
        raise ProxyHeaderError(f"v2: invalid family/transport 0x{family_byte:02x}")
    if len(data) < 16:
        return NEED_DATA
    (address_length,) = struct.unpack("!H", data[14:16])
    if address_length > MAX_V2_LENGTH:
        raise ProxyHeaderError(f"v2: header longer than {16 + MAX_V2_LENGTH} bytes")
    if command == _V2_COMMAND_PROXY:
        needed = _V2_TCP[family_byte][1] if family_byte in _V2_TCP else _V2_FALLBACK[family_byte]
        if address_length < needed:
            raise ProxyHeaderError(f"v2: {address_length} address bytes, family needs {needed}")
    length = 16 + address_length
    if len(data) < length:
        return NEED_DATA
    if command == _V2_COMMAND_LOCAL:
        # The proxy's own connection (health check): the family is ignored.
        return ProxyHeader(2, "LOCAL", "UNKNOWN"), length
    if family_byte not in _V2_TCP:
        return ProxyHeader(2, "PROXY", "UNKNOWN"), length
    family = _V2_TCP[family_byte][0]
    block = data[16:length]
    if family == "TCP4":
        source = str(ipaddress.IPv4Address(block[0:4]))
        destination = str(ipaddress.IPv4Address(block[4:8]))
        sport, dport = struct.unpack("!HH", block[8:12])
    else:
        source = str(ipaddress.IPv6Address(block[0:16]))
        destination = str(ipaddress.IPv6Address(block[16:32]))
        sport, dport = struct.unpack("!HH", block[32:36])
    return ProxyHeader(2, "PROXY", family, (source, sport), (destination, dport)), length


# -- the stream machine ---------------------------------------------------------------


class ProxyHeaderReader:
    """Feed the first bytes of a connection; get the header, then the bytes after it.

    ``trailing`` is empty until the header is complete, then holds every byte received
    after it (later `receive_data` calls append to it).  After an error the reader stays
    failed: `next_event` raises the same error again."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._header: ProxyHeader | None = None
        self._error: ProxyHeaderError | None = None
        self.trailing = b""

    def receive_data(self, data: bytes) -> None:
        if self._header is not None:
            self.trailing += bytes(data)
        else:
            self._buffer += data

    def next_event(self) -> ProxyHeader | _NeedData:
        if self._error is not None:
            raise self._error
        if self._header is not None:
            return self._header
        try:
            result = parse_proxy_header(bytes(self._buffer))
        except ProxyHeaderError as error:
            self._error = error
            raise
        if isinstance(result, _NeedData):
            return result
        self._header, length = result
        self.trailing = bytes(self._buffer[length:])
        self._buffer.clear()
        return self._header
