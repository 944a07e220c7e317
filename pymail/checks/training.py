"""Spam training from the mailbox: what users file into or out of Junk over IMAP is
taught to Rspamd's Bayes, off the IMAP command's path.

Two pieces:

* `SpamTrainer` -- a background worker with a queue of learn jobs (kind, blob key).
  `submit` returns at once and never raises; the worker loads each message through the
  ``load`` callable it was given (the blob store's ``get``), calls `RspamdClient.learn`
  and, while Rspamd (or the blob store) is out, retries the same job with a backoff
  (`FIRST_RETRY` seconds doubling up to `MAX_RETRY`), jobs behind it waiting their turn.
* `JunkLearning` -- the IMAP side's `pymail.net.imap.session.CopyObserver`: it decides
  which COPY/MOVE teaches what, and submits the jobs.  The rule, as admins wire
  Dovecot's imapsieve to ``rspamc`` (and as mailcow documents it): a message copied or
  moved **into** the user's ``\\Junk`` mailbox (RFC 6154 special-use) is learned as spam;
  one copied or moved **out of** ``\\Junk`` into any mailbox but ``\\Trash`` (INBOX,
  Archive, a folder of the user's) is learned as ham.  Junk -> Trash is throwing spam
  away, not a verdict; Trash -> Junk is spam like any other way in.

Invariants:

* Pending jobs live in memory only: a restart loses them (the messages stay where the
  user put them; nothing is learned twice or wrongly, only not at all).  At most
  `max_pending` jobs wait; past that the oldest is dropped with a WARNING line.  A
  durable queue would need a table in the index -- not worth it for a statistics
  nudge that Rspamd's autolearn and the next moves make up for.
* A job is dropped (one log line) only when it cannot ever succeed: the blob is gone
  (the message was expunged meanwhile), or Rspamd refuses this message for good
  (`LearnRefused`: too few tokens).  "Already learned" is success.  Any other failure
  keeps the job at the head of the queue and retries it.
* One job runs at a time: learning is cheap for Rspamd and never urgent; a message is
  in memory only while its job runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from pymail.checks.results import ScannerError
from pymail.checks.rspamd import LearnRefused
from pymail.store import Mailbox, User
from pymail.store.interfaces import NotFound

__all__ = ["FIRST_RETRY", "JunkLearning", "LearnJob", "MAX_PENDING", "MAX_RETRY",
           "SpamTrainer", "learn_kind"]

log = logging.getLogger("pymail.checks.training")

#: Seconds before the first retry of a failed job; doubled per failure ...
FIRST_RETRY = 5.0
#: ... up to this.
MAX_RETRY = 300.0
#: Jobs waiting at most; the oldest goes first when a new one would exceed it.
MAX_PENDING = 10_000

JUNK = "\\Junk"
TRASH = "\\Trash"
KINDS = ("spam", "ham")


class Learner(Protocol):
    """What the trainer needs of Rspamd (`pymail.checks.rspamd.RspamdClient`)."""

    async def learn(self, kind: str, message: bytes) -> None: ...


@dataclass(frozen=True, slots=True)
class LearnJob:
    kind: str  #: "spam" or "ham"
    blob_key: str


def learn_kind(source: Mailbox, target: Mailbox) -> str | None:
    """What copying from `source` to `target` teaches: "spam", "ham" or None (module
    docstring for the rule)."""
    into, out_of = target.special_use == JUNK, source.special_use == JUNK
    if into and not out_of:
        return "spam"
    if out_of and not into and target.special_use != TRASH:
        return "ham"
    return None


class SpamTrainer:
    """The learn worker (module docstring).  Fields: `learned` and `dropped` count jobs
    done and given up since start; `failing` is the reason of the failure the worker is
    waiting out (None while all is well)."""

    def __init__(self, learner: Learner, load: Callable[[str], Awaitable[bytes]], *,
                 max_pending: int = MAX_PENDING, first_retry: float = FIRST_RETRY,
                 max_retry: float = MAX_RETRY) -> None:
        self.learner = learner
        self.load = load
        self.max_pending = max_pending
        self.first_retry = first_retry
        self.max_retry = max_retry
        self._jobs: collections.deque[LearnJob] = collections.deque()  #: waiting, oldest first
        self._current: LearnJob | None = None  #: the job the worker has in hand
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.learned = 0
        self.dropped = 0
        self.failing: str | None = None

    @property
    def pending(self) -> int:
        """Jobs not done yet (the one in hand included)."""
        return len(self._jobs) + (self._current is not None)

    def submit(self, kind: str, blob_key: str) -> None:
        """Queue one learn job; returns at once, never raises."""
        try:
            if kind not in KINDS:
                log.warning("spam training: unknown kind %r for %s, ignored", kind, blob_key)
                return
            if len(self._jobs) >= self.max_pending:
                old = self._jobs.popleft()
                self.dropped += 1
                log.warning("spam training: %d jobs waiting, dropped the oldest (%s %s)",
                            self.max_pending, old.kind, old.blob_key)
            self._jobs.append(LearnJob(kind, blob_key))
            self._wake.set()
        except Exception:  # the IMAP command must not fail for its side effect
            log.exception("spam training: cannot queue %s %s", kind, blob_key)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="spam-trainer")

    async def stop(self) -> None:
        """End the worker (a job in flight is abandoned); what waits is lost."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._current is not None:  # back in line: a later start() takes it first
            self._jobs.appendleft(self._current)
            self._current = None
        if self._jobs:
            log.info("spam training: %d jobs not learned (the queue is in memory)", len(self._jobs))

    async def idle(self) -> None:
        """Wait until the queue is empty (for tests and a graceful drain)."""
        while self.pending:
            await asyncio.sleep(0.05)

    async def _run(self) -> None:
        failures = 0
        while True:
            if self._current is None:
                if not self._jobs:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                self._current = self._jobs.popleft()
            job = self._current
            try:
                done = await self._learn(job)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outage, or a bug: keep the job, wait, retry
                failures += 1
                delay = min(self.max_retry, self.first_retry * 2 ** (failures - 1))
                reason = str(exc) if isinstance(exc, ScannerError) else f"{type(exc).__name__}: {exc}"
                if isinstance(exc, ScannerError):
                    log.warning("spam training: %s (%d waiting, retry in %g s)",
                                reason, self.pending, delay)
                else:
                    log.exception("spam training: cannot learn %s (retry in %g s)", job.blob_key, delay)
                self.failing = reason
                await asyncio.sleep(delay)
                continue
            if self.failing is not None:
                log.info("spam training: learning again after %d failures", failures)
            failures, self.failing, self._current = 0, None, None
            if done:
                self.learned += 1
            else:
                self.dropped += 1

    async def _learn(self, job: LearnJob) -> bool:
        """One job: True learned, False given up for good; raises to be retried."""
        try:
            message = await self.load(job.blob_key)
        except (NotFound, FileNotFoundError):
            log.info("spam training: message %s is gone, not learned as %s", job.blob_key, job.kind)
            return False
        try:
            await self.learner.learn(job.kind, message)
        except LearnRefused as exc:
            log.info("spam training: %s not learned as %s: %s", job.blob_key, job.kind, exc)
            return False
        log.debug("spam training: learned %s as %s", job.blob_key, job.kind)
        return True


class JunkLearning:
    """The IMAP `CopyObserver` that feeds a `SpamTrainer` (rule: `learn_kind`)."""

    def __init__(self, trainer: SpamTrainer) -> None:
        self.trainer = trainer

    def wants(self, source: Mailbox, target: Mailbox) -> bool:
        return learn_kind(source, target) is not None

    def copied(self, user: User, source: Mailbox, target: Mailbox, blob_keys: Sequence[str]) -> None:
        kind = learn_kind(source, target)
        if kind is None:
            return
        log.info("spam training: %s filed %d message(s) from %s to %s: learn as %s",
                 user.address, len(blob_keys), source.name, target.name, kind)
        for key in blob_keys:
            self.trainer.submit(kind, key)
