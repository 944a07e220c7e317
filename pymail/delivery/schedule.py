"""When the outbound queue tries a recipient again, gives up, and warns the sender.

Pure functions of the ``[delivery]`` settings, the recipient's bookkeeping and a time
the caller passes in (the queue runner's injected clock); randomness comes from a
caller-supplied `random.Random` so tests fix it.

The schedule (Postfix's, with mox's and Stalwart's lessons, see docs/OUTBOUND facts):

* after the n-th failed attempt the next one waits ``retry_first * 2**(n-1)``, capped at
  ``retry_max`` (5 min, 10, 20, 40, 80, 160, then every 4 h by default);
* jitter: each wait is shortened by a random fraction of at most `JITTER`, so that the
  recipients of one outage do not all come back in the same second; the cap stays a
  true maximum and no wait is shorter than ``(1 - JITTER) * retry_first``;
* a message is retried until ``expires_at`` (its creation + ``max_lifetime``, 5 days by
  default): the last wait is cut so that one attempt happens at the very end; a
  temporary failure at or after ``expires_at`` is final (EXPIRED, the sender gets a DSN);
* the delayed-delivery notice (RFC 3464 ``Action: delayed``) is due once, at the first
  deferral at least ``delay_warning`` after the message was queued (0: never).

Invariants: every time returned is timezone-aware when `now` is; a wait is a float
number of seconds (no rounding: maddy#678 rounded its doubling away).
"""

from __future__ import annotations

import datetime as _dt
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymail.config.schema import DeliveryConfig

__all__ = ["JITTER", "RetrySchedule"]

#: The largest fraction by which a wait is shortened at random.
JITTER = 0.2


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """The retry policy of ``[delivery]`` (see the module docstring); seconds."""

    first: float = 300.0  #: retry_first
    maximum: float = 4 * 3600.0  #: retry_max
    delay_warning: float = 4 * 3600.0  #: 0: no delayed-delivery notice
    jitter: float = JITTER

    @classmethod
    def from_config(cls, delivery: DeliveryConfig) -> RetrySchedule:
        return cls(first=float(delivery.retry_first), maximum=float(delivery.retry_max),
                   delay_warning=float(delivery.delay_warning))

    def wait(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failed_attempts`-th failed attempt (1 = the first)."""
        n = max(1, failed_attempts)
        # 2**n overflows a float long after it passes any cap: stop doubling at the cap.
        base = self.first
        for _ in range(n - 1):
            if base >= self.maximum:
                break
            base *= 2.0
        base = min(base, self.maximum)
        r = (rng or random).random()  # [0, 1)
        return base * (1.0 - self.jitter * r)

    def next_attempt(self, *, failed_attempts: int, now: _dt.datetime,
                     expires_at: _dt.datetime, rng: random.Random | None = None
                     ) -> _dt.datetime | None:
        """When to try again after a temporary failure; None when the message has
        expired (`now` at or past `expires_at`: the recipient is EXPIRED)."""
        if now >= expires_at:
            return None
        at = now + _dt.timedelta(seconds=self.wait(failed_attempts, rng))
        return min(at, expires_at)

    def delay_notice_due(self, *, created_at: _dt.datetime, now: _dt.datetime,
                         already_sent: bool) -> bool:
        """Whether a deferral at `now` should send the one delayed-delivery notice."""
        if already_sent or self.delay_warning <= 0:
            return False
        return (now - created_at).total_seconds() >= self.delay_warning
