"""clamd's INSTREAM protocol over a unix socket or TCP, spoken directly (asyncio streams).

aioclamd speaks TCP only, and the protocol is small (OUTBOUND.md, "Wire protocols";
clamd(8), "COMMANDS"): the client sends ``zINSTREAM\\0`` (the ``z`` prefix: every
command and reply ends with a NUL), then the message as chunks of a 4-byte big-endian
length followed by that many octets, and four zero octets to end the stream.  clamd
answers one NUL-terminated line: ``stream: OK``, ``stream: <signature> FOUND`` or
``<reason> ERROR``.  ``zPING\\0`` is answered ``PONG``.

Invariants:

* A message larger than `ClamdClient.max_size` is never streamed: clamd would answer
  ``INSTREAM size limit exceeded`` past its ``StreamMaxLength`` and close, and there is
  no point in sending 25 MB to learn that.  `scan` returns
  ``VirusVerdict(infected=False, skipped=True)``; whether an unscanned message is
  tagged or refused is the caller's policy.  Keep `max_size` at or under clamd's
  ``StreamMaxLength``.
* Every other answer than OK or FOUND, and every failure to ask (connection refused,
  reset, a missing socket, a clamd that stops answering), raises
  `pymail.checks.results.ScannerError` with a one-line reason: an outage is never a
  clean verdict.
* The whole exchange (connect, stream, reply) is bounded by `ClamdClient.timeout`, so a
  frozen clamd (SIGSTOP, a full scanning queue) costs at most that long.
* The event loop never reads a file: a spooled message is read in blocks of
  `READ_BLOCK` octets in a worker thread, one block read ahead while the previous one
  is sent, so at most two blocks of a message are in memory whatever its size.
* The sender yields to the event loop after every chunk, so a large message in memory
  that the kernel takes as fast as it is written does not hold the loop for its length.
* At most `ClamdClient.max_connections` connections to clamd at once; a request waiting
  for a free one waits within its `timeout`.
* One connection per request: clamd serves each connection in a thread of its own
  (``MaxThreads``), and a fresh connection cannot be left in a half-spoken state.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pymail.checks.results import ScannerError, VirusVerdict

if TYPE_CHECKING:
    from pymail.delivery.spool import MessageContent

__all__ = ["ClamdClient", "DEFAULT_MAX_CONNECTIONS", "DEFAULT_MAX_SIZE", "READ_BLOCK"]

log = logging.getLogger("pymail.checks.clamav")

#: The scan limit by default: Debian's sample clamd.conf ``StreamMaxLength 25M``.
DEFAULT_MAX_SIZE = 25 * 1024 * 1024
#: Connections open to one clamd at once: clamd's own default ``MaxThreads 10``.  More
#: only wait in clamd's queue, and a flood is refused: 500 scans at once over clamd
#: 1.4.6's unix socket without this bound, 199 connections were reset.
DEFAULT_MAX_CONNECTIONS = 10
#: Octets a worker thread reads from a spool file at a time (then sent in `chunk`s).
READ_BLOCK = 1024 * 1024
#: The longest reply we accept (clamd's are one short line; a longer one is garbage).
MAX_REPLY = 4096

_END_OF_STREAM = b"\0\0\0\0"
_Speaker = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[str]]
_FOUND = " FOUND"
_STREAM = "stream: "


class ClamdClient:
    """Asks one clamd, at `address`, about messages (see the module docstring).

    `address` is a unix socket path (it starts with ``/``) or ``host:port``, an IPv6
    host in brackets (``[::1]:3310``).  `timeout` bounds each whole exchange in seconds;
    `max_size` is the scan limit in octets; `chunk` the octets per INSTREAM chunk;
    `max_connections` the connections open to clamd at once (more requests wait for
    one, inside their `timeout`).
    """

    def __init__(self, address: str, *, timeout: float = 30.0, max_size: int = DEFAULT_MAX_SIZE,
                 chunk: int = 64 * 1024, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
        if timeout <= 0:
            raise ValueError(f"clamd timeout must be positive, not {timeout!r}")
        if max_size < 0:
            raise ValueError(f"clamd max_size must not be negative, not {max_size!r}")
        if not 0 < chunk < 2**32:
            raise ValueError(f"clamd chunk size out of range: {chunk!r}")
        if max_connections < 1:
            raise ValueError(f"clamd max_connections must be at least 1, not {max_connections!r}")
        self.address = address
        #: the unix socket path, or None for TCP
        self.socket_path: str | None = None
        #: the TCP host and port (None, 0 for a unix socket)
        self.host: str | None = None
        self.port = 0
        if address.startswith("/"):
            self.socket_path = address
        else:
            self.host, self.port = _parse_host_port(address)
        self.timeout = timeout
        self.max_size = max_size
        self.chunk = chunk
        self.max_connections = max_connections
        #: the connection slots, made for the event loop that first uses them
        self._slots: asyncio.Semaphore | None = None
        self._slots_loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"ClamdClient({self.address!r}, timeout={self.timeout}, max_size={self.max_size})"

    # -- requests ------------------------------------------------------------------------

    async def ping(self) -> None:
        """``zPING`` -> ``PONG``; anything else, or no answer in time: `ScannerError`."""
        reply = await self._exchange(self._ping)
        if reply != "PONG":
            raise ScannerError(f"clamd at {self.address} answered PING with {_short(reply)}")

    async def scan(self, message: "MessageContent") -> VirusVerdict:
        """Stream `message` (its `data`, or its spool file `path`) with INSTREAM."""
        if message.size > self.max_size:
            log.debug("clamd: message of %d octets over the scan limit %d, not scanned",
                      message.size, self.max_size)
            return VirusVerdict(infected=False, skipped=True)
        if message.data is None and message.path is None:
            raise ValueError("MessageContent has neither data nor path")

        async def instream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
            return await self._instream(reader, writer, message)

        reply = await self._exchange(instream)
        return _verdict(reply, self.address)

    # -- the exchange ----------------------------------------------------------------------

    async def _exchange(self, speak: "_Speaker") -> str:
        """Connect, let `speak(reader, writer)` talk, return its reply; every failure
        and the `timeout` become `ScannerError`."""
        writer: asyncio.StreamWriter | None = None
        clean = False
        try:
            async with asyncio.timeout(self.timeout), self._connection_slot():
                reader, writer = await self._connect()
                reply: str = await speak(reader, writer)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                clean = True
                return reply
        except TimeoutError:
            raise ScannerError(f"clamd at {self.address} did not answer within "
                               f"{self.timeout:g} s") from None
        except ScannerError:
            raise
        except OSError as e:
            raise ScannerError(f"clamd at {self.address}: {_os_reason(e)}") from None
        finally:
            if writer is not None and not clean:
                writer.transport.abort()

    def _connection_slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None or self._slots_loop is not loop:
            self._slots, self._slots_loop = asyncio.Semaphore(self.max_connections), loop
        return self._slots

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            if self.socket_path is not None:
                return await asyncio.open_unix_connection(self.socket_path, limit=MAX_REPLY)
            return await asyncio.open_connection(self.host, self.port, limit=MAX_REPLY)
        except OSError as e:
            raise ScannerError(f"cannot connect to clamd at {self.address}: "
                               f"{_os_reason(e)}") from None

    async def _ping(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
        writer.write(b"zPING\0")
        await writer.drain()
        return await _read_reply(reader, self.address)

    async def _instream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        message: "MessageContent") -> str:
        # The reply is awaited while the message is sent: clamd answers early only to
        # refuse ("INSTREAM size limit exceeded. ERROR") and then closes, and a reply
        # already read survives the EPIPE or reset the next write gets.  An early reply
        # is never a verdict: clamd has not seen the whole message.
        reply = asyncio.ensure_future(_read_reply(reader, self.address))
        try:
            writer.write(b"zINSTREAM\0")
            try:
                async with contextlib.aclosing(_blocks(message)) as blocks:
                    async for block in blocks:
                        view = memoryview(block)
                        for start in range(0, len(view), self.chunk):
                            piece = view[start:start + self.chunk]
                            writer.write(struct.pack(">I", len(piece)))
                            writer.write(piece)
                            await writer.drain()
                            # drain() does not yield while the kernel takes every chunk
                            # (loopback): let other tasks, and the reply's reader, run
                            await asyncio.sleep(0)
                            if reply.done():
                                _early(await reply, self.address)
                if reply.done():
                    _early(await reply, self.address)
                writer.write(_END_OF_STREAM)
                await writer.drain()
            except OSError as e:
                if reply.done() and not reply.cancelled() and reply.exception() is None:
                    _early(reply.result(), self.address)
                raise ScannerError(f"clamd at {self.address} closed the connection while the "
                                   f"message was sent: {_os_reason(e)}") from None
            return await reply
        finally:
            if not reply.done():
                reply.cancel()
            elif not reply.cancelled():
                reply.exception()  # retrieved: the error that matters was raised above


# -- pure helpers -------------------------------------------------------------------------


def _parse_host_port(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError when it is neither."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"clamd address must be a /socket/path or host:port, not {address!r}")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"clamd address: unclosed [ in {address!r}")
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"clamd address: an IPv6 host needs brackets, [{host}]:{port_text}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"clamd address: port out of range in {address!r}")
    return host, port


def _verdict(reply: str, address: str) -> VirusVerdict:
    """clamd's INSTREAM reply -> a verdict; ERROR and anything unknown: `ScannerError`."""
    if reply == _STREAM + "OK":
        return VirusVerdict(infected=False)
    if reply.startswith(_STREAM) and reply.endswith(_FOUND):
        name = reply[len(_STREAM):-len(_FOUND)].strip()
        if name:
            return VirusVerdict(infected=True, name=name)
    if reply.endswith(" ERROR"):
        raise ScannerError(f"clamd at {address}: {_short(reply)}")
    raise ScannerError(f"clamd at {address} answered nonsense: {_short(reply)}")


def _early(reply: str, address: str) -> NoReturn:
    """A reply before the end of the stream: clamd's reason, or nonsense."""
    if reply.endswith(" ERROR"):
        raise ScannerError(f"clamd at {address}: {_short(reply)}")
    raise ScannerError(f"clamd at {address} answered before the end of the message: {_short(reply)}")


async def _read_reply(reader: asyncio.StreamReader, address: str) -> str:
    """One NUL-terminated reply (``z`` commands), decoded, without the NUL."""
    try:
        raw = await reader.readuntil(b"\0")
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ScannerError(f"clamd at {address} closed the connection mid-reply: "
                               f"{_short(e.partial.decode('utf-8', 'replace'))}") from None
        raise ScannerError(f"clamd at {address} closed the connection without a reply") from None
    except asyncio.LimitOverrunError:
        raise ScannerError(f"clamd at {address} answered nonsense: no NUL in "
                           f"{MAX_REPLY} octets") from None
    return raw[:-1].decode("utf-8", "replace").strip()


async def _blocks(message: "MessageContent") -> AsyncIterator[bytes | memoryview]:
    """The message's octets: its `data` as it is, or its file in `READ_BLOCK`s read in
    a worker thread, the next block read while the caller sends the previous one."""
    if message.data is not None:
        yield memoryview(message.data)
        return
    assert message.path is not None
    path = Path(message.path)
    try:
        file: io.BufferedReader = await asyncio.to_thread(open, path, "rb")
    except OSError as e:
        raise ScannerError(f"cannot read the message to scan ({path.name}): "
                           f"{_os_reason(e)}") from None
    pending: asyncio.Future[bytes] | None = None
    try:
        pending = asyncio.ensure_future(asyncio.to_thread(file.read, READ_BLOCK))
        while True:
            try:
                # shielded: a cancelled scan must not abandon a read still in its thread
                block = await asyncio.shield(pending)
            except OSError as e:
                raise ScannerError(f"cannot read the message to scan ({path.name}): "
                                   f"{_os_reason(e)}") from None
            if not block:
                return
            pending = asyncio.ensure_future(asyncio.to_thread(file.read, READ_BLOCK))
            yield block
    finally:
        _close_after(file, pending)


def _close_after(file: io.BufferedReader, pending: "asyncio.Future[bytes] | None") -> None:
    """Close `file` in a thread once the read in flight (if any) is over; never waits,
    so it is safe from a cancelled or timed-out task."""
    loop = asyncio.get_running_loop()

    def close(_: object = None) -> None:
        if pending is not None and not pending.cancelled():
            pending.exception()  # retrieved: a read error after the scan ended is not news
        loop.run_in_executor(None, file.close)

    if pending is None or pending.done():
        close()
    else:
        pending.add_done_callback(close)


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _short(text: str, limit: int = 200) -> str:
    """One line of at most `limit` characters, for an error message."""
    line = " ".join(text.split())
    return repr(line[:limit] + ("..." if len(line) > limit else ""))
