"""Every message that got 250 survives kill -9 of the server in the middle of a load."""

from __future__ import annotations

import os
import smtplib
import socket
import threading
import time

from tests.pymail_harness import PymailServer

CLIENTS = 8


def _sender(server: PymailServer, worker: int, acked: list[str], stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
                while not stop.is_set():
                    marker = f"w{worker}-n{n}"
                    n += 1
                    msg = (
                        f"From: load@remote.example\r\nTo: alice@example.test\r\n"
                        f"Subject: {marker}\r\nMessage-ID: <{marker}@remote.example>\r\n\r\n"
                        + "line of body text\r\n" * 50
                    ).encode()
                    client.sendmail("load@remote.example", ["alice@example.test", "bob@example.test"], msg)
                    acked.append(marker)  # only after the 250
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.01)


def test_kill_9_loses_no_acknowledged_message(server: PymailServer) -> None:
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_sender, args=(server, w, acked, stop)) for w in range(CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acked) < 150 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.kill()  # SIGKILL while the clients are still sending
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= 150, "the load did not get going"

    for user in ("alice@example.test", "bob@example.test"):
        stored = server.inbox(user)  # every index row has its blob (get() would raise)
        subjects = {blob.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode() for _, blob, _ in stored}
        missing = [m for m in acked if m not in subjects]
        assert missing == [], f"{user}: {len(missing)} acknowledged messages lost, e.g. {missing[:5]}"
        uids = [uid for uid, _, _ in stored]
        assert uids == sorted(set(uids))

    # After a restart UIDs go on from where they were: never reused.
    before = max(uid for uid, _, _ in server.inbox("alice@example.test"))
    server.start()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as client:
        client.sendmail("x@remote.example", ["alice@example.test"], b"Subject: after\r\n\r\nx\r\n")
    after = server.inbox("alice@example.test")
    assert after[-1][0] > before
    assert after[-1][1].endswith(b"Subject: after\r\n\r\nx\r\n")


SPOOLED_CLIENTS = 4
#: Each message is over limits.spool_threshold (1 MiB): it goes through a spool file.
SPOOLED_BODY = b"".join(b"%06d spooled body line, long enough to fill the message.....\r\n" % n
                        for n in range(20_000))


def _spooled_sender(server: PymailServer, worker: int, acked: list[str], stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        try:
            with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
                while not stop.is_set():
                    marker = f"big-w{worker}-n{n}"
                    n += 1
                    msg = (f"From: load@remote.example\r\nTo: alice@example.test\r\n"
                           f"Subject: {marker}\r\n\r\n").encode() + SPOOLED_BODY
                    client.sendmail("load@remote.example", ["alice@example.test"], msg)
                    acked.append(marker)  # only after the 250
        except (OSError, smtplib.SMTPException):
            if stop.is_set():
                return
            time.sleep(0.01)


def test_kill_9_loses_no_acknowledged_spooled_message(server: PymailServer) -> None:
    """The same rule for messages that went through a spool file (> 1 MiB): every 250
    survives kill -9 with its bytes intact, and the spool files the killed server left
    (messages nobody acknowledged) are removed at the next start."""
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_spooled_sender, args=(server, w, acked, stop))
               for w in range(SPOOLED_CLIENTS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 90
    while len(acked) < 12 and time.monotonic() < deadline:
        time.sleep(0.02)
    # and one client surely in the middle of a spooled DATA when the kill comes
    half = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    half.sendall(b"EHLO half.example\r\nMAIL FROM:<h@remote.example>\r\n"
                 b"RCPT TO:<alice@example.test>\r\nDATA\r\n" + SPOOLED_BODY)
    spool = server.data_dir / "spool"
    while not os.listdir(spool) and time.monotonic() < deadline:
        time.sleep(0.01)
    server.kill()  # SIGKILL while the clients are in the middle of their DATA
    half.close()
    assert os.listdir(spool), "no spool file was left to clean up"
    stop.set()
    for t in threads:
        t.join(60)
    assert len(acked) >= 12, "the load did not get going"

    stored = {blob.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode(): blob
              for _, blob, _ in server.inbox("alice@example.test")}
    missing = [m for m in acked if m not in stored]
    assert missing == [], f"{len(missing)} acknowledged spooled messages lost, e.g. {missing[:5]}"
    for marker, blob in stored.items():
        assert blob.endswith(b"Subject: " + marker.encode() + b"\r\n\r\n" + SPOOLED_BODY), marker

    server.start()
    assert os.listdir(spool) == []  # the killed server's leftovers
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail("x@remote.example", ["alice@example.test"], b"Subject: after\r\n\r\n" + SPOOLED_BODY)
    assert server.inbox("alice@example.test")[-1][1].endswith(b"Subject: after\r\n\r\n" + SPOOLED_BODY)
