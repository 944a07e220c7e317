"""Per-client-address connection limits (``[limits] connections_per_ip``).

One `ConnectionLimiter` per process is shared by every service of that process (SMTP,
submission, submissions, IMAP, IMAPS, POP3, POP3S): it counts the connections each
client address holds at this moment, and refuses one more past the limit.  The client
address is the real client's: the PROXY header's source when a trusted load balancer
sent one (`pymail.net.proxy`), else the socket's peer.

The count is per process, like Postfix's anvil is per host: with ``server.workers = N``
(SO_REUSEPORT spreads connections over the workers) one address may hold up to N times
the limit on the machine.  A connection is counted from the moment its protocol starts
(after the PROXY header and, on an implicit-TLS port, after the TLS handshake, which is
bounded by its own 30 s timeout) until its session ends.

Invariants: a slot is released exactly once (`ConnectionSlot.release` is idempotent),
and callers release it in a ``finally`` of the task that acquired it, so neither a
failed TLS handshake, a protocol error nor a cancelled task leaks one; an address
whose count drops to zero is forgotten (the table holds only connected clients).
"""

from __future__ import annotations

__all__ = ["ConnectionLimiter", "ConnectionSlot"]


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


class ConnectionLimiter:
    """Simultaneous connections per client address, at most ``limit`` (0 = no limit).

    ``counts`` maps each connected address to the connections it holds now."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError("the limit cannot be negative")
        self.limit = limit
        self.counts: dict[str, int] = {}

    def acquire(self, ip: str) -> ConnectionSlot | None:
        """A slot for one more connection from `ip`, or None when it holds `limit`."""
        held = self.counts.get(ip, 0)
        if self.limit and held >= self.limit:
            return None
        self.counts[ip] = held + 1
        return ConnectionSlot(self, ip)

    def held(self, ip: str) -> int:
        """The connections `ip` holds now."""
        return self.counts.get(ip, 0)

    def _release(self, ip: str) -> None:
        held = self.counts.get(ip, 0) - 1
        if held > 0:
            self.counts[ip] = held
        else:
            self.counts.pop(ip, None)
