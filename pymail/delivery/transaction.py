"""What every message goes through delivery as: a `Transaction`, independent of aiosmtpd.

The MX, submission, IMAP APPEND and pymail's own bounces all hand delivery the same
thing: who sent it (`sender`, `client`), to whom (`recipients`, with their RFC 3461 DSN
parameters), the envelope parameters the next hop must honour, and the message itself
(`pymail.delivery.spool.MessageContent`: bytes in memory or a spool file, with its
SHA-256 key).  The pipeline (`pymail.delivery.pipeline`) routes each recipient to a
target and makes the accepted ones durable in one step (docs/architecture.md, "The
durability rule").

An IMAP APPEND has no envelope: its transaction has the null sender, the user as its
one recipient and ``client.service == "imap"`` with the authenticated user; it is not
routed, its one `LocalTarget` names the mailbox, flags and date the client gave, and
its content is stored exactly as appended (no trace header is added).

Targets are data (`LocalTarget`, `RemoteTarget`, `Rejection`), decided per recipient
by the router; the checks of the inbound-checks issue slot in between the transaction
and its targets, and Sieve later turns a `LocalTarget` into fileinto/flag targets.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

from pymail.delivery.spool import MessageContent
from pymail.store.interfaces import User

__all__ = ["ClientFacts", "LocalTarget", "Recipient", "Rejection", "RemoteTarget", "Transaction"]


@dataclass(frozen=True, slots=True)
class Recipient:
    """One RCPT TO (RFC 5321 section 4.1.1.3) with its DSN parameters (RFC 3461 4.1-4.2)."""

    address: str  #: canonical forward-path ("Postmaster" already resolved to an address)
    orcpt: str | None = None  #: ORCPT as given (``rfc822;bob@example.org``), xtext decoded
    notify: frozenset[str] = frozenset()  #: NOTIFY: NEVER, or SUCCESS/FAILURE/DELAY; empty = default


@dataclass(frozen=True, slots=True)
class ClientFacts:
    """Who handed the message over."""

    service: str  #: smtp, submission, submissions, imap (APPEND), internal (bounces)
    ip: str = ""  #: the client's address (the PROXY source behind a load balancer)
    helo: str = ""  #: EHLO/HELO name
    tls: str | None = None  #: e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384"; None: plaintext
    user: User | None = None  #: the authenticated user (submission, APPEND)


@dataclass(slots=True)
class Transaction:
    """One message to deliver (see the module docstring)."""

    queue_id: str  #: the id in log lines, Received and `pymail queue`
    sender: str  #: reverse-path, "" for the null sender
    recipients: list[Recipient]
    client: ClientFacts
    received_at: _dt.datetime
    message: MessageContent | None = None  #: set once the content is in
    envid: str | None = None  #: RFC 3461 ENVID
    ret: str | None = None  #: RFC 3461 RET (FULL or HDRS)
    requiretls: bool = False  #: RFC 8689 REQUIRETLS
    smtputf8: bool = False  #: RFC 6531 SMTPUTF8
    body: str = "7BIT"  #: RFC 6152 BODY: 7BIT or 8BITMIME
    size: int = 0  #: RFC 1870 SIZE= the client declared at MAIL (0: none); quota checks
    #: trace header fields delivery adds before the content (Return-Path, Received, and
    #: later Authentication-Results); the MX writes them into the spool first, so they are
    #: part of `message` there.
    notes: dict[str, str] = field(default_factory=dict)  #: for the log line


@dataclass(frozen=True, slots=True)
class LocalTarget:
    """A copy into a local user's mailbox: INBOX for received mail, the named mailbox
    with the client's flags and date for an IMAP APPEND (RFC 3501 section 6.3.11)."""

    user_id: int
    mailbox: str = "INBOX"
    flags: frozenset[str] = frozenset()  #: the copy's flags (never \Recent: it is not kept)
    #: the copy's INTERNALDATE (RFC 3501 section 2.3.3); None: `Transaction.received_at`.
    #: The local targets of one delivery share one date (one index row set, one blob).
    internal_date: _dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class RemoteTarget:
    """A recipient for the outbound queue."""

    address: str  #: where the copy goes (an alias's remote destination, or the RCPT)
    domain: str  #: the domain whose MX (or transport) takes it
    route: str = "mx"  #: ``mx``, ``relay`` or ``smtp:host:port`` (`pymail.store.queue`)
    orcpt: str | None = None
    notify: frozenset[str] = frozenset()
    sender: str | None = None  #: an envelope sender of its own (SRS for forwarded mail)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A recipient refused now, with the reply to give (never a bounce later for what
    could be refused now)."""

    reply: str  #: e.g. "550 5.1.1 ..."
    reason: str  #: for the log line
