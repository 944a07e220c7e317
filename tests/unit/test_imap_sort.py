"""Sans-IO tests of SORT and THREAD (RFC 5256, RFC 5957 DISPLAYFROM/DISPLAYTO, RFC 5267
ESORT's grammar): the base subject of section 2.1, the sent date of section 2.2, the
sort order, ORDEREDSUBJECT and REFERENCES, the command grammar and the response bytes."""

from __future__ import annotations

import datetime as dt

import pytest

from pymail.mail.mime import Address
from pymail.proto.imap import BadCommand
from pymail.proto.imap.parser import parse_command
from pymail.proto.imap.sort import (
    MessageFacts, base_subject, display_name, extract_subject, sent_date, sort_messages,
    sort_response,
)
from pymail.proto.imap.thread import Node, format_threads, thread_messages, thread_response
from pymail.proto.imap.types import SearchKey, Sort, Thread

UTC = dt.timezone.utc
T0 = dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def facts(seq: int, **kw) -> MessageFacts:  # noqa: ANN003
    kw.setdefault("internal_date", T0 + dt.timedelta(minutes=seq))
    return MessageFacts(sequence=seq, uid=seq * 10, **kw)


@pytest.mark.parametrize(("subject", "base", "reply"), [
    ("Re: hello", "hello", True),
    ("hello", "hello", False),
    ("RE: [PATCH] Re: foo (fwd)", "foo", True),
    ("Fwd: [list] Re: topic (FWD)  ", "topic", True),
    ("[fwd: Re: x]", "x", True),
    ("Re: [fwd: [blob] Re: y (fwd)]", "y", True),
    ("[a] [b] Fw: subj", "subj", True),
    ("  Re:Re[2]: x  ", "x", True),
    ("Re [list]: x", "x", True),
    ("[blob]", "[blob]", False),  # step 4: a blob is kept when nothing else remains
    ("[list] topic", "topic", False),
    ("Regarding x", "Regarding x", False),
    ("Re:\tmulti\r\n  line   spaces", "multi line spaces", True),
    ("=?utf-8?q?Re=3A_caf=C3=A9?=", "café", True),  # step 1: encoded words decoded first
    ("", "", False),
    (None, "", False),
])
def test_base_subject(subject: str | None, base: str, reply: bool) -> None:
    assert extract_subject(subject) == (base, reply)
    assert base_subject(base_subject(subject)) == base_subject(subject)


def test_sent_date_in_utc_else_internaldate() -> None:
    zoned = facts(1, date="Fri, 01 Mar 2024 14:00:00 +0200")
    assert sent_date(zoned) == dt.datetime(2024, 3, 1, 12, 0, tzinfo=UTC)
    assert sent_date(facts(2, date="not a date")) == T0 + dt.timedelta(minutes=2)
    assert sent_date(facts(3)) == T0 + dt.timedelta(minutes=3)


def test_display_name_or_address() -> None:
    assert display_name([Address("=?utf-8?q?Zo=C3=AB?=", None, "zoe", "x.example")]) == "Zoë"
    assert display_name([Address(None, None, "bob", "x.example")]) == "bob@x.example"
    assert display_name([]) == ""


def test_sort_orders_with_ties_by_sequence() -> None:
    a = [Address(None, None, "anne", "z.example")]
    b = [Address("Zed", None, "bob", "a.example")]
    messages = [
        facts(1, subject="Re: beta", from_=b, size=300, date="Fri, 01 Mar 2024 10:00:00 +0000"),
        facts(2, subject="alpha", from_=a, size=100, date="Fri, 01 Mar 2024 09:00:00 +0000"),
        facts(3, subject="BETA", from_=a, size=300),  # no Date: INTERNALDATE 12:03
        facts(4, subject="[list] Alpha", from_=b, size=200, date="garbage"),
    ]
    order = lambda crit: [m.sequence for m in sort_messages(messages, crit)]  # noqa: E731
    assert order([("SUBJECT", False)]) == [2, 4, 1, 3]
    assert order([("DATE", False)]) == [2, 1, 3, 4]
    assert order([("DATE", True)]) == [4, 3, 1, 2]
    assert order([("SIZE", False)]) == [2, 4, 1, 3]
    assert order([("SIZE", True)]) == [1, 3, 4, 2]  # REVERSE keeps ties in sequence order
    assert order([("FROM", False), ("SIZE", True)]) == [3, 2, 1, 4]  # anne < bob
    assert order([("DISPLAYFROM", False)]) == [2, 3, 1, 4]  # anne@z < Zed
    assert order([("ARRIVAL", True)]) == [4, 3, 2, 1]
    assert order([("CC", False)]) == [1, 2, 3, 4]  # all empty: sequence order


def test_sort_grammar() -> None:
    command = parse_command([b"A282 SORT (REVERSE DATE subject) UTF-8 SINCE 1-Feb-1994"], [])
    assert command.name == "SORT" and not command.uid
    args = command.arguments
    assert isinstance(args, Sort)
    assert args.criteria == (("DATE", True), ("SUBJECT", False))
    assert args.search.charset == "UTF-8"
    assert args.search.key.args[0] == SearchKey("SINCE", (dt.date(1994, 2, 1),))
    esort = parse_command([b"a UID SORT RETURN (MIN COUNT) (DISPLAYFROM) US-ASCII ALL"], [])
    assert esort.uid and esort.arguments.search.return_options == ("MIN", "COUNT")
    thread = parse_command([b"A283 THREAD ORDEREDSUBJECT UTF-8 SINCE 5-MAR-2000"], [])
    assert isinstance(thread.arguments, Thread) and thread.arguments.algorithm == "ORDEREDSUBJECT"
    for bad in (b"a SORT DATE UTF-8 ALL", b"a SORT (DATE) ALL", b"a SORT (REVERSE) UTF-8 ALL",
                b"a SORT (REVERSE REVERSE DATE) UTF-8 ALL", b"a SORT () UTF-8 ALL",
                b"a SORT (NAME) UTF-8 ALL", b"a SORT (DATE) UTF-8", b"a THREAD REFERENCES",
                b"a SORT RETURN (FOO) (DATE) UTF-8 ALL"):
        with pytest.raises(BadCommand):
            parse_command([bad], [])


def test_responses() -> None:
    assert sort_response([2, 84, 882]) == b"* SORT 2 84 882\r\n"  # RFC 5256 section 4
    assert sort_response([]) == b"* SORT\r\n"
    assert thread_response([], lambda m: m.sequence) == b"* THREAD\r\n"


def _tree(spec: object) -> Node:
    """(number, [children]) to a Node."""
    number, children = spec  # type: ignore[misc]
    node = Node(None if number is None else facts(number))
    for child in children:
        node.add_child(_tree(child))
    return node


def test_thread_list_syntax_of_rfc_5256_section_4() -> None:
    forest = [_tree((2, [])),
              _tree((3, [(6, [(4, [(23, [])]), (44, [(7, [(96, [])])])])]))]
    line = thread_response(forest, lambda m: m.sequence)
    assert line == b"* THREAD (2)(3 6 (4 23)(44 7 96))\r\n"
    dummy = _tree((None, [(3, []), (5, [])]))
    assert format_threads([dummy], lambda m: m.sequence) == b"((3)(5))"


def conversation() -> list[MessageFacts]:
    """A small mailbox: a discussion, an unrelated thread and its subject-only reply,
    two replies to a message not in the mailbox."""
    def day(n: int) -> str:
        return f"Mon, {n:02d} Apr 2024 10:00:00 +0000"
    return [
        facts(1, subject="Plan", message_id="<a@x>", date=day(1)),
        facts(2, subject="Re: Plan", message_id="<b@x>", in_reply_to="<a@x>",
              references="<a@x>", date=day(2)),
        facts(3, subject="Re: Plan", message_id="<c@x>", references="<a@x> <b@x>", date=day(3)),
        facts(4, subject="Re: Plan", message_id="<d@x>", in_reply_to="<a@x> (Anne's)",
              date=day(4)),
        facts(5, subject="Other", message_id="<e@x>", date=day(5)),
        facts(6, subject="Re: Lost", message_id="<f@x>", references="<gone@x>", date=day(6)),
        facts(7, subject="Re: Lost", message_id="<g@x>", references="<gone@x>", date=day(7)),
        facts(8, subject="Re: Other", message_id="<h@x>", date=day(8)),
    ]


def test_references() -> None:
    forest = thread_messages("REFERENCES", conversation())
    assert format_threads(forest, lambda m: m.sequence) == b"(1 (2 3)(4))(5 8)((6)(7))"


def test_references_siblings_by_date_and_loops() -> None:
    # 3 is dated before 2; a loop <p> -> <q> -> <p> is not made; a duplicate id is unique
    messages = [
        facts(1, subject="s", message_id="<p@x>", references="<q@x>",
              date="Mon, 01 Apr 2024 10:00:00 +0000"),
        facts(2, subject="t", message_id="<q@x>", references="<p@x>",
              date="Mon, 01 Apr 2024 12:00:00 +0000"),
        facts(3, subject="u", message_id="<r@x>", references="<q@x>",
              date="Mon, 01 Apr 2024 11:00:00 +0000"),
        facts(4, subject="v", message_id="<r@x>", date="Mon, 01 Apr 2024 13:00:00 +0000"),
    ]
    forest = thread_messages("REFERENCES", messages)
    out = format_threads(forest, lambda m: m.sequence)
    seen = sorted(int(n) for n in out.replace(b"(", b" ").replace(b")", b" ").split())
    assert seen == [1, 2, 3, 4]
    assert out == b"(2 (1)(3))(4)"


def test_ordered_subject() -> None:
    forest = thread_messages("ORDEREDSUBJECT", conversation())
    assert format_threads(forest, lambda m: m.sequence) == b"(1 (2)(3)(4))(5 8)(6 7)"
    assert format_threads(forest, lambda m: m.uid) == b"(10 (20)(30)(40))(50 80)(60 70)"


def test_collation_is_unicode_casemap() -> None:
    from pymail.proto.imap.sort import collation_key
    assert collation_key("café") == collation_key("CAFE\u0301")  # NFKD, titlecase
    assert collation_key("①") == "1"  # compatibility decomposition
    assert collation_key("_x") > collation_key("Zed")  # compared as titlecase: "_" > "Z"
    assert collation_key("ǆ") == collation_key("ǅ")  # titlecase, not upper case
