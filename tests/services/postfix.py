"""A private Postfix receiving mail for a test domain (the remote MX), and smtp-sink.

Recipe: ../shared/docs/TEST-SERVICES.md ("Postfix as the remote side").  Never the system
instance and never /etc/postfix: everything lives in the service's own directory --
``etc/`` (``main.cf``, ``master.cf``, the mailbox table), ``spool/`` (queue_directory),
``data/`` (data_directory), ``mail/`` (the Maildirs), ``tls/``, ``postfix.log``.

* `PostfixService` receives for its `domains` (default ``remote.test``; the first is
  its own, ``mx.<domain>``) on ``address:port`` (default ``127.0.0.2:25``: only inside
  the tests' network namespace, see tests/internet.py) with Postfix's own virtual(8)
  delivery into one Maildir per user and domain (default users bob and carol).  An
  unknown user is refused at RCPT with Postfix's own ``550 5.1.1 <x@remote.test>:
  Recipient address rejected: User unknown in virtual mailbox table``
  (`UNKNOWN_USER_REPLY`); any other domain gets ``554 5.7.1 ... Relay access denied``.
* It never sends mail anywhere: master.cf has no smtp/lmtp client at all, and every
  transport but virtual(8) is ``error:``.  It asks no DNS (``disable_dns_lookups``).
* STARTTLS is offered (``smtpd_tls_security_level = may``) with a certificate for
  ``mx.<domain>`` (and localhost, 127.0.0.1) from a private CA made with pymail's own
  `ensure_embedded_certificates`; `ca_file` is that CA.  The Received header says
  whether TLS was used (``smtpd_tls_received_header``).
* `settings` (main.cf names -> values) override or add to the defaults; `configure()`
  changes them on a running instance, `add_user()` adds a mailbox (both restart it).
* Logs go to `log_path` (``maillog_file``, postlogd); `wait_for_log()` waits for a line.
* The master runs in the foreground (``master -d``) in its own process group, so
  `stop_server()` ends every Postfix process by that group and a test process that dies
  takes it along (PR_SET_PDEATHSIG).  `stop_server()` / `start_server()`: an outage on
  the same address and data.  Ready = the 220 greeting on the SMTP port.

`SmtpSink` runs Postfix's ``smtp-sink`` (the C reference sink that throws mail away) on
``address:port``, for benchmarks; `SmtpSink.messages()` is its running count.  With
``keep=True`` it keeps every message it accepted as one file in a directory of its own
(``-d``; a transaction cut off before the final "." leaves none; removed at `stop()`),
and `SmtpSink.received()` reads them back: Message-ID, envelope and the file's mtime
(when the sink had it all).

Needs the Debian package ``postfix`` (installed unconfigured by scripts/test.sh); without
it `PostfixServiceError` says what to install.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import grp
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PostfixService",
    "PostfixServiceError",
    "SinkMessage",
    "SmtpSink",
    "read_sink_message",
    "start_postfix_service",
    "UNKNOWN_USER_REPLY",
]

DEBIAN_PACKAGE = "postfix"
DAEMON_DIRECTORY = Path("/usr/lib/postfix/sbin")
META_DIRECTORY = Path("/etc/postfix")  # Postfix's own file table (postfix-files), read only
#: The uid/gid virtual(8) delivers as: the Maildirs belong to it (no passwd entry needed).
MAILBOX_UID = 5000
READY_TIMEOUT = 30.0
#: What Postfix answers at RCPT for a user not in the mailbox table (quoted by DSN tests);
#: ``{address}`` is the recipient.
UNKNOWN_USER_REPLY = (
    "550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
)

# Postfix's internal services, none chrooted.  No smtp/relay/lmtp client: this instance
# cannot send mail anywhere even if a setting asked it to.
_MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixServiceError(RuntimeError):
    """The test Postfix could not be made or started (the message says why)."""


def _die_with_parent() -> None:
    """(In the child) its own session, and SIGTERM when the test process dies."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _greets(address: str, port: int, timeout: float = 1.0) -> bool:
    """Whether an SMTP server on address:port sends a 220 greeting."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data:
                chunk = sock.recv(512)
                if not chunk:
                    return False
                data += chunk
            with contextlib.suppress(OSError):
                sock.sendall(b"QUIT\r\n")
            return data.startswith(b"220")
    except OSError:
        return False


def _signal_group(proc: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signum)


def _stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the process group (SIGCONT first: it may be paused), wait for its leader,
    then SIGKILL whatever of the group is left.  (The children die at once but stay
    zombies until init reaps them, ~1-2 s here: waiting for the group to vanish would
    make every stop that slow, and a zombie holds no socket.)"""
    _signal_group(proc, signal.SIGCONT)
    _signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc, signal.SIGKILL)
    proc.wait(5)


def _refuses(address: str, port: int, timeout: float = 5.0) -> None:
    """Wait until nothing accepts connections on address:port any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                pass
        except OSError:
            return
        time.sleep(0.02)


class PostfixService:
    """One private Postfix instance (see the module docstring)."""

    def __init__(self, *, domains: tuple[str, ...] | list[str] = ("remote.test",),
                 users: tuple[str, ...] | list[str] = ("bob", "carol"),
                 address: str = "127.0.0.2", port: int = 25, hostname: str | None = None,
                 settings: dict[str, str] | None = None) -> None:
        if not (DAEMON_DIRECTORY / "master").exists() or shutil.which("postconf") is None:
            raise PostfixServiceError(f"Postfix not found: apt-get install {DEBIAN_PACKAGE}"
                                      " (scripts/test.sh installs it unconfigured)")
        self.domains = [d.lower() for d in domains]
        self.domain = self.domains[0]
        self.users = [u.lower() for u in users]
        self.address = address
        self.port = port
        self.hostname = hostname or f"mx.{self.domain}"
        self.settings = dict(settings or {})
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    # -- paths ---------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.root is None:
            raise PostfixServiceError("Postfix is not started")
        return self.root.joinpath(*parts)

    @property
    def config_dir(self) -> Path:
        return self._path("etc")

    @property
    def log_path(self) -> Path:
        return self._path("postfix.log")

    @property
    def ca_file(self) -> Path:
        """The private CA that signed the STARTTLS certificate (for clients to trust)."""
        return self._path("tls", "ca.pem")

    @property
    def cert_file(self) -> Path:
        return self._path("tls", "cert.pem")

    @property
    def key_file(self) -> Path:
        return self._path("tls", "key.pem")

    def _address(self, user: str) -> tuple[str, str]:
        """(local part, domain) of ``bob`` (the first domain) or ``bob@dane.test``."""
        local, _, domain = user.lower().partition("@")
        return local, domain or self.domain

    def maildir(self, user: str) -> Path:
        """The Maildir of ``bob`` (at the first domain) or ``bob@other.domain``."""
        local, domain = self._address(user)
        return self._path("mail", domain, local)

    # -- configuration ---------------------------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        """The main.cf this instance runs with (defaults, then `settings`)."""
        root = self._path()
        no_mail_out = "error:5.7.1 this test Postfix sends no mail"
        conf = {
            "compatibility_level": "3.6",
            "config_directory": str(root / "etc"),
            "queue_directory": str(root / "spool"),
            "data_directory": str(root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": self.hostname,
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "all",  # the listener's address is in master.cf
            "inet_protocols": "ipv4",
            "smtpd_banner": "$myhostname ESMTP Postfix",
            "virtual_mailbox_domains": " ".join(self.domains),
            "virtual_mailbox_base": str(root / "mail"),
            "virtual_mailbox_maps": f"texthash:{root}/etc/vmailbox",
            "virtual_uid_maps": f"static:{MAILBOX_UID}",
            "virtual_gid_maps": f"static:{MAILBOX_UID}",
            "recipient_delimiter": "+",
            "default_transport": no_mail_out,
            "relay_transport": no_mail_out,
            "local_transport": no_mail_out,
            "alias_maps": "",
            "alias_database": "",
            "disable_dns_lookups": "yes",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_error_sleep_time": "0",
            "in_flow_delay": "0",
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(root / "tls" / "cert.pem"),
            "smtpd_tls_key_file": str(root / "tls" / "key.pem"),
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
            # keep what the client sent: no header rewriting for mail from 127.0.0.1
            # (an "inet_interfaces" address, so local to Postfix by default)
            "local_header_rewrite_clients": "",
            "smtp_tls_security_level": "none",
            "maillog_file": str(root / "postfix.log"),
            "maillog_file_prefixes": str(root),
            "biff": "no",
            "readme_directory": "no",
        }
        conf.update(self.settings)
        return conf

    def _write_config(self) -> None:
        etc = self.config_dir
        etc.mkdir(exist_ok=True)
        (etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in self.main_cf().items()))
        (etc / "master.cf").write_text(
            f"{self.address}:{self.port} inet n - n - - smtpd\n" + _MASTER_SERVICES)
        (etc / "vmailbox").write_text("".join(
            f"{user}@{domain} {domain}/{user}/\n" for domain in self.domains for user in self.users))
        # Postfix waits (in 0.3 s steps, ~2 s) until a table or main.cf it reads was last
        # changed in an earlier second than now, in case it is being written: backdate them.
        past = time.time() - 10
        for name in ("main.cf", "master.cf", "vmailbox"):
            os.utime(etc / name, (past, past))

    def _make_dirs(self) -> None:
        """The queue and data directories with the owners and modes Postfix's own table
        (``postfix-files``, what ``postfix post-install create-missing`` reads) gives."""
        root = self._path()
        owner = {"root": 0, "$mail_owner": pwd.getpwnam("postfix").pw_uid}
        group = {"-": 0, "$setgid_group": grp.getgrnam("postdrop").gr_gid}
        places = {"$queue_directory": root / "spool", "$data_directory": root / "data"}
        for line in (META_DIRECTORY / "postfix-files").read_text().splitlines():
            fields = line.split(":")
            if len(fields) < 5 or fields[1] != "d":
                continue
            base, _, rest = fields[0].partition("/")
            if base not in places:
                continue
            path = places[base] / rest if rest else places[base]
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, owner.get(fields[2], 0), group.get(fields[3], 0))
            path.chmod(int(fields[4], 8))
        mail = root / "mail"
        mail.mkdir(exist_ok=True)
        os.chown(mail, MAILBOX_UID, MAILBOX_UID)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "PostfixService":
        from pymail.net.certs import ensure_embedded_certificates

        self.root = Path(tempfile.mkdtemp(prefix="pymail-postfix-"))
        self.root.chmod(0o755)  # postfix and the mailbox uid traverse it
        atexit.register(self.stop)
        try:
            ensure_embedded_certificates(self.root / "tls", self.hostname)
            self._make_dirs()
            self._write_config()
            self.start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self) -> None:
        """Start the master on the existing directory (again after `stop_server`)."""
        if self.proc is not None and self.proc.poll() is None:
            raise PostfixServiceError("Postfix runs already")
        stderr = open(self._path("master.stderr"), "ab")
        self.proc = subprocess.Popen(
            [str(DAEMON_DIRECTORY / "master"), "-c", str(self.config_dir), "-d"],
            stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, preexec_fn=_die_with_parent,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(self.config_dir)},
        )
        stderr.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostfixServiceError(f"Postfix master exited with {self.proc.returncode}: {self.log_tail()}")
            if _greets(self.address, self.port):
                return
            time.sleep(0.05)
        self.stop_server()
        raise PostfixServiceError(f"Postfix does not greet on {self.address}:{self.port}: {self.log_tail()}")

    def stop_server(self) -> None:
        """Stop every Postfix process of this instance; the data and address stay."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop_group(proc)
            _refuses(self.address, self.port)
        if self.root is not None:
            # a master killed hard leaves its pid file; the next start must not see it
            with contextlib.suppress(FileNotFoundError):
                (self.root / "spool" / "pid" / "master.pid").unlink()

    def restart(self) -> None:
        self.stop_server()
        self._write_config()
        self.start_server()

    def pause(self) -> None:
        """SIGSTOP every process: connections are accepted by the kernel, nothing answers."""
        assert self.proc is not None
        _signal_group(self.proc, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        _signal_group(self.proc, signal.SIGCONT)

    def stop(self) -> None:
        """Stop for good and remove the directory.  Idempotent."""
        self.stop_server()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            atexit.unregister(self.stop)

    def configure(self, **settings: str) -> None:
        """Change main.cf settings (e.g. ``message_size_limit="2000"``) and restart."""
        self.settings.update(settings)
        self.restart()

    def add_user(self, user: str) -> None:
        if user.lower() not in self.users:
            self.users.append(user.lower())
            self.restart()

    # -- what arrived -------------------------------------------------------------------------

    def message_files(self, user: str) -> list[Path]:
        """The delivered files in `user`'s Maildir, oldest first."""
        box = self.maildir(user)
        files = [p for sub in ("new", "cur") if (box / sub).is_dir() for p in (box / sub).iterdir()]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def messages(self, user: str) -> list[bytes]:
        """The messages delivered to `user` (``bob`` or ``bob@domain``), oldest first (as stored: LF line ends, with
        Postfix's Return-Path, Delivered-To and Received on top)."""
        return [p.read_bytes() for p in self.message_files(user)]

    def wait_for_messages(self, user: str, count: int = 1, timeout: float = 15.0) -> list[bytes]:
        """Wait until `user` has at least `count` messages; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(user)
            if len(found) >= count or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if len(found) < count:
            raise AssertionError(f"{'@'.join(self._address(user))} has {len(found)} of {count} messages after "
                                 f"{timeout} s; Postfix log:\n{self.log_tail()}")
        return found

    def clear(self) -> None:
        """Remove every delivered message (the Maildirs stay)."""
        for domain in self.domains:
            for user in self.users:
                for path in self.message_files(f"{user}@{domain}"):
                    path.unlink(missing_ok=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, PostfixServiceError):
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        text = self.log_text()
        with contextlib.suppress(OSError, PostfixServiceError):
            text += self._path("master.stderr").read_text(errors="replace")
        return text[-chars:]

    def wait_for_log(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first log line matching the regular expression `pattern` (waits for it)."""
        regex = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log_text())
            if match is not None:
                return match
            if time.monotonic() >= deadline:
                raise AssertionError(f"no Postfix log line matches {pattern!r} after {timeout} s:\n"
                                     f"{self.log_tail()}")
            time.sleep(0.05)

    def __repr__(self) -> str:
        state = "running" if self.proc is not None and self.proc.poll() is None else "stopped"
        return f"PostfixService({' '.join(self.domains)} on {self.address}:{self.port}, {state})"


def start_postfix_service(**kwargs) -> PostfixService:
    """A started `PostfixService` (call `.stop()` when done)."""
    return PostfixService(**kwargs).start()


@dataclass(frozen=True)
class SinkMessage:
    """One message smtp-sink kept (``-d``), as `SmtpSink.received` reads it back."""

    message_id: str | None  #: the Message-ID header's value, without <>
    mail_from: str
    rcpt_tos: tuple[str, ...]
    received_at: float  #: the dump file's mtime (time.time() clock): the sink had it all
    path: Path


def _dump_field(head: str, name: str) -> list[str]:
    return [m.strip() for m in re.findall(rf"(?im)^{name}:[ \t]*(.*)$", head)]


def read_sink_message(path: Path) -> SinkMessage:
    """Parse one smtp-sink dump file (smtp-sink(1), DUMP FILE FORMAT): its X-Mail-Args and
    X-Rcpt-Args records, then the message's own headers."""
    with open(path, "rb") as f:
        text = f.read(16384).decode(errors="replace")
    head = text.replace("\r\n", "\n").split("\n\n", 1)[0]
    ids = _dump_field(head, "Message-ID")
    mail = _dump_field(head, "X-Mail-Args")
    return SinkMessage(
        message_id=ids[0].strip("<>") if ids else None,
        mail_from=mail[0].split()[0].strip("<>") if mail and mail[0] else "",
        rcpt_tos=tuple(r.split()[0].strip("<>") for r in _dump_field(head, "X-Rcpt-Args") if r),
        received_at=path.stat().st_mtime, path=path)


class SmtpSink:
    """Postfix's ``smtp-sink`` on address:port: accepts every message, keeps none (or, with
    ``keep=True``, one file per message).

    ``args`` are extra smtp-sink options (e.g. ``["-r", "RCPT"]`` for 4xx at RCPT, ``-8``
    no 8BITMIME).  `messages()` is the number of messages received so far (its ``-c``
    counters), `wait_for_messages(n)` waits for it; `received()` the kept messages;
    `pause()` / `resume()` stop it answering (the kernel still accepts connections)."""

    def __init__(self, address: str = "127.0.0.3", port: int = 25, *, hostname: str = "sink.test",
                 max_concurrency: int = 256, args: tuple[str, ...] | list[str] = (),
                 keep: bool = False) -> None:
        self.path = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not os.access(self.path, os.X_OK):
            raise PostfixServiceError(f"smtp-sink not found: apt-get install {DEBIAN_PACKAGE}")
        self.address, self.port = address, port
        self.dump_dir: Path | None = None
        self.command = [self.path, "-c", "-h", hostname, "-m", str(max_concurrency), *args]
        if keep:
            # its own directory under /tmp: smtp-sink writes there as nobody when started
            # by root, so no directory on the way may be private to root (a tmp_path is);
            # an smtp-sink that cannot write a dump file exits
            self.dump_dir = Path(tempfile.mkdtemp(prefix="pymail-sink-"))
            self.dump_dir.chmod(0o777)
            self.command += ["-d", f"{self.dump_dir}/m."]
        if os.geteuid() == 0:
            self.command += ["-u", "nobody"]  # smtp-sink refuses to keep root privileges
        self.command += [f"{address}:{port}", "1024"]
        self.proc: subprocess.Popen[bytes] | None = None
        self._counters = ""
        self._reader: threading.Thread | None = None

    def start(self) -> "SmtpSink":
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()
        atexit.register(self.stop)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PostfixServiceError(f"smtp-sink exited with {self.proc.returncode}: {self._counters}")
            if _greets(self.address, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise PostfixServiceError(f"smtp-sink does not greet on {self.address}:{self.port}")

    def _read(self, stream) -> None:
        """(A thread) keep the tail of smtp-sink's counters until it exits."""
        with contextlib.suppress(OSError, ValueError):
            for chunk in iter(lambda: stream.read1(4096), b""):
                self._counters = (self._counters + chunk.decode(errors="replace"))[-4096:]

    def messages(self) -> int:
        """Messages received so far (the last ``-c`` counter: ``sess=N quit=N mesg=N``)."""
        counts = re.findall(r"mesg=(\d+)", self._counters)
        return int(counts[-1]) if counts else 0

    def wait_for_messages(self, count: int, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while self.messages() < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.messages()

    def received(self) -> list[SinkMessage]:
        """Every message kept in ``dump_dir`` so far, in the order the sink finished them."""
        if self.dump_dir is None:
            raise PostfixServiceError("smtp-sink keeps no messages without keep=True")
        found = []
        for path in self.dump_dir.iterdir():
            with contextlib.suppress(FileNotFoundError):
                found.append(read_sink_message(path))
        return sorted(found, key=lambda m: m.received_at)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing answers."""
        assert self.proc is not None
        _signal_group(self.proc, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        _signal_group(self.proc, signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop_group(proc)
            if self._reader is not None:
                self._reader.join(5)  # EOF once smtp-sink is gone
            if proc.stdout is not None:
                proc.stdout.close()
        if self.dump_dir is not None:
            shutil.rmtree(self.dump_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
