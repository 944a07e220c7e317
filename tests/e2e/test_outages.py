"""Production storage under faults: PostgreSQL and S3 go away under a running pymail.

Each outage test runs its own PostgreSQL cluster or S3 server (stopping the shared ones
would disturb other tests).  What must hold: while a backend is down, DATA gets
`451 4.3.0` and nothing is half-stored; when it comes back, the same pymail process
delivers again without a restart; no message that got 250 is lost."""

from __future__ import annotations

import asyncio
import smtplib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pymail_harness import PymailServer
from tests.services.postgres import PostgresService, start_postgres_service
from tests.services.s3 import MotoS3Service, start_moto_service

MESSAGE = b"From: c@remote.example\r\nSubject: outage\r\n\r\nbody\r\n"


def storage_toml(dsn: str, s3: MotoS3Service, bucket: str, secret_file: Path) -> str:
    secret_file.write_text(s3.secret_access_key)
    return f"""
[storage]
index = "{dsn}"
blobs = "s3://{bucket}"
[storage.s3]
endpoint_url = "{s3.endpoint_url}"
access_key_id = "{s3.access_key_id}"
secret_access_key_file = "{secret_file}"
[storage.postgres]
pool_min = 1
pool_max = 4
connect_timeout = 2.0
"""


@pytest.fixture
def own_s3() -> Iterator[MotoS3Service]:
    service = start_moto_service(auth=False)
    yield service
    service.stop()


@pytest.fixture
def own_pg() -> Iterator[PostgresService]:
    service = start_postgres_service()
    yield service
    service.stop()


def started(tmp_path: Path, toml: str) -> PymailServer:
    srv = PymailServer(tmp_path, storage_config=toml)
    srv.cli("domain", "add", "example.test")
    srv.add_user("alice@example.test")
    return srv.start()


def send(srv: PymailServer) -> tuple[int, bytes]:
    """(code, text) of the reply to the end of DATA."""
    with smtplib.SMTP("127.0.0.1", srv.port, timeout=60) as client:
        client.ehlo("c.remote.example")
        client.mail("c@remote.example")
        assert client.rcpt("alice@example.test")[0] == 250
        return client.data(MESSAGE)


def test_s3_outage(tmp_path: Path, pg_service: PostgresService, own_s3: MotoS3Service) -> None:
    dsn = pg_service.create_database_sync(pg_service.unique_name("s3out"))
    bucket = own_s3.unique_bucket("out")
    own_s3.create_bucket(bucket)
    srv = started(tmp_path, storage_toml(dsn, own_s3, bucket, tmp_path / "secret"))
    try:
        # (no message before the outage: moto keeps objects in memory and loses them)
        own_s3.stop_server()
        code, text = send(srv)
        assert (code, text[:5]) == (451, b"4.3.0")
        own_s3.start_server()
        own_s3.create_bucket(bucket)  # moto forgets everything when it stops
        code, _ = send(srv)
        assert code == 250
        # the message of the failed attempt left no index row behind
        stored = srv.inbox("alice@example.test")
        assert [uid for uid, _, _ in stored] == [1]
        assert stored[0][1].endswith(MESSAGE)
        assert "reason=storage(" in srv.log()
    finally:
        srv.stop()


def test_postgres_outage(tmp_path: Path, own_pg: PostgresService, s3_service: MotoS3Service) -> None:
    dsn = own_pg.create_database_sync("pgout")
    bucket = s3_service.unique_bucket("pgout")
    s3_service.create_bucket(bucket)
    srv = started(tmp_path, storage_toml(dsn, s3_service, bucket, tmp_path / "secret"))
    try:
        assert send(srv)[0] == 250
        own_pg.stop_server(mode="immediate")
        # refused at RCPT (the directory is down) or at DATA: a 4xx either way
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=60) as client:
            client.ehlo("c.remote.example")
            client.mail("c@remote.example")
            code, text = client.rcpt("alice@example.test")
            assert (code, text[:5]) == (451, b"4.3.0")
        own_pg.start_server()
        deadline = time.monotonic() + 30
        code = 0
        while time.monotonic() < deadline:  # the pool reconnects by itself
            code, _ = send(srv)
            if code == 250:
                break
            time.sleep(0.5)
        assert code == 250
        assert [uid for uid, _, _ in srv.inbox("alice@example.test")] == [1, 2]
    finally:
        srv.stop()


def test_connections_dropped_under_load(tmp_path: Path, server_on_pg: PymailServer,
                                        pg_service: PostgresService) -> None:
    srv = server_on_pg
    acked: list[str] = []
    stop = threading.Event()

    def sender(worker: int) -> None:
        n = 0
        while not stop.is_set():
            marker = f"w{worker}n{n}"
            n += 1
            try:
                with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
                    client.sendmail("c@remote.example", ["alice@example.test"],
                                    f"Subject: {marker}\r\n\r\nx\r\n".encode())
                    acked.append(marker)
            except smtplib.SMTPException:
                time.sleep(0.05)  # a 451 while the connections were cut: retried as new mail

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    try:
        killed = 0
        for _ in range(5):
            time.sleep(0.4)
            killed += asyncio.run(pg_service.terminate_connections(srv.database))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert killed > 0, "no pymail connection was cut"
    assert len(acked) > 10
    subjects = {b.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for _, b, _ in srv.inbox("alice@example.test")}
    assert [m for m in acked if m not in subjects] == []
    assert send(srv)[0] == 250  # and it goes on


@pytest.fixture
def server_on_pg(tmp_path: Path, pg_service: PostgresService, s3_service: MotoS3Service) -> Iterator[PymailServer]:
    database = pg_service.unique_name("drop")
    dsn = pg_service.create_database_sync(database)
    bucket = s3_service.unique_bucket("drop")
    s3_service.create_bucket(bucket)
    srv = started(tmp_path, storage_toml(dsn, s3_service, bucket, tmp_path / "secret"))
    srv.database = database  # type: ignore[attr-defined]
    yield srv
    srv.stop()


# ----------------------------------------------------------------------- start-up errors


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pymail", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [["serve"], ["db", "migrate"]])
def test_unreachable_backends_at_start(tmp_path: Path, pg_service: PostgresService,
                                       s3_service: MotoS3Service, command: list[str]) -> None:
    dsn = pg_service.create_database_sync(pg_service.unique_name("start"))
    bucket = s3_service.unique_bucket("start")
    s3_service.create_bucket(bucket)
    secret = tmp_path / "secret"
    cases = {
        "postgres down": (storage_toml("postgresql://postgres@127.0.0.1:1/x", s3_service, bucket, secret), "PostgreSQL"),
        "no database": (storage_toml(pg_service.dsn("no_such_db"), s3_service, bucket, secret), "no_such_db"),
        "missing bucket": (storage_toml(dsn, s3_service, "pymail-no-such-bucket", secret), "pymail-no-such-bucket"),
        "s3 down": (storage_toml(dsn, MotoS3Service(port=1), bucket, secret), "127.0.0.1:1"),
    }
    if command != ["serve"]:  # the CLI's database commands do not need S3
        cases = {k: v for k, v in cases.items() if "s3" not in k and "bucket" not in k}
    for name, (toml, needle) in cases.items():
        workdir = tmp_path / name.replace(" ", "-")
        workdir.mkdir()
        srv = PymailServer(workdir, storage_config=toml)
        result = run_cli(srv.config_path, *command)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1, (name, result.stderr)
        assert "Traceback" not in result.stderr, name
        error = [l for l in lines if "storage" in l]
        assert len(error) == 1 and needle in error[0], (name, result.stderr)
        assert s3_service.secret_access_key not in result.stderr
