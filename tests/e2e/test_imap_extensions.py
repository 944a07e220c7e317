"""IMAP extensions end to end over IMAPS against a real pymail process, on both backend
pairs: CONDSTORE (RFC 7162), ESEARCH (RFC 4731) and SEARCHRES (RFC 5182), SEARCH
BODY/TEXT, BINARY (RFC 3516), QUOTA (RFC 9208) and APPENDLIMIT (RFC 7889), LIST-STATUS
(RFC 5819) and RECURSIVEMATCH (RFC 5258), IMAP4rev2 via ENABLE (RFC 9051), and IDLE
woken across nodes by the index's change feed."""

from __future__ import annotations

import base64
import imaplib
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup, make_storage
from tests.e2e.test_imap import MESSAGE, deliver, tagged, transact
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
QUOTA_USER = "quota@example.test"
PASSWORD = "secret-pw"
APPEND_LIMIT = 64 * 1024

SECRET = "the hidden treasure is under the café"
ENCODED = (
    b"From: Dave <dave@remote.example>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: encoded\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"zz\"\r\n"
    b"\r\n"
    b"--zz\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(SECRET.encode()).replace(b"\n", b"\r\n") +
    b"--zz\r\n"
    b"Content-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Gr=FC=DFe aus der K=FCche, with a soft=\r\n"
    b" break\r\n"
    b"--zz--\r\n"
)


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    """IMAPS with a 64 KiB message size limit (APPENDLIMIT), alice, and a user whose
    quota is 8 KiB."""
    srv = PymailServer(tmp_path, storage_config=storage.config, imaps=True,
                       extra_config=f'[limits]\nmessage_size = "{APPEND_LIMIT // 1024}KB"\n')
    srv.add_user(ALICE)
    srv.cli("user", "add", QUOTA_USER, "--quota", "8KB", "--password-stdin", input=PASSWORD + "\n")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def login(server: PymailServer, user: str = ALICE) -> imaplib.IMAP4_SSL:
    client = server.imaps_client()
    client.login(user, PASSWORD)
    return client


def ok(lines: list[bytes]) -> list[bytes]:
    assert tagged(lines).startswith(b"OK"), lines
    return lines[:-1]


def modseq_of(line: bytes) -> int:
    match = re.search(rb"MODSEQ \((\d+)\)", line)
    assert match, line
    return int(match.group(1))


def test_condstore(server: PymailServer) -> None:
    deliver(server, MESSAGE)
    deliver(server, ENCODED)
    client = login(server)
    # the first SELECT takes the new mail as \\Recent (RFC 3501 2.3.2); this test is
    # about other flags, so its FETCHes come from a session that has none recent
    ok(transact(client, "SELECT INBOX"))
    lines = ok(transact(client, "SELECT INBOX (CONDSTORE)"))
    highest = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", b"\n".join(lines)).group(1))
    untouched = ok(transact(client, "FETCH 1:* (FLAGS)"))  # CONDSTORE on: MODSEQ too
    assert len(untouched) == 2 and all(b"MODSEQ (" in line for line in untouched)
    lines = ok(transact(client, "STORE 1 +FLAGS (\\Flagged)"))
    assert re.fullmatch(rb"\* 1 FETCH \(FLAGS \(\\Flagged\) MODSEQ \(\d+\)\)", lines[0]), lines
    flagged = modseq_of(lines[0])
    assert flagged > highest
    # CHANGEDSINCE: only what changed after the given MODSEQ, with its MODSEQ
    lines = ok(transact(client, f"FETCH 1:* (FLAGS) (CHANGEDSINCE {highest})"))
    assert lines == [b"* 1 FETCH (FLAGS (\\Flagged) MODSEQ (%d))" % flagged]
    # UNCHANGEDSINCE older than message 1's MODSEQ: refused for 1 (MODIFIED), done for 2
    lines = transact(client, f"STORE 1:2 (UNCHANGEDSINCE {flagged - 1}) +FLAGS.SILENT (\\Answered)")
    assert tagged(lines).startswith(b"OK [MODIFIED 1]"), lines
    assert len(lines) == 2 and lines[0].startswith(b"* 2 FETCH (MODSEQ (")  # even though .SILENT
    answered = modseq_of(lines[0])
    lines = ok(transact(client, "UID FETCH 1:* (FLAGS)"))
    assert b"\\Answered" not in lines[0] and b"\\Answered" in lines[1]
    # SEARCH MODSEQ: matches, and the highest MODSEQ among them
    lines = ok(transact(client, f"SEARCH MODSEQ {flagged + 1}"))
    assert lines == [b"* SEARCH 2 (MODSEQ %d)" % answered]
    lines = ok(transact(client, "STATUS Sent (HIGHESTMODSEQ MESSAGES)"))
    assert re.fullmatch(rb'\* STATUS "Sent" \(HIGHESTMODSEQ \d+ MESSAGES 0\)', lines[0])
    client.logout()


def test_esearch_and_searchres(server: PymailServer) -> None:
    for _ in range(3):
        deliver(server, MESSAGE)
    deliver(server, ENCODED)
    client = login(server)
    ok(transact(client, "SELECT INBOX"))
    lines = ok(transact(client, "SEARCH RETURN (MIN MAX COUNT ALL) FROM carol"))
    assert re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) MIN 1 MAX 3 ALL 1:3 COUNT 3', lines[0]), lines
    lines = ok(transact(client, "UID SEARCH RETURN () ALL"))
    assert re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) UID ALL 1:4', lines[0]), lines
    lines = ok(transact(client, "SEARCH RETURN (COUNT) SUBJECT nothing-like-this"))
    assert re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) COUNT 0', lines[0]), lines
    # SAVE: no ESEARCH response; then $ names the saved messages
    assert ok(transact(client, "SEARCH RETURN (SAVE) OR SUBJECT encoded UID 2")) == []
    lines = ok(transact(client, "FETCH $ (UID)"))
    assert lines == [b"* 2 FETCH (UID 2)", b"* 4 FETCH (UID 4)"]
    lines = ok(transact(client, "UID SEARCH UID $ NOT SUBJECT encoded"))
    assert lines == [b"* SEARCH 2"]
    # SAVE with MIN only keeps just the minimum (RFC 5182 section 2.4)
    lines = ok(transact(client, "SEARCH RETURN (SAVE MIN) ALL"))
    assert re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) MIN 1', lines[0]), lines
    assert ok(transact(client, "FETCH $ (UID)")) == [b"* 1 FETCH (UID 1)"]
    client.logout()


def test_search_body_and_text_decode_parts(server: PymailServer) -> None:
    deliver(server, MESSAGE)
    deliver(server, ENCODED)
    client = login(server)
    ok(transact(client, "SELECT INBOX"))
    assert ok(transact(client, "SEARCH BODY treasure")) == [b"* SEARCH 2"]  # inside base64
    assert ok(transact(client, 'SEARCH CHARSET UTF-8 BODY "Küche"')) == [b"* SEARCH 2"]
    assert ok(transact(client, 'SEARCH BODY "soft break"')) == [b"* SEARCH 2"]  # QP soft break
    assert ok(transact(client, "SEARCH BODY dave@remote")) == [b"* SEARCH"]  # a header only
    assert ok(transact(client, "SEARCH TEXT dave@remote")) == [b"* SEARCH 2"]
    assert ok(transact(client, 'SEARCH BODY "first part"')) == [b"* SEARCH 1"]
    assert ok(transact(client, "SEARCH NOT BODY treasure")) == [b"* SEARCH 1"]
    assert ok(transact(client, "SEARCH YOUNGER 3600")) == [b"* SEARCH 1 2"]
    assert ok(transact(client, "SEARCH OLDER 3600")) == [b"* SEARCH"]
    client.logout()


def test_binary_fetch_and_append(server: PymailServer) -> None:
    deliver(server, MESSAGE)
    client = login(server)
    # the first SELECT takes the new mail as \\Recent (RFC 3501 2.3.2); this test is
    # about other flags, so its FETCHes come from a session that has none recent
    ok(transact(client, "SELECT INBOX"))
    ok(transact(client, "SELECT INBOX"))
    # part 2 is base64 "AAECAw==": four octets with a NUL, so a literal8
    lines = ok(transact(client, "FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1]<0.5>)"))
    assert lines[0] == b"* 1 FETCH (BINARY[2] ~{4}"
    assert lines[1] == b"\x00\x01\x02\x03 BINARY.SIZE[2] 4 BINARY[1]<0> {5}"
    assert lines[2] == b"first)"
    assert ok(transact(client, "FETCH 1 (FLAGS)")) == [b"* 1 FETCH (FLAGS ())"]  # PEEK
    lines = ok(transact(client, "FETCH 1 (BINARY[1])"))  # not PEEK: sets \Seen
    assert lines == [b"* 1 FETCH (BINARY[1] {10}", b"first part FLAGS (\\Seen))"]
    # APPEND with a literal8: stored byte for byte
    message = b"Subject: binary\r\nContent-Transfer-Encoding: binary\r\n\r\nnul\x00here\r\n"
    tag = client._new_tag().decode()
    client.send(f"{tag} APPEND INBOX ~{{{len(message)}+}}\r\n".encode() + message + b"\r\n")
    assert client.readline() == b"* 2 EXISTS\r\n"  # INBOX is selected
    assert client.readline() == b"* 1 RECENT\r\n"  # and new mail is recent here
    reply = client.readline()
    assert reply.startswith(f"{tag} OK [APPENDUID ".encode()), reply
    uid = int(reply.split()[4].rstrip(b"]"))
    stored = {u: blob for u, blob, _ in server.inbox(ALICE)}
    assert stored[uid] == message
    client.logout()


def test_quota_and_appendlimit(server: PymailServer) -> None:
    client = login(server)
    assert f"APPENDLIMIT={APPEND_LIMIT}" in client.capabilities
    lines = ok(transact(client, "STATUS INBOX (APPENDLIMIT)"))
    assert lines == [b'* STATUS "INBOX" (APPENDLIMIT %d)' % APPEND_LIMIT]
    # no quota: no quota root
    assert ok(transact(client, "GETQUOTAROOT INBOX")) == [b'* QUOTAROOT "INBOX"']
    assert tagged(transact(client, 'GETQUOTA ""')).startswith(b"NO [NONEXISTENT]")
    # over APPENDLIMIT: refused before the literal is sent (no continuation)
    tag = client._new_tag().decode()
    client.send(f"{tag} APPEND INBOX {{{APPEND_LIMIT + 1}}}\r\n".encode())
    assert client.readline().startswith(f"{tag} NO [TOOBIG]".encode())
    client.logout()

    client = login(server, QUOTA_USER)
    deliver(server, b"Subject: small\r\n\r\n" + b"x" * 3000 + b"\r\n", to=QUOTA_USER)
    lines = ok(transact(client, "GETQUOTAROOT INBOX"))
    assert lines[0] == b'* QUOTAROOT "INBOX" ""'
    assert re.fullmatch(rb'\* QUOTA "" \(STORAGE (\d+) 8\)', lines[1]), lines
    used = int(re.search(rb"STORAGE (\d+)", lines[1]).group(1))
    assert used >= 3  # KiB, rounded up
    message = b"Subject: big\r\n\r\n" + b"y" * 6000 + b"\r\n"  # 3 KiB + 6 KiB > 8 KiB
    tag = client._new_tag().decode()
    client.send(f"{tag} APPEND INBOX {{{len(message)}+}}\r\n".encode() + message + b"\r\n")
    assert client.readline().startswith(f"{tag} NO [OVERQUOTA]".encode())
    assert len(server.inbox(QUOTA_USER)) == 1
    client.logout()


def test_list_status_and_recursivematch(server: PymailServer) -> None:
    deliver(server, MESSAGE)
    client = login(server)
    ok(transact(client, "CREATE Projects/alpha"))
    ok(transact(client, "SUBSCRIBE Projects/alpha"))
    ok(transact(client, "UNSUBSCRIBE Projects"))
    lines = ok(transact(client, 'LIST "" "INBOX" RETURN (STATUS (MESSAGES UIDNEXT UNSEEN))'))
    assert lines == [b'* LIST (\\HasNoChildren) "/" "INBOX"',
                     b'* STATUS "INBOX" (MESSAGES 1 UIDNEXT 2 UNSEEN 1)']
    lines = ok(transact(client, 'LIST (SUBSCRIBED RECURSIVEMATCH) "" "Projects%"'))
    assert lines == [b'* LIST (\\HasChildren) "/" "Projects" ("CHILDINFO" ("SUBSCRIBED"))']
    lines = ok(transact(client, 'LIST (SUBSCRIBED) "" "Projects*"'))
    assert lines == [b'* LIST (\\HasNoChildren \\Subscribed) "/" "Projects/alpha"']
    assert tagged(transact(client, 'LIST (RECURSIVEMATCH) "" "*"')).startswith(b"BAD")
    # LSUB: the unsubscribed parent of a subscribed child matches "%" as \Noselect
    assert ok(transact(client, 'LSUB "" "Projects%"')) == [b'* LSUB (\\Noselect) "/" "Projects"']
    assert ok(transact(client, 'LSUB "" "Projects*"')) == [b'* LSUB (\\HasNoChildren) "/" "Projects/alpha"']
    client.logout()


def test_imap4rev2(server: PymailServer) -> None:
    deliver(server, MESSAGE)
    deliver(server, MESSAGE)
    client = login(server)
    assert "IMAP4REV2" in client.capabilities
    assert ok(transact(client, "ENABLE IMAP4rev2")) == [b"* ENABLED IMAP4rev2"]
    # UTF-8 mailbox names, no modified UTF-7
    tag = client._new_tag().decode()
    client.send(f'{tag} CREATE "Café"\r\n'.encode())
    assert client.readline().startswith(f"{tag} OK".encode())
    lines = ok(transact(client, 'LIST "" "Caf*"'))
    assert lines == ['* LIST (\\HasNoChildren) "/" "Café"'.encode()]
    lines = ok(transact(client, "SELECT INBOX"))
    assert not any(line.endswith(b" RECENT") for line in lines)
    assert b'* LIST () "/" "INBOX"' in lines
    lines = ok(transact(client, "SEARCH ALL"))
    assert re.fullmatch(rb'\* ESEARCH \(TAG "[^"]+"\) ALL 1:2', lines[0]), lines
    client.logout()
    # a rev1 session sees the same mailbox in modified UTF-7
    client = login(server)
    lines = ok(transact(client, 'LIST "" "Caf*"'))
    assert lines == [b'* LIST (\\HasNoChildren) "/" "Caf&AOk-"']
    client.logout()


def _read_until(client: imaplib.IMAP4, pattern: bytes, timeout: float) -> list[bytes]:
    """Lines until one matches `pattern` (a regex), within `timeout` seconds."""
    client.sock.settimeout(timeout)
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = client.readline().rstrip(b"\r\n")
        assert line, "connection closed"
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no {pattern!r} in {lines}")


def test_idle_sees_changes_made_on_another_node(tmp_path: Path, request) -> None:  # noqa: ANN001
    """Node A's IDLE session hears about a delivery, a flag change and an expunge made
    through node B -- woken by the index's notifications, well before the 30 s safety
    poll (`pymail.net.imap.watch.FALLBACK_POLL_SECONDS`)."""
    storage = make_storage("postgres+s3", request, tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    node_a = PymailServer(tmp_path / "a", storage_config=storage.config, imaps=True)
    node_b = PymailServer(tmp_path / "b", storage_config=storage.config, imaps=True)
    node_a.cli("domain", "add", "example.test")
    node_a.add_user(ALICE)
    node_a.start()
    node_b.start()
    try:
        deliver(node_b, MESSAGE)
        watcher = login(node_a)
        ok(transact(watcher, "SELECT INBOX"))
        tag = watcher._new_tag().decode()
        watcher.send(f"{tag} IDLE\r\n".encode())
        assert watcher.readline().startswith(b"+ ")
        deliver(node_b, MESSAGE)
        assert _read_until(watcher, rb"^\* 2 EXISTS$", 15)[-1] == b"* 2 EXISTS"
        other = login(node_b)
        ok(transact(other, "SELECT INBOX"))
        ok(transact(other, "STORE 1 +FLAGS.SILENT (\\Deleted)"))
        lines = _read_until(watcher, rb"^\* 1 FETCH", 15)
        # the watcher selected first: message 1 is \\Recent there (RFC 3501 2.3.2)
        assert re.fullmatch(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Deleted \\Recent\)\)", lines[-1]), lines
        ok(transact(other, "EXPUNGE"))
        assert _read_until(watcher, rb"^\* 1 EXPUNGE$", 15)[-1] == b"* 1 EXPUNGE"
        watcher.send(b"DONE\r\n")
        assert _read_until(watcher, rb"^" + tag.encode() + rb" ", 15)[-1].startswith(f"{tag} OK".encode())
        other.logout()
        watcher.logout()
    finally:
        for node in (node_a, node_b):
            if node.proc is not None and node.proc.poll() is None:
                node.stop()


def test_selected_mailbox_deleted_by_another_session_ends_with_bye(server: PymailServer) -> None:
    first = login(server)
    ok(transact(first, "CREATE Scratch"))
    ok(transact(first, "SELECT Scratch"))
    second = login(server)
    ok(transact(second, 'RENAME Scratch "Scratch 2"'))  # a rename keeps the mailbox
    assert tagged(transact(first, "NOOP")).startswith(b"OK")
    ok(transact(second, 'DELETE "Scratch 2"'))
    second.logout()
    tag = first._new_tag().decode()
    first.send(f"{tag} NOOP\r\n".encode())
    assert first.readline() == b"* BYE The selected mailbox was deleted\r\n"
    assert first.readline() == b""  # closed
