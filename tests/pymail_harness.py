"""Run a real pymail server process for the end-to-end tests, and talk to it.

`PymailServer` writes a config into a temporary directory, starts `python -m pymail
serve --config ...` as a child process on free loopback ports, waits until the log says
it listens, and gives the tests: the address, the CLI (`cli(...)`), the store read back
through the `Index`/`BlobStore` interfaces (`store()`), and stop/kill.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymail.app import open_configured_store
from pymail.config import load_config
from pymail.store import Store

REPO = Path(__file__).resolve().parents[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    """Return once 127.0.0.1:`port` accepts TCP connections (RuntimeError after
    `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} does not accept connections")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PymailServer:
    """A pymail child process with its own data directory and config."""

    def __init__(self, workdir: Path, *, extra_config: str = "", hostname: str = "mx.test.example",
                 workers: int = 1, storage_config: str = "", port: int | None = None,
                 http: bool = False, imaps: bool = False, imap: bool = False,
                 pop3s: bool = False, pop3: bool = False, submission: bool = False,
                 submissions: bool = False, server_config: str = "") -> None:
        """`server_config`: more lines for the [server] section (`extra_config` comes
        after every section, so it cannot add to one the harness writes)."""
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.port = port or free_port()
        self.http_port = free_port() if http else None
        self.imaps_port = free_port() if imaps else None
        self.imap_port = free_port() if imap else None
        self.pop3s_port = free_port() if pop3s else None
        self.pop3_port = free_port() if pop3 else None
        self.submission_port = free_port() if submission else None
        self.submissions_port = free_port() if submissions else None
        self.config_path = workdir / "pymail.toml"
        self.log_path = workdir / "pymail.log"
        self.config_path.write_text(
            f"""
[server]
hostname = "{hostname}"
data_dir = "{self.data_dir}"
workers = {workers}
{server_config}

[listen]
smtp = ["127.0.0.1:{self.port}"]
submission = [{f'"127.0.0.1:{self.submission_port}"' if submission else ""}]
submissions = [{f'"127.0.0.1:{self.submissions_port}"' if submissions else ""}]
imap = [{f'"127.0.0.1:{self.imap_port}"' if imap else ""}]
imaps = [{f'"127.0.0.1:{self.imaps_port}"' if imaps else ""}]
pop3 = [{f'"127.0.0.1:{self.pop3_port}"' if pop3 else ""}]
pop3s = [{f'"127.0.0.1:{self.pop3s_port}"' if pop3s else ""}]
http = [{f'"127.0.0.1:{self.http_port}"' if http else ""}]
{storage_config}
{extra_config}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    # -- process ----------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYMAIL_CONFIG", None)
        env.pop("PYMAIL_DATA", None)
        return env

    def start(self, timeout: float = 30.0) -> "PymailServer":
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pymail", "serve", "--config", str(self.config_path)],
            stdout=self.log_file, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pymail exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"pymail did not start:\n{self.log()}")
        # the other listeners are bound right after the MX: wait for each of them too
        for port in (self.submission_port, self.submissions_port, self.imaps_port, self.imap_port,
                     self.pop3s_port, self.pop3_port, self.http_port):
            if port is not None:
                wait_for_port(port, max(deadline - time.monotonic(), 1.0))
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.log_file.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self.log_file.close()

    @property
    def ca_file(self) -> Path:
        """The embedded default's private CA, which signs the IMAPS certificate."""
        return self.data_dir / "tls" / "ca.pem"

    def imaps_client(self, user: str | None = None, password: str = "secret-pw"):
        """An `imaplib.IMAP4_SSL` connected over real TLS (verified against `ca_file`),
        logged in as `user` when given."""
        import imaplib
        import ssl

        assert self.imaps_port is not None, "started without imaps=True"
        context = ssl.create_default_context(cafile=str(self.ca_file))
        client = imaplib.IMAP4_SSL("127.0.0.1", self.imaps_port, ssl_context=context, timeout=30)
        if user is not None:
            client.login(user, password)
        return client

    def pop3s_client(self, user: str | None = None, password: str = "secret-pw"):
        """A `poplib.POP3_SSL` connected over real TLS (verified against `ca_file`),
        logged in with USER/PASS as `user` when given."""
        import poplib
        import ssl

        assert self.pop3s_port is not None, "started without pop3s=True"
        context = ssl.create_default_context(cafile=str(self.ca_file))
        client = poplib.POP3_SSL("127.0.0.1", self.pop3s_port, context=context, timeout=30)
        if user is not None:
            client.user(user)
            client.pass_(password)
        return client

    def http_get(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET on the HTTP service."""
        import urllib.error
        import urllib.request

        assert self.http_port is not None, "started without http=True"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- CLI and storage --------------------------------------------------------------

    def cli(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "pymail", "--config", str(self.config_path), *args],
            input=input, capture_output=True, text=True, env=self.env, timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"pymail {' '.join(args)} -> {result.returncode}: {result.stderr}")
        return result

    def add_user(self, address: str, password: str = "secret-pw") -> None:
        """Add the user (and its domain if missing) through the storage interfaces: much
        faster than the CLI, whose own behaviour tests/e2e/test_cli.py covers."""
        from pymail.auth.passwords import hash_password

        async def add() -> None:
            store = self.store()
            try:
                await store.migrate()
                domain = address.rpartition("@")[2]
                if await store.directory.get_domain(domain) is None:
                    await store.directory.add_domain(domain)
                user = await store.directory.add_user(address, hash_password(password))
                await store.index.ensure_default_mailboxes(user.id)
            finally:
                await store.close()

        asyncio.run(add())

    def store(self) -> Store:
        """The same storage the server uses, opened through the same config."""
        return open_configured_store(load_config(self.config_path))

    def blob_keys(self) -> list[str]:
        """Every blob key in the store (through the BlobStore interface)."""

        async def read() -> list[str]:
            store = self.store()
            try:
                return sorted([k async for k in store.blobs.keys()])
            finally:
                await store.close()

        return asyncio.run(read())

    def inbox(self, address: str, mailbox: str = "INBOX") -> list[tuple[int, bytes, frozenset[str]]]:
        """[(uid, blob bytes, flags)] of a user's mailbox, in UID order, via the interfaces."""

        async def read() -> list[tuple[int, bytes, frozenset[str]]]:
            store = self.store()
            try:
                user = await store.directory.get_user(address)
                assert user is not None, f"no user {address}"
                box = await store.index.get_mailbox(user.id, mailbox)
                if box is None:
                    return []
                rows = await store.index.list_messages(box.id)
                return [(r.uid, await store.blobs.get(r.blob_key), r.flags) for r in rows]
            finally:
                await store.close()

        return asyncio.run(read())
