"""Fixtures shared by every test directory.

End-to-end tests run on both backend pairs (docs/architecture.md, "The storage model"):
`storage` is parametrised over "sqlite+file" (the embedded default) and "postgres+s3"
(a private PostgreSQL cluster and a moto S3 server on loopback, started once per session
and only when a test asks for them; a fresh database and bucket per test).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.pymail_harness import PymailServer

if TYPE_CHECKING:
    from tests.services.postgres import PostgresService
    from tests.services.s3 import MotoS3Service
    from tests.services.clamd import ClamdService
    from tests.services.slapd import SlapdService

BACKEND_PAIRS = ("sqlite+file", "postgres+s3")


@pytest.fixture(scope="session")
def pg_service() -> Iterator["PostgresService"]:
    from tests.services.postgres import start_postgres_service

    service = start_postgres_service()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def s3_service() -> Iterator["MotoS3Service"]:
    from tests.services.s3 import start_moto_service

    service = start_moto_service(auth=False)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def slapd_service() -> Iterator["SlapdService"]:
    """A throw-away OpenLDAP server on loopback (tests/services/slapd.py), for the
    session.  A test that stops or pauses it starts or resumes it before it ends."""
    from tests.services.slapd import start_slapd_service

    service = start_slapd_service()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def clamd_service() -> Iterator["ClamdService"]:
    """A private clamd (tests/services/clamd.py) knowing one signature, EICAR, on a unix
    socket and loopback TCP, one per test module: a module may stop or pause it, but
    starts or resumes it before each test ends."""
    from tests.services.clamd import start_clamd_service

    service = start_clamd_service()
    try:
        yield service
    finally:
        service.close()


@dataclass
class StorageSetup:
    """One backend pair for one test: the [storage] TOML and the services behind it."""

    name: str
    config: str = ""  #: TOML for the server's config ("" = the embedded default)
    pg: "PostgresService | None" = None
    s3: "MotoS3Service | None" = None
    database: str = ""
    bucket: str = ""


def make_storage(name: str, request: pytest.FixtureRequest, tmp_path: Path) -> StorageSetup:
    if name == "sqlite+file":
        return StorageSetup(name)
    pg: PostgresService = request.getfixturevalue("pg_service")
    s3: MotoS3Service = request.getfixturevalue("s3_service")
    database = pg.unique_name("e2e")
    dsn = pg.create_database_sync(database)
    bucket = s3.unique_bucket("e2e")
    s3.create_bucket(bucket)
    secret = tmp_path / "s3.secret"
    secret.write_text(s3.secret_access_key + "\n")
    config = f"""
[storage]
index = "{dsn}"
blobs = "s3://{bucket}"

[storage.s3]
endpoint_url = "{s3.endpoint_url}"
access_key_id = "{s3.access_key_id}"
secret_access_key_file = "{secret}"

[storage.postgres]
pool_min = 1
pool_max = 5
connect_timeout = 3.0
"""
    request.addfinalizer(lambda: pg.drop_database_sync(database))
    return StorageSetup(name, config, pg, s3, database, bucket)


@pytest.fixture(params=BACKEND_PAIRS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> StorageSetup:
    """Each backend pair in turn."""
    return make_storage(request.param, request, tmp_path)


@pytest.fixture
def server(tmp_path: Path, storage: StorageSetup) -> Iterator[PymailServer]:
    """A running pymail with domain example.test and users alice and bob, on each pair."""
    srv = PymailServer(tmp_path, storage_config=storage.config)
    srv.add_user("alice@example.test")
    srv.add_user("bob@example.test")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
