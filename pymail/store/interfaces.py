"""The three storage interfaces every backend implements: BlobStore, Index, Directory.

pymail keeps a message in two places (docs/architecture.md, "The storage model"):

* a **blob**: the immutable raw RFC 5322 message, keyed by the SHA-256 of its bytes, so a
  message for ten local recipients is stored once and a retried write is harmless;
* the **index**: mailboxes and one row per (mailbox, message) with UID, flags, internal
  date, size, MODSEQ and the ENVELOPE/BODYSTRUCTURE data computed once at delivery.

The **directory** is the seed's schema (`domains`, `virtual_users`, `virtual_aliases`):
who is a local domain, user or alias.

Optional capabilities are Protocols of their own: `ChangeFeed` (committed mailbox changes,
for IMAP IDLE) and `BanStore` (failed logins and banned client addresses, for
pymail.auth.ban), both shared by every process and node on the same index; and
`BlobFileStore` (a blob made from a local file without reading it into memory: the SMTP
spool's large messages).

Invariants every backend keeps (the conformance suite in tests/conformance checks them):

* `BlobStore.put` returns only when the bytes are durable (file fsynced and renamed and the
  directory fsynced, or the S3 PUT acknowledged).  Putting the same bytes twice is harmless.
  `BlobFileStore.put_file` keeps the same promise for a file's bytes, in bounded memory.
* `Index.deliver` is atomic: either every target mailbox got its row and every queued
  message its queue rows (``Delivery.queued``) and the transaction is durably committed,
  or nothing changed and a `StorageError` is raised.
* UIDs in a mailbox are strictly ascending and never reused; UIDVALIDITY never changes for
  the life of a mailbox; every change to a mailbox raises its HIGHESTMODSEQ.
* Addresses and domain names are stored and compared in lower case.
* Any failure of the backend itself (disk, network, database) is raised as `StorageError`
  (temporary: the caller answers 4xx / NO [UNAVAILABLE]); `NotFound` and `AlreadyExists`
  are answers about the data, not failures.

Methods are coroutines; a backend may run blocking work in threads but never blocks the
event loop.
"""

from __future__ import annotations

import datetime as _dt
import errno
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from pymail.store.queue import QueuedMessage

#: The mailboxes every user has, with their RFC 6154 special-use attribute.  INBOX first.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


class StorageError(Exception):
    """A backend failure (I/O, network, database).  Temporary: answer 4xx, retry later.

    `no_space` says the cause is a full file system (ENOSPC, EDQUOT, SQLITE_FULL): SMTP
    answers ``452 4.3.1``, IMAP ``NO [OVERQUOTA]``."""

    def __init__(self, message: str = "", *, no_space: bool = False) -> None:
        super().__init__(message)
        self.no_space = no_space


def is_no_space(error: BaseException) -> bool:
    """Whether a failure comes from a full file system: a `StorageError` that says so,
    or an ``OSError`` ENOSPC/EDQUOT anywhere in its chain of causes."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if getattr(seen, "no_space", False) or (
            isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class NotFound(LookupError):
    """The named domain, user, alias, mailbox or blob does not exist."""


class AlreadyExists(ValueError):
    """The domain, user, alias or mailbox to create exists already."""


# --------------------------------------------------------------------------- directory


@dataclass(frozen=True, slots=True)
class Domain:
    """A row of the seed's `domains` table."""

    id: int
    name: str  #: `domain_name`, lower case
    transport: str  #: Postfix-style transport, `virtual:` for local delivery
    company_id: int | None
    auth_type: str  #: `local` or `ldap`
    ldap_base_dn: str | None
    is_active: bool
    created_at: _dt.datetime


@dataclass(frozen=True, slots=True)
class User:
    """A row of `virtual_users`: a mailbox owner who can log in."""

    id: int
    domain_id: int
    address: str  #: `email`, lower case, `local@domain`
    password_hash: str  #: Dovecot style `{SCHEME}hash`
    quota: int  #: bytes, 0 = unlimited
    is_active: bool
    created_at: _dt.datetime


@dataclass(frozen=True, slots=True)
class Alias:
    """A row of `virtual_aliases`: mail for `source` goes to `destination`.

    `source` is `local@domain`, or `@domain` for a catch-all.  A source may have several
    rows, one per destination.
    """

    id: int
    domain_id: int
    source: str
    destination: str
    is_active: bool


@runtime_checkable
class Directory(Protocol):
    """Domains, users and aliases (the seed's schema)."""

    async def add_domain(
        self,
        name: str,
        *,
        transport: str = "virtual:",
        auth_type: str = "local",
        ldap_base_dn: str | None = None,
        company_id: int | None = None,
    ) -> Domain:
        """Create a domain; `AlreadyExists` if it does."""
        ...

    async def get_domain(self, name: str) -> Domain | None: ...

    async def list_domains(self) -> list[Domain]: ...

    async def set_domain_active(self, name: str, active: bool) -> None:
        """`NotFound` if there is no such domain."""
        ...

    async def remove_domain(self, name: str) -> None:
        """Remove the domain with its users, aliases, mailboxes; `NotFound` if absent."""
        ...

    async def add_user(self, address: str, password_hash: str, *, quota: int = 0) -> User:
        """Create a user; `NotFound` if its domain does not exist, `AlreadyExists`."""
        ...

    async def get_user(self, address: str) -> User | None: ...

    async def get_user_by_id(self, user_id: int) -> User | None: ...

    async def list_users(self, domain: str | None = None) -> list[User]: ...

    async def set_password(self, address: str, password_hash: str) -> None: ...

    async def set_user_active(self, address: str, active: bool) -> None: ...

    async def remove_user(self, address: str) -> None:
        """Remove the user and its mailboxes and messages; `NotFound` if absent."""
        ...

    async def add_alias(self, source: str, destinations: Sequence[str]) -> list[Alias]:
        """Add one row per destination; existing (source, destination) pairs are kept.

        `NotFound` if the source's domain is not a local domain."""
        ...

    async def get_alias_destinations(self, source: str) -> list[str]:
        """Destinations of the *active* rows for exactly `source` (no catch-all logic)."""
        ...

    async def list_aliases(self, domain: str | None = None) -> list[Alias]: ...

    async def remove_alias(self, source: str, destination: str | None = None) -> int:
        """Remove rows for `source` (one destination, or all); `NotFound` if none."""
        ...


# --------------------------------------------------------------------------- index


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A user's folder as IMAP sees it (RFC 3501 section 2.3.1.1 for the UID rules)."""

    id: int
    user_id: int
    name: str  #: hierarchy separator "/", INBOX spelled "INBOX"
    special_use: str | None  #: RFC 6154 attribute, e.g. "\\Sent"
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    subscribed: bool  #: a subscription of this name exists (see `Index.set_subscribed`)


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message in one mailbox."""

    mailbox_id: int
    uid: int
    blob_key: str
    size: int  #: RFC822.SIZE: octets of the stored blob
    internal_date: _dt.datetime  #: timezone-aware
    flags: frozenset[str]  #: system flags ("\\Seen") and keywords
    modseq: int


@dataclass(frozen=True, slots=True)
class DeliveryTarget:
    """Where one copy goes: a user's mailbox (INBOX unless a filter says otherwise)."""

    user_id: int
    mailbox: str = "INBOX"
    flags: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Delivery:
    """One stored blob to be indexed into several mailboxes, and the outbound queue
    entries of the same message, in one transaction.

    A delivery may have no local `targets` (mail only for other domains): then
    `blob_key`, `size` and `structure` are not stored (nothing refers to them), and
    only the `queued` rows are written."""

    blob_key: str
    size: int
    internal_date: _dt.datetime
    #: JSON text from `pymail.mail.mime.MessageStructure.to_json()`: ENVELOPE and
    #: BODYSTRUCTURE with part offsets, stored once per blob.
    structure: str
    targets: Sequence[DeliveryTarget] = field(default_factory=tuple)
    #: Messages for the outbound queue (`pymail.store.queue`), each with a blob of its
    #: own already stored (it may be `blob_key` itself, or a signed copy).
    queued: Sequence[QueuedMessage] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """What STATUS and SELECT report about a mailbox."""

    mailbox: Mailbox
    messages: int
    unseen: int  #: messages without \\Seen
    deleted: int  #: messages with \\Deleted
    size: int  #: sum of RFC822.SIZE (RFC 8438 STATUS SIZE)


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """The outcome of `Index.store_flags`."""

    changed: list[MessageRecord]  #: messages whose flags changed, with their new MODSEQ
    failed: list[int]  #: UIDs refused by UNCHANGEDSINCE (RFC 7162 MODIFIED response)


@dataclass(frozen=True, slots=True)
class Stored:
    """Where one target's copy landed."""

    user_id: int
    mailbox_id: int
    uid: int


@runtime_checkable
class Index(Protocol):
    """Mailboxes and messages (what IMAP and POP3 read without touching a blob)."""

    async def ensure_default_mailboxes(self, user_id: int) -> None:
        """Create whichever of DEFAULT_MAILBOXES the user lacks (idempotent)."""
        ...

    async def create_mailbox(
        self, user_id: int, name: str, special_use: str | None = None
    ) -> Mailbox:
        """`AlreadyExists` if the user has a mailbox of that name."""
        ...

    async def get_mailbox(self, user_id: int, name: str) -> Mailbox | None: ...

    async def list_mailboxes(self, user_id: int) -> list[Mailbox]: ...

    async def deliver(self, delivery: Delivery) -> list[Stored]:
        """Index one blob into every target mailbox, atomically and durably.

        A target whose mailbox does not exist gets the user's default mailboxes created;
        if its mailbox is still missing the copy goes to INBOX.  Targets are stored in the
        order given; the result is in the same order."""
        ...

    async def deliver_many(self, deliveries: Sequence[Delivery]) -> list[list[Stored]]:
        """`deliver` for several blobs in ONE transaction: all are indexed or none is
        (MULTIAPPEND, RFC 3502 section 3).  UIDs in one mailbox ascend in the order the
        deliveries are given; one result list per delivery, in that order."""
        ...

    async def list_messages(
        self, mailbox_id: int, uid_min: int = 1, uid_max: int | None = None
    ) -> list[MessageRecord]:
        """Messages in UID order (inclusive range)."""
        ...

    # -- changes an IMAP/POP3 session makes (RFC 3501 section 6.3, 6.4; RFC 7162) --------
    # Each call is one transaction; each changed message gets MODSEQ = the mailbox's new
    # HIGHESTMODSEQ; each call that changes a mailbox is announced on the ChangeFeed.

    async def get_mailbox_by_id(self, mailbox_id: int) -> Mailbox | None: ...

    async def first_recent_uid(self, mailbox_id: int, advance_to: int | None = None) -> int:
        """The lowest UID no session that selected the mailbox has taken as \\Recent
        (RFC 3501 section 2.3.2).  With `advance_to` (a SELECT, or new mail reported to
        a read-write session), moves it up to that UID, never down, in the same
        transaction, and returns the value before: two sessions never both get a
        message as \\Recent.  `NotFound` if the mailbox does not exist."""
        ...

    async def mailbox_status(self, mailbox_id: int) -> "MailboxStatus":
        """Counts for STATUS/SELECT; `NotFound` if the mailbox does not exist."""
        ...

    async def storage_used(self, user_id: int) -> int:
        """Octets in all the user's mailboxes (the sum of RFC822.SIZE; a message copied
        into two mailboxes counts twice, as IMAP QUOTA and Dovecot count it)."""
        ...

    async def rename_mailbox(self, user_id: int, old: str, new: str) -> Mailbox:
        """Rename a mailbox and its children (hierarchy separator "/"), keeping
        UIDVALIDITY and messages; their subscriptions move along.  Renaming INBOX moves
        its messages into a new mailbox `new` (subscribed if INBOX is) and leaves INBOX
        empty (RFC 3501 section 6.3.5).  `NotFound`, `AlreadyExists`."""
        ...

    async def delete_mailbox(self, user_id: int, name: str) -> None:
        """Delete the mailbox and its message rows (their blobs become orphans for the
        sweeper); its subscription stays (RFC 3501 section 6.3.4).  INBOX cannot be
        deleted (`ValueError`); `NotFound`."""
        ...

    async def set_subscribed(self, user_id: int, name: str, subscribed: bool) -> None:
        """Subscribe to or unsubscribe from a mailbox name (RFC 3501 sections 6.3.6-7).
        Subscriptions are names: CREATE adds none (the default mailboxes are created
        subscribed), DELETE removes none.  `NotFound` when subscribing to a name with no
        mailbox, or unsubscribing from one with neither a mailbox nor a subscription."""
        ...

    async def list_subscriptions(self, user_id: int) -> list[str]:
        """The names the user is subscribed to, sorted, whether or not a mailbox of
        that name exists (LSUB, LIST (SUBSCRIBED): RFC 5258 section 3.1 \\NonExistent)."""
        ...

    async def store_flags(
        self,
        mailbox_id: int,
        uids: Sequence[int],
        flags: frozenset[str],
        mode: str,
        *,
        unchanged_since: int | None = None,
    ) -> "FlagUpdate":
        """Change the flags of the listed messages: `mode` is "add", "remove" or
        "replace" (STORE +FLAGS / -FLAGS / FLAGS).  Messages whose flags do not change
        keep their MODSEQ.  With `unchanged_since` (RFC 7162 section 3.1.3), messages
        whose MODSEQ is greater are left alone and reported as `failed`.  Absent UIDs
        are ignored."""
        ...

    async def expunge(self, mailbox_id: int, uids: Sequence[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only those among `uids` when given:
        UID EXPUNGE, RFC 4315); returns the removed UIDs in ascending order."""
        ...

    async def copy_messages(
        self, source_mailbox_id: int, uids: Sequence[int], target_mailbox_id: int
    ) -> list[tuple[int, int]]:
        """Copy (flags and internal date kept) in ascending UID order; returns
        (source UID, new UID) pairs for COPYUID (RFC 4315).  Absent UIDs are ignored.
        Both mailboxes must belong to the same user (`ValueError` otherwise)."""
        ...

    async def move_messages(
        self, source_mailbox_id: int, uids: Sequence[int], target_mailbox_id: int
    ) -> list[tuple[int, int]]:
        """Copy then remove from the source, atomically (RFC 6851 MOVE)."""
        ...

    async def get_structure(self, blob_key: str) -> str | None:
        """The JSON structure stored with the blob at delivery."""
        ...

    async def blob_referenced(self, blob_key: str) -> bool:
        """Whether any message row or outbound queue entry refers to the blob (the
        orphan sweeper asks this)."""
        ...

    async def forget_blob(self, blob_key: str) -> bool:
        """Drop the blob's stored structure if no message row and no queue entry refers
        to it, atomically.

        True if the blob is now unknown to the index (it may be deleted from the
        BlobStore); False if a message or a queued message still refers to it."""
        ...


@dataclass(frozen=True, slots=True)
class MailboxChange:
    """A committed change to one mailbox (a delivery today; flags and expunges later)."""

    user_id: int
    mailbox_id: int
    uidnext: int
    highestmodseq: int


@runtime_checkable
class ChangeFeed(Protocol):
    """Optional index capability: hear about committed mailbox changes as they happen,
    from every process and node sharing the index (IMAP IDLE listens here).

    `watch()` yields changes committed after the iterator started, in commit order per
    mailbox; a change may be reported more than once (after a reconnect), never lost
    while the iterator runs.  Closing the iterator (aclose) stops listening."""

    def watch(self) -> AsyncIterator[MailboxChange]: ...


# --------------------------------------------------------------------------- blobs


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """What a listing says about one blob."""

    key: str
    size: int
    #: When the blob was last written.  A `put` of bytes already stored counts as a
    #: write (it renews this time), so the orphan sweeper's grace period protects a
    #: delivery that is between its `put` and its index commit.
    modified: _dt.datetime


@runtime_checkable
class BlobStore(Protocol):
    """Immutable message bytes keyed by the lower-case hex SHA-256 of the bytes."""

    async def put(self, data: bytes) -> str:
        """Store durably and return the key.  Same bytes, same key; a repeat is a no-op."""
        ...

    async def get(self, key: str) -> bytes:
        """All bytes; `NotFound` if absent."""
        ...

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from `start` (fewer at the end); `NotFound` if absent."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def delete(self, key: str) -> None:
        """Remove the blob; deleting an absent key is not an error."""
        ...

    async def delete_if_stale(self, key: str, cutoff: _dt.datetime) -> bool:
        """Delete the blob only if it was last written before `cutoff` (the orphan
        sweeper's delete); True if it was deleted.  A concurrent `put` of the same bytes
        must not lose its blob to this call (see each backend for how it ensures that)."""
        ...

    def keys(self) -> AsyncIterator[str]:
        """Every stored key, in no particular order."""
        ...

    def entries(self) -> AsyncIterator["BlobInfo"]:
        """Every stored blob with its size and last-written time, in no particular order."""
        ...

    async def check(self) -> None:
        """Reach the backend once (e.g. the bucket exists and the credentials work);
        `StorageError` with a one-line reason otherwise.  Used at start."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class BlobFileStore(Protocol):
    """Optional `BlobStore` capability: store a blob from a local file, holding a
    bounded amount of it in memory whatever its size (the SMTP spool's large messages)."""

    async def put_file(self, path: Path, key: str) -> str:
        """Store the bytes of the file at `path` durably as blob `key` and return the
        key, with `put`'s guarantees (durable on return, a repeat is harmless, it renews
        the last-written time).  `key` is the lower-case hex SHA-256 of the file's bytes,
        which the caller computed while writing them (a backend may check it; S3 servers
        do); a malformed key is a `ValueError`.  The file is left where it is: removing it
        stays the caller's job.  The file must not change while this runs."""
        ...


# --------------------------------------------------------------------------- bans


@dataclass(frozen=True, slots=True)
class Ban:
    """A client address refused until `until` (pymail.auth.ban decides; the index keeps
    it so that every worker and node sees it)."""

    ip: str  #: the address as the listener reports it (``str(ipaddress.ip_address)``)
    until: _dt.datetime  #: timezone-aware, UTC
    failures: int  #: failed logins that earned the ban
    reason: str  #: e.g. "authentication"
    created_at: _dt.datetime  #: timezone-aware, UTC


@dataclass(frozen=True, slots=True)
class FailureCounts:
    """Failed logins inside the counting window, after recording one more."""

    ip: int  #: from this client address (any account)
    account: int  #: for this account (any client address)


@runtime_checkable
class BanStore(Protocol):
    """Optional index capability: failed logins and bans shared by every process and node
    using the index.  Times are passed in by the caller (timezone-aware), so the policy
    and its tests own the clock; the store only keeps and counts rows.

    Invariants: `record_failure` inserts and counts in one transaction; `ban` keeps the
    later `until` when the address is banned already (two processes banning at once end
    with one row); a ban no longer active (``until <= now``) is never reported."""

    async def record_failure(
        self, ip: str, account: str, at: _dt.datetime, since: _dt.datetime
    ) -> FailureCounts:
        """Record one failed login at `at`; count those at or after `since`."""
        ...

    async def ban(
        self, ip: str, until: _dt.datetime, *, failures: int, reason: str, now: _dt.datetime
    ) -> Ban:
        """Ban `ip` until `until` (or keep a later existing end) and forget its recorded
        failures (the ban used them up); the ban as stored."""
        ...

    async def get_ban(self, ip: str, now: _dt.datetime) -> Ban | None:
        """The ban of `ip` if it is active at `now`."""
        ...

    async def list_bans(self, now: _dt.datetime) -> list[Ban]:
        """Every ban active at `now`, by address."""
        ...

    async def remove_ban(self, ip: str) -> bool:
        """Lift the ban of `ip` (active or not) and forget its failures; False if there
        was no ban row."""
        ...

    async def prune(self, failures_before: _dt.datetime, now: _dt.datetime) -> list[Ban]:
        """Delete failures older than `failures_before` and bans that ended by `now`;
        returns the bans deleted (each to exactly one caller, for its "unban" log)."""
        ...
