"""A remote MX that records when each delivery happened: aiosmtpd on 127.0.0.N:25.

For the queue tests that must see *time*: which client (by its EHLO name) delivered which
(Message-ID, recipient), and the window of that delivery -- from the RCPT that named the
recipient to the end of the transaction's DATA (the 250 goes out right after).  Two
windows of one (Message-ID, recipient) that overlap are two nodes delivering one
recipient at the same time.  ``data_delay`` holds each DATA for that many seconds before
the 250, so transactions last long enough to overlap when a queue lets them.

Publish it with ``internet.set_zone("d0.test", "@ MX 10 mx\\nmx A 127.0.0.5")``; it
accepts every recipient of every domain."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass

from aiosmtpd.controller import Controller

from tests.services.scripted_mx import start_controller

__all__ = ["Delivery", "RecordingMx", "overlapping"]

_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:[ \t]*<([^>\r\n]*)>")


@dataclass(frozen=True)
class Delivery:
    """One recipient of one accepted transaction."""

    message_id: str | None
    recipient: str
    helo: str  #: the client's EHLO name (which pymail node)
    started: float  #: time.monotonic() at its RCPT
    ended: float  #: time.monotonic() when DATA was complete (before the 250)


def overlapping(deliveries: list[Delivery]) -> list[tuple[Delivery, Delivery]]:
    """Pairs of deliveries of one (Message-ID, recipient) whose windows overlap."""
    by_key: dict[tuple[str | None, str], list[Delivery]] = {}
    for d in deliveries:
        by_key.setdefault((d.message_id, d.recipient.lower()), []).append(d)
    pairs = []
    for group in by_key.values():
        group.sort(key=lambda d: d.started)
        pairs += [(a, b) for a, b in zip(group, group[1:]) if b.started < a.ended]
    return pairs


class _Handler:
    def __init__(self, mx: "RecordingMx") -> None:
        self.mx = mx

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        envelope.rcpt_tos.append(address)
        started = getattr(envelope, "rcpt_started", None)
        if started is None:
            envelope.rcpt_started = started = {}
        started[address] = time.monotonic()
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        if self.mx.data_delay:
            await asyncio.sleep(self.mx.data_delay)
        ended = time.monotonic()
        match = _MESSAGE_ID.search(bytes(envelope.content).split(b"\r\n\r\n", 1)[0])
        mid = match.group(1).decode(errors="replace") if match else None
        started = getattr(envelope, "rcpt_started", {})
        with self.mx.lock:
            self.mx.deliveries += [Delivery(mid, r, session.host_name or "", started.get(r, ended), ended)
                                   for r in envelope.rcpt_tos]
        return "250 2.0.0 Ok"


class RecordingMx:
    """See the module docstring."""

    def __init__(self, address: str = "127.0.0.5", *, hostname: str = "mx.recording.test",
                 port: int = 25, data_delay: float = 0.0) -> None:
        self.address, self.hostname, self.port = address, hostname, port
        self.data_delay = data_delay
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self._controller: Controller | None = None

    def start(self) -> "RecordingMx":
        self._controller = start_controller(_Handler(self), self.address, self.port,
                                            self.hostname, "RecordingMx")
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def recorded(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def wait_for(self, count: int, timeout: float = 60.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.recorded()
            if len(found) >= count:
                return found
            time.sleep(0.05)
        return self.recorded()

    def __enter__(self) -> "RecordingMx":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
