"""The MX service end to end: a real pymail process, real clients (smtplib, swaks, raw
sockets), storage read back through the Index/BlobStore interfaces."""

from __future__ import annotations

import hashlib
import re
import smtplib
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer, client_tool

MESSAGE = (
    b"From: Carol <carol@remote.example>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@remote.example>\r\n"
    b"\r\n"
    b"first line\r\n"
    b".leading dot stays\r\n"
    b"\r\n"
    b"last line\r\n"
)


def smtp(server: PymailServer) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", server.port, timeout=30)
    client.ehlo("client.remote.example")
    return client


class Raw:
    """A bare SMTP connection for what smtplib would correct or refuse to send."""

    def __init__(self, server: PymailServer) -> None:
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        self.buf = b""
        assert self.reply().startswith(b"220 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One complete (possibly multi-line) reply."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r} {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\r\n".join(lines)

    def cmd(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def body_of(blob: bytes) -> bytes:
    """The message as the client sent it: the blob minus the trace headers pymail added."""
    assert blob.startswith(b"Return-Path: <"), blob[:80]
    received = blob.index(b"\r\nReceived: ") + 2
    end = received
    # Received is folded over continuation lines that start with a tab.
    while True:
        end = blob.index(b"\r\n", end) + 2
        if blob[end:end + 1] != b"\t":
            return blob[end:]


# ----------------------------------------------------------------------- delivery


def test_smtplib_delivery_is_stored_byte_exact(server: PymailServer) -> None:
    with smtp(server) as client:
        refused = client.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE)
    assert refused == {}
    [(uid, blob, flags)] = server.inbox("alice@example.test")
    assert uid == 1
    assert body_of(blob) == MESSAGE
    assert blob.startswith(b"Return-Path: <carol@remote.example>\r\nReceived: from client.remote.example")
    assert b"by mx.test.example (pymail) with ESMTP id " in blob
    assert b"for <alice@example.test>;" in blob
    assert flags == frozenset()
    assert server.inbox("bob@example.test") == []


def test_swaks_delivery(server: PymailServer, tmp_path: Path) -> None:
    client_tool("swaks", "swaks")
    data = tmp_path / "msg.eml"
    # swaks sends the file's lines with CRLF and then "\r\n.\r\n": no final newline here
    data.write_bytes(MESSAGE.replace(b"\r\n", b"\n").removesuffix(b"\n"))
    out = subprocess.run(
        ["swaks", "--to", "bob@example.test", "--from", "carol@remote.example",
         "--server", f"127.0.0.1:{server.port}", "--helo", "swaks.remote.example",
         "--data", f"@{data}"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "<-  250 2.0.0 Ok: queued as " in out.stdout
    [(uid, blob, _)] = server.inbox("bob@example.test")
    assert body_of(blob) == MESSAGE  # swaks sends CRLF line ends and dot-stuffs


def test_uids_ascend_in_delivery_order(server: PymailServer) -> None:
    with smtp(server) as client:
        for n in range(5):
            msg = MESSAGE.replace(b"hello", f"number {n}".encode())
            client.sendmail("carol@remote.example", ["alice@example.test"], msg)
    stored = server.inbox("alice@example.test")
    assert [uid for uid, _, _ in stored] == [1, 2, 3, 4, 5]
    assert [b"Subject: number %d" % n in blob for n, (_, blob, _) in enumerate(stored)] == [True] * 5


def test_one_message_many_recipients_stored_once(server: PymailServer) -> None:
    server.cli("alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    with smtp(server) as client:
        client.sendmail("carol@remote.example", ["team@example.test", "alice@example.test"], MESSAGE)
    [(_, alice_blob, _)] = server.inbox("alice@example.test")  # reached twice, stored once
    [(_, bob_blob, _)] = server.inbox("bob@example.test")
    assert alice_blob == bob_blob
    assert b"\tfor <" not in alice_blob  # several recipients: no "for" clause
    assert server.blob_keys() == [hashlib.sha256(alice_blob).hexdigest()]


def test_null_sender_and_utf8_recipient(server: PymailServer) -> None:
    server.add_user("jörg@example.test")
    with smtp(server) as client:
        assert client.has_extn("smtputf8")
        client.sendmail("", ["alice@example.test"], MESSAGE)
        client.sendmail("bounce@remote.example", ["jörg@example.test"], MESSAGE, mail_options=["SMTPUTF8"])
    [(_, blob, _)] = server.inbox("alice@example.test")
    assert blob.startswith(b"Return-Path: <>\r\n")
    [(_, blob, _)] = server.inbox("jörg@example.test")
    assert b"with UTF8SMTP id" in blob


def test_ehlo_advertises_extensions(server: PymailServer) -> None:
    with smtp(server) as client:
        for ext in ("size", "8bitmime", "smtputf8", "pipelining", "enhancedstatuscodes"):
            assert client.has_extn(ext), ext
        assert client.esmtp_features["size"] == str(100 * 1024 * 1024)
        code, text = client.noop()
        assert (code, text[:5]) == (250, b"2.0.0")


def test_pipelined_transactions(server: PymailServer) -> None:
    raw = Raw(server)
    assert raw.cmd(b"EHLO pipe.remote.example").startswith(b"250-")
    body = MESSAGE.replace(b"\r\n.", b"\r\n..")
    raw.send(
        b"MAIL FROM:<carol@remote.example>\r\nRCPT TO:<alice@example.test>\r\n"
        b"RCPT TO:<nobody@example.test>\r\nDATA\r\n"
    )
    assert raw.reply().startswith(b"250 2.1.0")
    assert raw.reply().startswith(b"250 2.1.5")
    assert raw.reply().startswith(b"550 5.1.1")
    assert raw.reply().startswith(b"354")
    # the next transaction pipelined right behind the end of data
    raw.send(body + b".\r\nMAIL FROM:<>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert raw.reply().startswith(b"250 2.0.0 Ok: queued as")
    assert raw.reply().startswith(b"250 2.1.0")
    assert raw.reply().startswith(b"250 2.1.5")
    assert raw.reply().startswith(b"354")
    raw.send(b".\r\n")  # an empty message is still a message
    assert raw.reply().startswith(b"250 2.0.0")
    assert raw.cmd(b"QUIT").startswith(b"221")
    raw.close()
    [(_, blob, _)] = server.inbox("alice@example.test")
    assert body_of(blob) == MESSAGE
    [(_, blob, _)] = server.inbox("bob@example.test")
    assert body_of(blob) == b""


# ----------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        (b"<nobody@example.test>", b"550 5.1.1"),
        (b"<someone@remote.example>", b"554 5.7.1"),  # other domain: no relaying
        (b"<someone%remote.example@example.test>", b"554 5.7.1"),  # %-hack
        (b"<remote.example!someone@example.test>", b"554 5.7.1"),  # !-path
        (b"<@example.test:someone@remote.example>", b"554 5.7.1"),  # source route
        (b"<@remote.example:alice@example.test>", b"554 5.7.1"),  # source route to us
        (b'<"someone@remote.example"@example.test>', b"554 5.7.1"),  # quoted @
        (b"<alice@[127.0.0.1]>", b"554 5.7.1"),  # IP literal
        (b"<alice@[IPv6:::1]>", b"554 5.7.1"),
        (b"<alice@example.test.>", b"501 5.1.3"),
        (b"<alice>", b"501 5.1.3"),
        (b"<>", b"501 5.1.3"),
        (b"<alice@@example.test>", b"5"),
        (b"<j\xc3\xb6rg@example.test>", b"553 5.6.7"),  # UTF-8 without SMTPUTF8
    ],
)
def test_recipient_refused(server: PymailServer, rcpt: bytes, reply: bytes) -> None:
    raw = Raw(server)
    raw.cmd(b"EHLO relay.remote.example")
    assert raw.cmd(b"MAIL FROM:<carol@remote.example>").startswith(b"250")
    answer = raw.cmd(b"RCPT TO:" + rcpt)
    assert answer.startswith(reply), answer
    # nothing was accepted, so DATA is refused too
    assert raw.cmd(b"DATA").startswith(b"503 5.5.1")
    raw.close()
    assert server.inbox("alice@example.test") == []


def test_refusals_are_logged_one_line_each(server: PymailServer) -> None:
    raw = Raw(server)
    raw.cmd(b"EHLO relay.remote.example")
    raw.cmd(b"MAIL FROM:<carol@remote.example>")
    raw.cmd(b"RCPT TO:<victim@remote.example>")
    raw.cmd(b"QUIT")
    raw.close()
    deadline = time.monotonic() + 5
    while "reason=relay" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    [line] = [l for l in server.log().splitlines() if "reason=relay" in l]
    assert re.search(r"[0-9A-F]{10}: reject rip=127\.0\.0\.1 ", line), line
    assert "from=<carol@remote.example> to=<victim@remote.example>" in line
    assert 'reply="554 5.7.1' in line


def test_disabled_user_and_domain(server: PymailServer) -> None:
    server.cli("user", "disable", "bob@example.test")
    server.cli("domain", "add", "old.example")
    server.add_user("carl@old.example")
    server.cli("domain", "disable", "old.example")
    raw = Raw(server)
    raw.cmd(b"EHLO x.remote.example")
    raw.cmd(b"MAIL FROM:<carol@remote.example>")
    assert raw.cmd(b"RCPT TO:<bob@example.test>").startswith(b"550 5.2.1")
    assert raw.cmd(b"RCPT TO:<carl@old.example>").startswith(b"550 5.1.1")
    assert raw.cmd(b"RCPT TO:<alice@example.test>").startswith(b"250")
    raw.close()


def test_aliases_recursive_catch_all_and_loop(server: PymailServer) -> None:
    server.cli("alias", "add", "sales@example.test", "team@example.test")
    server.cli("alias", "add", "team@example.test", "alice@example.test", "bob@example.test")
    server.cli("alias", "add", "ping@example.test", "pong@example.test")
    server.cli("alias", "add", "pong@example.test", "ping@example.test")
    server.cli("alias", "add", "@example.test", "alice@example.test")
    with smtp(server) as client:
        client.sendmail("carol@remote.example", ["sales@example.test"], MESSAGE)
        client.sendmail("carol@remote.example", ["whoever@example.test"], MESSAGE)  # catch-all
        client.mail("carol@remote.example")
        code, text = client.rcpt("ping@example.test")
        assert (code, text[:5]) == (554, b"5.4.6")
    assert len(server.inbox("alice@example.test")) == 2
    assert len(server.inbox("bob@example.test")) == 1


def test_size_limit(tmp_path: Path, storage: StorageSetup) -> None:
    srv = PymailServer(tmp_path, storage_config=storage.config,
                       extra_config="[limits]\nmessage_size = \"10KB\"\n")
    srv.cli("domain", "add", "example.test")
    srv.add_user("alice@example.test")
    srv.start()
    try:
        with smtp(srv) as client:
            assert client.esmtp_features["size"] == "10240"
            code, text = client.mail("carol@remote.example", options=["SIZE=20000"])
            assert code == 552 and text.startswith(b"5.3.4")
            client.rset()
            big = MESSAGE + (b"x" * 70 + b"\r\n") * 200
            # smtplib declares SIZE=: refused at MAIL FROM
            with pytest.raises(smtplib.SMTPSenderRefused) as refused:
                client.sendmail("carol@remote.example", ["alice@example.test"], big)
            assert refused.value.smtp_code == 552
            # without SIZE= the content is read to its end, then refused
            assert client.mail("carol@remote.example")[0] == 250
            assert client.rcpt("alice@example.test")[0] == 250
            code, text = client.data(big)
            assert code == 552 and text.startswith(b"5.3.4")
            # the session goes on
            client.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE)
        assert [body_of(b) for _, b, _ in srv.inbox("alice@example.test")] == [MESSAGE]
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "payload",
    [
        # SMTP smuggling: a second message behind a non-standard end of data
        b"Subject: a\r\n\r\nbody\n.\nMAIL FROM:<x@remote.example>\nRCPT TO:<bob@example.test>\nDATA\nSubject: smuggled\n\n",
        b"Subject: a\r\n\r\nbody\r.\rMAIL FROM:<x@remote.example>\rRCPT TO:<bob@example.test>\rDATA\rSubject: smuggled\r\r",
        b"Subject: a\r\n\r\nbody\r\n.\nMAIL FROM:<x@remote.example>\r\n",
        b"Subject: a\r\n\r\nbody\n.\r\nMAIL FROM:<x@remote.example>\r\n",
        b"Subject: bare LF\n\nbody\n",
        b"Subject: bare CR\r\n\r\nbo\rdy\r\n",
    ],
)
def test_bare_cr_lf_refused(server: PymailServer, payload: bytes) -> None:
    raw = Raw(server)
    raw.cmd(b"EHLO smuggler.remote.example")
    raw.cmd(b"MAIL FROM:<carol@remote.example>")
    raw.cmd(b"RCPT TO:<alice@example.test>")
    assert raw.cmd(b"DATA").startswith(b"354")
    raw.send(payload + b"\r\n.\r\n")
    answer = raw.reply()
    assert answer.startswith(b"550 5.6.0"), answer
    # Nothing the payload carried ran as a command: the next reply is to our NOOP.
    assert raw.cmd(b"NOOP").startswith(b"250 2.0.0")
    raw.close()
    assert server.inbox("alice@example.test") == []
    assert server.inbox("bob@example.test") == []


def test_protocol_errors_get_replies_not_tracebacks(server: PymailServer) -> None:
    raw = Raw(server)
    assert raw.cmd(b"MAIL FROM:<a@b.example>").startswith(b"503")  # before EHLO
    assert raw.cmd(b"EHLO x.example").startswith(b"250")
    assert raw.cmd(b"RCPT TO:<alice@example.test>").startswith(b"503 5.5.1")
    assert raw.cmd(b"DATA").startswith(b"503 5.5.1")
    assert raw.cmd(b"BOGUS").startswith(b"500 5.5.2")
    # the MAIL line may be 512 + 26 (SIZE) + 10 (SMTPUTF8) + 100 (RFC 3461 DSN) + 11
    # (RFC 8689 REQUIRETLS) octets; RCPT 512 + 500 (NOTIFY, ORCPT)
    assert raw.cmd(b"MAIL FROM:<" + b"a" * 700 + b"@example.test>").startswith(b"500")
    assert raw.cmd(b"RCPT TO:<" + b"a" * 1100 + b"@example.test>").startswith(b"500")
    assert raw.cmd(b"MAIL FROM:<unclosed@example.test").startswith(b"5")
    assert raw.cmd(b"MAIL FROM:<ok@remote.example> BODY=9BIT").startswith(b"501")
    assert raw.cmd(b"MAIL FROM:<ok@remote.example>").startswith(b"250")
    assert raw.cmd(b"MAIL FROM:<ok@remote.example>").startswith(b"503")  # nested
    assert raw.cmd(b"RSET").startswith(b"250 2.0.0")
    assert raw.cmd(b"\xff\xfe").startswith(b"500")
    assert raw.cmd(b"QUIT").startswith(b"221 2.0.0")
    raw.close()
    assert "Traceback" not in server.log()


# ----------------------------------------------------------------------- failures


def test_file_storage_failure_is_a_tempfail_and_recovers(tmp_path: Path) -> None:
    """Embedded storage: the blob directory becomes unusable under a running server.
    (The PostgreSQL and S3 outages are in test_outages.py.)"""
    server = PymailServer(tmp_path)
    server.cli("domain", "add", "example.test")
    server.add_user("alice@example.test")
    server.start()
    try:
        _file_storage_failure(server)
    finally:
        server.stop()


def _file_storage_failure(server: PymailServer) -> None:
    blobs = server.data_dir / "blobs"
    moved = server.data_dir / "blobs.away"
    blobs.rename(moved)
    blobs.write_text("not a directory")  # every blob write now fails (even for root)
    try:
        with smtp(server) as client:
            with pytest.raises(smtplib.SMTPDataError) as failed:
                client.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE)
            assert failed.value.smtp_code == 451
            assert failed.value.smtp_error.startswith(b"4.3.0")
    finally:
        blobs.unlink()
        moved.rename(blobs)
    assert server.inbox("alice@example.test") == []  # nothing half-stored
    with smtp(server) as client:  # the same process recovers by itself
        client.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE)
    assert len(server.inbox("alice@example.test")) == 1
    assert "tempfail" in server.log()


def test_sigterm_is_graceful(server: PymailServer) -> None:
    idle = Raw(server)
    idle.cmd(b"EHLO idle.example")
    with smtp(server) as client:
        client.sendmail("carol@remote.example", ["alice@example.test"], MESSAGE)
    assert server.stop() == 0
    assert idle.reply().startswith(b"421 4.3.2")
    idle.close()
    assert "stopped" in server.log()
    assert len(server.inbox("alice@example.test")) == 1


def test_mailbox_over_quota_is_a_temporary_refusal(server: PymailServer) -> None:
    """virtual_users.quota on delivery: RCPT gets 452 4.2.2 when what the user keeps plus
    the declared SIZE would exceed it (the sender retries later; nothing is bounced or
    lost), for the user's address and for an alias reaching them."""
    server.cli("user", "add", "carol@example.test", "--quota", "8KB", "--password-stdin", input="pw-carol\n")
    server.cli("alias", "add", "team@example.test", "bob@example.test", "carol@example.test")
    body = b"x" * 5000
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail("s@remote.example", ["carol@example.test"], b"Subject: one\r\n\r\n" + body)
        # smtplib declares SIZE=: 5000 kept + 5000 more > 8 KiB
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("s@remote.example", ["carol@example.test"], b"Subject: two\r\n\r\n" + body)
        code, text = refused.value.recipients["carol@example.test"]
        assert (code, text[:5]) == (452, b"4.2.2")
        # the alias is refused as a whole: bob's copy is not delivered behind carol's back
        client.ehlo()
        code, _ = client.mail("s@remote.example", ["SIZE=5000"])
        assert code == 250
        code, text = client.rcpt("team@example.test")
        assert (code, text[:5]) == (452, b"4.2.2")
        code, _ = client.rcpt("bob@example.test")
        assert code == 250
        client.rset()
        # a small message still fits
        client.sendmail("s@remote.example", ["carol@example.test"], b"Subject: three\r\n\r\nshort\r\n")
    subjects = [blob.split(b"Subject: ")[1].split(b"\r\n")[0] for _, blob, _ in server.inbox("carol@example.test")]
    assert subjects == [b"one", b"three"]
    assert server.inbox("bob@example.test") == []
    assert re.search(r"reject rip=127\.0\.0\.1 .*to=<carol@example\.test> reason=over_quota\(user=<carol@example\.test>\)",
                     server.log())
