"""The queue runner: drains the outbound queue into remote servers, one process's share.

A loop (`QueueRunner.start`) that, while it has free delivery slots:

1. claims due recipients from the shared `QueueStore` (``claim(owner, now, lease,
   limit)``: leased to this process and pushed forward *before* any SMTP is spoken, so a
   process killed mid-delivery loses nothing -- its lease runs out and another node, or
   the restarted one, delivers);
2. groups the claimed recipients of each message by ``(domain, route)`` -- one SMTP
   transaction each -- and hands every group to the `RemoteSender`
   (pymail.delivery.attempt) with the message's bytes from the blob store;
3. turns each `Attempt` into a `RecipientResult` (`decide`): 2xx DELIVERED, permanent
   FAILED, temporary QUEUED again at the `RetrySchedule`'s next time, or EXPIRED once
   the message's lifetime is over; and records them at once, per group, before anything
   else happens (a restart never retries a permanent result);
4. then sends the sender the delivery status notifications those results call for
   (RFC 3464 / RFC 3461, built by pymail.mail.dsn, delivered through
   `Pipeline.submit_dsn`): one per message per event (failed, delayed, relayed)
   covering all its recipients of that event.

When a DSN goes out (`notice_action`, RFC 3461 section 4.1 and 6.2):
* never to the null sender (a bounce of a bounce), never for NOTIFY=NEVER;
* ``failed`` (FAILED or EXPIRED) when NOTIFY is the default or has FAILURE;
* ``delayed`` once per recipient (``delay_notified``) at the first deferral after
  ``[delivery] delay_warning``, when NOTIFY is the default or has DELAY;
* ``relayed`` for a 2xx when NOTIFY has SUCCESS and the next hop did not take the DSN
  parameters (section 6.2.6); when it did, the success notice is its job, not ours.

Concurrency, per worker process: at most ``[delivery] concurrency`` SMTP transactions at
once, and ``[delivery] per_domain`` to one destination (the domain, or the relay/transport
host for other routes).  A claimed group whose destination is full goes back to the
queue for a few seconds without counting as an attempt.  The messages being sent hold
at most `CONTENT_BUDGET` octets of content in memory together.

Wake-up: `wake` (registered with `Pipeline.on_queued`) ends the wait at once, so a
message just submitted goes out within milliseconds; otherwise the queue is polled every
`POLL_SECONDS`.  `purge_finished` runs every `PURGE_SECONDS`.

Invariants: the loop never ends on a storage or sender error (logged, backed off,
retried); every recipient the runner was given is recorded, handed back with
``attempted=False``, or left to its lease's end; `stop` stops claiming, lets deliveries
in progress finish within a grace period (then cancels them), releases this owner's
leases and closes the sender.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import logging
import os
import random
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymail import metrics
from pymail.delivery.attempt import Attempt, RemoteSender
from pymail.delivery.schedule import RetrySchedule
from pymail.mail import dsn as dsn_builder
from pymail.store.interfaces import NotFound, StorageError
from pymail.store.queue import (
    Claim,
    QueuedMessage,
    QueueStore,
    RecipientResult,
    RecipientState,
    RecipientStatus,
)

if TYPE_CHECKING:
    from pymail.config.schema import Config
    from pymail.delivery.pipeline import Pipeline
    from pymail.store.interfaces import BlobStore

__all__ = ["Outcome", "QueueRunner", "decide", "diagnostic", "dsn_status", "new_owner", "notice_action", "wants"]

log = logging.getLogger("pymail.delivery.queue")

#: Seconds between two looks at the queue when nothing woke the runner.
POLL_SECONDS = 2.0
#: Seconds between two `purge_finished` calls.
PURGE_SECONDS = 60.0
#: A group whose destination has `per_domain` transactions running waits this long.
BUSY_SECONDS = 2.0
#: A message whose bytes cannot be read (storage outage) is tried again after this.
STORAGE_RETRY_SECONDS = 60.0
#: The loop's backoff after a storage error: doubling from 1 s up to this.
MAX_BACKOFF_SECONDS = 30.0
#: A transaction is cut off this long before its lease ends (see `send_timeout`).
LEASE_MARGIN_SECONDS = 60.0
#: Tries of one `record` (or one DSN submission) before it is given up and logged.
PERSIST_TRIES = 5
#: Octets of queued message content one runner holds in memory at once (each message
#: being sent is read whole, since aiosmtplib sends bytes): without a cap, `concurrency`
#: large messages -- e.g. a stranger's to an alias that forwards outside -- would be
#: held together.  A message larger than this is sent alone.
CONTENT_BUDGET = 256 * 1024 * 1024

#: RFC 3461 section 4.1: no NOTIFY means FAILURE,DELAY.
DEFAULT_NOTIFY = frozenset({"FAILURE", "DELAY"})


def new_owner() -> str:
    """A lease owner id unique to this process: host name, pid and a random part."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- decisions
# Pure functions: what a result means for the queue and for the sender.


def wants(notify: frozenset[str], event: str) -> bool:
    """Whether NOTIFY asks for `event` ("SUCCESS", "FAILURE", "DELAY"), RFC 3461 4.1."""
    if "NEVER" in notify:
        return False
    return event in (notify or DEFAULT_NOTIFY)


def notice_action(message: QueuedMessage, state: RecipientState, attempt: Attempt,
                  status: RecipientStatus, delay_due: bool) -> str | None:
    """The DSN action this result calls for ("failed", "delayed", "relayed"), or None
    (see the module docstring)."""
    if not message.sender:
        return None  # RFC 3461 section 6.2: never to the null reverse-path
    notify = state.recipient.notify
    if status in (RecipientStatus.FAILED, RecipientStatus.EXPIRED):
        return "failed" if wants(notify, "FAILURE") else None
    if status is RecipientStatus.DELIVERED:
        # RFC 3461 section 6.2.6: a next hop that took NOTIFY reports delivery itself
        return "relayed" if wants(notify, "SUCCESS") and not attempt.dsn_passed else None
    if delay_due and wants(notify, "DELAY"):
        return "delayed"
    return None


def dsn_status(attempt: Attempt, status: RecipientStatus) -> str:
    """The RFC 3463 status of a DSN recipient: the remote's enhanced code when it gave
    one of the right class, else a generic one of that class."""
    if status is RecipientStatus.DELIVERED:
        return "2.0.0"
    if status is RecipientStatus.EXPIRED:
        return "5.4.7"  # RFC 3463 section 3.5: delivery time expired
    klass = "5" if status is RecipientStatus.FAILED else "4"
    enhanced = attempt.enhanced
    if enhanced and enhanced[:2] in ("4.", "5.") and enhanced.count(".") == 2:
        return klass + enhanced[1:]
    return f"{klass}.0.0"


@dataclass(frozen=True, slots=True)
class Outcome:
    """One claimed recipient after one attempt: what was recorded, what to tell."""

    state: RecipientState  #: as claimed (attempts before this one)
    attempt: Attempt
    result: RecipientResult  #: what `record` was given
    notice: str | None  #: the DSN action it calls for (`notice_action`)


def decide(message: QueuedMessage, state: RecipientState, attempt: Attempt, *,
           now: _dt.datetime, schedule: RetrySchedule,
           rng: random.Random | None = None) -> Outcome:
    """The result of one attempt for one recipient (see the module docstring)."""
    delay_due = False
    next_attempt = None
    if attempt.delivered:
        status = RecipientStatus.DELIVERED
    elif attempt.permanent:
        status = RecipientStatus.FAILED
    else:
        next_attempt = schedule.next_attempt(failed_attempts=state.attempts + 1, now=now,
                                             expires_at=message.expires_at, rng=rng)
        if next_attempt is None:
            status = RecipientStatus.EXPIRED
        else:
            status = RecipientStatus.QUEUED
            delay_due = schedule.delay_notice_due(created_at=message.created_at, now=now,
                                                  already_sent=state.delay_notified)
    notice = notice_action(message, state, attempt, status, delay_due)
    result = RecipientResult(
        recipient_id=state.id, status=status, next_attempt=next_attempt,
        reply_code=attempt.code or None, enhanced_code=attempt.enhanced,
        reply_text=attempt.text, remote_host=attempt.remote_host, at=now,
        delay_notified=True if notice == "delayed" else None)
    return Outcome(state, attempt, result, notice)


def diagnostic(attempt: Attempt, state: RecipientState) -> str | None:
    """The reply quoted in the DSN as the remote sent it (RFC 5321 section 4.2: every
    line with its code, ``-`` after the code on all but the last), or our own words when
    no server replied."""
    code, text = attempt.code, attempt.text
    if not code and not text:  # (an expiry without any reply: use the last one kept)
        code, text = state.reply_code or 0, state.reply_text or ""
    if not text:
        return str(code) if code else None
    if not code:
        return text
    lines = text.split("\n")
    return "\n".join(f"{code}{'-' if n < len(lines) - 1 else ' '}{line}"
                     for n, line in enumerate(lines))


def _remote_mta(host: str | None) -> str | None:
    """ "mx.remote.test[127.0.0.2]" -> "mx.remote.test" (RFC 3464 Remote-MTA, dns type)."""
    if not host:
        return None
    name = host.split("[", 1)[0].strip()
    return name or host.strip("[]") or None


def _destination(state: RecipientState) -> str:
    """What `per_domain` counts: the domain for MX routes, the next hop otherwise."""
    r = state.recipient
    return r.domain if r.route == "mx" else r.route


# --------------------------------------------------------------------------- runner


class QueueRunner:
    """This process's queue runner (see the module docstring)."""

    def __init__(self, *, queue: QueueStore, blobs: BlobStore, sender: RemoteSender,
                 pipeline: Pipeline, config: Config,
                 clock: Callable[[], _dt.datetime] | None = None, owner: str | None = None,
                 rng: random.Random | None = None, dsn: Any = None,
                 poll_seconds: float = POLL_SECONDS,
                 content_budget: int = CONTENT_BUDGET) -> None:
        from pymail.delivery.pipeline import now_utc

        self._budget = _ByteBudget(content_budget)

        self.queue = queue
        self.blobs = blobs
        self.sender = sender
        self.pipeline = pipeline
        self.config = config
        self.clock = clock or now_utc
        self.owner = owner or new_owner()
        self.schedule = RetrySchedule.from_config(config.delivery)
        self._rng = rng or random.Random()
        #: the DSN builder (pymail.mail.dsn: DsnRecipient, build_dsn; tests may pass theirs)
        self._dsn = dsn if dsn is not None else dsn_builder
        self._poll = poll_seconds
        self._concurrency = config.delivery.concurrency
        self._per_domain = config.delivery.per_domain
        self._lease = _dt.timedelta(seconds=config.delivery.lease)
        #: the longest one transaction may take: it must end while the lease holds, or
        #: another node could deliver the same recipients at the same time (RFC 5321's
        #: timeouts alone add up to more than the default lease for a tarpitting server)
        self.send_timeout = max(config.delivery.lease - LEASE_MARGIN_SECONDS,
                                config.delivery.lease / 2)
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        #: deliveries in progress: one task per claimed message
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0  #: SMTP transactions (groups) in progress
        self._by_destination: collections.Counter[str] = collections.Counter()
        self._last_purge: float | None = None
        #: the most groups ever in progress at once (for tests and the log)
        self.peak_active = 0

    # ------------------------------------------------------------------ lifecycle

    def wake(self, messages: Sequence[QueuedMessage] = ()) -> None:
        """Look at the queue now (`Pipeline.on_queued` calls it after each commit)."""
        self._wakeup.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
            log.info("queue runner %s started (concurrency %d, %d per destination)",
                     self.owner, self._concurrency, self._per_domain)

    async def stop(self, grace: float = 10.0) -> None:
        """Stop claiming; give deliveries in progress `grace` seconds, then cancel them;
        hand back this owner's leases; close the sender's connections."""
        self._stopping = True
        self._wakeup.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=grace)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                pass
            except Exception:  # noqa: BLE001 - the loop logs its own; stop regardless
                log.exception("queue runner loop failed")
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("queue runner: %d delivery(ies) cancelled at shutdown", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        try:
            released = await self.queue.release(self.owner)
            if released:
                log.info("queue runner: %d recipient(s) handed back to the queue", released)
        except StorageError as e:
            log.warning("queue runner: cannot release leases (they expire on their own): %s", e)
        try:
            await self.sender.close()
        except Exception:  # noqa: BLE001 - closing connections at exit must not fail the stop
            log.exception("queue runner: closing the remote sender failed")

    async def _run(self) -> None:
        backoff = 0.0
        loop = asyncio.get_running_loop()
        while not self._stopping:
            self._wakeup.clear()  # before the claim: a wake during it is not lost
            try:
                more = await self.run_once()
                backoff = 0.0
            except Exception as e:  # noqa: BLE001 - never crash the loop
                backoff = min(max(1.0, backoff * 2), MAX_BACKOFF_SECONDS)
                if isinstance(e, StorageError):
                    log.warning("queue runner: storage error, retrying in %.0fs: %s", backoff, e)
                else:
                    log.exception("queue runner: unexpected error, retrying in %.0fs", backoff)
                await self._sleep(backoff, wakeable=False)
                continue
            if self._last_purge is None or loop.time() - self._last_purge >= PURGE_SECONDS:
                self._last_purge = loop.time()
                await self._purge()
            if more and not self._stopping:
                continue
            await self._sleep(self._poll)

    async def _sleep(self, seconds: float, *, wakeable: bool = True) -> None:
        if self._stopping:
            return
        if not wakeable:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    async def _purge(self) -> None:
        try:
            removed = await self.queue.purge_finished()
        except StorageError as e:
            log.warning("queue runner: purge failed, will retry: %s", e)
            return
        if removed:
            log.info("queue: %d finished message(s) removed", len(removed))

    # ------------------------------------------------------------------ one round

    async def run_once(self) -> bool:
        """Claim what is due and start delivering it; True when the claim was full (more
        may be due).  Deliveries run on in the background (`drain` awaits them)."""
        free = self._concurrency - self._active
        if free <= 0 or self._stopping:
            return False
        now = self.clock()
        claims = await self.queue.claim(owner=self.owner, now=now, lease=self._lease, limit=free)
        count = 0
        for claim in claims:
            count += len(claim.entry.recipients)
            try:
                await self._dispatch(claim, now)
            except Exception as e:  # noqa: BLE001 - the other claims still go out
                # what was not started stays leased to us until the lease runs out
                log.warning("%s: cannot dispatch (its recipients are tried again when the "
                            "lease ends): %s", claim.entry.message.queue_id, e)
        return count >= free

    async def drain(self) -> None:
        """Wait until every delivery in progress has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*set(self._tasks), return_exceptions=True)

    async def _dispatch(self, claim: Claim, now: _dt.datetime) -> None:
        """Split a claim into (domain, route) groups; start the ones whose destination
        has room, hand the others back for `BUSY_SECONDS`."""
        groups: dict[tuple[str, str], list[RecipientState]] = {}
        for state in claim.entry.recipients:
            groups.setdefault((state.recipient.domain, state.recipient.route), []).append(state)
        admitted: list[list[RecipientState]] = []
        busy: list[RecipientState] = []
        for states in groups.values():
            destination = _destination(states[0])
            if self._by_destination[destination] >= self._per_domain:
                busy.extend(states)
                continue
            self._by_destination[destination] += 1
            self._active += 1
            admitted.append(states)
        self.peak_active = max(self.peak_active, self._active)
        if admitted:
            task = asyncio.ensure_future(self._deliver(claim.entry.message, admitted))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if busy:
            later = now + _dt.timedelta(seconds=BUSY_SECONDS)
            await self.queue.record(self.owner, [
                RecipientResult(s.id, RecipientStatus.QUEUED, next_attempt=later, attempted=False)
                for s in busy])

    def _release_slot(self, destination: str) -> None:
        self._active -= 1
        self._by_destination[destination] -= 1
        if self._by_destination[destination] <= 0:
            del self._by_destination[destination]
        self._wakeup.set()  # a free slot: claim again

    # ------------------------------------------------------------------ one message

    async def _deliver(self, message: QueuedMessage, groups: list[list[RecipientState]]) -> None:
        """Deliver the claimed groups of one message, record each group's results as
        soon as it has them, then send the DSNs the results call for."""
        held = await self._budget.acquire(message.size)
        try:
            await self._deliver_held(message, groups)
        finally:
            await self._budget.release(held)

    async def _deliver_held(self, message: QueuedMessage, groups: list[list[RecipientState]]) -> None:
        content: bytes | None = None
        missing: str | None = None
        try:
            content = await self.blobs.get(message.blob_key)
        except NotFound:
            missing = "the queued message's content is missing from the blob store"
            log.error("%s: blob %s is missing: cannot send it", message.queue_id, message.blob_key)
        except Exception as e:  # noqa: BLE001 - a storage outage: try again later
            log.warning("%s: cannot read the message (%s); retrying in %.0fs",
                        message.queue_id, e, STORAGE_RETRY_SECONDS)
            later = self.clock() + _dt.timedelta(seconds=STORAGE_RETRY_SECONDS)
            try:
                for states in groups:
                    await self._record(message, [RecipientResult(
                        s.id, RecipientStatus.QUEUED, next_attempt=later, attempted=False)
                        for s in states])
            finally:
                for states in groups:
                    self._release_slot(_destination(states[0]))
            return
        results = await asyncio.gather(
            *(self._deliver_group(message, states, content, missing) for states in groups),
            return_exceptions=True)
        outcomes: list[Outcome] = []
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise r
                log.error("%s: delivery failed: %r", message.queue_id, r)
            else:
                outcomes.extend(r)
        await self._send_notices(message, outcomes, content)

    async def _deliver_group(self, message: QueuedMessage, states: list[RecipientState],
                             content: bytes | None, missing: str | None) -> list[Outcome]:
        """One SMTP transaction (the sender's), its results recorded before returning."""
        try:
            if content is None:
                attempts = [Attempt(s.id, 0, missing or "no content", enhanced="4.3.0")
                            for s in states]
            else:
                attempts = await self._send(message, states, content)
            now = self.clock()
            outcomes = [decide(message, s, a, now=now, schedule=self.schedule, rng=self._rng)
                        for s, a in zip(states, attempts, strict=True)]
            await self._record(message, [o.result for o in outcomes])
            for o in outcomes:
                self._log(message, o)
            return outcomes
        finally:
            self._release_slot(_destination(states[0]))

    async def _send(self, message: QueuedMessage, states: list[RecipientState],
                    content: bytes) -> list[Attempt]:
        """The sender's attempts, one per recipient in order; a sender that raises or
        answers for the wrong recipients gives temporary failures (never a lost one)."""
        try:
            attempts = await asyncio.wait_for(self.sender.send(message, states, content),
                                              timeout=self.send_timeout)
        except asyncio.TimeoutError:
            log.warning("%s: the attempt took over %.0fs, cut off before the lease ends",
                        message.queue_id, self.send_timeout)
            return [Attempt(s.id, 0, f"the attempt took longer than {self.send_timeout:.0f}s",
                            enhanced="4.4.2") for s in states]
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - a bug in the sender must not lose mail
            log.exception("%s: remote sender failed", message.queue_id)
            return [Attempt(s.id, 0, f"internal error: {type(e).__name__}", enhanced="4.3.0")
                    for s in states]
        by_id = {a.recipient_id: a for a in attempts}
        return [by_id.get(s.id) or Attempt(s.id, 0, "no result from the remote sender",
                                           enhanced="4.3.0")
                for s in states]

    async def _record(self, message: QueuedMessage, results: list[RecipientResult]) -> None:
        """`queue.record`, tried again on storage errors; when it keeps failing the
        leases run out and the recipients are tried again (a delivered one twice)."""
        delay = 0.5
        for attempt in range(1, PERSIST_TRIES + 1):
            try:
                await self.queue.record(self.owner, results)
                return
            except StorageError as e:
                if attempt == PERSIST_TRIES:
                    log.error("%s: cannot record %d result(s), the lease will run out and "
                              "they will be tried again: %s", message.queue_id, len(results), e)
                    return
                log.warning("%s: recording results failed (%s), retrying in %.1fs",
                            message.queue_id, e, delay)
                await asyncio.sleep(delay)
                delay *= 2

    def _log(self, message: QueuedMessage, o: Outcome) -> None:
        """What the queue made of an attempt.  The attempt's own line (queue id,
        recipient, MX, TLS, reply) is the sender's; here only an expiry is worth a line
        of its own at INFO (the sender said "deferred", the queue gives up)."""
        a, r = o.attempt, o.result
        result = {RecipientStatus.DELIVERED: "delivered", RecipientStatus.FAILED: "failed",
                  RecipientStatus.EXPIRED: "expired", RecipientStatus.QUEUED: "deferred"}[r.status]
        metrics.DELIVERY_ATTEMPTS.labels(result).inc()
        if r.status is RecipientStatus.EXPIRED:
            log.info("%s: to=<%s>, status=expired after %d attempts since %s (%s)",
                     message.queue_id, o.state.recipient.address, o.state.attempts + 1,
                     f"{message.created_at:%Y-%m-%dT%H:%M:%SZ}", " ".join(a.text.split()))
        elif r.next_attempt is not None:
            log.debug("%s: to=<%s>, attempt %d, next at %s", message.queue_id,
                      o.state.recipient.address, o.state.attempts + 1,
                      f"{r.next_attempt:%Y-%m-%dT%H:%M:%SZ}")

    # ------------------------------------------------------------------ notices

    async def _send_notices(self, message: QueuedMessage, outcomes: list[Outcome],
                            content: bytes | None) -> None:
        """One DSN per action (failed, delayed, relayed) covering the message's
        recipients of this round that call for it."""
        by_action: dict[str, list[Outcome]] = {}
        for o in outcomes:
            if o.notice is not None:
                by_action.setdefault(o.notice, []).append(o)
        for action, group in by_action.items():
            try:
                dsn = self._build(message, action, group, content or b"")
            except Exception:  # noqa: BLE001 - a builder bug must not stop the runner
                log.exception("%s: cannot build the %s DSN", message.queue_id, action)
                continue
            await self._submit(message, action, dsn, len(group))

    def _build(self, message: QueuedMessage, action: str, group: list[Outcome],
               original: bytes) -> bytes:
        module = self._dsn
        now = self.clock()
        recipients = [module.DsnRecipient(
            address=o.state.recipient.address,
            orcpt=o.state.recipient.orcpt,
            action=action,
            status=dsn_status(o.attempt, o.result.status),
            remote_mta=_remote_mta(o.attempt.remote_host or o.state.remote_host),
            diagnostic=diagnostic(o.attempt, o.state),
            last_attempt=o.result.at,
            will_retry_until=message.expires_at if action == "delayed" else None,
        ) for o in group]
        return module.build_dsn(
            reporting_mta=self.config.server.hostname, original_sender=message.sender,
            recipients=recipients, original=original, ret=message.ret, envid=message.envid,
            arrival=message.created_at, now=now, queue_id=message.queue_id,
            size_limit=self.config.delivery.bounce_size_limit)

    async def _submit(self, message: QueuedMessage, action: str, dsn: bytes, count: int) -> None:
        delay = 0.5
        for attempt in range(1, PERSIST_TRIES + 1):
            try:
                await self.pipeline.submit_dsn(dsn, to=message.sender, queue_id=message.queue_id)
                metrics.DSNS_SENT.labels(action).inc()
                log.info("%s: %s DSN for %d recipient(s) sent to <%s>", message.queue_id,
                         action, count, message.sender)
                return
            except StorageError as e:
                if attempt == PERSIST_TRIES:
                    log.error("%s: the %s DSN to <%s> is lost: %s", message.queue_id, action,
                              message.sender, e)
                    return
                log.warning("%s: submitting the %s DSN failed (%s), retrying in %.1fs",
                            message.queue_id, action, e, delay)
                await asyncio.sleep(delay)
                delay *= 2


class _ByteBudget:
    """At most `limit` octets held at once (`CONTENT_BUDGET`); one request larger than
    the limit counts as the whole limit, so it waits until nothing else is held."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.used = 0
        self.peak = 0
        self._changed = asyncio.Condition()

    async def acquire(self, size: int) -> int:
        size = min(max(size, 1), self.limit)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + size <= self.limit)
            self.used += size
            self.peak = max(self.peak, self.used)
        return size

    async def release(self, size: int) -> None:
        async with self._changed:
            self.used -= size
            self._changed.notify_all()
