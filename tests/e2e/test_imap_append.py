"""APPEND of large messages end to end (issue 10, the APPEND exception to the IMAP
memory bound): a real pymail process, real TLS sockets, the server's memory measured
from /proc (`MemorySampler`, anonymous memory) and a second client timing SMTP greetings
(`StallProbe`).

A literal larger than ``limits.spool_threshold`` goes through the spool the SMTP DATA
path uses (``<data_dir>/spool``) while it arrives, hashed as it streams, and is delivered
from the file (`Pipeline.deliver`, the one delivery path of SMTP and APPEND).  Before this, the reader held the whole literal
in memory: four 20 MB APPENDs at once grew the server by 113-118 MiB of anonymous
memory, and 50 connections of one user could make it hold 5 GB.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.e2e.probes import MiB, MemorySampler, StallProbe
from tests.e2e.wire import Wire, login, tls_context
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
BOB = "bob@example.test"
BIG = 20 * 1000 * 1000
#: The SMTP DATA test's ceiling for four 20 MB messages at once (the bound is about
#: 2 MiB per connection plus the spool's write batches; generous for the allocator).
MEMORY_CEILING = 48 * MiB
STALL_CEILING = 2.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path_factory.mktemp("imap-append"), imaps=True,
                       extra_config="[limits]\ncommand_timeout = 5.0\n")
    for user in (ALICE, BOB):
        srv.add_user(user)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def imaps(server: PymailServer, user: str, timeout: float = 60.0) -> Wire:
    assert server.imaps_port is not None
    wire = Wire(server.imaps_port, context=tls_context(server), timeout=timeout)
    login(wire, user)
    return wire


def message(size: int, subject: str, *, binary: bool = False) -> bytes:
    """A text message of about `size` octets; with `binary`, NUL octets in its body (only
    a literal8 may carry those, RFC 3516 section 4.4)."""
    head = f"From: someone@remote.example\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\n".encode()
    line = b"a line of the large appended message %09d ......................\r\n"
    if binary:
        line = b"\x00\x01binary\x00" + line
    body = b"".join(line % n for n in range(size // len(line % 0)))
    return head + body


def append(wire: Wire, tag: str, data: bytes, *, plus: bool = False, literal8: bool = False,
           mailbox: str = "INBOX", flags: str = "", date: str = "",
           piece: int = 256 * 1024) -> bytes:
    """One APPEND over the wire, the literal sent in pieces; its tagged line."""
    marker = b"%s{%d%s}" % (b"~" if literal8 else b"", len(data), b"+" if plus else b"")
    options = "".join(f"{o} " for o in (flags, f'"{date}"' if date else "") if o)
    head = f"{tag} APPEND {mailbox} {options}".encode() + marker + b"\r\n"
    wire.send(head)
    if not plus:
        line = wire.readline()
        if not line.startswith(b"+"):
            return line.rstrip(b"\r\n")
    for start in range(0, len(data), piece):
        wire.send(data[start:start + piece])
    wire.send(b"\r\n")
    return wire.response(tag).lines[-1]


def spool_files(server: PymailServer, timeout: float = 5.0) -> list[str]:
    """The spool directory's files, once it is empty (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        names = os.listdir(server.data_dir / "spool")
        if not names or time.monotonic() > deadline:
            return names
        time.sleep(0.05)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_several_large_appends_at_once_hold_bounded_memory(tmp_path: Path, storage: StorageSetup) -> None:
    """On both backend pairs, four 20 MB APPENDs at once (two synchronising literals,
    one LITERAL+, one literal8 LITERAL+ with NUL octets) grow the server's anonymous
    memory by less than MEMORY_CEILING (before: +113-118 MiB; now about +10 MiB),
    another client never waits, every byte is stored, and the spool is empty
    afterwards."""
    server = PymailServer(tmp_path, storage_config=storage.config, imaps=True)
    server.add_user(ALICE)
    server.start()
    try:
        _append_four_at_once(server)
    finally:
        server.stop()


def _append_four_at_once(server: PymailServer) -> None:
    messages = [message(BIG, f"big {n}", binary=n == 3) for n in range(4)]
    modes = [dict(), dict(), dict(plus=True), dict(plus=True, literal8=True)]
    wires = [imaps(server, ALICE) for _ in messages]
    answers: dict[int, bytes] = {}

    def run(n: int) -> None:
        answers[n] = append(wires[n], f"a{n}", messages[n], **modes[n])

    with StallProbe(server.port) as stall, MemorySampler(server.proc.pid) as memory:
        threads = [threading.Thread(target=run, args=(n,)) for n in range(len(messages))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
    print(memory.describe(), "|", stall.describe())
    assert sorted(answers) == [0, 1, 2, 3], answers
    assert all(b"OK [APPENDUID " in a for a in answers.values()), answers
    assert memory.growth_anon < MEMORY_CEILING, memory.describe()
    assert stall.longest < STALL_CEILING and not stall.failures, stall.describe()
    stored = {sha(blob) for _, blob, _ in server.inbox(ALICE)}
    assert {sha(m) for m in messages} <= stored
    assert spool_files(server) == []
    for wire in wires:
        wire.close()


def test_large_and_small_appends_are_stored_byte_exact(tmp_path: Path, storage: StorageSetup) -> None:
    """On both backend pairs: a streamed APPEND (3 MB, and a literal8 with NUL octets), a
    small one and one just over the spool threshold are stored exactly as sent, at the
    UID APPENDUID names, with their flags and date; the spool ends empty."""
    srv = PymailServer(tmp_path, storage_config=storage.config, imaps=True)
    srv.add_user(BOB)
    srv.start()
    try:
        wire = imaps(srv, BOB)
        sent = [
            (message(3 * 1000 * 1000, "streamed"), dict()),
            (message(3 * 1000 * 1000, "binary", binary=True), dict(literal8=True, plus=True)),
            (message(1024 * 1024 + 1 - 80, "just over"), dict(plus=True)),
            (message(5000, "small"), dict(flags="(\\Seen $Work)")),
        ]
        uids = []
        for n, (data, how) in enumerate(sent):
            answer = append(wire, f"a{n}", data, **how)
            assert b"OK [APPENDUID " in answer, answer
            uids.append(int(answer.split(b"[APPENDUID ")[1].split(b"]")[0].split()[1]))
        stored = {uid: (blob, flags) for uid, blob, flags in srv.inbox(BOB)}
        for uid, (data, _) in zip(uids, sent, strict=True):
            assert stored[uid][0] == data, uid
        assert stored[uids[3]][1] == frozenset({"\\Seen", "$Work"})
        answer = wire.command("s", "EXAMINE INBOX")
        answer = wire.command("f", f"UID FETCH {uids[0]} (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert f"RFC822.SIZE {len(sent[0][0])}".encode() in answer.lines[0], answer.lines
        assert spool_files(srv) == []
        wire.close()
    finally:
        srv.stop()


def test_a_client_that_hangs_up_mid_literal_leaves_no_spool_file(server: PymailServer) -> None:
    """The literal is in its spool file while it arrives; a client that hangs up (a TCP
    RST) in the middle leaves nothing: no spool file, no message, one INFO line."""
    offset = len(server.log())
    before = len(server.inbox(BOB))
    data = message(6 * 1000 * 1000, "abandoned")
    wire = imaps(server, BOB)
    wire.send(b"h APPEND INBOX {%d}\r\n" % len(data))
    assert wire.readline().startswith(b"+")
    wire.send(data[:len(data) // 2])
    deadline = time.monotonic() + 10
    while not os.listdir(server.data_dir / "spool") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(os.listdir(server.data_dir / "spool")) == 1  # half the literal is spooled
    wire.reset()
    assert spool_files(server) == []
    assert len(server.inbox(BOB)) == before
    deadline = time.monotonic() + 5
    while "reason=client_hung_up during=APPEND" not in server.log()[offset:] and time.monotonic() < deadline:
        time.sleep(0.05)
    log = server.log()[offset:]
    assert "ERROR" not in log and "Traceback" not in log, log
    # (other connections of this module's server may be closed meanwhile: only the one
    # that was in APPEND is this test's)
    closed = [line for line in log.splitlines() if "connection closed" in line and "during=APPEND" in line]
    assert len(closed) == 1 and " INFO " in closed[0] and "reason=client_hung_up" in closed[0], log


def test_a_nul_in_a_large_literal_is_refused_after_it_and_nothing_is_smuggled(server: PymailServer) -> None:
    """A NUL octet in a streamed (non-literal8) literal: the whole literal is consumed,
    then ``BAD``; command lines inside the literal are never run; nothing is stored,
    the spool is empty and the session goes on."""
    before = len(server.inbox(BOB))
    data = bytearray(message(3 * 1000 * 1000, "nul"))
    data[1500000:1500000] = b"\x00\r\nx1 DELETE INBOX\r\nx2 CREATE Smuggled\r\n"
    wire = imaps(server, BOB)
    answer = append(wire, "n", bytes(data))
    assert answer.startswith(b"n BAD "), answer
    answer = wire.command("l", 'LIST "" "*"')
    assert answer.tagged.startswith(b"OK") and not any(b"Smuggled" in line for line in answer.lines)
    assert len(server.inbox(BOB)) == before
    assert spool_files(server) == []
    # the same with LITERAL+, then a good one on the same session
    answer = append(wire, "p", bytes(data), plus=True)
    assert answer.startswith(b"p BAD "), answer
    assert b"OK [APPENDUID " in append(wire, "q", message(2 * 1000 * 1000, "fine"), plus=True)
    assert len(server.inbox(BOB)) == before + 1
    wire.close()


def test_large_append_limits_and_refusals(server: PymailServer) -> None:
    """APPENDLIMIT still refuses before the literal (``NO [TOOBIG]``, no ``+``); an
    APPEND to a missing mailbox and trailing junk after a streamed literal are refused
    after it, with nothing stored and no spool file left; a literal behind a streamed
    one is a second message (MULTIAPPEND), not a command."""
    before = len(server.inbox(BOB))
    wire = imaps(server, BOB)
    wire.send(b"t APPEND INBOX {%d}\r\n" % (200 * 1024 * 1024))
    assert wire.readline().startswith(b"t NO [TOOBIG]")
    data = message(2 * 1000 * 1000, "nowhere")
    assert append(wire, "m", data, mailbox="Nowhere").startswith(b"m NO [TRYCREATE]")
    wire.send(b"j APPEND INBOX {%d+}\r\n" % len(data) + data + b" junk\r\n")
    assert wire.response("j").tagged.startswith(b"BAD"), "trailing text after the message"
    assert len(server.inbox(BOB)) == before
    # a second literal behind a streamed one is the next message (MULTIAPPEND, RFC 3502):
    # its octets are a message, never read as a command
    wire.send(b"k APPEND INBOX {%d+}\r\n" % len(data) + data + b" {20+}\r\nk2 DELETE INBOX\r\n123\r\n")
    answer = wire.response("k")
    assert answer.lines == [answer.lines[-1]] and answer.tagged.startswith(b"OK [APPENDUID ")
    assert answer.tagged.split(b"]")[0].endswith(b":%d" % (int(answer.tagged.split()[3].split(b":")[0]) + 1))
    assert wire.command("z", "NOOP").tagged.startswith(b"OK")
    assert len(server.inbox(BOB)) == before + 2
    assert spool_files(server) == []
    wire.close()


def test_a_large_append_over_quota_is_refused_and_leaves_nothing(server: PymailServer) -> None:
    """virtual_users.quota: a streamed APPEND that would pass it gets ``NO [OVERQUOTA]``
    once its literal arrived; nothing is stored, the spool is empty; one under it goes."""
    user = "quota@example.test"
    server.cli("user", "add", user, "--quota", "3MB", "--password-stdin", input="secret-pw\n")
    wire = imaps(server, user)
    answer = append(wire, "q", message(4 * 1000 * 1000, "over quota"))
    assert answer == b"q NO [OVERQUOTA] Quota exceeded", answer
    assert server.inbox(user) == [] and spool_files(server) == []
    assert b"OK [APPENDUID " in append(wire, "r", message(2 * 1000 * 1000, "under quota"), plus=True)
    wire.close()


def test_a_streamed_literal_slower_than_the_minimum_data_rate_is_cut(server: PymailServer) -> None:
    """``limits.min_data_rate`` holds for a streamed literal as for one kept whole: after
    ``command_timeout`` (5 s here) of grace the literal must average 500 octets/s, else
    ``* BYE Literal data too slow``; its spool file is removed."""
    wire = imaps(server, BOB)
    wire.send(b"s APPEND INBOX {3000000}\r\n")
    assert wire.readline().startswith(b"+")
    started = time.monotonic()
    wire.send(b"x" * 1000)
    deadline = time.monotonic() + 5
    while not os.listdir(server.data_dir / "spool") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(os.listdir(server.data_dir / "spool")) == 1  # spooled from the first octets
    said = wire.closed_by_server(within=30)
    waited = time.monotonic() - started
    assert b"* BYE Literal data too slow" in said, said
    assert 4 < waited < 20, waited
    assert spool_files(server) == []


def appended_uid(answer: bytes) -> int:
    assert b"OK [APPENDUID " in answer, answer
    return int(answer.split(b"[APPENDUID ")[1].split(b"]")[0].split()[1])


def test_appended_messages_come_back_byte_identical_without_trace_headers(server: PymailServer) -> None:
    """APPEND goes through the delivery pipeline the MX uses, but the MX's trace headers
    are the MX's: BODY.PEEK[] of an appended message is exactly the octets appended (RFC
    3501 section 6.3.11), with no Received or Return-Path added -- small (in memory) and
    streamed (spool file) alike, and one that brings its own Return-Path keeps it as it
    was; the flags and the date the client gave are the copy's."""
    wire = imaps(server, BOB)
    own_return_path = b"Return-Path: <someone@remote.example>\r\n" + message(3000, "own return path")
    sent = [
        (message(4000, "small draft"), dict(flags="(\\Draft)")),
        (own_return_path, dict()),
        (message(2 * 1000 * 1000, "streamed draft"),
         dict(flags="(\\Seen $Work)", date="05-Jan-2026 12:00:00 +0100", plus=True)),
    ]
    uids = [appended_uid(append(wire, f"a{n}", data, mailbox="Drafts", **how))
            for n, (data, how) in enumerate(sent)]
    assert wire.command("s", "EXAMINE Drafts").tagged.startswith(b"OK")
    for uid, (data, _) in zip(uids, sent, strict=True):
        answer = wire.command("f", f"UID FETCH {uid} (BODY.PEEK[])", keep_literals=True)
        assert answer.tagged.startswith(b"OK") and answer.literals == [data], uid
        head = data.split(b"\r\n\r\n", 1)[0].lower()
        assert b"received:" not in head
        assert head.startswith(b"return-path:") == (data is own_return_path)
    answer = wire.command("d", f"UID FETCH {uids[2]} (FLAGS INTERNALDATE)")
    # the instant given (pymail answers in UTC)
    assert b'INTERNALDATE " 5-Jan-2026 11:00:00 +0000"' in answer.lines[0], answer.lines
    assert b"\\Seen" in answer.lines[0] and b"$Work" in answer.lines[0], answer.lines
    assert {uid: flags for uid, _, flags in server.inbox(BOB, "Drafts")}[uids[0]] == frozenset({"\\Draft"})
    assert spool_files(server) == []
    wire.close()
