"""Run a real pymail server process for the end-to-end tests, and talk to it.

`PymailServer` writes a config into a temporary directory, starts `python -m pymail
serve --config ...` as a child process on free loopback ports, waits until every port it
was given accepts connections (or says how the process exited, with its log), and gives
the tests: the address, the CLI (`cli(...)`), the store read back through the
`Index`/`BlobStore` interfaces (`store()`), and stop/kill.

Every server it starts runs with the event-loop watchdog on (``server.loop_watchdog =
"100ms"``, `pymail.net.watchdog`), so each e2e server log records what held its loop;
`PymailServer.stalls()` reads them back.  Tests do not fail on stalls by default (a busy
2-core box has GC pauses and TLS handshakes); a hardening test asserts on them.

`client_tool()` / `client_feature()` / `client_module()` find a real client (swaks, curl, ...) a test drives:
a skip when it is missing, but a failure naming the package under the README's test
command (``scripts/test.sh`` exports ``PYMAIL_TEST_STRICT=1``), which installs them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from pymail.app import open_configured_store
from pymail.config import load_config
from pymail.store import Store

REPO = Path(__file__).resolve().parents[1]


#: Set by scripts/test.sh (the README's test command, which installs every client).
STRICT = os.environ.get("PYMAIL_TEST_STRICT") == "1"


def client_tool(name: str, package: str) -> str:
    """The path of the client program `name` (from the Debian package `package`) a test
    drives.  Missing: a skip, or under scripts/test.sh a failure naming the package."""
    path = shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/sbin") if os.access(f"{d}/{name}", os.X_OK)), None)
    if path is None:
        message = f"{name} is not installed: install the Debian package '{package}'"
        if STRICT:
            pytest.fail(f"{message} (scripts/test.sh installs it; did its apt-get fail?)", pytrace=False)
        pytest.skip(f"{message} (scripts/test.sh does)")
    return path


def client_feature(name: str, package: str, *, probe: tuple[str, ...], expect: str, feature: str,
                   feature_package: str) -> str:
    """`client_tool`, and the client must also have `feature`: the output of running it
    with `probe` contains `expect` (e.g. ``swaks --support`` says ``=== TLS supported``).
    Missing: a skip, or under scripts/test.sh a failure naming `feature_package`."""
    path = client_tool(name, package)
    if expect not in _probe(path, probe):
        message = f"{name} has no {feature}: install the Debian package '{feature_package}'"
        if STRICT:
            pytest.fail(f"{message} (scripts/test.sh installs it; did its apt-get fail?)", pytrace=False)
        pytest.skip(f"{message} (scripts/test.sh does)")
    return path


@functools.lru_cache(maxsize=None)
def _probe(path: str, args: tuple[str, ...]) -> str:
    result = subprocess.run([path, *args], capture_output=True, text=True, timeout=60)
    return result.stdout + result.stderr


def client_module(name: str, package: str, minversion: str | None = None) -> ModuleType:
    """`pytest.importorskip` for a client library a test drives (`package` names where it
    comes from); under scripts/test.sh a missing one is a failure, not a skip."""
    try:
        return pytest.importorskip(name, minversion=minversion)
    except pytest.skip.Exception as e:
        if not STRICT:
            raise
        pytest.fail(f"{e.msg}: install {package} (scripts/test.sh installs it)", pytrace=False)


class ServerExited(RuntimeError):
    """The server process ended while the harness waited for it."""


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None,
                  log: Callable[[], str] | None = None) -> None:
    """Return once 127.0.0.1:`port` accepts TCP connections (RuntimeError after
    `timeout` seconds).  With `proc`, `ServerExited` as soon as that process has ended,
    with its exit code and `log()`, instead of waiting out the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise ServerExited(f"pymail exited with {proc.returncode}:\n{log() if log else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
    raise RuntimeError(f"port {port} does not accept connections{':' + chr(10) + log() if log else ''}")


#: A watchdog warning (pymail/net/watchdog.py) in a server log.
_STALL = re.compile(
    r"WARNING pymail\.watchdog\[(?P<pid>\d+)\]: event loop stalled (?P<seconds>\d+(?:\.\d+)?)s"
    r"(?P<ongoing> so far, still running)? \(loop_watchdog [^)]*\) (?P<where>.*?); stack: (?P<stack>.*)$")
_RAN_AGAIN = re.compile(r"INFO pymail\.watchdog\[(?P<pid>\d+)\]: event loop ran again after "
                        r"(?P<seconds>\d+(?:\.\d+)?)s")


@dataclass
class Stall:
    """One event-loop stall a server's watchdog logged."""

    seconds: float  #: how long the loop was held (so far, while `ongoing`)
    where: str  #: the task, e.g. "in task 'Task-7' (SMTP._handle_client)"
    stack: str  #: the loop thread's stack, outermost first, " > " between frames
    pid: int  #: the worker process
    ongoing: bool  #: the log ends before the loop ran again
    line: str  #: the whole log line

    def __str__(self) -> str:
        return f"{self.seconds:.3f}s {self.where}: {self.stack}"


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
                 submissions: bool = False, web: bool = False, https: bool = False,
                 server_config: str = "",
                 loop_watchdog: str | None = "100ms",
                 env: dict[str, str] | None = None, own_pid_env: tuple[str, ...] = ()) -> None:
        """`server_config`: more lines for the [server] section (`extra_config` comes
        after every section, so it cannot add to one the harness writes).
        `loop_watchdog`: the server's ``server.loop_watchdog`` (None: leave it unset, i.e.
        off; a ``loop_watchdog`` line in `server_config` wins).
        `env`: more environment for the server, over the test's own (which never passes
        on a systemd watchdog, ``WATCHDOG_USEC``/``WATCHDOG_PID``, of its own).
        `own_pid_env`: variables set to the server's own pid as it is exec'd, the way
        systemd sets ``WATCHDOG_PID`` after its fork (the server runs through
        ``sh -c 'export V=$$; exec ...'``, so `proc.pid` is still pymail's)."""
        self.workdir = workdir
        self.extra_env = dict(env or {})
        self.own_pid_env = own_pid_env
        self.data_dir = workdir / "data"
        self.port = port or free_port()
        self.http_port = free_port() if http else None
        self.imaps_port = free_port() if imaps else None
        self.imap_port = free_port() if imap else None
        self.pop3s_port = free_port() if pop3s else None
        self.pop3_port = free_port() if pop3 else None
        self.submission_port = free_port() if submission else None
        self.submissions_port = free_port() if submissions else None
        self.web_port = free_port() if web else None  # [listen] web (public HTTP)
        self.https_port = free_port() if https else None  # [listen] https
        self.config_path = workdir / "pymail.toml"
        self.log_path = workdir / "pymail.log"
        if not re.search(r"(?m)^\s*\[dns\]", extra_config):
            # Never the system's resolver (/etc/resolv.conf) in a test: a test that does
            # not bring its DNS (tests/internet.py) gets a loopback port nobody answers
            # on, so a queued remote message is deferred, not looked up outside.
            extra_config += (f'\n[dns]\nnameservers = ["127.0.0.1"]\nport = {free_port()}\n'
                             'timeout = "1s"\n')
        if not re.search(r"(?m)^\s*\[checks(\.policy)?\]", extra_config):
            # A test about something else gets no sender-authentication checks: with
            # the dead resolver above every DMARC lookup would be a temperror (451).
            # The inbound-checks tests (tests/e2e/checks/) bring their own [checks].
            extra_config += ("\n[checks]\nspf = false\ndkim = false\ndmarc = false\n"
                             "arc = false\niprev = false\n")
        watchdog_line = ""
        if loop_watchdog is not None and not re.search(r"(?m)^\s*loop_watchdog\s*=", server_config):
            watchdog_line = f'loop_watchdog = "{loop_watchdog}"'
        self.config_path.write_text(
            f"""
[server]
hostname = "{hostname}"
data_dir = "{self.data_dir}"
workers = {workers}
{watchdog_line}
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
web = [{f'"127.0.0.1:{self.web_port}"' if web else ""}]
https = [{f'"127.0.0.1:{self.https_port}"' if https else ""}]
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
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> "PymailServer":
        self.log_file = open(self.log_path, "ab")
        argv = [sys.executable, "-m", "pymail", "serve", "--config", str(self.config_path)]
        if self.own_pid_env:
            exports = "".join(f"export {name}=$$; " for name in self.own_pid_env)
            argv = ["sh", "-c", exports + 'exec "$@"', "sh", *argv]
        self.proc = subprocess.Popen(
            argv,
            stdout=self.log_file, stderr=subprocess.STDOUT, env=self.env, cwd=self.workdir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerExited(f"pymail exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"pymail did not start:\n{self.log()}")
        # The other listeners are bound after the MX: wait for each of them too, and
        # notice a start that fails after the MX greeted (e.g. at the IMAP listener).
        for port in (self.submission_port, self.submissions_port, self.imaps_port, self.imap_port,
                     self.pop3s_port, self.pop3_port, self.http_port, self.web_port, self.https_port):
            if port is not None:
                wait_for_port(port, max(deadline - time.monotonic(), 1.0), proc=self.proc, log=self.log)
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

    def log_mark(self) -> int:
        """Where the log ends now: `stalls(since=mark)` reads only what comes after."""
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def stalls(self, since: int = 0, *, longer_than: float = 0.0) -> list[Stall]:
        """The event-loop stalls the server's watchdog logged (see the module docstring),
        in order, after log offset `since` (`log_mark()`), longer than `longer_than`
        seconds.  A stall logged while it went on gets its final length from the line
        saying the loop ran again, when that is in the log too."""
        if not self.log_path.exists():
            return []
        with open(self.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        found: list[Stall] = []
        open_stall: dict[int, Stall] = {}  # pid -> a stall logged while it went on
        for line in text.splitlines():
            if m := _STALL.search(line):
                stall = Stall(float(m["seconds"]), m["where"], m["stack"], int(m["pid"]),
                              bool(m["ongoing"]), line)
                found.append(stall)
                if stall.ongoing:
                    open_stall[stall.pid] = stall
            elif (m := _RAN_AGAIN.search(line)) and int(m["pid"]) in open_stall:
                stall = open_stall.pop(int(m["pid"]))
                stall.seconds, stall.ongoing = float(m["seconds"]), False
        return [s for s in found if s.seconds > longer_than]

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

    def queue_stats(self):
        """`QueueStats` of the outbound queue, read from the index as the CLI does."""
        async def read():
            store = self.store()
            try:
                assert store.queue is not None
                return await store.queue.stats()
            finally:
                await store.close()

        return asyncio.run(read())

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
