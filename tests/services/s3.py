"""A real S3 endpoint for the tests: moto's server on a free loopback port.

Recipe and gotchas: ../shared/docs/TEST-SERVICES.md ("S3: moto vs s3rver").

* `start_moto_service(auth=False)` starts ``python -m moto.server`` on 127.0.0.1 and
  waits until ``GET /moto-api/`` answers.  Auth off: any key and secret work.  Auth on:
  moto starts with ``INITIAL_NO_AUTH_ACTION_COUNT=3`` and the three free calls create an
  IAM user, its access key and an allow-everything policy; `.access_key_id` /
  `.secret_access_key` hold that key, and from then on moto checks every signature
  (unknown key → InvalidAccessKeyId, bad secret → SignatureDoesNotMatch) and policy.
* `stop_server()` / `start_server()` stop and restart the same process on the same port:
  an S3 outage.  moto keeps everything in memory, so after a restart every bucket is
  gone (`create_bucket` again) and, with auth on, so is the IAM user: a restart with auth
  on makes a new key (the attributes change).
* `pause_server()` / `resume_server()` SIGSTOP / SIGCONT the process: a hung endpoint
  (connections are accepted by the kernel, nothing answers).
* `shared_moto_service(auth)` is one service per test process (per auth flag), stopped at
  exit, so several test modules share a server.
* Everything stays on 127.0.0.1; the process is stopped by its own PID.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from pymail.store import S3Settings
from pymail.store.blob.s3 import S3BlobStore

__all__ = [
    "MotoExited",
    "MotoS3Service",
    "free_port",
    "make_s3_blobstore",
    "shared_moto_service",
    "start_moto_service",
]

HOST = "127.0.0.1"
REGION = "us-east-1"
#: Seconds to wait for moto to answer after the process started (allow for a busy box).
READY_TIMEOUT = 30.0
#: Any key works when auth is off; these name the test in moto's logs.
ANONYMOUS_KEY_ID = "pymail-test"
ANONYMOUS_SECRET = "pymail-test-secret"
_ALLOW_ALL = json.dumps(
    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
)
_bucket_serial = itertools.count(1)


def free_port() -> int:
    """A loopback TCP port nobody listens on (at the moment of asking)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """(In the child, Linux) SIGTERM when the test process dies, even by SIGKILL, so no
    moto outlives its tests.  Call `start_server` from the main thread: the signal
    follows the thread that started the process."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class MotoExited(RuntimeError):
    """The moto process ended before it answered (e.g. its port was taken)."""


class MotoS3Service:
    """One moto server process on `HOST`:`port` (see the module docstring)."""

    def __init__(self, *, auth: bool = False, port: int | None = None) -> None:
        self.auth = auth
        self.port = port or free_port()
        self.region = REGION
        self.access_key_id = ANONYMOUS_KEY_ID
        self.secret_access_key = ANONYMOUS_SECRET
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = Path(tempfile.mkdtemp(prefix="pymail-moto-"))
        #: moto's request log (stdout and stderr of the server).
        self.log_path = self._dir / "moto.log"
        #: Seconds the last `start_server` took until moto answered.
        self.last_start_seconds = 0.0
        self._boto3_session: Any = None
        self._clients: dict[tuple[str, str, str], Any] = {}
        atexit.register(self.stop)

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # ------------------------------------------------------------------ process

    def start(self, *, tries: int = 3) -> MotoS3Service:
        """Start the server (and with auth on, make the IAM user); returns self.  If the
        free port was taken meanwhile, start again on another one."""
        for attempt in range(tries):
            try:
                self.start_server()
                return self
            except MotoExited:
                if attempt == tries - 1:
                    raise
                self.port = free_port()
        return self

    def start_server(self) -> None:
        """Start moto on `port` (the same port after a `stop_server`) and wait until it
        answers; with auth on, make a fresh IAM user and key."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"moto already runs on {self.endpoint_url}")
        env = {k: v for k, v in os.environ.items() if k != "INITIAL_NO_AUTH_ACTION_COUNT"}
        if self.auth:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"
        begin = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # a Ctrl-C to pytest is not a Ctrl-C to moto
                preexec_fn=_die_with_parent,
            )
        self._wait_ready(begin)
        self.last_start_seconds = time.monotonic() - begin
        if self.auth:
            self._make_admin_key()

    def _wait_ready(self, begin: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise MotoExited(
                    f"moto exited with {self.proc.returncode} on {self.endpoint_url}:\n{tail}"
                )
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - begin > READY_TIMEOUT:
                self.stop_server()
                raise RuntimeError(f"moto did not answer on {self.endpoint_url} in time")
            time.sleep(0.05)

    def stop_server(self) -> None:
        """Stop the moto process (its PID only); buckets and IAM users are lost."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)  # in case it is paused
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def pause_server(self) -> None:
        """SIGSTOP the server: it accepts connections (the kernel does) but never answers."""
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume_server(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server for good and remove its log directory.  Idempotent."""
        self.stop_server()
        shutil.rmtree(self._dir, ignore_errors=True)
        atexit.unregister(self.stop)

    def __enter__(self) -> MotoS3Service:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ S3 and IAM

    def boto3_client(  # noqa: ANN201
        self, service: str = "s3", key_id: str | None = None, secret: str | None = None
    ):
        """A synchronous boto3 client with the service's key, or `key_id`/`secret` (cached:
        making one reads botocore's models)."""
        import boto3  # moto depends on it; pymail itself does not
        from botocore.config import Config

        key_id, secret = key_id or self.access_key_id, secret or self.secret_access_key
        cache_key = (service, key_id, secret)
        client = self._clients.get(cache_key)
        if client is None:
            if self._boto3_session is None:
                self._boto3_session = boto3.session.Session()
            client = self._clients[cache_key] = self._boto3_session.client(
                service,
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=key_id,
                aws_secret_access_key=secret,
                config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
            )
        return client

    def _make_admin_key(self) -> None:
        """Spend moto's three unauthenticated calls on a user, its key and its policy."""
        iam = self.boto3_client("iam", "bootstrap", "bootstrap")
        iam.create_user(UserName="pymail-admin")
        key = iam.create_access_key(UserName="pymail-admin")["AccessKey"]
        iam.put_user_policy(
            UserName="pymail-admin", PolicyName="everything", PolicyDocument=_ALLOW_ALL
        )
        self.access_key_id = key["AccessKeyId"]
        self.secret_access_key = key["SecretAccessKey"]

    def add_user(self, name: str, actions: list[str]) -> tuple[str, str]:
        """(auth on) A further IAM user allowed only `actions` (e.g. ["s3:GetObject"]);
        returns its (access key id, secret)."""
        if not self.auth:
            raise RuntimeError("add_user needs a service started with auth=True")
        iam = self.boto3_client("iam")
        iam.create_user(UserName=name)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=name, PolicyName="only", PolicyDocument=json.dumps(policy))
        return key["AccessKeyId"], key["SecretAccessKey"]

    def create_bucket(self, name: str) -> None:
        """Create the bucket (again after a restart); an existing one is fine."""
        s3 = self.boto3_client("s3")
        try:
            s3.create_bucket(Bucket=name)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            pass

    def object_names(self, bucket: str) -> list[str]:
        """Every object name in the bucket, as moto has them (for assertions)."""
        s3 = self.boto3_client("s3")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", ())]

    def put_raw(self, bucket: str, name: str, data: bytes) -> None:
        """Put an object behind pymail's back (a foreign object, a corrupted blob)."""
        self.boto3_client("s3").put_object(Bucket=bucket, Key=name, Body=data)

    @staticmethod
    def unique_bucket(hint: str = "t") -> str:
        """A bucket name no other test of this run uses (valid: 3-63 chars, a-z0-9-)."""
        hint = "".join(c for c in hint.lower() if c.isalnum())[:20] or "t"
        return f"pymail-{hint}-{os.getpid()}-{next(_bucket_serial)}-{secrets.token_hex(3)}"

    @staticmethod
    def bucket_for(location: str | os.PathLike[str]) -> str:
        """The same valid bucket name every time for one location (a test's tmp_path)."""
        return "pymail-" + hashlib.sha256(os.fsencode(location)).hexdigest()[:32]

    def settings(self, **overrides: object) -> S3Settings:
        """`S3Settings` for this endpoint and key; `overrides` replace fields."""
        base = S3Settings(
            endpoint_url=self.endpoint_url,
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            addressing_style="path",
            connect_timeout=2.0,
            read_timeout=10.0,
        )
        return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        state = "running" if self.proc is not None and self.proc.poll() is None else "stopped"
        return f"MotoS3Service({self.endpoint_url}, auth={self.auth}, {state})"


def start_moto_service(auth: bool = False) -> MotoS3Service:
    """A started moto S3 server on a free loopback port (call `.stop()` when done)."""
    return MotoS3Service(auth=auth).start()


_shared: dict[bool, MotoS3Service] = {}


def shared_moto_service(auth: bool = True) -> MotoS3Service:
    """One started service per test process and auth flag, stopped when the process
    exits.  Do not stop or restart it: other tests use it; outage tests start their own."""
    service = _shared.get(auth)
    if service is None or service.proc is None or service.proc.poll() is not None:
        service = _shared[auth] = start_moto_service(auth)
    return service


async def make_s3_blobstore(
    service: MotoS3Service, bucket: str, *, prefix: str = "", **overrides: object
) -> S3BlobStore:
    """Create `bucket` on the service and return an (unopened) `S3BlobStore` on it;
    `overrides` replace `S3Settings` fields (e.g. read_timeout=1.0)."""
    await asyncio.to_thread(service.create_bucket, bucket)
    return S3BlobStore(bucket, prefix, service.settings(**overrides))
