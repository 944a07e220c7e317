"""S3BlobStore: message blobs as objects in an S3 bucket (MinIO, AWS, moto, SeaweedFS).

Layout: object name ``<prefix>/<key>`` (or just ``<key>`` without a prefix), where ``key``
is the lower-case hex SHA-256 of the bytes, exactly as in the file store.

Invariants:

* One aiobotocore client per store (so per process), made on first use under a lock and
  closed by `close()`; its aiohttp pool holds up to `S3Settings.max_connections`.
  The client outlives outages: after the endpoint comes back the next call reconnects,
  so the store never has to be reopened.
* `put` always PUTs (never HEAD first): a repeated put renews the object's LastModified,
  which is what protects a delivery in flight from the orphan sweeper (`BlobInfo`).  It
  returns only after the server acknowledged the PUT with 200.  The SHA-256 we computed
  for the key travels as ``x-amz-checksum-sha256``, so a server that verifies it (AWS,
  MinIO, SeaweedFS) rejects bytes damaged on the way; moto stores it without checking.
  That header is signed, so the body itself is not (``payload_signing_enabled`` off:
  ``UNSIGNED-PAYLOAD`` even over http://, where botocore would otherwise hash every body
  a second time, on the event loop, reading a file body whole to do it).
* `put_file` (the `BlobFileStore` capability) is the same single PUT with the open file
  as its body: aiobotocore hands a file object to aiohttp, which sends it 64 KiB at a
  time, each read in a worker thread; the key (SHA-256) comes from the caller, who
  hashed the bytes as it wrote them.  Memory stays bounded whatever the size, and the
  server's checksum check covers the whole object (a multipart upload could only carry
  per-part SHA-256s).  botocore's retry seeks the file back to its start.
* `get` returns only bytes that hash to their key: it checks the SHA-256 itself (one
  hash, for every object, however it was written), so botocore's own response checksum
  validation is off.  `get_range` cannot be checked (S3 has no checksum of a range).
* A malformed key (not 64 lower-case hex digits) cannot name a stored blob: it is absent
  (`NotFound`, False) and never reaches the network.  A listing skips object names that
  are not keys (other prefixes, foreign objects).  One ambiguity S3 leaves: a HEAD answer
  has no body, so `exists` cannot tell a missing bucket from a missing object (False);
  every other call, and `check` at start, names the missing bucket.
* Every failure of the service or of the way to it (botocore, aiohttp, OSError, timeout)
  is raised as `StorageError` with a one-line reason naming the bucket or endpoint and,
  for credential problems, the setting to fix.  An absent object is `NotFound`.  The
  secret access key appears in no message (only the access key id may).
* Every call is bounded in time: botocore's "standard" retry mode with 2 attempts, the
  connect/read timeouts of `S3Settings`, and around each call a deadline of
  2 x (connect + read timeout + size at 1 MiB/s) + 2 s, because aiohttp has no timeout
  while it writes a request body (a hung server that stops reading would hold a large
  PUT for ever).  PUT goes without ``Expect: 100-continue``: aiohttp waits for the
  ``100`` without any timeout, and for mail-sized bodies it only adds a round trip.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as _dt
import errno as _errno
import hashlib
import io
import os
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.handlers import add_expect_header
from botocore.loaders import Loader, create_loader

from pymail.store.interfaces import BlobInfo, NotFound, StorageError

if TYPE_CHECKING:
    from pymail.store import S3Settings

__all__ = ["S3BlobStore"]

_KEY_RE = re.compile(r"^[0-9a-f]{64}\Z")
#: Bytes read from a response body per await.
_CHUNK = 256 * 1024
#: Blobs at least this big are hashed on a worker thread, not on the event loop.
_HASH_IN_THREAD = 1024 * 1024
#: The slowest transfer rate a deadline allows for (bytes per second).
_MIN_RATE = 1024 * 1024
#: Errors from the transport below botocore that may escape it (mid-body, pool, socket).
_TRANSPORT_ERRORS = (BotoCoreError, aiohttp.ClientError, OSError, asyncio.TimeoutError)
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket"})
_DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "AccountProblem"})
_SETTING_ID = "storage.s3.access_key_id"
_SETTING_SECRET = "storage.s3.secret_access_key"


_loader: Loader | None = None


def _shared_loader() -> Loader:
    """botocore's JSON model loader, shared by every store of the process: its cache makes
    a second client cheap (the models are read once, ~0.1 s)."""
    global _loader
    if _loader is None:
        _loader = create_loader()
    return _loader


async def _sha256(data: bytes) -> bytes:
    """The SHA-256 digest; a big blob is hashed on a worker thread, off the event loop."""
    if len(data) >= _HASH_IN_THREAD:
        return await asyncio.to_thread(lambda: hashlib.sha256(data).digest())
    return hashlib.sha256(data).digest()


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _transport_reason(exc: BaseException) -> str:
    """A short reason for a failure to talk to the endpoint ("connection refused")."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    timed_out = False
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, (asyncio.TimeoutError, ReadTimeoutError, ConnectTimeoutError)):
            timed_out = True
        if isinstance(e, OSError) and e.errno is not None and not isinstance(e, TimeoutError):
            if e.errno == _errno.ECONNREFUSED:
                return "connection refused"
            return _one_line(e.strerror or e).lower()
        kwargs = getattr(e, "kwargs", None)
        if isinstance(kwargs, dict) and isinstance(kwargs.get("error"), BaseException):
            todo.append(kwargs["error"])
        todo.append(getattr(e, "os_error", None))
        todo.append(e.__cause__)
        todo.append(e.__context__)
    if timed_out:
        return "timed out"
    return _one_line(exc) or type(exc).__name__


class S3BlobStore:
    """Immutable message bytes as objects in `bucket` under `prefix` (see the module
    docstring).  Cheap to make: nothing is opened before the first call."""

    def __init__(self, bucket: str, prefix: str, settings: S3Settings) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.settings = settings
        #: What error messages call the endpoint until the client knows AWS's own URL.
        self.endpoint = settings.endpoint_url or f"AWS S3 ({settings.region})"
        self._name_prefix = f"{self.prefix}/" if self.prefix else ""
        self._lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------ helpers

    def object_name(self, key: str) -> str:
        """The S3 object name of blob `key` (whether or not it exists)."""
        return self._name_prefix + key

    async def _s3(self) -> Any:
        """The store's one client, made on first use.

        The client belongs to the event loop it was made in; a store used from another
        loop (a second `asyncio.run`) leaves the old client to that loop and makes a new
        one rather than fail."""
        client = self._client
        loop = asyncio.get_running_loop()
        if client is not None and self._loop is loop:
            return client
        if self._loop is not loop:
            if self._closed:
                raise StorageError("blob store is closed")
            self._client, self._stack, self._loop = None, None, loop
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._closed:
                raise StorageError("blob store is closed")
            if self._client is not None:
                return self._client
            s = self.settings
            stack = AsyncExitStack()
            try:
                config = AioConfig(
                    # the signed x-amz-checksum-sha256 covers the body (module docstring)
                    s3={"addressing_style": s.addressing_style, "payload_signing_enabled": False},
                    max_pool_connections=s.max_connections,
                    connect_timeout=s.connect_timeout,
                    read_timeout=s.read_timeout,
                    retries={"max_attempts": 2, "mode": "standard"},
                    response_checksum_validation="when_required",  # `get` hashes itself
                    warm_up_loader_caches=True,  # load botocore's JSON models off the loop
                )
                session = AioSession()
                session.register_component("data_loader", _shared_loader())
                self._client = await stack.enter_async_context(
                    session.create_client(
                        "s3",
                        endpoint_url=s.endpoint_url,
                        region_name=s.region,
                        aws_access_key_id=s.access_key_id,
                        aws_secret_access_key=s.secret_access_key,
                        config=config,
                    )
                )
            except (ValueError, TypeError, *_TRANSPORT_ERRORS) as exc:
                await stack.aclose()
                raise StorageError(
                    f"cannot set up the S3 client for {self.endpoint}: {_one_line(exc)}"
                ) from exc
            # no "Expect: 100-continue" on PUT (see the module docstring)
            self._client.meta.events.unregister("before-call.s3", add_expect_header)
            self._stack = stack
            self.endpoint = self._client.meta.endpoint_url or self.endpoint
            return self._client

    def _deadline(self, nbytes: int = 0) -> float:
        """Seconds one call (both attempts) may take, moving `nbytes` of body."""
        s = self.settings
        return 2 * (s.connect_timeout + s.read_timeout + nbytes / _MIN_RATE) + 2.0

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> Exception:
        """The `StorageError` (or `NotFound`) for a failure of `action` on `key`."""
        where = f"bucket {self.bucket!r}"
        if isinstance(exc, ClientError):
            err = exc.response.get("Error") or {}
            code = str(err.get("Code") or "")
            status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if key is not None and code in _NOT_FOUND_CODES:
                return NotFound(f"no blob {key}")
            if code in _NO_BUCKET_CODES or (key is None and (code == "404" or status == 404)):
                return StorageError(f"S3 bucket {self.bucket!r} does not exist at {self.endpoint}")
            if code == "InvalidAccessKeyId":
                key_id = self.settings.access_key_id
                named = f"{key_id!r}" if key_id else "from the environment"
                return StorageError(
                    f"S3 does not know the access key {named} "
                    f"(InvalidAccessKeyId, {where}): check {_SETTING_ID}"
                )
            if code == "SignatureDoesNotMatch":
                return StorageError(
                    f"S3 rejected the request signature for {where} (SignatureDoesNotMatch): "
                    f"check {_SETTING_SECRET}"
                )
            if code in _DENIED_CODES or status == 403:
                return StorageError(
                    f"S3 access to {where} denied: check {_SETTING_ID} / secret_access_key "
                    "and the key's policy"
                )
            message = _one_line(err.get("Message") or "")
            return StorageError(
                f"S3 {action} in {where} failed: {code or status}"
                + (f" {message}" if message else "")
            )
        if isinstance(exc, NoCredentialsError):
            return StorageError(
                f"no S3 credentials for {where}: set {_SETTING_ID} and {_SETTING_SECRET} "
                "(or the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment)"
            )
        if isinstance(
            exc, (EndpointConnectionError, aiohttp.ClientConnectorError, ConnectionError)
        ):
            return StorageError(
                f"cannot reach S3 endpoint {self.endpoint}: {_transport_reason(exc)}"
            )
        if isinstance(exc, (asyncio.TimeoutError, ReadTimeoutError, ConnectTimeoutError)):
            return StorageError(f"S3 endpoint {self.endpoint} timed out ({action})")
        return StorageError(
            f"S3 {action} in {where} at {self.endpoint} failed: {_transport_reason(exc)}"
        )

    async def _read_body(self, response: dict[str, Any]) -> bytes:
        """The whole streaming body, held once (BytesIO hands its buffer over unchanged),
        within a deadline for its announced length."""
        body = response["Body"]
        buf = io.BytesIO()
        async with body, asyncio.timeout(self._deadline(int(response.get("ContentLength") or 0))):
            while chunk := await body.read(_CHUNK):
                buf.write(chunk)
        return buf.getvalue()

    # ------------------------------------------------------------------ BlobStore

    async def put(self, data: bytes) -> str:
        """PUT the bytes and return the key once S3 acknowledged them (see the module
        docstring); a repeat PUTs again, renewing LastModified."""
        data = bytes(data)
        digest = await _sha256(data)
        return await self._put_object(data, len(data), digest.hex())

    async def put_file(self, path: Path, key: str) -> str:
        """PUT the file's bytes as blob `key` (their SHA-256, computed by the caller),
        streamed from the file; see the module docstring."""
        if not _KEY_RE.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        try:
            body = await asyncio.to_thread(open, path, "rb")
        except OSError as exc:
            raise StorageError(f"S3 put in bucket {self.bucket!r}: cannot read {path}: "
                               f"{exc.strerror or exc}") from exc
        try:
            size = os.fstat(body.fileno()).st_size
            return await self._put_object(body, size, key)
        finally:
            await asyncio.to_thread(body.close)

    async def _put_object(self, body: bytes | BinaryIO, size: int, key: str) -> str:
        checksum = base64.b64encode(bytes.fromhex(key)).decode("ascii")
        client = await self._s3()
        try:
            async with asyncio.timeout(self._deadline(size)):
                response = await client.put_object(
                    Bucket=self.bucket,
                    Key=self.object_name(key),
                    Body=body,
                    ContentLength=size,
                    ContentType="message/rfc822",
                    ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=checksum,
                )
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            raise self._error(exc, "put", None) from exc
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status != 200:
            raise StorageError(
                f"S3 put in bucket {self.bucket!r} answered HTTP {status}, not 200"
            )
        echoed = response.get("ChecksumSHA256")
        if echoed and echoed != checksum:
            raise StorageError(
                f"S3 put in bucket {self.bucket!r} stored a different SHA-256 than sent"
            )
        return key

    async def get(self, key: str) -> bytes:
        """All bytes of the blob; `NotFound` if absent."""
        if not _KEY_RE.match(key):
            raise NotFound(f"no blob {key!r}")
        client = await self._s3()
        try:
            async with asyncio.timeout(self._deadline()):
                response = await client.get_object(
                    Bucket=self.bucket, Key=self.object_name(key)
                )
            data = await self._read_body(response)
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            raise self._error(exc, "get", key) from exc
        if (await _sha256(data)).hex() != key:
            raise StorageError(
                f"S3 object {self.object_name(key)!r} in bucket {self.bucket!r} is corrupt: "
                "its bytes do not hash to its key"
            )
        return data

    async def get_range(self, key: str, start: int, length: int) -> bytes:
        """`length` bytes from offset `start` (fewer at the end, b"" past it), by an HTTP
        Range request; `NotFound` if absent."""
        if start < 0 or length < 0:
            raise ValueError(f"invalid range start={start} length={length}")
        if not _KEY_RE.match(key):
            raise NotFound(f"no blob {key!r}")
        if length == 0:
            if not await self.exists(key):
                raise NotFound(f"no blob {key}")
            return b""
        client = await self._s3()
        try:
            async with asyncio.timeout(self._deadline()):
                response = await client.get_object(
                    Bucket=self.bucket,
                    Key=self.object_name(key),
                    Range=f"bytes={start}-{start + length - 1}",
                )
            data = await self._read_body(response)
        except ClientError as exc:
            code = str((exc.response.get("Error") or {}).get("Code") or "")
            if code == "InvalidRange":  # 416: the object exists and `start` is past its end
                return b""
            raise self._error(exc, "get", key) from exc
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, "get", key) from exc
        if not response.get("ContentRange"):  # a server that ignored Range sent it all
            return data[start : start + length]
        return data[:length]

    async def exists(self, key: str) -> bool:
        if not _KEY_RE.match(key):
            return False
        client = await self._s3()
        try:
            async with asyncio.timeout(self._deadline()):
                await client.head_object(Bucket=self.bucket, Key=self.object_name(key))
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            error = self._error(exc, "head", key)
            if isinstance(error, NotFound):
                return False
            raise error from exc
        return True

    async def delete(self, key: str) -> None:
        """Remove the blob; an absent key is not an error (S3 answers 204 either way)."""
        if not _KEY_RE.match(key):
            return
        client = await self._s3()
        try:
            async with asyncio.timeout(self._deadline()):
                await client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            error = self._error(exc, "delete", key)
            if isinstance(error, NotFound):
                return
            raise error from exc

    async def delete_if_stale(self, key: str, cutoff: _dt.datetime) -> bool:
        """Delete the blob only if it was last written before `cutoff`; True if deleted.

        HEAD tells the last write (LastModified, whole seconds: read as the end of its
        second, so a doubt keeps the blob).  In a bucket with versioning on, the DELETE
        names the version HEAD saw, so a `put` that renewed the blob in between made a
        newer version that survives: exact.  Without versioning, S3 has no delete that is
        conditional on the write time (`x-amz-if-match-last-modified-time` is for
        directory buckets only, and a re-put keeps the ETag), so a `put` landing in the
        milliseconds between this HEAD and this DELETE loses its object."""
        if not _KEY_RE.match(key):
            return False
        client = await self._s3()
        name = self.object_name(key)
        try:
            async with asyncio.timeout(self._deadline()):
                head = await client.head_object(Bucket=self.bucket, Key=name)
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            error = self._error(exc, "head", key)
            if isinstance(error, NotFound):
                return False
            raise error from exc
        modified: _dt.datetime = head["LastModified"]
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=_dt.timezone.utc)
        if modified.microsecond == 0:
            modified += _dt.timedelta(seconds=1)
        if modified >= cutoff:
            return False
        version = head.get("VersionId")
        extra = {"VersionId": version} if version and version != "null" else {}
        try:
            async with asyncio.timeout(self._deadline()):
                await client.delete_object(Bucket=self.bucket, Key=name, **extra)
        except (ClientError, *_TRANSPORT_ERRORS) as exc:
            error = self._error(exc, "delete", key)
            if isinstance(error, NotFound):
                return False
            raise error from exc
        return True

    async def _listing(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(key, listing entry) for every object directly under the prefix that is a key
        (Delimiter "/" keeps S3 from descending into other installations' prefixes)."""
        client = await self._s3()
        skip = len(self._name_prefix)
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self._name_prefix, Delimiter="/"
        ).__aiter__()
        try:
            while True:
                try:
                    async with asyncio.timeout(self._deadline()):  # one page of 1000
                        page = await pages.__anext__()
                except StopAsyncIteration:
                    return
                except (ClientError, *_TRANSPORT_ERRORS) as exc:
                    raise self._error(exc, "list", None) from exc
                for entry in page.get("Contents", ()):
                    key = entry["Key"][skip:]
                    if _KEY_RE.match(key):
                        yield key, entry
        finally:
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()

    async def keys(self) -> AsyncIterator[str]:
        """Every stored key (list_objects_v2 under the prefix)."""
        async for key, _entry in self._listing():
            yield key

    async def entries(self) -> AsyncIterator[BlobInfo]:
        """Every stored blob with its size and LastModified (timezone-aware, UTC)."""
        async for key, entry in self._listing():
            modified: _dt.datetime = entry["LastModified"]
            if modified.tzinfo is None:
                modified = modified.replace(tzinfo=_dt.timezone.utc)
            yield BlobInfo(key, int(entry["Size"]), modified.astimezone(_dt.timezone.utc))

    async def check(self) -> None:
        """The bucket exists and the credentials may use it (HEAD bucket); otherwise
        `StorageError` with a one-line reason naming the bucket, endpoint or setting."""
        client = await self._s3()
        try:
            async with asyncio.timeout(self._deadline()):
                await client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if status in (400, 403):
                # A HEAD answer has no body, so no error code: ask once more with a GET
                # to tell an unknown key from a bad secret from a policy refusal.
                try:
                    async with asyncio.timeout(self._deadline()):
                        await client.list_objects_v2(
                            Bucket=self.bucket, Prefix=self._name_prefix, MaxKeys=1
                        )
                except (ClientError, *_TRANSPORT_ERRORS) as detail:
                    raise self._error(detail, "check", None) from detail
            raise self._error(exc, "check", None) from exc
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, "check", None) from exc

    async def close(self) -> None:
        """Close the client and its connection pool.  Idempotent; later calls fail with
        `StorageError`."""
        async with self._lock:
            self._closed = True
            stack, self._stack = self._stack, None
            self._client = None
        if stack is not None:
            try:
                await stack.aclose()
            except (*_TRANSPORT_ERRORS, RuntimeError):
                pass  # closing a pool whose sockets are already gone

    def __repr__(self) -> str:
        prefix = f"/{self.prefix}" if self.prefix else ""
        return f"S3BlobStore('s3://{self.bucket}{prefix}', endpoint={self.endpoint!r})"
