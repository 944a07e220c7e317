"""One change-feed listener per process, fanned out to the IMAP sessions that wait on
a mailbox (IDLE, RFC 2177).

The index's `ChangeFeed` (PostgreSQL LISTEN/NOTIFY, SQLite's change counter) reports
every committed change to a mailbox from every process and node sharing the index.
Opening one feed per idling connection would cost a database connection each; instead
`MailboxWatcher` keeps a single ``watch()`` iterator running while anyone waits and
wakes the waiters of the mailbox that changed.

Invariants:

* A waiter is woken for every change committed after it registered (the feed never
  loses one while it runs); a spurious wake-up is harmless: the session compares its
  reported state with the mailbox and sends nothing if nothing changed.
* When the feed fails (the database is unreachable) every waiter is woken and the
  watcher restarts the feed on the next registration after `RETRY_SECONDS`; sessions
  keep a slow poll (`ImapSession` IDLE) as a fallback, so a broken feed delays updates
  but never hides them.
* The feed task stops `LINGER_SECONDS` after the last waiter left, so a server with
  no idling client holds no feed, and a client that re-enters IDLE after each command
  does not reopen it every time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from pymail.store import ChangeFeed, Store

log = logging.getLogger("pymail.imap")

RETRY_SECONDS = 5.0  #: wait this long before reopening a failed feed
POLL_SECONDS = 1.0  #: how often an idling session looks while there is no feed
FALLBACK_POLL_SECONDS = 30.0  #: and while the feed runs (a safety net)
LINGER_SECONDS = 60.0  #: the feed keeps running this long after the last waiter left


class MailboxWatcher:
    """Wakes the `asyncio.Event`s registered for a mailbox when it changes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiters: dict[int, set[asyncio.Event]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None
        self._failed_at: float | None = None
        self._listening = asyncio.Event()  # set while the feed's iterator is listening
        self._linger: asyncio.TimerHandle | None = None  # stops the feed once unused

    @property
    def available(self) -> bool:
        """Whether the index offers a change feed at all."""
        return isinstance(self.store.index, ChangeFeed)

    def register(self, mailbox_id: int) -> asyncio.Event:
        """An event set whenever `mailbox_id` changes (and when the feed fails)."""
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        event = asyncio.Event()
        self._waiters[mailbox_id].add(event)
        return event

    def unregister(self, mailbox_id: int, event: asyncio.Event) -> None:
        """Stop waking `event`.  The feed outlives its last waiter by `LINGER_SECONDS`:
        clients end IDLE for every command and start it again, and reopening the
        feed (a database connection) each time would cost more than keeping it."""
        waiters = self._waiters.get(mailbox_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                del self._waiters[mailbox_id]
        if not self._waiters and self._task is not None and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._stop_if_unused)

    def _stop_if_unused(self) -> None:
        self._linger = None
        if not self._waiters and self._task is not None:
            self._task.cancel()
            self._task = None

    def poll_interval(self) -> float:
        """How long an idling session may wait for its event before looking itself:
        long while the feed runs (a safety net only), short while it cannot."""
        self._ensure_running()
        return FALLBACK_POLL_SECONDS if self._task is not None else POLL_SECONDS

    def _ensure_running(self) -> None:
        if self._task is not None or not self.available:
            return
        loop = asyncio.get_running_loop()
        if self._failed_at is not None and loop.time() - self._failed_at < RETRY_SECONDS:
            return  # the sessions poll meanwhile
        self._listening.clear()
        self._task = loop.create_task(self._run(), name="pymail-imap-watch")

    async def listening(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until the feed listens, so that every change
        committed from now on wakes the waiters; False if it does not."""
        if self._task is None:
            return False
        try:
            await asyncio.wait_for(self._listening.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _run(self) -> None:
        feed = self.store.index.watch()  # type: ignore[attr-defined]
        try:
            start = getattr(feed, "start", None)
            if start is not None:
                await start()
            self._listening.set()
            async for change in feed:
                self._failed_at = None
                for event in self._waiters.get(change.mailbox_id, ()):
                    event.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken feed must not break IDLE
            log.warning("imap: the mailbox change feed failed (%s); polling instead", exc)
            self._failed_at = asyncio.get_running_loop().time()
        finally:
            self._listening.clear()
            with contextlib.suppress(Exception):
                await feed.aclose()
            if self._task is asyncio.current_task():
                self._task = None
            for waiters in self._waiters.values():  # let the sessions look for themselves
                for event in waiters:
                    event.set()

    async def close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
