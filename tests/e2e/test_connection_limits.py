"""Per-address connection limits (``limits.connections_per_ip``), end to end on both
backend pairs: with a limit of 3, three idle connections from 127.0.0.4 (over different
protocols: the count is shared) hold, a fourth on any listener is refused with the
protocol's own words and closed, another address (127.0.0.5) still gets in, and closing
one connection frees a slot.  Behind a trusted load balancer the PROXY header's source
is what is counted.  Also: the config refuses a negative limit and an SMTP timeout under
RFC 5321's five minutes; and ``limits.connection_rate_per_ip`` refuses the connection
past the limit in a minute over real SMTP (and IMAPS) connections.
"""

from __future__ import annotations

import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer

LIMIT = 3
HOG = "127.0.0.4"
OTHER = "127.0.0.5"
LB = "127.0.0.2"

GREETING = {"smtp": b"220 ", "submission": b"220 ", "submissions": b"220 ", "imap": b"* OK",
            "imaps": b"* OK", "pop3": b"+OK", "pop3s": b"+OK"}
REFUSAL = {
    "smtp": b"421 4.7.0 Too many connections from your address\r\n",
    "submission": b"421 4.7.0 Too many connections from your address\r\n",
    "submissions": b"421 4.7.0 Too many connections from your address\r\n",
    "imap": b"* BYE Too many connections from your address\r\n",
    "imaps": b"* BYE Too many connections from your address\r\n",
    "pop3": b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
    "pop3s": b"-ERR [SYS/TEMP] Too many connections from your address\r\n",
}


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, storage_config=storage.config, imap=True, imaps=True, pop3=True,
                       pop3s=True, submission=True, submissions=True,
                       server_config=f'proxy_protocol_from = ["{LB}"]',
                       extra_config=f"[limits]\nconnections_per_ip = {LIMIT}\n")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def listeners(server: PymailServer) -> list[tuple[str, int, bool]]:
    """(name, port, implicit TLS) of every mail listener."""
    ports = [("smtp", server.port, False), ("submission", server.submission_port, False),
             ("submissions", server.submissions_port, True), ("imap", server.imap_port, False),
             ("imaps", server.imaps_port, True), ("pop3", server.pop3_port, False),
             ("pop3s", server.pop3s_port, True)]
    return [(name, port, tls) for name, port, tls in ports if port is not None]


class Client:
    """One connection from `source` that has read its first line (the greeting or the
    refusal) and stays open until `close`."""

    def __init__(self, server: PymailServer, name: str, port: int, tls: bool, *, source: str,
                 header: bytes = b"") -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        if header:
            sock.sendall(header)
        if tls:
            context = ssl.create_default_context(cafile=str(server.ca_file))
            sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
        self.name = name
        self.sock = sock
        self.reader = sock.makefile("rb")
        self.first_line = self.reader.readline()

    @property
    def greeted(self) -> bool:
        return self.first_line.startswith(GREETING[self.name])

    def closed_by_server(self) -> bool:
        """Whether the server closed the connection after its first line."""
        try:
            return self.reader.read() == b""
        except (ConnectionResetError, ssl.SSLError):
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def connect(server: PymailServer, name: str, *, source: str, header: bytes = b"") -> Client:
    port, tls = next((p, t) for n, p, t in listeners(server) if n == name)
    return Client(server, name, port, tls, source=source, header=header)


def wait_until_greeted(server: PymailServer, name: str, source: str, timeout: float = 30) -> Client:
    """Poll until a connection from `source` is greeted (a slot was freed); the client."""
    deadline = time.monotonic() + timeout
    while True:
        client = connect(server, name, source=source)
        if client.greeted:
            return client
        client.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: still refused: {client.first_line!r}\n{server.log()}")
        time.sleep(0.1)


def test_fourth_connection_from_one_address_is_refused_on_every_listener(server: PymailServer) -> None:
    held = [connect(server, name, source=HOG) for name in ("smtp", "imaps", "pop3")]
    try:
        assert all(c.greeted for c in held), [c.first_line for c in held]

        for name, _port, _tls in listeners(server):
            refused = connect(server, name, source=HOG)
            try:
                assert refused.first_line == REFUSAL[name], (name, refused.first_line)
                assert refused.closed_by_server(), name
            finally:
                refused.close()
        log = server.log()
        refusals = re.findall(rf"connection refused rip={re.escape(HOG)} reason=too_many_connections", log)
        assert len(refusals) == len(listeners(server)), log

        # another address is not affected, on any listener
        for name, _port, _tls in listeners(server):
            other = connect(server, name, source=OTHER)
            try:
                assert other.greeted, (name, other.first_line)
            finally:
                other.close()

        # closing one frees a slot (once the server has seen the close) ...
        held.pop(0).close()
        held.append(wait_until_greeted(server, "imap", HOG))
        # ... which the new connection now holds
        again = connect(server, "submissions", source=HOG)
        try:
            assert again.first_line == REFUSAL["submissions"]
        finally:
            again.close()
    finally:
        for client in held:
            client.close()
    # all closed: the address gets its full allowance back
    first = wait_until_greeted(server, "pop3s", HOG)
    rest = [connect(server, "smtp", source=HOG) for _ in range(LIMIT - 1)]
    try:
        assert all(c.greeted for c in rest), [c.first_line for c in rest]
    finally:
        for client in [first, *rest]:
            client.close()


def test_the_proxy_source_is_counted_not_the_balancer(server: PymailServer) -> None:
    def via_lb(client_ip: str, name: str = "smtp") -> Client:
        port = next(p for n, p, _ in listeners(server) if n == name)
        return connect(server, name, source=LB,
                       header=f"PROXY TCP4 {client_ip} 127.0.0.1 40000 {port}\r\n".encode())

    held = [via_lb("192.0.2.20", name) for name in ("smtp", "imaps", "pop3s")]
    try:
        assert all(c.greeted for c in held), [c.first_line for c in held]
        refused = via_lb("192.0.2.20", "imap")
        assert refused.first_line == REFUSAL["imap"]
        refused.close()
        assert "connection refused rip=192.0.2.20 reason=too_many_connections" in server.log()
        # the balancer carries other clients, more than the limit of them
        others = [via_lb(f"192.0.2.{21 + i}") for i in range(LIMIT + 1)]
        try:
            assert all(c.greeted for c in others), [c.first_line for c in others]
        finally:
            for client in others:
                client.close()
    finally:
        for client in held:
            client.close()


@pytest.mark.parametrize(("toml", "message"), [
    ("[limits]\nconnections_per_ip = -1\n", "limits.connections_per_ip: Input should be greater than or equal to 0"),
    ('[limits]\nconnections_per_ip = "many"\n', "limits.connections_per_ip"),
    ("[limits]\nsmtp_timeout = 60\n", "limits.smtp_timeout: Input should be greater than or equal to 300"),
])
def test_bad_limits_are_one_line(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    result = subprocess.run([sys.executable, "-m", "pymail", "--config", str(path), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_default_limit_is_50_and_zero_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "ok.toml"
    path.write_text("")
    result = subprocess.run([sys.executable, "-m", "pymail", "--config", str(path), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "connections_per_ip = 50" in result.stdout, result
    assert "smtp_timeout = 300.0" in result.stdout
    path.write_text("[limits]\nconnections_per_ip = 0\n")
    result = subprocess.run([sys.executable, "-m", "pymail", "--config", str(path), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "connections_per_ip = 0" in result.stdout, result


# -- connections per minute (limits.connection_rate_per_ip) -------------------------------

RATE = 5
HAMMER = "127.0.0.6"


def test_connection_rate_refuses_the_sixth_smtp_connection_in_a_minute(tmp_path: Path) -> None:
    """Five SMTP connections from one address in a minute are served (each closed before
    the next: the rate counts openings, not what is held); the sixth, and one to IMAPS
    (the count is shared by every listener), get the refusal; another address does not."""
    srv = PymailServer(tmp_path, imaps=True,
                       extra_config=f"[limits]\nconnections_per_ip = 0\nconnection_rate_per_ip = {RATE}\n")
    srv.start()
    try:
        for n in range(RATE):
            client = connect(srv, "smtp", source=HAMMER)
            try:
                assert client.greeted, (n, client.first_line)
                client.sock.sendall(b"QUIT\r\n")
            finally:
                client.close()
        for name in ("smtp", "imaps"):
            refused = connect(srv, name, source=HAMMER)
            try:
                assert refused.first_line == REFUSAL[name], (name, refused.first_line)
                assert refused.closed_by_server(), name
            finally:
                refused.close()
        other = connect(srv, "smtp", source=OTHER)
        try:
            assert other.greeted, other.first_line
        finally:
            other.close()
        log = srv.log()
        # logged by today's call sites with their concurrency wording (see limits.Refused)
        assert len(re.findall(rf"connection refused rip={re.escape(HAMMER)} reason=", log)) == 2, log
    finally:
        srv.stop()
    result = srv.cli("check-config")
    assert f"connection_rate_per_ip = {RATE}" in result.stdout
