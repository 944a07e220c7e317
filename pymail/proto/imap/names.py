"""Mailbox names for LIST and LSUB, and the limits on them, sans-IO (the start of moving
LIST matching out of the session into `pymail.proto`).

* `ListPattern` matches a LIST/LSUB pattern (RFC 3501 section 6.3.8: ``*`` matches any
  characters, ``%`` any characters but the hierarchy delimiter) against a mailbox name
  without backtracking: the set of name positions the pattern so far can end at is kept
  as the bits of an integer and advanced one pattern token at a time (a literal by its
  occurrences in the name, ``*`` by "every position from the lowest on", ``%`` by a
  carry that fills each delimiter-free run).  A run of wildcards is one token (``*%*%``
  is ``*``).  Every literal token moves the lowest position forward by its length, so a
  name of n characters is done after at most n literal tokens whatever the pattern, and
  each distinct literal's occurrences are found once per name (``str.find``): the work
  per name is bounded by about (n + number of tokens) integer operations plus O(n) finds
  per distinct literal length.  Never a regular expression built from client text.
* INBOX is case-insensitive (RFC 3501 section 5.1), also as the first level of its
  children: in the names ``INBOX`` and ``INBOX/...`` the first five characters match
  the pattern in any case; the rest of a name matches exactly.
* `mailbox_tree` gives the names LIST shows: the existing ones plus their superiors
  that do not exist (``\\Noselect``/``\\NonExistent``), each with whether it has
  children, in linear time (each superior is found once, however deep the tree).
* `MailboxLimits` holds ``limits.mailboxes_per_user``, ``limits.mailbox_name_length``
  (octets of UTF-8) and ``limits.mailbox_depth``; `name_over_limit` says which one a
  name breaks.  The session answers ``NO [LIMIT]`` (RFC 5530 section 3).

Pure functions of str, stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from pymail.proto.imap.responses import decode_modified_utf7

DELIMITER = "/"
INBOX = "INBOX"

#: Patterns one LIST may carry (RFC 5258 allows a list of them); more get BAD.  Real
#: clients send one or two; the bound keeps patterns x mailboxes small.
MAX_LIST_PATTERNS = 64

TEXT_NAME_TOO_LONG = "Mailbox name too long"
TEXT_TOO_DEEP = "Mailbox hierarchy too deep"
TEXT_TOO_MANY = "Too many mailboxes"

_WILDCARD_RUNS = re.compile(r"([*%]+)")
_ANY = "*"  # token: any characters
_LEVEL = "%"  # token: any characters but the delimiter


class ListPattern:
    """One LIST/LSUB pattern, compiled once, matched against many names."""

    __slots__ = ("pattern", "_tokens", "_literal_length", "_delimiter")

    def __init__(self, pattern: str, delimiter: str = DELIMITER) -> None:
        self.pattern = pattern
        self._delimiter = delimiter
        tokens: list[tuple[str, str]] = []  # ("L", text) / (_ANY, "") / (_LEVEL, "")
        for index, piece in enumerate(_WILDCARD_RUNS.split(pattern)):
            if index % 2:  # a run of wildcards: one token
                tokens.append((_ANY if "*" in piece else _LEVEL, ""))
            elif piece:
                tokens.append(("L", piece))
        self._tokens = tuple(tokens)
        self._literal_length = sum(len(text) for kind, text in tokens if kind == "L")

    def __repr__(self) -> str:
        return f"ListPattern({self.pattern!r})"

    def matches(self, name: str) -> bool:
        """Whether the whole of `name` matches the pattern."""
        n = len(name)
        if n < self._literal_length:
            return False
        inbox = name[:5] == INBOX and (n == 5 or name[5] == self._delimiter)
        states = 1  # bit i set: the tokens so far can match name[:i]
        everything = (1 << (n + 1)) - 1
        steps: int | None = None  # bit p set: name[p - 1] is not the delimiter
        occurrences: dict[str, int] = {}
        masks: dict[str, int] = {}  # bit i set: name[i] is that character
        for kind, text in self._tokens:
            if kind == "L":
                found = occurrences.get(text)
                if found is None:
                    found = occurrences[text] = _occurrences(name, text, inbox, masks)
                states = (states & found) << len(text)
            elif kind == _ANY:
                lowest = states & -states
                states = everything & ~(lowest - 1)
            else:
                if steps is None:
                    steps = _level_steps(name, self._delimiter, masks)
                # one step from every state, then a carry through each delimiter-free
                # run: adding the entry bits to the run clears the run from them on
                moved = (states << 1) & steps
                states |= (steps & ~(steps + moved)) | moved
            if not states:
                return False
        return bool(states >> n & 1)


def _occurrences(name: str, text: str, inbox: bool, masks: dict[str, int]) -> int:
    """Bits of the positions where `text` occurs in `name` (overlapping ones too): the
    AND of each of its characters' position masks shifted back by its offset; in an
    INBOX name, the first five characters compare case-insensitively."""
    found = -1
    for offset, char in enumerate(text):
        found &= _char_mask(name, char, masks) >> offset
        if not found:
            break
    found = max(found, 0)
    if inbox:
        length = len(text)
        for position in range(min(5, len(name) - length + 1)):
            head = min(5 - position, length)
            if (name[position:position + head].upper() == text[:head].upper()
                    and name[position + head:position + length] == text[head:]):
                found |= 1 << position
    return found


def _char_mask(name: str, char: str, masks: dict[str, int]) -> int:
    """Bits of the positions of `char` in `name`, made without a loop per character (a
    substitution, a translation and a base-2 conversion, all in C), once per name and
    character."""
    mask = masks.get(char)
    if mask is None:
        if char not in name:
            mask = 0
        elif char == "\x00":  # not in a mailbox name; kept correct anyway
            mask = sum(1 << i for i, c in enumerate(name) if c == char)
        else:
            marks = re.sub("[^" + re.escape(char) + "]", "\x00", name)
            mask = int(marks.translate({ord(char): "1", 0: "0"})[::-1], 2)
        masks[char] = mask
    return mask


def _level_steps(name: str, delimiter: str, masks: dict[str, int]) -> int:
    """Bits p (1..n) such that ``%`` may step from position p - 1 to p."""
    full = (1 << len(name)) - 1
    return (full & ~_char_mask(name, delimiter, masks)) << 1


def canonical_pattern(reference: str, pattern: str) -> str:
    """The reference name and the pattern as one pattern (RFC 3501 section 6.3.8), both
    modified-UTF-7 decoded; ValueError for a bad encoding."""
    reference, pattern = decode_modified_utf7(reference), decode_modified_utf7(pattern)
    if pattern.startswith(DELIMITER) or not reference:
        return pattern
    if reference.endswith(DELIMITER):
        return reference + pattern
    return reference + DELIMITER + pattern


# --- the hierarchy --------------------------------------------------------------------


def superiors(names: Iterable[str], delimiter: str = DELIMITER) -> set[str]:
    """Every name that is a superior (parent, grandparent, ...) of one of `names`; each
    found once, so the cost is linear in the total length even for deep names."""
    found: set[str] = set()
    for name in names:
        end = name.rfind(delimiter)
        while end > 0:
            parent = name[:end]
            if parent in found:  # its own superiors are in already
                break
            found.add(parent)
            end = name.rfind(delimiter, 0, end)
    return found


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One name LIST may show: ``exists`` False for a superior that is no mailbox."""

    name: str
    exists: bool
    has_children: bool


def mailbox_tree(names: Iterable[str], delimiter: str = DELIMITER) -> list[TreeEntry]:
    """The existing names and their non-existent superiors, INBOX first, then sorted."""
    existing = set(names)
    parents = superiors(existing, delimiter)
    every = sorted(existing | parents, key=lambda n: (n != INBOX, n))
    return [TreeEntry(n, n in existing, n in parents) for n in every]


# --- limits (RFC 5530 LIMIT) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MailboxLimits:
    """``count`` mailboxes per user; names of at most ``name_length`` octets of UTF-8
    and ``depth`` hierarchy levels (``a/b/c`` is 3)."""

    count: int = 1000
    name_length: int = 255
    depth: int = 16


def name_over_limit(name: str, limits: MailboxLimits, delimiter: str = DELIMITER) -> str | None:
    """The reply text for the limit `name` breaks, None when it breaks none.  A name
    within the limits has superiors within them too (they are its prefixes)."""
    if len(name.encode("utf-8", "surrogateescape")) > limits.name_length:
        return TEXT_NAME_TOO_LONG
    if name.count(delimiter) + 1 > limits.depth:
        return TEXT_TOO_DEEP
    return None
