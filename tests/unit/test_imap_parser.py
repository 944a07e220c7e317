"""Sans-IO tests of the IMAP command reader (pymail.proto.imap.reader) and of the command
grammar (pymail.proto.imap.parser).

Every input is fed whole, byte by byte, and with trailing data (a second pipelined
command behind it), STYLE.md item 4; malformed input must end in BadCommand or
FatalProtocolError, never another exception, and a hypothesis fuzz test says so."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymail.proto.imap import (
    COMMANDS_BY_STATE, CONNECTION_CLOSED, NEED_DATA, BadCommand, Command, CommandReader,
    ConnectionState, ContinuationLine, FatalProtocolError, IdleDone, NeedContinuation,
    SequenceSet, command_allowed,
)
from pymail.proto.imap.types import (
    Append, Authenticate, Copy, Fetch, FetchAttribute, Id, List, Login, SearchKey, Section,
    Select, Store,
)

TRAILER = b"z9 NOOP\r\n"


def drain(reader: CommandReader) -> list[object]:
    """All events until NEED_DATA; errors appear in the list as exception objects."""
    events: list[object] = []
    for _ in range(10_000):
        try:
            event = reader.next_event()
        except BadCommand as exc:
            events.append(exc)
            continue
        except FatalProtocolError as exc:
            events.append(exc)
            return events
        if event is NEED_DATA or event is CONNECTION_CLOSED:
            return events
        events.append(event)
    raise AssertionError("reader made no progress")


def feed(chunks: list[bytes], **limits: int) -> list[object]:
    reader = CommandReader(**limits)
    events: list[object] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        events += drain(reader)
        if events and isinstance(events[-1], FatalProtocolError):
            break
    return events


def ways(stream: bytes) -> list[list[bytes]]:
    return [[stream], [stream[i:i + 1] for i in range(len(stream))],
            [stream[:5], stream[5:]]]


def summary(events: list[object]) -> list[object]:
    return [(type(e).__name__, e.reply) if isinstance(e, Exception) else e for e in events]


def parse_all_ways(stream: bytes, **limits: int) -> list[object]:
    """Feed ``stream`` three ways, with and without the trailer; all must agree."""
    results = [summary(feed(chunks, **limits)) for chunks in ways(stream)]
    assert all(r == results[0] for r in results), results
    with_trailer = summary(feed([stream + TRAILER], **limits))
    if not (results[0] and isinstance(feed([stream], **limits)[-1], FatalProtocolError)):
        assert with_trailer[:-1] == results[0]
        assert with_trailer[-1] == Command("z9", "NOOP")
    return results[0]


def one(stream: bytes) -> Command:
    events = [e for e in parse_all_ways(stream) if not isinstance(e, NeedContinuation)]
    assert len(events) == 1 and isinstance(events[0], Command), events
    return events[0]


def bad(stream: bytes, **limits: int) -> tuple:
    events = parse_all_ways(stream, **limits)
    assert events and isinstance(events[-1], tuple), events
    return events[-1]


SEQ_1_STAR = SequenceSet(((1, None),))

# (command line, expected Command) -- every command form of issue 4
VALID = [
    (b"a CAPABILITY\r\n", Command("a", "CAPABILITY")),
    (b"a noop\r\n", Command("a", "NOOP")),
    (b"a LOGOUT\r\n", Command("a", "LOGOUT")),
    (b"a STARTTLS\r\n", Command("a", "STARTTLS")),
    (b"a CHECK\r\n", Command("a", "CHECK")),
    (b"a CLOSE\r\n", Command("a", "CLOSE")),
    (b"a UNSELECT\r\n", Command("a", "UNSELECT")),
    (b"a EXPUNGE\r\n", Command("a", "EXPUNGE")),
    (b"a NAMESPACE\r\n", Command("a", "NAMESPACE")),
    (b"a IDLE\r\n", Command("a", "IDLE")),
    (b'A]1 LOGIN joe "p\\"a\\\\ss"\r\n', Command("A]1", "LOGIN", Login("joe", 'p"a\\ss'))),
    (b"a AUTHENTICATE PLAIN\r\n", Command("a", "AUTHENTICATE", Authenticate("PLAIN"))),
    (b"a AUTHENTICATE plain AGpvZQBzZWNyZXQ=\r\n",
     Command("a", "AUTHENTICATE", Authenticate("PLAIN", "AGpvZQBzZWNyZXQ="))),
    (b"a AUTHENTICATE EXTERNAL =\r\n", Command("a", "AUTHENTICATE", Authenticate("EXTERNAL", ""))),
    (b'a SELECT "inbox"\r\n', Command("a", "SELECT", Select("INBOX"))),
    (b"a EXAMINE Drafts (CONDSTORE)\r\n", Command("a", "EXAMINE", Select("Drafts", True))),
    (b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211 (1,3 5,7)))\r\n",
     Command("a", "SELECT", Select("INBOX", False, (
         67890007, 20050715194045000, SequenceSet(((41, 41), (43, 211))),
         (SequenceSet(((1, 1), (3, 3))), SequenceSet(((5, 5), (7, 7)))))))),
    (b"a CREATE Archive/2024\r\n", None),
    (b"a CREATE Sent (USE (\\Sent))\r\n", None),
    (b"a DELETE Trash\r\n", None),
    (b"a RENAME old new\r\n", None),
    (b"a SUBSCRIBE \"Caf\xc3\xa9\"\r\n", None),
    (b"a UNSUBSCRIBE x\r\n", None),
    (b'a LIST "" "*"\r\n', Command("a", "LIST", List("", ("*",)))),
    (b'a LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)\r\n',
     Command("a", "LIST", List("", ("*",), ("SUBSCRIBED",), ("SPECIAL-USE",), (), True))),
    (b'a LIST "" (INBOX %/%) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n',
     Command("a", "LIST", List("", ("INBOX", "%/%"), (), ("CHILDREN", "STATUS"),
                               ("MESSAGES", "UNSEEN"), True))),
    # RFC 3501 section 9 list-char: every ATOM-CHAR, "]" and the wildcards (imaptest atoms)
    (b"a LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*\r\n",
     Command("a", "LIST", List("", ("!#$&'+,-.0123456789:;<=>?@^_`|[}%*",)))),
    (b'a LIST (REMOTE RECURSIVEMATCH SUBSCRIBED) "" "*"\r\n', None),
    (b'a LSUB "" %\r\n', None),
    (b'a STATUS "Drafts" (UIDNEXT MESSAGES UNSEEN RECENT)\r\n', None),
    (b"a ENABLE UTF8=ACCEPT CONDSTORE\r\n", None),
    (b"a ID NIL\r\n", Command("a", "ID", Id(None))),
    (b'a ID ("name" "Thunderbird" "version" NIL)\r\n',
     Command("a", "ID", Id((("name", "Thunderbird"), ("version", None))))),
    (b"a GETQUOTA \"\"\r\n", None),
    (b"a GETQUOTAROOT INBOX\r\n", None),
    (b"a UID FETCH 1:* (FLAGS)\r\n",
     Command("a", "FETCH", Fetch(SEQ_1_STAR, (FetchAttribute("FLAGS"),)), True)),
    (b"a UID FETCH 7 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject "
     b"Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type "
     b"Reply-To Received)])\r\n", None),
    (b"a FETCH 2 BODY[1.2.HEADER.FIELDS.NOT (From To)]<0.100>\r\n",
     Command("a", "FETCH", Fetch(SequenceSet(((2, 2),)), (FetchAttribute(
         "BODY", Section((1, 2), "HEADER.FIELDS.NOT", ("FROM", "TO")), False, (0, 100)),)))),
    (b"a FETCH 1 (BODY[] BODY[TEXT] BODY[1.MIME] BINARY.PEEK[1]<5.10> BINARY.SIZE[2] BODY "
     b"BODYSTRUCTURE ENVELOPE INTERNALDATE RFC822 RFC822.HEADER RFC822.TEXT MODSEQ)\r\n", None),
    (b"a FETCH 1:3 ALL\r\n", None),
    (b"a FETCH $ FAST\r\n", None),
    (b"a FETCH 1 FULL\r\n", None),
    (b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n", None),
    (b"a STORE 1:3 +FLAGS.SILENT (\\Seen \\Deleted $Junk)\r\n",
     Command("a", "STORE", Store(SequenceSet(((1, 3),)), "+", True, ("\\Seen", "\\Deleted", "$Junk")))),
    (b"a UID STORE 4 -FLAGS \\Flagged\r\n", None),
    (b"a STORE 1 (UNCHANGEDSINCE 5) FLAGS ()\r\n", None),
    (b"a COPY 1,3:5,7:* Archive\r\n",
     Command("a", "COPY", Copy(SequenceSet(((1, 1), (3, 5), (7, None))), "Archive"))),
    (b"a UID MOVE 5 Trash\r\n", None),
    (b"a UID EXPUNGE 3:5\r\n", None),
    (b"a SEARCH ALL\r\n", None),
    (b"a UID SEARCH RETURN (MIN COUNT) CHARSET UTF-8 OR (FROM joe SINCE 1-Feb-2024) "
     b"NOT (BODY \"caf\xc3\xa9\" LARGER 100) UID 1:5 HEADER X-Spam yes 2,4:*\r\n", None),
    (b"a SEARCH ANSWERED BCC x BEFORE \"01-Jan-2020\" CC y DELETED DRAFT FLAGGED KEYWORD $k "
     b"NEW OLD ON 3-Mar-2021 RECENT SEEN SENTBEFORE 1-Jan-2000 SENTON 1-Jan-2000 "
     b"SENTSINCE 1-Jan-2000 SMALLER 5 SUBJECT s TEXT t TO u UNANSWERED UNDELETED UNDRAFT "
     b"UNFLAGGED UNKEYWORD k UNSEEN MODSEQ 7 $\r\n", None),
    (b'a APPEND "Sent" (\\Seen) "05-Mar-2024 10:01:02 +0100" {3+}\r\nabc\r\n',
     Command("a", "APPEND", Append("Sent", ("\\Seen",), datetime.datetime(
         2024, 3, 5, 10, 1, 2, tzinfo=datetime.timezone(datetime.timedelta(hours=1))), b"abc"))),
    (b"a APPEND INBOX ~{4+}\r\na\x00b\xff\r\n",
     Command("a", "APPEND", Append("INBOX", None, None, b"a\x00b\xff", True))),
]


@pytest.mark.parametrize("line, expected", VALID, ids=[v[0][:40].decode("latin-1") for v in VALID])
def test_valid_command(line: bytes, expected: Command | None) -> None:
    command = one(line)
    if expected is not None:
        assert command == expected
    assert command_allowed(ConnectionState.SELECTED, command.name) or command.name in {
        "STARTTLS", "AUTHENTICATE", "LOGIN"}


def test_search_tree() -> None:
    command = one(b"a SEARCH OR FROM a (TO b SINCE 1-Feb-2024) NOT UID 3:*\r\n")
    assert command.arguments.key == SearchKey("AND", (
        SearchKey("OR", (SearchKey("FROM", ("a",)), SearchKey("AND", (
            SearchKey("TO", ("b",)), SearchKey("SINCE", (datetime.date(2024, 2, 1),)))))),
        SearchKey("NOT", (SearchKey("UID", (SequenceSet(((3, None),)),)),)),
    ))


def test_fetch_macros_expand() -> None:
    names = [a.name for a in one(b"a FETCH 1 FULL\r\n").arguments.attributes]
    assert names == ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]


def test_sequence_set_expands() -> None:
    seqs = one(b"a COPY 7:*,1,3:5,9:8 x\r\n").arguments.sequence_set
    assert seqs.expand(8) == [1, 3, 4, 5, 7, 8]
    assert seqs.contains(8, 8) and not seqs.contains(6, 8)
    assert SequenceSet(((5, None),)).expand(3) == [3, 4, 5][:1]  # "5:*" with max 3 is 3:5
    assert SequenceSet(((None, None),)).expand(0) == []
    with pytest.raises(ValueError):
        SequenceSet(saved_result=True).expand(5)


def test_synchronising_literal_asks_first() -> None:
    reader = CommandReader()
    reader.receive_data(b"a LOGIN {3}\r\n")
    assert reader.next_event() == NeedContinuation("a", 3)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"joe {6}\r\n")
    assert reader.next_event() == NeedContinuation("a", 6)
    reader.receive_data(b"se")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"cret\r\n" + TRAILER)
    assert reader.next_event() == Command("a", "LOGIN", Login("joe", "secret"))
    assert reader.next_event() == Command("z9", "NOOP")
    assert reader.next_event() is NEED_DATA


def test_literal_all_ways() -> None:
    events = parse_all_ways(b"a APPEND Drafts {5}\r\nhello\r\n")
    assert events == [NeedContinuation("a", 5), Command("a", "APPEND", Append("Drafts", None, None, b"hello"))]


def test_literal_short_then_more() -> None:
    reader = CommandReader()
    reader.receive_data(b"a LOGIN joe {3}\r\nab")
    assert reader.next_event() == NeedContinuation("a", 3)
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"c\r\n")
    assert reader.next_event() == Command("a", "LOGIN", Login("joe", "abc"))


def test_append_too_big_refused_before_continuation() -> None:
    events = summary(feed([b"a APPEND INBOX {1000}\r\n" + TRAILER], max_append=999))
    assert events == [("BadCommand", b"a NO [TOOBIG] Message too large\r\n"), Command("z9", "NOOP")]


def test_other_literal_too_big_is_bad() -> None:
    assert bad(b"a LOGIN {999999999}\r\n") == ("BadCommand", b"a BAD [TOOBIG] Literal too large\r\n")


def test_non_synchronising_too_big_is_fatal() -> None:
    events = feed([b"a APPEND INBOX {1000+}\r\n" + b"x" * 1000], max_append=999)
    assert summary(events) == [("FatalProtocolError", b"* BYE [TOOBIG] Non-synchronizing literal too large\r\n")]


def test_fatal_is_sticky() -> None:
    reader = CommandReader(max_append=1)
    reader.receive_data(b"a APPEND INBOX {2+}\r\n")
    for _ in range(2):
        with pytest.raises(FatalProtocolError):
            reader.next_event()


def test_unknown_command_with_literal_gets_no_continuation() -> None:
    assert bad(b"a FROB {3}\r\n") == ("BadCommand", b"a BAD Unknown command\r\n")


def test_idle_done_and_continuation_lines() -> None:
    reader = CommandReader()
    reader.receive_data(b"a IDLE\r\ndo")
    assert reader.next_event() == Command("a", "IDLE")
    reader.expect_idle_done()
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"ne\r\nb AUTHENTICATE PLAIN\r\nAGpvZQBzZWNyZXQ=\r\n" + TRAILER)
    assert reader.next_event() == IdleDone()
    assert reader.next_event() == Command("b", "AUTHENTICATE", Authenticate("PLAIN"))
    reader.expect_continuation_line()
    assert reader.next_event() == ContinuationLine(b"AGpvZQBzZWNyZXQ=")
    assert reader.next_event() == Command("z9", "NOOP")
    reader.expect_idle_done()
    reader.receive_data(b"NOPE\r\n")
    with pytest.raises(BadCommand):
        reader.next_event()


def test_connection_closed() -> None:
    reader = CommandReader()
    reader.receive_data(b"a NOOP\r\nb NO")
    reader.receive_data(b"")
    assert reader.next_event() == Command("a", "NOOP")
    assert reader.next_event() is CONNECTION_CLOSED


MALFORMED = [
    b"a LIST (SUBSCRIBED \"\" *\r\n",  # unbalanced parens
    b"a FETCH 1 (FLAGS))\r\n",
    b"a FETCH 1 ((FLAGS)\r\n",
    b"\r\n",
    b"a\r\n",
    b" a NOOP\r\n",
    b"a  NOOP\r\n",
    b"* NOOP\r\n",  # "*" as tag
    b"+ NOOP\r\n",
    b"a+ NOOP\r\n",
    b"a(b NOOP\r\n",
    b'"a" NOOP\r\n',
    b"a FROB\r\n",
    b"a NOOP extra\r\n",
    b"a UID NOOP\r\n",
    b"a FETCH 99999999999 FLAGS\r\n",  # huge numbers
    b"a FETCH 4294967296 FLAGS\r\n",
    b"a FETCH 1 BODY[]<0.99999999999999999999999>\r\n",
    b"a FETCH 0 FLAGS\r\n",  # bad sequence sets
    b"a FETCH 1: FLAGS\r\n",
    b"a FETCH :5 FLAGS\r\n",
    b"a FETCH 1:2:3 FLAGS\r\n",
    b"a FETCH 1,,2 FLAGS\r\n",
    b"a FETCH 1 FOO\r\n",
    b"a FETCH 1 ()\r\n",
    b"a FETCH 1 BODY[MIME]\r\n",
    b"a FETCH 1 BODY[HEADER.FIELDS ()]\r\n",
    b"a FETCH 1 BINARY[TEXT]\r\n",
    b"a FETCH 1 BODY[1.0]\r\n",
    b"a FETCH 1 BODY.PEEK\r\n",
    b"a SEARCH SINCE 31-Feb-2024\r\n",  # bad dates
    b"a SEARCH SINCE 1-Foo-2024\r\n",
    b"a SEARCH SINCE 2024-01-01\r\n",
    b'a APPEND INBOX "5-Mar-2024 10:01:02 +0100" {1+}\r\nx\r\n',
    b'a APPEND INBOX "05-Mar-2024 25:01:02 +0100" {1+}\r\nx\r\n',
    b"a SEARCH\r\n",
    b"a SEARCH FROB\r\n",
    b"a SEARCH OR FROM a\r\n",
    b"a SEARCH RETURN (BOGUS) ALL\r\n",
    b"a LOGIN joe\r\n",
    b'a LOGIN joe "unterminated\r\n',
    b'a LOGIN joe "bad\\escape"\r\n',
    b'a LOGIN "\xff\xfe" x\r\n',
    b"a LOGIN jo\x00e x\r\n",  # NUL
    b'a LOGIN "jo\x00e" x\r\n',
    b"a LOGIN joe {3+}\r\na\x00b\r\n",
    b"a LOGIN jo\re x\r\n",  # bare CR
    b"a NOOP\n",  # bare LF
    b"a STATUS INBOX ()\r\n",
    b"a STATUS INBOX (BOGUS)\r\n",
    b"a STORE 1 FLAGS\r\n",
    b"a STORE 1 XFLAGS (\\Seen)\r\n",
    b"a SELECT INBOX (BOGUS)\r\n",
    b"a AUTHENTICATE PLAIN !!!\r\n",
    b"a AUTHENTICATE PLAIN abc\r\n",
    b"a ENABLE\r\n",
    b"a ID (\"a\")\r\n",
    b"a LIST (RECURSIVEMATCH) \"\" *\r\n",
    # RFC 5258 section 3: unknown options, RECURSIVEMATCH with only REMOTE (imaptest listext)
    b"a LIST (RECURSIVEMATCH REMOTE) \"\" *\r\n",
    b"a LIST (X-BOGUS) \"\" *\r\n",
    b"a LIST (SUBSCRIBED X-BOGUS) \"\" *\r\n",
    b"a LIST \"\" * RETURN (X-BOGUS)\r\n",
    b"a LIST (SUBSCRIBED) \"\" * RETURN (CHILDREN X-BOGUS)\r\n",
    b"a LIST \"\" * BOGUS (X)\r\n",
    b"a APPEND INBOX\r\n",
    b"a LOGIN ~{1}\r\nx x\r\n",
    b"a LOGIN ~{3+}\r\nabc x\r\n",
    b"a EXPUNGE 1\r\n",
    b"a SEARCH " + b"(" * 50 + b"ALL" + b")" * 50 + b"\r\n",  # over-deep nesting
    b"a SEARCH " + b"NOT " * 50 + b"ALL\r\n",
    b"a SEARCH " + b"OR ALL " * 50 + b"ALL\r\n",
    b"a CREATE x " + b"(" * 50 + b")" * 50 + b"\r\n",
]


@pytest.mark.parametrize("line", MALFORMED, ids=[m[:30].decode("latin-1") for m in MALFORMED])
def test_malformed(line: bytes) -> None:
    kind, reply = bad(line)
    assert kind == "BadCommand" and b" BAD " in reply


def test_star_tag_reply_is_untagged() -> None:
    assert bad(b"* NOOP\r\n") == ("BadCommand", b"* BAD Syntax error\r\n")


def test_over_long_line() -> None:
    line = b"a LOGIN " + b"x" * 70_000 + b" y\r\n"
    for chunks in ([line + TRAILER], [line[i:i + 4096] for i in range(0, len(line), 4096)] + [TRAILER]):
        reader = CommandReader()
        events = []
        peak = 0
        for chunk in chunks:
            reader.receive_data(chunk)
            peak = max(peak, reader.buffered)
            events += drain(reader)
        assert summary(events) == [("BadCommand", b"a BAD Command line too long\r\n"), Command("z9", "NOOP")]
        assert peak <= 64 * 1024 + max(len(c) for c in chunks)


def test_over_long_line_with_literal_plus_skips_literal() -> None:
    stream = b"a APPEND INBOX " + b"x" * 70_000 + b" {9+}\r\nz1 LOGOUT\r\n" + TRAILER
    assert summary(feed([stream])) == [("BadCommand", b"a BAD Command line too long\r\n"), Command("z9", "NOOP")]
    assert summary(feed([stream[:66_000], stream[66_000:]])) == summary(feed([stream]))


def test_pipelined_commands_come_out_one_by_one() -> None:
    reader = CommandReader()
    reader.receive_data(b"a NOOP\r\nb FROB\r\nc CHECK\r\nd LOG")
    assert reader.next_event() == Command("a", "NOOP")
    with pytest.raises(BadCommand):
        reader.next_event()
    assert reader.next_event() == Command("c", "CHECK")
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"OUT\r\n")
    assert reader.next_event() == Command("d", "LOGOUT")


def test_state_tables() -> None:
    assert command_allowed(ConnectionState.NOT_AUTHENTICATED, "LOGIN")
    assert not command_allowed(ConnectionState.NOT_AUTHENTICATED, "SELECT")
    assert not command_allowed(ConnectionState.AUTHENTICATED, "FETCH")
    assert command_allowed(ConnectionState.SELECTED, "FETCH")
    assert not command_allowed(ConnectionState.SELECTED, "LOGIN")
    assert COMMANDS_BY_STATE[ConnectionState.LOGOUT] == frozenset()


# --- fuzzing (STYLE.md item 3) ---------------------------------------------------------
SEEDS = [line for line, _ in VALID] + MALFORMED


def run_fuzz(stream: bytes, cuts: list[int]) -> None:
    reader = CommandReader(max_line=512, max_literal=64, max_append=256, max_depth=8)
    positions = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for start, stop in zip(positions, positions[1:]):
        reader.receive_data(stream[start:stop])
        try:
            drain(reader)
        except (BadCommand, FatalProtocolError):  # pragma: no cover - drain catches them
            pass
    # progress: once a full extra line arrives, the reader must not sit on complete lines
    reader.receive_data(b"\r\n" + TRAILER)
    events = drain(reader)
    assert len(reader._buffer) <= 512 + len(stream) + 32 or events


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=8))
def test_fuzz_random_bytes(stream: bytes, cuts: list[int]) -> None:
    run_fuzz(stream, cuts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.binary(max_size=4)),
                                        max_size=4), st.lists(st.integers(0, 400), max_size=8))
def test_fuzz_mutated_commands(seed: bytes, edits: list[tuple[int, bytes]], cuts: list[int]) -> None:
    stream = bytearray(seed)
    for position, replacement in edits:
        position %= len(stream) + 1
        stream[position:position + len(replacement) // 2] = replacement
    run_fuzz(bytes(stream), cuts)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([line for line, _ in VALID]), st.lists(st.integers(0, 400), max_size=10))
def test_fuzz_valid_commands_any_chunking(line: bytes, cuts: list[int]) -> None:
    reader = CommandReader()
    positions = sorted({c % (len(line) + 1) for c in cuts} | {0, len(line)})
    events = []
    for start, stop in zip(positions, positions[1:]):
        reader.receive_data(line[start:stop])
        events += drain(reader)
    reader.receive_data(TRAILER)
    events += drain(reader)
    commands = [e for e in events if not isinstance(e, NeedContinuation)]
    assert [type(e) for e in commands] == [Command, Command]


# -- MULTIAPPEND (RFC 3502 section 6) ------------------------------------------------------

RFC3502_FIRST = (b"Date: Mon, 7 Feb 1994 21:52:25 -0800 (PST)\r\n"
                 b"From: Fred Foobar <foobar@Blurdybloop.example.COM>\r\n"
                 b"Subject: afternoon meeting\r\n"
                 b"To: mooch@owatagu.example.net\r\n"
                 b"Message-Id: <B27397-0100000@Blurdybloop.example.COM>\r\n"
                 b"MIME-Version: 1.0\r\n"
                 b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
                 b"\r\n"
                 b"Hello Joe, do you think we can meet at 3:30 tomorrow?\r\n")
RFC3502_SECOND = (b"Date: Mon, 7 Feb 1994 22:43:04 -0800 (PST)\r\n"
                  b"From: Joe Mooch <mooch@OWATAGU.example.net>\r\n"
                  b"Subject: Re: afternoon meeting\r\n"
                  b"To: foobar@blurdybloop.example.com\r\n"
                  b"Message-Id: <a0434793874930@OWATAGU.example.net>\r\n"
                  b"MIME-Version: 1.0\r\n"
                  b"Content-Type: TEXT/PLAIN; CHARSET=US-ASCII\r\n"
                  b"\r\n"
                  b"3:30 is fine with me.\r\n")
#: the shape of RFC 3502 section 3's example command (two messages with \Seen to
#: saved-messages); the literal sizes are computed from the texts here
RFC3502_COMMAND = (b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(RFC3502_FIRST)
                   + RFC3502_FIRST + b" (\\Seen) {%d}\r\n" % len(RFC3502_SECOND)
                   + RFC3502_SECOND + b"\r\n")


def test_multiappend_rfc3502_example() -> None:
    events = parse_all_ways(RFC3502_COMMAND)
    assert events[:2] == [NeedContinuation("A003", len(RFC3502_FIRST)),
                          NeedContinuation("A003", len(RFC3502_SECOND))]
    (command,) = events[2:]
    args = command.arguments
    assert [(m.mailbox, m.flags, m.message) for m in args.messages] == [
        ("saved-messages", ("\\Seen",), RFC3502_FIRST),
        ("saved-messages", ("\\Seen",), RFC3502_SECOND)]
    assert command.literal_bytes == len(RFC3502_FIRST) + len(RFC3502_SECOND)


def test_multiappend_options_per_message() -> None:
    command = one(b'a APPEND INBOX {1+}\r\nx "05-Mar-2024 10:01:02 +0100" {1+}\r\ny'
                  b' (\\Flagged) ~{2+}\r\n\x00z\r\n')
    first, second, third = command.arguments.messages
    assert (first.flags, first.internal_date, first.message) == (None, None, b"x")
    assert second.internal_date is not None and second.flags is None
    assert (third.flags, third.binary, third.message) == (("\\Flagged",), True, b"\x00z")
    assert third.more == () and second.more == ()


@pytest.mark.parametrize("stream", [
    b"a APPEND INBOX {1+}\r\nx \r\n",  # SP then nothing
    b"a APPEND INBOX {1+}\r\nx  {1+}\r\ny\r\n",  # two SPs
    b"a APPEND INBOX {1+}\r\nx (\\Seen)\r\n",  # options without the message
    b"a APPEND INBOX {1+}\r\nx junk {1+}\r\ny\r\n",
])
def test_multiappend_malformed_is_bad(stream: bytes) -> None:
    events = [e for e in parse_all_ways(stream) if not isinstance(e, NeedContinuation)]
    assert len(events) == 1 and events[0][0] == "BadCommand", events
