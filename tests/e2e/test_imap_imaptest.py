"""The exchanges Dovecot's imaptest failed on pymail (issue 14, the bug table), one test
per cause, over a real socket with raw command lines, on both backend pairs.

Each test names the imaptest groups it stands for and the RFC section it checks.
"""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import StorageSetup
from tests.e2e.test_imap import ALICE, PASSWORD, deliver, tagged, transact
from tests.pymail_harness import PymailServer

PLAIN = (
    b"From: Carol <carol@remote.example>\r\n"
    b"To: Alice <alice@example.test>\r\n"
    b"Subject: plain\r\n"
    b"\r\n"
    b"hello\r\n"
)


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


def login(server: PymailServer) -> imaplib.IMAP4:
    return server.imaps_client(ALICE, PASSWORD)


def append(client: imaplib.IMAP4, mailbox: str, message: bytes, flags: str = "") -> list[bytes]:
    """APPEND with a non-synchronizing literal (LITERAL+, RFC 7888)."""
    tag = client._new_tag().decode()
    flag_part = f" ({flags})" if flags else ""
    client.send(f"{tag} APPEND {mailbox}{flag_part} {{{len(message)}+}}\r\n".encode() + message + b"\r\n")
    lines = []
    while True:
        line = client.readline()
        assert line, "connection closed"
        lines.append(line.rstrip(b"\r\n"))
        if line.startswith(tag.encode() + b" "):
            return lines


def ok(lines: list[bytes]) -> list[bytes]:
    assert tagged(lines).startswith(b"OK"), lines
    return lines[:-1]


# -- 1. system flags are case-insensitive (imaptest: append, close, expunge, fetch, ...) --

def test_system_flags_are_case_insensitive(server: PymailServer) -> None:
    """RFC 3501 section 2.3.2: flag names are case-insensitive; pymail stores the system
    flags canonical and keywords in the first spelling the mailbox saw."""
    client = login(server)
    ok(append(client, "INBOX", PLAIN, "\\seen"))
    ok(append(client, "INBOX", PLAIN))
    assert ok(transact(client, "STATUS INBOX (MESSAGES UNSEEN)")) == [
        b"* STATUS \"INBOX\" (MESSAGES 2 UNSEEN 1)"]
    ok(transact(client, "SELECT INBOX"))  # takes them as \\Recent (test 2)
    ok(transact(client, "SELECT INBOX"))  # so this session has none recent
    assert ok(transact(client, "FETCH 1 FLAGS")) == [b"* 1 FETCH (FLAGS (\\Seen))"]
    assert ok(transact(client, "STORE 2 FLAGS (\\deleted)")) == [b"* 2 FETCH (FLAGS (\\Deleted))"]
    assert ok(transact(client, "STORE 2 +FLAGS (\\DELETED)")) == [b"* 2 FETCH (FLAGS (\\Deleted))"]
    assert ok(transact(client, "EXPUNGE")) == [b"* 2 EXPUNGE"]
    # keywords: the first spelling stays
    untagged = ok(transact(client, "STORE 1 +FLAGS (Foo)"))
    assert untagged[-1] == b"* 1 FETCH (FLAGS (Foo \\Seen))"
    assert ok(transact(client, "STORE 1 +FLAGS (FOO)")) == [b"* 1 FETCH (FLAGS (Foo \\Seen))"]
    assert ok(transact(client, "STORE 1 -FLAGS (foo \\SEEN)")) == [b"* 1 FETCH (FLAGS ())"]
    client.logout()


# -- 7. LIST with punctuation (imaptest: atoms) ------------------------------------------

def test_list_pattern_of_every_list_char(server: PymailServer) -> None:
    """RFC 3501 section 9: list-mailbox = 1*list-char, list-char = ATOM-CHAR /
    list-wildcards / resp-specials; a pattern that is not valid modified UTF-7 matches
    nothing (RFC 5258 section 3), it is no BAD."""
    client = login(server)
    assert ok(transact(client, "LIST \"\" !#$&'+,-.0123456789:;<=>?@^_`|[}%*")) == []
    assert ok(transact(client, "LIST \"\" ]%")) == []
    assert ok(transact(client, "LSUB \"\" &-%")) == []
    client.logout()


# -- 4. LIST-EXTENDED options (imaptest: listext) ----------------------------------------

def test_list_extended_refuses_unknown_options(server: PymailServer) -> None:
    """RFC 5258 section 3: an unrecognised selection or return option is BAD, and so is
    RECURSIVEMATCH as the only selection option (or only with REMOTE)."""
    client = login(server)
    for command in ('LIST (X-UNKNOWN) "" "*"', 'LIST "" "*" RETURN (X-UNKNOWN)',
                    'LIST (RECURSIVEMATCH) "" "*"', 'LIST (RECURSIVEMATCH REMOTE) "" "*"'):
        assert tagged(transact(client, command)).startswith(b"BAD"), command
    assert ok(transact(client, 'LIST (REMOTE) "" "INBOX"')) == [b'* LIST (\\HasNoChildren) "/" "INBOX"']
    ok(transact(client, 'LIST (RECURSIVEMATCH SUBSCRIBED REMOTE) "" "*"'))
    client.logout()


# -- 5. BINARY of quoted-printable (imaptest: fetch-binary-mime-qp) ----------------------

QP_MESSAGE = (
    b"From: Carol <carol@remote.example>\r\n"
    b"Subject: qp\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"trailing blanks \t\r\n"
    b"soft=  \r\n"
    b"break=3D\r\n"
)


def test_binary_of_quoted_printable_deletes_trailing_blanks(server: PymailServer) -> None:
    """RFC 3516 section 4.2 with RFC 2045 section 6.7 rules 3 and 5: trailing blanks of
    a line are deleted, so "=" followed by blanks at the end of a line is a soft break."""
    client = login(server)
    ok(append(client, "INBOX", QP_MESSAGE))
    ok(transact(client, "SELECT INBOX"))
    decoded = b"trailing blanks\r\nsoftbreak=\r\n"
    lines = ok(transact(client, "FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])"))
    assert lines[0] == b"* 1 FETCH (BINARY.SIZE[1] %d BINARY[1] {%d}" % (len(decoded), len(decoded))
    assert b"\r\n".join(lines[1:]) == decoded + b")"
    client.logout()


# -- 9. SEARCH FROM over the parsed address (imaptest: search-addresses) -----------------

def test_search_from_matches_the_parsed_address(server: PymailServer) -> None:
    """RFC 3501 section 6.4.4 FROM: the address with its comments (RFC 5322 section
    3.4.1 CFWS) is the one ENVELOPE reports, and SEARCH finds it."""
    client = login(server)
    ok(append(client, "INBOX", b"From: <user-from (comment)@ (comment) domain.org>\r\n"
                               b"To: Real Name <user-to@domain.org>\r\nSubject: s\r\n\r\nbody\r\n"))
    ok(append(client, "INBOX", PLAIN))
    ok(transact(client, "SELECT INBOX"))
    assert ok(transact(client, 'SEARCH FROM "user-from@domain.org"')) == [b"* SEARCH 1"]
    assert ok(transact(client, "SEARCH FROM user-from")) == [b"* SEARCH 1"]
    assert ok(transact(client, 'SEARCH TO "Real Name <user-to@domain.org>"')) == [b"* SEARCH 1"]
    assert ok(transact(client, "SEARCH FROM carol@remote.example")) == [b"* SEARCH 2"]
    client.logout()


# -- 10. a new keyword is announced before FETCH shows it (imaptest: copy, select warnings)

def test_new_keyword_is_announced_before_fetch_flags(server: PymailServer) -> None:
    """RFC 3501 section 7.2.6: FLAGS names the flags applicable in the mailbox; a STORE
    of a new keyword, or one another session set, comes with an untagged FLAGS and
    PERMANENTFLAGS before the FETCH that shows it."""
    client, other = login(server), login(server)
    ok(append(client, "INBOX", PLAIN))
    ok(append(client, "INBOX", PLAIN))
    ok(transact(other, "SELECT INBOX"))  # takes them as \\Recent (test 2), not client
    ok(transact(client, "SELECT INBOX"))
    lines = ok(transact(client, "STORE 1 +FLAGS ($Label1)"))
    assert lines == [
        b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1)",
        b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label1 \\*)] Flags permitted",
        b"* 1 FETCH (FLAGS ($Label1))"]
    assert ok(transact(client, "STORE 2 +FLAGS ($Label1)")) == [b"* 2 FETCH (FLAGS ($Label1))"]
    # the other session learns of it before the FETCH FLAGS of the change
    lines = ok(transact(other, "NOOP"))
    assert lines[0].startswith(b"* FLAGS (") and b"$Label1" in lines[0]
    assert lines[1].startswith(b"* OK [PERMANENTFLAGS (")
    assert sorted(lines[2:]) == [b"* 1 FETCH (UID 1 FLAGS ($Label1 \\Recent))",
                                 b"* 2 FETCH (UID 2 FLAGS ($Label1 \\Recent))"]
    client.logout()
    other.logout()


# -- 8. CONDSTORE (imaptest: esearch-condstore) ------------------------------------------

def test_condstore_enabled_in_selected_state_and_esearch_modseq(server: PymailServer) -> None:
    """RFC 7162 section 3.1: the first CONDSTORE enabling command in the selected state
    gets an untagged OK [HIGHESTMODSEQ]; section 3.1.5 with RFC 4731: SEARCH RETURN (MIN)
    or (MAX) with MODSEQ reports the mod-sequence of the message returned."""
    client = login(server)
    for _ in range(3):
        ok(append(client, "INBOX", PLAIN))
    ok(transact(client, "SELECT INBOX"))
    ok(transact(client, "STORE 1 +FLAGS (\\Flagged)"))
    ok(transact(client, "STORE 3 +FLAGS (\\Flagged)"))
    lines = ok(transact(client, "FETCH 1:3 (MODSEQ)"))
    modseqs = [int(re.search(rb"MODSEQ \((\d+)\)", line).group(1)) for line in lines[1:]]
    assert len(lines) == 4, lines
    highest = re.fullmatch(rb"\* OK \[HIGHESTMODSEQ (\d+)\] Highest", lines[0])
    assert highest is not None, lines
    assert int(highest.group(1)) == max(modseqs)
    assert ok(transact(client, "FETCH 1 (MODSEQ)")) == [b"* 1 FETCH (MODSEQ (%d))" % modseqs[0]]  # once only
    lines = ok(transact(client, "SEARCH RETURN (MIN) MODSEQ 1"))
    assert lines[0].endswith(b" MIN 1 MODSEQ %d" % modseqs[0]), lines
    lines = ok(transact(client, "SEARCH RETURN (MAX) MODSEQ 1"))
    assert lines[0].endswith(b" MAX 3 MODSEQ %d" % modseqs[2]), lines
    lines = ok(transact(client, "SEARCH RETURN (MIN COUNT) MODSEQ 1"))
    assert lines[0].endswith(b" MIN 1 COUNT 3 MODSEQ %d" % max(modseqs)), lines
    client.logout()


def test_enable_condstore_while_selected_announces_highestmodseq(server: PymailServer) -> None:
    client = login(server)
    ok(transact(client, "SELECT INBOX"))
    lines = ok(transact(client, "ENABLE CONDSTORE"))
    assert lines[0] == b"* OK [HIGHESTMODSEQ 1] Highest" and lines[1] == b"* ENABLED CONDSTORE"
    client.logout()


# -- 6. NUL never in a plain literal (imaptest: append-binary) ---------------------------

NUL_MESSAGE = (
    b"From: Carol <carol@remote.example>\r\n"
    b"Subject: nul\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: binary\r\n"
    b"\r\n"
    b"a\x00b\x00c\r\n"
)


def transact_literals(client: imaplib.IMAP4, text: str) -> tuple[list[bytes], list[bytes]]:
    """A raw command: the response lines (literal heads included) and the literals."""
    tag = client._new_tag().decode()
    client.send(f"{tag} {text}\r\n".encode())
    lines, literals = [], []
    while True:
        line = client.readline()
        assert line, "connection closed"
        lines.append(line.rstrip(b"\r\n"))
        head = re.search(rb"~?\{(\d+)\}\r\n\Z", line)
        if head:
            literals.append(client.read(int(head.group(1))))
        elif line.startswith(tag.encode() + b" "):
            return lines, literals


def test_nul_goes_only_in_literal8(server: PymailServer) -> None:
    """RFC 3501 section 9: a literal is CHAR8, no NUL; RFC 3516 section 4.2: BINARY[]
    holding NUL goes as literal8 (``~{n}``).  BODY[] of a binary part has no literal8:
    its NULs are sent as 0x80, octet for octet (Dovecot's choice)."""
    client = login(server)
    tag = client._new_tag().decode()
    client.send(f"{tag} APPEND INBOX ~{{{len(NUL_MESSAGE)}+}}\r\n".encode() + NUL_MESSAGE + b"\r\n")
    assert client.readline().startswith(tag.encode() + b" OK")
    ok(transact(client, "SELECT INBOX"))
    lines, literals = transact_literals(client, "FETCH 1 (BINARY.PEEK[1])")
    assert lines[0] == b"* 1 FETCH (BINARY[1] ~{7}" and literals == [b"a\x00b\x00c\r\n"]
    lines, literals = transact_literals(client, "FETCH 1 (BODY.PEEK[1])")
    assert lines[0] == b"* 1 FETCH (BODY[1] {7}" and literals == [b"a\x80b\x80c\r\n"]
    lines, literals = transact_literals(client, "FETCH 1 (BODY.PEEK[])")
    assert literals == [NUL_MESSAGE.replace(b"\x00", b"\x80")]
    client.logout()


# -- 3. subscriptions are names (imaptest: subscribe, listext) ---------------------------

def test_subscriptions_outlive_their_mailbox(server: PymailServer) -> None:
    """RFC 3501 section 6.3.3: CREATE does not subscribe; section 6.3.4: DELETE does
    not unsubscribe; RFC 5258 section 3.1: LIST (SUBSCRIBED) shows such a name with
    \\NonExistent."""
    client = login(server)
    ok(transact(client, "CREATE Box"))
    assert ok(transact(client, 'LIST (SUBSCRIBED) "" "Box"')) == []
    assert ok(transact(client, 'LSUB "" "Box"')) == []
    ok(transact(client, "SUBSCRIBE Box"))
    assert ok(transact(client, 'LIST (SUBSCRIBED) "" "Box"')) == [
        b'* LIST (\\HasNoChildren \\Subscribed) "/" "Box"']
    ok(transact(client, "DELETE Box"))
    lines = ok(transact(client, 'LIST (SUBSCRIBED) "" "*"'))
    assert b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "/" "Box"' in lines
    lines = ok(transact(client, 'LIST (SUBSCRIBED) "" "Box"'))
    assert lines == [b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "/" "Box"']
    assert ok(transact(client, 'LSUB "" "Box"')) == [b'* LSUB (\\Noselect \\HasNoChildren) "/" "Box"']
    assert ok(transact(client, 'LIST "" "Box"')) == []  # no mailbox: not in a plain LIST
    ok(transact(client, "UNSUBSCRIBE Box"))
    assert ok(transact(client, 'LIST (SUBSCRIBED) "" "Box"')) == []
    assert tagged(transact(client, "UNSUBSCRIBE Box")).startswith(b"NO")
    client.logout()


# -- 2. \\Recent (imaptest: copy, search-flags, select) -----------------------------------

def test_recent_goes_to_the_first_session_that_selects(server: PymailServer) -> None:
    """RFC 3501 section 2.3.2: a message is \\Recent in the first session to select its
    mailbox after it arrived (EXAMINE does not take it), new mail goes to the session
    that has the mailbox selected; SEARCH RECENT / NEW / OLD (section 6.4.4); a COPY is
    recent in the target (section 6.4.7)."""
    client, other = login(server), login(server)
    ok(append(client, "INBOX", PLAIN))
    ok(append(client, "INBOX", PLAIN, "\\Seen"))
    assert ok(transact(client, "STATUS INBOX (RECENT)")) == [b'* STATUS "INBOX" (RECENT 2)']
    assert b"* 2 RECENT" in ok(transact(other, "EXAMINE INBOX"))  # looks, does not take
    assert b"* 2 RECENT" in ok(transact(client, "SELECT INBOX"))
    assert ok(transact(client, "FETCH 1:2 FLAGS")) == [
        b"* 1 FETCH (FLAGS (\\Recent))", b"* 2 FETCH (FLAGS (\\Recent \\Seen))"]
    assert ok(transact(client, "SEARCH RECENT")) == [b"* SEARCH 1 2"]
    assert ok(transact(client, "SEARCH NEW")) == [b"* SEARCH 1"]
    assert ok(transact(client, "SEARCH OLD")) == [b"* SEARCH"]
    assert b"* 0 RECENT" in ok(transact(other, "SELECT INBOX"))  # taken already
    assert ok(transact(other, "SEARCH RECENT")) == [b"* SEARCH"]
    assert ok(transact(other, "FETCH 1 FLAGS")) == [b"* 1 FETCH (FLAGS ())"]
    # a COPY is recent in the target, for the next session to select it
    ok(transact(client, "COPY 1:2 Archive"))
    assert b"* 2 RECENT" in ok(transact(other, "SELECT Archive"))
    # new mail while selected: recent for the session that reports it
    ok(append(other, "INBOX", PLAIN))
    lines = ok(transact(client, "NOOP"))
    assert b"* 3 EXISTS" in lines and b"* 3 RECENT" in lines, lines
    assert ok(transact(client, "FETCH 3 FLAGS")) == [b"* 3 FETCH (FLAGS (\\Recent))"]
    assert ok(transact(other, "STATUS INBOX (RECENT)")) == [b'* STATUS "INBOX" (RECENT 0)']
    client.logout()
    other.logout()
