"""What every index/directory backend checks and normalises before it stores a value.

One place for the rules, so the SQLite and PostgreSQL backends store the same spelling
of the same thing (the conformance suite compares them):

* addresses and domain names are stored in lower case;
* INBOX is spelled "INBOX" whatever case the client used (RFC 3501 section 5.1);
* flags are single words, stored as one sorted, space-separated string;
* internal dates are timezone-aware.

Each function raises `ValueError` naming the bad value.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence

from pymail.store.interfaces import AlreadyExists

__all__ = [
    "FLAG_MODES",
    "aware",
    "check_rename",
    "flags_to_text",
    "mailbox_name",
    "normalize_address",
    "normalize_domain",
    "plan_flags",
    "uid_set",
]


def normalize_domain(name: str) -> str:
    """`name` in lower case; `ValueError` if it cannot be a domain name."""
    value = name.lower()
    if not value or "@" in value or any(c.isspace() for c in value):
        raise ValueError(f"invalid domain name {name!r}")
    return value


def normalize_address(address: str, *, allow_empty_local: bool = False) -> tuple[str, str]:
    """(`address` in lower case, its domain); `ValueError` unless it is ``local@domain``
    (or ``@domain`` when `allow_empty_local`, the catch-all alias source)."""
    value = address.lower()
    local, at, domain = value.rpartition("@")
    if not at or (not local and not allow_empty_local) or any(c.isspace() for c in value):
        raise ValueError(f"invalid address {address!r}")
    return value, normalize_domain(domain)


def mailbox_name(name: str) -> str:
    """The stored spelling of a mailbox name: INBOX in any case is "INBOX"."""
    if not name or any(c in name for c in "\r\n\0"):
        raise ValueError(f"invalid mailbox name {name!r}")
    return "INBOX" if name.upper() == "INBOX" else name


def flags_to_text(flags: frozenset[str] | Sequence[str]) -> str:
    """Flags as stored: sorted, space-separated; `ValueError` for an empty or spaced flag."""
    for flag in flags:
        if not flag or any(c.isspace() for c in flag):
            raise ValueError(f"invalid flag {flag!r}")
    return " ".join(sorted(flags))


def aware(value: _dt.datetime) -> _dt.datetime:
    """`value` itself if it carries a time zone; `ValueError` for a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value!r}: internal dates must be timezone-aware")
    return value


# The rules of the session-change methods (STORE, EXPUNGE, COPY/MOVE, RENAME).

#: `Index.store_flags` modes: STORE +FLAGS, -FLAGS, FLAGS.
FLAG_MODES = ("add", "remove", "replace")


def uid_set(uids: Sequence[int]) -> list[int]:
    """The distinct UIDs, ascending; `ValueError` for one that is not a positive int."""
    out = set()
    for uid in uids:
        if isinstance(uid, bool) or not isinstance(uid, int) or uid < 1:
            raise ValueError(f"invalid UID {uid!r}")
        out.add(uid)
    return sorted(out)


def check_rename(old: str, new: str) -> None:
    """`AlreadyExists` for a rename onto itself, `ValueError` for one under itself."""
    if old == new:
        raise AlreadyExists(f"mailbox {new!r} exists")
    if old != "INBOX" and new.startswith(old + "/"):
        raise ValueError(f"cannot rename {old!r} under itself ({new!r})")


def plan_flags(
    rows: Sequence[tuple[int, str, int]],
    wanted: frozenset[str],
    mode: str,
    unchanged_since: int | None,
) -> tuple[list[tuple[int, str]], list[int]]:
    """For rows (uid, stored flags, modseq) in UID order: the (uid, new flags text) that
    change and the UIDs refused by UNCHANGEDSINCE (RFC 7162 section 3.1.3)."""
    updates: list[tuple[int, str]] = []
    failed: list[int] = []
    for uid, text, modseq in rows:
        if unchanged_since is not None and modseq > unchanged_since:
            failed.append(int(uid))
            continue
        have = frozenset(text.split())
        # Flag names are case-insensitive (RFC 3501 section 2.3.2): a flag the message
        # has in another spelling is the same flag, and keeps the spelling it has.
        if mode == "add":
            after = have | _case_folded_minus(wanted, have)
        elif mode == "remove":
            after = _case_folded_minus(have, wanted)
        else:
            after = wanted
        if after != have:
            updates.append((int(uid), flags_to_text(after)))
    return updates, failed


def _case_folded_minus(flags: frozenset[str], other: frozenset[str]) -> frozenset[str]:
    """The flags of `flags` that are not in `other`, compared case-insensitively."""
    folded = {flag.lower() for flag in other}
    return frozenset(flag for flag in flags if flag.lower() not in folded)
