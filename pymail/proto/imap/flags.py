"""Message flags as IMAP spells them (RFC 3501 section 2.3.2, RFC 9051 section 2.3.2).

Flag names are case-insensitive.  Invariants:

* A system flag is always stored and reported in its canonical spelling (``\\Seen``,
  ``\\Answered``, ``\\Flagged``, ``\\Deleted``, ``\\Draft``, and ``\\Recent``, which is
  never stored): `canonical_flag` maps ``\\deleted`` or ``\\DELETED`` to ``\\Deleted``,
  so the index's own tests for ``\\Deleted`` and ``\\Seen`` (EXPUNGE, UNSEEN) hold
  whatever case the client wrote.
* Keywords are compared case-insensitively too, and keep the first spelling the
  mailbox saw (as Dovecot does): `keep_keyword_spelling` maps a keyword a client
  writes in another case to the spelling already in use.  An unknown ``\\Xyz`` is
  left as written (it is neither a system flag nor a keyword a client may set).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["SYSTEM_FLAGS", "canonical_flag", "is_keyword", "keep_keyword_spelling", "new_keywords"]

#: The system flags a message may carry (RFC 3501 section 2.3.2), canonical spelling.
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")

_CANONICAL = {flag.lower(): flag for flag in (*SYSTEM_FLAGS, "\\Recent")}


def canonical_flag(flag: str) -> str:
    """`flag` with a system flag in its canonical spelling (RFC 3501 section 2.3.2:
    flag names are case-insensitive)."""
    if flag.startswith("\\"):
        return _CANONICAL.get(flag.lower(), flag)
    return flag


def is_keyword(flag: str) -> bool:
    """A keyword (``$Forwarded``, ``NonJunk``), not a ``\\`` flag."""
    return not flag.startswith("\\")


def keep_keyword_spelling(flags: Iterable[str], known: Iterable[str]) -> frozenset[str]:
    """`flags` with each keyword that matches a `known` one case-insensitively spelled
    as the known one (the first spelling wins), and with keywords that differ only in
    case among `flags` themselves kept once."""
    spelling = {}
    for keyword in known:
        spelling.setdefault(keyword.lower(), keyword)
    out = set()
    for flag in flags:
        flag = canonical_flag(flag)
        if is_keyword(flag):
            flag = spelling.setdefault(flag.lower(), flag)
        out.add(flag)
    return frozenset(out)


def new_keywords(flag_sets: Iterable[Iterable[str]], announced: Iterable[str]) -> set[str]:
    """The keywords in `flag_sets` that are not among the `announced` ones: what an
    untagged FLAGS (and PERMANENTFLAGS) must name before a FETCH FLAGS uses them (RFC
    3501 section 7.2.6: FLAGS lists the flags applicable to the mailbox)."""
    known = set(announced)
    return {flag for flags in flag_sets for flag in flags if is_keyword(flag) and flag not in known}
