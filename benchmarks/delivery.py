"""The delivery benchmark: how fast does an SMTP server accept and store mail?

    python -m benchmarks.delivery --concurrency 1,10,50 --size 4k --count 2000
    scripts/bench.sh ...same options...

Without `--target` it starts pymail itself, by default on the embedded default (SQLite
index + file blobs in a temporary data directory, a free loopback port for SMTP, every
other listener off; `--backend postgres` / `--blobs s3` start a private PostgreSQL
cluster and a moto S3 server for the run instead), adds a domain and one user per concurrency level with the `pymail` CLI, and drives
it with an asyncio SMTP load generator.  Per level it reports:

* accepted msgs/s   250 replies to DATA per second of wall time of the load phase;
* e2e msgs/s        messages visible in the recipient's INBOX through the store
                    interfaces (`open_store` → `Directory.get_user` → `Index.get_mailbox`
                    → `Index.list_messages`), from the first send to all visible;
* latency           p50/p90/p99/max per message, MAIL FROM written → 250 after DATA read;
* server CPU        user+sys seconds of the server process and its children (workers)
                    per accepted message, as cores busy (CPU s / wall s), and the busiest
                    process's main (event loop) thread's share of wall time;
* client CPU        the load generator's own user+sys seconds (is the client the limit?),
                    and the CPU the rest of the machine used meanwhile (noise);
* errors           non-250 replies and connection errors, by kind.  Never hidden.

With `--target HOST:PORT` (loopback only) the same load goes to any running SMTP server;
e2e is then "n/a", and server CPU is "n/a" unless `--server-pid PID` names the process.

The load generator is deliberately lean: raw asyncio streams (uvloop when installed),
RFC 2920 PIPELINING (MAIL FROM + RCPT TO + DATA in one write, three replies read, then
headers + dot-stuffed body + ".\\r\\n" in one write), the body built and dot-stuffed once
per level, only a short per-message header block (unique Message-ID) made per message.
Every run is bounded: `--count` messages per level and a `--timeout` per level.

Results: a table on stdout and JSON (`--json PATH`, default
benchmarks/results/delivery-<timestamp>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import email.utils
import ipaddress
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # pragma: no cover - the "bench" extra installs it
    psutil = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"
BENCH_DOMAIN = "bench.example"
DEFAULT_FROM = f"loadgen@{BENCH_DOMAIN}"
DEFAULT_PER_CONNECTION = 100
BENCH_PASSWORD = "bench-password"  #: of every user the benchmarks make


class BenchError(Exception):
    """A problem that stops the benchmark; printed as one line."""


# --------------------------------------------------------------------------- options


def parse_size(text: str) -> int:
    """Bytes from "4096", "4k", "100k", "1m" (binary units)."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    mult = 1
    if t and t[-1] in "kmg":
        mult = {"k": 1024, "m": 1024**2, "g": 1024**3}[t[-1]]
        t = t[:-1]
    try:
        value = int(float(t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 4k, 100k, 1m)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: must be positive")
    return value


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid concurrency list {text!r} (e.g. 1,10,50)") from None
    if not levels or any(n < 1 for n in levels):
        raise argparse.ArgumentTypeError(f"invalid concurrency list {text!r} (e.g. 1,10,50)")
    return levels


def parse_loopback_target(text: str) -> tuple[str, int]:
    """("127.0.0.1", 2525) from "127.0.0.1:2525" / "[::1]:2525"; BenchError otherwise."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise BenchError(f"--target {text!r}: expected HOST:PORT, e.g. 127.0.0.1:2525 or [::1]:2525")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if ip is None or not (
        (ip.version == 4 and ip in ipaddress.ip_network("127.0.0.0/8"))
        or (ip.version == 6 and ip == ipaddress.ip_address("::1"))
    ):
        raise BenchError(
            f"--target {text!r} refused: only loopback addresses (127.0.0.0/8 or ::1) may be targeted"
        )
    return str(ip), int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks.delivery",
        description="SMTP delivery benchmark: start pymail (or aim at --target) and drive it "
        "with an asyncio SMTP load generator.",
    )
    p.add_argument("--concurrency", type=parse_levels, default=[1, 10, 50], metavar="N[,N...]",
                   help="concurrent client connections; a list runs each level in turn against "
                   "the same server, one table row each (default 1,10,50)")
    p.add_argument("--size", type=parse_size, default=parse_size("4k"), metavar="SIZE",
                   help="message size, headers included (4k, 100k, 1m; default 4k)")
    p.add_argument("--count", type=int, default=2000, metavar="N",
                   help="messages per level (default 2000)")
    p.add_argument("--messages-per-connection", type=int, default=DEFAULT_PER_CONNECTION, metavar="N",
                   help=f"messages sent over one connection before QUIT and reconnect; 1 includes "
                   f"connection setup in every message, 0 = never reconnect (default "
                   f"{DEFAULT_PER_CONNECTION}: like an MTA's connection cache, the server's "
                   f"delivery path dominates, connection setup is ~1%% of the work)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="pymail's server.workers (default 1)")
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite",
                   help="pymail's index: the embedded SQLite, or a private PostgreSQL cluster "
                        "started for the run (fsync on, like production; default sqlite)")
    p.add_argument("--blobs", choices=("file", "s3"), default="file",
                   help="pymail's message store: files, or S3 on a moto server started for "
                        "the run (moto is an in-memory stand-in for MinIO; default file)")
    p.add_argument("--checks", action="store_true",
                   help="inbound checks on: Rspamd, clamd and NSD started here (SPF, DKIM "
                   "(every message signed), DMARC p=reject, iprev), all asked for every message")
    p.add_argument("--target", metavar="HOST:PORT",
                   help="aim at an already-running SMTP server on loopback instead of starting "
                   "pymail (e2e is then n/a; CPU too unless --server-pid)")
    p.add_argument("--server-pid", type=int, metavar="PID",
                   help="with --target: measure this process's (and its children's) CPU")
    p.add_argument("--rcpt", metavar="ADDRESS",
                   help=f"recipient (default: a fresh user per level, bench-cN@{BENCH_DOMAIN}, "
                   "made by the benchmark; with --target you will want to set this)")
    p.add_argument("--from", dest="mail_from", default=DEFAULT_FROM, metavar="ADDRESS",
                   help=f"envelope and header sender (default {DEFAULT_FROM})")
    p.add_argument("--json", type=Path, metavar="PATH",
                   help="where to write the JSON results (default "
                   "benchmarks/results/delivery-<timestamp>.json)")
    p.add_argument("--warmup", type=int, default=20, metavar="N",
                   help="messages sent once before the first level, not measured (default 20)")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                   help="bound on each level's load phase; what is not done by then is "
                   "counted as errors (default 600)")
    p.add_argument("--visible-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait after the load for all accepted messages to be "
                   "visible in the index (default 60)")
    p.add_argument("--reply-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="bound on each SMTP reply (default 120)")
    p.add_argument("--data-parent", type=Path, metavar="DIR",
                   help="where to make the temporary pymail data dir (default: the system "
                   "temp dir; mind tmpfs, where fsync costs nothing)")
    p.add_argument("--keep-data", action="store_true",
                   help="keep the temporary directory (config, data, server log)")
    p.add_argument("--no-uvloop", action="store_true",
                   help="run the load generator on the stdlib asyncio loop")
    return p


# --------------------------------------------------------------------------- message


_WORDS = (
    "mail server delivery queue message index blob commit durable reply client session "
    "transaction envelope recipient sender header body latency throughput the a of to and in "
    "is that for it on with as was at by be this have from or one had not but what all were "
    "when we there can an your which their said if do will each about how up out them then "
    "she many some so these would other into has more her two like him see time could no "
    "make than first been its who now people my made over did down only way find use may "
    "water long little very after words called just where most know get through back much"
).split()


def build_body_lines(size: int) -> list[bytes]:
    """Plain text lines (without CRLF) totalling `size` bytes with their CRLFs.

    Deterministic; lines of 40-76 characters, a blank line between paragraphs and now and
    then a line starting with "." so the dot-stuffing path is exercised (as quoted text or
    a signature separator sometimes does in real mail)."""
    rng = random.Random(5321)
    lines: list[bytes] = []
    total = 0
    n = 0
    while total < size:
        n += 1
        if n % 14 == 0:
            line = b""
        elif n % 37 == 0:
            line = b". A line starting with a dot, dot-stuffed on the wire and undone by the server"
        else:
            width = rng.randint(40, 76)
            words: list[str] = []
            length = 0
            while length < width:
                w = rng.choice(_WORDS)
                words.append(w)
                length += len(w) + 1
            line = " ".join(words).capitalize().encode("ascii")[:98]
        room = size - total - 2
        if room < 0:
            break
        lines.append(line[:room])
        total += len(lines[-1]) + 2
    return lines


@dataclass
class MessageFactory:
    """Wire bytes for message number `seq`: a short header block + the shared body.

    The body is dot-stuffed once and already carries the end-of-data line, so each
    message costs one small bytes formatting and no copy of the body."""

    mail_from: str
    rcpt: str
    size: int  #: target size of the message as stored before trace headers
    run_id: str
    body_wire: bytes = b""  #: dot-stuffed body + ".\r\n"
    body_len: int = 0  #: body octets without stuffing and terminator
    header_len: int = 0
    date: str = ""
    #: (selector, domain, private key PEM): every message carries one DKIM signature
    #: over its From, Date and MIME headers and the shared body (--checks)
    dkim_key: tuple[bytes, bytes, bytes] | None = None
    dkim_signature: bytes = b""

    def __post_init__(self) -> None:
        self.date = email.utils.formatdate(localtime=True)
        self.header_len = len(self.headers(0))
        body_size = max(self.size - self.header_len, 64)
        lines = build_body_lines(body_size)
        self.body_len = sum(len(x) + 2 for x in lines)
        stuffed = [b"." + x if x.startswith(b".") else x for x in lines]
        self.body_wire = b"\r\n".join(stuffed) + b"\r\n.\r\n"
        if self.dkim_key is not None:
            import dkim

            selector, domain, pem = self.dkim_key
            body = b"\r\n".join(lines) + b"\r\n"
            self.dkim_signature = dkim.sign(
                self.headers(0) + body, selector, domain, pem,
                include_headers=[b"from", b"date", b"mime-version", b"content-type"])
            self.header_len = len(self.headers(0))

    def headers(self, seq: int) -> bytes:
        return self.dkim_signature + (
            f"Date: {self.date}\r\n"
            f"From: Benchmark Load Generator <{self.mail_from}>\r\n"
            f"To: <{self.rcpt}>\r\n"
            f"Subject: Delivery benchmark message {seq:08d}\r\n"
            f"Message-ID: <{self.run_id}.{seq:08d}@{BENCH_DOMAIN}>\r\n"
            f"MIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii; format=flowed\r\n"
            f"Content-Transfer-Encoding: 7bit\r\n"
            f"X-Mailer: pymail-bench-delivery/1\r\n"
            f"\r\n"
        ).encode("ascii")

    @property
    def message_size(self) -> int:
        return self.header_len + self.body_len


# --------------------------------------------------------------------------- SMTP client


class SmtpProtocolError(Exception):
    """The server said something that is not an SMTP reply, or closed the connection."""


async def read_reply(reader: asyncio.StreamReader) -> int:
    """The code of the next (possibly multi-line) reply."""
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise SmtpProtocolError("connection closed")
        if len(line) < 4 or line[3:4] != b"-":
            break
    if not line[:3].isdigit():
        raise SmtpProtocolError(f"not an SMTP reply: {line[:40]!r}")
    return int(line[:3])


async def read_ehlo(reader: asyncio.StreamReader) -> tuple[int, set[str]]:
    keywords: set[str] = set()
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise SmtpProtocolError("connection closed")
        keywords.add(line[4:].split(b" ", 1)[0].strip().upper().decode("ascii", "replace"))
        if len(line) < 4 or line[3:4] != b"-":
            break
    if not line[:3].isdigit():
        raise SmtpProtocolError(f"not an SMTP reply: {line[:40]!r}")
    return int(line[:3]), keywords


@dataclass
class LoadStats:
    accepted: int = 0
    attempted: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    connections: int = 0
    connect_seconds: float = 0.0  #: connect + greeting + EHLO, summed


class LoadGenerator:
    """`count` messages over `concurrency` connections; counts everything it sees."""

    def __init__(
        self,
        host: str,
        port: int,
        factory: MessageFactory,
        *,
        concurrency: int,
        count: int,
        per_connection: int,
        reply_timeout: float,
        seq_start: int = 0,
    ) -> None:
        self.host, self.port = host, port
        self.factory = factory
        self.concurrency = concurrency
        self.remaining = count
        self.per_connection = per_connection
        self.reply_timeout = reply_timeout
        self.seq = seq_start
        self.stats = LoadStats()
        self.ehlo = f"EHLO loadgen.{BENCH_DOMAIN}\r\n".encode()
        # The command lines are the same for every message: made once.
        self.mail = f"MAIL FROM:<{factory.mail_from}>\r\n".encode()
        self.mail_size = f"MAIL FROM:<{factory.mail_from}> SIZE={factory.message_size}\r\n".encode()
        self.rcpt = f"RCPT TO:<{factory.rcpt}>\r\n".encode()
        self.pipelined = {m: m + self.rcpt + b"DATA\r\n" for m in (self.mail, self.mail_size)}

    async def run(self) -> LoadStats:
        await asyncio.gather(*(self._worker() for _ in range(min(self.concurrency, self.remaining))))
        return self.stats

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, set[str]]:
        t0 = time.perf_counter()
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 16)
        try:
            code = await read_reply(reader)
            if code != 220:
                raise SmtpProtocolError(f"greeting {code}")
            writer.write(self.ehlo)
            code, keywords = await read_ehlo(reader)
            if code != 250:
                raise SmtpProtocolError(f"EHLO {code}")
        except BaseException:
            writer.transport.abort()
            raise
        self.stats.connections += 1
        self.stats.connect_seconds += time.perf_counter() - t0
        return reader, writer, keywords

    async def _quit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                writer.write(b"QUIT\r\n")
                await read_reply(reader)
        except (OSError, SmtpProtocolError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.transport.abort() if writer.transport.is_closing() else writer.close()

    async def _transaction(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keywords: set[str], seq: int
    ) -> bool:
        """One message.  True if the session is still usable (False: reconnect)."""
        f = self.factory
        mail = self.mail_size if "SIZE" in keywords else self.mail
        rcpt = self.rcpt
        stats = self.stats
        t0 = time.perf_counter()
        if "PIPELINING" in keywords:
            writer.write(self.pipelined[mail])
            c_mail = await read_reply(reader)
            c_rcpt = await read_reply(reader)
            c_data = await read_reply(reader)
        else:
            writer.write(mail)
            c_mail = await read_reply(reader)
            c_rcpt = c_data = 0
            if c_mail == 250:
                writer.write(rcpt)
                c_rcpt = await read_reply(reader)
                if c_rcpt in (250, 251):
                    writer.write(b"DATA\r\n")
                    c_data = await read_reply(reader)
        if c_data != 354:
            if c_mail != 250:
                stats.errors[f"MAIL {c_mail}"] += 1
            elif c_rcpt not in (250, 251):
                stats.errors[f"RCPT {c_rcpt}"] += 1
            else:
                stats.errors[f"DATA command {c_data}"] += 1
            if c_mail == 250:  # a transaction is open: reset it
                writer.write(b"RSET\r\n")
                await read_reply(reader)
            return c_mail != 421 and c_data != 421
        writer.writelines((f.headers(seq), f.body_wire))
        code = await read_reply(reader)
        if code == 250:
            stats.latencies.append(time.perf_counter() - t0)
            stats.accepted += 1
        else:
            stats.errors[f"DATA {code}"] += 1
        return code != 421

    async def _worker(self) -> None:
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, set[str]] | None = None
        on_conn = 0
        try:
            while self.remaining > 0:
                self.remaining -= 1
                self.seq += 1
                seq = self.seq
                self.stats.attempted += 1
                try:
                    async with asyncio.timeout(self.reply_timeout):
                        if conn is None:
                            conn = await self._open()
                            on_conn = 0
                        ok = await self._transaction(*conn, seq)
                    on_conn += 1
                    if not ok:
                        conn[1].transport.abort()
                        conn = None
                    elif self.per_connection and on_conn >= self.per_connection:
                        await self._quit(*conn[:2])
                        conn = None
                except TimeoutError:
                    self.stats.errors["reply timeout"] += 1
                    if conn is not None:
                        conn[1].transport.abort()
                    conn = None
                except (OSError, SmtpProtocolError, asyncio.IncompleteReadError, ValueError) as e:
                    kind = "connection closed" if isinstance(e, asyncio.IncompleteReadError) else (
                        str(e) if isinstance(e, SmtpProtocolError) else type(e).__name__)
                    self.stats.errors[f"connection: {kind}"] += 1
                    if conn is not None:
                        conn[1].transport.abort()
                    conn = None
                except asyncio.CancelledError:  # the level's --timeout
                    self.stats.errors["level timeout: in flight"] += 1
                    raise
        finally:
            if conn is not None:
                if asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    conn[1].transport.abort()
                else:
                    await self._quit(*conn[:2])


# --------------------------------------------------------------------------- measuring


def cpu_seconds_tree(pid: int) -> float | None:
    """user+sys of the process, its live descendants and its reaped children."""
    if psutil is None:
        return None
    try:
        proc = psutil.Process(pid)
        t = proc.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        children = proc.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            ct = child.cpu_times()
            total += ct.user + ct.system
    return total


def main_thread_seconds(pid: int) -> dict[int, float]:
    """{process id: user+sys of its main thread} for the process and its descendants.

    In pymail the main thread runs the event loop (storage work runs in other threads),
    so its share of wall time says whether a process's event loop is saturated."""
    out: dict[int, float] = {}
    if psutil is None:
        return out
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return out
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            for th in proc.threads():
                if th.id == proc.pid:
                    out[proc.pid] = th.user_time + th.system_time
    return out


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes on the machine spent busy (not idle/iowait)."""
    if psutil is None:
        return None
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


class InboxWatcher:
    """How many messages are in a user's INBOX, read through the store interfaces.

    Incremental (`uid_min` past the last UID seen), so polling stays cheap as the
    mailbox grows."""

    def __init__(self, store: Any, address: str) -> None:
        self.store = store
        self.address = address
        self.mailbox_id: int | None = None
        self.max_uid = 0
        self.count = 0

    async def poll(self) -> int:
        if self.mailbox_id is None:
            user = await self.store.directory.get_user(self.address)
            if user is None:
                raise BenchError(f"no user {self.address} in the directory")
            box = await self.store.index.get_mailbox(user.id, "INBOX")
            if box is None:
                return 0
            self.mailbox_id = box.id
        rows = await self.store.index.list_messages(self.mailbox_id, uid_min=self.max_uid + 1)
        if rows:
            self.count += len(rows)
            self.max_uid = max(self.max_uid, rows[-1].uid)
        return self.count


# --------------------------------------------------------------------------- pymail


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PymailProcess:
    """`python -m pymail serve --config ...` on a free loopback port, data in `workdir`."""

    def __init__(self, workdir: Path, workers: int, storage_config: str = "", *,
                 imaps: bool = False) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.workers = workers
        self.host = "127.0.0.1"
        self.port = free_port()
        #: IMAPS (implicit TLS, the embedded default's certificate) when asked for
        #: (benchmarks/imap.py); off for the delivery benchmark.
        self.imaps_port = free_port() if imaps else None
        self.config_path = workdir / "pymail.toml"
        self.log_path = workdir / "pymail.log"
        self.config_path.write_text(
            f"""# written by benchmarks/delivery.py
[server]
hostname = "mx.{BENCH_DOMAIN}"
data_dir = "{self.data_dir}"
workers = {workers}

[listen]
smtp = ["{self.host}:{self.port}"]
submission = []
submissions = []
imap = []
imaps = [{f'"{self.host}:{self.imaps_port}"' if imaps else ""}]
pop3 = []
pop3s = []
http = []

[limits]
# the benchmarks open up to 1000 connections from 127.0.0.1
connections_per_ip = 0
{storage_config}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYMAIL_CONFIG", None)
        env.pop("PYMAIL_DATA", None)
        return env

    @property
    def ca_file(self) -> Path:
        """The embedded default's private CA, which signs the IMAPS certificate."""
        return self.data_dir / "tls" / "ca.pem"

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def start(self, timeout: float = 60.0) -> None:
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pymail", "serve", "--config", str(self.config_path)],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
            start_new_session=True,  # a Ctrl-C to the benchmark is ours to forward
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"pymail exited with {self.proc.returncode} at start:\n{self.log_tail()}")
            greeted = False
            with contextlib.suppress(OSError):
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    greeted = s.recv(512).startswith(b"220")
            if greeted and self._workers_up():
                time.sleep(0.5 if self.workers > 1 else 0)  # let every worker reach accept()
                return
            time.sleep(0.1)
        raise BenchError(f"pymail did not start within {timeout:.0f}s:\n{self.log_tail()}")

    def _workers_up(self) -> bool:
        if self.workers == 1 or psutil is None or self.proc is None:
            return True
        with contextlib.suppress(psutil.NoSuchProcess):
            return len(psutil.Process(self.proc.pid).children()) >= self.workers
        return False

    def cli(self, *args: str, input: str | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "pymail", "--config", str(self.config_path), *args],
            input=input, capture_output=True, text=True, env=self.env, timeout=120,
        )
        if result.returncode != 0:
            raise BenchError(f"pymail {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def ensure_user(self, address: str) -> None:
        domain = address.rpartition("@")[2].lower()
        if domain not in self.cli("domain", "list").split():
            self.cli("domain", "add", domain)
        if address.lower() not in self.cli("user", "list", domain).lower().split():
            self.cli("user", "add", address, "--password-stdin", input=BENCH_PASSWORD + "\n")

    def open_store(self) -> Any:
        """The server's storage, opened through the same config."""
        from pymail.app import open_configured_store
        from pymail.config import load_config

        return open_configured_store(load_config(self.config_path))

    def stop(self, timeout: float = 45.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            code = self.proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
        return code


# --------------------------------------------------------------------------- one level


@dataclass
class LevelResult:
    concurrency: int
    count: int
    messages_per_connection: int
    rcpt: str
    accepted: int
    attempted: int
    errors: dict[str, int]
    error_count: int
    timed_out: bool
    wall_seconds: float
    accepted_per_second: float
    e2e_per_second: float | None
    e2e_seconds: float | None
    visible: int | None
    visible_lag_ms: float | None
    latency_ms: dict[str, float | None]
    connections: int
    connect_ms_mean: float | None
    server_cpu_seconds: float | None
    server_cpu_ms_per_message: float | None
    server_cores_busy: float | None
    #: The busiest server process's main (event loop) thread: CPU s / wall s, in %.
    server_loop_busy_percent: float | None
    client_cpu_seconds: float
    client_cores_busy: float
    #: CPU the rest of the machine used meanwhile (cores): noise from other work.
    other_cores_busy: float | None
    load_average: tuple[float, float] | None  #: 1-minute load before, after


async def run_level(
    *,
    host: str,
    port: int,
    factory: MessageFactory,
    concurrency: int,
    count: int,
    per_connection: int,
    reply_timeout: float,
    timeout: float,
    visible_timeout: float,
    watcher: InboxWatcher | None,
    server_pid: int | None,
    seq_start: int,
) -> LevelResult:
    load = LoadGenerator(
        host, port, factory, concurrency=concurrency, count=count,
        per_connection=per_connection, reply_timeout=reply_timeout, seq_start=seq_start,
    )
    baseline = await watcher.poll() if watcher else 0
    srv0 = cpu_seconds_tree(server_pid) if server_pid else None
    loop0 = main_thread_seconds(server_pid) if server_pid else {}
    cli0 = own_cpu_seconds()
    sys0 = machine_busy_seconds()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    timed_out = False
    task = asyncio.ensure_future(load.run())
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout)
    except TimeoutError:
        timed_out = True
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stats = load.stats
        if load.remaining:
            stats.errors["level timeout: not sent"] += load.remaining
            stats.attempted += load.remaining
    t_load = time.perf_counter()
    stats = load.stats

    visible: int | None = None
    t_visible: float | None = None
    if watcher is not None:
        wait_until = time.perf_counter() + visible_timeout
        while True:
            visible = await watcher.poll() - baseline
            now = time.perf_counter()
            if visible >= stats.accepted:
                t_visible = now
                break
            if now > wait_until:
                break
            await asyncio.sleep(0.005)
    # CPU until everything accepted was visible (the server may still be working after
    # its last 250 only if it breaks the durability rule; then that work counts too).
    srv1 = cpu_seconds_tree(server_pid) if server_pid else None
    loop1 = main_thread_seconds(server_pid) if server_pid else {}
    cli1 = own_cpu_seconds()
    sys1 = machine_busy_seconds()
    t_end = time.perf_counter()

    wall = t_load - t0
    lat = sorted(stats.latencies)
    ms = lambda v: None if v is None else round(v * 1000, 3)  # noqa: E731
    srv = None if srv0 is None or srv1 is None else srv1 - srv0
    error_count = sum(stats.errors.values())
    e2e_seconds = None if t_visible is None else t_visible - t0
    return LevelResult(
        concurrency=concurrency,
        count=count,
        messages_per_connection=per_connection,
        rcpt=factory.rcpt,
        accepted=stats.accepted,
        attempted=stats.attempted,
        errors=dict(sorted(stats.errors.items())),
        error_count=error_count,
        timed_out=timed_out,
        wall_seconds=round(wall, 4),
        accepted_per_second=round(stats.accepted / wall, 2) if wall > 0 else 0.0,
        e2e_per_second=(round(stats.accepted / e2e_seconds, 2) if e2e_seconds else None),
        e2e_seconds=None if e2e_seconds is None else round(e2e_seconds, 4),
        visible=visible,
        visible_lag_ms=None if t_visible is None else round((t_visible - t_load) * 1000, 2),
        latency_ms={
            "p50": ms(percentile(lat, 50)),
            "p90": ms(percentile(lat, 90)),
            "p99": ms(percentile(lat, 99)),
            "max": ms(lat[-1] if lat else None),
            "mean": ms(sum(lat) / len(lat) if lat else None),
        },
        connections=stats.connections,
        connect_ms_mean=ms(stats.connect_seconds / stats.connections) if stats.connections else None,
        server_cpu_seconds=None if srv is None else round(srv, 3),
        server_cpu_ms_per_message=(round(srv * 1000 / stats.accepted, 3) if srv is not None and stats.accepted else None),
        server_cores_busy=None if srv is None else round(srv / (t_end - t0), 2),
        server_loop_busy_percent=(round(max(loop1[p] - loop0[p] for p in common) * 100 / (t_end - t0), 1)
                                  if (common := loop0.keys() & loop1.keys()) else None),
        client_cpu_seconds=round(cli1 - cli0, 3),
        client_cores_busy=round((cli1 - cli0) / (t_end - t0), 2),
        other_cores_busy=(None if sys0 is None or sys1 is None else round(
            max(0.0, (sys1 - sys0) - (cli1 - cli0) - (srv or 0.0)) / (t_end - t0), 2)),
        load_average=(round(load0, 2), round(os.getloadavg()[0], 2)),
    )


# --------------------------------------------------------------------------- output


def fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


COLUMNS = [
    ("conc", lambda r: fmt(r.concurrency)),
    ("msgs", lambda r: fmt(r.attempted)),
    ("ok", lambda r: fmt(r.accepted)),
    ("err", lambda r: fmt(r.error_count)),
    ("wall s", lambda r: fmt(r.wall_seconds, 1)),
    ("acc/s", lambda r: fmt(r.accepted_per_second, 1)),
    ("e2e/s", lambda r: fmt(r.e2e_per_second, 1)),
    ("p50 ms", lambda r: fmt(r.latency_ms["p50"], 1)),
    ("p90 ms", lambda r: fmt(r.latency_ms["p90"], 1)),
    ("p99 ms", lambda r: fmt(r.latency_ms["p99"], 1)),
    ("max ms", lambda r: fmt(r.latency_ms["max"], 1)),
    ("srv cpu ms/msg", lambda r: fmt(r.server_cpu_ms_per_message, 2)),
    ("srv cores", lambda r: fmt(r.server_cores_busy, 2)),
    ("srv loop %", lambda r: fmt(r.server_loop_busy_percent, 0)),
    ("cli cpu s", lambda r: fmt(r.client_cpu_seconds, 1)),
    ("cli cores", lambda r: fmt(r.client_cores_busy, 2)),
    ("other cores", lambda r: fmt(r.other_cores_busy, 2)),
]


def render_table(rows: list[LevelResult]) -> str:
    header = [name for name, _ in COLUMNS]
    body = [[get(r) for _, get in COLUMNS] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(b) for b in body]
    for r in rows:
        if r.errors:
            out.append(f"  errors at concurrency {r.concurrency}: "
                       + ", ".join(f"{k} x{v}" for k, v in r.errors.items()))
        if r.visible is not None and r.visible < r.accepted:
            out.append(f"  concurrency {r.concurrency}: only {r.visible} of {r.accepted} accepted "
                       f"messages visible in the index after the wait")
        if r.timed_out:
            out.append(f"  concurrency {r.concurrency}: the level hit --timeout")
    return "\n".join(out)


def git_revision() -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                           capture_output=True, text=True, timeout=10)
        if r.returncode == 0:
            return r.stdout.strip()
    return None


def filesystem_of(path: Path) -> str | None:
    if psutil is None:
        return None
    best = None
    real = str(path.resolve())
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (real == mp or real.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(best[0])):
            best = (mp, part.fstype)
    return None if best is None else f"{best[1]} ({best[0]})"


# --------------------------------------------------------------------------- main


def _install_loop(no_uvloop: bool) -> str:
    if not no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
            return f"uvloop {uvloop.__version__}"
    return "asyncio"


async def _close_store(store: Any) -> None:
    with contextlib.suppress(Exception):
        await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except BenchError as e:
        print(f"benchmarks.delivery: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("benchmarks.delivery: interrupted", file=sys.stderr)
        return 130
    finally:
        for path in _cleanup:  # after the table: removing many blob files takes a while
            print(f"  removing {path}", flush=True)
            shutil.rmtree(path, ignore_errors=True)


#: Temporary directories to remove once the results are out.
_cleanup: list[Path] = []


def start_storage_services(backend: str, blobs: str, workdir: Path, services: list[Any]) -> str:
    """Start what `--backend postgres` / `--blobs s3` need (appended to `services` for
    stopping) and return the [storage] TOML for pymail; "" for the embedded default."""
    if backend == "sqlite" and blobs == "file":
        return ""
    sys.path.insert(0, str(REPO))  # the test services live in tests/services
    lines = ["[storage]"]
    if backend == "postgres":
        from tests.services.postgres import PostgresService

        pg = PostgresService(durable=True).start()
        services.append(pg)
        lines.append(f'index = "{pg.create_database_sync("bench")}"')
    if blobs == "s3":
        from tests.services.s3 import start_moto_service

        s3 = start_moto_service(auth=False)
        services.append(s3)
        s3.create_bucket("pymail-bench")
        secret = workdir / "s3.secret"
        secret.write_text(s3.secret_access_key)
        lines += ['blobs = "s3://pymail-bench"', "[storage.s3]",
                  f'endpoint_url = "{s3.endpoint_url}"', f'access_key_id = "{s3.access_key_id}"',
                  f'secret_access_key_file = "{secret}"']
    return "\n".join(lines) + "\n"


def _main(args: argparse.Namespace) -> int:
    target: tuple[str, int] | None = None
    if args.target:
        target = parse_loopback_target(args.target)  # BenchError: one line
    if args.server_pid and not target:
        raise BenchError("--server-pid goes with --target (pymail started here is measured anyway)")
    if args.count < 1 or args.messages_per_connection < 0 or args.workers < 1:
        raise BenchError("--count and --workers must be >= 1, --messages-per-connection >= 0")
    if psutil is None:
        raise BenchError("psutil is missing (install the bench extra: pip install -e '.[bench]')")
    loop_name = _install_loop(args.no_uvloop)
    started = _dt.datetime.now()
    json_path: Path = args.json or RESULTS_DIR / f"delivery-{started:%Y%m%d-%H%M%S}.json"
    run_id = f"{started:%Y%m%d%H%M%S}.{os.getpid()}"

    server: PymailProcess | None = None
    workdir: Path | None = None
    checks: Any = None  #: benchmarks.checks_services.CheckServices with --checks
    services: list[Any] = []
    rows: list[LevelResult] = []
    meta: dict[str, Any] = {}
    try:
        if target is None:
            workdir = Path(tempfile.mkdtemp(prefix="pymail-bench-", dir=args.data_parent))
            storage_config = start_storage_services(args.backend, args.blobs, workdir, services)
            if args.checks:
                from benchmarks.checks_services import start_check_services

                checks = start_check_services(workdir, services)
                storage_config += checks.config
            server = PymailProcess(workdir, args.workers, storage_config)
            server.start()
            host, port, server_pid = server.host, server.port, server.proc.pid  # type: ignore[union-attr]
            rcpts = [args.rcpt] * len(args.concurrency) if args.rcpt else [
                f"bench-l{i + 1}-c{c}@{BENCH_DOMAIN}" for i, c in enumerate(args.concurrency)]
            warm_rcpt = args.rcpt or f"bench-warmup@{BENCH_DOMAIN}"
            for address in dict.fromkeys([*rcpts, *([warm_rcpt] if args.warmup else [])]):
                server.ensure_user(address)
            server_desc = (f"pymail ({args.backend} index + {args.blobs} blobs, workers={args.workers}) "
                           f"on {host}:{port}, pid {server_pid}")
            fs = filesystem_of(server.data_dir)
        else:
            host, port = target
            server_pid = args.server_pid
            rcpts = [args.rcpt or f"bench@{BENCH_DOMAIN}"] * len(args.concurrency)
            warm_rcpt = rcpts[0]
            server_desc = f"target {_hostport(host, port)}" + (f" (pid {server_pid})" if server_pid else "")
            fs = None
        dkim_key = checks.dkim_key if checks is not None else None
        size_factory = MessageFactory(args.mail_from, rcpts[0], args.size, run_id, dkim_key=dkim_key)
        meta = {
            "benchmark": "delivery",
            "started_at": started.isoformat(timespec="seconds"),
            "command": [sys.argv[0], *sys.argv[1:]],
            "host": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "server": {
                "kind": "pymail" if target is None else "target",
                "address": _hostport(host, port),
                "workers": args.workers if target is None else None,
                "index": args.backend if target is None else None,
                "blobs": args.blobs if target is None else None,
                "pid": server_pid,
                "data_dir_filesystem": fs,
                "git_revision": git_revision() if target is None else None,
            },
            "client": {"event_loop": loop_name, "pipelining": True},
            "message": {
                "requested_size": args.size,
                "size": size_factory.message_size,
                "header_bytes": size_factory.header_len,
                "body_bytes": size_factory.body_len,
                "wire_bytes": size_factory.header_len + len(size_factory.body_wire),
            },
            "count": args.count,
            "messages_per_connection": args.messages_per_connection,
            "mail_from": args.mail_from,
            "warmup": args.warmup,
        }
        print(f"delivery benchmark: {server_desc}", flush=True)
        if fs:
            print(f"  data dir {server.data_dir if server else ''} on {fs}")  # type: ignore[union-attr]
        print(f"  message {size_factory.message_size} bytes (before trace headers), "
              f"{args.count} per level, {args.messages_per_connection or 'unlimited'} per connection, "
              f"pipelining, client loop {loop_name}, {os.cpu_count()} CPUs", flush=True)

        async def run_all() -> None:
            store = server.open_store() if server else None
            try:
                seq = 0
                if args.warmup:
                    f = MessageFactory(args.mail_from, warm_rcpt, args.size, run_id + ".warmup",
                                       dkim_key=dkim_key)
                    wl = LoadGenerator(host, port, f, concurrency=1, count=args.warmup,
                                       per_connection=args.messages_per_connection,
                                       reply_timeout=args.reply_timeout)
                    async with asyncio.timeout(max(args.timeout, 60)):
                        ws = await wl.run()
                    if ws.errors:
                        print(f"  warm-up: {ws.accepted}/{args.warmup} accepted, errors: "
                              + ", ".join(f"{k} x{v}" for k, v in ws.errors.items()), flush=True)
                for conc, rcpt in zip(args.concurrency, rcpts):
                    factory = MessageFactory(args.mail_from, rcpt, args.size, run_id, dkim_key=dkim_key)
                    watcher = InboxWatcher(store, rcpt) if store is not None else None
                    print(f"  running concurrency {conc} ...", end="", flush=True)
                    r = await run_level(
                        host=host, port=port, factory=factory, concurrency=conc, count=args.count,
                        per_connection=args.messages_per_connection,
                        reply_timeout=args.reply_timeout, timeout=args.timeout,
                        visible_timeout=args.visible_timeout, watcher=watcher,
                        server_pid=server_pid, seq_start=seq,
                    )
                    seq += args.count
                    print(f" {r.accepted_per_second:.1f} accepted/s, {r.error_count} errors", flush=True)
                    rows.append(r)
                    if server is not None and server.proc is not None and server.proc.poll() is not None:
                        raise BenchError(f"pymail exited with {server.proc.returncode} during the run:\n"
                                         f"{server.log_tail()}")
            finally:
                if store is not None:
                    await _close_store(store)

        scanner_cpu_before = checks.cpu_seconds() if checks is not None else {}
        asyncio.run(run_all())
        if checks is not None:
            after = checks.cpu_seconds()
            accepted = sum(r.accepted for r in rows)
            meta["scanners_cpu_ms_per_msg"] = {
                name: round((after[name] - scanner_cpu_before.get(name, 0.0)) * 1000 / max(accepted, 1), 2)
                for name in after}
    finally:
        if server is not None:
            code = server.stop()
            if code not in (0, None):
                print(f"  note: pymail exited with {code} on SIGTERM", file=sys.stderr)
            log_text = server.log_path.read_text(errors="replace") if server.log_path.exists() else ""
            bad = [ln for ln in log_text.splitlines() if " ERROR " in ln or "Traceback" in ln]
            meta.setdefault("server", {})["log_error_lines"] = len(bad)
            if bad:
                print(f"  server log has {len(bad)} ERROR/Traceback lines, first: {bad[0][:200]}",
                      file=sys.stderr)
        for service in reversed(services):
            service.stop()
        if workdir is not None:
            if args.keep_data:
                print(f"  kept {workdir} (config, data, pymail.log)")
            else:
                _cleanup.append(workdir)

    print()
    print(render_table(rows))
    if meta.get("scanners_cpu_ms_per_msg"):
        print("  scanners' own CPU (not in srv cpu), ms per accepted message, all levels: " + ", ".join(
            f"{name} {value:.2f}" for name, value in meta["scanners_cpu_ms_per_msg"].items()))
    if rows:
        if target is not None:
            print("  e2e: n/a with --target" + ("" if server_pid else "; server CPU: n/a without --server-pid"))
        conns = ", ".join(f"c{r.concurrency}: {r.connections} conns, setup {fmt(r.connect_ms_mean, 2)} ms"
                          for r in rows)
        print(f"  connections: {conns}")
    meta["levels"] = [r.__dict__ for r in rows]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"  JSON: {json_path}")
    return 1 if any(r.error_count or r.timed_out for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
