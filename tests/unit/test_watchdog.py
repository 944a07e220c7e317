"""pymail.net.watchdog on a real event loop (asyncio's and uvloop's) with a real watcher
thread: a callback or a task that holds the loop with time.sleep is reported once, with
its duration, its task and its own function in the stack; short holds are not; a stall
that goes on is reported while it goes on."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest
import uvloop

from pymail.net.watchdog import LoopWatchdog, format_stack

RUNNERS = {"asyncio": asyncio.run, "uvloop": uvloop.run}
LINE = re.compile(r"event loop stalled (?P<seconds>\d+\.\d+)s(?P<ongoing> so far, still running)? "
                  r"\(loop_watchdog 0\.100s\) (?P<where>.*?); stack: (?P<stack>.*)$")


def warnings(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    found = []
    for record in caplog.records:
        if record.name == "pymail.watchdog" and record.levelno == logging.WARNING:
            match = LINE.match(record.getMessage())
            assert match, record.getMessage()
            found.append(match)
    return found


def hold_the_loop_in_a_command(seconds: float) -> None:
    time.sleep(seconds)  # what a CPU-bound or blocking command does to the loop


async def session(seconds: float) -> None:
    hold_the_loop_in_a_command(seconds)


@pytest.fixture(params=sorted(RUNNERS))
def run(request: pytest.FixtureRequest):
    return RUNNERS[request.param]


def test_a_task_holding_the_loop_is_reported_once_with_its_stack(run, caplog) -> None:
    caplog.set_level(logging.INFO, "pymail.watchdog")

    async def main() -> int:
        watchdog = LoopWatchdog(0.1)
        watchdog.start()
        await asyncio.sleep(0.3)  # a quiet loop: nothing to report
        assert warnings(caplog) == []
        await asyncio.create_task(session(0.5), name="imap-session-7")
        await asyncio.sleep(0.3)  # the heartbeat runs again, and reports
        watchdog.stop()
        return watchdog.stalls

    assert run(main()) == 1
    [stall] = warnings(caplog)
    assert 0.4 <= float(stall["seconds"]) < 5, stall[0]  # measured, not the threshold
    assert not stall["ongoing"]
    assert stall["where"] == "in task 'imap-session-7' (session)"
    here = "tests/unit/test_watchdog.py"
    assert stall["stack"].endswith(
        f"{here}:{session.__code__.co_firstlineno + 1} session > "
        f"{here}:{hold_the_loop_in_a_command.__code__.co_firstlineno + 1} hold_the_loop_in_a_command"
    ), stall["stack"]


def test_a_plain_callback_is_reported_too(run, caplog) -> None:
    caplog.set_level(logging.INFO, "pymail.watchdog")

    async def main() -> None:
        watchdog = LoopWatchdog(0.1)
        watchdog.start()
        asyncio.get_running_loop().call_soon(hold_the_loop_in_a_command, 0.4)
        await asyncio.sleep(0.6)
        watchdog.stop()

    run(main())
    [stall] = warnings(caplog)
    assert stall["where"] == "in a callback (no task)"
    assert "hold_the_loop_in_a_command" in stall["stack"]


def test_short_holds_are_not_reported(run, caplog) -> None:
    caplog.set_level(logging.INFO, "pymail.watchdog")

    async def main() -> None:
        watchdog = LoopWatchdog(0.1)
        watchdog.start()
        for _ in range(20):  # 20 x 10 ms: busy, but never held for long
            time.sleep(0.01)
            await asyncio.sleep(0)
        await asyncio.sleep(0.2)
        watchdog.stop()

    run(main())
    assert warnings(caplog) == []


def test_a_stall_that_goes_on_is_reported_while_it_lasts(run, caplog) -> None:
    caplog.set_level(logging.INFO, "pymail.watchdog")
    seen_during: list[int] = []

    async def main() -> None:
        watchdog = LoopWatchdog(0.1, ongoing_report=0.5)
        watchdog.start()
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()

        def long_hold() -> None:
            time.sleep(1.2)
            seen_during.append(len(warnings(caplog)))  # the warning came before the end

        loop.call_soon(long_hold)
        await asyncio.sleep(0.5)
        watchdog.stop()

    run(main())
    [stall] = warnings(caplog)
    assert seen_during == [1]
    assert stall["ongoing"] and 0.5 <= float(stall["seconds"]) < 1.2, stall[0]
    ended = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(ended) == 1 and re.fullmatch(r"event loop ran again after 1\.\d+s", ended[0]), ended


def test_off_is_not_a_watchdog() -> None:
    with pytest.raises(ValueError):
        LoopWatchdog(0)


def test_format_stack_is_one_line_outermost_first() -> None:
    def inner():
        import sys

        return format_stack(sys._getframe(), limit=2)

    def outer():
        return inner()

    text = outer()
    assert "\n" not in text
    assert text.startswith("... > tests/unit/test_watchdog.py:")
    assert text.endswith(" test_format_stack_is_one_line_outermost_first.<locals>.outer > "
                         f"tests/unit/test_watchdog.py:{inner.__code__.co_firstlineno + 3} "
                         "test_format_stack_is_one_line_outermost_first.<locals>.inner")


def test_a_hold_in_the_loops_own_code_says_so(caplog) -> None:
    """uvloop runs its I/O and TLS in C below `Runner.run`: a hold there (here, a C
    callback, time.sleep itself) names no Python callback, and says where it was."""
    caplog.set_level(logging.INFO, "pymail.watchdog")

    async def main() -> None:
        watchdog = LoopWatchdog(0.1)
        watchdog.start()
        asyncio.get_running_loop().call_soon(time.sleep, 0.4)
        await asyncio.sleep(0.6)
        watchdog.stop()

    uvloop.run(main())
    [stall] = warnings(caplog)
    assert stall["where"].startswith("in the event loop's own code"), stall[0]
    assert stall["stack"].endswith(" Runner.run"), stall["stack"]
