"""Flag names are case-insensitive (RFC 3501 section 2.3.2): the parser, the keyword
spelling and the store's flag plan."""

from pymail.proto.imap.flags import canonical_flag, keep_keyword_spelling
from pymail.proto.imap.parser import parse_command
from pymail.store.rules import plan_flags


def test_system_flags_come_out_canonical() -> None:
    assert canonical_flag("\\deleted") == "\\Deleted"
    assert canonical_flag("\\SEEN") == "\\Seen"
    assert canonical_flag("\\recent") == "\\Recent"
    assert canonical_flag("\\Xyz") == "\\Xyz"
    assert canonical_flag("$junk") == "$junk"
    command = parse_command([b"a STORE 1 +FLAGS (\\DELETED \\answered Foo)"], [])
    assert command.arguments.flags == ("\\Deleted", "\\Answered", "Foo")


def test_keywords_keep_the_first_spelling() -> None:
    assert keep_keyword_spelling(["FOO", "\\seen"], {"Foo"}) == {"Foo", "\\Seen"}
    assert keep_keyword_spelling(["bar", "BAR"], ()) in ({"bar"}, {"BAR"})


def test_store_plan_compares_case_insensitively() -> None:
    rows = [(1, "Foo \\Deleted", 5)]
    assert plan_flags(rows, frozenset({"FOO", "\\Deleted"}), "add", None) == ([], [])
    assert plan_flags(rows, frozenset({"foo"}), "remove", None) == ([(1, "\\Deleted")], [])
