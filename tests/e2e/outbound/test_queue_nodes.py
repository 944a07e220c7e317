"""Two pymail nodes on one PostgreSQL (+ one S3 bucket for the blobs, as
tests/e2e/test_nodes.py runs them) drain one outbound queue: every recipient is delivered
once, and never by both nodes at the same time.

The remote: four domains ``d0.test`` .. ``d3.test`` whose MX is one `RecordingMx` on
127.0.0.5, which records for each (Message-ID, recipient) which node delivered it (the
EHLO name: ``mail.example.test`` or ``mail2.example.test``) and the window of that
delivery (its RCPT to the end of DATA), holding each DATA 50 ms so that transactions
last.  Each node runs with ``concurrency = 8`` and ``per_domain = 2``: 8 transactions at
once, so neither node alone can drain the queue quickly and both claim from it all the
time (``FOR UPDATE SKIP LOCKED`` and the leases are what keep them apart).

alice submits 300 messages, each to two recipients in two of the domains, half through
each node's submission port: 600 (message, recipient) deliveries."""

from __future__ import annotations

import collections
import smtplib
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import make_storage
from tests.internet import Internet
from tests.pymail_harness import PymailServer
from tests.services.recording_mx import RecordingMx, overlapping

ALICE, PASSWORD = "alice@example.test", "secret-pw"
DOMAINS = [f"d{i}.test" for i in range(4)]
MESSAGES = 300
NODES = ("mail.example.test", "mail2.example.test")
DELIVERY = """[delivery]
concurrency = 8
per_domain = 2
retry_first = "1s"
retry_max = "2s"
"""


def recipients(n: int) -> list[str]:
    return [f"u{n}@{DOMAINS[n % 4]}", f"v{n}@{DOMAINS[(n + 1) % 4]}"]


def submit(server: PymailServer, numbers: list[int], errors: list[str]) -> None:
    try:
        client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=60)
        client.ehlo("laptop.example")
        client.starttls(context=ssl.create_default_context(cafile=str(server.ca_file)))
        client.ehlo("laptop.example")
        client.login(ALICE, PASSWORD)
        for n in numbers:
            data = (f"From: Alice <{ALICE}>\r\nTo: undisclosed-recipients:;\r\n"
                    f"Subject: nodes {n}\r\nMessage-ID: <nodes-{n}@example.test>\r\n\r\n"
                    f"Message {n}.\r\n")
            refused = client.sendmail(ALICE, recipients(n), data.encode())
            if refused:
                errors.append(f"{n}: {refused}")
        client.quit()
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(repr(e))


@pytest.mark.slow
def test_two_nodes_drain_one_queue_without_delivering_twice(
        internet: Internet, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    storage = make_storage("postgres+s3", request, tmp_path)
    for domain in DOMAINS:
        internet.set_zone(domain, "@ MX 10 mx\nmx A 127.0.0.5\n")
    nodes = []
    for i, hostname in enumerate(NODES):
        (tmp_path / f"n{i}").mkdir()
        nodes.append(PymailServer(tmp_path / f"n{i}", hostname=hostname, submission=True,
                                  storage_config=storage.config,
                                  extra_config=internet.dns_config() + DELIVERY))
    nodes[0].add_user(ALICE, PASSWORD)  # one directory: node 2 knows alice too
    with RecordingMx("127.0.0.5", data_delay=0.05) as mx:
        try:
            for node in nodes:
                node.start()
            errors: list[str] = []
            threads = [threading.Thread(target=submit, args=(nodes[c % 2], list(range(c, MESSAGES, 4)), errors))
                       for c in range(4)]
            t0 = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert errors == []
            expected = {(f"nodes-{n}@example.test", r) for n in range(MESSAGES) for r in recipients(n)}
            deliveries = mx.wait_for(len(expected), timeout=90)
            drained = time.monotonic()
            deadline = time.monotonic() + 30
            while (stats := nodes[0].queue_stats()).recipients_queued and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)  # anything delivered twice would arrive by now
            deliveries = mx.recorded()
        finally:
            for node in nodes:
                if node.proc is not None and node.proc.poll() is None:
                    node.stop()
    keys = collections.Counter((d.message_id, d.recipient) for d in deliveries)
    by_node = collections.Counter(d.helo for d in deliveries)
    twice = {k: c for k, c in keys.items() if c > 1}
    print(f"\ntwo nodes: {len(deliveries)} deliveries of {len(expected)} recipients in "
          f"{drained - t0:.1f}s; by node {dict(by_node)}; twice {len(twice)}; "
          f"overlapping {len(overlapping(deliveries))}")
    assert set(keys) == expected, sorted(expected - set(keys))[:10]
    assert twice == {}
    assert overlapping(deliveries) == []
    assert stats.recipients_queued == 0 and set(stats.by_status) <= {"delivered"}, stats
    assert set(by_node) == set(NODES)
    assert min(by_node.values()) >= len(expected) // 10, by_node  # both were busy
    for node in nodes:
        assert "Traceback" not in node.log()
