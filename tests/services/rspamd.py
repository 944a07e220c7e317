"""A private Rspamd: the independent verifier of what pymail sends (DKIM, SPF, DMARC).

Recipe and gotchas: ../shared/docs/TEST-SERVICES.md ("Rspamd").  The stock
``/etc/rspamd/rspamd.conf`` is read as it is; every writable path and the local config
are redirected into the service's own directory with ``--var=LOCAL_CONFDIR=... RUNDIR
DBDIR LOGDIR``, and ``rspamd -f`` (no fork) runs in the foreground, its workers as
``_rspamd`` (rspamd refuses root workers), in its own process group.

* One normal worker on 127.0.0.1:<free port>; the proxy and fuzzy workers are off, and
  so is the controller unless asked for (``controller=True``): then it listens on a
  free loopback port of its own (`controller_url`), and its learn endpoints
  (``/learnspam``, ``/learnham``) want the ``Password`` header when
  ``controller_password`` is given, or nothing from 127.0.0.1 (``secure_ip``) when not.
  Ready = ``GET /ping`` answers ``pong`` (on both workers).
* Bayes: without ``redis`` (the default) the classifier has no backend and stays off.
  With ``redis="127.0.0.1:PORT"`` (tests/services/redis.py) the Bayes statistics live
  there -- only there: the Redis address goes to ``local.d/classifier-bayes.conf``, not
  to the global ``redis.conf``, so no other module starts using Redis (greylist and
  ratelimit stay off whatever) -- with ``min_learns = bayes_min_learns`` (stock 200).
* ``milter_headers=("x-spam-status", ...)``: those routines of the milter_headers
  module are on, so the answer carries ``milter.add_headers`` (none by default).
* DNS: only the tests' NSD (``options.dns.nameserver``), never /etc/resolv.conf; names
  outside the test zones get REFUSED at once.  fuzzy_check, rspamd_update, RBLs, ASN
  and greylisting are off (they would ask the outside world or need Redis); so is
  nothing else: DKIM, SPF, DMARC, ARC and the content rules run as shipped.
* SPF, DKIM and DMARC are checked for loopback and authenticated senders too
  (``check_local``/``check_authed``): every test address is 127.x.
* ``enable_test_patterns``: GTUBE and its siblings are recognised.
* `check(message, ip=..., mail_from=..., rcpt=..., helo=...)` posts to ``/checkv2`` with
  the metadata headers (RFC-less, see OUTBOUND.md "Rspamd") and returns a
  `RspamdResult` (``action``, ``score``, ``symbols``).
* Start time: compiling the hyperscan databases (mostly the public-suffix list) takes
  20-60 s the first time; they are cached in ``$PYMAIL_TEST_CACHE/rspamd-hs``
  (default ``/var/tmp/pymail-test-cache``, kept between test runs on a machine), after
  which a start takes about a second.  `READY_TIMEOUT` covers a cold start on a busy
  machine.

Start it from a thread that outlives it (the test's main thread, not ``asyncio.to_thread``):
the child's parent-death signal (``PR_SET_PDEATHSIG``) follows the thread that forked it,
so a pool thread's exit at the end of ``asyncio.run`` would stop Rspamd.

Needs the Debian package ``rspamd``; without it `RspamdServiceError` says what to install.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RspamdResult", "RspamdService", "RspamdServiceError", "start_rspamd_service"]

HOST = "127.0.0.1"
DEBIAN_PACKAGE = "rspamd"
SYSTEM_CONFIG = Path("/etc/rspamd/rspamd.conf")
RSPAMD_USER = "_rspamd"
CACHE_DIR = Path(os.environ.get("PYMAIL_TEST_CACHE", "/var/tmp/pymail-test-cache"))
#: Seconds to wait for /ping: a cold hyperscan compile is ~22 s quiet, 50 s+ loaded.
READY_TIMEOUT = 240.0

_DISABLED_MODULES = ("fuzzy_check", "rspamd_update", "rbl", "asn", "greylist", "ratelimit")


class RspamdServiceError(RuntimeError):
    """The test Rspamd could not be made or started (the message says why)."""


@dataclass
class RspamdResult:
    """What ``/checkv2`` said about one message."""

    action: str
    score: float
    symbols: dict[str, dict[str, Any]] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    def has(self, *names: str) -> bool:
        return all(name in self.symbols for name in names)

    def __str__(self) -> str:
        return f"{self.action} {self.score}: {', '.join(sorted(self.symbols))}"


def _die_with_parent() -> None:
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class RspamdService:
    """One rspamd process (see the module docstring); `dns_port` is the tests' NSD."""

    def __init__(self, dns_port: int, *, dns_host: str = HOST, port: int | None = None,
                 cache_dir: Path | None = None, controller: bool = False,
                 controller_password: str | None = None, redis: str | None = None,
                 bayes_min_learns: int = 5, milter_headers: tuple[str, ...] = ()) -> None:
        self.binary = shutil.which("rspamd") or "/usr/bin/rspamd"
        if not os.access(self.binary, os.X_OK) or not SYSTEM_CONFIG.exists():
            raise RspamdServiceError(f"rspamd not found: apt-get install {DEBIAN_PACKAGE}")
        self.dns = f"{dns_host}:{dns_port}"
        self.port = port or _free_port()
        self.cache_dir = cache_dir or CACHE_DIR / "rspamd-hs"
        #: the controller worker's port (None: no controller)
        self.controller_port = _free_port() if controller else None
        self.controller_password = controller_password
        #: ``host:port`` of the Redis holding the Bayes statistics (None: no Bayes)
        self.redis = redis
        self.bayes_min_learns = bayes_min_learns
        #: milter_headers routines to turn on (``use``), e.g. ("x-spam-status",)
        self.milter_headers = milter_headers
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        #: Seconds the last start took until /ping answered.
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def controller_url(self) -> str:
        if self.controller_port is None:
            raise RspamdServiceError("this rspamd was started without its controller")
        return f"http://{HOST}:{self.controller_port}"

    # -- configuration -------------------------------------------------------------------

    def _write_config(self) -> None:
        assert self.root is not None
        etc = self.root / "etc"
        for sub in ("local.d", "override.d"):
            (etc / sub).mkdir(parents=True, exist_ok=True)
        override = etc / "override.d"
        (override / "worker-normal.inc").write_text(f'bind_socket = "{HOST}:{self.port}";\ncount = 1;\n')
        for worker in ("controller", "proxy", "fuzzy"):
            (override / f"worker-{worker}.inc").write_text("enabled = false;\n")
        if self.controller_port is not None:
            controller = f'bind_socket = "{HOST}:{self.controller_port}";\ncount = 1;\n'
            if self.controller_password:
                quoted = json.dumps(self.controller_password)
                controller += f"password = {quoted};\nenable_password = {quoted};\n"
                # asked of every client: the stock secure_ip (127.0.0.1, ::1) would let
                # loopback in without one, so it is replaced by a documentation address
                controller += 'secure_ip = "192.0.2.1";\n'
            else:
                controller += f'secure_ip = "{HOST}";\n'
            (override / "worker-controller.inc").write_text(controller)
        (override / "logging.inc").write_text(
            f'type = "file";\nfilename = "{self.root}/log/rspamd.log";\nlevel = "info";\n')
        (override / "options.inc").write_text(
            "dns {\n"
            f'  nameserver = ["{self.dns}"];\n'
            "  timeout = 0.5s;\n"
            "  retransmits = 1;\n"
            "}\n"
            f'hs_cache_dir = "{self.cache_dir}";\n'
            "enable_test_patterns = true;\n"
            "check_local = true;\n"
            "check_authed = true;\n"
        )
        local = etc / "local.d"
        for module in _DISABLED_MODULES:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        for module in ("spf", "dkim", "dmarc"):
            (local / f"{module}.conf").write_text("check_local = true;\ncheck_authed = true;\n")
        if self.milter_headers:
            (local / "milter_headers.conf").write_text(  # every test client is local
                f"use = {json.dumps(list(self.milter_headers))};\n"
                "skip_local = false;\nskip_authenticated = false;\n")
        if self.redis is not None:
            (local / "classifier-bayes.conf").write_text(
                f'servers = "{self.redis}";\nmin_learns = {self.bayes_min_learns};\n')

    def _prepare_dirs(self) -> None:
        assert self.root is not None
        user = pwd.getpwnam(RSPAMD_USER)
        self.root.chmod(0o755)  # the workers (as _rspamd) read etc/ and write run/ db/ log/
        for sub in ("run", "db", "log"):
            path = self.root / sub
            path.mkdir(exist_ok=True)
            os.chown(path, user.pw_uid, user.pw_gid)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        os.chown(self.cache_dir, user.pw_uid, user.pw_gid)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "RspamdService":
        self.root = Path(tempfile.mkdtemp(prefix="pymail-rspamd-"))
        atexit.register(self.stop)
        try:
            self._prepare_dirs()
            self._write_config()
            self.start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self) -> None:
        assert self.root is not None
        if self.proc is not None and self.proc.poll() is None:
            raise RspamdServiceError("rspamd runs already")
        command = [self.binary, "-f", "-c", str(SYSTEM_CONFIG),
                   f"--var=LOCAL_CONFDIR={self.root}/etc", f"--var=RUNDIR={self.root}/run",
                   f"--var=DBDIR={self.root}/db", f"--var=LOGDIR={self.root}/log"]
        if os.geteuid() == 0:
            command[2:2] = ["-u", RSPAMD_USER, "-g", RSPAMD_USER]
        started = time.monotonic()
        # One cold compile at a time on this machine: a second rspamd waits for the
        # first to fill the shared cache instead of compiling the same databases again.
        with open(self.cache_dir.parent / "rspamd-hs.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            stderr = open(self.root / "log" / "stderr.log", "ab")
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr,
                                         stderr=stderr, preexec_fn=_die_with_parent)
            stderr.close()
            deadline = started + READY_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RspamdServiceError(f"rspamd exited with {self.proc.returncode}: {self.log()}")
                if self._pong(self.port) and (self.controller_port is None
                                              or self._pong(self.controller_port)):
                    self.start_seconds = time.monotonic() - started
                    return
                time.sleep(0.1)
        self.stop_server()
        raise RspamdServiceError(f"rspamd did not answer /ping within {READY_TIMEOUT} s: {self.log()}")

    def _pong(self, port: int) -> bool:
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            try:
                conn.request("GET", "/ping")
                response = conn.getresponse()
                return response.status == 200 and response.read().strip() == b"pong"
            finally:
                conn.close()
        return False

    def stop_server(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)

    def stop(self) -> None:
        self.stop_server()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            atexit.unregister(self.stop)

    def log(self) -> str:
        if self.root is None:
            return ""
        out = []
        for name in ("rspamd.log", "stderr.log"):
            path = self.root / "log" / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-4000:])
        return "\n".join(out)

    def learned(self) -> list[tuple[str, str]]:
        """(kind, Message-ID) of every message the controller learned, oldest first, as
        its log says ("learned message as spam: <id>"; ``undef`` for no Message-ID)."""
        if self.root is None:
            return []
        path = self.root / "log" / "rspamd.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return re.findall(r"learned message as (spam|ham): (\S+)", text)

    # -- scanning ----------------------------------------------------------------------------

    def check(self, message: bytes, *, ip: str, mail_from: str, rcpt: str | Iterable[str] = (),
              helo: str | None = None, hostname: str | None = None, user: str | None = None,
              queue_id: str | None = None, timeout: float = 30.0) -> RspamdResult:
        """Scan `message` as if received from `ip` (SMTP MAIL FROM `mail_from`, HELO
        `helo`, the client's reverse name `hostname`) for `rcpt`; ``user`` = an
        authenticated sender (Rspamd then treats it as outbound)."""
        headers = {"IP": ip, "From": mail_from, "Content-Type": "message/rfc822"}
        if helo:
            headers["Helo"] = helo
        if hostname:
            headers["Hostname"] = hostname
        if user:
            headers["User"] = user
        if queue_id:
            headers["Queue-Id"] = queue_id
        recipients = [rcpt] if isinstance(rcpt, str) else list(rcpt)
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.putrequest("POST", "/checkv2")
            for name, value in headers.items():
                conn.putheader(name, value)
            for recipient in recipients:
                conn.putheader("Rcpt", recipient)
            conn.putheader("Content-Length", str(len(message)))
            conn.endheaders(message)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        if response.status != 200:
            raise RspamdServiceError(f"/checkv2 answered {response.status}: {body[:500]!r}")
        data = json.loads(body)
        return RspamdResult(action=data.get("action", ""), score=float(data.get("score", 0.0)),
                            symbols=data.get("symbols", {}), raw=data)

    def __repr__(self) -> str:
        state = "running" if self.proc is not None and self.proc.poll() is None else "stopped"
        controller = f", controller {self.controller_url}" if self.controller_port else ""
        return f"RspamdService({self.url}{controller}, DNS {self.dns}, {state})"


def start_rspamd_service(dns_port: int, **kwargs: Any) -> RspamdService:
    """A started Rspamd asking only the DNS server on 127.0.0.1:`dns_port`."""
    return RspamdService(dns_port, **kwargs).start()
