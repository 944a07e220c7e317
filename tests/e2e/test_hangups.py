"""Clients that hang up mid-reply are one INFO line, never an ERROR with a traceback nor a
flood of warnings (issue 14 item 7: seen under imaptest for FETCH, LOGOUT and CAPABILITY).

Each scenario is the client's worst timing: the command is sent and the socket closed at
once, with a TCP RST (SO_LINGER 0: the server's writes meet ECONNRESET/EPIPE) or with a
plain close (a FIN without TLS close_notify: the TLS layer then drops every write, and
before the fix a FETCH of 8 MB logged asyncio's "SSL connection is closed" hundreds of
times on a STARTTLS connection), over implicit TLS and over STARTTLS.  Repeated, since
which write fails first depends on the scheduling.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests.e2e.wire import Wire, big_message, login, seed_message, tls_context
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
ROUNDS = int(os.environ.get("PYMAIL_HANGUP_ROUNDS", "5"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path_factory.mktemp("hangups"), imaps=True, imap=True, pop3s=True, pop3=True)
    srv.add_user(ALICE)
    for _ in range(4):
        seed_message(srv, ALICE, big_message(2 * 1000 * 1000))
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def connect(server: PymailServer, protocol: str, tls: str) -> Wire:
    """A greeted connection, encrypted from the first byte ("implicit") or after
    STARTTLS/STLS ("starttls")."""
    port = {("imap", "implicit"): server.imaps_port, ("imap", "starttls"): server.imap_port,
            ("pop3", "implicit"): server.pop3s_port, ("pop3", "starttls"): server.pop3_port}[protocol, tls]
    assert port is not None
    wire = Wire(port, context=tls_context(server) if tls == "implicit" else None)
    if tls == "starttls":
        assert wire.readline().startswith(b"* OK" if protocol == "imap" else b"+OK")
        if protocol == "imap":
            assert wire.command("t", "STARTTLS").tagged.startswith(b"OK")
        else:
            wire.send(b"STLS\r\n")
            assert wire.readline().startswith(b"+OK")
        wire.sock = tls_context(server).wrap_socket(wire.sock, server_hostname="127.0.0.1")
        wire.buffer.clear()
    return wire


def hang_up(wire: Wire, how: str) -> None:
    if how == "rst":
        wire.reset()
    else:
        wire.close()  # a FIN, no TLS close_notify


def settled_log(server: PymailServer, offset: int, expected: int, during: str) -> tuple[str, list[str]]:
    """The log since `offset` and its "connection closed" lines, once `expected` of them
    name ``during=<during>`` (or 15 s passed)."""
    deadline = time.monotonic() + 15
    while True:
        log = server.log()[offset:]
        closed = [line for line in log.splitlines() if "connection closed" in line]
        if sum(f"during={during}" in line for line in closed) >= expected or time.monotonic() > deadline:
            time.sleep(0.3)  # anything logged after the line
            return server.log()[offset:], closed
        time.sleep(0.1)


def assert_quiet(log: str, closed: list[str]) -> None:
    assert "ERROR" not in log and "Traceback" not in log, log
    assert "WARNING" not in log, log  # e.g. asyncio's "SSL connection is closed"
    assert all(" INFO " in line and "rip=127.0.0.1" in line and "reason=client_hung_up" in line
               for line in closed), closed


@pytest.mark.parametrize("how", ["rst", "fin"])
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_an_imap_fetch_of_big_messages_cut_off_is_one_info_line(
        server: PymailServer, tls: str, how: str) -> None:
    offset = len(server.log())
    for _ in range(ROUNDS):
        wire = connect(server, "imap", tls)
        if tls == "implicit":
            login(wire, ALICE)
        else:
            assert wire.command("L1", f"LOGIN {ALICE} secret-pw").tagged.startswith(b"OK")
        assert wire.command("s", "SELECT INBOX").tagged.startswith(b"OK")
        wire.send(b"a FETCH 1:* BODY[]\r\n")  # 8 MB
        hang_up(wire, how)
    log, closed = settled_log(server, offset, ROUNDS, "FETCH")
    assert_quiet(log, closed)
    assert sum("during=FETCH" in line for line in closed) == ROUNDS, log


@pytest.mark.parametrize("how", ["rst", "fin"])
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
@pytest.mark.parametrize("command", [b"a LOGOUT\r\n", b"a CAPABILITY\r\n" * 50])
def test_an_imap_logout_or_capability_cut_off_is_quiet(
        server: PymailServer, tls: str, how: str, command: bytes) -> None:
    offset = len(server.log())
    for _ in range(ROUNDS):
        wire = connect(server, "imap", tls)
        if tls == "implicit":
            assert wire.readline().startswith(b"* OK")
        wire.send(command)
        hang_up(wire, how)
    # A reset may reach the server before the commands do (their line then names no
    # command), and a LOGOUT may be answered before the hang-up is noticed (no line).
    time.sleep(1.5)
    log = server.log()[offset:]
    assert_quiet(log, [line for line in log.splitlines() if "connection closed" in line])


@pytest.mark.parametrize("how", ["rst", "fin"])
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_a_pop3_retr_cut_off_is_one_info_line(server: PymailServer, tls: str, how: str) -> None:
    offset = len(server.log())
    for _ in range(ROUNDS):
        wire = connect(server, "pop3", tls)
        if tls == "implicit":
            assert wire.readline().startswith(b"+OK")
        wire.send(f"USER {ALICE}\r\n".encode())
        assert wire.readline().startswith(b"+OK")
        wire.send(b"PASS secret-pw\r\n")
        assert wire.readline().startswith(b"+OK")
        wire.send(b"RETR 1\r\nRETR 2\r\nRETR 3\r\n")
        hang_up(wire, how)
    log, closed = settled_log(server, offset, ROUNDS, "RETR")
    assert_quiet(log, closed)
    assert sum("during=RETR" in line for line in closed) == ROUNDS, log
