"""The APPEND benchmark: how fast does pymail take IMAP APPENDs and make them durable?

    python -m benchmarks.append --count 1000 --size 4k --concurrency 1,4
    scripts/bench.sh append ...same options...

It starts pymail the way `benchmarks/delivery.py` does (the embedded default: SQLite
index + file blobs in a temporary data directory, IMAPS on a free loopback port, the
embedded default's certificate verified against its private CA), makes one user per
level with the `pymail` CLI, then per `--concurrency` level opens that many
`imaplib.IMAP4_SSL` connections (LOGIN), each in a thread of its own, and APPENDs
`--count` messages of `--size` octets to INBOX among them, one command at a time per
connection (each waits for its tagged ``OK [APPENDUID ...]``: the message is durable),
with TCP_NODELAY on the client's socket.

Measured per level: msgs/s (OK answers / wall time of the level, connections already
open), latency p50/p99 per APPEND, and the server's CPU per message (user+sys of the
process tree, psutil).  Every answer must be ``OK [APPENDUID``; anything else is counted
as an error and makes the command exit 1.  Every message is distinct (a sequence number
in its Subject and Message-ID), so each is a blob of its own.
"""

from __future__ import annotations

import argparse
import imaplib
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.delivery import (
    BENCH_DOMAIN,
    BENCH_PASSWORD,
    BenchError,
    PymailProcess,
    build_body_lines,
    cpu_seconds_tree,
    parse_levels,
    parse_size,
    percentile,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks.append", description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=1000, help="APPENDs per level (default 1000)")
    p.add_argument("--size", type=parse_size, default=parse_size("4k"),
                   help="message size as appended (default 4k)")
    p.add_argument("--concurrency", type=parse_levels, default=[1, 4],
                   help="comma-separated connection counts, one level each (default 1,4)")
    p.add_argument("--warmup", type=int, default=20, help="APPENDs before the first level (default 20)")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    return p


def message(size: int, seq: int, run: str) -> bytes:
    head = (f"From: bench@{BENCH_DOMAIN}\r\nTo: append@{BENCH_DOMAIN}\r\n"
            f"Subject: append {run} {seq}\r\nMessage-ID: <{run}.{seq}@{BENCH_DOMAIN}>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    body = b"\r\n".join(build_body_lines(max(size - len(head), 64))) + b"\r\n"
    return head + body


def connect(server: PymailProcess, user: str) -> imaplib.IMAP4_SSL:
    assert server.imaps_port is not None
    context = ssl.create_default_context(cafile=str(server.ca_file))
    client = imaplib.IMAP4_SSL(server.host, server.imaps_port, ssl_context=context, timeout=60)
    # imaplib writes the literal and its closing CRLF in two sends: without NODELAY the
    # second waits for the server's delayed ACK (~40 ms), which would be all we measure.
    client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.login(user, BENCH_PASSWORD)
    return client


def run_level(server: PymailProcess, user: str, conc: int, count: int, size: int,
              run: str) -> dict[str, float | int]:
    clients = [connect(server, user) for _ in range(conc)]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    seqs = iter(range(count))

    def work(client: imaplib.IMAP4_SSL) -> None:
        while True:
            with lock:
                seq = next(seqs, None)
            if seq is None:
                return
            data = message(size, seq, run)
            t0 = time.perf_counter()
            try:
                typ, answer = client.append("INBOX", None, None, data)
            except Exception as e:  # noqa: BLE001 - counted, never hidden
                typ, answer = "ERROR", [repr(e).encode()]
            t1 = time.perf_counter()
            with lock:
                if typ == "OK" and answer and answer[0].startswith(b"[APPENDUID "):
                    latencies.append(t1 - t0)
                else:
                    errors.append(f"{typ} {answer!r}"[:120])

    cpu0 = cpu_seconds_tree(server.proc.pid)  # type: ignore[union-attr]
    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds_tree(server.proc.pid)  # type: ignore[union-attr]
    for c in clients:
        c.logout()
    latencies.sort()
    ok = len(latencies)
    cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None
    return {"conc": conc, "ok": ok, "err": len(errors), "wall": wall, "rate": ok / wall,
            "p50": (percentile(latencies, 50) or 0) * 1000,
            "p99": (percentile(latencies, 99) or 0) * 1000,
            "cpu_ms": cpu * 1000 / ok if cpu is not None and ok else float("nan"),
            "first_error": errors[0] if errors else ""}



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pymail-bench-append-"))
    server = PymailProcess(workdir, 1, imaps=True)
    failed = False
    try:
        server.start()
        run = f"{int(time.time())}"
        warm = f"append-warm@{BENCH_DOMAIN}"
        server.ensure_user(warm)
        if args.warmup:
            run_level(server, warm, 1, args.warmup, args.size, run + "w")
        print(f"APPEND of {len(message(args.size, 0, run))}-octet messages over IMAPS (imaplib), "
              f"{args.count} per level")
        print(f"{'conc':>5} {'ok':>6} {'err':>4} {'wall s':>7} {'msgs/s':>8} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'srv cpu ms/msg':>15}")
        for n, conc in enumerate(args.concurrency):
            user = f"append-l{n}-c{conc}@{BENCH_DOMAIN}"
            server.ensure_user(user)
            row = run_level(server, user, conc, args.count, args.size, f"{run}.{n}")
            print(f"{row['conc']:>5} {row['ok']:>6} {row['err']:>4} {row['wall']:>7.2f} "
                  f"{row['rate']:>8.1f} {row['p50']:>7.2f} {row['p99']:>7.2f} {row['cpu_ms']:>15.2f}",
                  flush=True)
            if row["err"]:
                failed = True
                print(f"  first error: {row['first_error']}")
    except BenchError as e:
        print(f"benchmarks.append: {e}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        if args.keep_data:
            print(f"  kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
