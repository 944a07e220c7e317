"""IMAPClient (the `imapclient` library, over imaplib) against a real pymail over real
IMAPS, verified against the embedded private CA, on both backend pairs.

Mail is delivered by smtplib to the same process and read back through the
Index/BlobStore interfaces, so every body the client fetches is compared byte for byte
with what the store holds, and every UID is the exact one the RFCs make it:

* the mailbox session: LOGIN, LIST with the special-use attributes (RFC 6154), SELECT,
  FETCH ENVELOPE/BODY[]/FLAGS (BODY[] sets \\Seen, RFC 3501 section 6.4.5), STORE,
  MOVE (RFC 6851) and COPY with COPYUID, APPEND with APPENDUID (RFC 4315), SEARCH,
  \\Deleted + EXPUNGE;
* IDLE (RFC 2177) in a second connection, which is told of a delivery (EXISTS) and of
  another connection's expunge (EXPUNGE).
"""

from __future__ import annotations

import datetime as dt
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.e2e.test_imap import deliver
from tests.pymail_harness import PymailServer, client_module

imapclient = client_module("imapclient", "the Python package imapclient>=3 (pyproject.toml [test])", minversion="3")

ALICE = "alice@example.test"
PASSWORD = "secret-pw"
IDLE_WAIT_SECONDS = 30  #: bound on waiting for an IDLE update (a hang guard, not a measure)


def make_message(n: int) -> bytes:
    return (
        b"From: Carol Example <carol@remote.example>\r\n"
        b"To: Alice <alice@example.test>\r\n"
        b"Subject: imapclient test %d\r\n"
        b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
        b"Message-ID: <imapclient-%d@remote.example>\r\n"
        b"\r\n"
        b"body of message %d\r\n"
        b"second line\r\n" % (n, n, n)
    )


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    """pymail with IMAPS and user alice, on each backend pair."""
    (tmp_path / "srv").mkdir()
    srv = PymailServer(tmp_path / "srv", storage_config=storage.config, imaps=True)
    srv.add_user(ALICE, PASSWORD)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def connect(server: PymailServer):
    """An IMAPClient over IMAPS, the certificate verified against the private CA."""
    context = ssl.create_default_context(cafile=str(server.ca_file))
    client = imapclient.IMAPClient("127.0.0.1", port=server.imaps_port, ssl=True,
                                   ssl_context=context, timeout=30)
    client.normalise_times = False  # dates as sent (timezone-aware), not local naive
    client.login(ALICE, PASSWORD)
    return client


def response_code(client, name: str) -> list[bytes]:
    """The arguments of every `[name ...]` response code since last asked (tagged or
    untagged), e.g. [b"7 1 3"] for "[COPYUID 7 1 3]".  imaplib files response codes by
    name and `IMAP4.response()` hands them out; IMAPClient's COPY/MOVE (UID forms)
    return nothing of the tagged text."""
    code, data = client._imap.response(name)
    assert code == name
    return [] if data == [None] else data


def stored(server: PymailServer, mailbox: str = "INBOX") -> dict[int, tuple[bytes, frozenset[str]]]:
    """{uid: (blob, flags)} of alice's mailbox, read through the storage interfaces."""
    return {uid: (blob, flags) for uid, blob, flags in server.inbox(ALICE, mailbox)}


def test_imapclient_mailbox_session(server: PymailServer) -> None:
    deliver(server, make_message(1))
    deliver(server, make_message(2))
    inbox = stored(server)
    assert sorted(inbox) == [1, 2]
    blob1, blob2 = inbox[1][0], inbox[2][0]
    assert blob1.endswith(make_message(1)) and blob2.endswith(make_message(2))

    client = connect(server)
    try:
        capabilities = set(client.capabilities())
        assert {b"IMAP4REV1", b"IDLE", b"MOVE", b"UIDPLUS", b"SPECIAL-USE"} <= capabilities, capabilities

        # LIST: the default folders, each special-use one with its attribute (RFC 6154).
        folders = {name: set(flags) for flags, delimiter, name in client.list_folders()}
        assert {delimiter for _, delimiter, _ in client.list_folders()} == {b"/"}
        assert folders == {
            "INBOX": {b"\\HasNoChildren"},
            "Sent": {b"\\HasNoChildren", b"\\Sent"},
            "Drafts": {b"\\HasNoChildren", b"\\Drafts"},
            "Trash": {b"\\HasNoChildren", b"\\Trash"},
            "Junk": {b"\\HasNoChildren", b"\\Junk"},
            "Archive": {b"\\HasNoChildren", b"\\Archive"},
        }, folders
        assert client.find_special_folder(imapclient.imapclient.SENT) == "Sent"
        assert client.find_special_folder(imapclient.imapclient.ARCHIVE) == "Archive"

        # SELECT
        # the first SELECT takes the new mail as \\Recent (RFC 3501 2.3.2); this test is
        # about other flags, so it goes on in a selection that has none recent
        assert client.select_folder("INBOX")[b"RECENT"] == 2
        selected = client.select_folder("INBOX")
        assert selected[b"RECENT"] == 0, selected
        assert selected[b"EXISTS"] == 2, selected
        assert selected[b"UIDNEXT"] == 3, selected
        assert selected[b"READ-WRITE"] is True, selected
        inbox_validity = selected[b"UIDVALIDITY"]

        # FETCH: the body byte for byte; BODY[] (not PEEK) sets \Seen and says so.
        fetched = client.fetch([1], ["ENVELOPE", "BODY[]", "FLAGS"])
        assert list(fetched) == [1]
        item = fetched[1]
        assert item[b"BODY[]"] == blob1
        assert set(item[b"FLAGS"]) == {b"\\Seen"}, item
        assert item[b"SEQ"] == 1
        envelope = item[b"ENVELOPE"]
        assert envelope.subject == b"imapclient test 1"
        assert envelope.message_id == b"<imapclient-1@remote.example>"
        assert envelope.date == dt.datetime(2026, 3, 2, 10, 0, 0, tzinfo=dt.timezone.utc)
        [sender] = envelope.from_
        assert (sender.name, sender.mailbox, sender.host) == (b"Carol Example", b"carol", b"remote.example")
        [recipient] = envelope.to
        assert (recipient.name, recipient.mailbox, recipient.host) == (b"Alice", b"alice", b"example.test")
        assert envelope.cc is None and envelope.bcc is None
        assert stored(server)[1][1] == frozenset({"\\Seen"})

        # STORE: replace, add, remove; the store agrees.
        assert {u: set(f) for u, f in client.set_flags([1], [b"\\Flagged", b"$Label1"]).items()} == \
            {1: {b"\\Flagged", b"$Label1"}}
        client.add_flags([1], [b"\\Seen"])
        client.remove_flags([1], [b"$Label1"])
        assert {u: set(f) for u, f in client.get_flags([1, 2]).items()} == \
            {1: {b"\\Flagged", b"\\Seen"}, 2: set()}
        assert stored(server)[1][1] == frozenset({"\\Flagged", "\\Seen"})

        # MOVE uid 1 to Archive: COPYUID in the untagged OK before the EXPUNGE
        # (RFC 6851 section 4.3), the message gone from INBOX, byte-identical in Archive.
        archive_validity = client.folder_status("Archive", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
        assert response_code(client, "COPYUID") == []  # none before the MOVE
        client.move([1], "Archive")
        assert response_code(client, "COPYUID") == [b"%d 1 1" % archive_validity]
        assert client.search("ALL") == [2]
        assert sorted(stored(server)) == [2]

        # COPY uid 2 to Archive: COPYUID in the tagged OK (RFC 4315 section 3).
        client.copy([2], "Archive")
        assert response_code(client, "COPYUID") == [b"%d 2 2" % archive_validity]
        assert sorted(stored(server)) == [2]  # COPY leaves the source alone

        archive = stored(server, "Archive")
        assert {u: blob for u, (blob, _) in archive.items()} == {1: blob1, 2: blob2}
        assert {u: flags for u, (_, flags) in archive.items()} == \
            {1: frozenset({"\\Flagged", "\\Seen"}), 2: frozenset()}

        # APPEND to Sent: APPENDUID names the new message; flags and date kept.
        sent_message = make_message(3).replace(b"To: Alice", b"To: Dave").replace(
            b"carol@remote.example", b"alice@example.test")
        moment = dt.datetime(2026, 3, 3, 8, 30, 15, tzinfo=dt.timezone.utc)
        appended = client.append("Sent", sent_message, flags=[b"\\Seen"], msg_time=moment)
        sent_validity = client.folder_status("Sent", [b"UIDVALIDITY"])[b"UIDVALIDITY"]
        assert appended.startswith(b"[APPENDUID %d 1] " % sent_validity), appended
        assert response_code(client, "APPENDUID") == [b"%d 1" % sent_validity]
        assert stored(server, "Sent") == {1: (sent_message, frozenset({"\\Seen"}))}
        client.select_folder("Sent", readonly=True)
        fetched = client.fetch([1], ["BODY.PEEK[]", "FLAGS", "INTERNALDATE", "RFC822.SIZE"])
        assert fetched[1][b"BODY[]"] == sent_message
        # EXAMINE shows the APPENDed message \\Recent without taking it (RFC 3501 2.3.2)
        assert set(fetched[1][b"FLAGS"]) == {b"\\Seen", b"\\Recent"}
        assert fetched[1][b"RFC822.SIZE"] == len(sent_message)
        assert fetched[1][b"INTERNALDATE"] == moment

        # SEARCH in Archive.
        selected = client.select_folder("Archive")
        assert selected[b"EXISTS"] == 2 and selected[b"UIDVALIDITY"] == archive_validity
        assert client.search("ALL") == [1, 2]
        assert client.search(["FROM", "carol"]) == [1, 2]
        assert client.search(["SUBJECT", "imapclient test 2"]) == [2]
        assert client.search("FLAGGED") == [1]
        assert client.search("UNSEEN") == [2]
        assert client.search(["HEADER", "Message-ID", "<imapclient-1@remote.example>"]) == [1]
        assert client.search(["NOT", "FROM", "carol"]) == []

        # \Deleted + EXPUNGE: the EXPUNGE response names sequence number 2.
        # copies are \\Recent for the first SELECT of Archive (RFC 3501 6.4.7, 2.3.2)
        assert {u: set(f) for u, f in client.delete_messages([2]).items()} == {2: {b"\\Deleted", b"\\Recent"}}
        text, responses = client.expunge()
        assert (2, b"EXPUNGE") in responses, responses
        assert [r for r in responses if len(r) > 1 and r[1] == b"EXPUNGE"] == [(2, b"EXPUNGE")]
        assert client.search("ALL") == [1]
        assert sorted(stored(server, "Archive")) == [1]

        # INBOX keeps its UIDVALIDITY and its remaining message.
        selected = client.select_folder("INBOX")
        assert selected[b"UIDVALIDITY"] == inbox_validity and selected[b"EXISTS"] == 1
        assert client.fetch([2], ["BODY.PEEK[]"])[2][b"BODY[]"] == blob2
    finally:
        client.logout()


def idle_until(client, wanted: tuple[int, bytes]) -> list[tuple]:
    """IDLE responses until `wanted` (e.g. (2, b"EXISTS")) arrives; fails after
    IDLE_WAIT_SECONDS (a guard against a hang, not a speed requirement)."""
    seen: list[tuple] = []
    deadline = time.monotonic() + IDLE_WAIT_SECONDS
    while wanted not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{wanted} never pushed while idling; got {seen}"
        seen += client.idle_check(timeout=min(remaining, 5))
    return seen


def test_imapclient_idle_sees_delivery_and_expunge(server: PymailServer) -> None:
    deliver(server, make_message(1))
    watcher = connect(server)
    other = connect(server)
    try:
        assert watcher.select_folder("INBOX")[b"EXISTS"] == 1
        watcher.idle()

        # A delivery while idling: "* 2 EXISTS".
        deliver(server, make_message(2))
        seen = idle_until(watcher, (2, b"EXISTS"))
        assert {r for r in seen if len(r) > 1 and r[1] == b"EXISTS"} == {(2, b"EXISTS")}, seen
        assert not [r for r in seen if len(r) > 1 and r[1] == b"EXPUNGE"], seen
        assert sorted(stored(server)) == [1, 2]

        # Another connection expunges message 1: "* 1 EXPUNGE" to the idler.
        assert other.select_folder("INBOX")[b"EXISTS"] == 2
        other.delete_messages([1])
        other.uid_expunge([1])
        assert other.search("ALL") == [2]
        seen = idle_until(watcher, (1, b"EXPUNGE"))
        assert [r for r in seen if len(r) > 1 and r[1] == b"EXPUNGE"] == [(1, b"EXPUNGE")], seen

        text, responses = watcher.idle_done()
        # Nothing more to tell: no second EXPUNGE (it would remove another message), and
        # an EXISTS, if any, says the one message left.
        assert not [r for r in responses if len(r) > 1 and r[1] == b"EXPUNGE"], responses
        assert all(r == (1, b"EXISTS") for r in responses if len(r) > 1 and r[1] == b"EXISTS"), responses
        # After DONE the idler's view is one message, UID 2, byte-identical to the store.
        assert watcher.search("ALL") == [2]
        [(uid, blob, _)] = server.inbox(ALICE)
        assert uid == 2
        assert watcher.fetch([2], ["BODY.PEEK[]"])[2][b"BODY[]"] == blob
    finally:
        other.logout()
        watcher.logout()
