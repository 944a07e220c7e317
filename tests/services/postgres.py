"""A private, throw-away PostgreSQL cluster for the tests, on a free loopback port.

Recipe and gotchas: ../shared/docs/TEST-SERVICES.md ("PostgreSQL").  Never the system
cluster (a Debian machine may run one on 5432): this one lives in its own temporary
directory, listens on 127.0.0.1 and a unix socket in that directory, trusts every local
client, and is removed by `stop()`.

* `start_postgres_service()` / `PostgresService().start()`: copy a cached ``initdb``
  output (``/var/tmp/pymail-test-cache/pg<major>-template``, made once with
  ``initdb --no-sync -A trust -U postgres -E UTF8 --locale=C.UTF-8``) with ``cp -a`` into a
  fresh directory and ``pg_ctl start`` it: about 0.3 s.  Without the cache, initdb adds
  about 1.5 s once.
* As root, initdb and the server run as the ``postgres`` OS user (``runuser -u postgres
  --``; initdb refuses root), so the data and socket directory belong to postgres and
  live under the system temp directory (not under /root, which postgres cannot enter).
* Server flags: ``fsync=off`` and ``full_page_writes=off`` (a test cluster is never
  recovered from power loss), ``synchronous_commit`` left on (pymail asks for it).
  pg_hba: trust for every client, except the role `PASSWORD_ROLE`, which must give its
  password (scram-sha-256): the tests for "password authentication failed" use it.
* `stop_server(mode)` / `start_server()`: an outage under a running pymail (same data
  directory, same port); `mode` is ``fast`` (clients get "terminating connection due to
  administrator command") or ``immediate`` (like a crash: recovery on the next start).
* `terminate_connections(dbname)`: ``pg_terminate_backend`` for every client of one
  database (a dropped connection without an outage).
* `create_database(name)` (async) / `create_database_sync(name)`: a fresh database from
  template0; returns its DSN.

The binaries come from the newest ``/usr/lib/postgresql/*/bin`` (Debian's ``postgresql``
package); without them `PostgresServiceError` says which package to install.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = [
    "DEBIAN_PACKAGE",
    "PASSWORD_ROLE",
    "PostgresService",
    "PostgresServiceError",
    "find_postgres_bindir",
    "start_postgres_service",
]

HOST = "127.0.0.1"
#: The Debian package that ships initdb, pg_ctl and postgres.
DEBIAN_PACKAGE = "postgresql"
#: The role pg_hba.conf makes log in with a password (every other role is trusted).
PASSWORD_ROLE = "pymail_pw"
#: Where the initdb output is cached between test runs.
CACHE_DIR = Path(os.environ.get("PYMAIL_TEST_CACHE", "/var/tmp/pymail-test-cache"))
#: Seconds `start_server` waits for the server to answer (allow for a busy machine).
READY_TIMEOUT = 60.0

_SERVER_FLAGS = (
    "-c listen_addresses={host} -p {port} -k {sockdir} "
    "-c max_connections=200 -c shared_buffers=32MB"
)
#: Added unless the service is `durable` (the benchmark wants production durability).
_FAST_FLAGS = " -c fsync=off -c full_page_writes=off"

_PG_HBA = f"""\
# pymail test cluster: written by tests/services/postgres.py
local   all  all                       trust
host    all  {PASSWORD_ROLE}  127.0.0.1/32  scram-sha-256
host    all  all              127.0.0.1/32  trust
host    all  all              ::1/128       trust
"""


class PostgresServiceError(RuntimeError):
    """The test cluster could not be made or started (the message says why)."""


def find_postgres_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<major>/bin`` that has initdb, pg_ctl, postgres."""
    candidates = []
    for path in Path("/usr/lib/postgresql").glob("*/bin"):
        if all((path / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            try:
                major = int(path.parent.name.split(".")[0])
            except ValueError:
                continue
            candidates.append((major, path))
    if not candidates:
        raise PostgresServiceError(
            "PostgreSQL server binaries not found in /usr/lib/postgresql/*/bin: install the "
            f"Debian package '{DEBIAN_PACKAGE}' (apt-get install {DEBIAN_PACKAGE})"
        )
    return max(candidates)[1]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class PostgresService:
    """One throw-away PostgreSQL cluster (see the module docstring)."""

    def __init__(self, *, port: int | None = None, durable: bool = False) -> None:
        #: fsync and full-page writes on, as in production (for benchmarks).
        self.durable = durable
        self.bindir = find_postgres_bindir()
        self.major = self.bindir.parent.name
        self.port = port or _free_port()
        self.host = HOST
        self.user = "postgres"
        self.root: Path | None = None  #: the temporary directory (data, socket, log)
        #: Seconds the last `start_server` took until the server answered.
        self.last_start_seconds = 0.0
        self._as_postgres = os.geteuid() == 0
        self._uid = self._gid = -1
        if self._as_postgres:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresServiceError(
                    "running as root but there is no 'postgres' OS user to run the server: "
                    f"install the Debian package '{DEBIAN_PACKAGE}'"
                ) from None
            self._uid, self._gid = entry.pw_uid, entry.pw_gid
        self._serial = 0

    # ------------------------------------------------------------------ paths

    @property
    def data_dir(self) -> Path:
        assert self.root is not None, "the service was not started"
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None, "the service was not started"
        return self.root / "postgres.log"

    def dsn(self, dbname: str = "postgres", *, user: str | None = None,
            password: str | None = None) -> str:
        """``postgresql://user[:password]@127.0.0.1:port/dbname``."""
        auth = user or self.user
        if password is not None:
            auth += f":{password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID while it runs (from postmaster.pid)."""
        if self.root is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ commands

    def _run(self, argv: list[str], *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",  # postgres may not be able to enter the caller's directory
        )

    def _chown(self, path: Path) -> None:
        if self._as_postgres:
            os.chown(path, self._uid, self._gid)

    def _template(self) -> Path:
        """The cached initdb output for this major version, made once (under a lock)."""
        template = CACHE_DIR / f"pg{self.major}-template"
        if (template / "PG_VERSION").is_file():
            return template
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        os.chmod(CACHE_DIR, 0o755)
        with open(CACHE_DIR / f"pg{self.major}-template.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (template / "PG_VERSION").is_file():
                return template
            work = Path(tempfile.mkdtemp(prefix=f"pg{self.major}-initdb-", dir=CACHE_DIR))
            os.chmod(work, 0o755)
            self._chown(work)
            data = work / "data"
            result = self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D", str(data),
                    "--no-sync", "-A", "trust", "-U", "postgres",
                    "-E", "UTF8", "--locale=C.UTF-8",
                ]
            )
            if result.returncode != 0:
                shutil.rmtree(work, ignore_errors=True)
                raise PostgresServiceError(
                    f"initdb failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
                )
            os.replace(data, template)
            shutil.rmtree(work, ignore_errors=True)
        return template

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> PostgresService:
        """Make a fresh cluster from the cached template and start it; returns self."""
        if self.root is not None:
            raise PostgresServiceError("the service was started already")
        template = self._template()
        self.root = Path(tempfile.mkdtemp(prefix="pymail-pg-", dir=tempfile.gettempdir()))
        os.chmod(self.root, 0o755)
        self._chown(self.root)
        atexit.register(self.stop)
        copy = subprocess.run(
            ["cp", "-a", str(template), str(self.data_dir)], capture_output=True, text=True
        )
        if copy.returncode != 0:
            self.stop()
            raise PostgresServiceError(f"copying {template} failed: {copy.stderr.strip()}")
        (self.data_dir / "pg_hba.conf").write_text(_PG_HBA)
        self._chown(self.data_dir / "pg_hba.conf")
        for attempt in range(3):
            try:
                self.start_server()
                return self
            except PostgresServiceError:
                # The free port may have been taken in the meantime: try another one.
                if attempt == 2 or "could not bind" not in self._log_tail():
                    self.stop()
                    raise
                self.port = _free_port()
        raise AssertionError("unreachable")

    def start_server(self) -> None:
        """Start the server on the same data directory and port (after `stop_server`)."""
        if self.root is None:
            raise PostgresServiceError("the service was not started")
        if self.pid is not None and self._alive(self.pid):
            raise PostgresServiceError(f"PostgreSQL already runs on port {self.port}")
        begin = time.monotonic()
        flags = _SERVER_FLAGS.format(host=HOST, port=self.port, sockdir=self.root)
        if not self.durable:
            flags += _FAST_FLAGS
        result = self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D", str(self.data_dir),
                "-l", str(self.log_path),
                "-w", "-t", str(int(READY_TIMEOUT)),
                "-o", flags,
                "start",
            ],
            timeout=READY_TIMEOUT + 10,
        )
        if result.returncode != 0:
            raise PostgresServiceError(
                f"pg_ctl start failed on port {self.port} ({result.returncode}): "
                f"{result.stdout.strip()} {result.stderr.strip()}\n{self._log_tail()}"
            )
        while not _answers(self.port):  # pg_ctl -w waited for the socket; TCP too
            if time.monotonic() - begin > READY_TIMEOUT:
                raise PostgresServiceError(f"PostgreSQL does not answer on port {self.port}")
            time.sleep(0.02)
        self.last_start_seconds = time.monotonic() - begin

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: clients are told; ``immediate``: like a crash).
        The data directory and port stay for `start_server`."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown shutdown mode {mode!r}")
        pid = self.pid
        if self.root is None or pid is None or not self._alive(pid):
            return
        result = self._run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w",
             "-t", "30", "stop"],
            timeout=40,
        )
        if result.returncode != 0 and self._alive(pid):
            # pg_ctl could not do it: stop the postmaster by its PID.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        while _answers(self.port):  # the listening socket is gone once it returns
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop the server for good and remove its directory.  Idempotent."""
        if self.root is None:
            return
        try:
            self.stop_server("fast")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            atexit.unregister(self.stop)

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        # a zombie (our own child would be one; pg_ctl's is not) counts as gone
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split(") ", 1)[1][:1] != "Z"
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except (OSError, AssertionError):
            return ""

    def __enter__(self) -> PostgresService:
        return self.start() if self.root is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.pid and self._alive(self.pid) else "stopped"
        return f"PostgresService({HOST}:{self.port}, {state})"

    # ------------------------------------------------------------------ SQL as the admin

    async def _admin(self):  # noqa: ANN202 - an asyncpg connection
        import asyncpg

        return await asyncpg.connect(self.dsn("postgres"), timeout=10)

    def unique_name(self, hint: str = "t") -> str:
        """A database name no other call of this service returned (lower case, <= 63)."""
        self._serial += 1
        hint = re.sub(r"[^a-z0-9_]", "_", hint.lower())[:40] or "t"
        return f"{hint}_{os.getpid()}_{self._serial}"

    async def create_database(self, name: str) -> str:
        """Create the database ``name`` (fresh, from template0); its DSN."""
        conn = await self._admin()
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        finally:
            await conn.close()
        return self.dsn(name)

    async def drop_database(self, name: str) -> None:
        """Drop the database and every connection to it; an absent one is fine."""
        conn = await self._admin()
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def terminate_connections(self, dbname: str) -> int:
        """``pg_terminate_backend`` every client connection to `dbname`; how many."""
        conn = await self._admin()
        try:
            return int(
                await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = $1 AND pid <> pg_backend_pid()",
                    dbname,
                )
            )
        finally:
            await conn.close()

    async def execute(self, sql: str, *args: object, dbname: str = "postgres") -> str:
        """Run one statement as the superuser (e.g. CREATE ROLE)."""
        import asyncpg

        conn = await asyncpg.connect(self.dsn(dbname), timeout=10)
        try:
            return await conn.execute(sql, *args)
        finally:
            await conn.close()

    # sync variants for pytest fixtures (no event loop runs there)

    def create_database_sync(self, name: str) -> str:
        return asyncio.run(self.create_database(name))

    def drop_database_sync(self, name: str) -> None:
        asyncio.run(self.drop_database(name))


def start_postgres_service() -> PostgresService:
    """A started throw-away cluster on a free loopback port (call `.stop()` when done)."""
    return PostgresService().start()
