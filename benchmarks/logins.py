"""The login benchmark: what does an IMAP LOGIN cost with Argon2id hashes, with the
authentication cache off and on (issue 14 item 5)?

    python -m benchmarks.logins --logins 50 --concurrency 1,4
    scripts/bench.sh logins ...same options...

For each `--modes` entry ("off": ``[auth] cache_ttl = 0``; "on": ``cache_ttl = "1h"``)
it starts pymail on the embedded default with IMAPS (benchmarks/delivery.py's
`PymailProcess`), adds user `bench-login@bench.example` with the `pymail` CLI (so its
password is an ``{ARGON2ID}`` hash at the configured cost, today m=64 MiB, t=3, p=1),
logs in once to warm up (with the cache on, that first login is the one verification),
then per `--concurrency` level makes `--logins` connections in total, `conc` at a time:
TLS connect, greeting, ``LOGIN``, ``LOGOUT``.  Every LOGIN must get a tagged OK.

Per row: logins/s (wall), the LOGIN command's latency p50/p90/max (LOGIN written ->
tagged reply read; the TLS handshake is not in it), the whole connection's mean, and the
server's CPU per login (user+sys of the process tree, psutil).
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.delivery import BENCH_DOMAIN, BENCH_PASSWORD, PymailProcess

try:
    import psutil
except ImportError:  # pragma: no cover - the bench extra installs it
    psutil = None  # type: ignore[assignment]

USER = f"bench-login@{BENCH_DOMAIN}"
MODES = {"off": "0", "on": '"1h"'}


def server_cpu(pid: int) -> float:
    if psutil is None:
        return float("nan")
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        times = p.cpu_times()
        total += times.user + times.system + getattr(times, "children_user", 0) + getattr(times, "children_system", 0)
    return total


def read_until(sock: ssl.SSLSocket, buffer: bytearray, marker: bytes) -> bytes:
    while True:
        end = buffer.find(b"\r\n")
        while end >= 0:
            line = bytes(buffer[:end + 2])
            del buffer[:end + 2]
            if line.startswith(marker):
                return line
            end = buffer.find(b"\r\n")
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}")
        buffer += chunk


def one_login(port: int, context: ssl.SSLContext) -> tuple[float, float]:
    """(LOGIN latency, whole connection) in seconds."""
    started = time.perf_counter()
    raw = socket.create_connection(("127.0.0.1", port), timeout=60)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        buffer = bytearray()
        read_until(sock, buffer, b"* OK")
        sent = time.perf_counter()
        sock.sendall(f"a LOGIN {USER} {BENCH_PASSWORD}\r\n".encode())
        reply = read_until(sock, buffer, b"a ")
        login_s = time.perf_counter() - sent
        if not reply.startswith(b"a OK"):
            raise RuntimeError(f"LOGIN failed: {reply!r}")
        sock.sendall(b"b LOGOUT\r\n")
        read_until(sock, buffer, b"b ")
    return login_s, time.perf_counter() - started


def run_mode(mode: str, logins: int, levels: list[int]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="pymail-bench-logins-") as tmp:
        process = PymailProcess(Path(tmp), 1, imaps=True)
        process.config_path.write_text(process.config_path.read_text()
                                       + f"\n[auth]\ncache_ttl = {MODES[mode]}\n")
        process.ensure_user(USER)
        process.start()
        try:
            assert process.imaps_port is not None and process.proc is not None
            context = ssl.create_default_context(cafile=str(process.ca_file))
            one_login(process.imaps_port, context)  # warm-up (and, cache on, the one miss)
            for conc in levels:
                cpu0, wall0 = server_cpu(process.proc.pid), time.perf_counter()
                with ThreadPoolExecutor(conc) as pool:
                    results = list(pool.map(lambda _: one_login(process.imaps_port, context), range(logins)))
                wall = time.perf_counter() - wall0
                cpu = server_cpu(process.proc.pid) - cpu0
                latencies = sorted(r[0] for r in results)
                rows.append({
                    "cache": mode, "conc": conc, "logins": logins, "wall_s": wall,
                    "logins_per_s": logins / wall,
                    "login_p50_ms": 1000 * latencies[len(latencies) // 2],
                    "login_p90_ms": 1000 * latencies[int(len(latencies) * 0.9)],
                    "login_max_ms": 1000 * latencies[-1],
                    "connection_mean_ms": 1000 * statistics.fmean(r[1] for r in results),
                    "server_cpu_ms_per_login": 1000 * cpu / logins,
                })
        finally:
            process.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=50, help="logins per level (default 50)")
    parser.add_argument("--concurrency", default="1", help="levels, e.g. 1,4 (default 1: sequential)")
    parser.add_argument("--modes", default="off,on", help="cache modes to run (default off,on)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",")]
    rows = [row for mode in args.modes.split(",") for row in run_mode(mode, args.logins, levels)]
    header = (f"{'cache':>5} {'conc':>4} {'logins':>6} {'wall s':>7} {'logins/s':>8} {'p50 ms':>7} "
              f"{'p90 ms':>7} {'max ms':>7} {'conn ms':>7} {'srv cpu ms/login':>16}")
    print(header)
    for r in rows:
        print(f"{r['cache']:>5} {r['conc']:>4} {r['logins']:>6} {r['wall_s']:>7.2f} {r['logins_per_s']:>8.1f} "
              f"{r['login_p50_ms']:>7.1f} {r['login_p90_ms']:>7.1f} {r['login_max_ms']:>7.1f} "
              f"{r['connection_mean_ms']:>7.1f} {r['server_cpu_ms_per_login']:>16.1f}")
    if args.json:
        args.json.write_text(json.dumps({"argv": sys.argv, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
