"""SORT, SORT=DISPLAY, THREAD and ESORT end to end over IMAPS against a real pymail
process, on both backend pairs (RFC 5256 section 3, RFC 5957, RFC 5267 section 3): a
small realistic conversation, with its UIDs apart from its sequence numbers (the first
message is expunged), and the RFCs' own exchanges where they give one."""

from __future__ import annotations

import imaplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.e2e.test_imap import tagged, transact
from tests.e2e.wire import seed_message
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
PASSWORD = "secret-pw"

#: (From, Subject, Message-ID, extra header lines, day of April 2024)
CONVERSATION = [
    ("Anne <anne@x.example>", "Plan", "<a@x>", "", 1),
    ("Bob <bob@x.example>", "Re: Plan", "<b@x>", "In-Reply-To: <a@x>\r\nReferences: <a@x>\r\n", 2),
    ("Anne <anne@x.example>", "Re: Plan", "<c@x>", "References: <a@x>\r\n <b@x>\r\n", 3),
    ("carl@x.example", "RE: [team] Plan", "<d@x>", "In-Reply-To: <a@x> (Anne's message)\r\n", 4),
    ("Zoe <aaa@x.example>", "Other", "<e@x>", "", 0),
    ("Bob <bob@x.example>", "Re: Lost", "<f@x>", "References: <gone@x>\r\n", 6),
    ("Anne <anne@x.example>", "Re: Lost", "<g@x>", "References: <gone@x>\r\n", 7),
    ("Zoe <aaa@x.example>", "Re: Other (fwd)", "<h@x>", "", 8),
]


def raw(sender: str, subject: str, message_id: str, extra: str, day: int) -> bytes:
    return (f"From: {sender}\r\nTo: Alice <alice@example.test>\r\nSubject: {subject}\r\n"
            f"Date: {'Sun, 31 Mar' if day == 0 else f'{day:02d} Apr'} 2024 10:00:00 +0200\r\n"
            f"Message-ID: {message_id}\r\n{extra}\r\nHello, {subject}.\r\n").encode()


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, storage_config=storage.config, imaps=True)
    srv.add_user(ALICE)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


@pytest.fixture
def client(server: PymailServer) -> Iterator[imaplib.IMAP4_SSL]:
    seed_message(server, ALICE, raw("x@x.example", "gone", "<z@x>", "", 9))
    for message in CONVERSATION:
        seed_message(server, ALICE, raw(*message))
    client = server.imaps_client()
    client.login(ALICE, PASSWORD)
    assert tagged(transact(client, "SELECT INBOX")).startswith(b"OK")
    assert tagged(transact(client, "STORE 1 +FLAGS (\\Deleted)")).startswith(b"OK")
    assert tagged(transact(client, "EXPUNGE")).startswith(b"OK")  # UID = sequence + 1 now
    try:
        yield client
    finally:
        client.logout()


def answer(client: imaplib.IMAP4, text: str, completed: bytes) -> list[bytes]:
    lines = transact(client, text)
    assert tagged(lines) == b"OK " + completed, lines
    return lines[:-1]


def test_capabilities(client: imaplib.IMAP4_SSL) -> None:
    caps = answer(client, "CAPABILITY", b"Completed")[0].split()
    for name in (b"SORT", b"SORT=DISPLAY", b"THREAD=ORDEREDSUBJECT", b"THREAD=REFERENCES",
                 b"ESORT"):
        assert name in caps, caps


def test_sort(client: imaplib.IMAP4_SSL) -> None:
    # sent dates in UTC; message 5 is the oldest
    assert answer(client, "SORT (REVERSE DATE) UTF-8 ALL", b"SORT completed") == [
        b"* SORT 8 7 6 4 3 2 1 5"]
    # base subjects: lost < other < plan, ties in sequence order
    assert answer(client, "UID SORT (SUBJECT) UTF-8 ALL", b"SORT completed") == [
        b"* SORT 7 8 6 9 2 3 4 5"]
    assert answer(client, "SORT (FROM REVERSE DATE) UTF-8 ALL", b"SORT completed") == [
        b"* SORT 8 5 7 3 1 6 2 4"]
    # RFC 5957: the display name, else the address
    assert answer(client, "SORT (DISPLAYFROM) UTF-8 ALL", b"SORT completed") == [
        b"* SORT 1 3 7 2 6 4 5 8"]
    assert answer(client, "SORT (SUBJECT DATE) UTF-8 FROM anne", b"SORT completed") == [
        b"* SORT 7 1 3"]
    # RFC 5256 section 4's example of no match
    assert answer(client, 'SORT (SUBJECT) US-ASCII TEXT "not in mailbox"',
                  b"SORT completed") == [b"* SORT"]
    lines = transact(client, "SORT (DATE) KOI8-R ALL")
    assert tagged(lines).startswith(b"NO [BADCHARSET (UTF-8 US-ASCII)]"), lines
    assert tagged(transact(client, "SORT (DATE) ALL")).startswith(b"BAD")


def test_thread(client: imaplib.IMAP4_SSL) -> None:
    assert answer(client, "THREAD REFERENCES UTF-8 ALL", b"THREAD completed") == [
        b"* THREAD (5 8)(1 (2 3)(4))((6)(7))"]
    assert answer(client, "UID THREAD REFERENCES UTF-8 ALL", b"THREAD completed") == [
        b"* THREAD (6 9)(2 (3 4)(5))((7)(8))"]
    assert answer(client, "THREAD ORDEREDSUBJECT UTF-8 ALL", b"THREAD completed") == [
        b"* THREAD (5 8)(1 (2)(3)(4))(6 7)"]
    assert answer(client, 'THREAD ORDEREDSUBJECT US-ASCII TEXT "gewp"',
                  b"THREAD completed") == [b"* THREAD"]
    assert tagged(transact(client, "THREAD FOO UTF-8 ALL")).startswith(b"BAD")


def test_esort(client: imaplib.IMAP4_SSL) -> None:
    tag = client._new_tag().decode()
    client.send(f"{tag} SORT RETURN (MIN COUNT) (DATE) UTF-8 ALL\r\n".encode())
    assert client.readline() == f'* ESEARCH (TAG "{tag}") MIN 5 COUNT 8\r\n'.encode()
    assert client.readline().startswith(f"{tag} OK".encode())
    lines = answer(client, "UID SORT RETURN (MAX ALL) (REVERSE DATE) UTF-8 NOT FROM zoe",
                   b"SORT completed")
    assert len(lines) == 1 and lines[0].endswith(b" UID MAX 2 ALL 8,7,5,4,3,2"), lines
    lines = answer(client, "SORT RETURN () (SUBJECT) UTF-8 SUBJECT lost", b"SORT completed")
    assert lines[0].endswith(b" ALL 6:7"), lines
    lines = answer(client, "SORT RETURN (COUNT) (SUBJECT) UTF-8 SUBJECT nothing", b"SORT completed")
    assert lines[0].endswith(b" COUNT 0"), lines
