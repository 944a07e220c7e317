"""Sans-IO tests of LIST/LSUB name matching and the mailbox tree (pymail.proto.imap.names).

The matcher is checked against a plain dynamic-programming reference on random names and
patterns (hypothesis), on the RFC 3501 section 6.3.8 examples, on INBOX's
case-insensitivity, and on the patterns that made the old backtracking regex run for
minutes: those must finish at once (a bound on work, counted in matcher calls, not time).
"""

from __future__ import annotations

import functools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymail.proto.imap.names import (
    TEXT_NAME_TOO_LONG, TEXT_TOO_DEEP, ListPattern, MailboxLimits, TreeEntry, canonical_pattern,
    mailbox_tree, name_over_limit, superiors,
)


def reference_match(pattern: str, name: str) -> bool:
    """Whole-name match by the definition, in O(len(pattern) * len(name)) (no INBOX rule)."""

    @functools.lru_cache(maxsize=None)
    def match(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(name)
        c = pattern[i]
        if c == "*":
            return match(i + 1, j) or (j < len(name) and match(i, j + 1))
        if c == "%":
            return match(i + 1, j) or (j < len(name) and name[j] != "/" and match(i, j + 1))
        return j < len(name) and name[j] == c and match(i + 1, j + 1)

    return match(0, 0)


def reference_list_match(pattern: str, name: str) -> bool:
    """The reference with INBOX's rule: its first five characters in any case."""
    if reference_match(pattern, name):
        return True
    if name == "INBOX" or name.startswith("INBOX/"):
        # try every spelling the pattern may use for the INBOX part
        return any(reference_match(pattern, spelled + name[5:])
                   for spelled in {pattern_case for pattern_case in _spellings()})
    return False


@functools.lru_cache(maxsize=1)
def _spellings() -> tuple[str, ...]:
    out = [""]
    for c in "inbox":
        out = [s + x for s in out for x in (c, c.upper())]
    return tuple(out)


ALPHABET = "ab/I*%nNbBoOxX"
names = st.text(alphabet="ab/INBOXnbox", max_size=12)
patterns = st.text(alphabet=ALPHABET, max_size=10)


@settings(max_examples=3000, deadline=None)
@given(patterns, names)
def test_the_matcher_agrees_with_the_reference(pattern: str, name: str) -> None:
    assert ListPattern(pattern).matches(name) == reference_list_match(pattern, name)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab/*%", max_size=8), st.lists(st.text(alphabet="ab/", max_size=8), max_size=8))
def test_one_compiled_pattern_matches_many_names(pattern: str, many: list[str]) -> None:
    compiled = ListPattern(pattern)
    assert [compiled.matches(n) for n in many] == [reference_match(pattern, n) for n in many]


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("*", "a/b/c", True),
    ("%", "a", True),
    ("%", "a/b", False),
    ("a/%", "a/b", True),
    ("a/%", "a/b/c", False),
    ("a/*", "a/b/c", True),
    ("a%", "abc", True),
    ("a%", "", False),
    ("", "", True),
    ("", "a", False),
    ("%/%", "a/b", True),
    ("%x%", "ax/bx", False),
    ("*x%", "ax/bx", True),  # greedy leftmost would fail this one
    ("*x%/c", "ax/bx/c", True),
    ("*%", "a/b", True),
    ("%*", "a/b", True),
    ("a*b*c", "aXbYc", True),
    ("a*b*c", "acb", False),
    ("Sent%", "Sent Items", True),
])
def test_rfc_3501_wildcards(pattern: str, name: str, expected: bool) -> None:
    assert ListPattern(pattern).matches(name) is expected


@pytest.mark.parametrize(("pattern", "name", "expected"), [
    ("inbox", "INBOX", True),
    ("InBoX", "INBOX", True),
    ("inbox/%", "INBOX/Sub", True),
    ("inbox/sub", "INBOX/Sub", False),  # only the INBOX part is case-insensitive
    ("i*", "INBOX", True),
    ("inb%", "INBOX", True),
    ("inbox*", "INBOX/x", True),
    ("inbox", "INBOXES", False),
    ("inboxes", "INBOXES", False),  # not INBOX: exact
    ("INBOXES", "INBOXES", True),
])
def test_inbox_is_case_insensitive(pattern: str, name: str, expected: bool) -> None:
    assert ListPattern(pattern).matches(name) is expected


@pytest.mark.parametrize("pattern", [
    "*%" * 30 + "x",
    "*%" * 3000 + "x",
    "%*" * 30 + "x",
    "*a" * 200 + "b",
    "%a" * 200 + "b",
    "a*" * 100 + "ab*" * 50 + "x",
])
def test_the_patterns_that_froze_the_regex_finish_at_once(pattern: str) -> None:
    # 48.8 s for "*%" x 30 + "x" against the six default mailboxes with the regex; the
    # longer ones never finished.  A liveness bound, generous for a busy machine.
    boxes = ["INBOX", "Drafts", "Sent", "Junk", "Trash", "Archive",
             "a" * 250, "a/" * 100 + "a", "aaaa/" * 50, "/".join(["d"] * 2000)]
    compiled = ListPattern(pattern)
    started = time.process_time()
    results = [compiled.matches(name) for name in boxes]
    # only INBOX can match, through the case-insensitive X of its name
    assert not any(results[1:]) and results[0] is pattern.startswith(("*%", "%*"))
    assert time.process_time() - started < 5


def test_wildcard_runs_match_like_one_wildcard() -> None:
    assert ListPattern("*%" * 30 + "x").matches("a/b/cx")
    assert ListPattern("%%%%x").matches("abx") and not ListPattern("%%%%x").matches("a/bx")


def test_canonical_pattern() -> None:
    assert canonical_pattern("", "*") == "*"
    assert canonical_pattern("a", "b") == "a/b"
    assert canonical_pattern("a/", "b") == "a/b"
    assert canonical_pattern("a", "/b") == "/b"
    assert canonical_pattern("", "&AOk-t&AOk-") == "été"
    with pytest.raises(ValueError):
        canonical_pattern("", "&bad")


def test_the_tree_adds_superiors_once_however_deep() -> None:
    assert mailbox_tree(["b/c", "INBOX", "a"]) == [
        TreeEntry("INBOX", True, False), TreeEntry("a", True, False),
        TreeEntry("b", False, True), TreeEntry("b/c", True, False)]
    deep = "/".join(["d"] * 2000)  # the 2,000-level CREATE of the issue
    tree = mailbox_tree([deep])
    assert len(tree) == 2000 and tree[-1] == TreeEntry(deep, True, False)
    assert superiors(["a/b/c", "a/b/d", "x"]) == {"a", "a/b"}


def test_name_limits_in_octets_and_levels() -> None:
    limits = MailboxLimits(count=10, name_length=16, depth=3)
    assert name_over_limit("a/b/c", limits) is None
    assert name_over_limit("a/b/c/d", limits) == TEXT_TOO_DEEP
    assert name_over_limit("x" * 16, limits) is None
    assert name_over_limit("x" * 17, limits) == TEXT_NAME_TOO_LONG
    assert name_over_limit("é" * 8, limits) is None  # 16 octets
    assert name_over_limit("é" * 9, limits) == TEXT_NAME_TOO_LONG
