"""Debian's real Thunderbird, headless, against a real pymail (issue 14 item 6): account
set-up (IMAP over TLS, SMTP submission with STARTTLS), folder discovery, a delivered
message in INBOX with its subject and body, sending over submission with the Sent copy
(APPEND) and local delivery, IDLE push of new mail, and a POP3 account that downloads and
leaves the messages on the server.

One Thunderbird process serves the whole module (a start costs tens of seconds on a busy
2-core machine); the tests run in file order and each brings its own messages.

Host name: Thunderbird is told to connect to ``127.0.0.1`` and checks the certificate
against that.  The embedded default's leaf carries ``IP:127.0.0.1`` in its SAN besides
the server's host name (pymail/net/certs.py, `_san_entries`), so it verifies against the
private CA the test trusts, with no resolver involved (``localhost`` would also match, but
Thunderbird would try ``::1`` first, where pymail does not listen).  The harness's
``mx.test.example`` is the name pymail greets with.
"""

from __future__ import annotations

import os
import re
import smtplib
import time
from collections.abc import Iterator

import pytest

from tests.e2e.thunderbird import THUNDERBIRD, Thunderbird
from tests.pymail_harness import STRICT, PymailServer, client_module

pytestmark = pytest.mark.slow

ALICE = "alice@example.test"  # the IMAP account
BOB = "bob@example.test"  # the local recipient, and the POP3 account
PASSWORD = "secret-pw"
HOST = "127.0.0.1"

# nsMsgFolderFlags
INBOX, SENT, DRAFTS, TRASH, JUNK, ARCHIVE = 0x1000, 0x200, 0x400, 0x100, 0x40000000, 0x4000
# nsMsgSocketType
STARTTLS, TLS = 2, 3


def require_thunderbird() -> None:
    """Skip without Thunderbird or marionette_driver; under scripts/test.sh a failure."""
    client_module("marionette_driver", "marionette-driver (pip, the test extras)")
    if not os.access(THUNDERBIRD, os.X_OK):
        message = f"{THUNDERBIRD} is missing: install the Debian package 'thunderbird'"
        if STRICT:
            pytest.fail(f"{message} (scripts/test.sh installs it; did its apt-get fail?)", pytrace=False)
        pytest.skip(f"{message} (scripts/test.sh does)")


def message(subject: str, body: str, to: str = ALICE) -> bytes:
    return (f"From: Carol <carol@remote.example>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 02 Mar 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{subject.replace(' ', '-')}@remote.example>\r\n\r\n{body}\r\n").encode()


def deliver(server: PymailServer, data: bytes, to: str = ALICE) -> None:
    with smtplib.SMTP(HOST, server.port, timeout=30) as client:
        client.sendmail("carol@remote.example", [to], data)


def subjects(headers: list[dict]) -> list[str]:
    return [h["subject"] for h in headers]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymailServer]:
    require_thunderbird()
    workdir = tmp_path_factory.mktemp("pymail")
    srv = PymailServer(workdir, imaps=True, pop3s=True, submission=True)
    srv.add_user(ALICE, PASSWORD)
    srv.add_user(BOB, PASSWORD)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


@pytest.fixture(scope="module")
def thunderbird(server: PymailServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Thunderbird]:
    started = time.monotonic()
    tb = Thunderbird(tmp_path_factory.mktemp("thunderbird"))
    try:
        tb.start()
        print(f"thunderbird started in {time.monotonic() - started:.1f}s")
        tb.trust_ca(server.ca_file.read_text())
        yield tb
    finally:
        tb.stop()


@pytest.fixture(scope="module")
def alice(thunderbird: Thunderbird, server: PymailServer) -> dict[str, str]:
    """Alice's IMAP account (IMAPS, port 993-style TLS) with SMTP submission (STARTTLS)."""
    return thunderbird.add_account(kind="imap", user=ALICE, password=PASSWORD, host=HOST,
                                   port=server.imaps_port, socket_type=TLS, email=ALICE,
                                   name="Alice", smtp_port=server.submission_port,
                                   smtp_socket_type=STARTTLS)


def test_account_setup_discovers_the_folders(thunderbird: Thunderbird, alice: dict[str, str],
                                             server: PymailServer) -> None:
    folders = thunderbird.discover_folders(alice["server"])
    by_path = {f["path"]: f["flags"] for f in folders}
    for path, flag in (("INBOX", INBOX), ("Sent", SENT), ("Drafts", DRAFTS), ("Trash", TRASH),
                       ("Junk", JUNK), ("Archive", ARCHIVE)):
        assert path in by_path, (path, folders)
        assert by_path[path] & flag, f"{path} lacks its special-use flag {flag:#x}: {folders}"
    log = thunderbird.protocol_log()
    assert re.search(r"SendData: \S+ (authenticate plain|login)", log, re.I), log[-3000:]


def test_delivered_message_shows_in_inbox_with_body(thunderbird: Thunderbird, alice: dict[str, str],
                                                   server: PymailServer) -> None:
    deliver(server, message("Hello from Carol", "The body Thunderbird should show.\r\nLine two."))
    headers = thunderbird.update_folder(alice["server"], "INBOX")
    [hdr] = [h for h in headers if h["subject"] == "Hello from Carol"]
    assert "carol@remote.example" in hdr["author"]
    source = thunderbird.message_source(hdr["uri"])
    assert "Subject: Hello from Carol" in source
    assert "The body Thunderbird should show.\r\nLine two." in source, source


def test_send_over_submission_with_sent_copy(thunderbird: Thunderbird, alice: dict[str, str],
                                            server: PymailServer) -> None:
    result = thunderbird.send(alice["identity"], to=f"Bob <{BOB}>", subject="From Thunderbird",
                              body="Sent by Thunderbird over submission.\n")
    assert result["copyStatus"] == 0, result
    # Delivered to the local recipient ...
    deadline = time.monotonic() + 30
    while not (delivered := [m for _, m, _ in server.inbox(BOB) if b"Subject: From Thunderbird" in m]):
        assert time.monotonic() < deadline, "not delivered to bob"
        time.sleep(0.2)
    assert b"Sent by Thunderbird over submission." in delivered[0]
    assert b"alice@example.test" in delivered[0]
    # ... and its copy APPENDed to alice's Sent, where Thunderbird sees it.
    sent = [(m, flags) for _, m, flags in server.inbox(ALICE, "Sent") if b"Subject: From Thunderbird" in m]
    assert len(sent) == 1, sent
    assert "\\Seen" in sent[0][1]
    assert "From Thunderbird" in subjects(thunderbird.update_folder(alice["server"], "Sent"))
    log = thunderbird.protocol_log()
    assert '"C: STARTTLS"' in log and '"C: AUTH PLAIN ' in log, log[-3000:]
    assert re.search(r"SendData: \S+ append \"Sent\"", log, re.I), log[-3000:]


def idle_pushes(log: str, folder: str = "INBOX") -> tuple[bool, bool]:
    """(is idling now, got an untagged EXISTS while idling) for the connections that have
    `folder` selected, from the IMAP lines of Thunderbird's MOZ_LOG (``<connection>:
    <host>:S-<folder>:SendData: <tag> IDLE`` ... ``CreateNewLineFromSocket: * n EXISTS``
    ... ``SendData: DONE``)."""
    idle: dict[str, bool] = {}
    pushed = False
    for m in re.finditer(rf"IMAP ([0-9a-f]+):[^:]+:S-{folder}:(SendData|CreateNewLineFromSocket): (.*)", log):
        connection, direction, line = m.groups()
        if direction == "SendData" and re.fullmatch(r"\S+ IDLE", line.strip()):
            idle[connection] = True
        elif direction == "SendData" and line.strip() == "DONE":
            idle[connection] = False
        elif idle.get(connection) and re.fullmatch(r"\* \d+ EXISTS", line.strip()):
            pushed = True
    return any(idle.values()), pushed


def test_idle_push_shows_new_mail_without_refresh(thunderbird: Thunderbird, alice: dict[str, str],
                                                 server: PymailServer) -> None:
    """mail.server.default.check_new_mail is off (no biff timer) and nothing asks for an
    update: the message can only come by the EXISTS pymail sends the idling connection."""
    thunderbird.update_folder(alice["server"], "INBOX")  # INBOX selected, its connection idles
    deadline = time.monotonic() + 30
    while not idle_pushes(thunderbird.protocol_log())[0]:
        assert time.monotonic() < deadline, "Thunderbird never sent IDLE on INBOX"
        time.sleep(0.2)
    assert not idle_pushes(thunderbird.protocol_log())[1]
    deliver(server, message("Pushed by IDLE", "This one came without a refresh."))
    started = time.monotonic()
    thunderbird.wait_for(
        "return headers(folderByPath(args[0], 'INBOX')).some(h => h.subject == 'Pushed by IDLE');",
        alice["server"], timeout=30)
    print(f"IDLE push seen by Thunderbird after {time.monotonic() - started:.1f}s")
    assert idle_pushes(thunderbird.protocol_log())[1], "the message came, but not by IDLE"


def test_pop3_account_downloads_and_leaves_mail_on_server(thunderbird: Thunderbird,
                                                         server: PymailServer) -> None:
    deliver(server, message("For POP3", "Downloaded over POP3.", to=BOB), to=BOB)
    bob = thunderbird.add_account(kind="pop3", user=BOB, password=PASSWORD, host=HOST,
                                  port=server.pop3s_port, socket_type=TLS, email=BOB, name="Bob",
                                  settings={"leave_on_server": True})
    headers = thunderbird.pop3_get_new_mail(bob["server"])
    assert "For POP3" in subjects(headers), headers
    [hdr] = [h for h in headers if h["subject"] == "For POP3"]
    assert "Downloaded over POP3." in thunderbird.message_source(hdr["uri"])
    # leave_on_server: still on the server, and a second check downloads nothing twice (UIDL)
    assert any(b"Subject: For POP3" in m for _, m, _ in server.inbox(BOB))
    again = thunderbird.pop3_get_new_mail(bob["server"])
    assert subjects(again).count("For POP3") == 1, again
    assert any(b"Subject: For POP3" in m for _, m, _ in server.inbox(BOB))
    log = thunderbird.protocol_log()
    assert '"C: UIDL"' in log and '"C: RETR ' in log and '"C: DELE' not in log, log[-3000:]
