"""Prometheus metrics: every counter pymail keeps, defined once here.

Served at `/metrics` on the `[listen] http` addresses (`pymail.net.http`).  With
`server.workers > 1` each worker process counts on its own and prometheus_client's
multiprocess mode adds them up: `pymail serve` sets `$PROMETHEUS_MULTIPROC_DIR` to a fresh
`<data_dir>/metrics` before anything imports prometheus_client (it picks its mode at
import), so every forked worker writes its values to files there.

Names follow Prometheus conventions (`_total` counters, base units); label values are
small fixed sets (verdicts, reasons), never addresses or other client input.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess

ENV = "PROMETHEUS_MULTIPROC_DIR"

SMTP_TRANSACTIONS = Counter(
    "pymail_smtp_transactions_total",
    "SMTP transactions that reached the end of DATA, by outcome "
    "(accepted = stored durably; tempfail = 4xx; reject = 5xx).",
    ["service", "verdict"],
)
SMTP_RECIPIENTS_REFUSED = Counter(
    "pymail_smtp_recipients_refused_total",
    "RCPT TO refused, by reason (relay, unknown_user, storage, ...).",
    ["service", "reason"],
)
STORAGE_ERRORS = Counter(
    "pymail_storage_errors_total",
    "Backend failures answered with a temporary error, by what was being done.",
    ["operation"],
)
DELIVERY_SECONDS = Histogram(
    "pymail_delivery_seconds",
    "Time to make one message durable: blob write and index commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
MESSAGE_BYTES = Counter("pymail_stored_message_bytes_total", "Bytes of messages stored.")


def exposition() -> tuple[bytes, str]:
    """The text exposition format of every metric (all workers' in multiprocess mode)."""
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
