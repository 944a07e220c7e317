"""MULTIAPPEND (RFC 3502) end to end over IMAPS against a real pymail process, on both
backend pairs: the RFC's example exchange (synchronising literals), APPENDUID with the
set of new UIDs (RFC 4315 section 3), LITERAL+ (RFC 7888), streamed literals (above
``limits.spool_threshold``, several in one command), and the all-or-nothing rule
(RFC 3502 section 3): a message over APPENDLIMIT, a zero-length message (the client's
cancel, section 6.3.11) or a quota exceeded by the messages together leaves the mailbox
as it was."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.e2e.wire import Wire, login, tls_context
from tests.pymail_harness import PymailServer
from tests.unit.test_imap_parser import RFC3502_FIRST, RFC3502_SECOND

ALICE = "alice@example.test"
QUOTA_USER = "quota@example.test"
APPEND_LIMIT = 256 * 1024
THRESHOLD = 64 * 1024  # limits.spool_threshold: literals above it stream to the spool


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, storage_config=storage.config, imaps=True,
                       extra_config=f'[limits]\nmessage_size = "{APPEND_LIMIT // 1024}KB"\n'
                                    f'spool_threshold = "{THRESHOLD // 1024}KB"\n')
    srv.add_user(ALICE)
    srv.cli("user", "add", QUOTA_USER, "--quota", "8KB", "--password-stdin",
            input="secret-pw\n")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def imaps(server: PymailServer, user: str = ALICE) -> Wire:
    assert server.imaps_port is not None
    wire = Wire(server.imaps_port, context=tls_context(server), timeout=60.0)
    login(wire, user)
    return wire


def expect_plus(wire: Wire) -> None:
    line = wire.readline()
    assert line.startswith(b"+ "), line


def status(wire: Wire, tag: str) -> bytes:
    answer = wire.command(tag, "STATUS INBOX (MESSAGES UIDNEXT)")
    assert answer.tagged.startswith(b"OK"), answer.lines
    return answer.lines[0]


def bodies(wire: Wire, tag: str) -> list[bytes]:
    assert wire.command(tag + "e", "EXAMINE INBOX").tagged.startswith(b"OK")
    answer = wire.command(tag, "UID FETCH 1:* (BODY.PEEK[])", keep_literals=True)
    assert answer.tagged.startswith(b"OK"), answer.lines
    return answer.literals


def message(size: int, subject: str) -> bytes:
    head = f"From: someone@remote.example\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n".encode()
    line = b"line %09d of a multiappended message ..........................\r\n"
    return head + b"".join(line % n for n in range(size // len(line % 0)))


def test_rfc3502_example_exchange(server: PymailServer) -> None:
    """RFC 3502 section 3: two messages, each \\Seen, synchronising literals; the
    tagged OK carries APPENDUID with both new UIDs (RFC 4315 section 3)."""
    wire = imaps(server)
    caps = wire.command("C1", "CAPABILITY")
    assert b" MULTIAPPEND" in caps.lines[0], caps.lines
    assert wire.command("C2", "CREATE saved-messages").tagged.startswith(b"OK")
    uidvalidity = re.search(rb"UIDVALIDITY (\d+)", wire.command(
        "C3", "STATUS saved-messages (UIDVALIDITY)").lines[0]).group(1)
    wire.send(b"A003 APPEND saved-messages (\\Seen) {%d}\r\n" % len(RFC3502_FIRST))
    expect_plus(wire)
    wire.send(RFC3502_FIRST + b" (\\Seen) {%d}\r\n" % len(RFC3502_SECOND))
    expect_plus(wire)
    wire.send(RFC3502_SECOND + b"\r\n")
    answer = wire.response("A003")
    assert answer.lines == [b"A003 OK [APPENDUID %s 1:2] APPEND completed" % uidvalidity]
    assert wire.command("A004", "SELECT saved-messages").tagged.startswith(b"OK")
    fetched = wire.command("A005", "FETCH 1:* (FLAGS BODY.PEEK[])", keep_literals=True)
    assert fetched.literals == [RFC3502_FIRST, RFC3502_SECOND]  # stored as appended
    assert [b"\\Seen" in line for line in fetched.lines[:-1]] == [True, True]
    wire.close()


def test_literal_plus_and_streamed_literals_in_one_command(server: PymailServer) -> None:
    """Small literals kept whole and large ones streamed to the spool, mixed, with
    LITERAL+ and flags/dates per message; UIDs in order, every message exact."""
    wire = imaps(server)
    big1, big2 = message(100_000, "big one"), message(200_000, "big two")
    small = message(500, "small")
    assert len(big1) > THRESHOLD and len(big2) > THRESHOLD
    wire.send(b'M1 APPEND INBOX {%d+}\r\n' % len(small) + small
              + b' (\\Flagged) "05-Mar-2024 10:01:02 +0100" {%d+}\r\n' % len(big1) + big1
              + b" {%d+}\r\n" % len(big2) + big2 + b" () {%d+}\r\n" % len(small) + small
              + b"\r\n")
    answer = wire.response("M1")
    assert re.fullmatch(rb"M1 OK \[APPENDUID \d+ 1:4\] APPEND completed",
                        answer.lines[-1]), answer.lines
    assert bodies(wire, "M2") == [small, big1, big2, small]
    wire.command("M3", "SELECT INBOX")
    dated = wire.command("M4", "FETCH 2 (FLAGS INTERNALDATE)")
    assert b"\\Flagged" in dated.lines[0]
    assert b'" 5-Mar-2024 09:01:02 +0000"' in dated.lines[0]  # the same instant, in UTC
    # the next APPENDUID continues the set
    wire.send(b"M5 APPEND INBOX {3+}\r\nabc {3+}\r\ndef\r\n")
    assert re.fullmatch(rb"M5 OK \[APPENDUID \d+ 5:6\] APPEND completed",
                        wire.response("M5").lines[-1])
    wire.close()


def test_second_message_over_appendlimit_appends_nothing(server: PymailServer) -> None:
    """RFC 3502 section 3: NO, and none of the messages is appended (the first came
    whole before the second's size was known)."""
    wire = imaps(server)
    before = status(wire, "S1")
    first = message(2000, "first")
    wire.send(b"T1 APPEND INBOX {%d}\r\n" % len(first))
    expect_plus(wire)
    wire.send(first + b" {%d}\r\n" % (APPEND_LIMIT + 1))
    line = wire.readline()  # refused before the "+": the client sends no literal
    assert line.startswith(b"T1 NO [TOOBIG]"), line
    assert status(wire, "S2") == before
    # a streamed first message, then a too big second: the same
    big = message(100_000, "big")
    wire.send(b"T2 APPEND INBOX {%d+}\r\n" % len(big) + big + b" {%d}\r\n" % (APPEND_LIMIT + 1))
    line = wire.readline()
    assert line.startswith(b"T2 NO [TOOBIG]"), line
    assert status(wire, "S3") == before
    assert bodies(wire, "S4") == []
    wire.close()


def test_zero_length_message_cancels_the_whole_append(server: PymailServer) -> None:
    """RFC 3502 section 6.3.11: a zero-length message literal is NO; the client uses it
    to cancel, so the messages before it are not appended."""
    wire = imaps(server)
    before = status(wire, "Z1")
    big = message(100_000, "big")
    wire.send(b"Z2 APPEND INBOX {3+}\r\nabc {%d+}\r\n" % len(big) + big + b" {0}\r\n")
    expect_plus(wire)
    wire.send(b"\r\n")
    line = wire.response("Z2").lines[-1]
    assert line.startswith(b"Z2 NO "), line
    assert status(wire, "Z3") == before
    # the connection goes on
    assert wire.command("Z4", "NOOP").tagged.startswith(b"OK")
    wire.close()


def test_quota_counts_the_messages_together(server: PymailServer) -> None:
    """Two 5 KB messages each fit the 8 KB quota; together they do not: NO
    [OVERQUOTA] (RFC 9208 section 4.3), nothing appended."""
    wire = imaps(server, QUOTA_USER)
    before = status(wire, "Q1")
    one = message(5000, "five k")
    wire.send(b"Q2 APPEND INBOX {%d+}\r\n" % len(one) + one + b" {%d+}\r\n" % len(one) + one
              + b"\r\n")
    line = wire.response("Q2").lines[-1]
    assert line.startswith(b"Q2 NO [OVERQUOTA]"), line
    assert status(wire, "Q3") == before
    wire.send(b"Q4 APPEND INBOX {%d+}\r\n" % len(one) + one + b"\r\n")
    assert wire.response("Q4").lines[-1].startswith(b"Q4 OK [APPENDUID")
    wire.close()


def test_messages_are_one_index_commit_for_other_sessions(server: PymailServer) -> None:
    """Another session sees all the messages of a MULTIAPPEND or none: after the OK
    its STATUS counts them all, with the hashes of what was sent."""
    wire, other = imaps(server), imaps(server)
    parts = [message(1000 * (n + 1), f"part {n}") for n in range(5)]
    wire.send(b"P1 APPEND INBOX" + b"".join(b" {%d+}\r\n" % len(p) + p for p in parts) + b"\r\n")
    assert wire.response("P1").lines[-1].startswith(b"P1 OK [APPENDUID")
    assert b"MESSAGES 5" in status(other, "P2")
    assert [hashlib.sha256(b).hexdigest() for b in bodies(other, "P3")] == [
        hashlib.sha256(p).hexdigest() for p in parts]
    wire.close()
    other.close()
