"""Probes the hardening tests run beside an attack on a real pymail process.

* `MemorySampler` samples the server's memory (every process of it: the serving worker
  and, with ``workers > 1``, the parent) from ``/proc/PID/status`` while a test runs, and
  keeps the peak.  ``anon`` is ``RssAnon``, the memory the process itself holds (heap,
  buffers); ``rss`` adds the file pages it has mapped, which the kernel can drop at will.
* `StallProbe` is the "second client": a thread that keeps opening an SMTP connection and
  timing how long the ``220`` greeting takes.  Every greeting needs the server's event
  loop, so the longest wait is the longest stall any other client saw.

Both measure from outside, with the same clock and sockets a user's client has.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

MiB = 1024 * 1024


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def server_pids(pid: int) -> list[int]:
    """The server process and its children (the workers)."""
    try:
        parent = psutil.Process(pid)
        return [pid, *(c.pid for c in parent.children(recursive=True))]
    except psutil.Error:
        return [pid]


@dataclass
class MemoryReading:
    rss: int  #: bytes, VmRSS summed over the server's processes
    anon: int  #: bytes, RssAnon summed over them


def read_memory(pid: int) -> MemoryReading:
    pids = server_pids(pid)
    return MemoryReading(
        rss=sum(_status_kib(p, "VmRSS") for p in pids) * 1024,
        anon=sum(_status_kib(p, "RssAnon") for p in pids) * 1024,
    )


@dataclass
class MemorySampler:
    """Peak memory of the server process tree while the ``with`` block runs."""

    pid: int
    interval: float = 0.02
    before: MemoryReading | None = None
    peak_rss: int = 0
    peak_anon: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "MemorySampler":
        self.before = read_memory(self.pid)
        self.peak_rss, self.peak_anon = self.before.rss, self.before.anon
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> MemoryReading:
        reading = read_memory(self.pid)
        self.peak_rss = max(self.peak_rss, reading.rss)
        self.peak_anon = max(self.peak_anon, reading.anon)
        return reading

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.sample()

    @property
    def growth_anon(self) -> int:
        """Peak anonymous memory above what the server held before the block."""
        assert self.before is not None
        return self.peak_anon - self.before.anon

    @property
    def growth_rss(self) -> int:
        assert self.before is not None
        return self.peak_rss - self.before.rss

    def describe(self) -> str:
        return (f"peak growth: anon {self.growth_anon / MiB:.1f} MiB, "
                f"rss {self.growth_rss / MiB:.1f} MiB")


@dataclass
class StallProbe:
    """Times SMTP greetings from `port` while the ``with`` block runs.

    ``waits`` holds each greeting's latency in seconds; a greeting that did not come
    within `timeout` counts as `timeout`."""

    port: int
    host: str = "127.0.0.1"
    interval: float = 0.05
    timeout: float = 60.0
    waits: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> "StallProbe":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.waits.append(self.greeting_wait())
            self._stop.wait(self.interval)

    def greeting_wait(self) -> float:
        started = time.monotonic()
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as s:
                s.settimeout(self.timeout)
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    data += chunk
                waited = time.monotonic() - started
                if not data.startswith(b"220"):
                    self.failures.append(data[:80].decode("ascii", "replace"))
                s.sendall(b"QUIT\r\n")
                return waited
        except OSError as exc:
            self.failures.append(repr(exc))
            return time.monotonic() - started

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)

    @property
    def longest(self) -> float:
        return max(self.waits, default=0.0)

    def describe(self) -> str:
        ordered = sorted(self.waits)
        p50 = ordered[len(ordered) // 2] if ordered else 0.0
        return (f"{len(self.waits)} greetings, p50 {p50 * 1000:.0f} ms, "
                f"longest {self.longest * 1000:.0f} ms, failures {len(self.failures)}")
