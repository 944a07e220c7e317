"""What one delivery attempt to a remote server reports, and who makes it.

The queue runner (pymail.delivery.runner) claims recipients from the `QueueStore`,
groups the recipients of one message by ``(domain, route)`` and hands each group to a
`RemoteSender` (pymail.delivery.remote): MX lookup, TLS policy, one SMTP transaction.
The sender answers with one `Attempt` per recipient; the runner turns each into a
`RecipientResult` (a retry time, or a final status and a DSN).  Keeping the seam as
data lets the runner be tested without a network and the sender without a queue.

Invariants:

* `RemoteSender.send` never raises for what the remote side or DNS does: a refused
  connection, a timeout, a TLS policy that cannot be met, a SERVFAIL, a 4xx or 5xx all
  come back as `Attempt` values (``code == 0`` when no server replied).  It returns one
  `Attempt` per recipient it was given, in the same order.
* ``permanent`` is True only for a decision that retrying cannot change: a 5xx reply,
  a null MX (RFC 7505), an address the next hop cannot take (5.6.7 without SMTPUTF8).
  Everything else (4xx, no reply, DNS temporary failure, TLS policy not met) is
  temporary: the recipient stays queued.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pymail.store.queue import QueuedMessage, RecipientState

__all__ = ["Attempt", "RemoteSender"]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One recipient's result of one attempt."""

    recipient_id: int  #: `RecipientState.id`
    code: int  #: the SMTP reply code that decided it; 0 when no server replied
    text: str  #: the remote's full reply text (lines joined by "\n"), or what went wrong
    enhanced: str | None = None  #: RFC 3463 code, e.g. "5.1.1" (the remote's, or ours)
    remote_host: str | None = None  #: "mx.remote.test[127.0.0.2]" (DSN Remote-MTA)
    permanent: bool = False  #: see the module docstring
    tls: str | None = None  #: the TLS outcome logged for the attempt, e.g. "TLSv1.3 verified"
    #: the next hop advertised DSN and took NOTIFY/ORCPT (RFC 3461 section 4.2): a
    #: success notice is then its job, not ours ("relayed" otherwise, section 6.2.6)
    dsn_passed: bool = False

    @property
    def delivered(self) -> bool:
        return 200 <= self.code < 300


@runtime_checkable
class RemoteSender(Protocol):
    """Delivers one message to the recipients of one (domain, route) group."""

    async def send(self, message: QueuedMessage, recipients: Sequence[RecipientState],
                   content: bytes) -> list[Attempt]:
        """Try once; one `Attempt` per recipient, in order (see the module docstring).
        `content` is the message as queued (already signed)."""
        ...

    async def close(self) -> None:
        """Close cached connections (at shutdown)."""
        ...
