"""S3BlobStore on a real S3 endpoint (moto's server on loopback, auth on).

Two parts:

* The blob conformance scenarios of test_blobstore.py and the orphan sweeper's of
  test_gc.py, run here against `S3BlobStore` (SQLite index beside it) for as long as
  `BACKENDS` has no S3 backend pair; once the "postgres+s3" entry exists they run there
  and this re-run switches itself off.
* What only S3 has: credentials (unknown key, bad secret, a policy that refuses), a
  missing bucket, an endpoint that is down or hung and then comes back (the same store
  works again without being reopened), prefixes, the one client per store.

One moto server with auth on serves the whole session (`shared_moto_service`); every test
gets its own bucket.  The outage tests stop, freeze and restart a second server of their
own, so they never disturb the shared one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import logging
import os
import secrets
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import test_blobstore as _blob_scenarios
import test_gc as _gc_scenarios
from conftest import BACKENDS, Backend, Deferred

from pymail.store import NotFound, StorageError, Store, open_store
from pymail.store.blob import s3 as s3_module
from pymail.store.blob.s3 import S3BlobStore
from tests.services.s3 import (
    MotoS3Service,
    free_port,
    make_s3_blobstore,
    shared_moto_service,
    start_moto_service,
)

MESSAGE = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: s3\r\n\r\nHello.\r\n"
#: A failing call must give up within this many seconds (connect/read timeouts, 2 tries).
OUTAGE_BOUND = 8.0


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def moto_s3() -> MotoS3Service:
    """The session's moto server, auth on (stopped when the test process exits)."""
    return shared_moto_service(auth=True)


@pytest.fixture(scope="module")
def outage_s3() -> Iterator[MotoS3Service]:
    """A moto server of this module's own (auth off), for the tests that stop it."""
    service = start_moto_service(auth=False)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def bucket(moto_s3: MotoS3Service, request: pytest.FixtureRequest) -> str:
    name = moto_s3.unique_bucket(request.node.name)
    moto_s3.create_bucket(name)
    return name


def _deferred_store(make: Callable[[], Awaitable[S3BlobStore]]) -> Deferred:
    @contextlib.asynccontextmanager
    async def opened() -> AsyncIterator[S3BlobStore]:
        blobs = await make()
        try:
            yield blobs
        finally:
            await blobs.close()

    return Deferred(opened)


@pytest.fixture
def blobs(moto_s3: MotoS3Service, bucket: str) -> Deferred:
    """An `S3BlobStore` on this test's bucket with the good key (closed afterwards)."""
    return _deferred_store(lambda: make_s3_blobstore(moto_s3, bucket))


def _is_s3_backend(name: str) -> bool:
    return "s3" in name.split("+")


# --------------------------------------------------------------------------- conformance

_S3_IN_BACKENDS = any(_is_s3_backend(name) for name in BACKENDS)


@pytest.fixture(params=["sqlite+s3"])
def backend(moto_s3: MotoS3Service, request: pytest.FixtureRequest) -> Backend:
    """Overrides conftest's `backend` in this module: SQLite index, blobs in a fresh
    bucket on the session's moto server (the same bucket for every open of one test)."""
    if _S3_IN_BACKENDS:
        pytest.skip("BACKENDS has an S3 pair: test_blobstore.py covers S3 there")
    sqlite = BACKENDS["sqlite+file"]
    name = moto_s3.unique_bucket(request.node.name)
    moto_s3.create_bucket(name)
    settings = moto_s3.settings()

    def open_(location: Path) -> Store:
        return open_store(f"sqlite://{location / 'index.sqlite3'}", f"s3://{name}", s3=settings)

    return Backend(
        name=request.param,
        open=open_,
        execute_raw=sqlite.execute_raw,
        legacy_seed_sql=sqlite.legacy_seed_sql,
    )


# Every scenario of test_blobstore.py and test_gc.py (the sweeper needs the blob store's
# `entries` and `delete_if_stale`), collected again here with the `backend` above (the
# file-only ones skip themselves: this backend has no `blob_file`).
for _module in (_blob_scenarios, _gc_scenarios):
    for _name, _test in vars(_module).items():
        if _name.startswith("test_") and callable(_test):
            globals()[_name] = _test
del _module, _name, _test


# --------------------------------------------------------------------------- helpers


def _assert_secret_hidden(exc: BaseException, *secrets_: str) -> None:
    """Neither the message nor the whole chain of causes shows a secret."""
    text = "".join(traceback.format_exception(exc))
    for secret in secrets_:
        assert secret not in text


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text and len(text) < 300, text
    return text


async def _raises_storage_error(call: Awaitable[Any]) -> StorageError:
    try:
        await call
    except StorageError as exc:
        return exc
    raise AssertionError("expected StorageError")


# --------------------------------------------------------------------------- credentials


async def test_good_key_works(blobs: S3BlobStore, moto_s3: MotoS3Service) -> None:
    assert moto_s3.auth and moto_s3.access_key_id.startswith("AKIA")
    await blobs.check()
    key = await blobs.put(MESSAGE)
    assert await blobs.get(key) == MESSAGE
    assert moto_s3.object_names(blobs.bucket) == [key]


async def test_unknown_access_key(moto_s3: MotoS3Service, bucket: str) -> None:
    secret = moto_s3.secret_access_key
    blobs = S3BlobStore(bucket, "", moto_s3.settings(access_key_id="AKIAUNKNOWNKEY000000"))
    try:
        exc = await _raises_storage_error(blobs.check())
        text = _one_line(exc)
        assert "InvalidAccessKeyId" in text and "storage.s3.access_key_id" in text
        assert "AKIAUNKNOWNKEY000000" in text  # the key id is no secret: name it
        _assert_secret_hidden(exc, secret)
        # every operation says so, none pretends the blob is just absent
        key = hashlib.sha256(MESSAGE).hexdigest()
        for call in (blobs.put(MESSAGE), blobs.get(key)):
            assert "InvalidAccessKeyId" in str(await _raises_storage_error(call))
        # a HEAD answer has no body to name the error code: only "403"
        assert "storage.s3.access_key_id" in str(await _raises_storage_error(blobs.exists(key)))
    finally:
        await blobs.close()


async def test_bad_secret(moto_s3: MotoS3Service, bucket: str) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(24)
    blobs = S3BlobStore(bucket, "", moto_s3.settings(secret_access_key=wrong))
    try:
        exc = await _raises_storage_error(blobs.check())
        text = _one_line(exc)
        assert "SignatureDoesNotMatch" in text and "storage.s3.secret_access_key" in text
        _assert_secret_hidden(exc, wrong, moto_s3.secret_access_key)
        assert repr(blobs).count(wrong) == 0 and wrong not in repr(blobs.settings)
        for call in (
            blobs.put(MESSAGE),
            blobs.get(hashlib.sha256(MESSAGE).hexdigest()),
            blobs.get_range(hashlib.sha256(MESSAGE).hexdigest(), 0, 3),
            blobs.exists(hashlib.sha256(MESSAGE).hexdigest()),
            blobs.delete(hashlib.sha256(MESSAGE).hexdigest()),
            _drain(blobs.keys()),
        ):
            exc = await _raises_storage_error(call)
            _assert_secret_hidden(exc, wrong)
    finally:
        await blobs.close()


async def test_secret_never_logged(
    moto_s3: MotoS3Service, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Everything botocore and aiohttp log at DEBUG, with a good and a bad secret."""
    wrong = "wrong-" + secrets.token_urlsafe(24)
    caplog.set_level(logging.DEBUG)
    for secret in (moto_s3.secret_access_key, wrong):
        blobs = S3BlobStore(bucket, "", moto_s3.settings(secret_access_key=secret))
        try:
            with contextlib.suppress(StorageError):
                await blobs.check()
                await blobs.get(await blobs.put(MESSAGE))
        finally:
            await blobs.close()
    assert len(caplog.records) > 10  # botocore did log its requests
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert moto_s3.secret_access_key not in logged and wrong not in logged


async def _drain(iterator: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in iterator]


async def test_policy_without_bucket_access(moto_s3: MotoS3Service, bucket: str) -> None:
    key_id, secret = moto_s3.add_user(f"reader-{secrets.token_hex(3)}", ["s3:GetObject"])
    blobs = S3BlobStore(
        bucket, "", moto_s3.settings(access_key_id=key_id, secret_access_key=secret)
    )
    try:
        exc = await _raises_storage_error(blobs.check())
        text = _one_line(exc)
        assert f"bucket {bucket!r}" in text and "denied" in text
        assert "storage.s3.access_key_id" in text
        _assert_secret_hidden(exc, secret)
        assert "denied" in str(await _raises_storage_error(blobs.put(MESSAGE)))
    finally:
        await blobs.close()


async def test_no_credentials_anywhere(
    moto_s3: MotoS3Service, bucket: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """access_key_id/secret None: botocore's usual sources, here all empty (and the EC2
    metadata lookup, which would leave loopback, switched off)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    blobs = S3BlobStore(
        bucket, "", moto_s3.settings(access_key_id=None, secret_access_key=None)
    )
    try:
        text = _one_line(await _raises_storage_error(blobs.check()))
        assert "no S3 credentials" in text and "storage.s3.access_key_id" in text
    finally:
        await blobs.close()


async def test_credentials_from_the_environment(
    moto_s3: MotoS3Service, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_s3.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_s3.secret_access_key)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    blobs = S3BlobStore(
        bucket, "", moto_s3.settings(access_key_id=None, secret_access_key=None)
    )
    try:
        await blobs.check()
        assert await blobs.get(await blobs.put(MESSAGE)) == MESSAGE
    finally:
        await blobs.close()


# --------------------------------------------------------------------------- bucket


async def test_missing_bucket(moto_s3: MotoS3Service) -> None:
    name = moto_s3.unique_bucket("missing")  # never created
    blobs = S3BlobStore(name, "", moto_s3.settings())
    try:
        text = _one_line(await _raises_storage_error(blobs.check()))
        assert f"S3 bucket {name!r} does not exist at {moto_s3.endpoint_url}" == text
        key = hashlib.sha256(MESSAGE).hexdigest()
        for call in (blobs.put(MESSAGE), blobs.get(key), blobs.get_range(key, 0, 1),
                     _drain(blobs.keys()), _drain(blobs.entries())):
            exc = await _raises_storage_error(call)  # not NotFound: the blob is not the problem
            assert name in str(exc)
        # the bucket appears (an operator fixed it): the same store works
        moto_s3.create_bucket(name)
        await blobs.check()
        assert await blobs.get(await blobs.put(MESSAGE)) == MESSAGE
    finally:
        await blobs.close()


async def test_unreachable_endpoint_at_start(moto_s3: MotoS3Service, bucket: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    blobs = S3BlobStore(bucket, "", moto_s3.settings(endpoint_url=url))
    try:
        began = time.monotonic()
        text = _one_line(await _raises_storage_error(blobs.check()))
        assert time.monotonic() - began < OUTAGE_BOUND
        assert text == f"cannot reach S3 endpoint {url}: connection refused"
    finally:
        await blobs.close()


@pytest.mark.parametrize(
    ("setting", "value"),
    [("endpoint_url", "not a url"), ("addressing_style", "bogus"), ("region", "no region!")],
)
async def test_bad_settings(moto_s3: MotoS3Service, bucket: str, setting: str, value: str) -> None:
    blobs = S3BlobStore(bucket, "", moto_s3.settings(**{setting: value}))
    try:
        text = _one_line(await _raises_storage_error(blobs.check()))
        assert value in text
    finally:
        await blobs.close()


# --------------------------------------------------------------------------- layout


async def test_prefix_keeps_installations_apart(moto_s3: MotoS3Service, bucket: str) -> None:
    node_a = await make_s3_blobstore(moto_s3, bucket, prefix="node-a")
    root = await make_s3_blobstore(moto_s3, bucket, prefix="")
    try:
        in_a = await node_a.put(b"in a")
        in_root = await root.put(b"in root")
        moto_s3.put_raw(bucket, "README", b"not a blob")
        moto_s3.put_raw(bucket, "node-a/" + "f" * 63, b"not a key")
        moto_s3.put_raw(bucket, "node-a/nested/" + "e" * 64, b"too deep")
        assert sorted(moto_s3.object_names(bucket)) == sorted(
            ["README", in_root, f"node-a/{in_a}", "node-a/" + "f" * 63,
             "node-a/nested/" + "e" * 64]
        )
        assert [k async for k in node_a.keys()] == [in_a]
        assert [e.key async for e in node_a.entries()] == [in_a]
        assert [k async for k in root.keys()] == [in_root]
        assert not await root.exists(in_a) and await node_a.exists(in_a)
        with pytest.raises(NotFound):
            await node_a.get(in_root)
        assert node_a.object_name(in_a) == f"node-a/{in_a}"
    finally:
        await node_a.close()
        await root.close()


async def test_prefix_from_the_url(moto_s3: MotoS3Service, bucket: str, tmp_path: Path) -> None:
    store = open_store(
        f"sqlite://{tmp_path / 'i.sqlite3'}", f"s3://{bucket}/mail/blobs/", s3=moto_s3.settings()
    )
    try:
        assert isinstance(store.blobs, S3BlobStore)
        key = await store.blobs.put(MESSAGE)
        assert moto_s3.object_names(bucket) == [f"mail/blobs/{key}"]
    finally:
        await store.close()


async def test_put_sends_the_sha256_and_content_length(blobs: S3BlobStore) -> None:
    client = await blobs._s3()
    sent: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        sent.append({k.lower(): v.decode() if isinstance(v, bytes) else v
                     for k, v in request.headers.items()})

    client.meta.events.register("before-send.s3.PutObject", record)
    data = os.urandom(5000)
    await blobs.put(data)
    assert sent[-1]["x-amz-checksum-sha256"] == base64.b64encode(
        hashlib.sha256(data).digest()
    ).decode()
    assert sent[-1]["content-length"] == "5000"
    # the signed checksum header covers the body: botocore does not hash it again
    # (on the event loop) to sign it, not even over http://
    assert sent[-1]["x-amz-content-sha256"] == "UNSIGNED-PAYLOAD"
    assert "secret" not in repr(sent)


async def test_put_file_streams_the_file(blobs: S3BlobStore, tmp_path: Path) -> None:
    """The body handed to the HTTP layer is the open file, not its bytes."""
    client = await blobs._s3()
    bodies: list[object] = []
    client.meta.events.register(
        "before-send.s3.PutObject", lambda request, **_: bodies.append(request.body))
    data = os.urandom(300_000)
    source = tmp_path / "spooled.eml"
    source.write_bytes(data)
    key = await blobs.put_file(source, hashlib.sha256(data).hexdigest())
    assert not isinstance(bodies[-1], (bytes, bytearray)) and hasattr(bodies[-1], "read")
    assert await blobs.get(key) == data


async def test_get_refuses_bytes_that_do_not_hash_to_the_key(
    blobs: S3BlobStore, moto_s3: MotoS3Service
) -> None:
    key = await blobs.put(MESSAGE)
    moto_s3.put_raw(blobs.bucket, key, MESSAGE.replace(b"Hello", b"Hellx"))  # bit rot
    text = _one_line(await _raises_storage_error(blobs.get(key)))
    assert "corrupt" in text and key in text
    assert await blobs.get_range(key, 0, 4) == b"From"  # a range cannot be checked
    assert await blobs.put(MESSAGE) == key  # a put repairs it
    assert await blobs.get(key) == MESSAGE


async def test_one_client_per_store(blobs: S3BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[object] = []
    real = s3_module.AioSession

    class CountingSession(real):  # type: ignore[misc,valid-type]
        def create_client(self, *args: Any, **kwargs: Any) -> Any:
            made.append(kwargs.get("endpoint_url"))
            return super().create_client(*args, **kwargs)

    monkeypatch.setattr(s3_module, "AioSession", CountingSession)
    datas = [f"message {i}".encode() for i in range(30)]
    keys = await asyncio.gather(*(blobs.put(d) for d in datas))  # first use, concurrently
    assert await asyncio.gather(*(blobs.get(k) for k in keys)) == datas
    assert len(made) == 1


async def test_closed_store_refuses(moto_s3: MotoS3Service, bucket: str) -> None:
    blobs = await make_s3_blobstore(moto_s3, bucket)
    key = await blobs.put(MESSAGE)
    await blobs.close()
    await blobs.close()  # idempotent
    assert "closed" in str(await _raises_storage_error(blobs.get(key)))


async def test_delete_if_stale_on_a_versioned_bucket_spares_a_racing_put(
    moto_s3: MotoS3Service, bucket: str
) -> None:
    """With versioning on, the sweeper's DELETE names the version it judged stale: a put
    of the same bytes between its HEAD and its DELETE keeps the blob."""
    moto_s3.boto3_client("s3").put_bucket_versioning(
        Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
    )
    blobs = await make_s3_blobstore(moto_s3, bucket)
    try:
        key = await blobs.put(MESSAGE)
        client = await blobs._s3()
        real_delete = client.delete_object

        async def put_first_then_delete(**kwargs: Any) -> Any:
            await blobs.put(MESSAGE)  # the racing delivery
            return await real_delete(**kwargs)

        client.delete_object = put_first_then_delete
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)
        assert await blobs.delete_if_stale(key, later) is True  # the stale version went
        client.delete_object = real_delete
        assert await blobs.get(key) == MESSAGE  # the racing put's version is current
    finally:
        await blobs.close()


# --------------------------------------------------------------------------- outages


async def _timed(call: Awaitable[Any]) -> tuple[StorageError, float]:
    began = time.monotonic()
    exc = await _raises_storage_error(call)
    return exc, time.monotonic() - began


async def test_endpoint_down_then_back(outage_s3: MotoS3Service) -> None:
    bucket = outage_s3.unique_bucket("outage")
    blobs = await make_s3_blobstore(outage_s3, bucket)
    try:
        before = await blobs.put(b"before the outage")
        await blobs.check()

        outage_s3.stop_server()
        url = outage_s3.endpoint_url
        # (each call waits out botocore's one retry: up to 2 s of backoff)
        for call in (blobs.put(MESSAGE), blobs.get(before), _drain(blobs.entries()),
                     blobs.check()):
            exc, took = await _timed(call)
            assert took < OUTAGE_BOUND, took
            assert _one_line(exc).startswith(f"cannot reach S3 endpoint {url}"), exc

        outage_s3.start_server()  # same port; moto forgot every bucket
        outage_s3.create_bucket(bucket)
        # the same store, not reopened: pooled connections to the dead server are retried
        await blobs.check()
        key = await blobs.put(MESSAGE)
        assert await blobs.get(key) == MESSAGE
        assert await blobs.get_range(key, 0, 4) == b"From"
        assert [k async for k in blobs.keys()] == [key]
        with pytest.raises(NotFound):  # moto keeps objects in memory: gone with the restart
            await blobs.get(before)
    finally:
        await blobs.close()


async def test_endpoint_hung_then_back(outage_s3: MotoS3Service) -> None:
    """A server that accepts connections and never answers: the read timeout bounds
    every call; when it answers again the same store works."""
    bucket = outage_s3.unique_bucket("hung")
    blobs = await make_s3_blobstore(outage_s3, bucket, connect_timeout=0.5, read_timeout=0.5)
    try:
        key = await blobs.put(MESSAGE)
        outage_s3.pause_server()
        try:
            exc, took = await _timed(blobs.put(b"during the hang"))
            assert took < OUTAGE_BOUND, took
            text = _one_line(exc)
            assert outage_s3.endpoint_url in text and "timed out" in text, text
        finally:
            outage_s3.resume_server()
        assert await blobs.get(key) == MESSAGE
        assert await blobs.get(await blobs.put(b"after the hang")) == b"after the hang"
    finally:
        await blobs.close()
