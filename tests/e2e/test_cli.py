"""The `pymail` command: directory management, config checking, and one-line errors."""

from __future__ import annotations

import asyncio
import os
import re
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.pymail_harness import REPO, PymailServer


def run(*args: str, input: str | None = None, env_extra: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYMAIL_")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pymail", *args], input=input, capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=60)


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture
def srv(tmp_path: Path) -> PymailServer:
    return PymailServer(tmp_path)  # not started: the CLI works on the storage directly


def test_directory_round_trip(srv: PymailServer) -> None:
    assert "added" in srv.cli("domain", "add", "Example.TEST").stdout
    srv.cli("domain", "add", "ldap.example", "--auth", "ldap", "--ldap-base-dn", "ou=people,dc=ldap,dc=example")
    listing = srv.cli("domain", "list").stdout
    assert "example.test\tactive\tauth=local\ttransport=virtual:" in listing
    assert "ldap.example\tactive\tauth=ldap" in listing and "ldap_base_dn=ou=people" in listing

    srv.cli("user", "add", "Alice@Example.test", "--password-stdin", "--quota", "2GB", input="pw one\n")
    assert srv.cli("user", "list").stdout.strip() == f"alice@example.test\tactive\tquota={2 * 1024**3}"
    srv.cli("user", "passwd", "alice@example.test", "--password-stdin", input="pw two\n")
    srv.cli("alias", "add", "info@example.test", "alice@example.test", "bob@remote.example")
    assert srv.cli("alias", "list").stdout.splitlines() == [
        "info@example.test\talice@example.test\tactive",
        "info@example.test\tbob@remote.example\tactive",
    ]
    srv.cli("alias", "remove", "info@example.test", "bob@remote.example")
    assert len(srv.cli("alias", "list").stdout.splitlines()) == 1

    # the default mailboxes exist with their special-use flags
    async def mailboxes() -> list[tuple[str, str | None]]:
        store = srv.store()
        try:
            user = await store.directory.get_user("alice@example.test")
            assert user is not None
            from pymail.auth.passwords import verify_password

            assert verify_password("pw two", user.password_hash)
            assert user.password_hash.startswith("{ARGON2ID}$argon2id$")
            return [(m.name, m.special_use) for m in await store.index.list_mailboxes(user.id)]
        finally:
            await store.close()

    assert sorted(asyncio.run(mailboxes())) == sorted([
        ("INBOX", None), ("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"),
        ("Junk", "\\Junk"), ("Archive", "\\Archive"),
    ])

    srv.cli("user", "remove", "alice@example.test")
    assert srv.cli("user", "list").stdout == ""
    srv.cli("domain", "remove", "example.test")
    assert "example.test" not in srv.cli("domain", "list").stdout


def test_password_never_echoed_or_logged(srv: PymailServer) -> None:
    srv.cli("domain", "add", "example.test")
    result = srv.cli("user", "add", "a@example.test", "--password-stdin", input="Sup3r-S3cret\n")
    assert "Sup3r-S3cret" not in result.stdout + result.stderr
    failed = srv.cli("user", "add", "a@example.test", "--password-stdin", input="Sup3r-S3cret\n", check=False)
    assert "Sup3r-S3cret" not in failed.stdout + failed.stderr
    assert one_line_error(failed).startswith("pymail: error: already exists")


def test_new_hashes_take_the_configured_argon2_cost_and_old_ones_keep_verifying(tmp_path: Path) -> None:
    srv = PymailServer(tmp_path, extra_config='[auth]\nargon2_time_cost = 2\nargon2_memory_cost = "19MiB"\n')
    srv.add_user("old@example.test", "old pw")  # today's default cost, m=65536,t=3
    srv.cli("user", "add", "new@example.test", "--password-stdin", input="new pw\n")

    async def hashes() -> dict[str, str]:
        store = srv.store()
        try:
            return {u.address: u.password_hash for u in await store.directory.list_users()}
        finally:
            await store.close()

    from pymail.auth.passwords import verify_password

    stored = asyncio.run(hashes())
    assert "$m=19456,t=2,p=1$" in stored["new@example.test"]
    assert "$m=65536,t=3,p=1$" in stored["old@example.test"]
    assert verify_password("new pw", stored["new@example.test"])
    assert verify_password("old pw", stored["old@example.test"])


def test_db_migrate_is_idempotent(srv: PymailServer) -> None:
    first = srv.cli("db", "migrate")
    srv.cli("domain", "add", "example.test")
    second = srv.cli("db", "migrate")
    assert first.stdout == second.stdout
    assert "example.test" in srv.cli("domain", "list").stdout


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["domain", "add", "bad_domain!"], None, "invalid domain name"),
        (["user", "add", "nobody@missing.example", "--password-stdin"], "x\n", "does not exist"),
        (["user", "add", "not-an-address", "--password-stdin"], "x\n", "invalid address"),
        (["user", "add", "u@example.test", "--password-stdin"], "\n", "password is empty"),
        (["user", "add", "u@example.test"], "", "use --password-stdin"),
        (["user", "add", "u@example.test", "--password-stdin", "--quota", "lots"], "x\n", "--quota"),
        (["user", "remove", "ghost@example.test"], None, "not found"),
        (["domain", "remove", "ghost.example"], None, "not found"),
        (["alias", "add", "a@unknown.example", "b@example.test"], None, "not found"),
        (["domain", "add", "example.test", "--auth", "ldap"], None, "--ldap-base-dn"),
    ],
)
def test_bad_cli_input_is_one_line(srv: PymailServer, args: list[str], stdin: str | None, message: str) -> None:
    srv.cli("domain", "add", "example.test", check=False)
    result = srv.cli(*args, input=stdin, check=False)
    line = one_line_error(result)
    assert line.startswith("pymail: error:") and message in line, line


@pytest.mark.parametrize("args", [["frobnicate"], ["user"], ["domain", "add"], ["serve", "--bogus"], []])
def test_bad_usage_exits_2_with_one_line(args: list[str]) -> None:
    line = one_line_error(run(*args), code=2)
    assert line.startswith("pymail") and "usage error" in line


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[server]\nhostnam = "x"\n', "server.hostnam: unknown key"),
        ('[limits]\nmessage_size = "lots"\n', "limits.message_size: invalid size"),
        ('[listen]\nsmtp = ["127.0.0.1"]\n', "listen.smtp.0: invalid address"),
        ('[listen]\nsmtp = "127.0.0.1:25"\n', "listen.smtp"),
        ('[server]\nworkers = 0\n', "server.workers"),
        ('[storage]\nindex = "mysql://db"\n', "storage.index: unsupported"),
        ('[tls]\ncert = "/etc/x.pem"\n', "tls: set both cert and key"),
        ("[server\n", "TOML syntax error"),
        ('[auth]\ncache_ttl = "soon"\n', "auth.cache_ttl: invalid duration"),
        ('[auth]\nargon2_memory_cost = "8MiB"\n', "below OWASP's minimum"),
        ('[auth]\nargon2_memory_cost = "19MiB"\nargon2_time_cost = 1\n', "below OWASP's minimum"),
        ('[auth]\nargon2_memory_cost = "2GiB"\n', "auth: argon2_memory_cost must be at most"),
        ('[auth]\nargon2_memory_cost = "lots"\n', "auth.argon2_memory_cost: invalid size"),
        ('[auth]\nargon2_parallelism = 0\n', "auth: argon2_parallelism must be 1 to 16"),
    ],
)
def test_bad_config_is_one_line(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    for command in (["check-config"], ["serve"]):
        line = one_line_error(run("--config", str(path), *command))
        assert line.startswith("pymail: config error:") and message in line, line


def test_missing_config_file(tmp_path: Path) -> None:
    line = one_line_error(run("--config", str(tmp_path / "nope.toml"), "check-config"))
    assert "nope.toml: cannot read" in line


def test_check_config_prints_effective_settings(tmp_path: Path) -> None:
    result = run("check-config", env_extra={"PYMAIL_DATA": str(tmp_path / "d")})
    assert result.returncode == 0, result.stderr
    assert f'data_dir = "{tmp_path / "d"}"' in result.stdout
    assert 'smtp = ["127.0.0.1:2525"]' in result.stdout
    assert "message_size = 104857600" in result.stdout
    assert f"# index = sqlite://{tmp_path / 'd' / 'index.sqlite3'}" in result.stdout


def test_example_config_is_valid_and_complete() -> None:
    """conf/pymail.toml validates and names every key of the schema."""
    from pymail.config import load_config
    from pymail.config.schema import Config

    example = REPO / "conf" / "pymail.toml"
    load_config(example)
    text = example.read_text()

    def keys(model: type, prefix: str) -> list[tuple[str, str]]:
        out = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                dotted = f"{prefix}.{name}" if prefix else name
                out.append(("", dotted))  # a [section] header
                out += keys(annotation, dotted)
            else:
                out.append((prefix, name))
        return out

    found: set[tuple[str, str]] = set()
    section = ""
    for line in text.splitlines():
        if m := re.match(r"^(?:# )?\[([a-z0-9_.]+)\]\s*$", line):
            section = m.group(1)
            found.add(("", section))
        elif m := re.match(r"^(?:# )?([a-z0-9_]+) = ", line):
            found.add((section, m.group(1)))
    for section_name, name in keys(Config, ""):
        # a table-valued key ([checks] policy) may be written as its own [section]
        assert (section_name, name) in found or ("", f"{section_name}.{name}") in found, \
            f"{section_name}.{name} is not in conf/pymail.toml"


def test_store_gc_deletes_old_orphans_only(srv: PymailServer) -> None:
    srv.add_user("alice@example.test")
    srv.start()
    try:
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
            client.sendmail("c@remote.example", ["alice@example.test"], b"Subject: kept\r\n\r\nx\r\n")
    finally:
        srv.stop()
    [kept] = srv.blob_keys()

    async def put_orphan() -> str:
        store = srv.store()
        try:
            return await store.blobs.put(b"Subject: orphan\r\n\r\ncrash before the index commit\r\n")
        finally:
            await store.close()

    orphan = asyncio.run(put_orphan())
    result = srv.cli("store", "gc")
    assert result.stdout.startswith("2 blobs: 0 orphans deleted"), result.stdout  # both young
    two_hours_ago = time.time() - 7200
    for key in (kept, orphan):
        path = srv.data_dir / "blobs" / key[:2] / key[2:4] / key
        os.utime(path, (two_hours_ago, two_hours_ago))
    result = srv.cli("store", "gc")
    assert result.stdout.startswith("2 blobs: 1 orphans deleted"), result.stdout
    assert "1 in use" in result.stdout
    assert srv.blob_keys() == [kept]
    assert one_line_error(srv.cli("store", "gc", "--grace", "5", check=False)).endswith(
        "--grace must be at least 60 seconds (deliveries in progress need it)")


@pytest.mark.parametrize("service", ["submissions", "imaps", "pop3s"])
def test_a_port_in_use_stops_the_start_with_one_line(tmp_path: Path, service: str) -> None:
    srv = PymailServer(tmp_path, **{service: True})
    port = getattr(srv, f"{service}_port")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [sys.executable, "-m", "pymail", "serve", "--config", str(srv.config_path)],
            capture_output=True, text=True, env=srv.env, timeout=60, cwd=tmp_path)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, result.stderr
    assert f"listen.{service}: cannot listen on ['127.0.0.1:{port}']" in errors[0]
    assert "Traceback" not in result.stderr
