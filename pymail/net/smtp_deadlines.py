"""The time limits an SMTP client gets on one connection, kept with one loop timer.

RFC 5321 section 4.5.3.2.7 asks a server to wait at least 5 minutes for the next
command; a client must not hold a connection for longer than that by trickling octets
(slowloris), which resetting a timer on every read allows.  `ClientDeadlines` follows
what the connection receives (`received`, from ``data_received``) and the phase the
session says it is in, and calls `expired` with the name of the first limit passed:

* ``"idle"``: nothing received and no reply sent for ``limits.smtp_timeout``;
* ``"command"``: a line (a command, or an answer to an AUTH challenge) not complete
  ``limits.command_timeout`` after its first octet arrived; octets arriving later do
  not move this deadline;
* ``"data"``: message content arriving slower than ``limits.min_data_rate`` octets per
  second on average after ``command_timeout`` of grace: the deadline is content start +
  grace + octets received / rate (Postfix's smtpd_min_data_rate), and the idle limit
  still applies to a client that goes silent;
* ``"login"``: (submission) not authenticated ``limits.login_timeout`` after connect.

While the server itself works (`server_busy`: a delivery), no limit runs; afterwards the
idle clock and any line already begun start over.

Invariants: at most one timer is scheduled, for the earliest deadline; octets arriving
only move deadlines later, so `received` just records them, and the timer re-checks
when it fires (and re-arms if the deadline moved).  `expired` is called at most once;
`cancel` stops everything (aiosmtpd calls it when the connection is lost).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator

__all__ = ["ClientDeadlines"]

#: A timer may fire this early (uvloop rounds timers to milliseconds) and still count.
_EARLY = 0.005


class ClientDeadlines:
    """The client's deadlines on one connection (see the module docstring)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        expired: Callable[[str, float], None],
        *,
        idle: float,
        command: float,
        min_data_rate: float,
        login: float | None = None,
    ) -> None:
        """`expired(limit, seconds)` is called once, with the limit's name and value."""
        self._loop = loop
        self._expired = expired
        self.idle = idle
        self.command = command
        self.min_data_rate = min_data_rate
        self.login = login
        now = loop.time()
        self._last_activity = now  #: last octet received or reply sent
        self._line_started: float | None = None  #: first octet of an incomplete line
        self._content_started: float | None = None  #: DATA content being received since
        self._content_octets = 0
        self._login_by = now + login if login else None
        self._busy = 0
        self._timer: asyncio.TimerHandle | None = None
        self._over = False
        self._arm()

    # -- what happens on the connection ---------------------------------------------

    def received(self, data: bytes) -> None:
        """Octets arrived (called for every ``data_received``)."""
        now = self._loop.time()
        self._last_activity = now
        if self._content_started is not None:
            self._content_octets += len(data)
            return
        line_end = data.rfind(b"\n")
        if line_end < 0:
            if self._line_started is None and data:
                self._line_started = now
                self._arm()
        elif line_end == len(data) - 1:
            self._line_started = None
        else:  # a line ended and the next one began
            self._line_started = now
            self._arm()

    def replied(self) -> None:
        """A reply went out: the client's turn again."""
        self._last_activity = self._loop.time()

    def start_content(self) -> None:
        """DATA content starts (after the 354)."""
        self._content_started = self._loop.time()
        self._content_octets = 0
        self._line_started = None
        self._arm()

    def end_content(self) -> None:
        self._content_started = None

    def forget_line(self) -> None:
        """Input so far was discarded (plaintext pipelined behind STARTTLS)."""
        self._line_started = None

    def logged_in(self) -> None:
        self._login_by = None

    @contextlib.contextmanager
    def server_busy(self) -> Iterator[None]:
        """No client limit runs while the server works."""
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            now = self._loop.time()
            self._last_activity = now
            if self._line_started is not None:
                self._line_started = now
            self._arm()

    def cancel(self) -> None:
        """Stop for good (the connection is gone).  The name is aiosmtpd's: it keeps
        this object as its timeout handle (see PymailSMTP._reset_timeout)."""
        self._over = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the timer ------------------------------------------------------------------

    def _earliest(self) -> tuple[float, str, float] | None:
        """(when, limit, its seconds) of the first deadline, None while busy."""
        if self._busy:
            return None
        deadlines = [(self._last_activity + self.idle, "idle", self.idle)]
        if self._content_started is not None:
            due = self._content_started + self.command + self._content_octets / self.min_data_rate
            deadlines.append((due, "data", self.command))
        elif self._line_started is not None:
            deadlines.append((self._line_started + self.command, "command", self.command))
        if self._login_by is not None:
            deadlines.append((self._login_by, "login", self.login or 0.0))
        return min(deadlines)

    def _arm(self) -> None:
        """Make sure the timer fires no later than the earliest deadline."""
        if self._over:
            return
        earliest = self._earliest()
        if earliest is None:
            return  # busy: `server_busy` re-arms when it ends
        due = earliest[0]
        if self._timer is not None:
            if self._timer.when() <= due:
                return  # it fires early enough and checks again then
            self._timer.cancel()
        self._timer = self._loop.call_at(due, self._check)

    def _check(self) -> None:
        self._timer = None
        if self._over:
            return
        earliest = self._earliest()
        if earliest is None:
            return
        due, limit, seconds = earliest
        if self._loop.time() + _EARLY < due:
            self._timer = self._loop.call_at(due, self._check)
            return
        self._over = True
        self._expired(limit, seconds)
