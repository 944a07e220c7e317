"""A private ClamAV clamd for the tests: one EICAR signature, a unix socket and loopback TCP.

Recipe: ../shared/docs/TEST-SERVICES.md ("ClamAV clamd").  Nothing in /etc or
/var/lib/clamav is read or written: a generated ``clamd.conf`` (``Foreground yes``,
database, sockets, log, pid and temporary files in the service's own directory,
``SelfCheck 0``), ``clamd --config-file=...`` in its own process group, stopped by its
own PID.  freshclam is never run and no official database is used: the only signature
is ``db/eicar.ndb``, ``Eicar-Test-Signature:0:*:<hex>``, which clamd reports as
``Eicar-Test-Signature.UNOFFICIAL`` (custom signatures get that suffix).  The database
loads in milliseconds, so a start takes well under a second.

* EICAR lives in this file only as hex (`EICAR_HEX`), never as its plain 68 characters,
  so desktop anti-virus does not quarantine the repository; `eicar_bytes()` and
  `eicar_mime_message()` build the test virus at run time.
* `socket_path` (the unix socket) and `tcp_address` (``"127.0.0.1:PORT"``, a free port)
  are the two ways in; both stay the same across `stop()` / `start()`.
* `pause()` / `resume()`: SIGSTOP / SIGCONT to the process group, a clamd that accepts
  connections (the kernel's backlog) but never answers.  A test that stops or pauses it
  starts or resumes it before it ends.
* `stream_max_length` is clamd's ``StreamMaxLength`` (32 MiB by default: above the
  client's 25 MiB scan limit, as it should be in production).
* As root, clamd keeps the invoking user when its config has no ``User`` line (checked
  with clamd 1.4.6: it runs as root and owns its directory); the Debian package's
  ``User clamav`` is in /etc/clamav/clamd.conf, which is not read.
* Ready = ``zPING`` answered ``PONG`` on the unix socket and on TCP.

Needs the Debian package ``clamav-daemon``; without it `ClamdServiceError` says what to
install.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.services.process import free_loopback_port, own_group_and_die_with_parent, stop_group

__all__ = [
    "ClamdService",
    "ClamdServiceError",
    "EICAR_HEX",
    "EICAR_NAME",
    "eicar_bytes",
    "eicar_mime_message",
    "start_clamd_service",
]

HOST = "127.0.0.1"
DEBIAN_PACKAGE = "clamav-daemon"
READY_TIMEOUT = 30.0
#: The EICAR anti-virus test file (eicar.org), as hex: see the module docstring.
EICAR_HEX = (
    "58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152"
    "442d414e544956495255532d544553542d46494c452124482b482a"
)
#: What clamd calls it, with the suffix every custom signature gets.
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"


class ClamdServiceError(RuntimeError):
    """The test clamd could not be made or started (the message says why)."""


def eicar_bytes() -> bytes:
    """The 68-octet EICAR test file, built from `EICAR_HEX`."""
    return bytes.fromhex(EICAR_HEX)


def eicar_mime_message(sender: str = "alice@example.test", recipient: str = "bob@example.test") -> bytes:
    """A multipart/mixed message with EICAR as a base64 attachment (CRLF line ends):
    clamd decodes MIME itself and finds it."""
    encoded = base64.encodebytes(eicar_bytes()).decode("ascii").replace("\n", "\r\n")
    return (
        f"From: <{sender}>\r\n"
        f"To: <{recipient}>\r\n"
        "Subject: the attachment you asked for\r\n"
        "Message-ID: <eicar-attachment@example.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "See the attached file.\r\n"
        "--b1\r\n"
        'Content-Type: application/octet-stream; name="eicar.com"\r\n'
        'Content-Disposition: attachment; filename="eicar.com"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
        f"{encoded}"
        "--b1--\r\n"
    ).encode("ascii")


class ClamdService:
    """One clamd process (see the module docstring)."""

    def __init__(self, *, port: int | None = None, stream_max_length: int = 32 * 1024 * 1024,
                 max_threads: int = 4) -> None:
        self.binary = shutil.which("clamd") or "/usr/sbin/clamd"
        if not os.access(self.binary, os.X_OK):
            raise ClamdServiceError(f"clamd not found: apt-get install {DEBIAN_PACKAGE}")
        self.port = port or free_loopback_port()
        self.stream_max_length = stream_max_length
        self.max_threads = max_threads
        self.root = Path(tempfile.mkdtemp(prefix="pymail-clamd-"))
        self.proc: subprocess.Popen[bytes] | None = None
        #: Seconds the last start took until both sockets answered PING.
        self.start_seconds: float | None = None
        atexit.register(self.close)
        self._write_config()

    @property
    def socket_path(self) -> str:
        return str(self.root / "clamd.sock")

    @property
    def tcp_address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _write_config(self) -> None:
        db = self.root / "db"
        db.mkdir()
        (self.root / "tmp").mkdir()
        (db / "eicar.ndb").write_text(f"Eicar-Test-Signature:0:*:{EICAR_HEX}\n")
        (self.root / "clamd.conf").write_text(
            "Foreground yes\n"
            f"DatabaseDirectory {db}\n"
            f"LocalSocket {self.socket_path}\n"
            "LocalSocketMode 600\n"
            f"TCPSocket {self.port}\n"
            f"TCPAddr {HOST}\n"
            f"PidFile {self.root}/clamd.pid\n"
            f"LogFile {self.root}/clamd.log\n"
            "LogTime yes\n"
            f"TemporaryDirectory {self.root}/tmp\n"
            f"StreamMaxLength {self.stream_max_length}\n"
            f"MaxThreads {self.max_threads}\n"
            "SelfCheck 0\n"
        )

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> "ClamdService":
        """Start clamd (again: same socket path and port) and wait until it answers."""
        if self.running:
            raise ClamdServiceError("clamd runs already")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)  # a socket left by a killed clamd
        started = time.monotonic()
        stderr = open(self.root / "stderr.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, f"--config-file={self.root / 'clamd.conf'}"], stdin=subprocess.DEVNULL,
            stdout=stderr, stderr=stderr, preexec_fn=own_group_and_die_with_parent)
        stderr.close()
        deadline = started + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                raise ClamdServiceError(f"clamd exited with {code}: {self.log()}")
            if self._pong(socket.AF_UNIX, self.socket_path) and self._pong(socket.AF_INET, (HOST, self.port)):
                self.start_seconds = time.monotonic() - started
                return self
            time.sleep(0.05)
        self.stop()
        raise ClamdServiceError(f"clamd did not answer PING within {READY_TIMEOUT} s: {self.log()}")

    @staticmethod
    def _pong(family: int, address: object) -> bool:
        with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(address)
            s.sendall(b"zPING\0")
            return s.recv(16) == b"PONG\0"
        return False

    def _signal(self, signum: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signum)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel and never answered."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop clamd (its directory stays, for `start()` again)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)

    def close(self) -> None:
        """Stop clamd and remove its directory."""
        self.stop()
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.close)

    def log(self) -> str:
        out = []
        for name in ("clamd.log", "stderr.log"):
            path = self.root / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"ClamdService({self.socket_path}, {self.tcp_address}, {state})"


def start_clamd_service(**kwargs: object) -> ClamdService:
    """A started clamd (keyword arguments: `ClamdService`'s)."""
    return ClamdService(**kwargs).start()  # type: ignore[arg-type]
