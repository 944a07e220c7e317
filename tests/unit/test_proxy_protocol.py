"""The PROXY protocol header parser (`pymail.proto.proxy`), byte by byte.

Every valid header is fed whole, byte by byte, and with the client's bytes behind it:
the result is the same, it never covers a byte past the header, and every proper prefix
is NEED_DATA.  Every malformed header raises `ProxyHeaderError` (whole and byte by
byte), never another exception, and a hypothesis fuzz test says so for any bytes.  The
socket glue (`pymail.net.proxy.read_proxy_header`) is checked over a real socket pair:
it takes the header's bytes and leaves the client's in the socket.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymail.net.proxy import TrustedProxies, read_proxy_header
from pymail.proto.proxy import (
    MAX_V1_LENGTH,
    MAX_V2_LENGTH,
    NEED_DATA,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
    parse_proxy_header,
)

CLIENT_BYTES = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03EHLO x\r\n\r\n"


def v2(command: int, family: int, block: bytes, *, version: int = 2) -> bytes:
    return V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(block)) + block


def v2_inet(source: str, sport: int, destination: str, dport: int, tlvs: bytes = b"") -> bytes:
    block = socket.inet_aton(source) + socket.inet_aton(destination) + struct.pack("!HH", sport, dport)
    return v2(1, 0x11, block + tlvs)


def v2_inet6(source: str, sport: int, destination: str, dport: int, tlvs: bytes = b"") -> bytes:
    block = (socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(socket.AF_INET6, destination)
             + struct.pack("!HH", sport, dport))
    return v2(1, 0x21, block + tlvs)


# A TLV as HAProxy sends them: PP2_TYPE_ALPN "h2", PP2_TYPE_AUTHORITY, PP2_TYPE_UNIQUE_ID.
TLVS = b"\x01\x00\x02h2" + b"\x02\x00\x10mail.example.com" + b"\x05\x00\x04abcd"

VALID = [
    (b"PROXY TCP4 192.0.2.10 127.0.0.1 56324 25\r\n",
     ProxyHeader(1, "PROXY", "TCP4", ("192.0.2.10", 56324), ("127.0.0.1", 25))),
    (b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
     ProxyHeader(1, "PROXY", "TCP4", ("255.255.255.255", 65535), ("255.255.255.255", 65535))),
    (b"PROXY TCP4 0.0.0.0 10.0.0.1 0 993\r\n",
     ProxyHeader(1, "PROXY", "TCP4", ("0.0.0.0", 0), ("10.0.0.1", 993))),
    (b"PROXY TCP6 2001:DB8::10 2001:db8:0:0:0:0:0:1 1025 587\r\n",
     ProxyHeader(1, "PROXY", "TCP6", ("2001:db8::10", 1025), ("2001:db8::1", 587))),
    (b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
     ProxyHeader(1, "PROXY", "TCP6", ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
                 ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, "PROXY", "UNKNOWN")),
    # the worst case of section 2.1: 107 bytes
    (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
     ProxyHeader(1, "PROXY", "UNKNOWN")),
    (v2_inet("192.0.2.10", 40000, "127.0.0.1", 993),
     ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.10", 40000), ("127.0.0.1", 993))),
    (v2_inet("198.51.100.7", 1, "10.1.2.3", 143, TLVS),
     ProxyHeader(2, "PROXY", "TCP4", ("198.51.100.7", 1), ("10.1.2.3", 143))),
    (v2_inet6("2001:db8::7", 65535, "::1", 465, TLVS),
     ProxyHeader(2, "PROXY", "TCP6", ("2001:db8::7", 65535), ("::1", 465))),
    # LOCAL: the proxy's health check; the family is ignored, address bytes skipped
    (v2(0, 0x00, b""), ProxyHeader(2, "LOCAL", "UNKNOWN")),
    (v2(0, 0x11, bytes(12)), ProxyHeader(2, "LOCAL", "UNKNOWN")),
    (v2(0, 0xFF, b"junk"), ProxyHeader(2, "LOCAL", "UNKNOWN")),
    # PROXY with AF_UNSPEC, UDP, AF_UNIX: valid, served as "use the socket's peer"
    (v2(1, 0x00, b""), ProxyHeader(2, "PROXY", "UNKNOWN")),
    (v2(1, 0x12, bytes(12)), ProxyHeader(2, "PROXY", "UNKNOWN")),
    (v2(1, 0x22, bytes(36)), ProxyHeader(2, "PROXY", "UNKNOWN")),
    (v2(1, 0x31, bytes(216)), ProxyHeader(2, "PROXY", "UNKNOWN")),
    (v2(1, 0x32, bytes(216) + TLVS), ProxyHeader(2, "PROXY", "UNKNOWN")),
    # the longest v2 header accepted
    (v2_inet("192.0.2.1", 2, "192.0.2.2", 3, bytes(MAX_V2_LENGTH - 12)),
     ProxyHeader(2, "PROXY", "TCP4", ("192.0.2.1", 2), ("192.0.2.2", 3))),
]

MALFORMED = [
    b"EHLO client.example\r\n",                      # no header at all
    b"\x16\x03\x01\x00\xa5\x01\x00\x00",             # a TLS ClientHello
    b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",           # case matters
    b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",          # two spaces
    b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
    b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",            # LF without CR
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r",            # CR then something else
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX\n",
    b"PROXY TCP4 1.2.3.4\r 5.6.7.8 1 2\r\n",
    b"PROXY UNKNOWN\n",
    b"PROXY TCP4 256.2.3.4 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",          # leading zero (octal confusion)
    b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n",
    b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",               # family mismatch
    b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
    b"PROXY TCP6 ::1%eth0 ::1 1 2\r\n",
    b"PROXY TCP6 1::2::3 ::1 1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n",
    b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # a non-ASCII digit
    b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\x00\r\n",
    b"PROXY " + b"UNKNOWN " + b"x" * 120 + b"\r\n",  # no CRLF within 107 bytes
    b"PROXY TCP4 " + b"1" * 200,
    V2_SIGNATURE[:11] + b"X" + bytes(4),             # bad signature
    v2(1, 0x11, bytes(12), version=1),               # version 1 in a v2 header
    v2(1, 0x11, bytes(12), version=3),
    v2(2, 0x11, bytes(12)),                          # unknown command
    v2(0xF, 0x00, b""),
    v2(1, 0x13, bytes(12)),                          # unknown transport
    v2(1, 0x41, bytes(12)),                          # unknown family
    v2(1, 0x10, bytes(12)),                          # INET with UNSPEC transport
    v2(1, 0x01, b""),
    v2(1, 0x11, bytes(11)),                          # too short for its family
    v2(1, 0x21, bytes(12)),
    v2(1, 0x31, bytes(108)),
    V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH + 1),   # too long
    V2_SIGNATURE + b"\x21\x11\xff\xff",
]


def feed_bytewise(data: bytes) -> tuple[ProxyHeader, bytes] | None:
    """Feed one byte at a time; (header, trailing) or None if it never completed."""
    reader = ProxyHeaderReader()
    for i in range(len(data)):
        reader.receive_data(data[i : i + 1])
        event = reader.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, ProxyHeader)
            return event, reader.trailing
    return None


@pytest.mark.parametrize(("data", "expected"), VALID, ids=[repr(v[0][:24]) for v in VALID])
def test_valid_header_whole_bytewise_and_with_trailing_data(data: bytes, expected: ProxyHeader) -> None:
    assert parse_proxy_header(data) == (expected, len(data))
    assert parse_proxy_header(data + CLIENT_BYTES) == (expected, len(data))
    for cut in range(len(data)):  # every proper prefix: all of it belongs to the header
        assert parse_proxy_header(data[:cut]) is NEED_DATA, cut
    assert feed_bytewise(data) == (expected, b"")
    result = feed_bytewise(data + CLIENT_BYTES)
    assert result is not None and result[0] == expected
    reader = ProxyHeaderReader()
    reader.receive_data(data + CLIENT_BYTES[:5])
    assert reader.next_event() == expected
    reader.receive_data(CLIENT_BYTES[5:])
    assert reader.trailing == CLIENT_BYTES  # nothing of the client's bytes is lost


@pytest.mark.parametrize("data", MALFORMED, ids=[repr(m[:40]) for m in MALFORMED])
def test_malformed_header_is_an_error_whole_and_bytewise(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(data + CLIENT_BYTES)
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyHeaderError):
        for i in range(len(data)):
            reader.receive_data(data[i : i + 1])
            reader.next_event()
        reader.receive_data(CLIENT_BYTES)
        reader.next_event()
    with pytest.raises(ProxyHeaderError):  # and it stays failed
        reader.next_event()


def test_errors_come_as_early_as_the_bytes_show_them() -> None:
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"E")  # SMTP, not a header: no need to wait for more
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"\x16")  # a ClientHello
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"PROXY TCP9")
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(b"PROXY TCP4 1.2.3.4\r ")
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_LENGTH + 1))
    assert parse_proxy_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r") is NEED_DATA
    line = b"PROXY UNKNOWN " + b"x" * (MAX_V1_LENGTH - 15)
    assert len(line) == MAX_V1_LENGTH - 1 and parse_proxy_header(line) is NEED_DATA
    with pytest.raises(ProxyHeaderError):
        parse_proxy_header(line + b"x")
    assert parse_proxy_header(b"") is NEED_DATA


# -- fuzz -----------------------------------------------------------------------------

_SEEDS = [v for v, _ in VALID] + MALFORMED


@st.composite
def header_like(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real header (valid or not) with bytes changed, cut or added."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=300))
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    data = data[: draw(st.integers(0, len(data)))] if draw(st.booleans()) else data
    return bytes(data) + draw(st.binary(max_size=40))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(header_like())
def test_fuzz_only_need_data_a_header_or_proxy_header_error(data: bytes) -> None:
    try:
        result = parse_proxy_header(data)
    except ProxyHeaderError:
        result = "error"
    if result not in ("error", NEED_DATA):
        header, length = result  # type: ignore[misc]
        assert isinstance(header, ProxyHeader) and 0 < length <= len(data)
        assert parse_proxy_header(data[:length]) == (header, length)
        assert parse_proxy_header(data[: length - 1]) is NEED_DATA
        if header.source is not None:
            assert header.family in ("TCP4", "TCP6")
    # byte by byte gives the same outcome (an error may only come earlier: never later)
    reader = ProxyHeaderReader()
    bytewise: object = NEED_DATA
    try:
        for i in range(len(data)):
            reader.receive_data(data[i : i + 1])
            bytewise = reader.next_event()
            if bytewise is not NEED_DATA:
                reader.receive_data(data[i + 1 :])
                break
    except ProxyHeaderError:
        bytewise = "error"
    if result == "error" or bytewise == "error":
        assert result == bytewise == "error", (result, bytewise)
    elif result is NEED_DATA:
        assert bytewise is NEED_DATA
    else:
        assert bytewise == result[0]  # type: ignore[index]
        assert reader.trailing == data[result[1] :]  # type: ignore[index]


_ports = st.integers(0, 65535)


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=4), _ports, st.ip_addresses(v=4), _ports)
def test_round_trip_ipv4_v1_and_v2(src, sport, dst, dport) -> None:  # noqa: ANN001
    expected_v1 = ProxyHeader(1, "PROXY", "TCP4", (str(src), sport), (str(dst), dport))
    line = f"PROXY TCP4 {src} {dst} {sport} {dport}\r\n".encode()
    assert parse_proxy_header(line + CLIENT_BYTES) == (expected_v1, len(line))
    binary = v2_inet(str(src), sport, str(dst), dport)
    expected_v2 = ProxyHeader(2, "PROXY", "TCP4", (str(src), sport), (str(dst), dport))
    assert parse_proxy_header(binary + CLIENT_BYTES) == (expected_v2, len(binary))


@settings(max_examples=300, deadline=None)
@given(st.ip_addresses(v=6), _ports, st.ip_addresses(v=6), _ports)
def test_round_trip_ipv6_v1_and_v2(src, sport, dst, dport) -> None:  # noqa: ANN001
    if src.ipv4_mapped or dst.ipv4_mapped:  # written with a dotted quad: not v1's format
        return
    line = f"PROXY TCP6 {src.exploded} {dst} {sport} {dport}\r\n".encode()
    expected = ProxyHeader(1, "PROXY", "TCP6", (str(src), sport), (str(dst), dport))
    assert parse_proxy_header(line) == (expected, len(line))
    binary = v2_inet6(str(src), sport, str(dst), dport)
    assert parse_proxy_header(binary)[0].source == (str(src), sport)  # type: ignore[index]


# -- the socket glue --------------------------------------------------------------------


@pytest.mark.parametrize("header", [VALID[0][0], VALID[8][0]], ids=["v1", "v2"])
@pytest.mark.parametrize("split", [None, 3, 17])
def test_read_proxy_header_takes_only_the_header_from_the_socket(header: bytes, split: int | None) -> None:
    """Over a real socket pair: the header's bytes are consumed, the client's bytes
    behind it (sent in the same segment, or after a pause) stay for the protocol."""

    async def run() -> tuple[ProxyHeader, bytes]:
        server, client = socket.socketpair()
        with server, client:
            server.setblocking(False)
            if split is None:
                client.sendall(header + CLIENT_BYTES)
            else:
                client.sendall(header[:split])
            reading = asyncio.ensure_future(read_proxy_header(server))
            if split is not None:
                await asyncio.sleep(0.05)
                assert not reading.done()
                client.sendall(header[split:] + CLIENT_BYTES)
            parsed = await asyncio.wait_for(reading, 10)
            client.shutdown(socket.SHUT_WR)
            rest = b""
            server.setblocking(True)
            while chunk := server.recv(4096):
                rest += chunk
            return parsed, rest

    parsed, rest = asyncio.run(run())
    assert parsed == parse_proxy_header(header)[0]  # type: ignore[index]
    assert rest == CLIENT_BYTES


def test_read_proxy_header_refuses_garbage_and_early_close() -> None:
    async def run(data: bytes) -> str:
        server, client = socket.socketpair()
        with server, client:
            server.setblocking(False)
            client.sendall(data)
            client.shutdown(socket.SHUT_WR)
            try:
                await asyncio.wait_for(read_proxy_header(server), 10)
            except ProxyHeaderError as error:
                return str(error)
            return "accepted"

    assert asyncio.run(run(b"EHLO x\r\n")) == "not a PROXY header"
    assert "closed" in asyncio.run(run(b"PROXY TCP4 1.2.3.4"))
    assert "closed" in asyncio.run(run(b""))


def test_trusted_proxies_match_addresses_and_networks() -> None:
    trusted = TrustedProxies(["10.0.0.0/8", "127.0.0.2", "2001:db8::/32"])
    assert "10.20.30.40" in trusted and "127.0.0.2" in trusted and "2001:db8::5" in trusted
    assert "::ffff:10.1.1.1" in trusted  # an IPv4 peer on a dual-stack socket
    assert "127.0.0.1" not in trusted and "11.0.0.1" not in trusted and "2001:db9::1" not in trusted
    assert "not-an-ip" not in trusted
    assert not TrustedProxies([]) and trusted
