"""The retry schedule (pymail.delivery.schedule): doubling, cap, jitter bounds, expiry and
the delayed-delivery notice, as pure functions of an injected time and random source."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from pymail.config.schema import Config
from pymail.delivery.schedule import JITTER, RetrySchedule

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)


class Fixed(random.Random):
    """random() always answers `value` (0 = no jitter, just under 1 = the most)."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:  # noqa: D102
        return self.value


NO_JITTER = Fixed(0.0)
MOST_JITTER = Fixed(1.0 - 1e-12)


def test_defaults_come_from_the_delivery_section() -> None:
    s = RetrySchedule.from_config(Config.model_validate({}).delivery)
    assert (s.first, s.maximum, s.delay_warning) == (300.0, 14400.0, 14400.0)
    s = RetrySchedule.from_config(Config.model_validate(
        {"delivery": {"retry_first": "1s", "retry_max": "8s", "delay_warning": "0s"}}).delivery)
    assert (s.first, s.maximum, s.delay_warning) == (1.0, 8.0, 0.0)


def test_waits_double_from_retry_first_to_the_cap() -> None:
    s = RetrySchedule()
    waits = [s.wait(n, NO_JITTER) for n in range(1, 10)]
    assert waits == [300.0, 600.0, 1200.0, 2400.0, 4800.0, 9600.0, 14400.0, 14400.0, 14400.0]
    assert s.wait(0, NO_JITTER) == 300.0  # no attempt yet counts as the first
    assert s.wait(10_000, NO_JITTER) == 14400.0  # no float overflow far past the cap


def test_a_cap_below_the_first_wait_wins() -> None:
    assert RetrySchedule(first=600.0, maximum=60.0).wait(1, NO_JITTER) == 60.0


def test_jitter_only_shortens_and_stays_within_its_fraction() -> None:
    s = RetrySchedule()
    assert s.wait(1, MOST_JITTER) == pytest.approx(300.0 * (1 - JITTER))
    assert s.wait(20, MOST_JITTER) == pytest.approx(14400.0 * (1 - JITTER))
    rng = random.Random(42)
    for n in range(1, 12):
        base = min(300.0 * 2 ** (n - 1), 14400.0)
        seen = [s.wait(n, rng) for _ in range(200)]
        assert all(base * (1 - JITTER) <= w <= base for w in seen)
        assert len(set(seen)) > 150  # floats, spread (not rounded to a few values)


def test_next_attempt_is_a_float_offset_from_now() -> None:
    s = RetrySchedule()
    at = s.next_attempt(failed_attempts=3, now=T0, expires_at=T0 + 5 * DAY, rng=Fixed(0.5))
    assert at == T0 + dt.timedelta(seconds=1200.0 * (1 - JITTER * 0.5))
    assert at.tzinfo is not None


def test_the_last_wait_is_cut_to_try_once_at_expiry() -> None:
    s = RetrySchedule()
    expires = T0 + dt.timedelta(minutes=2)
    assert s.next_attempt(failed_attempts=1, now=T0, expires_at=expires, rng=NO_JITTER) == expires


def test_expired_at_or_after_expires_at() -> None:
    s = RetrySchedule()
    assert s.next_attempt(failed_attempts=5, now=T0, expires_at=T0) is None
    assert s.next_attempt(failed_attempts=5, now=T0 + DAY, expires_at=T0) is None
    assert s.next_attempt(failed_attempts=5, now=T0 - dt.timedelta(microseconds=1),
                          expires_at=T0, rng=NO_JITTER) == T0


def test_delay_notice_once_after_delay_warning() -> None:
    s = RetrySchedule(delay_warning=4 * 3600.0)
    four_hours = T0 + dt.timedelta(hours=4)
    assert not s.delay_notice_due(created_at=T0, now=four_hours - dt.timedelta(seconds=1),
                                  already_sent=False)
    assert s.delay_notice_due(created_at=T0, now=four_hours, already_sent=False)
    assert not s.delay_notice_due(created_at=T0, now=four_hours, already_sent=True)
    assert not RetrySchedule(delay_warning=0.0).delay_notice_due(
        created_at=T0, now=T0 + 10 * DAY, already_sent=False)
