"""A full disk, for real: pymail's data_dir on a 40 MiB tmpfs that the test fills.

What an admin expects when the disk fills (issue 10, "Full disk"):
* below ``storage.min_free_space`` new mail is refused with a temporary error -- SMTP
  ``452 4.3.1`` at MAIL, IMAP APPEND ``NO [OVERQUOTA]`` -- and ``/healthz`` answers
  503 ``degraded: disk full``;
* with the disk filled to the last byte by someone else, a user can still make room:
  STORE ``\\Deleted`` and EXPUNGE commit (the space reserve beside the SQLite index is
  given back to that write);
* once there is room again, mail is accepted, /healthz is ok and the reserve is back.
Nothing is half-stored and nothing is logged as an ERROR on the way.
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymail.store.space import RESERVE_NAME
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
MiB = 1024 * 1024


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PymailServer]:
    data = tmp_path / "data"
    data.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(data)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    srv = PymailServer(tmp_path, imaps=True, http=True, extra_config=(
        '[limits]\nmessage_size = "2MB"\n[storage]\nmin_free_space = "8MB"\n'))
    try:
        srv.add_user(ALICE)
        srv.start()
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
        subprocess.run(["umount", "-l", str(data)], check=False)


def send(srv: PymailServer, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.sendmail("carol@remote.example", [ALICE],
                        f"From: carol@remote.example\r\nSubject: {subject}\r\n\r\nhello\r\n")


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill(path: Path, leave: int) -> None:
    """Grow `path`/filler until `leave` bytes (0: none at all) are free."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for block in (MiB, 65536, 4096, 512, 1):
            chunk = b"x" * block
            while free_bytes(path) - block >= leave:
                try:
                    os.write(fd, chunk)
                except OSError:
                    break
    finally:
        os.close(fd)


def wait_health(srv: PymailServer, wanted: int, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        status, body = srv.http_get("/healthz")
        if status == wanted or time.monotonic() > deadline:
            assert status == wanted, body
            return body
        time.sleep(0.25)


def truncate_wal(index: Path) -> None:
    """Checkpoint the index's WAL down to nothing, so the next write needs new space."""
    for _ in range(50):
        conn = sqlite3.connect(index, timeout=5)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        if not Path(f"{index}-wal").exists() or Path(f"{index}-wal").stat().st_size == 0:
            return
        time.sleep(0.1)
    raise AssertionError("the WAL could not be truncated")


def test_a_full_disk_refuses_new_mail_lets_users_delete_and_recovers(server: PymailServer) -> None:
    srv, data = server, server.data_dir
    reserve = data / RESERVE_NAME
    for n in range(3):
        send(srv, f"before {n}")
    assert reserve.exists() and reserve.stat().st_size == 8 * MiB
    assert wait_health(srv, 200) == "ok\n"

    # Below min_free_space: new mail is refused, temporarily, before it is sent.
    fill(data, leave=4 * MiB)
    body = wait_health(srv, 503)
    assert body.startswith("degraded: disk full: ") and "below min_free_space 8.0 MiB" in body
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
        client.ehlo("mx.remote.example")
        code, text = client.mail("carol@remote.example")
        assert (code, text[:5]) == (452, b"4.3.1"), text
    imap = srv.imaps_client(ALICE)
    try:
        typ, data_ = imap.append("INBOX", None, None, b"Subject: appended\r\n\r\nhi\r\n")
        assert typ == "NO" and data_[0].startswith(b"[OVERQUOTA] Not enough disk space"), data_
        # the same for an APPEND above spool_threshold, streamed to the spool: refused
        # once it arrived, its spool file gone
        big = b"Subject: appended big\r\n\r\n" + b"a line of a large APPEND\r\n" * 60000
        typ, data_ = imap.append("INBOX", None, None, big)
        assert typ == "NO" and data_[0].startswith(b"[OVERQUOTA] Not enough disk space"), data_
        deadline = time.monotonic() + 5
        while os.listdir(data / "spool") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.listdir(data / "spool") == []

        # Filled to the last byte by someone else, with no WAL left to reuse: deleting
        # mail still works, on the reserve.
        truncate_wal(data / "index.sqlite3")
        fill(data, leave=0)
        assert free_bytes(data) < 4096
        imap.select("INBOX")
        typ, _ = imap.store("1:2", "+FLAGS", "(\\Deleted)")
        assert typ == "OK"
        typ, expunged = imap.expunge()
        assert typ == "OK" and expunged == [b"2", b"1"], expunged  # highest first
        assert not reserve.exists()
        assert "space reserve: released 8 MiB" in srv.log()
        typ, found = imap.search(None, "ALL")
        assert typ == "OK" and found == [b"1"]
    finally:
        imap.logout()

    # Room again: mail flows, /healthz is ok and the reserve is made again.
    (data / "filler").unlink()
    assert wait_health(srv, 200) == "ok\n"
    send(srv, "after")
    assert [b"Subject: after" in blob for _, blob, _ in srv.inbox(ALICE)] == [False, True]
    deadline = time.monotonic() + 20
    while not reserve.exists() and time.monotonic() < deadline:
        time.sleep(0.25)
    assert reserve.exists()
    srv.stop()
    log = srv.log()
    assert "disk full: " in log and "disk space back: " in log
    for bad in (" ERROR ", "Traceback"):
        assert bad not in log, log[-3000:]
