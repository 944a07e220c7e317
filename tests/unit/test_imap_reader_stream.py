"""Sans-IO tests of the IMAP command reader's streamed APPEND literals
(pymail.proto.imap.reader, ``stream_literal_above``): fed whole, byte by byte, in two
pieces and in random splits, with the smuggling vectors.

An APPEND literal above the threshold (once logged in) is never kept in the reader: its
octets come out as `LiteralData` as they arrive, then the `Command` with
``Append.streamed``.  Before this, the reader held every APPEND literal whole (up to
APPENDLIMIT, 100 MB): `test_a_streamed_literal_is_not_kept_in_the_reader` failed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymail.proto.imap import (
    CONNECTION_CLOSED, NEED_DATA, BadCommand, Command, CommandReader, FatalProtocolError,
    LiteralData, NeedContinuation,
)
from pymail.proto.imap.reader import READING_LINE, READING_LITERAL, ReadProgress
from pymail.proto.imap.types import Append

THRESHOLD = 1000
TRAILER = b"z9 NOOP\r\n"
LITERAL = bytes(range(1, 256)) * 12  # 3060 octets, no NUL, CR LF and "{" inside


def reader(**options) -> CommandReader:
    made = CommandReader(prelogin_literal=8192, stream_literal_above=THRESHOLD, **options)
    made.logged_in()
    return made


def events_of(r: CommandReader) -> list[object]:
    out: list[object] = []
    while True:
        try:
            event = r.next_event()
        except BadCommand as exc:
            out.append(exc)
            continue
        except FatalProtocolError as exc:
            out.append(exc)
            return out
        if event is NEED_DATA or event is CONNECTION_CLOSED:
            return out
        out.append(event)


def feed(chunks: list[bytes], r: CommandReader | None = None, *, held: list[int] | None = None) -> list[object]:
    """Feed `chunks` one by one, taking every event after each; `held` gets what the
    reader keeps after each chunk's events are taken."""
    r = r or reader()
    out: list[object] = []
    for chunk in chunks:
        r.receive_data(chunk)
        out += events_of(r)
        if held is not None:
            held.append(r.buffered)
    return out


def ways(stream: bytes) -> list[list[bytes]]:
    return [[stream], [stream[i:i + 1] for i in range(len(stream))], [stream[:30], stream[30:]]]


def split(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [stream[a:b] for a, b in zip(points, points[1:])]


def summary(events: list[object]) -> list[str]:
    """The events with consecutive LiteralData folded into one "data n" entry."""
    out: list[str] = []
    for e in events:
        if isinstance(e, LiteralData):
            if out and out[-1].startswith("data "):
                out[-1] = f"data {int(out[-1][5:]) + len(e.data)}"
            else:
                out.append(f"data {len(e.data)}")
        elif isinstance(e, BadCommand):
            out.append(f"{e.tag} {e.status} {e.text}")
        elif isinstance(e, FatalProtocolError):
            out.append(f"BYE {e.text}")
        elif isinstance(e, NeedContinuation):
            out.append(f"+ {e.size}")
        elif isinstance(e, Command):
            out.append(f"{e.tag} {e.name}")
    return out


def streamed(events: list[object]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, LiteralData))


def append_of(events: list[object]) -> Append:
    (command,) = [e for e in events if isinstance(e, Command) and e.name == "APPEND"]
    assert isinstance(command.arguments, Append)
    return command.arguments


SYNC = b"a APPEND Sent (\\Seen) {%d}\r\n" % len(LITERAL) + LITERAL + b"\r\n" + TRAILER
PLUS = b"a APPEND INBOX {%d+}\r\n" % len(LITERAL) + LITERAL + b"\r\n" + TRAILER


@pytest.mark.parametrize("chunks", ways(SYNC))
def test_a_large_synchronising_append_literal_is_streamed(chunks) -> None:
    events = feed(chunks)
    assert summary(events) == ["+ 3060", "data 3060", "a APPEND", "z9 NOOP"]
    assert streamed(events) == LITERAL
    args = append_of(events)
    assert args == Append("Sent", ("\\Seen",), None, b"", False, True, len(LITERAL))
    assert [e for e in events if isinstance(e, Command)][0].literal_bytes == len(LITERAL)


@pytest.mark.parametrize("chunks", ways(PLUS))
def test_a_large_non_synchronising_append_literal_is_streamed(chunks) -> None:
    events = feed(chunks)
    assert summary(events) == ["data 3060", "a APPEND", "z9 NOOP"]
    assert streamed(events) == LITERAL and append_of(events).streamed


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
       st.sampled_from([SYNC, PLUS]))
def test_random_splits_give_the_same_events(cuts: list[int], stream: bytes) -> None:
    whole = feed([stream])
    events = feed(split(stream, cuts))
    assert summary(events) == summary(whole)
    assert streamed(events) == LITERAL
    assert append_of(events) == append_of(whole)


def test_a_streamed_literal_is_not_kept_in_the_reader() -> None:
    """The bound: while the literal arrives the reader holds its command's text only,
    never the literal (before: the whole literal, up to APPENDLIMIT)."""
    big = b"x" * 5_000_000
    stream = b"a APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n"
    held: list[int] = []
    chunks = [stream[i:i + 65536] for i in range(0, len(stream), 65536)]
    events = feed(chunks, held=held)
    assert summary(events) == ["data 5000000", "a APPEND"]
    assert max(held) < 100, max(held)
    assert all(len(e.data) <= 65536 for e in events if isinstance(e, LiteralData))


@pytest.mark.parametrize("chunks", ways(b"a APPEND INBOX ~{%d}\r\n" % len(LITERAL + b"\x00\x00")
                                        + LITERAL + b"\x00\x00\r\n" + TRAILER))
def test_a_literal8_with_nul_is_streamed_as_it_is(chunks) -> None:
    events = feed(chunks)
    assert summary(events) == ["+ 3062", "data 3062", "a APPEND", "z9 NOOP"]
    assert streamed(events) == LITERAL + b"\x00\x00"
    assert append_of(events).binary


def test_small_literals_and_other_commands_are_kept_whole() -> None:
    small = b"s" * THRESHOLD  # at the threshold: kept
    events = feed([b"a APPEND INBOX {%d+}\r\n" % len(small) + small + b"\r\n"])
    assert summary(events) == ["a APPEND"] and append_of(events).message == small
    assert not append_of(events).streamed
    r = reader(max_literal=5000)
    events = feed([b"s SEARCH TEXT {3000+}\r\n" + b"t" * 3000 + b"\r\n"], r)
    assert summary(events) == ["s SEARCH"]


def test_without_a_threshold_every_literal_is_kept_whole() -> None:
    r = CommandReader()
    events = feed([PLUS], r)
    assert summary(events) == ["a APPEND", "z9 NOOP"]
    assert append_of(events).message == LITERAL


def test_before_login_nothing_is_streamed() -> None:
    r = CommandReader(prelogin_literal=8192, stream_literal_above=THRESHOLD)
    assert summary(feed([b"a APPEND INBOX {3060}\r\n" + TRAILER], r)) == [
        "a BAD Command not allowed now", "z9 NOOP"]


# -- NUL, trailing text, literals behind a streamed one: no smuggling ---------------------

SMUGGLED = LITERAL[:1500] + b"\x00\r\nx1 DELETE INBOX\r\nx2 CREATE Smuggled\r\n" + LITERAL[1500:]
NUL_SYNC = b"n APPEND INBOX {%d}\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n" + TRAILER
NUL_PLUS = b"n APPEND INBOX {%d+}\r\n" % len(SMUGGLED) + SMUGGLED + b" (x) {5+}\r\nhello\r\n" + TRAILER


@pytest.mark.parametrize("stream", [NUL_SYNC, NUL_PLUS])
@pytest.mark.parametrize("how", ["whole", "bytes", "two"])
def test_a_nul_in_a_streamed_literal_is_refused_after_the_whole_command(stream, how) -> None:
    chunks = dict(zip(["whole", "bytes", "two"], ways(stream)))[how]
    events = feed(chunks)
    names = [s for s in summary(events) if not s.startswith(("data", "+"))]
    assert names == ["n BAD Syntax error", "z9 NOOP"]  # x1, x2 and "hello" never run
    assert len(streamed(events)) < 1500 + 1  # nothing from the NUL on


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_a_nul_is_refused_whatever_the_splits(cuts: list[int]) -> None:
    events = feed(split(NUL_PLUS, cuts))
    assert [s for s in summary(events) if not s.startswith("data")] == ["n BAD Syntax error", "z9 NOOP"]


def test_the_rest_of_a_nul_literal_keeps_its_literal_deadline() -> None:
    r = reader()
    r.receive_data(b"n APPEND INBOX {%d+}\r\n" % len(SMUGGLED) + SMUGGLED[:1600])
    events_of(r)
    assert r.progress() == ReadProgress(READING_LITERAL, 1, 1600)
    r.receive_data(SMUGGLED[1600:1700])
    events_of(r)
    assert r.progress() == ReadProgress(READING_LITERAL, 1, 1700)
    r.receive_data(SMUGGLED[1700:])
    assert events_of(r) == [] and r.progress() == ReadProgress(READING_LINE)


@pytest.mark.parametrize("chunks", ways(b"j APPEND INBOX {%d+}\r\n" % len(LITERAL) + LITERAL + b" junk\r\n" + TRAILER))
def test_trailing_text_after_a_streamed_literal_is_bad(chunks) -> None:
    assert summary(feed(chunks)) == ["data 3060", "j BAD Syntax error", "z9 NOOP"]


@pytest.mark.parametrize("chunks", ways(b"k APPEND INBOX {%d+}\r\n" % len(LITERAL) + LITERAL
                                        + b" {17+}\r\nk2 DELETE INBOX\r\n\r\n" + TRAILER))
def test_a_literal_behind_a_streamed_one_is_the_next_message(chunks) -> None:
    # MULTIAPPEND (RFC 3502): the 17 octets are the second message, never a command
    events = feed(chunks)
    assert summary(events) == ["data 3060", "k APPEND", "z9 NOOP"]
    (second,) = append_of(events).more
    assert second.message == b"k2 DELETE INBOX\r\n" and not second.streamed


@pytest.mark.parametrize("chunks", ways(b"k APPEND {%d}\r\n" % len(LITERAL) + TRAILER))
def test_a_mailbox_name_above_the_threshold_is_bad_before_its_plus(chunks) -> None:
    # only a message streams: the mailbox literal is refused unsent
    assert summary(feed(chunks)) == ["k BAD Syntax error", "z9 NOOP"]


@pytest.mark.parametrize("chunks", ways(b"k APPEND {%d+}\r\n" % len(LITERAL) + LITERAL
                                        + b" {17}\r\n" + TRAILER))
def test_a_non_synchronising_mailbox_name_above_the_threshold_is_skipped(chunks) -> None:
    assert summary(feed(chunks)) == ["k BAD Syntax error", "z9 NOOP"]


# -- MULTIAPPEND (RFC 3502): several literals, some streamed ------------------------------

def test_multiappend_streams_every_large_literal_in_order() -> None:
    second = LITERAL[::-1]
    stream = (b"m APPEND INBOX (\\Seen) {%d}\r\n" % len(LITERAL) + LITERAL
              + b" {%d+}\r\n" % len(second) + second + b" {3}\r\nabc\r\n" + TRAILER)
    for chunks in ways(stream):
        events = feed(chunks)
        assert summary(events) == ["+ 3060", "data 6120", "+ 3", "m APPEND", "z9 NOOP"]
        assert streamed(events) == LITERAL + second
        sizes = [e.literal_size for e in events if isinstance(e, LiteralData)]
        assert set(sizes) == {3060}
        first = append_of(events)
        assert [(m.flags, m.streamed, m.size) for m in first.messages] == [
            (("\\Seen",), True, 3060), (None, True, 3060), (None, False, 3)]


def test_multiappend_keeps_at_most_the_threshold_in_memory() -> None:
    """Small literals are kept whole until together they would pass the threshold;
    the later ones stream however small (the memory bound holds per command)."""
    part = b"p" * 400
    stream = b"m APPEND INBOX" + b"".join(b" {400+}\r\n" + part for _ in range(4)) + b"\r\n"
    events = feed([stream])
    assert [m.streamed for m in append_of(events).messages] == [False, False, True, True]
    assert streamed(events) == part * 2


def test_multiappend_limits_each_message_and_the_total() -> None:
    r = reader(max_append=2000, max_append_total=3000)
    one = b"x" * 1500
    stream = (b"t APPEND INBOX {1500}\r\n" + one + b" {1500}\r\n" + one
              + b" {2500}\r\n" + TRAILER)
    assert summary(feed([stream], r)) == ["+ 1500", "data 1500", "+ 1500", "data 1500",
                                         "t NO [TOOBIG] Message too large", "z9 NOOP"]
    r = reader(max_append=2000, max_append_total=3000)
    stream = (b"t APPEND INBOX {1500}\r\n" + one + b" {1501}\r\n" + TRAILER)
    assert summary(feed([stream], r)) == ["+ 1500", "data 1500",
                                         "t NO [TOOBIG] Message too large", "z9 NOOP"]
    assert CommandReader(max_append=10).max_append_total == 40  # MULTIAPPEND_TOTAL_FACTOR


def test_a_streamed_literal_over_appendlimit_is_still_refused_before_it_is_read() -> None:
    r = reader(max_append=2000)
    assert summary(feed([b"a APPEND INBOX {3060}\r\n" + TRAILER], r)) == [
        "a NO [TOOBIG] Message too large", "z9 NOOP"]
    r = reader(max_append=2000)
    assert summary(feed([b"a APPEND INBOX {3060+}\r\n"], r)) == [
        "BYE [TOOBIG] Non-synchronizing literal too large"]


def test_progress_and_hang_up_inside_a_streamed_literal() -> None:
    r = reader()
    r.receive_data(b"a APPEND INBOX {3060}\r\n")
    assert summary(events_of(r)) == ["+ 3060"]
    assert r.progress() == ReadProgress(READING_LITERAL, 1, 0)
    r.receive_data(LITERAL[:2000])
    assert summary(events_of(r)) == ["data 2000"]
    assert r.progress() == ReadProgress(READING_LITERAL, 1, 2000)
    r.receive_data(b"")
    assert r.next_event() is CONNECTION_CLOSED
