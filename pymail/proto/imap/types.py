"""Typed arguments of parsed IMAP commands (RFC 3501 section 6, RFC 9051 section 6).

Invariants: every value here is immutable (frozen dataclasses, tuples) and already
validated by the grammar -- a session never re-parses strings.  Strings from quoted
strings are valid UTF-8 (RFC 9051 / RFC 6855 UTF8=ACCEPT); strings from literals are
decoded with ``surrogateescape`` so arbitrary bytes survive (``os.fsencode``-style
round trip).  Mailbox names are not decoded from modified UTF-7; ``INBOX`` is
normalised to upper case (RFC 3501 section 5.1).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field

# --- sequence sets (RFC 3501 section 9 "sequence-set", RFC 5182 "$") ---------------


@dataclass(frozen=True)
class SequenceSet:
    """A message sequence number or UID set.

    ``ranges`` holds (first, last) pairs as written, ``None`` standing for ``*``;
    ``saved_result`` is true for ``$`` (RFC 5182 SEARCHRES) and then ``ranges`` is empty.
    """

    ranges: tuple[tuple[int | None, int | None], ...] = ()
    saved_result: bool = False

    def iter_ranges(self, largest: int) -> Iterator[tuple[int, int]]:
        """Yield (low, high) ranges with ``*`` replaced by ``largest`` and clamped to it.

        RFC 3501 section 9: ``a:b`` equals ``b:a``; ``*`` is the largest number in use.
        Ranges that lie wholly above ``largest`` are dropped.  Raises ``ValueError`` for
        ``$``, which the session must resolve itself."""
        if self.saved_result:
            raise ValueError("'$' must be resolved by the session (RFC 5182)")
        for first, last in self.ranges:
            a = largest if first is None else first
            b = largest if last is None else last
            low, high = min(a, b), min(max(a, b), largest)
            if low <= high and high >= 1:
                yield low, high

    def expand(self, largest: int) -> list[int]:
        """All numbers in the set within 1..largest, ascending, without duplicates."""
        numbers: set[int] = set()
        for low, high in self.iter_ranges(largest):
            numbers.update(range(low, high + 1))
        return sorted(numbers)

    def contains(self, number: int, largest: int) -> bool:
        return any(low <= number <= high for low, high in self.iter_ranges(largest))


# --- FETCH (RFC 3501 section 6.4.5, RFC 3516 BINARY, RFC 7162 CONDSTORE) ----------


@dataclass(frozen=True)
class Section:
    """``[section]`` of BODY/BINARY: ``part`` is the dotted part path (empty for the
    whole message); ``text`` is None, HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT
    or MIME; ``header_fields`` lists the field names for HEADER.FIELDS(.NOT), upper
    case."""

    part: tuple[int, ...] = ()
    text: str | None = None
    header_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class FetchAttribute:
    """One fetch-att.  ``name`` is upper case: ENVELOPE, FLAGS, INTERNALDATE,
    RFC822, RFC822.HEADER, RFC822.SIZE, RFC822.TEXT, BODY, BODYSTRUCTURE, UID, MODSEQ,
    BINARY, BINARY.SIZE.  ``section`` is set for ``BODY[...]``/``BINARY[...]`` (a
    ``BODY`` without section means the non-extensible BODYSTRUCTURE); ``peek`` for
    ``.PEEK``; ``partial`` is (offset, length) from ``<offset.length>``."""

    name: str
    section: Section | None = None
    peek: bool = False
    partial: tuple[int, int] | None = None


# --- SEARCH (RFC 3501 section 6.4.4, RFC 4731 ESEARCH, RFC 7162 MODSEQ) -----------


@dataclass(frozen=True)
class SearchKey:
    """A node of the search tree.  ``name`` is the upper-case key (``ALL``, ``FROM``,
    ``OR`` ...), with three synthetic names: ``AND`` (a parenthesised list or the
    top-level list; ``args`` are the child keys), ``SEQUENCE`` (a bare sequence set).
    ``args`` hold the typed arguments: str for strings, ``datetime.date`` for dates,
    int for sizes/modseqs, ``SequenceSet`` for UID/SEQUENCE, ``SearchKey`` children for
    AND/OR/NOT; HEADER has (field name, value)."""

    name: str
    args: tuple[object, ...] = ()


# --- per-command arguments ----------------------------------------------------------


@dataclass(frozen=True)
class Login:
    userid: str
    password: str


@dataclass(frozen=True)
class Authenticate:
    """``initial_response`` (RFC 4959 SASL-IR) is the base64 text as sent, ``""`` for
    ``=`` (an empty response), None when absent."""

    mechanism: str
    initial_response: str | None = None


@dataclass(frozen=True)
class MailboxName:
    """Arguments of CREATE, DELETE, SUBSCRIBE, UNSUBSCRIBE, GETQUOTAROOT."""

    mailbox: str
    parameters: tuple[object, ...] = ()  # e.g. CREATE (USE (\Sent)), RFC 6154 section 3


@dataclass(frozen=True)
class Select:
    """SELECT / EXAMINE.  ``qresync`` is (uidvalidity, modseq, known_uids or None,
    (known sequence set, known uid set) or None) -- RFC 7162 section 3.2.5."""

    mailbox: str
    condstore: bool = False
    qresync: tuple[int, int, SequenceSet | None, tuple[SequenceSet, SequenceSet] | None] | None = None


@dataclass(frozen=True)
class Rename:
    mailbox: str
    new_name: str


@dataclass(frozen=True)
class List:
    """LIST (RFC 3501 6.3.8, RFC 5258 LIST-EXTENDED, RFC 6154, RFC 5819 LIST-STATUS).
    Options are upper-case names; ``status_items`` from ``RETURN (STATUS (...))``."""

    reference: str
    patterns: tuple[str, ...]
    selection_options: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    status_items: tuple[str, ...] = ()
    extended: bool = False  # selection options or a pattern list or RETURN were given


@dataclass(frozen=True)
class Lsub:
    reference: str
    pattern: str


@dataclass(frozen=True)
class Status:
    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True)
class Append:
    """APPEND (RFC 3501 6.3.11); ``binary`` is true for a ``~{n}`` literal8 (RFC 3516).
    ``streamed``: the literal (``size`` octets) was larger than the reader's stream
    threshold and came as ``LiteralData`` events before this command; ``message`` is
    then empty."""

    mailbox: str
    flags: tuple[str, ...] | None
    internal_date: datetime.datetime | None
    message: bytes
    binary: bool = False
    streamed: bool = False
    size: int = -1  #: the literal's octets (len(message) unless streamed)

    #: MULTIAPPEND (RFC 3502 section 6): the messages after the first, each an `Append`
    #: of the same mailbox (``more`` empty); all of them or none are appended.
    more: tuple[Append, ...] = ()

    def __post_init__(self) -> None:
        if self.size < 0:
            object.__setattr__(self, "size", len(self.message))

    @property
    def messages(self) -> tuple[Append, ...]:
        """Every message of the command, in order (the first is this one)."""
        return (self, *self.more)


@dataclass(frozen=True)
class Enable:
    capabilities: tuple[str, ...]


@dataclass(frozen=True)
class Id:
    """ID (RFC 2971): ``parameters`` is None for NIL, else (field, value-or-None) pairs."""

    parameters: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True)
class GetQuota:
    root: str


@dataclass(frozen=True)
class Fetch:
    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    changed_since: int | None = None  # RFC 7162 CHANGEDSINCE
    vanished: bool = False  # RFC 7162 section 3.2.6 (UID FETCH only)


@dataclass(frozen=True)
class Store:
    """STORE: ``mode`` is ``""`` (replace), ``"+"`` or ``"-"``."""

    sequence_set: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    unchanged_since: int | None = None  # RFC 7162 UNCHANGEDSINCE


@dataclass(frozen=True)
class Copy:
    """Arguments of COPY and MOVE."""

    sequence_set: SequenceSet
    mailbox: str


@dataclass(frozen=True)
class Search:
    """SEARCH; ``key`` is an AND node of the top-level keys.  ``return_options`` (RFC
    4731 ESEARCH) is None without RETURN."""

    key: SearchKey
    charset: str | None = None
    return_options: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Sort:
    """SORT (RFC 5256 section 3): ``criteria`` are (key, reverse) pairs, ``search`` the
    search-criteria as SEARCH has them (the charset is required); ``return_options``
    (RFC 5267 section 3 ESORT) is None without RETURN."""

    criteria: tuple[tuple[str, bool], ...]
    search: Search


@dataclass(frozen=True)
class Thread:
    """THREAD (RFC 5256 section 3): the algorithm (upper case) and search-criteria."""

    algorithm: str
    search: Search


@dataclass(frozen=True)
class Expunge:
    """UID EXPUNGE (RFC 4315 section 2.1)."""

    sequence_set: SequenceSet


@dataclass(frozen=True)
class Command:
    """One complete client command.  ``name`` is upper case and never ``UID``: ``uid``
    is true for ``UID FETCH`` etc.  ``arguments`` is the command's dataclass above, or
    None for commands without arguments."""

    tag: str
    name: str
    arguments: object = None
    uid: bool = False
    literal_bytes: int = field(default=0, compare=False)  # literal payload received
