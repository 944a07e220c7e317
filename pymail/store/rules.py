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

__all__ = ["aware", "flags_to_text", "mailbox_name", "normalize_address", "normalize_domain"]


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
