"""The queue survives ``kill -9``: a run of 1,000 messages into Postfix's smtp-sink, pymail
killed hard in the middle, restarted, and every message arrives at least once.

The remote is ``sink.test`` (MX ``mx.sink.test`` = 127.0.0.3, published in the test NSD),
where Postfix's ``smtp-sink`` keeps one file per message it accepted (``-d``; a transaction
cut off before its final "." leaves none), so the test counts deliveries by Message-ID.

How the run goes:

1. The sink starts and is paused (SIGSTOP: the kernel accepts connections, nothing
   greets), pymail starts with ``concurrency = per_domain = 20``: its first 20 recipients
   wait for a greeting, every slot is taken, nothing more is claimed.
2. alice submits 1,000 messages on 587 (STARTTLS + AUTH) over 4 connections, one
   recipient each (``r<n>@sink.test``): all queued, durable, 250 each.
3. The sink resumes; once it has 300 messages, pymail gets SIGKILL -- mid-run, with up
   to 20 transactions in flight and their recipients leased (``lease = 30s``, the least).
4. pymail starts again on the same data; it delivers what was never claimed at once,
   and the 20 leased recipients once their lease ends.  The test waits until the queue
   has nothing QUEUED left.

Then: every Message-ID is at the sink at least once (none lost), nothing failed or
expired, and the duplicates -- delivered before the kill but not yet recorded, so sent
again after it (at-least-once, RFC 5321 section 6.1 allows it, section 4.5.3.2 explains
why) -- are printed and at most what was in flight: ``per_domain`` transactions of one
recipient each."""

from __future__ import annotations

import collections
import smtplib
import ssl
import threading
import time
from pathlib import Path

import pytest

from tests.internet import PYMAIL_HOSTNAME, Internet
from tests.pymail_harness import PymailServer
from tests.services.postfix import SmtpSink

ALICE, PASSWORD = "alice@example.test", "secret-pw"
SINK_DOMAIN, SINK_ZONE = "sink.test", "@ MX 10 mx\nmx A 127.0.0.3\n"
MESSAGES = 1000
CONNECTIONS = 4
KILL_AFTER = 300
IN_FLIGHT = 20  #: concurrency = per_domain: the most transactions at once (one domain)
DELIVERY = f"""[delivery]
concurrency = {IN_FLIGHT}
per_domain = {IN_FLIGHT}
lease = "30s"
retry_first = "1s"
retry_max = "2s"
"""


def message_id(n: int) -> str:
    return f"durable-{n}@example.test"


def submit_range(server: PymailServer, numbers: range, errors: list[str]) -> None:
    """alice sends one message per number over one authenticated connection."""
    try:
        client = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=60)
        client.ehlo("laptop.example")
        client.starttls(context=ssl.create_default_context(cafile=str(server.ca_file)))
        client.ehlo("laptop.example")
        client.login(ALICE, PASSWORD)
        for n in numbers:
            rcpt = f"r{n}@{SINK_DOMAIN}"
            data = (f"From: Alice <{ALICE}>\r\nTo: <{rcpt}>\r\nSubject: durable {n}\r\n"
                    f"Message-ID: <{message_id(n)}>\r\n\r\nMessage {n} of the kill -9 run.\r\n")
            refused = client.sendmail(ALICE, [rcpt], data.encode())
            if refused:
                errors.append(f"{n}: {refused}")
        client.quit()
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(f"{numbers}: {e!r}")


@pytest.mark.slow
def test_kill_9_mid_run_loses_nothing(internet: Internet, tmp_path: Path) -> None:
    internet.set_zone(SINK_DOMAIN, SINK_ZONE)
    (tmp_path / "pymail").mkdir()
    sink = SmtpSink("127.0.0.3", hostname=f"mx.{SINK_DOMAIN}", keep=True).start()
    server = PymailServer(tmp_path / "pymail", hostname=PYMAIL_HOSTNAME, submission=True,
                          extra_config=internet.dns_config() + DELIVERY)
    try:
        server.add_user(ALICE, PASSWORD)
        sink.pause()
        server.start()
        t0 = time.monotonic()
        errors: list[str] = []
        share = MESSAGES // CONNECTIONS
        threads = [threading.Thread(target=submit_range,
                                    args=(server, range(i * share, (i + 1) * share), errors))
                   for i in range(CONNECTIONS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        queued = server.queue_stats()
        submitted = time.monotonic()
        assert queued.recipients_queued == MESSAGES
        print(f"\nkill -9 run: {MESSAGES} messages submitted in {submitted - t0:.1f}s")

        sink.resume()
        deadline = time.monotonic() + 60
        while sink.messages() < KILL_AFTER and time.monotonic() < deadline:
            time.sleep(0.005)
        server.proc.kill()  # SIGKILL: no shutdown, no lease handed back
        server.proc.wait(10)
        server.log_file.close()
        killed = time.monotonic()
        at_kill = server.queue_stats()
        time.sleep(0.2)  # the sink finishes what was sent before the kill
        before = len(sink.received())
        print(f"kill -9 after {killed - submitted:.1f}s of delivery: sink had {before} "
              f"message(s); the queue said {at_kill.by_status}")
        assert KILL_AFTER <= before < MESSAGES, "the kill did not come mid-run"

        server.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            stats = server.queue_stats()
            if stats.recipients_queued == 0:
                break
            time.sleep(0.2)
        drained = time.monotonic()
        assert stats.recipients_queued == 0, (stats, server.log()[-3000:])
        assert set(stats.by_status) <= {"delivered"}, stats.by_status
        time.sleep(0.2)
        server.stop()

        received = sink.received()
        counts = collections.Counter(m.message_id for m in received)
        expected = {message_id(n) for n in range(MESSAGES)}
        lost = expected - set(counts)
        duplicates = {mid: c - 1 for mid, c in counts.items() if c > 1}
        print(f"after the restart: drained in {drained - killed:.1f}s; the sink has "
              f"{len(received)} message(s) for {len(counts)} Message-IDs: lost {len(lost)}, "
              f"duplicates {sum(duplicates.values())} (in flight at most {IN_FLIGHT})")
        assert not lost, sorted(lost)[:20]
        assert set(counts) == expected
        assert all(m.rcpt_tos == (f"r{m.message_id.split('-')[1].split('@')[0]}@{SINK_DOMAIN}",)
                   for m in received)
        assert sum(duplicates.values()) <= IN_FLIGHT, duplicates
        assert "Traceback" not in server.log()
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
        sink.stop()
