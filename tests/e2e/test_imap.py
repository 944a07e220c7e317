"""The IMAP service end to end: a real pymail process on both backend pairs, Python's
imaplib over real TLS (verified against the embedded private CA), mail delivered by
smtplib to the same process, storage read back through the Index/BlobStore interfaces."""

from __future__ import annotations

import imaplib
import re
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "secret-pw"

MESSAGE = (
    b"From: Carol <carol@remote.example>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
    b"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
    b"Message-ID: <m1@remote.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n"
    b"\r\n"
    b"--b1\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"first part\r\n"
    b"--b1\r\n"
    b"Content-Type: application/octet-stream; name=\"x.bin\"\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"AAECAw==\r\n"
    b"--b1--\r\n"
)


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    """pymail with IMAPS and IMAP (STARTTLS), users alice and bob, on each pair."""
    srv = PymailServer(tmp_path, storage_config=storage.config, imaps=True, imap=True)
    srv.add_user(ALICE)
    srv.add_user(BOB)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def deliver(server: PymailServer, message: bytes = MESSAGE, to: str = ALICE) -> None:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        client.sendmail("carol@remote.example", [to], message)


def transact(client: imaplib.IMAP4, text: str) -> list[bytes]:
    """Send one raw command line; every response line up to and including the tagged one."""
    tag = client._new_tag().decode()
    client.send(f"{tag} {text}\r\n".encode())
    lines = []
    while True:
        line = client.readline()
        assert line, "connection closed"
        lines.append(line.rstrip(b"\r\n"))
        if line.startswith(tag.encode() + b" "):
            return lines


def tagged(lines: list[bytes]) -> bytes:
    """The tagged response without its tag."""
    return lines[-1].split(b" ", 1)[1]


def fetch_items(data: list) -> bytes:
    """imaplib FETCH data flattened: metadata and literals joined."""
    out = b""
    for item in data:
        out += b"".join(item) if isinstance(item, tuple) else item
    return out


def test_greeting_capabilities_and_authentication(server: PymailServer) -> None:
    client = server.imaps_client()
    assert re.match(rb"\* OK \[CAPABILITY IMAP4rev1 .*AUTH=PLAIN.*\] pymail ready", client.welcome)
    capabilities = client.capabilities
    for cap in ("IMAP4REV1", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "AUTH=PLAIN", "AUTH=LOGIN", "SASL-IR"):
        assert cap in capabilities
    assert "STARTTLS" not in capabilities and "LOGINDISABLED" not in capabilities
    # unknown user and wrong password: the same answer
    answers = []
    for user, password in ((ALICE, "wrong"), ("nobody@example.test", PASSWORD)):
        with pytest.raises(imaplib.IMAP4.error) as failure:
            client.login(user, password)
        answers.append(str(failure.value))
    assert answers[0] == answers[1] == str(b"[AUTHENTICATIONFAILED] Authentication failed")
    assert client.noop()[0] == "OK"  # the session goes on
    assert client.login(ALICE, PASSWORD)[0] == "OK"
    assert client.logout()[0] == "BYE"
    assert "rip=127.0.0.1" in server.log() and "reason=unknown_user" in server.log()

    # AUTHENTICATE PLAIN with a continuation, then with SASL-IR; AUTHENTICATE LOGIN
    client = server.imaps_client()
    assert client.authenticate("PLAIN", lambda _: f"\0{ALICE}\0{PASSWORD}".encode())[0] == "OK"
    client.logout()
    client = server.imaps_client()
    import base64

    initial = base64.b64encode(f"\0{BOB}\0{PASSWORD}".encode()).decode()
    assert tagged(transact(client, f"AUTHENTICATE PLAIN {initial}")).startswith(b"OK [CAPABILITY ")
    assert tagged(transact(client, "LOGIN a b")).startswith(b"BAD")  # already authenticated
    lines = transact(client, "ID (\"name\" \"test\")")
    assert lines[0] == b'* ID ("name" "pymail")' and tagged(lines).startswith(b"OK")
    lines = transact(client, "NAMESPACE")
    assert lines[0] == b'* NAMESPACE (("" "/")) NIL NIL'
    lines = transact(client, "ENABLE CONDSTORE X-UNKNOWN")
    assert lines[0] == b"* ENABLED CONDSTORE" and tagged(lines).startswith(b"OK")
    lines = transact(client, "ENABLE CONDSTORE")  # already enabled: not listed again
    assert lines[0] == b"* ENABLED" and tagged(lines).startswith(b"OK")
    client.logout()
    client = server.imaps_client()
    answers_login = iter([ALICE.encode(), PASSWORD.encode()])
    assert client.authenticate("LOGIN", lambda _: next(answers_login))[0] == "OK"
    client.logout()
    client = server.imaps_client()
    wrong = base64.b64encode(f"\0{ALICE}\0nope".encode()).decode()
    assert tagged(transact(client, f"AUTHENTICATE PLAIN {wrong}")) == b"NO [AUTHENTICATIONFAILED] Authentication failed"
    client.logout()


def test_starttls_port_refuses_passwords_before_tls(server: PymailServer) -> None:
    assert server.imap_port is not None
    client = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    assert "STARTTLS" in client.capabilities and "LOGINDISABLED" in client.capabilities
    assert not any(c.startswith("AUTH=") for c in client.capabilities)
    assert tagged(transact(client, f"LOGIN {ALICE} {PASSWORD}")).startswith(b"NO [PRIVACYREQUIRED]")
    client.starttls(ssl.create_default_context(cafile=str(server.ca_file)))
    assert "AUTH=PLAIN" in client.capabilities and "LOGINDISABLED" not in client.capabilities
    assert client.login(ALICE, PASSWORD)[0] == "OK"
    assert tagged(transact(client, "STARTTLS")).startswith(b"BAD")
    client.logout()


def test_list_lsub_and_mailbox_management(server: PymailServer) -> None:
    client = server.imaps_client(ALICE)
    typ, listing = client.list()
    assert typ == "OK"
    assert listing == [
        b'(\\HasNoChildren) "/" "INBOX"',
        b'(\\HasNoChildren \\Archive) "/" "Archive"',
        b'(\\HasNoChildren \\Drafts) "/" "Drafts"',
        b'(\\HasNoChildren \\Junk) "/" "Junk"',
        b'(\\HasNoChildren \\Sent) "/" "Sent"',
        b'(\\HasNoChildren \\Trash) "/" "Trash"',
    ]
    assert transact(client, 'LIST "" ""')[0] == b'* LIST (\\Noselect) "/" ""'
    typ, subscribed = client.lsub()
    assert typ == "OK" and len(subscribed) == 6 and b'(\\HasNoChildren \\Sent) "/" "Sent"' in subscribed
    # Thunderbird's LIST
    lines = transact(client, 'LIST (SUBSCRIBED) "" "*" RETURN (SPECIAL-USE)')
    assert b'* LIST (\\HasNoChildren \\Trash \\Subscribed) "/" "Trash"' in lines
    assert len(lines) == 7 and tagged(lines).startswith(b"OK")
    assert transact(client, 'LIST "" "inbox"')[0] == b'* LIST (\\HasNoChildren) "/" "INBOX"'

    assert client.create("Projects/2026/Q1")[0] == "OK"
    assert client.create("Projects")[0] == "NO"  # created as a superior already
    assert client.create("Caf&AOk-")[0] == "OK"  # "Café" in modified UTF-7
    lines = transact(client, 'LIST "" "Projects/%"')
    assert lines[:-1] == [b'* LIST (\\HasChildren) "/" "Projects/2026"']
    lines = transact(client, 'LIST "Projects/" "*"')
    assert lines[:-1] == [b'* LIST (\\HasChildren) "/" "Projects/2026"',
                          b'* LIST (\\HasNoChildren) "/" "Projects/2026/Q1"']
    assert b'* LIST (\\HasNoChildren) "/" "Caf&AOk-"' in transact(client, 'LIST "" "Caf*"')
    # CREATE subscribes nothing (only SUBSCRIBE does, RFC 3501 section 6.3.6)
    assert client.lsub('""', "Projects*")[1] == [None]
    assert client.subscribe("Projects/2026")[0] == "OK"
    assert client.unsubscribe("Projects/2026/Q1")[0] == "OK"
    assert client.lsub('""', "Projects/2026/*")[1] == [None]
    lines = transact(client, 'LIST (SUBSCRIBED) "" "Projects/*"')
    assert lines[:-1] == [b'* LIST (\\HasChildren \\Subscribed) "/" "Projects/2026"']
    assert client.subscribe("Projects/2026/Q1")[0] == "OK"
    assert client.lsub('""', "Projects/2026/*")[1] == [b'(\\HasNoChildren) "/" "Projects/2026/Q1"']
    assert client.rename("Projects", "Work")[0] == "OK"
    assert client.list('""', "Work*")[1] == [
        b'(\\HasChildren) "/" "Work"', b'(\\HasChildren) "/" "Work/2026"',
        b'(\\HasNoChildren) "/" "Work/2026/Q1"']
    assert client.rename("Nope", "Other")[0] == "NO"
    assert client.rename("Work", "Sent")[0] == "NO"
    assert client.delete("Work/2026/Q1")[0] == "OK"
    assert client.delete("Work/2026/Q1")[0] == "NO"
    assert client.delete("INBOX")[0] == "NO"
    assert client.subscribe("Missing")[0] == "NO"
    assert client.status("Missing", "(MESSAGES)")[0] == "NO"
    client.logout()


def test_smtp_delivery_fetched_byte_exact(server: PymailServer) -> None:
    deliver(server)
    [(uid, stored, _flags)] = server.inbox(ALICE)
    client = server.imaps_client(ALICE)
    typ, data = client.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    assert client.untagged_responses.get("RECENT") == [b"1"]  # the first SELECT takes it (RFC 3501 2.3.2)
    assert client.untagged_responses["UIDVALIDITY"] and client.untagged_responses["UIDNEXT"] == [str(uid + 1).encode()]
    typ, data = client.fetch("1", "(UID RFC822.SIZE FLAGS BODY.PEEK[])")
    assert typ == "OK"
    meta, body = data[0]
    assert body == stored and stored.endswith(MESSAGE)
    assert f"UID {uid} RFC822.SIZE {len(stored)} FLAGS (\\Recent)".encode() in meta
    typ, data = client.fetch("1", "(ENVELOPE BODYSTRUCTURE)")
    text = fetch_items(data)
    assert b'"=?utf-8?q?caf=C3=A9?= report"' in text and b'"<m1@remote.example>"' in text
    assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1' in text
    assert b'("APPLICATION" "OCTET-STREAM" ("NAME" "x.bin") NIL NIL "BASE64" 8 ' in text
    assert b'"MIXED" ("BOUNDARY" "b1")' in text
    # sections, partials, headers
    _, data = client.uid("FETCH", str(uid), "(BODY.PEEK[1] BODY.PEEK[2]<0.4> BODY.PEEK[HEADER.FIELDS (Subject)])")
    text = fetch_items(data)
    assert b"BODY[1] {10}first part" in text
    assert b"BODY[2]<0> {4}AAEC" in text.replace(b"\r\n", b"")
    assert b"Subject: =?utf-8?q?caf=C3=A9?= report\r\n\r\n" in text
    _, data = client.fetch("1", "(RFC822.HEADER INTERNALDATE)")
    text = fetch_items(data)
    assert b"Message-ID: <m1@remote.example>\r\n" in text and b"boundary=\"b1\"\r\n\r\n INTERNALDATE \"" in text
    assert client.fetch("1", "(FLAGS)")[1] == [b"1 (FLAGS (\\Recent))"]  # PEEK left \Seen alone
    # a non-PEEK body fetch sets \Seen and reports it
    _, data = client.fetch("1", "(BODY[TEXT])")
    assert b"FLAGS (\\Recent \\Seen)" in fetch_items(data)
    assert server.inbox(ALICE)[0][2] == frozenset({"\\Seen"})
    # RFC822 is the whole message too
    _, data = client.fetch("1", "RFC822")
    assert data[0][1] == stored
    assert tagged(transact(client, "FETCH 2 (FLAGS)")).startswith(b"BAD")  # no message 2
    client.logout()


def test_store_copy_move_append_expunge(server: PymailServer) -> None:
    deliver(server)
    deliver(server, MESSAGE.replace(b"report", b"second"))
    client = server.imaps_client(ALICE)
    client.select("INBOX")
    assert client.store("1:2", "+FLAGS", "(\\Flagged $Important)")[1] == [
        b"1 (FLAGS ($Important \\Flagged \\Recent))", b"2 (FLAGS ($Important \\Flagged \\Recent))"]
    assert client.store("2", "-FLAGS.SILENT", "($Important)")[1] == [None]
    assert client.uid("STORE", "2", "FLAGS", "(\\Seen)")[1] == [b"2 (UID 2 FLAGS (\\Recent \\Seen))"]
    assert [m[2] for m in server.inbox(ALICE)] == [frozenset({"\\Flagged", "$Important"}), frozenset({"\\Seen"})]

    typ, data = client.copy("1:2", "Archive")
    assert typ == "OK" and re.fullmatch(rb"\[COPYUID \d+ 1:2 1:2\] COPY completed", data[0])
    typ, data = client.uid("MOVE", "2", "Trash")
    assert typ == "OK"
    assert client.untagged_responses.get("EXPUNGE") == [b"2"]
    assert any(re.match(rb"\[COPYUID \d+ 2 1\]", d) for d in client.untagged_responses.get("OK", []))
    assert client.copy("1", "Missing")[1][0].startswith(b"[TRYCREATE]")
    assert [m[0] for m in server.inbox(ALICE, "Trash")] == [1]

    # APPEND with flags and a date, then FETCH it
    message = b"From: alice@example.test\r\nSubject: draft\r\n\r\nappended body\r\n"
    date = imaplib.Time2Internaldate(time.mktime((2026, 1, 5, 12, 0, 0, 0, 0, -1)))
    typ, data = client.append("Drafts", "(\\Draft \\Seen)", date, message)
    assert typ == "OK"
    validity, appended_uid = re.fullmatch(rb"\[APPENDUID (\d+) (\d+)\] APPEND completed", data[0]).groups()
    assert client.append("Missing", None, None, message)[1][0].startswith(b"[TRYCREATE]")
    client.select("Drafts")
    assert client.untagged_responses["UIDVALIDITY"] == [validity]
    _, data = client.uid("FETCH", appended_uid.decode(), "(FLAGS INTERNALDATE BODY.PEEK[])")
    meta, body = data[0]
    assert body == message and b"\\Draft" in meta and b'INTERNALDATE " 5-Jan-2026 ' in meta
    assert server.inbox(ALICE, "Drafts")[0][1] == message

    # EXPUNGE, UID EXPUNGE, CLOSE
    client.select("Archive")
    client.store("1:2", "+FLAGS", "(\\Deleted)")
    assert client.uid("EXPUNGE", "2")[0] == "OK"
    assert client.untagged_responses.pop("EXPUNGE") == [b"2"]
    assert client.expunge()[1] == [b"1"]
    assert server.inbox(ALICE, "Archive") == []
    client.select("INBOX")
    client.store("1", "+FLAGS", "(\\Deleted)")
    client.select("INBOX", readonly=True)
    assert client.store("1", "+FLAGS", "(\\Seen)")[0] == "NO"  # EXAMINE is read-only
    assert client.expunge()[0] == "NO"
    assert client.close()[0] == "OK"  # read-only: nothing expunged
    assert len(server.inbox(ALICE)) == 1
    client.select("INBOX")
    assert client.close()[0] == "OK"
    assert server.inbox(ALICE) == []
    assert tagged(transact(client, "FETCH 1 FLAGS")).startswith(b"BAD")  # no longer selected
    client.logout()


def test_search_and_status(server: PymailServer) -> None:
    deliver(server)
    deliver(server, b"From: Dave <dave@other.example>\r\nTo: alice@example.test\r\n"
                    b"Subject: lunch\r\nX-Tag: blue\r\n\r\n" + b"x" * 2000 + b"\r\n")
    client = server.imaps_client(ALICE)
    typ, data = client.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT SIZE HIGHESTMODSEQ)")
    assert typ == "OK"
    assert re.fullmatch(rb'"INBOX" \(MESSAGES 2 UIDNEXT 3 UIDVALIDITY \d+ UNSEEN 2 RECENT 2 SIZE \d+ HIGHESTMODSEQ \d+\)',
                        data[0])
    client.select("INBOX")
    client.store("2", "+FLAGS", "(\\Seen \\Answered work)")

    def search(*criteria: str) -> list[bytes]:
        typ, data = client.search(None, *criteria)
        assert typ == "OK", criteria
        return data[0].split()

    assert search("ALL") == [b"1", b"2"]
    assert search("SEEN") == [b"2"] and search("UNSEEN") == [b"1"]
    assert search("ANSWERED") == [b"2"] and search("DELETED") == [] and search("FLAGGED") == []
    assert search("DRAFT") == [] and search("KEYWORD", "work") == [b"2"]
    assert search("LARGER", "1500") == [b"2"] and search("SMALLER", "1500") == [b"1"]
    client.literal = "CAF\u00c9 rep".encode()  # RFC 2047 words are decoded for matching
    assert client.search("UTF-8", "SUBJECT")[1] == [b"1"]
    assert search("SUBJECT", "report") == [b"1"]
    assert search("FROM", "dave") == [b"2"] and search("TO", "alice") == [b"1", b"2"]
    assert search("HEADER", "X-Tag", "BLUE") == [b"2"]
    assert search("NOT", "SEEN") == [b"1"] and search("OR", "SEEN", "FROM", "carol") == [b"1", b"2"]
    assert search("2") == [b"2"] and search("UID", "1") == [b"1"]
    today = imaplib.Time2Internaldate(time.time()).strip('"').split()[0]
    assert search("SINCE", today) == [b"1", b"2"] and search("BEFORE", today) == []
    assert search("ON", today) == [b"1", b"2"] and search("SENTON", "2-Mar-2026") == [b"1"]
    assert client.uid("SEARCH", None, "SUBJECT", "lunch")[1] == [b"2"]
    assert client.search("ISO-8859-9", "ALL")[0] == "NO"
    client.logout()


def test_second_session_sees_changes_with_noop_and_idle(server: PymailServer) -> None:
    watcher = server.imaps_client(ALICE)
    watcher.select("INBOX")
    other = server.imaps_client(ALICE)
    other.select("INBOX")
    watcher.untagged_responses.clear()
    deliver(server)
    watcher.noop()
    assert watcher.untagged_responses.get("EXISTS") == [b"1"]

    # IDLE: a delivery and a flag change by the other session arrive while idling
    tag = watcher._new_tag()
    watcher.send(tag + b" IDLE\r\n")
    assert watcher.readline() == b"+ idling\r\n"
    deliver(server)
    assert watcher.readline() == b"* 2 EXISTS\r\n"
    assert watcher.readline() == b"* 2 RECENT\r\n"  # the selected session takes new mail
    other.noop()
    other.store("1", "+FLAGS", "(\\Flagged)")
    assert watcher.readline() == b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n"
    other.store("1", "+FLAGS", "(\\Deleted)")
    other.expunge()
    line = watcher.readline()  # the \\Deleted flag may be seen before the expunge
    if line.startswith(b"* 1 FETCH"):
        assert line == b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Flagged \\Recent))\r\n"
        line = watcher.readline()
    assert line == b"* 1 EXPUNGE\r\n"
    watcher.send(b"DONE\r\n")
    assert watcher.readline().startswith(tag + b" OK")
    assert watcher.fetch("1", "(UID)")[1] == [b"1 (UID 2)"]
    watcher.logout()
    other.logout()


def test_bad_input_gets_bad_and_the_session_continues(server: PymailServer) -> None:
    client = server.imaps_client()
    assert tagged(transact(client, "FROBNICATE")).startswith(b"BAD")
    assert tagged(transact(client, "SELECT INBOX")).startswith(b"BAD")  # not authenticated
    assert tagged(transact(client, "LOGIN")).startswith(b"BAD")
    client.send(b"\r\n")
    assert client.readline().startswith(b"* BAD")
    tag = client._new_tag()
    client.send(tag + b" AUTHENTICATE PLAIN\r\n")
    assert client.readline() == b"+ \r\n"
    client.send(b"*\r\n")  # the client cancels (RFC 3501 section 6.2.2)
    assert client.readline().startswith(tag + b" BAD")
    client.login(ALICE, PASSWORD)
    tag = client._new_tag()
    client.send(tag + b" IDLE\r\n")
    assert client.readline() == b"+ idling\r\n"
    client.send(b"NOT-DONE\r\n")
    assert client.readline().startswith(tag + b" BAD")
    assert tagged(transact(client, "FETCH 1 FLAGS")).startswith(b"BAD")  # nothing selected
    client.select("INBOX")
    assert tagged(transact(client, "FETCH 1:* (FLAGS")).startswith(b"BAD")
    assert tagged(transact(client, "STORE 1 +FLAGS")).startswith(b"BAD")
    assert tagged(transact(client, "SEARCH FOO")).startswith(b"BAD")
    assert tagged(transact(client, "SELECT &Jjo")).startswith(b"NO")
    assert tagged(transact(client, "CREATE a//b")).startswith(b"NO")
    assert tagged(transact(client, "NOOP")) == b"OK NOOP completed"
    assert client.logout()[0] == "BYE"
    assert "Traceback" not in server.log()


def test_starttls_command_injection_closes_the_connection(server: PymailServer) -> None:
    """CVE-2011-0411 / RFC 2595 section 3.1: a command pipelined in plaintext behind
    STARTTLS must never run, neither before nor inside TLS."""
    assert server.imap_port is not None
    raw = socket.create_connection(("127.0.0.1", server.imap_port), timeout=30)
    reader = raw.makefile("rb")
    assert reader.readline().startswith(b"* OK ")
    raw.sendall(b"a STARTTLS\r\nb LOGIN alice@example.test secret-pw\r\n")
    assert reader.readline().startswith(b"a OK ")
    assert reader.read() == b""  # closed: no answer to b, no TLS to smuggle it into
    raw.close()
    assert "authenticated: service=imap" not in server.log()
