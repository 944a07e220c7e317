"""pymail.net.limits: connections held at once and connection attempts per minute per
client address, with an injected clock."""

from __future__ import annotations

import pytest

from pymail.net.limits import RATE_WINDOW, ConnectionLimiter, ConnectionSlot, Refused


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def take(limiter: ConnectionLimiter, ip: str) -> ConnectionSlot | None:
    """The slot `admit` gives, or None for a refusal (whatever its reason)."""
    admitted = limiter.admit(ip)
    return admitted if isinstance(admitted, ConnectionSlot) else None


def test_concurrent_limit_counts_held_connections() -> None:
    limiter = ConnectionLimiter(2)
    one, two = take(limiter, "192.0.2.1"), take(limiter, "192.0.2.1")
    assert isinstance(one, ConnectionSlot) and isinstance(two, ConnectionSlot)
    assert take(limiter, "192.0.2.1") is None
    assert limiter.admit("192.0.2.1") == Refused("too_many_connections", "limit=2")
    assert str(limiter.admit("192.0.2.1")) == "reason=too_many_connections limit=2"
    assert take(limiter, "192.0.2.2") is not None  # another address
    one.release()
    one.release()  # idempotent
    assert limiter.held("192.0.2.1") == 1
    assert take(limiter, "192.0.2.1") is not None


def test_rate_refuses_past_the_limit_within_a_minute(clock: Clock) -> None:
    limiter = ConnectionLimiter(0, rate_per_minute=3, clock=clock)
    for _ in range(3):
        slot = take(limiter, "198.51.100.7")
        assert slot is not None
        slot.release()  # the rate counts openings, not what is held
        clock.now += 1
    assert limiter.admit("198.51.100.7") == Refused("connection_rate", "rate=3/min")
    assert str(limiter.admit("198.51.100.7")) == "reason=connection_rate rate=3/min"
    assert take(limiter, "203.0.113.1") is not None  # another address has its own count
    assert limiter.held("198.51.100.7") == 0  # a refusal holds nothing


def test_the_window_starts_at_the_first_attempt_and_refused_attempts_count(clock: Clock) -> None:
    limiter = ConnectionLimiter(0, rate_per_minute=2, clock=clock)
    assert take(limiter, "192.0.2.9") is not None  # window starts at t=1000
    clock.now += 30
    assert take(limiter, "192.0.2.9") is not None
    clock.now += 20
    assert take(limiter, "192.0.2.9") is None  # third attempt in the minute
    assert limiter.attempts("192.0.2.9") == 3  # the refused one counted too
    clock.now += RATE_WINDOW - 50 - 0.001  # just before the window ends
    assert take(limiter, "192.0.2.9") is None
    clock.now += 0.001  # the window has ended: a new one starts
    assert limiter.attempts("192.0.2.9") == 0
    assert take(limiter, "192.0.2.9") is not None
    assert take(limiter, "192.0.2.9") is not None
    assert take(limiter, "192.0.2.9") is None


def test_both_limits_together(clock: Clock) -> None:
    limiter = ConnectionLimiter(1, rate_per_minute=5, clock=clock)
    held = take(limiter, "192.0.2.3")
    assert held is not None
    assert limiter.admit("192.0.2.3") == Refused("too_many_connections", "limit=1")
    held.release()
    for _ in range(3):
        slot = take(limiter, "192.0.2.3")
        assert slot is not None
        slot.release()
    assert limiter.admit("192.0.2.3") == Refused("connection_rate", "rate=5/min")  # 6th attempt


def test_idle_addresses_are_forgotten(clock: Clock) -> None:
    limiter = ConnectionLimiter(0, rate_per_minute=10, clock=clock)
    for n in range(1000):
        slot = take(limiter, f"10.0.{n // 256}.{n % 256}")
        assert slot is not None
        slot.release()
    assert limiter.rate_entries == 1000
    assert limiter.counts == {}
    clock.now += RATE_WINDOW
    assert take(limiter, "192.0.2.50") is not None  # any attempt sweeps the ended windows
    assert limiter.rate_entries == 1


def test_the_rate_table_is_bounded_even_under_many_addresses(clock: Clock) -> None:
    limiter = ConnectionLimiter(0, rate_per_minute=1, clock=clock, max_rate_entries=100)
    for n in range(1000):
        assert take(limiter, f"2001:db8::{n:x}") is not None
        assert limiter.rate_entries <= 100
    assert limiter.rate_entries == 100
    # the most recent addresses are still remembered (and refused), the oldest forgotten
    assert take(limiter, "2001:db8::3e7") is None
    assert take(limiter, "2001:db8::0") is not None


def test_no_limits_means_not_enabled() -> None:
    assert not ConnectionLimiter(0).enabled
    assert ConnectionLimiter(0, rate_per_minute=1).enabled
    assert ConnectionLimiter(5).enabled
    with pytest.raises(ValueError):
        ConnectionLimiter(0, rate_per_minute=-1)
