"""The HTTP service: /healthz follows the storage, /metrics counts what the MX did."""

from __future__ import annotations

import re
import smtplib
from pathlib import Path

from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus exposition (0 if absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))).strip(",") == want:
            return float(m.group(3))
    return 0.0


def test_metrics_and_health(tmp_path: Path, storage: StorageSetup) -> None:
    srv = PymailServer(tmp_path, storage_config=storage.config, http=True)
    srv.add_user("alice@example.test")
    srv.start()
    try:
        assert srv.http_get("/healthz") == (200, "ok\n")
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
            client.sendmail("c@remote.example", ["alice@example.test"], b"Subject: m\r\n\r\nx\r\n")
            client.mail("c@remote.example")
            assert client.rcpt("x@elsewhere.example")[0] == 554
            assert client.rcpt("nobody@example.test")[0] == 550
        status, text = srv.http_get("/metrics")
        assert status == 200
        assert metric(text, "pymail_smtp_transactions_total", service="smtp", verdict="accepted") == 1
        assert metric(text, "pymail_smtp_recipients_refused_total", service="smtp", reason="relay") == 1
        assert metric(text, "pymail_smtp_recipients_refused_total", service="smtp", reason="unknown_user") == 1
        assert metric(text, "pymail_delivery_seconds_count") == 1
        assert srv.http_get("/nothing")[0] == 404
    finally:
        srv.stop()


def test_health_follows_storage_and_workers_add_up(tmp_path: Path) -> None:
    srv = PymailServer(tmp_path, http=True, workers=2)
    srv.add_user("alice@example.test")
    srv.start()
    try:
        for n in range(20):  # new connections: the kernel spreads them over both workers
            with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
                client.sendmail("c@remote.example", ["alice@example.test"], f"Subject: {n}\r\n\r\n".encode())
        _, text = srv.http_get("/metrics")  # whichever worker answers sums all of them
        assert metric(text, "pymail_smtp_transactions_total", service="smtp", verdict="accepted") == 20
        blobs = srv.data_dir / "blobs"
        blobs.rename(srv.data_dir / "away")
        blobs.write_text("not a directory")
        status, body = srv.http_get("/healthz")
        assert status == 503 and body.startswith("storage: ")
    finally:
        srv.stop()
