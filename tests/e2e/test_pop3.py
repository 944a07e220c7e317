"""The POP3 service end to end: a real pymail process on both backend pairs, Python's
poplib and a raw socket client (exact bytes on the wire) over real TLS, verified against
the embedded private CA; mail delivered by smtplib (and APPENDed over IMAPS) to the same
process; the store read back through the Index/BlobStore interfaces; IMAP sessions on
the same INBOX watching what POP3 does.

One server per backend pair serves the whole module (starting one per test would cost
more than the tests); each test makes users of its own, so no test sees another's mail,
maildrop lock or log lines."""

from __future__ import annotations

import asyncio
import base64
import itertools
import poplib
import re
import smtplib
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.conftest import BACKEND_PAIRS, StorageSetup, make_storage
from tests.pymail_harness import PymailServer

PASSWORD = "secret-pw"
CHUNK = 256 * 1024  # the server's blob read size (pymail.net.pop3.session.CHUNK)


def start(srv: PymailServer) -> PymailServer:
    return srv.start()  # returns once every configured listener accepts


LENIENT_BANS = "[auth.ban]\nmax_failures = 1000\naccount_max_failures = 0\n"


@pytest.fixture(scope="module", params=BACKEND_PAIRS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymailServer]:
    """pymail with POP3S, POP3 (STLS) and IMAPS on one backend pair."""
    tmp_path = tmp_path_factory.mktemp("pop3")
    storage = make_storage(request.param, request, tmp_path)
    # One server for the whole module: its wrong-password tests add up from 127.0.0.1, so
    # the ban threshold is raised (tests/e2e/test_ban_protocols.py tests the ban).
    srv = PymailServer(tmp_path, storage_config=storage.config, pop3s=True, pop3=True, imaps=True,
                       extra_config=LENIENT_BANS)
    srv.storage = storage  # type: ignore[attr-defined]
    srv.add_user("postmaster@example.test", PASSWORD)
    start(srv)
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


_serial = itertools.count(1)


def new_user(server: PymailServer, name: str) -> str:
    address = f"{name}{next(_serial)}@example.test"
    server.add_user(address, PASSWORD)
    return address


@pytest.fixture
def alice(server: PymailServer) -> str:
    return new_user(server, "alice")


@pytest.fixture
def bob(server: PymailServer) -> str:
    return new_user(server, "bob")


def message(n: int) -> bytes:
    return (
        b"From: Carol <carol@remote.example>\r\n"
        b"To: Alice <alice@example.test>\r\n"
        b"Subject: pop test %d\r\n"
        b"Message-ID: <pop-%d@remote.example>\r\n"
        b"\r\n"
        b"first line of %d\r\n"
        b".a line that starts with a dot\r\n"
        b".\r\n"
        b"last line\r\n" % (n, n, n)
    )


def deliver(server: PymailServer, data: bytes, to: str) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail("carol@remote.example", [to], data)


def expected_wire(blob: bytes) -> bytes:
    """What RETR must put on the wire for a stored message (RFC 1939 section 3): every
    line ending in CRLF, a leading "." doubled, then the "." line.  Written out line by
    line, independently of the server's incremental dot-stuffer."""
    lines = blob.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return out + b".\r\n"


def first_lines(blob: bytes, n: int) -> bytes:
    """The header, the blank line and the first n body lines (TOP msg n)."""
    head, _, body = blob.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n" + b"".join(line + b"\r\n" for line in body.split(b"\r\n")[:n])


class Wire:
    """A raw POP3 client over a real socket (plain or TLS): the exact response bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    @classmethod
    def tls(cls, server: PymailServer) -> "Wire":
        assert server.pop3s_port is not None
        context = ssl.create_default_context(cafile=str(server.ca_file))
        raw = socket.create_connection(("127.0.0.1", server.pop3s_port), timeout=30)
        return cls(context.wrap_socket(raw, server_hostname="127.0.0.1"))

    @classmethod
    def plain(cls, server: PymailServer) -> "Wire":
        assert server.pop3_port is not None
        return cls(socket.create_connection(("127.0.0.1", server.pop3_port), timeout=30))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 20)
        self.buffer += data
        return bool(data)

    def line(self) -> bytes:
        """One response line with its CRLF (what is left if the server closed)."""
        while (end := self.buffer.find(b"\n")) < 0:
            if not self._fill():
                rest = bytes(self.buffer)
                self.buffer.clear()
                return rest
        line = bytes(self.buffer[:end + 1])
        del self.buffer[:end + 1]
        return line

    def cmd(self, text: str | bytes) -> bytes:
        """Send one command line; its status line without the CRLF."""
        self.send((text.encode() if isinstance(text, str) else text) + b"\r\n")
        return self.line().rstrip(b"\r\n")

    def body(self) -> bytes:
        """The rest of a multi-line response, terminating "." line included, raw."""
        searched = 0
        while True:
            if self.buffer.startswith(b".\r\n"):
                end = 3
                break
            found = self.buffer.find(b"\r\n.\r\n", max(0, searched - 4))
            if found >= 0:
                end = found + 5
                break
            searched = len(self.buffer)
            assert self._fill(), "connection closed inside a multi-line response"
        out = bytes(self.buffer[:end])
        del self.buffer[:end]
        return out

    def until_closed(self) -> bytes:
        out = bytes(self.buffer)
        self.buffer.clear()
        while True:
            try:
                data = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError):
                return out
            if not data:
                return out
            out += data

    def login(self, user: str, password: str = PASSWORD) -> None:
        assert self.line().startswith(b"+OK")
        assert self.cmd(f"USER {user}").startswith(b"+OK")
        reply = self.cmd(f"PASS {password}")
        assert reply.startswith(b"+OK"), reply

    def close(self) -> None:
        self.sock.close()


def login_when_unlocked(server: PymailServer, user: str) -> poplib.POP3_SSL:
    """Log in once the server has seen an earlier session of `user` go: until then the
    maildrop lock answers [IN-USE] (the only answer accepted while waiting)."""
    for _ in range(400):
        client = server.pop3s_client()
        client.user(user)
        try:
            client.pass_(PASSWORD)
            return client
        except poplib.error_proto as refusal:
            assert refusal.args[0].startswith(b"-ERR [IN-USE]"), refusal
            client.quit()
            time.sleep(0.05)
    raise AssertionError("the maildrop lock was never released")


def imap_uidvalidity(server: PymailServer, user: str) -> int:
    client = server.imaps_client(user, PASSWORD)
    typ, data = client.status("INBOX", "(UIDVALIDITY)")
    client.logout()
    assert typ == "OK"
    match = re.search(rb"UIDVALIDITY (\d+)", data[0])
    assert match, data
    return int(match.group(1))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# -- authentication ------------------------------------------------------------------------


def test_greeting_capa_and_user_pass(server: PymailServer, alice: str) -> None:
    client = server.pop3s_client()
    assert client.getwelcome() == b"+OK pymail POP3 server ready"
    capa = client.capa()
    for name in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"):
        assert capa.get(name) == [], (name, capa)
    assert capa["SASL"] == ["PLAIN", "LOGIN"]
    assert capa["EXPIRE"] == ["NEVER"] and capa["IMPLEMENTATION"] == ["pymail"]
    assert "STLS" not in capa
    with pytest.raises(poplib.error_proto) as no_user:
        client.pass_(PASSWORD)
    assert no_user.value.args[0] == b"-ERR No username given"
    # a wrong password and an unknown user: the same answer, both logged with rip=
    nobody = "nobody-" + alice
    answers = []
    for user, password in ((alice, "wrong"), (nobody, PASSWORD)):
        client.user(user)
        with pytest.raises(poplib.error_proto) as failure:
            client.pass_(password)
        answers.append(failure.value.args[0])
    assert answers[0] == answers[1] == b"-ERR [AUTH] Authentication failed"
    log = server.log()
    assert f"service=pop3 rip=127.0.0.1 user=<{alice}> reason=wrong_password" in log
    assert f"service=pop3 rip=127.0.0.1 user=<{nobody}> reason=unknown_user" in log
    # the third failure on one connection closes it
    client.user(alice)
    with pytest.raises(poplib.error_proto) as third:
        client.pass_("wrong again")
    assert third.value.args[0] == b"-ERR [AUTH] Too many authentication failures"
    with pytest.raises((poplib.error_proto, OSError, EOFError)):
        client.noop()
    # a good login; in the TRANSACTION state CAPA no longer offers USER or SASL
    client = server.pop3s_client(alice)
    capa = client.capa()
    assert "USER" not in capa and "SASL" not in capa and "TOP" in capa
    with pytest.raises(poplib.error_proto) as wrong_state:
        client.user(alice)
    assert wrong_state.value.args[0] == b"-ERR Command not valid in this state"
    assert client.quit() == b"+OK Bye"


def test_auth_plain_and_login_with_and_without_initial_response(
        server: PymailServer, alice: str, bob: str) -> None:
    wire = Wire.tls(server)
    assert wire.line().startswith(b"+OK")
    assert wire.cmd("AUTH") == b"+OK Methods supported"  # the RFC 1734-era listing
    assert wire.body() == b"PLAIN\r\nLOGIN\r\n.\r\n"
    assert wire.cmd("AUTH CRAM-MD5") == b"-ERR Unsupported authentication mechanism"
    assert wire.cmd("AUTH PLAIN") == b"+ "
    assert wire.cmd("*") == b"-ERR Authentication cancelled"  # RFC 5034 section 4
    assert wire.cmd("AUTH PLAIN not*base64") == b"-ERR Invalid base64"
    assert wire.cmd(f"AUTH PLAIN {b64('no separators')}") == b"-ERR Malformed SASL PLAIN response"
    # an authorization identity other than the user: refused (no proxy logins)
    assert wire.cmd(f"AUTH PLAIN {b64(bob + chr(0) + alice + chr(0) + PASSWORD)}") == (
        b"-ERR [AUTH] Authentication failed")
    assert f"authentication failed: service=pop3 rip=127.0.0.1 user=<{alice}> reason=authzid_mismatch" in server.log()
    assert wire.cmd(f"AUTH PLAIN {b64(chr(0) + alice + chr(0) + PASSWORD)}").startswith(b"+OK Logged in")
    assert wire.cmd("AUTH PLAIN") == b"-ERR Command not valid in this state"
    assert wire.cmd("QUIT") == b"+OK Bye"

    wire = Wire.tls(server)  # PLAIN with the response after an empty challenge
    assert wire.line().startswith(b"+OK")
    assert wire.cmd("AUTH PLAIN") == b"+ "
    assert wire.cmd(b64(f"{alice}\0{alice}\0{PASSWORD}")).startswith(b"+OK Logged in")
    assert wire.cmd("QUIT") == b"+OK Bye"

    wire = Wire.tls(server)  # LOGIN, challenge by challenge
    assert wire.line().startswith(b"+OK")
    assert wire.cmd("AUTH LOGIN") == b"+ " + base64.b64encode(b"Username:")
    assert wire.cmd(b64(bob)) == b"+ " + base64.b64encode(b"Password:")
    assert wire.cmd(b64(PASSWORD)).startswith(b"+OK Logged in")
    assert wire.cmd("QUIT") == b"+OK Bye"

    wire = Wire.tls(server)  # LOGIN with the user name as initial response
    assert wire.line().startswith(b"+OK")
    assert wire.cmd(f"AUTH LOGIN {b64(bob)}") == b"+ " + base64.b64encode(b"Password:")
    assert wire.cmd(b64("wrong")) == b"-ERR [AUTH] Authentication failed"
    assert f"service=pop3 rip=127.0.0.1 user=<{bob}> reason=wrong_password" in server.log()
    wire.close()


def test_stls_port_refuses_passwords_before_tls(server: PymailServer, alice: str) -> None:
    assert server.pop3_port is not None
    client = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    capa = client.capa()
    assert "STLS" in capa and "USER" not in capa and "SASL" not in capa
    refusals = []
    for line in (f"USER {alice}", f"PASS {PASSWORD}", f"AUTH PLAIN {b64(chr(0) + alice + chr(0) + PASSWORD)}",
                 "AUTH"):
        with pytest.raises(poplib.error_proto) as refused:
            client._shortcmd(line)
        refusals.append(refused.value.args[0])
    assert set(refusals) == {
        b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS"}
    assert f"user=<{alice}>" not in server.log()  # no password was checked
    client.stls(ssl.create_default_context(cafile=str(server.ca_file)))
    capa = client.capa()
    assert "STLS" not in capa and "USER" in capa and capa["SASL"] == ["PLAIN", "LOGIN"]
    client.user(alice)
    assert client.pass_(PASSWORD).startswith(b"+OK Logged in")
    with pytest.raises(poplib.error_proto):
        client._shortcmd("STLS")  # not in the TRANSACTION state
    assert client.quit() == b"+OK Bye"

    wire = Wire.tls(server)  # STLS over implicit TLS
    assert wire.line().startswith(b"+OK")
    assert wire.cmd("STLS") == b"-ERR Command not permitted when TLS active"
    wire.close()


def test_stls_discards_commands_pipelined_behind_it(server: PymailServer, alice: str) -> None:
    # CVE-2011-0411 / RFC 2595: "STLS\r\nCAPA\r\n" in one packet; CAPA must not run
    # (neither in plaintext nor, worse, as if the client had sent it over TLS)
    context = ssl.create_default_context(cafile=str(server.ca_file))
    wire = Wire.plain(server)
    assert wire.line().startswith(b"+OK")
    wire.send(b"STLS\r\nCAPA\r\n")
    assert wire.line() == b"+OK Begin TLS negotiation now\r\n"
    assert wire.buffer == b""
    wire.sock = context.wrap_socket(wire.sock, server_hostname="127.0.0.1")
    wire.send(b"QUIT\r\n")
    assert wire.until_closed() == b"+OK Bye\r\n"
    assert "discarded 6 octets pipelined behind STLS from rip=127.0.0.1" in server.log()
    # a login smuggled behind STLS is not carried over into the TLS session either
    wire = Wire.plain(server)
    assert wire.line().startswith(b"+OK")
    wire.send(f"STLS\r\nUSER {alice}\r\nPASS {PASSWORD}\r\n".encode())
    assert wire.line() == b"+OK Begin TLS negotiation now\r\n"
    wire.sock = context.wrap_socket(wire.sock, server_hostname="127.0.0.1")
    assert wire.cmd("STAT") == b"-ERR Command not valid in this state"  # not logged in
    assert wire.cmd(f"PASS {PASSWORD}") == b"-ERR No username given"
    assert wire.cmd("QUIT") == b"+OK Bye"
    assert f"user=<{alice}>" not in server.log()


# -- the maildrop ----------------------------------------------------------------------------


def test_retr_and_top_stream_dot_stuffed_crlf_byte_exact(server: PymailServer, alice: str) -> None:
    deliver(server, message(1), alice)
    # APPENDed over IMAP: bare LF line ends, dot lines, no line end at the very end
    bare = b"Subject: bare\n\n.one\nline\n..two\n.\nno final newline"
    imap = server.imaps_client(alice, PASSWORD)
    imap.literal = bare  # (imaplib's append() would turn the bare LFs into CRLF)
    assert imap._simple_command("APPEND", "INBOX")[0] == "OK"
    # a large message (several 256 KiB reads) with a line starting with "." at each
    # boundary where the server reads its next chunk
    line = b".%06d dot-stuffed line of a large message...................\r\n"
    lines = [line % i for i in range(18_000)]
    assert CHUNK % len(lines[0]) == 0  # 64 octets: every chunk boundary starts a line
    header_size = len(b"Subject: big\r\nX-Pad: \r\n\r\n")
    pad = (CHUNK - header_size) % len(lines[0])
    big = b"Subject: big\r\nX-Pad: " + b"p" * pad + b"\r\n\r\n" + b"".join(lines)
    assert big[CHUNK:CHUNK + 1] == big[2 * CHUNK:2 * CHUNK + 1] == b"." and big[CHUNK - 2:CHUNK] == b"\r\n"
    assert imap.append("INBOX", None, None, big)[0] == "OK"
    imap.logout()
    stored = [blob for _, blob, _ in server.inbox(alice)]
    assert len(stored) == 3 and stored[1] == bare and stored[2] == big
    total = sum(len(b) for b in stored)

    wire = Wire.tls(server)
    wire.login(alice)
    assert wire.cmd("STAT") == b"+OK 3 %d" % total
    assert wire.cmd("LIST") == b"+OK 3 messages (%d octets)" % total
    assert wire.body() == b"".join(b"%d %d\r\n" % (n, len(b)) for n, b in enumerate(stored, 1)) + b".\r\n"
    for n, blob in enumerate(stored, 1):
        assert wire.cmd(f"RETR {n}") == b"+OK %d octets" % len(blob)
        assert wire.body() == expected_wire(blob), n
    # TOP: the header, the blank line, then n body lines (RFC 1939 section 7)
    assert wire.cmd("TOP 1 0") == b"+OK Top of message follows"
    assert wire.body() == expected_wire(first_lines(stored[0], 0))
    assert wire.cmd("TOP 1 2") == b"+OK Top of message follows"
    assert wire.body() == expected_wire(first_lines(stored[0], 2))
    assert wire.cmd("TOP 2 4294967295") == b"+OK Top of message follows"
    assert wire.body() == expected_wire(bare)
    assert wire.cmd("TOP 3 5000") == b"+OK Top of message follows"  # ends past the first chunk
    assert wire.body() == expected_wire(first_lines(big, 5000))
    assert wire.cmd("TOP 3 18000") == b"+OK Top of message follows"
    assert wire.body() == expected_wire(big)
    assert wire.cmd("QUIT") == b"+OK Bye"
    # poplib reads the same messages back (it undoes the dot-stuffing itself)
    client = server.pop3s_client(alice)
    _, lines_read, _ = client.retr(1)
    assert b"\r\n".join(lines_read) + b"\r\n" == stored[0]
    assert client.retr(2)[1] == bare.split(b"\n")
    client.quit()
    # reading removed nothing and set no flag
    assert [(blob, flags) for _, blob, flags in server.inbox(alice)] == [(b, frozenset()) for b in stored]


def test_numbers_fixed_uidl_stable_dele_rset_quit_and_imap_sees_it(server: PymailServer, alice: str) -> None:
    for n in range(1, 4):
        deliver(server, message(n), alice)
    uids = [uid for uid, _, _ in server.inbox(alice)]
    validity = imap_uidvalidity(server, alice)
    watcher = server.imaps_client(alice, PASSWORD)
    assert watcher.select("INBOX") == ("OK", [b"3"])

    client = server.pop3s_client(alice)
    assert client.stat()[0] == 3
    assert client.uidl()[1] == [b"%d %d.%d" % (n, validity, uid) for n, uid in enumerate(uids, 1)]
    assert client.uidl(2) == b"+OK 2 %d.%d" % (validity, uids[1])
    deliver(server, message(4), alice)  # arrives during the session: numbers stay fixed
    assert client.stat()[0] == 3
    with pytest.raises(poplib.error_proto, match="No such message"):
        client.list(4)
    assert client.dele(2) == b"+OK Message 2 deleted"
    assert client.stat()[0] == 2
    assert [entry.split()[0] for entry in client.list()[1]] == [b"1", b"3"]
    assert [entry.split()[0] for entry in client.uidl()[1]] == [b"1", b"3"]
    for command in (lambda: client.retr(2), lambda: client.dele(2), lambda: client.list(2),
                    lambda: client.top(2, 0), lambda: client.uidl(2)):
        with pytest.raises(poplib.error_proto, match="Message already deleted"):
            command()
    assert client.rset().startswith(b"+OK Maildrop has 3 messages")
    assert client.stat()[0] == 3
    assert client.dele(1).startswith(b"+OK")
    client.close()  # the connection drops without QUIT: nothing is removed
    client = login_when_unlocked(server, alice)
    assert [flags for _, _, flags in server.inbox(alice)] == [frozenset()] * 4
    watcher.noop()
    assert "EXPUNGE" not in watcher.untagged_responses

    # the new session sees the fourth message; the unique ids of the others are unchanged
    all_uids = [uid for uid, _, _ in server.inbox(alice)]
    assert all_uids[:3] == uids
    assert client.uidl()[1] == [b"%d %d.%d" % (n, validity, uid) for n, uid in enumerate(all_uids, 1)]
    client.dele(1)
    client.dele(3)
    assert client.quit() == b"+OK Bye"  # UPDATE: removed before this +OK
    remaining = [uid for uid, _, _ in server.inbox(alice)]
    assert remaining == [all_uids[1], all_uids[3]]
    # the IMAP session on the same INBOX is told (RFC 3501 section 7.4.1)
    watcher.untagged_responses.clear()
    assert watcher.noop()[0] == "OK"
    assert watcher.untagged_responses.get("EXPUNGE") == [b"3", b"1"]
    typ, data = watcher.uid("SEARCH", None, "ALL")
    assert typ == "OK" and data[0].split() == [str(u).encode() for u in remaining]
    watcher.logout()


def test_imap_expunge_during_a_pop3_session_is_harmless(server: PymailServer, alice: str) -> None:
    for n in range(1, 4):
        deliver(server, message(n), alice)
    uids = [uid for uid, _, _ in server.inbox(alice)]
    client = server.pop3s_client(alice)
    imap = server.imaps_client(alice, PASSWORD)
    imap.select("INBOX")
    imap.store("1:2", "+FLAGS", "(\\Deleted)")
    imap.expunge()  # IMAP removes messages 1 and 2 while POP3 holds them as 1 and 2
    assert client.stat()[0] == 3  # the POP3 session's numbers stay as listed at login
    client.dele(1)  # already gone from the store: removing it again is a no-op
    client.dele(3)
    assert client.quit() == b"+OK Bye"
    assert server.inbox(alice) == []
    imap.noop()
    assert imap.uid("SEARCH", None, "ALL")[1] == [b""]
    imap.logout()
    # and a message IMAP only flagged \Deleted is still there for POP3, flag and all
    deliver(server, message(4), alice)
    imap = server.imaps_client(alice, PASSWORD)
    imap.select("INBOX")
    imap.store("1", "+FLAGS", "(\\Deleted)")
    client = server.pop3s_client(alice)
    assert client.stat()[0] == 1 and client.quit() == b"+OK Bye"  # no DELE: nothing removed
    [(uid, _, flags)] = server.inbox(alice)
    assert uid > uids[-1] and flags == frozenset({"\\Deleted"})
    imap.logout()


def test_second_session_of_the_same_user_is_in_use(server: PymailServer, alice: str, bob: str) -> None:
    deliver(server, message(1), alice)
    first = server.pop3s_client(alice)
    second = server.pop3s_client()
    second.user(alice)
    with pytest.raises(poplib.error_proto) as locked:
        second.pass_(PASSWORD)
    assert locked.value.args[0] == b"-ERR [IN-USE] Maildrop is locked by another POP3 session"
    assert server.pop3s_client(bob).quit() == b"+OK Bye"  # other users are not affected
    imap = server.imaps_client(alice, PASSWORD)  # nor is IMAP
    assert imap.select("INBOX") == ("OK", [b"1"])
    imap.logout()
    assert first.quit() == b"+OK Bye"
    second.user(alice)  # the same connection may try again once the lock is free
    assert second.pass_(PASSWORD).startswith(b"+OK Logged in, 1 messages")
    second.close()
    login_when_unlocked(server, alice).quit()  # a dropped connection frees the lock too


def test_bad_input_and_wrong_state_get_err_and_the_session_goes_on(server: PymailServer, alice: str) -> None:
    deliver(server, message(1), alice)
    [(uid, blob, _)] = server.inbox(alice)
    validity = imap_uidvalidity(server, alice)
    wire = Wire.tls(server)
    assert wire.line().startswith(b"+OK")
    assert wire.cmd(b"USER " + b"x" * 600) == b"-ERR Command line too long"
    assert wire.cmd("FROBNICATE") == b"-ERR Unknown command"
    assert wire.cmd("APOP alice 0123456789abcdef0123456789abcdef") == b"-ERR Unknown command"
    assert wire.cmd("") == b"-ERR Empty command"
    for command in ("STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 0", "UIDL"):
        assert wire.cmd(command) == b"-ERR Command not valid in this state", command
    assert wire.cmd(f"USER {alice}") == b"+OK Send your password"
    assert wire.cmd(f"PASS {PASSWORD}").startswith(b"+OK Logged in, 1 messages")
    assert wire.cmd("RETR 0") == b"-ERR No such message"
    assert wire.cmd("RETR 2") == b"-ERR No such message"
    assert wire.cmd("RETR 99999999999") == b"-ERR Syntax error"
    assert wire.cmd("TOP 1 -1") == b"-ERR Syntax error"
    assert wire.cmd("TOP 1") == b"-ERR Syntax error"
    assert wire.cmd("DELE") == b"-ERR Syntax error"
    assert wire.cmd("LIST one") == b"-ERR Syntax error"
    assert wire.cmd("USER bob") == b"-ERR Command not valid in this state"
    assert wire.cmd("AUTH PLAIN") == b"-ERR Command not valid in this state"
    assert wire.cmd("STLS") == b"-ERR Command not valid in this state"
    assert wire.cmd(b"RETR " + b"1" * 5000) == b"-ERR Command line too long"
    assert wire.cmd(b"\xff\xfe\x00") == b"-ERR Syntax error"
    # PIPELINING (RFC 2449 section 6.6): several commands in one write, answers in order
    wire.send(b"NOOP\r\nSTAT\r\nFROB\r\nLIST 1\r\nUIDL 1\r\n")
    assert [wire.line() for _ in range(5)] == [
        b"+OK\r\n", b"+OK 1 %d\r\n" % len(blob), b"-ERR Unknown command\r\n",
        b"+OK 1 %d\r\n" % len(blob), b"+OK 1 %d.%d\r\n" % (validity, uid),
    ]
    assert wire.cmd("QUIT") == b"+OK Bye"
    assert "Traceback" not in server.log()


# -- failures and durability ---------------------------------------------------------------


def inject_expunge_failure(server: PymailServer, on: bool) -> None:
    """Make the index refuse to delete message rows (a real database error, raised by a
    trigger), or stop refusing."""
    storage: StorageSetup = server.storage  # type: ignore[attr-defined]
    if storage.pg is None:
        with sqlite3.connect(server.data_dir / "index.sqlite3") as db:
            if on:
                db.execute("CREATE TRIGGER pop3_test_refuse BEFORE DELETE ON messages "
                           "BEGIN SELECT RAISE(ABORT, 'injected failure'); END")
            else:
                db.execute("DROP TRIGGER pop3_test_refuse")
        return
    sql = (
        "CREATE FUNCTION pop3_test_refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected failure'; END $$; "
        "CREATE TRIGGER pop3_test_refuse BEFORE DELETE ON messages "
        "FOR EACH ROW EXECUTE FUNCTION pop3_test_refuse()"
    ) if on else "DROP TRIGGER pop3_test_refuse ON messages; DROP FUNCTION pop3_test_refuse()"
    asyncio.run(storage.pg.execute(sql, dbname=storage.database))


def test_quit_that_cannot_remove_says_sys_temp_and_keeps_everything(server: PymailServer, alice: str) -> None:
    deliver(server, message(1), alice)
    deliver(server, message(2), alice)
    inject_expunge_failure(server, True)
    try:
        wire = Wire.tls(server)
        wire.login(alice)
        assert wire.cmd("DELE 1").startswith(b"+OK")
        assert wire.cmd("QUIT") == b"-ERR [SYS/TEMP] Some deleted messages not removed, try again later"
        assert wire.until_closed() == b""
    finally:
        inject_expunge_failure(server, False)
    # nothing removed, and the \Deleted flag the session set on its way was taken back
    assert [flags for _, _, flags in server.inbox(alice)] == [frozenset(), frozenset()]
    client = login_when_unlocked(server, alice)
    client.dele(1)
    assert client.quit() == b"+OK Bye"
    [(_, blob, _)] = server.inbox(alice)
    assert blob.endswith(message(2))


def test_unreadable_or_missing_blob_gets_err_and_the_session_goes_on(server: PymailServer, alice: str) -> None:
    deliver(server, message(1), alice)
    deliver(server, message(2), alice)
    rows = server.inbox(alice)

    async def blob_keys() -> list[str]:
        store = server.store()
        try:
            user = await store.directory.get_user(alice)
            assert user is not None
            box = await store.index.get_mailbox(user.id, "INBOX")
            assert box is not None
            return [m.blob_key for m in await store.index.list_messages(box.id)]
        finally:
            await store.close()

    async def delete_blob(key: str) -> None:
        store = server.store()
        try:
            await store.blobs.delete(key)
        finally:
            await store.close()

    first_key, second_key = asyncio.run(blob_keys())
    wire = Wire.tls(server)
    wire.login(alice)
    if server.storage.pg is None:  # type: ignore[attr-defined]
        # the blob file replaced by a directory: reading it is a storage failure
        blob_file = next(p for p in (server.data_dir / "blobs").rglob(first_key + "*") if p.is_file())
        blob_file.rename(blob_file.with_name(blob_file.name + ".away"))
        blob_file.mkdir()
        assert wire.cmd("RETR 1") == b"-ERR [SYS/TEMP] Temporary failure, try again later"
        assert wire.cmd("TOP 1 0") == b"-ERR [SYS/TEMP] Temporary failure, try again later"
        assert "pop3 RETR failed: storage" in server.log()
    asyncio.run(delete_blob(second_key))
    assert wire.cmd("RETR 2") == b"-ERR Message no longer available"
    assert wire.cmd("STAT") == b"+OK 2 %d" % sum(len(b) for _, b, _ in rows)
    assert wire.cmd("QUIT") == b"+OK Bye"
    assert "Traceback" not in server.log()


def test_kill_9_right_after_quit_ok_keeps_the_removal(server: PymailServer, alice: str) -> None:
    for n in range(1, 4):
        deliver(server, message(n), alice)
    uids = [uid for uid, _, _ in server.inbox(alice)]
    client = server.pop3s_client(alice)
    client.dele(2)
    assert client.quit() == b"+OK Bye"
    server.kill()  # right after the +OK of QUIT
    assert [uid for uid, _, _ in server.inbox(alice)] == [uids[0], uids[2]]
    start(server)
    client = server.pop3s_client(alice)
    assert client.stat()[0] == 2
    assert client.uidl()[1][1].endswith(b".%d" % uids[2])
    client.quit()
