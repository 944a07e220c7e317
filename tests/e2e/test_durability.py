"""Every message that got 250 survives kill -9 of the server in the middle of a load."""

from __future__ import annotations

import smtplib
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
