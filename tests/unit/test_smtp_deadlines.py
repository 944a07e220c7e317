"""pymail.net.smtp_deadlines on a real event loop with short limits (tenths of a second):
which limit passes first, and what does not move it."""

from __future__ import annotations

import asyncio
import time

from pymail.net.smtp_deadlines import ClientDeadlines


async def _run(scenario, *, idle: float = 0.6, command: float = 0.3, rate: float = 1000.0,
               login: float | None = None, wait: float = 1.5) -> tuple[list[tuple[str, float]], ClientDeadlines]:
    """Run `scenario(deadlines)`; the (limit, seconds after start) that expired, if any."""
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    fired: list[tuple[str, float]] = []
    done = asyncio.Event()

    def expired(limit: str, _seconds: float) -> None:
        fired.append((limit, time.monotonic() - began))
        done.set()

    deadlines = ClientDeadlines(loop, expired, idle=idle, command=command, min_data_rate=rate, login=login)
    task = asyncio.ensure_future(scenario(deadlines))
    try:
        await asyncio.wait_for(done.wait(), wait)
    except asyncio.TimeoutError:
        pass
    task.cancel()
    deadlines.cancel()
    return fired, deadlines


def run(scenario, **kwargs):
    return asyncio.run(_run(scenario, **kwargs))[0]


async def _nothing(_d: ClientDeadlines) -> None:
    await asyncio.sleep(10)


def test_silence_is_the_idle_limit() -> None:
    [(limit, at)] = run(_nothing)
    assert limit == "idle" and 0.55 < at < 1.5


def test_a_trickled_line_is_cut_at_its_first_octets_deadline() -> None:
    async def trickle(d: ClientDeadlines) -> None:
        for octet in b"EHLO slowly.example":
            d.received(bytes([octet]))
            await asyncio.sleep(0.05)

    [(limit, at)] = run(trickle)
    assert limit == "command" and 0.28 < at


def test_complete_lines_keep_the_connection() -> None:
    async def prompt(d: ClientDeadlines) -> None:
        for _ in range(20):
            d.received(b"NOOP\r\n")
            d.replied()
            await asyncio.sleep(0.1)
        await asyncio.sleep(10)

    [(limit, at)] = run(prompt, wait=4)
    assert limit == "idle" and at > 2.0  # only once the client went quiet


def test_a_line_split_over_packets_counts_from_its_first_part() -> None:
    async def split(d: ClientDeadlines) -> None:
        d.received(b"NOOP\r\nMAIL FR")  # one line done, the next begun
        await asyncio.sleep(0.2)
        d.received(b"OM:<a@b.example>")
        await asyncio.sleep(10)

    [(limit, at)] = run(split)
    assert limit == "command" and at < 0.55


def test_content_needs_the_minimum_rate_after_grace() -> None:
    async def slow(d: ClientDeadlines) -> None:
        d.start_content()
        while True:  # 100 octets/s against 1000 octets/s asked
            d.received(b"x")
            await asyncio.sleep(0.01)

    [(limit, at)] = run(slow)
    assert limit == "data" and 0.3 < at  # grace 0.3 s + what 100 octets/s earned


def test_content_at_rate_is_not_cut_until_it_goes_silent() -> None:
    async def fast(d: ClientDeadlines) -> None:
        d.start_content()
        for _ in range(50):  # 2000 octets/s for 1 s
            d.received(b"y" * 100)
            await asyncio.sleep(0.05)
        await asyncio.sleep(10)

    [(limit, at)] = run(fast, wait=4)
    assert limit == "idle" and at > 1.5


def test_no_limit_runs_while_the_server_is_busy() -> None:
    async def busy(d: ClientDeadlines) -> None:
        d.received(b"DAT")  # a line begun, then the server works for longer than any limit
        with d.server_busy():
            await asyncio.sleep(1.0)
        await asyncio.sleep(10)

    [(limit, at)] = run(busy, wait=3)
    assert limit == "command" and at > 1.25  # its clock started again after the work


def test_login_deadline_counts_from_connect_and_ends_with_login() -> None:
    async def chatty(d: ClientDeadlines) -> None:
        while True:
            d.received(b"NOOP\r\n")
            d.replied()
            await asyncio.sleep(0.05)

    [(limit, at)] = run(chatty, login=0.4)
    assert limit == "login" and 0.38 < at

    async def logs_in(d: ClientDeadlines) -> None:
        await asyncio.sleep(0.2)
        d.logged_in()
        await chatty(d)

    assert run(logs_in, login=0.4, wait=1.2) == []


def test_cancel_stops_everything() -> None:
    async def cancelled(d: ClientDeadlines) -> None:
        d.cancel()
        await asyncio.sleep(10)

    assert run(cancelled, wait=1.0) == []
