"""Sans-IO tests of the IMAP command reader's limits before login and of its progress
report (pymail.proto.imap.reader), fed whole, byte by byte and in two pieces.

Before login nothing larger than ``prelogin_literal`` is read: a synchronising literal
above it (or of a command not allowed before login, such as APPEND) is refused before
its ``+``, a non-synchronising one above it ends the connection (RFC 7888 section 4)."""

from __future__ import annotations

import pytest

from pymail.proto.imap import (
    CONNECTION_CLOSED, NEED_DATA, BadCommand, Command, CommandReader, FatalProtocolError,
    NeedContinuation,
)
from pymail.proto.imap.reader import (
    READING_LINE, READING_LITERAL, WAITING_FOR_COMMAND, ReadProgress,
)

TRAILER = b"z9 NOOP\r\n"
PRELOGIN = 8192


def events_of(reader: CommandReader) -> list[object]:
    out: list[object] = []
    while True:
        try:
            event = reader.next_event()
        except BadCommand as exc:
            out.append(exc)
            continue
        except FatalProtocolError as exc:
            out.append(exc)
            return out
        if event is NEED_DATA or event is CONNECTION_CLOSED:
            return out
        out.append(event)


def feed(chunks: list[bytes], reader: CommandReader | None = None) -> list[object]:
    reader = reader or CommandReader(prelogin_literal=PRELOGIN)
    out: list[object] = []
    for chunk in chunks:
        reader.receive_data(chunk)
        out += events_of(reader)
        if out and isinstance(out[-1], FatalProtocolError):
            break
    return out


def ways(stream: bytes) -> list[list[bytes]]:
    return [[stream], [stream[i:i + 1] for i in range(len(stream))], [stream[:7], stream[7:]]]


def summary(events: list[object]) -> list[str]:
    out = []
    for e in events:
        if isinstance(e, BadCommand):
            out.append(f"{e.tag} {e.status} {e.text}")
        elif isinstance(e, FatalProtocolError):
            out.append(f"BYE {e.text}")
        elif isinstance(e, NeedContinuation):
            out.append(f"+ {e.size}")
        elif isinstance(e, Command):
            out.append(f"{e.tag} {e.name}")
    return out


@pytest.mark.parametrize("chunks", ways(b"a LOGIN {9000}\r\n" + TRAILER))
def test_a_large_synchronising_literal_before_login_is_refused_before_its_plus(chunks) -> None:
    assert summary(feed(chunks)) == ["a BAD [TOOBIG] Literal too large", "z9 NOOP"]


@pytest.mark.parametrize("chunks", ways(b"u5 APPEND INBOX {10}\r\n" + TRAILER))
def test_append_before_login_is_refused_before_its_literal(chunks) -> None:
    assert summary(feed(chunks)) == ["u5 BAD Command not allowed now", "z9 NOOP"]


def test_a_huge_non_synchronising_literal_before_login_ends_the_connection_unread() -> None:
    reader = CommandReader(prelogin_literal=PRELOGIN)
    reader.receive_data(b"u5 APPEND INBOX {100000000+}\r\n")
    assert summary(events_of(reader)) == ["BYE [TOOBIG] Non-synchronizing literal too large"]
    for _ in range(100):  # the client goes on sending: nothing is kept
        reader.receive_data(b"x" * 65536)
        with pytest.raises(FatalProtocolError):
            reader.next_event()
    assert reader.buffered < 65536 + 64


def test_an_over_long_line_with_a_large_non_synchronising_literal_before_login_is_fatal() -> None:
    reader = CommandReader(prelogin_literal=PRELOGIN, max_line=100)
    reader.receive_data(b"a LOGIN " + b"x" * 200 + b" {9000+}\r\n")
    assert summary(events_of(reader)) == ["BYE [TOOBIG] Non-synchronizing literal too large"]


def test_the_literals_of_one_command_before_login_total_at_most_the_limit() -> None:
    stream = b"a LOGIN {5000}\r\n" + b"u" * 5000 + b" {5000}\r\n" + TRAILER
    assert summary(feed([stream])) == ["+ 5000", "a BAD [TOOBIG] Literal too large", "z9 NOOP"]


@pytest.mark.parametrize("chunks", ways(b"a LOGIN {3+}\r\nbob {6+}\r\nsecret\r\n" + TRAILER))
def test_small_literals_before_login_are_read(chunks) -> None:
    events = feed(chunks)
    assert summary(events) == ["a LOGIN", "z9 NOOP"]
    assert events[0].arguments.userid == "bob" and events[0].arguments.password == "secret"


def test_after_login_append_takes_its_literal() -> None:
    reader = CommandReader(prelogin_literal=PRELOGIN)
    reader.logged_in()
    assert summary(feed([b"a APPEND INBOX {9000}\r\n"], reader)) == ["+ 9000"]


def test_without_a_prelogin_limit_the_reader_is_as_before() -> None:
    assert summary(feed([b"a APPEND INBOX {9000}\r\n"], CommandReader())) == ["+ 9000"]


def test_the_literals_of_a_command_other_than_append_are_bounded() -> None:
    reader = CommandReader(max_literal=1000, max_command_literals=1500)
    stream = b"a SEARCH TEXT {1000}\r\n" + b"x" * 1000 + b" TEXT {1000}\r\n" + TRAILER
    assert summary(feed([stream], reader)) == ["+ 1000", "a BAD [TOOBIG] Literal too large", "z9 NOOP"]


def test_progress_tells_what_the_reader_waits_for() -> None:
    reader = CommandReader(prelogin_literal=PRELOGIN)
    assert reader.progress() == ReadProgress(WAITING_FOR_COMMAND)
    reader.receive_data(b"a LOG")
    assert events_of(reader) == [] and reader.progress() == ReadProgress(READING_LINE)
    reader.receive_data(b"IN {5}\r\nbo")
    assert summary(events_of(reader)) == ["+ 5"]
    assert reader.progress() == ReadProgress(READING_LITERAL, 1, 2)
    reader.receive_data(b"b12")
    assert events_of(reader) == [] and reader.progress() == ReadProgress(READING_LINE)
    reader.receive_data(b" {3+}\r\npw")
    assert events_of(reader) == [] and reader.progress() == ReadProgress(READING_LITERAL, 2, 2)
    reader.receive_data(b"d\r\n")
    assert summary(events_of(reader)) == ["a LOGIN"]
    assert reader.progress() == ReadProgress(WAITING_FOR_COMMAND)


def test_progress_while_a_refused_line_and_its_literal_are_discarded() -> None:
    reader = CommandReader(max_line=20)
    reader.receive_data(b"a NOOP " + b"x" * 30)
    assert summary(events_of(reader)) == []
    assert reader.progress() == ReadProgress(READING_LINE)
    reader.receive_data(b" {10+}\r\nabc")
    assert summary(events_of(reader)) == []
    assert reader.progress() == ReadProgress(READING_LITERAL, 1, 3)
    reader.receive_data(b"defghij\r\n")
    assert summary(events_of(reader)) == ["a BAD Command line too long"]
