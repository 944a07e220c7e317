"""Sans-IO tests of the POP3 command reader and state tables (pymail.proto.pop3).

Every input is fed whole, byte by byte, split in two, and with trailing data (a second
pipelined command behind it), STYLE.md item 4; malformed input must end in
CommandError, never another exception, and a hypothesis fuzz test says so."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymail.proto.pop3 import (
    COMMANDS_BY_STATE, CONNECTION_CLOSED, NEED_DATA, Command, CommandError, CommandReader,
    Pop3State, SaslResponse, command_allowed,
)
from pymail.proto.pop3.reader import MAX_COMMAND_LINE

TRAILER = b"NOOP\r\n"


def drain(reader: CommandReader) -> list[object]:
    """All events until NEED_DATA/CONNECTION_CLOSED; errors appear as their reply."""
    events: list[object] = []
    for _ in range(10_000):
        try:
            event = reader.next_event()
        except CommandError as exc:
            events.append(exc.reply)
            continue
        if event is NEED_DATA or event is CONNECTION_CLOSED:
            return events
        events.append(event)
    raise AssertionError("reader made no progress")


def feed(chunks: list[bytes]) -> list[object]:
    reader = CommandReader()
    events: list[object] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        events += drain(reader)
    return events


def ways(stream: bytes) -> list[list[bytes]]:
    middle = len(stream) // 2
    return [[stream], [stream[i:i + 1] for i in range(len(stream))],
            [stream[:middle], stream[middle:]], [stream[:3], stream[3:]]]


def parse_all_ways(stream: bytes) -> list[object]:
    """Feed ``stream`` every way, with and without the trailer; all must agree."""
    results = [feed(chunks) for chunks in ways(stream)]
    assert all(r == results[0] for r in results), results
    with_trailer = feed([stream + TRAILER])
    assert with_trailer[:-1] == results[0]
    assert with_trailer[-1] == Command("NOOP")
    return results[0]


def one(stream: bytes) -> object:
    events = parse_all_ways(stream)
    assert len(events) == 1, events
    return events[0]


VALID = [
    (b"USER alice@example.test\r\n", Command("USER", ("alice@example.test",))),
    (b"user Alice@Example.Test\r\n", Command("USER", ("Alice@Example.Test",))),
    (b"PASS secret with spaces \r\n", Command("PASS", ("secret with spaces ",))),
    (b"PASS caf\xc3\xa9\r\n", Command("PASS", ("caf\u00e9",))),
    (b"AUTH\r\n", Command("AUTH")),
    (b"AUTH PLAIN\r\n", Command("AUTH", ("PLAIN",))),
    (b"AUTH PLAIN AGFsaWNlAHB3\r\n", Command("AUTH", ("PLAIN", "AGFsaWNlAHB3"))),
    (b"AUTH LOGIN =\r\n", Command("AUTH", ("LOGIN", "="))),
    (b"CAPA\r\n", Command("CAPA")),
    (b"STLS\r\n", Command("STLS")),
    (b"QUIT\r\n", Command("QUIT")),
    (b"STAT\r\n", Command("STAT")),
    (b"LIST\r\n", Command("LIST")),
    (b"LIST 2\r\n", Command("LIST", (2,))),
    (b"UIDL\r\n", Command("UIDL")),
    (b"uidl 10\r\n", Command("UIDL", (10,))),
    (b"RETR 1\r\n", Command("RETR", (1,))),
    (b"RETR 0\r\n", Command("RETR", (0,))),  # syntactically a number: the maildrop says no
    (b"DELE 3\r\n", Command("DELE", (3,))),
    (b"NOOP\r\n", Command("NOOP")),
    (b"RSET\r\n", Command("RSET")),
    (b"TOP 1 0\r\n", Command("TOP", (1, 0))),
    (b"TOP 2 10\r\n", Command("TOP", (2, 10))),
    (b"Top 2  10 \r\n", Command("TOP", (2, 10))),  # lenient about runs of spaces
    (b"STAT\n", Command("STAT")),  # a bare LF ends a line too
]

MALFORMED = [
    (b"FROB\r\n", b"-ERR Unknown command\r\n"),
    (b"APOP alice 0123456789abcdef\r\n", b"-ERR Unknown command\r\n"),
    (b"\xff\xfe\r\n", b"-ERR Unknown command\r\n"),
    (b"\r\n", b"-ERR Empty command\r\n"),
    (b"   \r\n", b"-ERR Empty command\r\n"),
    (b"RETR\r\n", b"-ERR Syntax error\r\n"),
    (b"RETR x\r\n", b"-ERR Syntax error\r\n"),
    (b"RETR -1\r\n", b"-ERR Syntax error\r\n"),
    (b"RETR 1 2\r\n", b"-ERR Syntax error\r\n"),
    (b"RETR 12345678901\r\n", b"-ERR Syntax error\r\n"),
    (b"TOP 1 -1\r\n", b"-ERR Syntax error\r\n"),
    (b"TOP 1\r\n", b"-ERR Syntax error\r\n"),
    (b"TOP 1 2 3\r\n", b"-ERR Syntax error\r\n"),
    (b"LIST 1 2\r\n", b"-ERR Syntax error\r\n"),
    (b"STAT now\r\n", b"-ERR Syntax error\r\n"),
    (b"USER\r\n", b"-ERR Syntax error\r\n"),
    (b"USER a\tb\r\n", b"-ERR Syntax error\r\n"),
    (b"PASS\r\n", b"-ERR Syntax error\r\n"),
    (b"PASS a\x00b\r\n", b"-ERR Syntax error\r\n"),
    (b"PASS a\rb\r\n", b"-ERR Syntax error\r\n"),
    (b"AUTH PL*AIN\r\n", b"-ERR Syntax error\r\n"),
    (b"AUTH PLAIN a b\r\n", b"-ERR Syntax error\r\n"),
    (b"LIST \xc3\xa9\r\n", b"-ERR Syntax error\r\n"),
]


@pytest.mark.parametrize(("line", "command"), VALID, ids=[v[0].decode("latin-1") for v in VALID])
def test_valid_commands(line: bytes, command: Command) -> None:
    assert one(line) == command


@pytest.mark.parametrize(("line", "reply"), MALFORMED, ids=[m[0].decode("latin-1") for m in MALFORMED])
def test_malformed_commands_get_err_and_the_reader_goes_on(line: bytes, reply: bytes) -> None:
    assert one(line) == reply


def test_line_limit_is_512_octets_with_the_line_end() -> None:
    longest = b"USER " + b"a" * (MAX_COMMAND_LINE - 7) + b"\r\n"
    assert len(longest) == MAX_COMMAND_LINE
    assert one(longest) == Command("USER", ("a" * (MAX_COMMAND_LINE - 7),))
    too_long = b"USER " + b"a" * (MAX_COMMAND_LINE - 6) + b"\r\n"
    assert one(too_long) == b"-ERR Command line too long\r\n"


def test_over_long_line_is_refused_before_it_ends_and_not_held() -> None:
    reader = CommandReader()
    reader.receive_data(b"PASS " + b"x" * 600)
    with pytest.raises(CommandError) as refusal:
        reader.next_event()
    assert refusal.value.reply == b"-ERR Command line too long\r\n"
    reader.receive_data(b"y" * 100_000)  # the rest of the line is dropped as it comes
    assert reader.buffered == 0
    assert reader.next_event() is NEED_DATA
    reader.receive_data(b"zzz\r\nSTAT\r\n")  # the line ends; what follows is read
    assert reader.next_event() == Command("STAT")


def test_huge_line_fed_whole_and_in_pieces_gives_one_error() -> None:
    stream = b"RETR " + b"9" * 5000 + b"\r\nRSET\r\n"
    assert parse_all_ways(stream) == [b"-ERR Command line too long\r\n", Command("RSET")]


def test_pipelined_commands_come_out_one_by_one() -> None:
    # RFC 2449 section 6.6 PIPELINING: one read, several commands, in order
    reader = CommandReader()
    reader.receive_data(b"STAT\r\nFROB\r\nLIST 1\r\nRE")
    assert reader.next_event() == Command("STAT")
    with pytest.raises(CommandError):
        reader.next_event()
    assert reader.next_event() == Command("LIST", (1,))
    assert reader.next_event() is NEED_DATA
    assert reader.buffered == 2
    reader.receive_data(b"TR 1\r\n")
    assert reader.next_event() == Command("RETR", (1,))


def test_stls_leaves_what_follows_buffered_for_the_glue_to_discard() -> None:
    # the STLS injection vector (CVE-2011-0411): the command behind STLS in the same
    # packet stays unread; `buffered` tells the glue there is something to discard
    reader = CommandReader()
    reader.receive_data(b"STLS\r\nCAPA\r\n")
    assert reader.next_event() == Command("STLS")
    assert reader.buffered == len(b"CAPA\r\n")


def test_sasl_response_lines() -> None:
    reader = CommandReader()
    reader.receive_data(b"AUTH PLAIN\r\nAGFsaWNlAHB3\r\n*\r\nSTAT\r\n")
    assert reader.next_event() == Command("AUTH", ("PLAIN",))
    reader.expect_sasl_response()
    assert reader.next_event() == SaslResponse("AGFsaWNlAHB3")
    reader.expect_sasl_response()
    assert reader.next_event() == SaslResponse("*")
    assert reader.next_event() == Command("STAT")  # back to commands


def test_sasl_response_may_be_longer_than_a_command_but_is_bounded() -> None:
    reader = CommandReader()
    reader.expect_sasl_response()
    reader.receive_data(b"A" * 2000 + b"\r\n")
    assert reader.next_event() == SaslResponse("A" * 2000)
    reader.expect_sasl_response()
    reader.receive_data(b"A" * 9000)
    with pytest.raises(CommandError):
        reader.next_event()
    reader.receive_data(b"\r\nNOOP\r\n")
    assert reader.next_event() == Command("NOOP")  # the over-long response ended the SASL mode


def test_connection_closed() -> None:
    reader = CommandReader()
    reader.receive_data(b"STAT\r\nQUI")
    reader.receive_data(b"")
    assert reader.next_event() == Command("STAT")
    assert reader.next_event() is CONNECTION_CLOSED  # a partial line is dropped
    assert reader.next_event() is CONNECTION_CLOSED


def test_state_tables() -> None:
    # RFC 1939 sections 4-6, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH
    auth, trans = Pop3State.AUTHORIZATION, Pop3State.TRANSACTION
    for name in ("USER", "PASS", "AUTH", "STLS", "CAPA", "QUIT"):
        assert command_allowed(auth, name)
    for name in ("STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "TOP", "UIDL"):
        assert not command_allowed(auth, name) and command_allowed(trans, name)
    for name in ("USER", "PASS", "AUTH", "STLS"):
        assert not command_allowed(trans, name)
    assert command_allowed(trans, "CAPA") and command_allowed(trans, "QUIT")
    assert COMMANDS_BY_STATE[Pop3State.UPDATE] == frozenset()


# --- fuzzing (STYLE.md item 3) ---------------------------------------------------------

SEEDS = [line for line, _ in VALID] + [line for line, _ in MALFORMED]


def run_fuzz(stream: bytes, cuts: list[int], sasl_every: int = 0) -> None:
    reader = CommandReader()
    positions = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for n, (start, stop) in enumerate(zip(positions, positions[1:])):
        if sasl_every and n % sasl_every == 0:
            reader.expect_sasl_response()
        reader.receive_data(stream[start:stop])
        drain(reader)  # only CommandError may come out (drain catches it)
    # progress: a complete command behind whatever came before is read
    reader.receive_data(b"\r\nNOOP\r\n")
    events = drain(reader)
    assert events and events[-1] in (Command("NOOP"), SaslResponse("NOOP")), events
    assert reader.buffered == 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500), st.lists(st.integers(0, 2000), max_size=8), st.integers(0, 3))
def test_fuzz_random_bytes(stream: bytes, cuts: list[int], sasl_every: int) -> None:
    run_fuzz(stream, cuts, sasl_every)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 40), st.binary(max_size=4)), max_size=4),
       st.lists(st.integers(0, 60), max_size=6))
def test_fuzz_mutated_commands(seed: bytes, mutations: list[tuple[int, bytes]], cuts: list[int]) -> None:
    data = bytearray(seed)
    for position, insert in mutations:
        position %= len(data) + 1
        data[position:position] = insert
    run_fuzz(bytes(data), cuts)


def test_progress_says_when_part_of_a_line_is_held() -> None:
    # the connection's command deadline runs from a line's first byte (limits.command_timeout)
    from pymail.proto.progress import READING_LINE, WAITING_FOR_COMMAND

    reader = CommandReader()
    assert reader.progress().phase == WAITING_FOR_COMMAND
    reader.receive_data(b"US")
    assert reader.next_event() is NEED_DATA and reader.progress().phase == READING_LINE
    reader.receive_data(b"ER bob\r\n")
    assert reader.next_event() == Command("USER", ("bob",))
    assert reader.progress().phase == WAITING_FOR_COMMAND
    reader.receive_data(b"X" * 600)  # over-long: refused, the rest discarded as it comes
    with pytest.raises(CommandError):
        reader.next_event()
    assert reader.progress().phase == READING_LINE
    reader.receive_data(b"X\r\n")
    assert reader.next_event() is NEED_DATA and reader.progress().phase == WAITING_FOR_COMMAND
