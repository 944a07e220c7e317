"""Real IMAP clients against a real pymail over real IMAPS (verified against the embedded
private CA): curl's IMAP, mbsync (isync) syncing a Maildir both ways, aioimaplib with
IDLE. Mail is delivered by smtplib to the same process; the store is read back through
the Index/BlobStore interfaces."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.e2e.test_imap import deliver
from tests.pymail_harness import PymailServer, client_tool

ALICE = "alice@example.test"
PASSWORD = "secret-pw"


def make_message(n: int) -> bytes:
    return (
        b"From: Carol <carol@remote.example>\r\n"
        b"To: Alice <alice@example.test>\r\n"
        b"Subject: client test %d\r\n"
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        b"Message-ID: <client-%d@remote.example>\r\n"
        b"\r\n"
        b"body of message %d\r\n"
        b"second line\r\n" % (n, n, n)
    )


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    (tmp_path / "srv").mkdir()
    srv = PymailServer(tmp_path / "srv", storage_config=storage.config, imaps=True)
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# -- curl --------------------------------------------------------------------------------


def curl(server: PymailServer, path: str, password: str = PASSWORD) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "20", "--cacert", str(server.ca_file),
         "--user", f"{ALICE}:{password}", f"imaps://127.0.0.1:{server.imaps_port}{path}"],
        capture_output=True, timeout=30,
    )


def test_curl_reads_and_lists(server: PymailServer) -> None:
    client_tool("curl", "curl")
    deliver(server, make_message(1))
    [(uid, stored, _)] = server.inbox(ALICE)
    assert uid == 1 and stored.endswith(make_message(1))

    result = curl(server, "/INBOX;UID=1")
    assert result.returncode == 0, result.stderr.decode()
    assert crlf(result.stdout) == crlf(stored), result.stdout

    result = curl(server, "/")
    assert result.returncode == 0, result.stderr.decode()
    listing = result.stdout.decode().splitlines()
    assert all(line.startswith("* LIST (") for line in listing), listing
    names = {line.rsplit(" ", 1)[1].strip('"') for line in listing}
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"} <= names, listing
    assert any(line.startswith("* LIST (") and "\\Sent" in line and line.endswith('"Sent"') for line in listing), listing

    result = curl(server, "/INBOX;UID=1", password="wrong")
    assert result.returncode == 67, (result.returncode, result.stderr.decode())  # CURLE_LOGIN_DENIED


# -- mbsync ------------------------------------------------------------------------------


def mbsync(rc: Path) -> str:
    result = subprocess.run(["mbsync", "-V", "-a", "-c", str(rc)], capture_output=True, text=True, timeout=30)
    output = f"mbsync -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    return output


def untuid(data: bytes) -> bytes:
    """Line endings normalised and mbsync's own tracking header (X-TUID, which it writes
    into the messages it stores or uploads) removed."""
    return re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", crlf(data))


def maildir_files(inbox: Path) -> list[Path]:
    return sorted(p for sub in ("new", "cur") for p in (inbox / sub).iterdir() if p.is_file())


def test_mbsync_syncs_both_ways(server: PymailServer, tmp_path: Path) -> None:
    client_tool("mbsync", "isync")
    for n in (1, 2, 3):
        deliver(server, make_message(n))
    stored = {uid: blob for uid, blob, _ in server.inbox(ALICE)}
    assert len(stored) == 3

    version = subprocess.run(["mbsync", "--version"], capture_output=True, text=True).stdout.split()[-1]
    tls_keyword = "SSLType" if tuple(int(x) for x in version.split(".")[:2]) < (1, 5) else "TLSType"
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    rc = tmp_path / "mbsyncrc"
    # isync 1.4 (Debian 12) spells TLSType as SSLType (1.5 accepts both), and matches the
    # certificate against DNS names only, never an IP SAN: connect as "localhost" (a DNS SAN
    # of the embedded certificate) rather than 127.0.0.1, which it rejects with
    # "certificate owner does not match hostname 127.0.0.1".
    rc.write_text(
        f"""IMAPAccount pymail
Host localhost
Port {server.imaps_port}
User {ALICE}
Pass {PASSWORD}
{tls_keyword} IMAPS
CertificateFile {server.ca_file}

IMAPStore far
Account pymail

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX

Channel pymail
Far :far:
Near :near:
Patterns INBOX
Create Both
Expunge Both
SyncState *
"""
    )
    inbox = maildir / "INBOX"

    # 1. server -> Maildir
    output = mbsync(rc)
    files = maildir_files(inbox)
    assert sorted(untuid(p.read_bytes()) for p in files) == sorted(crlf(b) for b in stored.values()), output

    # 2. Maildir -> server
    local = make_message(4).replace(b"\r\n", b"\n")
    (inbox / "new" / f"{int(time.time())}.pymailtest.localhost").write_bytes(local)
    output = mbsync(rc)
    after = {uid: blob for uid, blob, _ in server.inbox(ALICE)}
    new = [blob for uid, blob in after.items() if uid not in stored]
    assert len(new) == 1 and untuid(new[0]) == crlf(local), output
    assert len(maildir_files(inbox)) == 4, output

    # 3. deleted locally (one flagged T, one removed) -> expunged on the server
    def local_file(n: int) -> Path:
        [path] = [p for p in maildir_files(inbox) if f"client test {n}".encode() in p.read_bytes()]
        return path

    trashed = local_file(1)
    name = trashed.name
    if ":2," in name:
        base, flags = name.split(":2,", 1)
        name = f"{base}:2,{''.join(sorted(set(flags + 'T')))}"
    else:
        name = f"{name}:2,T"
    trashed.rename(inbox / "cur" / name)
    local_file(2).unlink()
    output = mbsync(rc)
    remaining = server.inbox(ALICE)
    subjects = sorted(blob.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for _, blob, _ in remaining)
    assert subjects == [b"client test 3", b"client test 4"], output
    assert len(maildir_files(inbox)) == 2, output


# -- aioimaplib --------------------------------------------------------------------------


def test_aioimaplib_fetch_and_idle(server: PymailServer) -> None:
    import aioimaplib

    deliver(server, make_message(1))
    [(_, stored, _)] = server.inbox(ALICE)

    async def run() -> None:
        context = ssl.create_default_context(cafile=str(server.ca_file))
        client = aioimaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=context, timeout=15)
        await client.wait_hello_from_server()
        response = await client.login(ALICE, PASSWORD)
        assert response.result == "OK", response
        response = await client.select("INBOX")
        assert response.result == "OK", response
        assert b"1 EXISTS" in response.lines, response
        response = await client.fetch("1", "(UID BODY.PEEK[])")
        assert response.result == "OK", response
        literals = [bytes(line) for line in response.lines if isinstance(line, bytearray)]
        assert literals == [stored], response

        idle = await client.idle_start(timeout=20)
        thread = threading.Thread(target=deliver, args=(server, make_message(2)))
        thread.start()
        pushed: list[bytes] = []
        deadline = time.monotonic() + 5
        while b"2 EXISTS" not in pushed:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no EXISTS pushed while idling: {pushed}"
            pushed += [x.encode() if isinstance(x, str) else bytes(x)
                       for x in await client.wait_server_push(timeout=remaining)]
        thread.join(30)
        client.idle_done()
        response = await asyncio.wait_for(idle, 5)
        assert response.result == "OK", response
        response = await client.fetch("2", "(FLAGS)")
        assert response.result == "OK", response
        await client.logout()

    asyncio.run(run())
