"""pymail.checks.clamav.ClamdClient against a real clamd (tests/services/clamd.py).

What must hold (the module docstring of pymail.checks.clamav): clean -> OK, EICAR plain
or as a base64 MIME attachment -> FOUND with its name; a spooled message streams from its
file; over the scan limit -> skipped without asking clamd; clamd stopped, frozen
(SIGSTOP), over its own StreamMaxLength or answering nonsense -> ScannerError, within
about the timeout; and the same client works again once clamd is back.  Every test runs
over the unix socket and over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import time
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import pytest

from pymail.checks.clamav import ClamdClient
from pymail.checks.results import ScannerError, VirusVerdict
from pymail.delivery.spool import MessageContent
from tests.services.clamd import (
    EICAR_NAME,
    ClamdService,
    eicar_bytes,
    eicar_mime_message,
    start_clamd_service,
)

T = TypeVar("T")

CLEAN = (b"From: <alice@example.test>\r\nTo: <bob@example.test>\r\nSubject: lunch\r\n"
         b"Message-ID: <clean@example.test>\r\n\r\nNoon at the usual place?\r\n")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def in_memory(data: bytes) -> MessageContent:
    return MessageContent(size=len(data), key=hashlib.sha256(data).hexdigest(), data=data)


def spooled(path: Path, data: bytes) -> MessageContent:
    path.write_bytes(data)
    return MessageContent(size=len(data), key=hashlib.sha256(data).hexdigest(), path=path)


@pytest.fixture(params=["unix", "tcp"])
def address(request: pytest.FixtureRequest, clamd_service: ClamdService) -> str:
    return clamd_service.socket_path if request.param == "unix" else clamd_service.tcp_address


def test_clean_message_is_ok(address: str) -> None:
    client = ClamdClient(address)
    run(client.ping())
    assert run(client.scan(in_memory(CLEAN))) == VirusVerdict(infected=False)


def test_eicar_plain_is_found_with_its_name(address: str) -> None:
    verdict = run(ClamdClient(address).scan(in_memory(eicar_bytes())))
    assert verdict.infected and verdict.name == EICAR_NAME and not verdict.skipped


def test_eicar_as_base64_attachment_is_found(address: str) -> None:
    message = eicar_mime_message()
    assert eicar_bytes() not in message  # only its base64 form is in the message
    verdict = run(ClamdClient(address).scan(in_memory(message)))
    assert verdict.infected and verdict.name == EICAR_NAME


def test_spooled_message_of_a_few_megabytes_streams_from_its_file(address: str, tmp_path: Path) -> None:
    body = b"".join(b"line %07d of a long and harmless report\r\n" % i for i in range(100_000))
    clean = spooled(tmp_path / "clean.eml", CLEAN + body)
    assert clean.size > 4_000_000
    # small chunks: many INSTREAM chunks per read block
    client = ClamdClient(address, chunk=8192)
    assert run(client.scan(clean)) == VirusVerdict(infected=False)
    # EICAR at the very end of a spooled file: the last block is sent too
    infected = spooled(tmp_path / "infected.eml", CLEAN + body + eicar_mime_message())
    verdict = run(client.scan(infected))
    assert verdict.infected and verdict.name == EICAR_NAME


def test_over_max_size_is_skipped_without_asking_clamd(tmp_path: Path) -> None:
    nowhere = ClamdClient(str(tmp_path / "no-clamd-here.sock"), max_size=1000)
    verdict = run(nowhere.scan(in_memory(eicar_bytes() + b"x" * 1000)))
    assert verdict == VirusVerdict(infected=False, skipped=True)
    # the same size, spooled: the file is not even opened
    missing = MessageContent(size=5000, key="", path=tmp_path / "not-there.eml")
    assert run(nowhere.scan(missing)).skipped
    # at the limit exactly it is scanned (and this clamd is not there)
    with pytest.raises(ScannerError, match="cannot connect"):
        run(nowhere.scan(in_memory(b"x" * 1000)))


def test_clamd_stopped_is_an_error_then_it_recovers(address: str, clamd_service: ClamdService) -> None:
    client = ClamdClient(address, timeout=5)
    clamd_service.stop()
    try:
        started = time.monotonic()
        with pytest.raises(ScannerError, match="cannot connect to clamd"):
            run(client.scan(in_memory(CLEAN)))
        with pytest.raises(ScannerError):
            run(client.ping())
        assert time.monotonic() - started < 1.0  # refused at once, not a timeout
    finally:
        clamd_service.start()
    assert run(client.scan(in_memory(eicar_bytes()))).infected


@pytest.mark.parametrize("size", [len(CLEAN), 8_000_000])
def test_clamd_frozen_is_an_error_within_the_timeout(address: str, clamd_service: ClamdService,
                                                     size: int) -> None:
    """SIGSTOP: the kernel still accepts the connection; a small message fits in the socket
    buffers and waits for a reply, a large one waits for the buffers to drain."""
    message = in_memory(CLEAN + b"x" * (size - len(CLEAN)))
    client = ClamdClient(address, timeout=1.0)
    clamd_service.pause()
    try:
        started = time.monotonic()
        with pytest.raises(ScannerError, match="did not answer within 1 s"):
            run(client.scan(message))
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 2.5, elapsed
    finally:
        clamd_service.resume()
    assert run(client.scan(in_memory(CLEAN))) == VirusVerdict(infected=False)


def test_over_clamds_own_stream_limit_is_an_error_with_its_reason(tmp_path: Path) -> None:
    """A client whose max_size is above clamd's StreamMaxLength (a misconfiguration): clamd
    refuses mid-stream and the reason reaches the error, not just EPIPE."""
    service = start_clamd_service(stream_max_length=1024 * 1024)
    try:
        message = spooled(tmp_path / "big.eml", CLEAN + b"x" * 3_000_000)
        for address in (service.socket_path, service.tcp_address):
            client = ClamdClient(address, max_size=10_000_000)
            with pytest.raises(ScannerError) as caught:
                run(client.scan(message))
            reason = str(caught.value)
            assert "size limit exceeded" in reason or "closed the connection" in reason, reason
            assert "\n" not in str(caught.value)
            assert run(client.scan(in_memory(CLEAN))) == VirusVerdict(infected=False)
    finally:
        service.close()


def test_many_scans_at_once(address: str) -> None:
    """More scans at once than clamd takes connections (a flood over its unix socket
    gets connections reset): the client's max_connections keeps them in line."""
    client = ClamdClient(address)
    count = 400

    async def scan_all() -> list[VirusVerdict]:
        messages = [in_memory(eicar_bytes() if i % 3 == 0 else CLEAN + b"%d" % i) for i in range(count)]
        return await asyncio.gather(*(client.scan(m) for m in messages))

    verdicts = run(scan_all())
    assert [v.infected for v in verdicts] == [i % 3 == 0 for i in range(count)]


# -- a peer that is not a working clamd (what a real clamd never does on cue) ------------------


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def against(behaviour: Behaviour, call: Callable[[ClamdClient], Awaitable[T]], *,
                  timeout: float = 2.0) -> T:
    handlers: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await behaviour(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await call(ClamdClient(f"127.0.0.1:{port}", timeout=timeout))
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()


def answering(reply: bytes, *, stream: bool = True) -> Behaviour:
    async def behaviour(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\0")  # the command
        if stream:
            while True:  # the chunks, up to the zero-length one
                length = int.from_bytes(await reader.readexactly(4), "big")
                if not length:
                    break
                await reader.readexactly(length)
        writer.write(reply)
        await writer.drain()
    return behaviour


@pytest.mark.parametrize("reply, reason", [
    (b"stream: Can't allocate memory ERROR\0", "Can't allocate memory ERROR"),
    (b"stream: FOUND\0", "nonsense"),
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", "closed the connection mid-reply"),
    (b"", "without a reply"),
    (b"\x00", "nonsense"),
    (b"A" * 10_000, "nonsense"),
])
def test_garbage_is_a_scanner_error(reply: bytes, reason: str) -> None:
    with pytest.raises(ScannerError, match=reason) as caught:
        run(against(answering(reply), lambda c: c.scan(in_memory(CLEAN))))
    assert "\n" not in str(caught.value)


def test_ping_wants_pong() -> None:
    run(against(answering(b"PONG\0", stream=False), lambda c: c.ping()))
    with pytest.raises(ScannerError, match="answered PING with 'stream: OK'"):
        run(against(answering(b"stream: OK\0", stream=False), lambda c: c.ping()))


def test_reset_mid_stream_is_a_scanner_error() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(100)
        writer.transport.abort()

    with pytest.raises(ScannerError, match="clamd at 127.0.0.1"):
        run(against(reset, lambda c: c.scan(in_memory(CLEAN + b"x" * 2_000_000))))


def test_an_early_ok_is_not_a_verdict() -> None:
    """A peer that says OK before it has seen the whole message has scanned nothing."""
    async def hasty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(100)
        writer.write(b"stream: OK\0")
        await writer.drain()
        while await reader.read(65536):
            pass

    with pytest.raises(ScannerError, match="before the end of the message"):
        run(against(hasty, lambda c: c.scan(in_memory(CLEAN + b"x" * 3_000_000))))


def test_silent_peer_times_out() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    started = time.monotonic()
    with pytest.raises(ScannerError, match="did not answer within 0.5 s"):
        run(against(silent, lambda c: c.ping(), timeout=0.5))
    assert time.monotonic() - started < 1.5


def test_unreadable_spool_file_is_a_scanner_error(tmp_path: Path, clamd_service: ClamdService) -> None:
    message = MessageContent(size=10, key="", path=tmp_path / "vanished.eml")
    with pytest.raises(ScannerError, match="cannot read the message"):
        run(ClamdClient(clamd_service.socket_path).scan(message))


def test_addresses() -> None:
    unix = ClamdClient("/run/clamav/clamd.ctl")
    assert (unix.socket_path, unix.host) == ("/run/clamav/clamd.ctl", None)
    v4 = ClamdClient("127.0.0.1:3310")
    assert (v4.host, v4.port, v4.socket_path) == ("127.0.0.1", 3310, None)
    v6 = ClamdClient("[::1]:3310")
    assert (v6.host, v6.port) == ("::1", 3310)
    assert ClamdClient("clamd.internal:3310").host == "clamd.internal"
    for bad in ("clamd", "127.0.0.1", "::1:3310", "[::1:3310", "host:0", "host:65536", "host:x",
                ":3310", "relative/path.sock"):
        with pytest.raises(ValueError):
            ClamdClient(bad)


def test_no_files_left_open(address: str, tmp_path: Path) -> None:
    """Every spool file the client opened is closed again, after a good scan and after one
    cut short by a reset or a timeout (this process's fds on the file, after)."""
    message = spooled(tmp_path / "m.eml", CLEAN + b"y" * 3_000_000)

    def open_on_message() -> int:
        fds = Path("/proc/self/fd")
        count = 0
        for fd in os.listdir(fds):
            with contextlib.suppress(OSError):
                count += os.readlink(fds / fd) == str(message.path)
        return count

    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(100)
        writer.transport.abort()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def scans() -> int:
        client = ClamdClient(address)
        for _ in range(5):
            assert not (await client.scan(message)).infected
        for behaviour in (reset, reset, silent):
            with pytest.raises(ScannerError):
                await against(behaviour, lambda c: c.scan(message), timeout=0.5)
        await asyncio.sleep(0.3)  # the closes run in the executor
        return open_on_message()

    # a file object dropped unclosed is closed by the garbage collector, with a
    # ResourceWarning: that counts as a leak here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert run(scans()) == 0
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning) and "m.eml" in str(w.message)]
    assert not leaks
