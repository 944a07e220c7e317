"""Per-client-address connection limits (``[limits] connections_per_ip`` and
``connection_rate_per_ip``).

One `ConnectionLimiter` per process is shared by every service of that process (SMTP,
submission, submissions, IMAP, IMAPS, POP3, POP3S): it counts the connections each
client address holds at this moment and refuses one more past ``connections_per_ip``,
and it counts the connection attempts each address made in its current minute and
refuses one more past ``connection_rate_per_ip`` (Postfix's
``smtpd_client_connection_rate_limit``).  The client address is the real client's: the
PROXY header's source when a trusted load balancer sent one (`pymail.net.proxy`), else
the socket's peer.  Addresses are counted exactly (an IPv6 client is one /128).

Both counts are per process, like Postfix's anvil is per host: with
``server.workers = N`` (SO_REUSEPORT spreads connections over the workers) one address
may hold up to N times the limits on the machine.  A connection is counted from the
moment its protocol starts (after the PROXY header and, on an implicit-TLS port, after
the TLS handshake, which is bounded by its own 30 s timeout) until its session ends.

The rate is counted as anvil counts it: each address has a window of
`RATE_WINDOW` seconds that starts at its first attempt; every attempt in the window
counts, a refused one too (a client that keeps hammering stays refused until it slows
down), and the count starts again with the next attempt after the window ends.

Invariants: a slot is released exactly once (`ConnectionSlot.release` is idempotent),
and callers release it in a ``finally`` of the task that acquired it, so neither a
failed TLS handshake, a protocol error nor a cancelled task leaks one; an address whose
count drops to zero is forgotten (the table of counts holds only connected clients).
The rate table is bounded: an address is forgotten when its window ends (checked on
every attempt, oldest windows first, O(1) amortised), and it never holds more than
`MAX_RATE_ENTRIES` addresses (past that, the oldest window is forgotten early: under an
attack from that many addresses a minute the rate limit fails open, never memory).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ConnectionLimiter", "ConnectionSlot", "MAX_RATE_ENTRIES", "RATE_WINDOW", "Refused"]

#: Seconds over which ``connection_rate_per_ip`` counts (its unit is "per minute").
RATE_WINDOW = 60.0
#: Most addresses the rate table remembers at once.
MAX_RATE_ENTRIES = 100_000


class ConnectionSlot:
    """One counted connection of ``ip``; `release` it when the connection ends."""

    __slots__ = ("_limiter", "ip")

    def __init__(self, limiter: ConnectionLimiter, ip: str) -> None:
        self._limiter: ConnectionLimiter | None = limiter
        self.ip = ip  #: the client address the slot counts against

    def release(self) -> None:
        """Give the slot back (a second call does nothing)."""
        limiter, self._limiter = self._limiter, None
        if limiter is not None:
            limiter._release(self.ip)

    def __enter__(self) -> ConnectionSlot:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


@dataclass(frozen=True, slots=True)
class Refused:
    """Why `ConnectionLimiter.admit` refused a connection; `str()` is the log fields,
    e.g. ``reason=connection_rate rate=30/min``."""

    reason: str  #: ``too_many_connections`` or ``connection_rate``
    detail: str  #: ``limit=50`` or ``rate=30/min``

    def __str__(self) -> str:
        return f"reason={self.reason} {self.detail}"


class _Window:
    """One address's current rate window."""

    __slots__ = ("attempts", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.attempts = 0


class ConnectionLimiter:
    """Simultaneous connections per client address, at most ``limit``, and connection
    attempts per address per minute, at most ``rate_per_minute`` (0 = no limit, each).

    ``counts`` maps each connected address to the connections it holds now."""

    def __init__(self, limit: int, *, rate_per_minute: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 max_rate_entries: int = MAX_RATE_ENTRIES) -> None:
        if limit < 0 or rate_per_minute < 0:
            raise ValueError("the limit cannot be negative")
        self.limit = limit
        self.rate_per_minute = rate_per_minute
        self.counts: dict[str, int] = {}
        self._clock = clock
        self._max_rate_entries = max_rate_entries
        #: address -> its rate window, oldest window first
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (a limiter with none need not be made)."""
        return bool(self.limit or self.rate_per_minute)

    def admit(self, ip: str) -> ConnectionSlot | Refused:
        """A slot for one more connection from `ip`, or why it is refused: it holds
        `limit` connections, or it made `rate_per_minute` attempts this minute."""
        if self.rate_per_minute and self._count_attempt(ip) > self.rate_per_minute:
            return Refused("connection_rate", f"rate={self.rate_per_minute}/min")
        held = self.counts.get(ip, 0)
        if self.limit and held >= self.limit:
            return Refused("too_many_connections", f"limit={self.limit}")
        self.counts[ip] = held + 1
        return ConnectionSlot(self, ip)

    def held(self, ip: str) -> int:
        """The connections `ip` holds now."""
        return self.counts.get(ip, 0)

    def attempts(self, ip: str) -> int:
        """The attempts `ip` made in its current rate window (0 once it ended)."""
        window = self._windows.get(ip)
        if window is None or self._clock() - window.start >= RATE_WINDOW:
            return 0
        return window.attempts

    @property
    def rate_entries(self) -> int:
        """Addresses the rate table remembers now."""
        return len(self._windows)

    def _count_attempt(self, ip: str) -> int:
        """Count one attempt of `ip` in its window; the attempts there so far."""
        now = self._clock()
        windows = self._windows
        # forget every window that has ended (oldest first: they are in start order)
        while windows:
            oldest = next(iter(windows.values()))
            if now - oldest.start < RATE_WINDOW:
                break
            windows.popitem(last=False)
        window = windows.get(ip)
        if window is None:
            while len(windows) >= self._max_rate_entries:
                windows.popitem(last=False)
            window = windows[ip] = _Window(now)
        window.attempts += 1
        return window.attempts

    def _release(self, ip: str) -> None:
        held = self.counts.get(ip, 0) - 1
        if held > 0:
            self.counts[ip] = held
        else:
            self.counts.pop(ip, None)
