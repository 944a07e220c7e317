"""IMAP durability end to end: kill -9 while IMAPS clients APPEND (and EXPUNGE), then read
the mailbox back through the Index/BlobStore interfaces. An APPEND acknowledged with a
tagged OK must be stored byte-exact at the UID its `[APPENDUID v u]` named; an EXPUNGE
acknowledged must stay done; after a restart UIDs go on ascending, never reused.
Both backend pairs (the `storage` fixture)."""

from __future__ import annotations

import imaplib
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer

pytestmark = pytest.mark.slow

ALICE = "alice@example.test"
PASSWORD = "secret-pw"
THREADS = 6
TARGET = 150  # acknowledged APPENDs before the kill
APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")


def start(srv: PymailServer) -> PymailServer:
    return srv.start()  # returns once every configured listener accepts


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, storage_config=storage.config, imaps=True)
    srv.add_user(ALICE)
    start(srv)
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def message(thread: int, n: int) -> bytes:
    # varied sizes, a body line with a leading dot and trailing spaces, 8-bit bytes
    body = b"".join(b"line %d of message %d/%d \xc3\xa9  \r\n" % (i, thread, n) for i in range(1 + (n * 7) % 40))
    return (
        b"From: Loader <loader@example.test>\r\n"
        b"To: Alice <alice@example.test>\r\n"
        b"Subject: load %d/%d\r\n"
        b"Message-ID: <load-%d-%d@example.test>\r\n"
        b"\r\n"
        b".leading dot\r\n" % (thread, n, thread, n)
    ) + body


def append(client: imaplib.IMAP4, data: bytes, mailbox: str = "INBOX") -> tuple[int, int]:
    """APPEND; (uidvalidity, uid) from the tagged OK's APPENDUID."""
    typ, resp = client.append(mailbox, None, None, data)
    assert typ == "OK", (typ, resp)
    match = APPENDUID.search(resp[0])
    assert match, resp
    return int(match.group(1)), int(match.group(2))


class Loader:
    """THREADS threads, each with its own IMAPS session, APPENDing until stopped or the
    connection dies; `acked` holds (uidvalidity, uid, bytes) for every tagged OK."""

    def __init__(self, server: PymailServer) -> None:
        self.server = server
        self.lock = threading.Lock()
        self.acked: list[tuple[int, int, bytes]] = []
        self.sent: set[bytes] = set()
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(THREADS)]

    def run(self, thread: int) -> None:
        try:
            client = self.server.imaps_client(ALICE, PASSWORD)
        except Exception as e:  # noqa: BLE001 - recorded, asserted on by the test
            self.errors.append(f"thread {thread} login: {e!r}")
            return
        n = 0
        while not self.stop.is_set():
            data = message(thread, n)
            n += 1
            with self.lock:
                self.sent.add(data)
            try:
                validity, uid = append(client, data)
            except (OSError, imaplib.IMAP4.abort, EOFError):
                return  # the kill: this APPEND was never acknowledged
            with self.lock:
                self.acked.append((validity, uid, data))

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def __enter__(self) -> "Loader":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def test_kill_9_during_append_load_loses_no_acknowledged_message(server: PymailServer) -> None:
    started = time.monotonic()
    with Loader(server) as loader:
        deadline = time.monotonic() + 60
        while loader.count() < TARGET:
            assert time.monotonic() < deadline, f"only {loader.count()} APPENDs in 60 s: {loader.errors}\n{server.log()}"
            assert not loader.errors, loader.errors
            time.sleep(0.005)
        server.kill()  # SIGKILL with APPENDs in flight
    elapsed = time.monotonic() - started
    acked = list(loader.acked)
    assert len(acked) >= TARGET, elapsed
    validities = {v for v, _, _ in acked}
    assert len(validities) == 1, validities
    uids = [u for _, u, _ in acked]
    assert len(set(uids)) == len(uids), "APPENDUID named the same UID twice"

    stored = {uid: (blob, flags) for uid, blob, flags in server.inbox(ALICE)}
    for _, uid, data in acked:
        assert uid in stored, f"acknowledged UID {uid} lost after kill -9"
        assert stored[uid][0] == data, f"UID {uid}: stored bytes differ from the APPENDed ones"
    # whatever else survived must be one of the in-flight APPENDs, not garbage
    acked_uids = set(uids)
    for uid, (blob, _) in stored.items():
        if uid not in acked_uids:
            assert blob in loader.sent, f"UID {uid} holds bytes nobody appended"

    # restart: UIDVALIDITY stays, the next UID is above every earlier one
    start(server)
    client = server.imaps_client(ALICE, PASSWORD)
    validity, uid = append(client, message(99, 0))
    assert validity == validities.pop()
    assert uid > max(stored) and uid > max(uids), (uid, max(stored), max(uids))
    typ, data = client.select("INBOX")
    assert typ == "OK" and int(data[0]) == len(stored) + 1
    client.logout()
    assert server.inbox(ALICE)[-1][:2] == (uid, message(99, 0))


def test_kill_9_after_acknowledged_expunge(server: PymailServer) -> None:
    client = server.imaps_client(ALICE, PASSWORD)
    appended = [append(client, message(0, n))[1] for n in range(20)]
    doomed = appended[1::3]
    kept = [u for u in appended if u not in doomed]
    assert client.select("INBOX")[0] == "OK"
    uidset = ",".join(map(str, doomed))
    with Loader(server) as loader:  # APPENDs from other sessions keep going meanwhile
        deadline = time.monotonic() + 30
        while loader.count() < 20:
            assert time.monotonic() < deadline, loader.errors
            time.sleep(0.005)
        typ, _ = client.uid("STORE", uidset, "+FLAGS.SILENT", r"(\Deleted)")
        assert typ == "OK"
        typ, data = client.expunge()
        assert typ == "OK", data
        server.kill()  # right after the tagged OK of EXPUNGE
    acked = list(loader.acked)

    def check(stored: dict[int, bytes]) -> None:
        for uid in doomed:
            assert uid not in stored, f"expunged UID {uid} back after kill -9"
        for uid in kept:
            assert stored.get(uid) == message(0, appended.index(uid))
        for _, uid, data in acked:
            assert stored.get(uid) == data, f"acknowledged UID {uid} lost"

    check({uid: blob for uid, blob, _ in server.inbox(ALICE)})
    start(server)
    check({uid: blob for uid, blob, _ in server.inbox(ALICE)})
    client = server.imaps_client(ALICE, PASSWORD)
    assert client.select("INBOX")[0] == "OK"
    typ, data = client.uid("SEARCH", None, "ALL")
    assert typ == "OK"
    visible = {int(u) for u in data[0].split()}
    assert not visible & set(doomed), visible & set(doomed)
    assert set(kept) <= visible
    _, uid = append(client, message(98, 0))
    assert uid > max(appended + [u for _, u, _ in acked])
    client.logout()
