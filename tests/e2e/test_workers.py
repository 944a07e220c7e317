"""Several worker processes share the port (SO_REUSEPORT) and one embedded store."""

from __future__ import annotations

import re
import smtplib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer


def test_two_workers_share_port_and_store(tmp_path: Path, storage: StorageSetup) -> None:
    srv = PymailServer(tmp_path, workers=2, storage_config=storage.config)
    srv.cli("domain", "add", "example.test")
    srv.add_user("alice@example.test")
    srv.start()
    try:
        def send(n: int) -> None:
            # a new connection per message so the kernel spreads them over the workers
            with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
                client.sendmail("c@remote.example", ["alice@example.test"], f"Subject: {n}\r\n\r\nx\r\n".encode())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(send, range(80)))
        stored = srv.inbox("alice@example.test")
        assert [uid for uid, _, _ in stored] == list(range(1, 81))
        assert sorted(int(blob.split(b"Subject: ")[1].split(b"\r\n")[0]) for _, blob, _ in stored) == list(range(80))
        pids = set(re.findall(r"pymail\.smtp\[(\d+)\]: \w+: accepted", srv.log()))
        assert len(pids) == 2, pids
    finally:
        assert srv.stop() == 0
    assert srv.log().count("stopped") == 2
