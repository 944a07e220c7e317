"""The outbound benchmark: how fast does pymail's queue drain into remote MXes?

    scripts/bench.sh outbound --count 1000 --concurrency 10 --size 4k --domains 1,100
    scripts/bench.sh outbound --dkim off --domains 1 --inbound-count 0     # one row, no inbound

Runs only inside a private network namespace (scripts/bench.sh makes one with ``unshare
--net``, as scripts/test.sh does for the tests, and sets ``PYMAIL_BENCH_NETNS=1``): the
remote MX is Postfix's ``smtp-sink`` on 127.0.0.3 port 25 -- pymail's production path,
the MX found in DNS, port 25 -- and the DNS is a private NSD (tests/services/nsd.py)
serving ``sink.test``: ``d0.sink.test`` .. ``d99.sink.test``, each ``MX 10 mx.sink.test``
= 127.0.0.3.

One row per (DKIM on/off, number of recipient domains), each on a fresh pymail (embedded
default: SQLite + file blobs in a temporary data directory, one worker, ``[delivery]``
defaults: ``concurrency = 100``, ``per_domain = 20``) and a fresh smtp-sink:

1. user ``alice@bench.example`` is made with the CLI; with DKIM, ``pymail dkim keygen
   bench.example`` writes an RSA-2048 key and ``[dkim] sign = true``;
2. ``--concurrency`` client connections to submissions (implicit TLS, port-465 style;
   the embedded default's CA verified) log in (AUTH PLAIN; argon2id, not measured),
   then send ``--count`` messages of ``--size`` between them, one recipient each,
   ``u<n>@d<n mod domains>.sink.test`` (aiosmtplib, one transaction at a time per
   connection);
3. the row ends when the sink has every message.

Columns: ``msgs/s`` = count / (first MAIL FROM sent -> the last message complete at the
sink); ``submit/s`` the submission phase alone; ``q->remote p50/p99/max ms`` per message:
the 250 of submission (the message is queued and durable) -> the moment smtp-sink had the
whole message, i.e. the mtime of the file it keeps per message (``smtp-sink -d``, one file
per transaction, matched by Message-ID; the kernel's file time is coarse: a few ms);
``srv cpu ms/msg`` user+sys CPU of the server process over the row (submission,
queueing, signing and delivery together) per message; ``srv cores`` the same per wall
second; ``cli cores`` the load generator's own CPU; ``dup``/``lost`` Message-IDs the sink
has more than once / not at all.

Inbound, the same session: after the rows, ``benchmarks/delivery.py --concurrency 10
--size 4k --count <--inbound-count>`` runs (its own pymail, loopback, no namespace
needed) and its ``acc/s`` is printed beside the outbound rows.

Results: the table on stdout, JSON in benchmarks/results/outbound-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import email.utils
import json
import os
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.delivery import (
    BENCH_PASSWORD,
    RESULTS_DIR,
    BenchError,
    PymailProcess,
    build_body_lines,
    cpu_seconds_tree,
    free_port,
    git_revision,
    own_cpu_seconds,
    parse_levels,
    parse_size,
    percentile,
)

REPO = Path(__file__).resolve().parents[1]
SENDER_DOMAIN = "bench.example"
SENDER = f"alice@{SENDER_DOMAIN}"
SINK_ZONE = "sink.test"
SINK_ADDRESS = "127.0.0.3"
MAX_DOMAINS = 1000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks.outbound", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=1000, help="messages per row (default 1000)")
    p.add_argument("--concurrency", type=int, default=10, help="submission connections (10)")
    p.add_argument("--size", type=parse_size, default=parse_size("4k"), help="message size (4k)")
    p.add_argument("--domains", type=parse_levels, default=[1, 100],
                   help="recipient domain counts, one row each (default 1,100)")
    p.add_argument("--dkim", default="off,on", help="off, on or off,on (default)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per row (300)")
    p.add_argument("--inbound-count", type=int, default=2000,
                   help="messages for the inbound figure (delivery.py c=10 4k); 0 skips it")
    p.add_argument("--json", type=Path, default=None, help="where the JSON goes")
    p.add_argument("--keep-data", action="store_true", help="keep the data directories")
    return p


@dataclass
class Row:
    dkim: bool
    domains: int
    count: int
    concurrency: int
    sent: int
    errors: dict[str, int]
    at_sink: int
    signed: int  #: messages at the sink with a DKIM-Signature header
    duplicates: int
    lost: int
    wall_seconds: float
    msgs_per_second: float
    submit_per_second: float
    latency_ms: dict[str, float | None]
    server_cpu_ms_per_message: float | None
    server_cores: float | None
    client_cores: float


def make_message(seq: int, rcpt: str, body: bytes, run_id: str) -> bytes:
    return (f"Date: {email.utils.formatdate(localtime=True)}\r\n"
            f"From: Alice <{SENDER}>\r\nTo: <{rcpt}>\r\n"
            f"Subject: Outbound benchmark message {seq:08d}\r\n"
            f"Message-ID: <{run_id}.{seq:08d}@{SENDER_DOMAIN}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n"
            "Content-Transfer-Encoding: 7bit\r\n\r\n").encode() + body


def sink_zone(domains: int) -> str:
    lines = [f"mx A {SINK_ADDRESS}"]
    lines += [f"d{i} MX 10 mx" for i in range(domains)]
    return "\n".join(lines) + "\n"


class Server(PymailProcess):
    """pymail with submissions on, the bench's DNS, and DKIM on or off."""

    def __init__(self, workdir: Path, dns_port: int, dkim: bool) -> None:
        super().__init__(workdir, 1)
        self.submissions_port = free_port()
        self.config_path.write_text(f"""# written by benchmarks/outbound.py
[server]
hostname = "mail.{SENDER_DOMAIN}"
data_dir = "{self.data_dir}"
workers = 1

[listen]
smtp = ["{self.host}:{self.port}"]
submission = []
submissions = ["{self.host}:{self.submissions_port}"]
imap = []
imaps = []
pop3 = []
pop3s = []
http = []

[limits]
connections_per_ip = 0

[dns]
nameservers = ["127.0.0.1"]
port = {dns_port}
timeout = "3s"

[dkim]
sign = {"true" if dkim else "false"}
""")


async def submit_all(server: Server, count: int, concurrency: int, domains: int, size: int,
                     run_id: str, on_ready: Any) -> tuple[dict[str, float], Counter, float, float]:
    """Log `concurrency` connections in, then send `count` messages between them; the
    time.time() of each 250 by Message-ID, errors, and the first send / last 250 times."""
    import aiosmtplib

    context = ssl.create_default_context(cafile=str(server.ca_file))
    body = b"\r\n".join(build_body_lines(max(size - 330, 64))) + b"\r\n"
    clients = []
    for _ in range(concurrency):
        c = aiosmtplib.SMTP(hostname=server.host, port=server.submissions_port, use_tls=True,
                            tls_context=context, timeout=120)
        await c.connect()
        await c.login(SENDER, BENCH_PASSWORD)
        clients.append(c)
    queued: dict[str, float] = {}
    errors: Counter = Counter()
    numbers = iter(range(count))

    async def worker(client: Any) -> None:
        for seq in numbers:
            rcpt = f"u{seq}@d{seq % domains}.{SINK_ZONE}"
            message = make_message(seq, rcpt, body, run_id)
            try:
                refused, _ = await client.sendmail(SENDER, [rcpt], message)
            except aiosmtplib.SMTPException as e:
                errors[type(e).__name__] += 1
                continue
            if refused:
                errors["refused"] += 1
            else:
                queued[f"{run_id}.{seq:08d}@{SENDER_DOMAIN}"] = time.time()

    on_ready()  # logged in: the measurement starts
    first = time.time()
    await asyncio.gather(*(worker(c) for c in clients))
    last = time.time()
    for c in clients:
        try:
            await c.quit()
        except aiosmtplib.SMTPException:
            pass
    return queued, errors, first, last


def run_row(*, dkim: bool, domains: int, args: argparse.Namespace, dns_port: int,
            workdir: Path) -> Row:
    from tests.services.postfix import SmtpSink

    sink = SmtpSink(SINK_ADDRESS, hostname=f"mx.{SINK_ZONE}", max_concurrency=1024, keep=True).start()
    server = Server(workdir, dns_port, dkim)
    try:
        server.ensure_user(SENDER)
        if dkim:
            server.cli("dkim", "keygen", SENDER_DOMAIN)
        server.start()
        pid = server.proc.pid  # type: ignore[union-attr]
        run_id = f"ob{int(time.time())}{'k' if dkim else 'p'}{domains}"
        start: list[Any] = []

        def ready() -> None:  # after the logins (argon2id, ~0.14 s of CPU each): not measured
            start.extend([cpu_seconds_tree(pid), own_cpu_seconds(), time.time()])

        queued, errors, first, submitted = asyncio.run(
            submit_all(server, args.count, args.concurrency, domains, args.size, run_id, ready))
        cpu0, own0, t0 = start
        deadline = time.monotonic() + args.timeout
        while sink.messages() < len(queued) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # the last dump file is closed
        cpu1, own1, t1 = cpu_seconds_tree(pid), own_cpu_seconds(), time.time()
        received = sink.received()
        signed = sum(1 for m in received if b"\nDKIM-Signature:" in m.path.read_bytes()[:8192])
    finally:
        server.stop()
        sink.stop()
    by_id: dict[str, list[float]] = {}
    for m in received:
        by_id.setdefault(m.message_id or "", []).append(m.received_at)
    latencies = sorted((min(by_id[mid]) - t) * 1000 for mid, t in queued.items() if mid in by_id)
    end = max((m.received_at for m in received), default=first)
    wall = max(end - first, 1e-9)
    sent = len(queued)
    cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
    return Row(
        dkim=dkim, domains=domains, count=args.count, concurrency=args.concurrency, sent=sent,
        errors=dict(errors), at_sink=len(received), signed=signed,
        duplicates=sum(len(v) - 1 for v in by_id.values()),
        lost=sum(1 for mid in queued if mid not in by_id),
        wall_seconds=wall, msgs_per_second=len(latencies) / wall,
        submit_per_second=sent / max(submitted - first, 1e-9),
        latency_ms={"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                    "max": latencies[-1] if latencies else None},
        server_cpu_ms_per_message=cpu * 1000 / sent if cpu is not None and sent else None,
        server_cores=cpu / (t1 - t0) if cpu is not None else None,
        client_cores=(own1 - own0) / (t1 - t0))


def inbound_figure(count: int, workdir: Path) -> dict[str, Any] | None:
    """delivery.py's c=10 4 KB accepted/s, run now, in this session."""
    if count <= 0:
        return None
    out = workdir / "inbound.json"
    cmd = [sys.executable, "-m", "benchmarks.delivery", "--concurrency", "10", "--size", "4k",
           "--count", str(count), "--json", str(out)]
    print(f"  inbound: {' '.join(cmd[1:])} ...", flush=True)
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    if not out.exists():
        print(f"  inbound benchmark failed ({result.returncode}): {result.stderr[-500:]}")
        return None
    level = json.loads(out.read_text())["levels"][0]
    return {"command": " ".join(cmd[1:]), "accepted_per_second": level["accepted_per_second"],
            "e2e_per_second": level.get("e2e_per_second"),
            "latency_ms": level["latency_ms"],
            "server_cpu_ms_per_message": level["server_cpu_ms_per_message"],
            "errors": level["error_count"]}


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render(rows: list[Row], inbound: dict[str, Any] | None) -> str:
    head = ["dkim", "domains", "msgs", "at sink", "signed", "dup", "lost", "err", "msgs/s", "submit/s",
            "q->remote p50 ms", "p99 ms", "max ms", "srv cpu ms/msg", "srv cores", "cli cores"]
    body = [[("on" if r.dkim else "off"), str(r.domains), str(r.sent), str(r.at_sink),
             str(r.signed), str(r.duplicates), str(r.lost), str(sum(r.errors.values())), fmt(r.msgs_per_second),
             fmt(r.submit_per_second), fmt(r.latency_ms["p50"]), fmt(r.latency_ms["p99"]),
             fmt(r.latency_ms["max"]), fmt(r.server_cpu_ms_per_message, 2), fmt(r.server_cores, 2),
             fmt(r.client_cores, 2)] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    if inbound:
        lat = inbound["latency_ms"]
        lines.append(f"inbound (same session, {inbound['command']}): "
                     f"{inbound['accepted_per_second']:.1f} acc/s, p50 {fmt(lat.get('p50'))} ms, "
                     f"p99 {fmt(lat.get('p99'))} ms, srv cpu "
                     f"{fmt(inbound['server_cpu_ms_per_message'], 2)} ms/msg, "
                     f"{inbound['errors']} errors")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _main(args)
    except BenchError as e:
        print(f"benchmarks.outbound: {e}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    if os.environ.get("PYMAIL_BENCH_NETNS") != "1":
        raise BenchError("needs port 25 on 127.0.0.3 in a private network namespace: "
                         "run it through scripts/bench.sh outbound ...")
    dkim_modes = {"off": [False], "on": [True], "off,on": [False, True], "on,off": [True, False]}
    if args.dkim not in dkim_modes:
        raise BenchError("--dkim is off, on or off,on")
    if args.count < 1 or args.concurrency < 1 or not all(1 <= d <= MAX_DOMAINS for d in args.domains):
        raise BenchError(f"--count, --concurrency >= 1; --domains between 1 and {MAX_DOMAINS}")
    sys.path.insert(0, str(REPO))  # tests/services: NSD and smtp-sink
    from tests.services.nsd import NsdService

    started = _dt.datetime.now()
    parent = Path(tempfile.mkdtemp(prefix="pymail-outbound-"))
    nsd = NsdService({SINK_ZONE: sink_zone(max(args.domains))}).start()
    rows: list[Row] = []
    inbound = None
    print(f"outbound benchmark: {args.count} x {args.size} bytes, {args.concurrency} submission "
          f"connections, into smtp-sink on {SINK_ADDRESS}:25, {os.cpu_count()} CPUs", flush=True)
    try:
        for dkim in dkim_modes[args.dkim]:
            for domains in args.domains:
                print(f"  dkim {'on' if dkim else 'off'}, {domains} domain(s) ...", end="", flush=True)
                workdir = parent / f"{'dkim' if dkim else 'plain'}-{domains}"
                workdir.mkdir()
                row = run_row(dkim=dkim, domains=domains, args=args, dns_port=nsd.port, workdir=workdir)
                print(f" {row.msgs_per_second:.1f} msgs/s", flush=True)
                rows.append(row)
        inbound = inbound_figure(args.inbound_count, parent)
    finally:
        nsd.stop()
        if not args.keep_data:
            shutil.rmtree(parent, ignore_errors=True)
        else:
            print(f"  kept {parent}")
    print()
    print(render(rows, inbound))
    json_path = args.json or RESULTS_DIR / f"outbound-{started:%Y%m%d-%H%M%S}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({
        "benchmark": "outbound", "started_at": started.isoformat(timespec="seconds"),
        "command": sys.argv, "cpus": os.cpu_count(), "python": platform.python_version(),
        "git_revision": git_revision(), "rows": [asdict(r) for r in rows], "inbound": inbound,
    }, indent=2) + "\n")
    print(f"  JSON: {json_path}")
    return 1 if any(r.lost or r.errors or (r.dkim and r.signed < r.at_sink) for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
