"""POP3 under slow and vanishing clients, end to end (issue 10): a real pymail process,
real sockets and TLS, the server's memory from /proc and a second client timing SMTP
greetings (`StallProbe`) while it runs.

Before this work a client trickling a command kept a connection for 10 minutes after
its last byte (the idle timer restarted on every byte), a client that stopped reading
during RETR held its connection forever, and a client hanging up was logged as an ERROR
with a traceback.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.probes import MiB, MemorySampler, StallProbe
from tests.e2e.wire import Wire, big_message, old_tls_context, seed_message, tls_context
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret-pw"
LIMITS = """
[limits]
login_timeout = 3.0
command_timeout = 2.0
send_timeout = 2.0
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path_factory.mktemp("pop3-hardening"), pop3s=True, pop3=True,
                       extra_config=LIMITS)
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def pop3s(server: PymailServer, user: str | None = None) -> Wire:
    assert server.pop3s_port is not None
    wire = Wire(server.pop3s_port, context=tls_context(server))
    assert wire.readline().startswith(b"+OK")
    if user is not None:
        wire.send(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
        assert wire.readline().startswith(b"+OK") and wire.readline().startswith(b"+OK")
    return wire


def log_since(server: PymailServer, offset: int) -> str:
    return server.log()[offset:]


def test_a_trickled_login_is_cut_at_the_login_timeout(server: PymailServer) -> None:
    offset = len(server.log())
    wire = pop3s(server)
    started = time.monotonic()
    try:
        while time.monotonic() - started < 8:
            wire.send(b"NOOP\r\n")  # answered (-ERR: not before login), but no login
            time.sleep(0.3)
    except OSError:
        pass
    wire.closed_by_server(within=5)
    assert time.monotonic() - started < 6.0  # 3 s from connect, not 10 min from the last byte
    assert "pop3 connection closed: rip=127.0.0.1 reason=login_timeout" in log_since(server, offset)


def test_a_trickled_command_is_cut_at_the_command_timeout(server: PymailServer) -> None:
    wire = pop3s(server, ALICE)
    time.sleep(3.5)  # idle past command_timeout between commands: fine (10 minutes)
    wire.send(b"NOOP\r\n")
    assert wire.readline().startswith(b"+OK")
    started = time.monotonic()
    for byte in b"STA":
        wire.send(bytes([byte]))
        time.sleep(0.4)
    rest = wire.closed_by_server(within=4)
    assert rest == b"-ERR Command line took too long\r\n"
    assert 1.5 < time.monotonic() - started < 4.0


@pytest.mark.slow
def test_a_client_that_stops_reading_during_retr_is_cut_off(server: PymailServer) -> None:
    seed_message(server, BOB, big_message(20 * 1000 * 1000))
    offset = len(server.log())
    wire = pop3s(server, BOB)
    with MemorySampler(server.proc.pid) as memory, StallProbe(server.port) as probe:
        wire.send(b"RETR 1\r\n")  # and never read
        deadline = time.monotonic() + 20
        while "reason=send_timeout" not in log_since(server, offset) and time.monotonic() < deadline:
            time.sleep(0.2)
    print(f"RETR of 20 MB never read: {memory.describe()}; {probe.describe()}")
    assert "pop3 connection closed: rip=127.0.0.1 reason=send_timeout during=RETR" in log_since(server, offset)
    assert memory.growth_anon < 64 * MiB, memory.describe()
    assert probe.longest < 2.0 and not probe.failures, probe.describe()
    wire.closed_by_server(within=10)
    # nothing was removed, and the maildrop lock is free again
    wire = pop3s(server, BOB)
    wire.send(b"STAT\r\n")
    assert wire.readline().startswith(b"+OK 1 ")
    wire.close()


def test_clients_that_hang_up_are_one_info_line_each(server: PymailServer) -> None:
    seed_message(server, ALICE, big_message(4 * 1000 * 1000))
    offset = len(server.log())
    wire = pop3s(server, ALICE)
    wire.send(b"RETR 1\r\n")
    assert wire.readline().startswith(b"+OK")
    wire.reset()  # during RETR
    wire = pop3s(server)
    wire.send(b"CAPA\r\n" * 200)
    wire.reset()
    with pytest.raises(OSError):  # TLS 1.0/1.1 on pop3s
        Wire(server.pop3s_port, context=old_tls_context())
    plain = Wire(server.pop3_port)
    plain.readline()
    plain.send(b"STLS\r\n")
    assert plain.readline().startswith(b"+OK")
    with pytest.raises(OSError):  # and after STLS
        old_tls_context().wrap_socket(plain.sock, server_hostname="x")
    expected = {"reason=client_hung_up during=RETR": 1, "reason=tls_handshake_failed during=TLS": 1,
                "reason=tls_handshake_failed during=STLS": 1}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = log_since(server, offset)
        if all(log.count(k) >= n for k, n in expected.items()):
            break
        time.sleep(0.2)
    log = log_since(server, offset)
    assert "ERROR" not in log and "Traceback" not in log, log
    for key, count in expected.items():
        assert log.count(key) == count, (key, log)
    closed = [line for line in log.splitlines() if "connection closed" in line]
    assert closed and all(" INFO " in line and "rip=127.0.0.1" in line for line in closed), closed
    # and the service goes on
    wire = pop3s(server, ALICE)
    wire.send(b"STAT\r\n")
    assert wire.readline().startswith(b"+OK")
    wire.close()
