"""The ban on brute force across protocols, end to end on both backend pairs: failed
logins over SMTP submission and POP3 from one loopback address add up (the seed's
default: 5 failures in 10 minutes), and the banned address is then refused at connect by
every SMTP port (`421 4.7.0`), IMAP (`* BYE`) and POP3 (`-ERR`), while another address
still gets in."""

from __future__ import annotations

import base64
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.e2e.imap_login import imap_login
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
PASSWORD = "secret-pw"
ATTACKER = "127.0.0.7"
FRIEND = "127.0.0.8"


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, storage_config=storage.config, imaps=True, pop3s=True,
                       submission=True, submissions=True)
    srv.add_user(ALICE)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def tls_context(server: PymailServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def submission_auth(server: PymailServer, source: str, password: str) -> int:
    """One AUTH PLAIN over STARTTLS on the submission port from `source`: the reply code."""
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30,
                      source_address=(source, 0)) as client:
        client.starttls(context=tls_context(server))
        client.ehlo("client.example")
        token = base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()
        code, _ = client.docmd("AUTH", f"PLAIN {token}")
        return code


def pop3s_exchange(server: PymailServer, source: str, *lines: str) -> list[bytes]:
    """The greeting and the reply to each command line, over POP3S from `source`."""
    raw = socket.create_connection(("127.0.0.1", server.pop3s_port), timeout=30,
                                   source_address=(source, 0))
    with tls_context(server).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        reader = tls.makefile("rb")
        replies = [reader.readline()]
        if not replies[0].startswith(b"+OK"):
            return replies
        for line in lines:
            tls.sendall(line.encode() + b"\r\n")
            replies.append(reader.readline())
        return replies


def smtp_greeting(port: int, source: str, context: ssl.SSLContext | None = None) -> bytes:
    raw = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
    with sock:
        return sock.makefile("rb").readline()


def test_five_failures_over_two_protocols_ban_the_address_everywhere(server: PymailServer) -> None:
    for _ in range(3):
        assert submission_auth(server, ATTACKER, "wrong") == 535
    replies = pop3s_exchange(server, ATTACKER, f"USER {ALICE}", "PASS wrong", f"USER {ALICE}", "PASS wrong")
    assert [r[:4] for r in replies] == [b"+OK ", b"+OK ", b"-ERR", b"+OK ", b"-ERR"], replies
    log = server.log()
    assert len(re.findall(rf"authentication failed: service=(?:submission|pop3) rip={re.escape(ATTACKER)} ", log)) == 5
    assert re.search(rf"ban: rip={re.escape(ATTACKER)} failures=5 until=\S+ reason=authentication", log), log

    # refused at connect, on every port, even with the right password
    for port, context in ((server.port, None), (server.submission_port, None),
                          (server.submissions_port, tls_context(server))):
        assert smtp_greeting(port, ATTACKER, context).startswith(b"421 4.7.0 "), port
    assert pop3s_exchange(server, ATTACKER)[0].startswith(b"-ERR")
    assert imap_login(server, ALICE, PASSWORD, source=ATTACKER).startswith("* BYE")
    assert "authenticated: service=imap rip=127.0.0.7" not in server.log()

    # someone else is not affected
    assert smtp_greeting(server.port, FRIEND).startswith(b"220 ")
    assert submission_auth(server, FRIEND, PASSWORD) == 235
    assert imap_login(server, ALICE, PASSWORD, source=FRIEND) == "OK"
    assert pop3s_exchange(server, FRIEND, f"USER {ALICE}", f"PASS {PASSWORD}", "QUIT")[2].startswith(b"+OK")

    listed = server.cli("ban", "list").stdout
    assert listed.startswith(f"{ATTACKER}\tuntil=")
