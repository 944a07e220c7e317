"""A private Redis for the tests (Rspamd's Bayes statistics), on a free loopback port.

Nothing in /etc is read or written and the system's redis-server (if one runs) is
never touched: ``redis-server`` gets its whole configuration on the command line --
``--bind 127.0.0.1 --port PORT``, no persistence (``--save "" --appendonly no``), its
working directory and log in the service's own temp directory, no unix socket -- runs
in the foreground (``--daemonize no``) in its own process group, and is stopped by its
own PID.  Ready = ``PING`` answers ``+PONG``.

`stop_server()` / `start_server()` restart on the same port (the data is gone: nothing
is persisted); `flush()` empties it between tests.

Needs the Debian package ``redis-server``; without it `RedisServiceError` says what to
install.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.services.process import free_loopback_port, stop_group

__all__ = ["RedisService", "RedisServiceError", "start_redis_service"]

HOST = "127.0.0.1"
DEBIAN_PACKAGE = "redis-server"
READY_TIMEOUT = 30.0


class RedisServiceError(RuntimeError):
    """The test Redis could not be made or started (the message says why)."""


class RedisService:
    """One redis-server on 127.0.0.1:`port`, nothing persisted."""

    def __init__(self, *, port: int | None = None) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.access(self.binary, os.X_OK):
            raise RedisServiceError(f"redis-server not found: apt-get install {DEBIAN_PACKAGE}")
        self.port = port or free_loopback_port()
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port``, as Rspamd's ``servers`` option takes it."""
        return f"{HOST}:{self.port}"

    def start(self) -> "RedisService":
        self.root = Path(tempfile.mkdtemp(prefix="pymail-redis-"))
        atexit.register(self.stop)
        try:
            self.start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self) -> None:
        assert self.root is not None
        if self.proc is not None and self.proc.poll() is None:
            raise RedisServiceError("redis-server runs already")
        command = [self.binary, "--bind", HOST, "--port", str(self.port),
                   "--save", "", "--appendonly", "no", "--daemonize", "no",
                   "--dir", str(self.root), "--logfile", str(self.root / "redis.log"),
                   "--unixsocket", "", "--protected-mode", "yes", "--databases", "1"]
        stderr = open(self.root / "stderr.log", "ab")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr,
                                     stderr=stderr, start_new_session=True)
        stderr.close()
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RedisServiceError(f"redis-server exited with {self.proc.returncode}: {self.log()}")
            if self.command("PING") == b"+PONG":
                return
            time.sleep(0.05)
        self.stop_server()
        raise RedisServiceError(f"redis-server did not answer PING within {READY_TIMEOUT} s: {self.log()}")

    def command(self, *words: str) -> bytes | None:
        """Send one command (RESP array of bulk strings); the first line of the reply,
        or None when the server cannot be reached."""
        request = f"*{len(words)}\r\n".encode()
        for word in words:
            data = word.encode()
            request += b"$%d\r\n%s\r\n" % (len(data), data)
        with contextlib.suppress(OSError):
            with socket.create_connection((HOST, self.port), timeout=2) as conn:
                conn.sendall(request)
                reply = b""
                while not reply.endswith(b"\r\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
                return reply.split(b"\r\n", 1)[0]
        return None

    def flush(self) -> None:
        if self.command("FLUSHALL") != b"+OK":
            raise RedisServiceError("redis-server did not flush")

    def stop_server(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_group(proc)

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
        for name in ("redis.log", "stderr.log"):
            path = self.root / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(out)

    def __repr__(self) -> str:
        state = "running" if self.proc is not None and self.proc.poll() is None else "stopped"
        return f"RedisService({self.address}, {state})"


def start_redis_service(**kwargs: object) -> RedisService:
    """A started private Redis on a free loopback port."""
    return RedisService(**kwargs).start()  # type: ignore[arg-type]
