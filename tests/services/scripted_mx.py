"""A scriptable remote MX for the outbound fault tests: aiosmtpd on 127.0.0.N:25.

Postfix (tests/services/postfix.py) is the real remote for the normal cases and its own
refusals; the faults Postfix cannot be told to make on cue -- greylisting (4xx once,
then 250), a 4xx or 5xx at a chosen recipient, a 5xx after DATA -- come from this
server.  Publish it with ``internet.set_zone("faulty.test", "@ MX 10 mx\\nmx A 127.0.0.4")``.

Scripts: `rcpt` maps a recipient address (lower case) to the replies its RCPT gets, one
per attempt in order, the last one repeated; an address without a script gets 250.
`data` is the same for the reply after DATA (for the whole transaction).  Replies are
full reply lines as aiosmtpd sends them, e.g. ``"450 4.2.0 Greylisted, try again"``.
Everything the server accepted is in `received`; every RCPT it saw (accepted or not)
in `rcpts`.  The scripts may be changed while it runs (under the same lock)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP

__all__ = ["Received", "ScriptedMx"]


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes


class _Handler:
    def __init__(self, mx: "ScriptedMx") -> None:
        self.mx = mx

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: ANN001
        reply = self.mx._next(self.mx.rcpt, address.lower())
        with self.mx.lock:
            self.mx.rcpts.append(address)
        if reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return reply

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        reply = self.mx._next(self.mx.data, "*")
        if reply.startswith("2"):
            with self.mx.lock:
                self.mx.received.append(Received(envelope.mail_from, tuple(envelope.rcpt_tos),
                                                 bytes(envelope.content)))
        return reply


def start_controller(handler, address: str, port: int, hostname: str, ident: str) -> Controller:
    """An aiosmtpd server for `handler` on (address, port), greeting as `hostname`, no
    AUTH; started (its thread runs until `stop`)."""

    class _Controller(Controller):
        def factory(self):  # noqa: ANN202 - our greeting name, no AUTH
            return AioSMTP(self.handler, hostname=hostname, ident=ident)

    controller = _Controller(handler, hostname=address, port=port, ready_timeout=10)
    controller.start()
    return controller


class ScriptedMx:
    """See the module docstring."""

    def __init__(self, address: str = "127.0.0.4", *, hostname: str = "mx.faulty.test",
                 port: int = 25) -> None:
        self.address, self.hostname, self.port = address, hostname, port
        self.lock = threading.Lock()
        self.rcpt: dict[str, list[str]] = {}
        self.data: dict[str, list[str]] = {}
        self.received: list[Received] = []
        self.rcpts: list[str] = []
        self._controller: Controller | None = None

    def _next(self, table: dict[str, list[str]], key: str) -> str:
        with self.lock:
            replies = table.get(key)
            if not replies:
                return "250 2.0.0 Ok" if table is self.data else "250 2.1.5 Ok"
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def script_rcpt(self, address: str, *replies: str) -> None:
        with self.lock:
            self.rcpt[address.lower()] = list(replies)

    def script_data(self, *replies: str) -> None:
        with self.lock:
            self.data["*"] = list(replies)

    def start(self) -> "ScriptedMx":
        self._controller = start_controller(_Handler(self), self.address, self.port,
                                            self.hostname, "ScriptedMx")
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def wait_for(self, count: int = 1, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.05)
        raise AssertionError(f"{self.hostname}: {len(self.received)} message(s), wanted {count}; "
                             f"RCPTs seen: {self.rcpts}")

    def __enter__(self) -> "ScriptedMx":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
