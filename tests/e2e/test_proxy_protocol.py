"""The PROXY protocol (v1 and v2) on every listener, end to end on both backend pairs.

pymail trusts 127.0.0.2 as its load balancer (``server.proxy_protocol_from``).  Clients
bound to 127.0.0.2 play HAProxy: they send a PROXY header naming a client from the
documentation ranges (192.0.2.0/24, 198.51.100.0/24: only bytes in the header, all
traffic stays on loopback), then speak the protocol, on an implicit-TLS port the header
comes before the TLS handshake.  The header's source must be the client everywhere: the
Received header, the log's ``rip=``, bans.  A trusted peer without a header is dropped
without a greeting; an untrusted peer (127.0.0.3) is served directly and its PROXY
header is not honoured.
"""

from __future__ import annotations

import base64
import imaplib
import re
import smtplib
import socket
import ssl
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
PASSWORD = "secret-pw"
LB = "127.0.0.2"  #: the trusted load balancer
STRANGER = "127.0.0.3"  #: a peer that is not trusted
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(source: str, port: int, sport: int = 40000) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {sport} {port}\r\n".encode()


def proxy_v2(source: str, port: int, sport: int = 40000, *, local: bool = False) -> bytes:
    if local:  # the proxy's own health check: no addresses
        return V2_SIGNATURE + b"\x20\x00\x00\x00"
    tlvs = b"\x02\x00\x10mail.example.com"  # PP2_TYPE_AUTHORITY, skipped by pymail
    block = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", sport, port)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(block) + len(tlvs)) + block + tlvs


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, storage_config=storage.config, imap=True, imaps=True, pop3=True,
                       pop3s=True, submission=True, submissions=True,
                       server_config=f'proxy_protocol_from = ["{LB}", "10.0.0.0/8"]')
    srv.add_user(ALICE)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def tls_context(server: PymailServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def listeners(server: PymailServer) -> list[tuple[str, int, bool]]:
    """(name, port, implicit TLS) of every mail listener."""
    ports = [("smtp", server.port, False), ("submission", server.submission_port, False),
             ("submissions", server.submissions_port, True), ("imap", server.imap_port, False),
             ("imaps", server.imaps_port, True), ("pop3", server.pop3_port, False),
             ("pop3s", server.pop3s_port, True)]
    return [(name, port, tls) for name, port, tls in ports if port is not None]


GREETING = {"smtp": b"220 ", "submission": b"220 ", "submissions": b"220 ", "imap": b"* OK",
            "imaps": b"* OK", "pop3": b"+OK", "pop3s": b"+OK"}


def open_connection(server: PymailServer, port: int, *, source: str, header: bytes = b"",
                    tls: bool = False) -> socket.socket:
    """A connection from `source` that sends `header` first, then (implicit TLS) the
    handshake."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    if header:
        sock.sendall(header)
    if tls:
        return tls_context(server).wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


def first_line(server: PymailServer, port: int, *, source: str, header: bytes = b"",
               tls: bool = False) -> bytes:
    """The greeting (b"" if the server closed without one)."""
    with open_connection(server, port, source=source, header=header, tls=tls) as sock:
        return sock.makefile("rb").readline()


def closed_without_greeting(sock: socket.socket) -> bool:
    """The server closed `sock` without sending a byte (with unread data the close may
    arrive as a reset)."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


class ProxiedSMTP(smtplib.SMTP):
    """smtplib from the load balancer, sending a PROXY header before SMTP."""

    def __init__(self, port: int, header: bytes, source: str = LB) -> None:
        self.proxy_header = header
        super().__init__("127.0.0.1", port, timeout=30, source_address=(source, 0))

    def _get_socket(self, host, port, timeout):  # noqa: ANN001, ANN202 - smtplib's signature
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.proxy_header)
        return sock


class ProxiedIMAP4_SSL(imaplib.IMAP4_SSL):
    """imaplib over implicit TLS from the load balancer: PROXY header, then TLS."""

    def __init__(self, port: int, header: bytes, ssl_context: ssl.SSLContext) -> None:
        self.proxy_header = header
        super().__init__("127.0.0.1", port, ssl_context=ssl_context, timeout=30)

    def _create_socket(self, timeout):  # noqa: ANN001, ANN202 - imaplib's signature
        sock = socket.create_connection((self.host, self.port), timeout, source_address=(LB, 0))
        sock.sendall(self.proxy_header)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def _text(exc: Exception) -> str:
    text = exc.args[0] if exc.args else b""
    return text.decode() if isinstance(text, bytes) else str(text)


def imaps_login(server: PymailServer, client_ip: str, password: str) -> str:
    """LOGIN over IMAPS through the load balancer on behalf of `client_ip`: "OK", the
    NO's text, or the BYE greeting."""
    assert server.imaps_port is not None
    try:
        client = ProxiedIMAP4_SSL(server.imaps_port, proxy_v2(client_ip, server.imaps_port),
                                  tls_context(server))
    except imaplib.IMAP4.error as exc:  # a BYE greeting
        return _text(exc)
    try:
        client.login(ALICE, password)
    except imaplib.IMAP4.error as exc:
        return _text(exc)
    finally:
        try:
            client.logout()
        except (imaplib.IMAP4.error, OSError):
            pass
    return "OK"


def test_smtp_v1_header_makes_its_source_the_client(server: PymailServer) -> None:
    with ProxiedSMTP(server.port, proxy_v1("192.0.2.10", server.port)) as client:
        client.ehlo("client.example")
        client.sendmail("sender@remote.example", [ALICE], b"Subject: via the balancer\r\n\r\nhello\r\n")
    (_uid, blob, _flags), = server.inbox(ALICE)
    received = blob.split(b"\r\n\r\n", 1)[0]
    assert b"[192.0.2.10]" in received, received
    assert LB.encode() not in received
    assert re.search(r"accepted rip=192\.0\.2\.10 helo=<client\.example>", server.log()), server.log()


def test_submission_keeps_the_proxy_client_across_starttls(server: PymailServer) -> None:
    assert server.submission_port is not None
    with ProxiedSMTP(server.submission_port, proxy_v2("192.0.2.11", server.submission_port)) as client:
        client.starttls(context=tls_context(server))
        client.ehlo("client.example")
        token = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        assert client.docmd("AUTH", f"PLAIN {token}")[0] == 235
    assert f"authenticated: service=submission rip=192.0.2.11 user=<{ALICE}>" in server.log()


def test_imaps_v2_header_comes_before_tls(server: PymailServer) -> None:
    assert "AUTHENTICATIONFAILED" in imaps_login(server, "192.0.2.10", "wrong")
    assert re.search(r"authentication failed: service=imap rip=192\.0\.2\.10 user=<alice@example\.test>",
                     server.log()), server.log()
    assert imaps_login(server, "192.0.2.12", PASSWORD) == "OK"
    # a v2 LOCAL header (the balancer's health check): the balancer is the client
    assert server.imaps_port is not None
    with ProxiedIMAP4_SSL(server.imaps_port, proxy_v2("", 0, local=True), tls_context(server)) as client:
        with pytest.raises(imaplib.IMAP4.error):
            client.login(ALICE, "wrong")
    assert f"authentication failed: service=imap rip={LB} " in server.log()


def test_every_listener_takes_v1_and_v2(server: PymailServer) -> None:
    for name, port, tls in listeners(server):
        for header in (proxy_v1("192.0.2.30", port), proxy_v2("192.0.2.30", port)):
            line = first_line(server, port, source=LB, header=header, tls=tls)
            assert line.startswith(GREETING[name]), (name, header[:6], line)


def test_trusted_peer_without_a_header_is_dropped(server: PymailServer) -> None:
    silent = open_connection(server, server.port, source=LB)  # says nothing at all
    try:
        # speaking the protocol at once: no greeting, closed
        with open_connection(server, server.port, source=LB, header=b"EHLO client.example\r\n") as sock:
            assert closed_without_greeting(sock)
        # a TLS handshake without the header first: closed before TLS is up
        assert server.imaps_port is not None
        with pytest.raises((ssl.SSLError, OSError)):
            first_line(server, server.imaps_port, source=LB, tls=True)
        # a malformed header
        assert server.pop3_port is not None
        with open_connection(server, server.pop3_port, source=LB,
                             header=b"PROXY TCP4 192.0.2.1 127.0.0.1 01 110\r\n") as sock:
            assert closed_without_greeting(sock)
        # silence: closed once the header timeout passes, still without a greeting
        assert closed_without_greeting(silent)
    finally:
        silent.close()
    log = server.log()
    assert f'proxy header refused: service=smtp peer={LB} reason="not a PROXY header"' in log
    assert f'proxy header refused: service=smtp peer={LB} reason="no PROXY header within 10s"' in log
    assert f'proxy header refused: service=pop3 peer={LB} reason="v1: invalid port"' in log
    assert f"service=imaps peer={LB}" in log
    assert "Traceback" not in log


def test_untrusted_peer_cannot_claim_another_address(server: PymailServer) -> None:
    with ProxiedSMTP(server.port, proxy_v1("192.0.2.66", server.port), source=STRANGER) as client:
        # served directly: the header was a (bad) SMTP command, after the greeting
        assert client.getreply()[0] == 500
        client.ehlo("stranger.example")
        client.sendmail("sender@remote.example", [ALICE], b"Subject: spoof\r\n\r\nhello\r\n")
    (_uid, blob, _flags), = server.inbox(ALICE)
    received = blob.split(b"\r\n\r\n", 1)[0]
    assert f"[{STRANGER}]".encode() in received and b"192.0.2.66" not in received, received
    # before TLS on an implicit-TLS port, a header from a stranger breaks the handshake
    assert server.imaps_port is not None
    with pytest.raises((ssl.SSLError, OSError)):
        first_line(server, server.imaps_port, source=STRANGER,
                   header=proxy_v2("192.0.2.66", server.imaps_port), tls=True)
    assert "192.0.2.66" not in server.log()


def test_bans_apply_to_the_proxy_source(server: PymailServer) -> None:
    attacker = "198.51.100.7"
    for _ in range(5):
        assert "AUTHENTICATIONFAILED" in imaps_login(server, attacker, "wrong")
    log = server.log()
    assert re.search(rf"ban: rip={re.escape(attacker)} failures=5 ", log), log
    assert f"ban: rip={LB}" not in log
    assert server.cli("ban", "list").stdout.startswith(f"{attacker}\tuntil=")

    # the banned client is refused on every listener, through the balancer ...
    refusal = {"smtp": b"421 4.7.0 ", "submission": b"421 4.7.0 ", "submissions": b"421 4.7.0 ",
               "imap": b"* BYE", "imaps": b"* BYE", "pop3": b"-ERR", "pop3s": b"-ERR"}
    for name, port, tls in listeners(server):
        line = first_line(server, port, source=LB, header=proxy_v1(attacker, port), tls=tls)
        assert line.startswith(refusal[name]), (name, line)
    assert imaps_login(server, attacker, PASSWORD).startswith("* BYE")
    # ... while other clients of the same balancer, and direct clients, are not
    assert imaps_login(server, "198.51.100.8", PASSWORD) == "OK"
    for name, port, tls in listeners(server):
        assert first_line(server, port, source=LB, header=proxy_v2("198.51.100.8", port),
                          tls=tls).startswith(GREETING[name]), name
        assert first_line(server, port, source="127.0.0.1", tls=tls).startswith(GREETING[name]), name
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        assert client.ehlo("direct.example")[0] == 250


@pytest.mark.parametrize(("value", "message"), [
    ('["10.0.0.300"]', "server.proxy_protocol_from: invalid address or network '10.0.0.300'"),
    ('"10.0.0.0/8"', "server.proxy_protocol_from"),
])
def test_bad_proxy_protocol_from_is_one_line(tmp_path: Path, value: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(f"[server]\nproxy_protocol_from = {value}\n")
    result = subprocess.run([sys.executable, "-m", "pymail", "--config", str(path), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_check_config_shows_the_trusted_networks(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[server]\nproxy_protocol_from = ["10.0.0.0/8", "127.0.0.2", "2001:db8::/32"]\n')
    result = subprocess.run([sys.executable, "-m", "pymail", "--config", str(path), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"10.0.0.0/8", "127.0.0.2/32", "2001:db8::/32"' in result.stdout, result.stdout
