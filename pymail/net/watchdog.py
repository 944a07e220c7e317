"""The event-loop watchdog (``server.loop_watchdog``): report code that holds the loop.

Every client of a worker process shares its one event loop, so a command that computes
on the loop thread (a backtracking regex, a loop over a million rows, a blocking call)
stalls every other session of that process.  The watchdog names that code:

* On the loop, a heartbeat callback re-arms itself every ``interval`` (a quarter of the
  threshold) and notes when its next run is due.
* A watcher thread sleeps until the heartbeat would be late by the threshold (and again
  from the new due time, if it ran meanwhile).  When the heartbeat is that late, the
  watcher takes, at that moment, the stack of the loop thread
  (`sys._current_frames`) and the task the loop is running (`asyncio.current_task`: its
  name and coroutine), which name the command that holds the loop.
* When the loop runs the heartbeat again, the heartbeat logs ONE warning line with how
  long the loop was held, the task and the stack::

    WARNING pymail.watchdog[412]: event loop stalled 1.234s (loop_watchdog 0.100s) \
in task 'Task-7' (ImapSession.run); stack: asyncio/events.py:80 _run > \
pymail/net/imap/session.py:402 cmd_list > pymail/net/imap/session.py:512 _name_matches

  A stall still going on after `ONGOING_REPORT` seconds is logged then instead, as
  ``event loop stalled 5.000s so far, still running (...)``, so that a loop that never
  comes back is reported too; its end is one INFO line ``event loop ran again after
  48.800s``.

Invariants: off (0) costs nothing, nothing is created; on, it costs one timer callback
per interval and about one thread wake-up per threshold (an idle worker with 100 ms: 40
callbacks and ~8 wake-ups a second, under 1 % of a core).  A C call that keeps the GIL
(``re`` matching) also keeps the watcher from running; the watcher then runs at the first bytecode boundary
after that call, while the loop thread is still in the Python function that made it, so
the stack still names it; a hold the watcher could not see at all is still reported,
without a stack, by the heartbeat.  Stall durations are how late the heartbeat ran:
what any other ready callback waited, and at most one interval less than the hold
itself.  Each stall is reported once; the watcher never touches the loop but through the loop's thread-safe
state it reads.  Debugging aid only: it changes nothing the clients see.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LoopWatchdog", "ONGOING_REPORT", "format_stack"]

log = logging.getLogger("pymail.watchdog")

#: Seconds after which a stall that has not ended is logged while it goes on.
ONGOING_REPORT = 5.0
#: Innermost frames of the loop thread's stack written in the warning.
STACK_FRAMES = 25
#: The heartbeat's period is the threshold divided by this, at least `MIN_INTERVAL`.
BEATS_PER_THRESHOLD = 4
MIN_INTERVAL = 0.005

_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: deepest first: site-packages inside a virtualenv inside the checkout wins
_ROOTS = sorted({_PACKAGE_ROOT, *(p for p in sys.path if p and os.path.isdir(p))}, key=len, reverse=True)


def _short_path(filename: str) -> str:
    """``pymail/net/imap/session.py`` / ``asyncio/events.py``: the path below pymail's
    own root or below the sys.path entry that holds the module."""
    for root in _ROOTS:
        if filename.startswith(root + os.sep):
            return filename[len(root) + 1 :]
    return filename


def format_stack(frame, limit: int = STACK_FRAMES) -> str:
    """One line: ``file:line function > ... > file:line function``, outermost first (as
    in a Python traceback), the `limit` innermost frames.  Reads no source file."""
    entries = []
    while frame is not None:
        code = frame.f_code
        entries.append(f"{_short_path(code.co_filename)}:{frame.f_lineno} "
                       f"{getattr(code, 'co_qualname', code.co_name)}")
        frame = frame.f_back
    entries.reverse()
    prefix = "... > " if len(entries) > limit else ""
    return prefix + " > ".join(entries[-limit:])


#: Innermost Python functions of a loop thread that is in the event loop's own code
#: (uvloop's is C, below `Runner.run`; asyncio's waits in `select`), not in a callback's.
_LOOP_OWN_CODE = frozenset({"Runner.run", "run_forever", "BaseEventLoop.run_forever", "_run_once",
                            "BaseEventLoop._run_once", "EpollSelector.select", "select"})


def _describe_task(task: asyncio.Task | None, frame) -> str:
    if task is None:
        if frame is not None and getattr(frame.f_code, "co_qualname", frame.f_code.co_name) in _LOOP_OWN_CODE:
            return ("in the event loop's own code (no Python callback ran: I/O or TLS in C, "
                    "or the process waited for a core)")
        return "in a callback (no task)"
    coro = task.get_coro()
    name = getattr(coro, "__qualname__", None) or type(coro).__name__
    return f"in task {task.get_name()!r} ({name})"


@dataclass
class _Stall:
    """A stall the watcher caught: when the heartbeat was due, and what ran then."""

    due: float  #: when the late heartbeat should have run (the stall started at the latest then)
    where: str  #: the task, from `_describe_task`
    stack: str  #: the loop thread's stack, from `format_stack`
    ongoing_reported: bool = False


class LoopWatchdog:
    """Watch one event loop (see the module docstring); `start` it on the loop's thread."""

    def __init__(self, threshold: float, *, clock: Callable[[], float] = time.monotonic,
                 ongoing_report: float = ONGOING_REPORT) -> None:
        if threshold <= 0:
            raise ValueError("the threshold must be above 0 (0 is off: make no watchdog)")
        self.threshold = threshold
        self.interval = max(threshold / BEATS_PER_THRESHOLD, MIN_INTERVAL)
        self.ongoing_report = max(ongoing_report, threshold)
        self._clock = clock
        self._lock = threading.Lock()  # the heartbeat's `_due` and the watcher's `_stall`
        self._due = 0.0
        self._stall: _Stall | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        #: stalls reported so far (a warning each)
        self.stalls = 0

    def start(self) -> None:
        """Begin watching the running loop (call from the loop's thread)."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        with self._lock:
            self._due = self._clock() + self.interval
        self._timer = self._loop.call_later(self.interval, self._beat)
        self._watcher = threading.Thread(target=self._watch, name="pymail-loop-watchdog", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching (from the loop's thread); the watcher thread ends within one
        interval."""
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- on the loop --------------------------------------------------------------

    def _beat(self) -> None:
        now = self._clock()
        with self._lock:
            late = now - self._due
            stall, self._stall = self._stall, None
            self._due = now + self.interval
        if stall is None and late > self.threshold:
            # held so that the watcher could not look (the whole process was stopped, or
            # a C call kept the GIL and the loop took it back first): report it without
            # a stack rather than not at all
            stall = _Stall(self._due, "(the watcher could not run: the GIL was held, by C code "
                           "in this or another thread, or the process was stopped)", "(not taken)")
        if stall is not None:
            if stall.ongoing_reported:
                log.info("event loop ran again after %.3fs", late)
            else:
                self.stalls += 1
                log.warning("event loop stalled %.3fs (loop_watchdog %.3fs) %s; stack: %s",
                            late, self.threshold, stall.where, stall.stack)
        if not self._stop.is_set() and self._loop is not None:
            self._timer = self._loop.call_later(self.interval, self._beat)

    # -- on the watcher thread ----------------------------------------------------

    def _watch(self) -> None:
        pause = self.threshold
        while not self._stop.wait(pause):
            pause = self.check()

    def check(self) -> float:
        """One look at the heartbeat (the watcher thread's); the seconds until the next
        look is worth it: when the heartbeat would be over the threshold, or past the
        threshold once more while a stall goes on."""
        ongoing = None
        with self._lock:
            late = self._clock() - self._due
            if late <= self.threshold:
                return max(self.threshold - late, MIN_INTERVAL) + MIN_INTERVAL
            if self._stall is None:
                frame = sys._current_frames().get(self._loop_thread)
                stack = format_stack(frame) if frame is not None else "(loop thread gone)"
                task = asyncio.current_task(self._loop) if self._loop is not None else None
                self._stall = _Stall(self._due, _describe_task(task, frame), stack)
            elif late >= self.ongoing_report and not self._stall.ongoing_reported:
                self._stall.ongoing_reported = True
                ongoing = self._stall
        if ongoing is not None:
            self.stalls += 1
            log.warning("event loop stalled %.3fs so far, still running (loop_watchdog %.3fs) %s; stack: %s",
                        late, self.threshold, ongoing.where, ongoing.stack)
        return self.interval
