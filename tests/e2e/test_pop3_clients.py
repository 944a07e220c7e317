"""Real POP3 clients against a real pymail over real TLS, verified against the embedded
private CA, on both backend pairs: fetchmail over POP3S and over POP3 with STLS,
getmail6 over POP3S, curl's POP3 (LIST, RETR, DELE; SASL PLAIN with initial response
after STLS).  Mail is delivered by swaks (the README's "done" check: swaks delivers,
fetchmail fetches and deletes, and an IMAP session watching INBOX sees the deletion);
the store is read back through the Index/BlobStore interfaces.

One server per backend pair serves the module; each test makes a user of its own."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKEND_PAIRS, make_storage
from tests.pymail_harness import PymailServer, client_tool

PASSWORD = "secret-pw"
HOSTNAME = "mx.test.example"  # the name in the embedded default's certificate


@pytest.fixture(scope="module", params=BACKEND_PAIRS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PymailServer]:
    tmp_path = tmp_path_factory.mktemp("pop3clients")
    storage = make_storage(request.param, request, tmp_path)
    srv = PymailServer(tmp_path, storage_config=storage.config, hostname=HOSTNAME,
                       pop3s=True, pop3=True, imaps=True,  # a module of wrong passwords:
                       extra_config="[auth.ban]\nmax_failures = 1000\naccount_max_failures = 0\n")
    srv.add_user("postmaster@example.test", PASSWORD)
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


_serial = itertools.count(1)


@pytest.fixture
def user(server: PymailServer) -> str:
    address = f"client{next(_serial)}@example.test"
    server.add_user(address, PASSWORD)
    return address


#: the Debian package of each client program these tests drive
PACKAGES = {"fetchmail": "fetchmail", "getmail": "getmail6", "curl": "curl", "swaks": "swaks"}


def clients(name: str) -> None:
    """The POP3 client `name` and swaks (which delivers) must be installed."""
    for tool in (name, "swaks"):
        client_tool(tool, PACKAGES[tool])


def swaks(server: PymailServer, to: str, subject: str, body: str) -> None:
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{server.port}", "--from", "carol@remote.example",
         "--to", to, "--header", f"Subject: {subject}", "--body", body, "--silent", "2"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def deliver_three(server: PymailServer, user: str) -> list[bytes]:
    """Three messages by swaks, with dot lines in their bodies; their stored bytes."""
    for n in range(1, 4):
        swaks(server, user, f"pop client test {n}", f"body of {n}\n.leading dot\n.\nlast line of {n}")
    stored = [blob for _, blob, _ in server.inbox(user)]
    assert len(stored) == 3
    return stored


def body_of(raw: bytes) -> bytes:
    """A message's body with LF line ends (what a client hands on may differ in header
    lines it adds and in line ends, never in the body)."""
    return raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[1]


def write_mda(directory: Path) -> Path:
    """A delivery command for fetchmail/getmail: each message into its own file."""
    out = directory / "delivered"
    out.mkdir()
    script = directory / "mda.sh"
    script.write_text(f'#!/bin/sh\nexec cat > "{out}/msg.$$"\n')
    script.chmod(0o755)
    return script


def delivered(directory: Path) -> list[bytes]:
    return sorted((p.read_bytes() for p in (directory / "delivered").iterdir()), key=body_of)


# -- fetchmail ---------------------------------------------------------------------------


def fetchmail(server: PymailServer, user: str, workdir: Path, *, implicit_tls: bool) -> str:
    """Run fetchmail once: fetch every message and delete it from the server."""
    workdir.mkdir()
    mda = write_mda(workdir)
    port = server.pop3s_port if implicit_tls else server.pop3_port
    # 'ssl' = POP3S; without it, 'sslproto' with 'sslcertck' makes STLS mandatory.
    # fetchmail matches the certificate's DNS names only, so it is told which name to
    # expect; it runs as root here (it warns and goes on).
    tls = "ssl " if implicit_tls else ""
    rc = workdir / "fetchmailrc"
    rc.write_text(
        f"poll 127.0.0.1 service {port} protocol pop3 auth password\n"
        f'  user "{user}" password "{PASSWORD}" is root here\n'
        f'  {tls}sslproto "TLS1.2+" sslcertck sslcertfile "{server.ca_file}" sslcommonname "{HOSTNAME}"\n'
        f'  mda "{mda}"\n'
        "  fetchall nokeep\n"
    )
    rc.chmod(0o600)  # fetchmail refuses a readable rc file
    env = dict(os.environ, HOME=str(workdir))
    result = subprocess.run(
        ["fetchmail", "-f", str(rc), "-v", "--nosyslog", "--nodetach", "--idfile", str(workdir / "ids"),
         "--pidfile", str(workdir / "pid")],
        capture_output=True, text=True, timeout=60, env=env,
    )
    output = f"fetchmail -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    return output


def test_swaks_then_fetchmail_over_pop3s_and_imap_sees_the_deletion(
        server: PymailServer, user: str, tmp_path: Path) -> None:
    clients("fetchmail")
    stored = deliver_three(server, user)
    watcher = server.imaps_client(user, PASSWORD)
    assert watcher.select("INBOX") == ("OK", [b"3"])

    output = fetchmail(server, user, tmp_path / "fetchmail", implicit_tls=True)
    assert "SSL/TLS: using protocol TLSv1.3" in output or "TLSv1.2" in output, output
    assert output.count("POP3> DELE") == 3 and "POP3< +OK Bye" in output, output
    got = delivered(tmp_path / "fetchmail")
    assert [body_of(m) for m in got] == [body_of(m) for m in stored]
    assert all(b".leading dot\n.\nlast line" in body_of(m) for m in got)
    assert server.inbox(user) == []  # deleted durably at QUIT

    watcher.untagged_responses.clear()
    assert watcher.noop()[0] == "OK"
    assert watcher.untagged_responses.get("EXPUNGE") == [b"3", b"2", b"1"], watcher.untagged_responses
    assert watcher.select("INBOX") == ("OK", [b"0"])
    watcher.logout()


def test_fetchmail_over_pop3_with_stls(server: PymailServer, user: str, tmp_path: Path) -> None:
    clients("fetchmail")
    stored = deliver_three(server, user)
    output = fetchmail(server, user, tmp_path / "fetchmail", implicit_tls=False)
    assert "POP3> STLS" in output and "POP3< +OK Begin TLS negotiation now" in output, output
    assert output.index("POP3> STLS") < output.index("POP3> USER"), output  # no password in clear
    assert [body_of(m) for m in delivered(tmp_path / "fetchmail")] == [body_of(m) for m in stored]
    assert server.inbox(user) == []


# -- getmail6 ----------------------------------------------------------------------------


def test_getmail6_over_pop3s_retrieves_and_deletes(server: PymailServer, user: str, tmp_path: Path) -> None:
    clients("getmail")
    stored = deliver_three(server, user)
    mda = write_mda(tmp_path)
    rcdir = tmp_path / "getmail"
    rcdir.mkdir()
    # getmail refuses to write a Maildir as root; an external MDA is allowed with
    # allow_root_commands.  (getmail6 has no STLS for POP3: POP3S only.)
    (rcdir / "getmailrc").write_text(
        "[retriever]\n"
        "type = SimplePOP3SSLRetriever\n"
        f"server = 127.0.0.1\nport = {server.pop3s_port}\n"
        f"username = {user}\npassword = {PASSWORD}\n"
        f"ca_certs = {server.ca_file}\n"
        "[destination]\n"
        f"type = MDA_external\npath = {mda}\nallow_root_commands = true\n"
        "[options]\n"
        "delete = true\nread_all = true\nverbose = 2\n"
    )
    run = ["getmail", "--rcfile", "getmailrc", "--getmaildir", str(rcdir)]
    result = subprocess.run(run, capture_output=True, text=True, timeout=60)
    output = f"getmail -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert result.returncode == 0, output
    assert output.count("deleted") == 3 and "3 messages" in output, output
    assert [body_of(m) for m in delivered(tmp_path)] == [body_of(m) for m in stored]
    assert server.inbox(user) == []
    # a second run finds nothing
    result = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "0 messages" in result.stdout, result.stdout + result.stderr


# -- curl --------------------------------------------------------------------------------


def curl(server: PymailServer, user: str, url: str, *extra: str,
         password: str = PASSWORD) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "20", "--cacert", str(server.ca_file),
         "--user", f"{user}:{password}", *extra, url],
        capture_output=True, timeout=30,
    )


def test_curl_lists_retrieves_and_deletes(server: PymailServer, user: str) -> None:
    clients("curl")
    stored = deliver_three(server, user)
    pop3s = f"pop3s://127.0.0.1:{server.pop3s_port}"
    result = curl(server, user, pop3s + "/")  # LIST
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"".join(b"%d %d\r\n" % (n, len(b)) for n, b in enumerate(stored, 1))
    result = curl(server, user, pop3s + "/2")  # RETR; curl undoes the dot-stuffing
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == stored[1]
    result = curl(server, user, pop3s + "/2", "--request", "DELE", "--head")
    assert result.returncode == 0, result.stderr.decode()
    assert [blob for _, blob, _ in server.inbox(user)] == [stored[0], stored[2]]
    # STLS on the POP3 port (mandatory with --ssl-reqd), then SASL PLAIN with an
    # initial response (RFC 5034), then RETR
    verbose = curl(server, user, f"pop3://127.0.0.1:{server.pop3_port}/1", "--ssl-reqd", "--sasl-ir",
                   "--verbose")
    assert verbose.returncode == 0, verbose.stderr.decode()
    assert verbose.stdout == stored[0]
    trace = verbose.stderr.decode()
    assert "> STLS" in trace and "> AUTH PLAIN " in trace and trace.index("> STLS") < trace.index("> AUTH"), trace
    result = curl(server, user, pop3s + "/1", "--login-options", "AUTH=LOGIN")
    assert result.returncode == 0 and result.stdout == stored[0], result.stderr.decode()
    result = curl(server, user, pop3s + "/", password="wrong")
    assert result.returncode == 67, (result.returncode, result.stderr.decode())  # CURLE_LOGIN_DENIED
