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

import datetime
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
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

# The outbound queue (pymail.store.queue), read from the shared index when /metrics is
# scraped (`refresh_queue`): every worker and node sees the same queue, so in
# multiprocess mode the workers' values are the same and "max" reports it once.
QUEUE_MESSAGES = Gauge(
    "pymail_queue_messages", "Messages in the outbound queue (not yet purged).",
    multiprocess_mode="max",
)
QUEUE_RECIPIENTS = Gauge(
    "pymail_queue_recipients", "Recipients in the outbound queue, by status "
    "(queued = waiting for an attempt; delivered/failed/expired until purged).",
    ["status"], multiprocess_mode="max",
)
QUEUE_OLDEST_SECONDS = Gauge(
    "pymail_queue_oldest_age_seconds",
    "Age of the oldest message with a recipient still waiting (0: none waits).",
    multiprocess_mode="max",
)
# The queue runner (pymail.delivery.runner): one count per recipient per attempt.
DELIVERY_ATTEMPTS = Counter(
    "pymail_delivery_attempts_total",
    "Outbound delivery attempts per recipient, by result (delivered = 2xx; deferred = "
    "temporary, retried; failed = permanent, bounced; expired = temporary past "
    "max_lifetime, bounced).",
    ["result"],
)
DSNS_SENT = Counter(
    "pymail_dsns_total",
    "Delivery status notifications pymail sent, by action (failed, delayed, relayed).",
    ["action"],
)
# The inbound checks (pymail.checks).
CHECK_RESULTS = Counter(
    "pymail_check_results_total",
    "Inbound check outcomes, by check (spf, dkim, dmarc, iprev, rspamd, clamav) and "
    "outcome (pass, fail, temperror, ..., error = the scanner was unavailable).",
    ["check", "outcome"],
)
CHECK_ERRORS = Counter(
    "pymail_check_errors_total",
    "Scans that failed because the scanner was unreachable, slow or answered garbage.",
    ["check"],
)
CHECK_SERVICE_UP = Gauge(
    "pymail_check_service_up",
    "1 when the scanner's last exchange worked, 0 while it is unavailable.",
    ["check"], multiprocess_mode="min",
)
# The served TLS certificates (pymail.net.tlsstore), set by each worker's certificate
# poller (at least once a minute) and at every reload; every worker serves the same
# files, so the most recent value of any of them is the answer.
TLS_CERTIFICATE_EXPIRY = Gauge(
    "pymail_tls_certificate_expiry_seconds",
    "Seconds until the served certificate's notAfter (negative: expired), by name (its "
    "first DNS subjectAltName, else its file).",
    ["name"], multiprocess_mode="mostrecent",
)
# The authentication cache (pymail.auth.cache): logins of local-domain users whose row
# was active, answered from the cache (hit) or by a full hash verification (miss).
AUTH_CACHE_HITS = Counter(
    "pymail_auth_cache_hits_total",
    "Logins accepted from the authentication cache, without a password hash verification.",
)
AUTH_CACHE_MISSES = Counter(
    "pymail_auth_cache_misses_total",
    "Logins of an active local user that the authentication cache could not accept "
    "(not cached, expired, password changed, or a different password): fully verified.",
)
#: Scrapes within this many seconds of the last reading reuse it (the counts are
#: queries on the index: a scraper polling every second must not load the database).
QUEUE_REFRESH_SECONDS = 5.0
_queue_read_at = -QUEUE_REFRESH_SECONDS


async def refresh_queue(queue: object, *, now: float, wall: "datetime.datetime") -> None:
    """Set the queue gauges from ``queue.stats()`` (a `QueueStore`), at most once per
    `QUEUE_REFRESH_SECONDS` of `now` (monotonic); `wall` is the time ages are measured
    at.  Backend errors propagate (the caller serves the other metrics anyway)."""
    global _queue_read_at
    if now - _queue_read_at < QUEUE_REFRESH_SECONDS:
        return
    stats = await queue.stats()  # type: ignore[attr-defined]
    _queue_read_at = now
    QUEUE_MESSAGES.set(stats.messages)
    for status in ("queued", "delivered", "failed", "expired"):
        QUEUE_RECIPIENTS.labels(status).set(stats.by_status.get(status, 0))
    QUEUE_OLDEST_SECONDS.set(
        max(0.0, (wall - stats.oldest).total_seconds()) if stats.oldest else 0.0)


def exposition() -> tuple[bytes, str]:
    """The text exposition format of every metric (all workers' in multiprocess mode)."""
    if os.environ.get(ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
