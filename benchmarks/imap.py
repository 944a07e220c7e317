"""The IMAP benchmark: how fast does pymail serve FETCH, and what does an idle IDLE
connection cost the server?

    python -m benchmarks.imap --count 2000 --size 4k --concurrency 1,4,16
    scripts/bench.sh imap ...same options...

It starts pymail the way `benchmarks/delivery.py` does (the embedded default: SQLite index
+ file blobs in a temporary data directory; `--backend postgres` / `--blobs s3` as there),
with IMAPS (implicit TLS, the embedded default's certificate, verified against its
private CA) on a free loopback port next to SMTP.  It makes user `bench-imap@bench.example`
with the `pymail` CLI and delivers `--count` messages of `--size` to its INBOX over SMTP
with delivery.py's load generator, so the mailbox is what real delivery makes (trace
headers, stored structure).  Then:

Idle phase (`--idle-connections N`, 0 = skip), one table row per `--idle-inbox` kind:
    N IMAPS connections each LOGIN, SELECT INBOX, IDLE (until the "+" continuation), in
    four batches of N/4; the server's memory is read before and after each batch, and
    once more after `--idle-settle` seconds of all N idling, over which the server's CPU
    is measured too (pymail polls the selected mailbox once a second per IDLE).  Then
    every connection says DONE and must get its tagged OK: a connection the server
    dropped is an error.  "populated" idles on the benchmark user's INBOX (`--count`
    messages: a selected mailbox's UID list lives in the session), before the fetch
    phase, on the same server; "empty" on an empty INBOX on a fresh server of its own,
    so that neither row reuses memory the other freed.

Fetch phase, one row per `--modes` entry and `--concurrency` level, on
max(concurrency) connections opened (LOGIN + SELECT INBOX) before the first level; a
level uses the first `conc` of them:
    headers        `UID FETCH <uid> (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From
                   To Cc Subject Date Message-ID)])`, what Thunderbird asks for a message
                   list, one command per message; `--fetch-count` UIDs (default: each
                   message once) shared out among the connections, `--pipeline` commands
                   in flight per connection (default 1: one round trip per message);
    headers-range  the same items for `UID 1:*`: every connection fetches the whole
                   mailbox `--range-rounds` times (latency is then per command);
    body           `UID FETCH <uid> (BODY.PEEK[])`, the whole message, like headers.
Every response is checked: tagged OK, exactly one FETCH with the asked UID and one
literal (range: one per message of the mailbox); anything else is an error, never hidden.

Measured per row (see benchmarks/README.md for every column): msgs/s, MiB/s of IMAP
response bytes (after TLS), latency p50/p90/p99/max per command, the server's CPU (user+sys
of the process and its children, from /proc/<pid>/stat via psutil, as delivery.py)
per message and as cores busy, its event-loop thread's share, the client's own CPU and the
rest of the machine's.  Memory: VmRSS (/proc/<pid>/status), PSS and USS
(Private_Clean + Private_Dirty, /proc/<pid>/smaps_rollup), summed over the process tree.

Results: a table on stdout and JSON (`--json PATH`, default
benchmarks/results/imap-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.delivery import (
    BENCH_DOMAIN,
    BENCH_PASSWORD,
    DEFAULT_FROM,
    RESULTS_DIR,
    BenchError,
    LoadGenerator,
    MessageFactory,
    PymailProcess,
    _install_loop,
    cpu_seconds_tree,
    filesystem_of,
    fmt,
    git_revision,
    machine_busy_seconds,
    main_thread_seconds,
    own_cpu_seconds,
    parse_levels,
    parse_size,
    percentile,
    psutil,
    start_storage_services,
)

FETCH_USER = f"bench-imap@{BENCH_DOMAIN}"
IDLE_EMPTY_USER = f"bench-idle@{BENCH_DOMAIN}"

#: What Thunderbird asks for to show a message list (its default header set).
HEADER_ITEMS = b"(UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Subject Date Message-ID)])"
BODY_ITEMS = b"(BODY.PEEK[])"
MODES = ("headers", "headers-range", "body")
IDLE_INBOXES = ("populated", "empty")
READ_LIMIT = 1 << 20  #: longest response line the client accepts (literals are apart)


# --------------------------------------------------------------------------- options


def parse_modes(text: str) -> list[str]:
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or len(set(modes)) != len(modes):
        raise argparse.ArgumentTypeError(f"invalid mode list {text!r} (from {', '.join(MODES)})")
    return modes


def parse_idle_inboxes(text: str) -> list[str]:
    kinds = [m.strip() for m in text.split(",") if m.strip()]
    if not kinds or any(k not in IDLE_INBOXES for k in kinds) or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(f"invalid --idle-inbox {text!r} (from {', '.join(IDLE_INBOXES)})")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks.imap",
        description="IMAP benchmark: start pymail with IMAPS, fill a mailbox over SMTP, "
        "measure FETCH throughput and the memory of idle IDLE connections.",
    )
    p.add_argument("--count", type=int, default=2000, metavar="N",
                   help="messages delivered to the benchmark mailbox (default 2000)")
    p.add_argument("--size", type=parse_size, default=parse_size("4k"), metavar="SIZE",
                   help="message size as sent, headers included (4k, 100k, 1m; default 4k)")
    p.add_argument("--concurrency", type=parse_levels, default=[1, 4, 16], metavar="N[,N...]",
                   help="concurrent IMAP connections per fetch level (default 1,4,16)")
    p.add_argument("--modes", type=parse_modes, default=list(MODES), metavar="MODE[,MODE...]",
                   help=f"fetch modes to run, in order (default {','.join(MODES)})")
    p.add_argument("--fetch-count", type=int, metavar="N",
                   help="per-message modes: commands per level (default --count: every "
                   "message once; more cycles through the mailbox again)")
    p.add_argument("--pipeline", type=int, default=1, metavar="N",
                   help="per-message modes: commands in flight per connection (default 1)")
    p.add_argument("--range-rounds", type=int, default=3, metavar="N",
                   help="headers-range: UID FETCH 1:* commands per connection per level (default 3)")
    p.add_argument("--idle-connections", type=int, default=1000, metavar="N",
                   help="IMAPS connections left in IDLE for the memory measurement; 0 skips "
                   "the idle phase (default 1000)")
    p.add_argument("--idle-inbox", type=parse_idle_inboxes, default=list(IDLE_INBOXES),
                   metavar="KIND[,KIND]",
                   help="which INBOX the idle connections select: 'populated' (the "
                   "benchmark's --count messages) and/or 'empty' (on a fresh server) "
                   "(default populated,empty)")
    p.add_argument("--idle-settle", type=float, default=10.0, metavar="SECONDS",
                   help="how long all idle connections idle before the final memory "
                   "reading; the server's idle CPU is measured over it (default 10)")
    p.add_argument("--idle-setup-concurrency", type=int, default=16, metavar="N",
                   help="idle connections being set up at once (default 16; the server "
                   "verifies at most 4 passwords at a time anyway)")
    p.add_argument("--populate-concurrency", type=int, default=4, metavar="N",
                   help="SMTP connections filling the mailbox (default 4)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="pymail's server.workers (default 1)")
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                   help="pymail's index: the embedded SQLite, or a private PostgreSQL cluster "
                   "started for the run (default sqlite)")
    p.add_argument("--blobs", choices=("file", "s3"), default="file",
                   help="pymail's message store: files, or S3 on a moto server started for "
                   "the run (default file)")
    p.add_argument("--warmup", type=int, default=20, metavar="N",
                   help="header and body fetches made once before the first level, not "
                   "measured (default 20)")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="where to write the JSON results (default "
                   "benchmarks/results/imap-<timestamp>.json)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="bound on each level and on the idle setup; what is not done by then "
                   "is counted as errors (default 600)")
    p.add_argument("--reply-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="bound on each IMAP response (default 120)")
    p.add_argument("--data-parent", type=Path, metavar="DIR",
                   help="where to make the temporary pymail data dirs (default: the system "
                   "temp dir; mind tmpfs)")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the temporary directories (config, data, server log)")
    p.add_argument("--no-uvloop", action="store_true",
                   help="run the client on the stdlib asyncio loop")
    return p


# --------------------------------------------------------------------------- IMAP client


class ImapProtocolError(Exception):
    """The server closed the connection or said something that is not IMAP."""


@dataclass
class Response:
    """One command's responses, read leanly: literals are counted (and kept only when
    asked), untagged responses are kept as their first line."""

    tag: bytes  #: the command's tag; b"+" for a continuation request
    status: bytes  #: OK / NO / BAD ("" for a continuation request)
    line: bytes  #: the tagged (or continuation) line
    untagged: list[bytes]  #: the first line of each untagged response, in order
    literals: int
    literal_bytes: int
    wire_bytes: int  #: every response byte read (after TLS), literals included
    literal_data: list[bytes] = field(default_factory=list)  #: with keep_literals only


class ImapClient:
    """One IMAPS connection: tagged commands written as raw bytes, responses read until
    their tagged line.  Commands may be pipelined (`write` several, then `read_response`
    as often): pymail answers them in order."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.serial = 0
        self.broken = False  #: set after an error: do not use for another level
        self.idle_tag = b""  #: the tag of the IDLE command in progress

    @classmethod
    async def connect(cls, host: str, port: int, context: ssl.SSLContext) -> ImapClient:
        reader, writer = await asyncio.open_connection(host, port, ssl=context, limit=READ_LIMIT)
        client = cls(reader, writer)
        try:
            greeting = await reader.readline()
            if not greeting.startswith(b"* OK"):
                raise ImapProtocolError(f"greeting {greeting[:60]!r}")
        except BaseException:
            writer.transport.abort()
            raise
        return client

    def next_tag(self) -> bytes:
        self.serial += 1
        return b"b%d" % self.serial

    def write(self, command: bytes) -> bytes:
        """Send `<tag> <command>`; returns the tag."""
        tag = self.next_tag()
        self.writer.write(tag + b" " + command + b"\r\n")
        return tag

    async def read_response(self, keep_literals: bool = False) -> Response:
        reader = self.reader
        untagged: list[bytes] = []
        kept: list[bytes] = []
        literals = literal_bytes = wire = 0
        while True:
            line = await reader.readline()
            if not line.endswith(b"\n"):
                raise ImapProtocolError("connection closed")
            wire += len(line)
            first = line
            while line.endswith(b"}\r\n"):  # a literal; the response goes on after it
                try:
                    n = int(line[line.rindex(b"{") + 1:-3])
                except ValueError:
                    raise ImapProtocolError(f"malformed literal {line[-24:]!r}") from None
                data = await reader.readexactly(n)
                if keep_literals:
                    kept.append(data)
                literals += 1
                literal_bytes += n
                line = await reader.readline()
                if not line.endswith(b"\n"):
                    raise ImapProtocolError("connection closed")
                wire += n + len(line)
            if first.startswith(b"* "):
                untagged.append(first)
                continue
            if first.startswith(b"+"):
                return Response(b"+", b"", first, untagged, literals, literal_bytes, wire, kept)
            tag, _, rest = first.partition(b" ")
            return Response(tag, rest.split(b" ", 1)[0].upper(), first, untagged, literals,
                            literal_bytes, wire, kept)

    async def command(self, command: bytes, *, keep_literals: bool = False) -> Response:
        """One command and its responses; ImapProtocolError unless its tagged OK."""
        tag = self.write(command)
        response = await self.read_response(keep_literals)
        if response.tag != tag or response.status != b"OK":
            verb = command.split(b" ", 1)[0].decode("ascii", "replace")
            raise ImapProtocolError(f"{verb}: {response.line.strip()[:120]!r}")
        return response

    def close(self) -> None:
        self.writer.transport.abort()


def _quoted(text: str) -> bytes:
    return b'"' + text.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'


async def open_session(host: str, port: int, context: ssl.SSLContext, user: str,
                       password: str) -> tuple[ImapClient, int]:
    """A connection logged in with INBOX selected, and the EXISTS count SELECT gave."""
    client = await ImapClient.connect(host, port, context)
    try:
        await client.command(b"LOGIN " + _quoted(user) + b" " + _quoted(password))
        response = await client.command(b"SELECT INBOX")
    except BaseException:
        client.close()
        raise
    exists = [int(u.split()[1]) for u in response.untagged if u.rstrip().endswith(b" EXISTS")]
    if not exists:
        client.close()
        raise ImapProtocolError("SELECT INBOX without EXISTS")
    return client, exists[-1]


def _error_kind(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "reply timeout"
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed"
    if isinstance(e, ImapProtocolError):
        return str(e)
    return type(e).__name__


# --------------------------------------------------------------------------- measuring


def _proc_tree(pid: int) -> list[int]:
    pids = [pid]
    if psutil is not None:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            pids += [c.pid for c in psutil.Process(pid).children(recursive=True)]
    return pids


def memory_kib(pid: int) -> dict[str, int]:
    """{"rss", "anon", "pss", "uss"} in KiB, summed over the process and its descendants:
    VmRSS and RssAnon from /proc/PID/status, Pss and Private_Clean + Private_Dirty (USS)
    from /proc/PID/smaps_rollup (pss/uss missing when the kernel has no smaps_rollup).

    RssAnon is the heap and stacks, what connections cost; VmRSS adds the file-backed
    pages (libraries, mapped files).  PSS and USS also depend on which other processes
    map the same library pages at that moment: on a shared machine they move by
    megabytes as other Python processes come and go."""
    out: dict[str, int] = {}
    fields = {"VmRSS": "rss", "RssAnon": "anon"}
    for p in _proc_tree(pid):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key = fields.get(line.partition(":")[0])
                if key:
                    out[key] = out.get(key, 0) + int(line.split()[1])
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
        except OSError:
            continue
        for line in rollup:
            key, _, rest = line.partition(":")
            if key == "Pss":
                out["pss"] = out.get("pss", 0) + int(rest.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                out["uss"] = out.get("uss", 0) + int(rest.split()[0])
    return out


def open_files_limit(pid: int) -> int | None:
    """The soft RLIMIT_NOFILE of a running process, from /proc/PID/limits."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft = line.split()[3]
                return None if soft == "unlimited" else int(soft)
    return None


def raise_open_files_limit(needed: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE towards its hard limit when below `needed`
    (pymail, started later as a child, inherits it; pymail does not raise its own:
    systemd/pymail.service sets LimitNOFILE).  Returns (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(hard, max(needed, soft))
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard


@dataclass
class CpuWindow:
    """Server, client and machine CPU over a stretch of wall time."""

    server_pid: int
    srv0: float | None = None
    loop0: dict[int, float] = field(default_factory=dict)
    cli0: float = 0.0
    sys0: float | None = None
    t0: float = 0.0
    load0: float = 0.0

    def start(self) -> CpuWindow:
        self.srv0 = cpu_seconds_tree(self.server_pid)
        self.loop0 = main_thread_seconds(self.server_pid)
        self.cli0 = own_cpu_seconds()
        self.sys0 = machine_busy_seconds()
        self.load0 = os.getloadavg()[0]
        self.t0 = time.perf_counter()
        return self

    def stop(self) -> dict[str, Any]:
        srv1 = cpu_seconds_tree(self.server_pid)
        loop1 = main_thread_seconds(self.server_pid)
        cli1 = own_cpu_seconds()
        sys1 = machine_busy_seconds()
        wall = time.perf_counter() - self.t0
        srv = None if self.srv0 is None or srv1 is None else srv1 - self.srv0
        common = self.loop0.keys() & loop1.keys()
        return {
            "wall": wall,
            "server_cpu_seconds": srv,
            "server_cores_busy": None if srv is None else round(srv / wall, 2),
            "server_loop_busy_percent": (round(max(loop1[p] - self.loop0[p] for p in common) * 100 / wall, 1)
                                         if common else None),
            "client_cpu_seconds": round(cli1 - self.cli0, 3),
            "client_cores_busy": round((cli1 - self.cli0) / wall, 2),
            "other_cores_busy": (None if self.sys0 is None or sys1 is None else round(
                max(0.0, (sys1 - self.sys0) - (cli1 - self.cli0) - (srv or 0.0)) / wall, 2)),
            "load_average": (round(self.load0, 2), round(os.getloadavg()[0], 2)),
        }


# --------------------------------------------------------------------------- fetch phase


@dataclass
class FetchStats:
    commands: int = 0  #: tagged responses read
    messages: int = 0  #: FETCH responses that passed the checks
    literal_bytes: int = 0
    wire_bytes: int = 0
    latencies: list[float] = field(default_factory=list)  #: per command, seconds
    errors: Counter = field(default_factory=Counter)


@dataclass
class FetchResult:
    mode: str
    concurrency: int
    pipeline: int
    command: str  #: the command as sent (with <uid> for the per-message modes)
    commands: int
    messages: int
    errors: dict[str, int]
    error_count: int
    timed_out: bool
    wall_seconds: float
    messages_per_second: float
    mib_per_second: float  #: IMAP response bytes (after TLS) per second, MiB
    literal_mib_per_second: float  #: of which message data (the literals)
    wire_bytes: int
    literal_bytes: int
    latency_unit: str  #: "message" (one command per message) or "range" (1:*)
    latency_ms: dict[str, float | None]
    server_cpu_seconds: float | None
    server_cpu_ms_per_message: float | None
    server_cores_busy: float | None
    server_loop_busy_percent: float | None
    client_cpu_seconds: float
    client_cores_busy: float
    other_cores_busy: float | None
    load_average: tuple[float, float] | None


async def _fetch_each(client: ImapClient, queue: deque[int], items: bytes, depth: int,
                      stats: FetchStats, reply_timeout: float) -> None:
    """One connection's share of a per-message level: `UID FETCH <uid> items`, `depth`
    in flight, until the shared queue is empty."""
    pending: deque[tuple[bytes, int, float]] = deque()
    write = client.writer.write
    perf = time.perf_counter

    def issue() -> None:
        uid = queue.popleft()
        client.serial += 1
        tag = b"b%d" % client.serial
        write(b"%s UID FETCH %d %s\r\n" % (tag, uid, items))
        pending.append((tag, uid, perf()))

    try:
        while queue and len(pending) < depth:
            issue()
        while pending:
            async with asyncio.timeout(reply_timeout):
                response = await client.read_response()
            t1 = perf()
            tag, uid, t0 = pending.popleft()
            if queue:
                issue()
            if response.tag != tag:
                raise ImapProtocolError(f"response {response.line[:40]!r} for command {tag!r}")
            stats.commands += 1
            stats.wire_bytes += response.wire_bytes
            stats.literal_bytes += response.literal_bytes
            if response.status != b"OK":
                stats.errors[f"FETCH {response.status.decode('ascii', 'replace')}"] += 1
                continue
            fetches = [u for u in response.untagged if b" FETCH (" in u]
            if len(fetches) != 1 or response.literals != 1 or b" FETCH (UID %d " % uid not in fetches[0]:
                stats.errors["unexpected FETCH response"] += 1
                continue
            stats.messages += 1
            stats.latencies.append(t1 - t0)
    except (OSError, ImapProtocolError, asyncio.IncompleteReadError, ValueError, TimeoutError) as e:
        client.broken = True
        stats.errors[f"connection: {_error_kind(e)}"] += len(pending) or 1
    except asyncio.CancelledError:  # the level's --timeout
        client.broken = True
        stats.errors["level timeout: in flight"] += len(pending)
        raise


async def _fetch_range(client: ImapClient, rounds: int, items: bytes, expected: int,
                       stats: FetchStats, reply_timeout: float) -> None:
    """`UID FETCH 1:* items`, `rounds` times: the whole mailbox each time."""
    try:
        for _ in range(rounds):
            t0 = time.perf_counter()
            tag = client.write(b"UID FETCH 1:* " + items)
            async with asyncio.timeout(reply_timeout):
                response = await client.read_response()
            t1 = time.perf_counter()
            if response.tag != tag:
                raise ImapProtocolError(f"response {response.line[:40]!r} for command {tag!r}")
            stats.commands += 1
            stats.wire_bytes += response.wire_bytes
            stats.literal_bytes += response.literal_bytes
            if response.status != b"OK":
                stats.errors[f"FETCH {response.status.decode('ascii', 'replace')}"] += 1
                continue
            fetches = sum(1 for u in response.untagged if b" FETCH (UID " in u)
            good = min(fetches, response.literals)
            stats.messages += good
            if fetches != expected or response.literals != expected:
                stats.errors[f"range: {fetches} FETCH responses, {response.literals} literals "
                             f"for {expected} messages"] += 1
            stats.latencies.append(t1 - t0)
    except (OSError, ImapProtocolError, asyncio.IncompleteReadError, ValueError, TimeoutError) as e:
        client.broken = True
        stats.errors[f"connection: {_error_kind(e)}"] += 1
    except asyncio.CancelledError:
        client.broken = True
        stats.errors["level timeout: in flight"] += 1
        raise


async def run_fetch_level(mode: str, clients: list[ImapClient], uids: list[int], *, fetch_count: int,
                          pipeline: int, range_rounds: int, reply_timeout: float, timeout: float,
                          server_pid: int) -> FetchResult:
    stats = FetchStats()
    items = BODY_ITEMS if mode == "body" else HEADER_ITEMS
    queue: deque[int] = deque()
    if mode == "headers-range":
        workers = [_fetch_range(c, range_rounds, items, len(uids), stats, reply_timeout) for c in clients]
        command = "UID FETCH 1:* " + items.decode()
    else:
        while len(queue) < fetch_count:
            queue.extend(uids[: fetch_count - len(queue)])
        workers = [_fetch_each(c, queue, items, pipeline, stats, reply_timeout) for c in clients]
        command = "UID FETCH <uid> " + items.decode()
    window = CpuWindow(server_pid).start()
    timed_out = False
    task = asyncio.ensure_future(asyncio.gather(*workers))
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        timed_out = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    cpu = window.stop()
    if queue:
        stats.errors["not fetched"] += len(queue)
    wall = cpu["wall"]
    lat = sorted(stats.latencies)
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    srv = cpu["server_cpu_seconds"]
    return FetchResult(
        mode=mode,
        concurrency=len(clients),
        pipeline=pipeline if mode != "headers-range" else 1,
        command=command,
        commands=stats.commands,
        messages=stats.messages,
        errors=dict(sorted(stats.errors.items())),
        error_count=sum(stats.errors.values()),
        timed_out=timed_out,
        wall_seconds=round(wall, 4),
        messages_per_second=round(stats.messages / wall, 1) if wall > 0 else 0.0,
        mib_per_second=round(stats.wire_bytes / wall / 2**20, 2) if wall > 0 else 0.0,
        literal_mib_per_second=round(stats.literal_bytes / wall / 2**20, 2) if wall > 0 else 0.0,
        wire_bytes=stats.wire_bytes,
        literal_bytes=stats.literal_bytes,
        latency_unit="range" if mode == "headers-range" else "message",
        latency_ms={
            "p50": ms(percentile(lat, 50)),
            "p90": ms(percentile(lat, 90)),
            "p99": ms(percentile(lat, 99)),
            "max": ms(lat[-1] if lat else None),
            "mean": ms(sum(lat) / len(lat) if lat else None),
        },
        server_cpu_seconds=None if srv is None else round(srv, 3),
        server_cpu_ms_per_message=(round(srv * 1000 / stats.messages, 3)
                                   if srv is not None and stats.messages else None),
        server_cores_busy=cpu["server_cores_busy"],
        server_loop_busy_percent=cpu["server_loop_busy_percent"],
        client_cpu_seconds=cpu["client_cpu_seconds"],
        client_cores_busy=cpu["client_cores_busy"],
        other_cores_busy=cpu["other_cores_busy"],
        load_average=cpu["load_average"],
    )


# --------------------------------------------------------------------------- idle phase


@dataclass
class IdleResult:
    inbox: str  #: "populated" or "empty"
    inbox_messages: int  #: EXISTS at SELECT
    connections: int  #: asked for
    idling: int  #: reached IDLE
    still_open: int  #: answered DONE with their tagged OK after the settle time
    errors: dict[str, int]
    error_count: int
    setup_seconds: float  #: first connect -> all idling (4 batches, memory readings between)
    settle_seconds: float
    #: Server memory (KiB, process tree) before, after each quarter, after the settle.
    memory_kib: list[dict[str, Any]]
    rss_kib_per_connection: float | None  #: (after settle - before) / idling
    anon_kib_per_connection: float | None
    pss_kib_per_connection: float | None
    uss_kib_per_connection: float | None
    #: (after settle - at half) / (connections idling in the second half): the slope,
    #: without what the first connections took from memory the server already had.
    rss_marginal_kib_per_connection: float | None
    server_open_files_limit: int | None
    #: Over the settle time: the server's CPU keeping the connections idle (IDLE polls).
    idle_server_cores_busy: float | None
    idle_server_loop_busy_percent: float | None
    idle_client_cores_busy: float
    idle_other_cores_busy: float | None


async def _open_idle(host: str, port: int, context: ssl.SSLContext, user: str,
                     errors: Counter) -> tuple[ImapClient, int] | None:
    try:
        client, exists = await open_session(host, port, context, user, BENCH_PASSWORD)
    except (OSError, ImapProtocolError, asyncio.IncompleteReadError, ValueError, ssl.SSLError) as e:
        errors[f"setup: {_error_kind(e)}"] += 1
        return None
    try:
        tag = client.write(b"IDLE")
        response = await client.read_response()
        if response.tag != b"+":
            raise ImapProtocolError(f"IDLE: {response.line.strip()[:80]!r}")
    except (OSError, ImapProtocolError, asyncio.IncompleteReadError, ValueError) as e:
        client.close()
        errors[f"IDLE: {_error_kind(e)}"] += 1
        return None
    client.idle_tag = tag
    return client, exists


async def _end_idle(client: ImapClient, reply_timeout: float, errors: Counter) -> bool:
    """DONE, and the IDLE command's tagged OK: the server kept the connection."""
    try:
        client.writer.write(b"DONE\r\n")
        async with asyncio.timeout(reply_timeout):
            response = await client.read_response()
        if response.tag != client.idle_tag or response.status != b"OK":
            raise ImapProtocolError(f"DONE: {response.line.strip()[:80]!r}")
        return True
    except (OSError, ImapProtocolError, asyncio.IncompleteReadError, ValueError, TimeoutError) as e:
        errors[f"after idling: {_error_kind(e)}"] += 1
        return False
    finally:
        client.close()


async def run_idle(kind: str, host: str, port: int, context: ssl.SSLContext, user: str, *,
                   connections: int, setup_concurrency: int, settle: float, timeout: float,
                   reply_timeout: float, server_pid: int) -> IdleResult:
    errors: Counter = Counter()
    clients: list[ImapClient] = []
    exists: set[int] = set()
    slots = asyncio.Semaphore(setup_concurrency)

    async def one() -> None:
        async with slots:
            opened = await _open_idle(host, port, context, user, errors)
        if opened is not None:
            clients.append(opened[0])
            exists.add(opened[1])

    await asyncio.sleep(1)  # let the server finish what came before
    readings: list[dict[str, Any]] = [{"idling": 0, **memory_kib(server_pid)}]
    t0 = time.perf_counter()
    quarters = [connections * q // 4 for q in range(1, 5)]
    done = 0
    try:
        async with asyncio.timeout(timeout):
            for target in quarters:
                await asyncio.gather(*(one() for _ in range(target - done)))
                done = target
                await asyncio.sleep(1)
                readings.append({"idling": len(clients), **memory_kib(server_pid)})
                print(f" {len(clients)}", end="", flush=True)
    except TimeoutError:
        errors["setup timeout"] += connections - done
    setup_seconds = time.perf_counter() - t0 - len(readings) + 1  # minus the pauses
    window = CpuWindow(server_pid).start()
    await asyncio.sleep(settle)
    cpu = window.stop()
    final = {"idling": len(clients), "after_settle": True, **memory_kib(server_pid)}
    readings.append(final)

    slots = asyncio.Semaphore(64)

    async def end(client: ImapClient) -> bool:
        async with slots:
            return await _end_idle(client, reply_timeout, errors)

    still_open = sum(await asyncio.gather(*(end(c) for c in clients)))

    before = readings[0]
    half = next((r for r in readings if r["idling"] >= len(clients) / 2 and r["idling"]), None)
    n = len(clients)

    def per_connection(key: str) -> float | None:
        if not n or key not in before or key not in final:
            return None
        return round((final[key] - before[key]) / n, 1)

    marginal = None
    if half is not None and n > half["idling"] and "rss" in half and "rss" in final:
        marginal = round((final["rss"] - half["rss"]) / (n - half["idling"]), 1)
    if len(exists) > 1:
        errors[f"SELECT gave different EXISTS: {sorted(exists)}"] += 1
    return IdleResult(
        inbox=kind,
        inbox_messages=min(exists) if exists else 0,
        connections=connections,
        idling=n,
        still_open=still_open,
        errors=dict(sorted(errors.items())),
        error_count=sum(errors.values()),
        setup_seconds=round(setup_seconds, 2),
        settle_seconds=round(cpu["wall"], 2),
        memory_kib=readings,
        rss_kib_per_connection=per_connection("rss"),
        anon_kib_per_connection=per_connection("anon"),
        pss_kib_per_connection=per_connection("pss"),
        uss_kib_per_connection=per_connection("uss"),
        rss_marginal_kib_per_connection=marginal,
        server_open_files_limit=open_files_limit(server_pid),
        idle_server_cores_busy=cpu["server_cores_busy"],
        idle_server_loop_busy_percent=cpu["server_loop_busy_percent"],
        idle_client_cores_busy=cpu["client_cores_busy"],
        idle_other_cores_busy=cpu["other_cores_busy"],
    )


# --------------------------------------------------------------------------- output


FETCH_COLUMNS = [
    ("mode", lambda r: r.mode),
    ("conc", lambda r: fmt(r.concurrency)),
    ("cmds", lambda r: fmt(r.commands)),
    ("msgs", lambda r: fmt(r.messages)),
    ("err", lambda r: fmt(r.error_count)),
    ("wall s", lambda r: fmt(r.wall_seconds, 1)),
    ("msgs/s", lambda r: fmt(r.messages_per_second, 0)),
    ("MiB/s", lambda r: fmt(r.mib_per_second, 2)),
    ("lat per", lambda r: r.latency_unit),
    ("p50 ms", lambda r: fmt(r.latency_ms["p50"], 2)),
    ("p90 ms", lambda r: fmt(r.latency_ms["p90"], 2)),
    ("p99 ms", lambda r: fmt(r.latency_ms["p99"], 2)),
    ("max ms", lambda r: fmt(r.latency_ms["max"], 1)),
    ("srv cpu ms/msg", lambda r: fmt(r.server_cpu_ms_per_message, 3)),
    ("srv cores", lambda r: fmt(r.server_cores_busy, 2)),
    ("srv loop %", lambda r: fmt(r.server_loop_busy_percent, 0)),
    ("cli cores", lambda r: fmt(r.client_cores_busy, 2)),
    ("other cores", lambda r: fmt(r.other_cores_busy, 2)),
]

MIB = 1024


def _mib(reading: dict[str, Any], key: str = "rss") -> str:
    return fmt(reading[key] / MIB, 1) if key in reading else "n/a"


IDLE_COLUMNS = [
    ("inbox", lambda r: f"{r.inbox} ({r.inbox_messages})"),
    ("conns", lambda r: fmt(r.connections)),
    ("idling", lambda r: fmt(r.idling)),
    ("kept", lambda r: fmt(r.still_open)),
    ("err", lambda r: fmt(r.error_count)),
    ("setup s", lambda r: fmt(r.setup_seconds, 1)),
    ("RSS before MiB", lambda r: _mib(r.memory_kib[0])),
    ("RSS after MiB", lambda r: _mib(r.memory_kib[-1])),
    ("RSS KiB/conn", lambda r: fmt(r.rss_kib_per_connection, 1)),
    ("marginal KiB/conn", lambda r: fmt(r.rss_marginal_kib_per_connection, 1)),
    ("anon KiB/conn", lambda r: fmt(r.anon_kib_per_connection, 1)),
    ("PSS KiB/conn", lambda r: fmt(r.pss_kib_per_connection, 1)),
    ("USS KiB/conn", lambda r: fmt(r.uss_kib_per_connection, 1)),
    ("idle srv cores", lambda r: fmt(r.idle_server_cores_busy, 2)),
    ("idle srv loop %", lambda r: fmt(r.idle_server_loop_busy_percent, 0)),
    ("other cores", lambda r: fmt(r.idle_other_cores_busy, 2)),
]


def render(columns: list[tuple[str, Any]], rows: list[Any]) -> list[str]:
    header = [name for name, _ in columns]
    body = [[get(r) for _, get in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [line(header), "  ".join("-" * w for w in widths), *(line(b) for b in body)]


def render_tables(fetch_rows: list[FetchResult], idle_rows: list[IdleResult]) -> str:
    out: list[str] = []
    if idle_rows:
        out += ["Idle IDLE connections (server memory, process tree)", *render(IDLE_COLUMNS, idle_rows)]
        for r in idle_rows:
            steps = ", ".join(f"{m['idling']}: {_mib(m)}" for m in r.memory_kib)
            out.append(f"  {r.inbox}: RSS MiB by connections idling: {steps} "
                       f"(server nofile limit {fmt(r.server_open_files_limit)})")
            if r.errors:
                out.append(f"  errors ({r.inbox}): " + ", ".join(f"{k} x{v}" for k, v in r.errors.items()))
        out.append("")
    if fetch_rows:
        out += ["FETCH", *render(FETCH_COLUMNS, fetch_rows)]
        for r in fetch_rows:
            if r.errors:
                out.append(f"  errors ({r.mode}, conc {r.concurrency}): "
                           + ", ".join(f"{k} x{v}" for k, v in r.errors.items()))
            if r.timed_out:
                out.append(f"  {r.mode}, conc {r.concurrency}: the level hit --timeout")
    return "\n".join(out)


# --------------------------------------------------------------------------- pymail


def _wait_for_port(host: str, port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            with socket.create_connection((host, port), timeout=1):
                return
        time.sleep(0.05)
    raise BenchError(f"IMAPS port {port} does not accept connections after {timeout:.0f}s")


class BenchServer:
    """A pymail with IMAPS in its own temporary directory (and its storage services)."""

    def __init__(self, args: argparse.Namespace, label: str) -> None:
        self.args = args
        self.label = label
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pymail-bench-imap-{label}-", dir=args.data_parent))
        self.services: list[Any] = []
        self.process: PymailProcess | None = None
        self.log_error_lines: int | None = None

    def start(self, users: list[str]) -> PymailProcess:
        storage_config = start_storage_services(self.args.backend, self.args.blobs, self.workdir, self.services)
        self.process = PymailProcess(self.workdir, self.args.workers, storage_config, imaps=True)
        self.process.start()
        assert self.process.imaps_port is not None
        _wait_for_port(self.process.host, self.process.imaps_port)
        for address in users:
            self.process.ensure_user(address)
        return self.process

    @property
    def pid(self) -> int:
        assert self.process is not None and self.process.proc is not None
        return self.process.proc.pid

    def tls_context(self) -> ssl.SSLContext:
        assert self.process is not None
        return ssl.create_default_context(cafile=str(self.process.ca_file))

    def check_alive(self) -> None:
        proc = self.process.proc if self.process else None
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"pymail exited with {proc.returncode} during the run:\n"
                             f"{self.process.log_tail()}")  # type: ignore[union-attr]

    def stop(self) -> None:
        server = self.process
        if server is not None:
            code = server.stop()
            if code not in (0, None):
                print(f"  note: pymail ({self.label}) exited with {code} on SIGTERM", file=sys.stderr)
            log_text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
            bad = [ln for ln in log_text.splitlines() if " ERROR " in ln or "Traceback" in ln]
            self.log_error_lines = len(bad)
            if bad:
                print(f"  server log ({self.label}) has {len(bad)} ERROR/Traceback lines, first: "
                      f"{bad[0][:200]}", file=sys.stderr)
        for service in reversed(self.services):
            service.stop()
        if self.args.keep_data:
            print(f"  kept {self.workdir} (config, data, pymail.log)")
        else:
            _cleanup.append(self.workdir)


async def populate(server: PymailProcess, args: argparse.Namespace, run_id: str) -> MessageFactory:
    """`--count` messages to FETCH_USER's INBOX over SMTP (delivery.py's load generator)."""
    factory = MessageFactory(DEFAULT_FROM, FETCH_USER, args.size, run_id)
    load = LoadGenerator(server.host, server.port, factory, concurrency=args.populate_concurrency,
                         count=args.count, per_connection=100, reply_timeout=args.reply_timeout)
    t0 = time.perf_counter()
    async with asyncio.timeout(args.timeout):
        stats = await load.run()
    if stats.errors or stats.accepted != args.count:
        raise BenchError(f"filling the mailbox: {stats.accepted} of {args.count} accepted; "
                         + ", ".join(f"{k} x{v}" for k, v in stats.errors.items()))
    wall = time.perf_counter() - t0
    print(f"  delivered {args.count} messages of {factory.message_size} bytes in {wall:.1f}s "
          f"({args.count / wall:.0f}/s)", flush=True)
    return factory


# --------------------------------------------------------------------------- main


#: Temporary directories to remove once the results are out.
_cleanup: list[Path] = []


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except BenchError as e:
        print(f"benchmarks.imap: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmarks.imap: interrupted", file=sys.stderr)
        return 130
    finally:
        for path in _cleanup:
            print(f"  removing {path}", flush=True)
            shutil.rmtree(path, ignore_errors=True)


def _check(args: argparse.Namespace) -> None:
    if args.count < 1 or args.workers < 1 or args.pipeline < 1 or args.range_rounds < 1:
        raise BenchError("--count, --workers, --pipeline and --range-rounds must be >= 1")
    if args.idle_connections < 0 or args.idle_setup_concurrency < 1 or args.populate_concurrency < 1:
        raise BenchError("--idle-connections must be >= 0, --idle-setup-concurrency and "
                         "--populate-concurrency >= 1")
    if args.fetch_count is not None and args.fetch_count < 1:
        raise BenchError("--fetch-count must be >= 1")
    if psutil is None:
        raise BenchError("psutil is missing (install the bench extra: pip install -e '.[bench]')")


def _main(args: argparse.Namespace) -> int:
    _check(args)
    loop_name = _install_loop(args.no_uvloop)
    started = _dt.datetime.now()
    json_path: Path = args.json or RESULTS_DIR / f"imap-{started:%Y%m%d-%H%M%S}.json"
    run_id = f"{started:%Y%m%d%H%M%S}.{os.getpid()}"
    # Client sockets + the server's (a child inherits this limit): connections + slack.
    needed = args.idle_connections + max(args.concurrency) + 256
    soft, hard = raise_open_files_limit(needed)
    if args.idle_connections and soft != resource.RLIM_INFINITY and soft < needed:
        raise BenchError(f"RLIMIT_NOFILE is {soft} (hard {hard}): {args.idle_connections} idle "
                         f"connections need about {needed}; raise the hard limit (ulimit -Hn)")

    fetch_rows: list[FetchResult] = []
    idle_rows: list[IdleResult] = []
    servers: list[BenchServer] = []
    meta: dict[str, Any] = {
        "benchmark": "imap",
        "started_at": started.isoformat(timespec="seconds"),
        "command": [sys.argv[0], *sys.argv[1:]],
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                 "python": platform.python_version()},
        "server": {"kind": "pymail", "workers": args.workers, "index": args.backend,
                   "blobs": args.blobs, "git_revision": git_revision()},
        "client": {"event_loop": loop_name, "tls": True, "pipeline": args.pipeline,
                   "open_files_limit": soft},
        "count": args.count,
        "fetch_count": args.fetch_count or args.count,
        "range_rounds": args.range_rounds,
        "warmup": args.warmup,
    }
    try:
        need_fetch_server = bool(args.modes) or (args.idle_connections and "populated" in args.idle_inbox)
        if need_fetch_server:
            main_server = BenchServer(args, "fetch")
            servers.append(main_server)
            proc = main_server.start([FETCH_USER])
            pid = main_server.pid
            fs = filesystem_of(proc.data_dir)
            meta["server"].update({"pid": pid, "smtp": f"{proc.host}:{proc.port}",
                                   "imaps": f"{proc.host}:{proc.imaps_port}",
                                   "data_dir_filesystem": fs,
                                   "open_files_limit": open_files_limit(pid)})
            print(f"imap benchmark: pymail ({args.backend} index + {args.blobs} blobs, "
                  f"workers={args.workers}), IMAPS on {proc.host}:{proc.imaps_port}, pid {pid}", flush=True)
            if fs:
                print(f"  data dir {proc.data_dir} on {fs}")
            print(f"  client loop {loop_name}, {os.cpu_count()} CPUs, open files limit: client "
                  f"{soft}, server {fmt(open_files_limit(pid))}", flush=True)
            asyncio.run(_run_main_server(main_server, args, run_id, fetch_rows, idle_rows, meta))
            main_server.check_alive()
            main_server.stop()
            meta["server"]["log_error_lines"] = main_server.log_error_lines
        if args.idle_connections and "empty" in args.idle_inbox:
            empty_server = BenchServer(args, "idle")
            servers.append(empty_server)
            empty_server.start([IDLE_EMPTY_USER])
            print(f"  fresh pymail for the empty INBOX, pid {empty_server.pid}", flush=True)
            asyncio.run(_run_idle_row(empty_server, args, "empty", IDLE_EMPTY_USER, idle_rows))
            empty_server.check_alive()
            empty_server.stop()
            meta["server"]["idle_empty_log_error_lines"] = empty_server.log_error_lines
    finally:
        for server in servers:
            if server.process is not None and server.log_error_lines is None:
                server.stop()

    print()
    print(render_tables(fetch_rows, idle_rows))
    meta["idle"] = [r.__dict__ for r in idle_rows]
    meta["fetch"] = [r.__dict__ for r in fetch_rows]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  JSON: {json_path}")
    failed = any(r.error_count or r.timed_out for r in fetch_rows) or any(r.error_count for r in idle_rows)
    return 1 if failed else 0


async def _run_idle_row(server: BenchServer, args: argparse.Namespace, kind: str, user: str,
                        idle_rows: list[IdleResult]) -> None:
    assert server.process is not None and server.process.imaps_port is not None
    print(f"  idle ({kind} INBOX): {args.idle_connections} connections, idling:", end="", flush=True)
    row = await run_idle(
        kind, server.process.host, server.process.imaps_port, server.tls_context(), user,
        connections=args.idle_connections, setup_concurrency=args.idle_setup_concurrency,
        settle=args.idle_settle, timeout=args.timeout, reply_timeout=args.reply_timeout,
        server_pid=server.pid,
    )
    print(f"; {fmt(row.rss_kib_per_connection)} KiB RSS per connection, "
          f"{row.still_open} kept, {row.error_count} errors", flush=True)
    idle_rows.append(row)
    server.check_alive()


async def _run_main_server(server: BenchServer, args: argparse.Namespace, run_id: str,
                           fetch_rows: list[FetchResult], idle_rows: list[IdleResult],
                           meta: dict[str, Any]) -> None:
    proc = server.process
    assert proc is not None and proc.imaps_port is not None
    factory = await populate(proc, args, run_id)
    meta["message"] = {"requested_size": args.size, "size": factory.message_size,
                       "header_bytes": factory.header_len, "body_bytes": factory.body_len}
    context = server.tls_context()
    host, port = proc.host, proc.imaps_port

    if args.idle_connections and "populated" in args.idle_inbox:
        await _run_idle_row(server, args, "populated", FETCH_USER, idle_rows)
    if not args.modes:
        return

    top = max(args.concurrency)
    try:
        opened = await asyncio.gather(*(open_session(host, port, context, FETCH_USER, BENCH_PASSWORD)
                                        for _ in range(top)))
    except (OSError, ImapProtocolError, asyncio.IncompleteReadError, ValueError) as e:
        raise BenchError(f"cannot open the fetch connections: {_error_kind(e)}") from None
    clients = [c for c, _ in opened]
    try:
        exists = opened[0][1]
        if exists != args.count:
            raise BenchError(f"SELECT INBOX says {exists} EXISTS, {args.count} were delivered")
        search = await clients[0].command(b"UID SEARCH ALL")
        uids = [int(x) for u in search.untagged if u.startswith(b"* SEARCH") for x in u.split()[2:]]
        if len(uids) != args.count:
            raise BenchError(f"UID SEARCH ALL found {len(uids)} messages, {args.count} expected")
        if args.warmup:
            for items in (HEADER_ITEMS, BODY_ITEMS):
                stats = FetchStats()
                await _fetch_each(clients[0], deque(uids[: args.warmup]), items, 1, stats, args.reply_timeout)
                if stats.errors:
                    raise BenchError("warm-up fetch failed: "
                                     + ", ".join(f"{k} x{v}" for k, v in stats.errors.items()))
        fetch_count = args.fetch_count or args.count
        for mode in args.modes:
            for conc in args.concurrency:
                for i in range(conc):  # a connection broken by an error is replaced
                    if clients[i].broken:
                        clients[i].close()
                        clients[i], _ = await open_session(host, port, context, FETCH_USER, BENCH_PASSWORD)
                print(f"  {mode}, concurrency {conc} ...", end="", flush=True)
                row = await run_fetch_level(
                    mode, clients[:conc], uids, fetch_count=fetch_count, pipeline=args.pipeline,
                    range_rounds=args.range_rounds, reply_timeout=args.reply_timeout,
                    timeout=args.timeout, server_pid=server.pid,
                )
                print(f" {row.messages_per_second:.0f} msgs/s, {row.error_count} errors", flush=True)
                fetch_rows.append(row)
                server.check_alive()
    finally:
        for client in clients:
            if not client.broken:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await client.command(b"LOGOUT")
            client.close()


if __name__ == "__main__":
    sys.exit(main())
