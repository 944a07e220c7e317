"""Message submission end to end: a real pymail process on both backend pairs, swaks and
smtplib over real TLS on 587-style STARTTLS and 465-style implicit TLS, SASL PLAIN and
LOGIN, the relay and sender-ownership policy, and STARTTLS command injection."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer, client_feature, client_tool

ALICE = "alice@example.test"
BOB = "bob@example.test"
ALIAS = "sales@example.test"  # -> alice
PASSWORD = "secret-pw"


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, storage_config=storage.config, submission=True, submissions=True)
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.cli("alias", "add", ALIAS, ALICE)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    if {"--tls", "--tlsc", "--tls-on-connect", "-tls", "-tlsc"} & set(args):
        client_feature("swaks", "swaks", probe=("--support",), expect="=== TLS supported", feature="TLS",
                       feature_package="libnet-ssleay-perl")
    else:
        client_tool("swaks", "swaks")
    return subprocess.run(["swaks", "--timeout", "30", *args], capture_output=True, text=True, timeout=90)


def context(server: PymailServer) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(server.ca_file))


def starttls_client(server: PymailServer) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30)
    client.ehlo("client.example")
    client.starttls(context=context(server))
    client.ehlo("client.example")
    return client


def subjects(server: PymailServer, user: str) -> list[bytes]:
    return [blob.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for _, blob, _ in server.inbox(user)]


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_starttls_auth_delivers(server: PymailServer, mechanism: str) -> None:
    result = swaks("--server", f"127.0.0.1:{server.submission_port}", "--tls",
                   "--auth", mechanism, "--auth-user", ALICE, "--auth-password", PASSWORD,
                   "--ehlo", "outlook-style.example.",  # a trailing dot, as Outlook sends
                   "--from", ALICE, "--to", BOB, "--header", f"Subject: via 587 {mechanism}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "250 2.0.0 Ok: queued as" in result.stdout
    (uid, blob, _), = server.inbox(BOB)
    assert f"Subject: via 587 {mechanism}".encode() in blob
    assert b"with ESMTPSA" in blob.split(b"\r\n\r\n", 1)[0]  # RFC 3848: TLS + AUTH


def test_swaks_implicit_tls_delivers(server: PymailServer) -> None:
    result = swaks("--server", f"127.0.0.1:{server.submissions_port}", "--tlsc",
                   "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORD,
                   "--from", ALIAS, "--to", BOB, "--header", "Subject: via 465")
    assert result.returncode == 0, result.stdout + result.stderr
    assert subjects(server, BOB) == [b"via 465"]


def test_no_auth_without_tls(server: PymailServer) -> None:
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as client:
        code, text = client.ehlo("client.example")
        assert code == 250
        assert b"STARTTLS" in text and b"AUTH" not in text  # RFC 4954 section 4 / RFC 8314
        plain = base64.b64encode(f"\0{ALICE}\0{PASSWORD}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {plain}")
        assert code == 530 and text.startswith(b"5.7.0"), (code, text)
        code, text = client.docmd("MAIL", f"FROM:<{ALICE}>")
        assert code == 530, (code, text)
    # swaks: the same, refused
    result = swaks("--server", f"127.0.0.1:{server.submission_port}",
                   "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", PASSWORD,
                   "--from", ALICE, "--to", BOB)
    assert result.returncode != 0
    assert server.inbox(BOB) == []
    # a password never reaches the log
    assert PASSWORD not in server.log()


def test_auth_required_and_failures(server: PymailServer) -> None:
    client = starttls_client(server)
    assert b"AUTH LOGIN PLAIN" in client.ehlo_resp
    code, text = client.docmd("MAIL", f"FROM:<{ALICE}>")
    assert (code, text[:5]) == (530, b"5.7.0")
    for n in range(2):
        plain = base64.b64encode(f"\0{ALICE}\0wrong-{n}".encode()).decode()
        code, text = client.docmd("AUTH", f"PLAIN {plain}")
        assert (code, text[:5]) == (535, b"5.7.8"), (code, text)
    # unknown user: the same answer
    plain = base64.b64encode(f"\0nobody@example.test\0{PASSWORD}".encode()).decode()
    code, text = client.docmd("AUTH", f"PLAIN {plain}")
    assert (code, text[:5]) == (421, b"4.7.0"), (code, text)  # third failure: closed
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.noop()
    log = server.log()
    assert log.count(f"authentication failed: service=submission rip=127.0.0.1 user=<{ALICE}>") == 2
    assert "user=<nobody@example.test>" in log
    # authzid other than the authcid: refused
    client = starttls_client(server)
    plain = base64.b64encode(f"{BOB}\0{ALICE}\0{PASSWORD}".encode()).decode()
    code, _ = client.docmd("AUTH", f"PLAIN {plain}")
    assert code == 535
    # the right password (the same connection goes on)
    plain = base64.b64encode(f"{ALICE}\0{ALICE}\0{PASSWORD}".encode()).decode()
    code, text = client.docmd("AUTH", f"PLAIN {plain}")
    assert (code, text[:5]) == (235, b"2.7.0"), (code, text)
    code, _ = client.docmd("AUTH", f"PLAIN {plain}")
    assert code == 503  # already authenticated
    client.quit()


def test_sender_and_recipient_policy(server: PymailServer) -> None:
    client = starttls_client(server)
    client.login(ALICE, PASSWORD)
    # someone else's address: refused; the transaction is clean afterwards
    code, text = client.docmd("MAIL", f"FROM:<{BOB}>")
    assert (code, text[:5]) == (553, b"5.7.1"), (code, text)
    code, _ = client.docmd("RCPT", f"TO:<{BOB}>")
    assert code == 503  # no MAIL in progress
    # an address in a foreign domain: refused as well
    code, _ = client.docmd("MAIL", "FROM:<alice@gmail.example>")
    assert code == 553
    # an alias that routes to alice: accepted
    code, _ = client.docmd("MAIL", f"FROM:<{ALIAS}>")
    assert code == 250
    code, text = client.docmd("RCPT", "TO:<friend@remote.example>")
    assert (code, text[:5]) == (250, b"2.1.5"), (code, text)  # queued (tests/e2e/test_queue.py)
    code, text = client.docmd("RCPT", "TO:<nobody@example.test>")
    assert (code, text[:5]) == (550, b"5.1.1")
    code, _ = client.docmd("RCPT", f"TO:<{BOB}>")
    assert code == 250
    code, text = client.data(b"Subject: policy\r\n\r\nhello\r\n")
    assert code == 250, text
    client.quit()
    assert subjects(server, BOB) == [b"policy"]
    # the null sender (a bounce written by a client) is allowed
    client = starttls_client(server)
    client.login(BOB, PASSWORD)
    client.sendmail("", [ALICE], b"Subject: null sender\r\n\r\nx\r\n")
    client.quit()
    assert subjects(server, ALICE) == [b"null sender"]


def test_starttls_command_injection_is_discarded(server: PymailServer) -> None:
    """CVE-2011-0411: commands pipelined in plaintext behind STARTTLS must not run
    inside the TLS session."""
    raw = socket.create_connection(("127.0.0.1", server.submission_port), timeout=30)
    reader = raw.makefile("rb")
    assert reader.readline().startswith(b"220 ")
    raw.sendall(b"EHLO client.example\r\n")
    while not reader.readline().startswith(b"250 "):
        pass
    raw.sendall(b"STARTTLS\r\nMAIL FROM:<" + ALICE.encode() + b">\r\n")
    assert reader.readline().startswith(b"220 ")
    tls = context(server).wrap_socket(raw, server_hostname="127.0.0.1")
    tls_reader = tls.makefile("rb")
    tls.sendall(b"NOOP\r\n")
    first = tls_reader.readline()
    assert first.startswith(b"250 "), first  # the NOOP's answer, not the injected MAIL's
    tls.sendall(b"EHLO client.example\r\n")
    lines = []
    while True:
        line = tls_reader.readline()
        lines.append(line)
        if line.startswith(b"250 "):
            break
    assert any(b"AUTH" in line for line in lines)
    tls.sendall(b"QUIT\r\n")
    tls.close()


def test_mx_offers_starttls(server: PymailServer) -> None:
    result = swaks("--server", f"127.0.0.1:{server.port}", "--tls",
                   "--from", "carol@remote.example", "--to", ALICE, "--header", "Subject: over TLS")
    assert result.returncode == 0, result.stdout + result.stderr
    (_, blob, _), = server.inbox(ALICE)
    assert b"with ESMTPS" in blob.split(b"\r\n\r\n", 1)[0]
    # and the MX still never relays, TLS or not
    result = swaks("--server", f"127.0.0.1:{server.port}", "--tls",
                   "--from", "carol@remote.example", "--to", "x@remote.example")
    assert result.returncode != 0 and "554 5.7.1" in result.stdout
