"""The client deadlines of IMAP and POP3 connections (pymail.net.listen.Deadlines), with
the clock passed in: none of them restarts because a byte came."""

from __future__ import annotations

from pymail.net.listen import (
    AUTOLOGOUT, COMMAND_TIMEOUT, DATA_RATE, LOGIN_TIMEOUT, ClientTimeouts, Deadlines,
)
from pymail.proto.progress import READING_LINE, READING_LITERAL, WAITING_FOR_COMMAND, ReadProgress

TIMEOUTS = ClientTimeouts(login=60, command=20, min_data_rate=100, send=60)
IDLE = ReadProgress(WAITING_FOR_COMMAND)
LINE = ReadProgress(READING_LINE)


def literal(number: int, received: int) -> ReadProgress:
    return ReadProgress(READING_LITERAL, number, received)


def test_the_login_deadline_counts_from_connect_whatever_comes() -> None:
    deadlines = Deadlines(TIMEOUTS, connected_at=1000.0)
    assert deadlines.next(IDLE, 1000.0, idle=1800, logged_in=False) == (1060.0, LOGIN_TIMEOUT)
    for now in (1010.0, 1030.0, 1050.0):  # commands keep coming, each answered
        assert deadlines.next(IDLE, now, idle=1800, logged_in=False) == (1060.0, LOGIN_TIMEOUT)
    assert deadlines.next(IDLE, 1070.0, idle=1800, logged_in=True) == (2870.0, AUTOLOGOUT)


def test_a_command_line_has_its_deadline_from_its_first_byte() -> None:
    deadlines = Deadlines(TIMEOUTS, connected_at=0.0)
    assert deadlines.next(IDLE, 100.0, idle=1800, logged_in=True) == (1900.0, AUTOLOGOUT)
    assert deadlines.next(LINE, 110.0, idle=1800, logged_in=True) == (130.0, COMMAND_TIMEOUT)
    for now in (115.0, 120.0, 129.0):  # a byte at a time: the deadline stays
        assert deadlines.next(LINE, now, idle=1800, logged_in=True) == (130.0, COMMAND_TIMEOUT)
    assert deadlines.next(IDLE, 129.5, idle=1800, logged_in=True) == (1929.5, AUTOLOGOUT)
    assert deadlines.next(LINE, 200.0, idle=1800, logged_in=True) == (220.0, COMMAND_TIMEOUT)


def test_literal_data_has_the_minimum_rate_and_its_time_does_not_count_for_the_line() -> None:
    deadlines = Deadlines(TIMEOUTS, connected_at=0.0)
    assert deadlines.next(LINE, 100.0, idle=1800, logged_in=True)[0] == 120.0
    # literal 1 starts at 105: 20 s of grace, then 100 octets/s on average
    assert deadlines.next(literal(1, 0), 105.0, idle=1800, logged_in=True) == (125.0, DATA_RATE)
    assert deadlines.next(literal(1, 1000), 115.0, idle=1800, logged_in=True) == (135.0, DATA_RATE)
    assert deadlines.next(literal(1, 5000), 140.0, idle=1800, logged_in=True) == (175.0, DATA_RATE)
    # back to the line at 150: 45 s were literal, so the line's deadline moves by 45 s
    assert deadlines.next(LINE, 150.0, idle=1800, logged_in=True) == (165.0, COMMAND_TIMEOUT)
    # a second literal starts its own clock
    assert deadlines.next(literal(2, 0), 151.0, idle=1800, logged_in=True) == (171.0, DATA_RATE)


def test_before_login_the_earlier_deadline_wins() -> None:
    deadlines = Deadlines(TIMEOUTS, connected_at=0.0)
    assert deadlines.next(LINE, 50.0, idle=1800, logged_in=False) == (60.0, LOGIN_TIMEOUT)
    deadlines = Deadlines(TIMEOUTS, connected_at=0.0)
    assert deadlines.next(LINE, 10.0, idle=1800, logged_in=False) == (30.0, COMMAND_TIMEOUT)
