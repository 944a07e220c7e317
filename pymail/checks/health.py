"""The scanners' state as the MX sees it, for the log, /metrics and /healthz.

A `ServiceHealth` per scanner (Rspamd, clamd) remembers whether its last exchange
worked.  A change is logged once (WARNING when it goes down, with the reason and what
mail gets meanwhile; INFO when it is back), not once per message; every failure is
counted in ``pymail_check_errors_total{check}`` and the state is the gauge
``pymail_check_service_up{check}``.  Every outcome of every check is counted in
``pymail_check_results_total{check,outcome}`` (DNS trouble shows as temperror there).
"""

from __future__ import annotations

import logging
import time

from pymail import metrics

__all__ = ["ServiceHealth", "count_result"]

log = logging.getLogger("pymail.checks")


def count_result(check: str, outcome: str) -> None:
    metrics.CHECK_RESULTS.labels(check, outcome).inc()


class ServiceHealth:
    """Up/down of one scanner (see the module docstring)."""

    def __init__(self, name: str, on_error: str) -> None:
        self.name = name
        self.on_error = on_error  #: the action mail gets while it is down
        self.up = True
        self.reason = ""
        self.since = time.time()

    def record_ok(self) -> None:
        metrics.CHECK_SERVICE_UP.labels(self.name).set(1)
        if not self.up:
            log.info("%s: back after %.0f s; scanning again", self.name, time.time() - self.since)
            self.up, self.reason, self.since = True, "", time.time()

    def record_failure(self, reason: str) -> None:
        metrics.CHECK_ERRORS.labels(self.name).inc()
        metrics.CHECK_SERVICE_UP.labels(self.name).set(0)
        if self.up:
            meanwhile = {"tempfail": "mail is deferred (451 4.7.1)",
                         "reject": "mail is refused",
                         "junk": "mail goes to Junk unscanned"}.get(
                             self.on_error, "mail is accepted with X-Pymail-Unscanned")
            log.warning("%s: unavailable: %s; %s until it is back", self.name, reason, meanwhile)
            self.up, self.since = False, time.time()
        self.reason = reason

    def describe(self) -> str:
        if self.up:
            return "up"
        return f"down for {time.time() - self.since:.0f} s: {self.reason}"
