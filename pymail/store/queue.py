"""The outbound queue's interface: `QueueStore`, and the rows it keeps.

Mail for other domains (submission from local users, aliases that forward outside,
domains whose ``transport`` relays elsewhere, pymail's own bounces) waits here until a
remote server takes it.  The queue lives in the index database, on both backends, so
every pymail node on one PostgreSQL shares it (docs/architecture.md, "Scaling out").

The model (one message, many recipients, each with its own fate -- mox and Stalwart):

* `QueuedMessage`: one row per queued message: the blob holding its bytes (already
  DKIM-signed when it is signed), the envelope sender, the RFC 3461 envelope
  parameters (ENVID, RET), REQUIRETLS (RFC 8689), SMTPUTF8 and 8BITMIME needs, when it
  was queued and when it expires.
* `QueuedRecipient`: one row per recipient: its domain (work is grouped by it), the
  route (``mx`` = the domain's MX; ``relay`` = ``[delivery] relay_host``; ``smtp:host:port``
  = a ``domains.transport`` of that form), ORCPT and NOTIFY (RFC 3461), its status,
  attempts, next attempt, lease, and the last result: the reply code, the enhanced code
  and the remote server's full text, and the host that gave it.

Invariants every backend keeps (tests/conformance/test_queue.py checks them on SQLite
and PostgreSQL):

* Queue rows are written in the same transaction as the local copies of the same
  message (`Index.deliver` with ``Delivery.queued``): a 250 means both are durable, or
  neither is.
* `claim` hands a recipient to one owner at a time: in one short committed transaction
  it takes due recipients (``status == QUEUED``, ``next_attempt <= now``, no live lease),
  sets ``lease_owner``/``lease_until = now + lease`` and moves ``next_attempt`` to the end
  of the lease *before* any SMTP is spoken.  A node killed mid-delivery loses nothing:
  its lease runs out and the recipients are due again.  PostgreSQL claims with
  ``FOR UPDATE SKIP LOCKED``, SQLite within its single writer.
* `record` stores each result and ends the owner's lease on that recipient in one
  transaction.  A final status (DELIVERED, FAILED, EXPIRED) is never changed back by a
  later `record` or `claim`, so a restart never retries a permanent result.
* A message whose recipients are all final is removed by `purge_finished`; its blob is
  then an orphan for the sweeper.  Until then `Index.blob_referenced` counts queued
  blobs as referenced.
* Times are timezone-aware and passed in by the caller (the clock is the caller's).
"""

from __future__ import annotations

import datetime as _dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = [
    "Claim",
    "QueueEntry",
    "QueueStats",
    "QueueStore",
    "QueuedMessage",
    "QueuedRecipient",
    "RecipientResult",
    "RecipientState",
    "RecipientStatus",
]


class RecipientStatus(str, enum.Enum):
    QUEUED = "queued"  #: waiting for (another) attempt
    DELIVERED = "delivered"  #: a remote server said 2xx (final)
    FAILED = "failed"  #: a 5xx, or a permanent local decision (final; the sender gets a DSN)
    EXPIRED = "expired"  #: still failing at the end of max_lifetime (final; DSN)

    @property
    def final(self) -> bool:
        return self is not RecipientStatus.QUEUED


@dataclass(frozen=True, slots=True)
class QueuedRecipient:
    """A recipient as it is queued."""

    address: str  #: the forward-path, canonical
    domain: str  #: lower case, where the route leads (the address's domain for ``mx``)
    route: str = "mx"  #: ``mx``, ``relay``, or ``smtp:host:port``
    orcpt: str | None = None  #: RFC 3461 ORCPT as given, e.g. ``rfc822;bob@example.org``
    notify: frozenset[str] = frozenset()  #: RFC 3461 NOTIFY; empty = FAILURE,DELAY


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message to queue (see the module docstring)."""

    queue_id: str  #: the id the SMTP log line and `pymail queue` show
    blob_key: str  #: the bytes to send (signed if signed)
    size: int
    sender: str  #: reverse-path; "" for the null sender (bounces)
    recipients: tuple[QueuedRecipient, ...]
    created_at: _dt.datetime
    expires_at: _dt.datetime
    origin: str = "submission"  #: submission, forward, transport, dsn (for the log)
    auth_user: str | None = None  #: who submitted it, for the log and the DSN
    envid: str | None = None  #: RFC 3461 ENVID
    ret: str | None = None  #: RFC 3461 RET: "FULL" or "HDRS"
    requiretls: bool = False  #: RFC 8689 REQUIRETLS
    smtputf8: bool = False  #: needs SMTPUTF8 at the next hop (RFC 6531)
    body: str = "7BIT"  #: "7BIT" or "8BITMIME" (RFC 6152): what the next hop must take


@dataclass(frozen=True, slots=True)
class RecipientState:
    """A queued recipient with its bookkeeping (what `claim` and `get` return)."""

    id: int  #: the row's id, unique in the queue
    recipient: QueuedRecipient
    status: RecipientStatus
    attempts: int
    next_attempt: _dt.datetime
    last_attempt: _dt.datetime | None = None
    lease_owner: str | None = None
    lease_until: _dt.datetime | None = None
    reply_code: int | None = None  #: e.g. 550
    enhanced_code: str | None = None  #: e.g. "5.1.1"
    reply_text: str | None = None  #: the remote server's full reply text, all lines
    remote_host: str | None = None  #: the host that answered (for Remote-MTA)
    delay_notified: bool = False  #: the delayed-delivery DSN went out


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """A queued message and the state of each of its recipients."""

    id: int  #: the message row's id
    message: QueuedMessage
    recipients: tuple[RecipientState, ...]


@dataclass(frozen=True, slots=True)
class Claim:
    """Work handed to one owner: a message and those of its recipients now leased to it.

    Recipients of one claim share a message; a caller groups them by (domain, route)
    into SMTP transactions."""

    entry: QueueEntry  #: the message (its `recipients` are only the claimed ones)
    lease_until: _dt.datetime


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """What one attempt did for one claimed recipient (`QueueStore.record`)."""

    recipient_id: int
    status: RecipientStatus  #: QUEUED again (deferred), or final
    next_attempt: _dt.datetime | None = None  #: for QUEUED: when to try again
    reply_code: int | None = None
    enhanced_code: str | None = None
    reply_text: str | None = None
    remote_host: str | None = None
    attempted: bool = True  #: counts as an attempt (False: e.g. released at shutdown)
    delay_notified: bool | None = None  #: set the flag (None: leave it)
    at: _dt.datetime | None = None  #: when the attempt happened (last_attempt)


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What /metrics and `pymail queue list` summarise."""

    messages: int
    recipients_queued: int  #: status QUEUED
    oldest: _dt.datetime | None  #: created_at of the oldest message with a QUEUED recipient
    by_status: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class QueueStore(Protocol):
    """Optional index capability: the outbound queue (see the module docstring)."""

    async def claim(self, *, owner: str, now: _dt.datetime, lease: _dt.timedelta,
                    limit: int) -> list[Claim]:
        """Lease up to `limit` due recipients to `owner`, grouped per message."""
        ...

    async def record(self, owner: str, results: Sequence[RecipientResult]) -> None:
        """Store results for recipients `owner` holds (one transaction); a result for a
        recipient whose status is already final, or leased to someone else, is ignored."""
        ...

    async def release(self, owner: str) -> int:
        """End every lease `owner` holds, making those recipients due now (a clean
        shutdown); how many."""
        ...

    async def get(self, queue_id: str) -> QueueEntry | None:
        """One message with all its recipients, or None."""
        ...

    async def list_entries(self, *, include_final: bool = False, limit: int = 1000) -> list[QueueEntry]:
        """Queued messages, oldest first (with final recipients when asked)."""
        ...

    async def retry(self, queue_id: str | None, now: _dt.datetime) -> int:
        """Make the QUEUED recipients of one message (None: of all) due at `now`; how
        many."""
        ...

    async def delete(self, queue_id: str) -> bool:
        """Remove a message and its recipients (an operator's decision); False if absent."""
        ...

    async def purge_finished(self) -> list[str]:
        """Remove the messages whose recipients are all final; their blob keys."""
        ...

    async def stats(self) -> QueueStats: ...
