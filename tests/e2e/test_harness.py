"""The test harness itself (tests/pymail_harness.py) against real processes: a start that
fails after the MX already greeted is reported as the exit it is, with the log; every
server it starts runs the event-loop watchdog, and `stalls()` reads what it logged."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pymail.net.watchdog import LoopWatchdog
from tests.pymail_harness import PymailServer, ServerExited, free_port, wait_for_port


def test_wait_for_port_notices_that_the_process_exited() -> None:
    """Before, the wait went on for its whole timeout and then blamed the port."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    started = time.monotonic()
    with pytest.raises(ServerExited, match="pymail exited with 0:\nthe log"):
        wait_for_port(free_port(), timeout=30, proc=proc, log=lambda: "the log")
    assert time.monotonic() - started < 10


def test_a_start_that_fails_after_the_mx_greeted_says_it_exited(tmp_path: Path) -> None:
    """The IMAPS port is taken (bound, not listening): pymail binds the MX, then cannot
    bind IMAPS and exits 1.  The harness says so, whether or not it saw the MX greet."""
    for n in range(3):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            (tmp_path / str(n)).mkdir()
            srv = PymailServer(tmp_path / str(n))
            srv.imaps_port = taken.getsockname()[1]
            srv.config_path.write_text(srv.config_path.read_text().replace(
                "imaps = []", f'imaps = ["127.0.0.1:{srv.imaps_port}"]'))
            started = time.monotonic()
            with pytest.raises(RuntimeError, match="exited with 1") as raised:
                srv.start()
            assert time.monotonic() - started < 20
            assert f"cannot start: listen.imaps: cannot listen on ['127.0.0.1:{srv.imaps_port}']" in str(raised.value)
            srv.log_file.close()


def test_every_server_runs_the_watchdog_and_stalls_reads_it(tmp_path: Path) -> None:
    """A real stall of a real server: the whole process stopped (SIGSTOP) for 0.6 s, as
    a paused VM or a swap storm would; every client waited that long."""
    srv = PymailServer(tmp_path).start()
    try:
        assert "loop watchdog on: a warning names code that holds the event loop over 0.100s" in srv.log()
        mark = srv.log_mark()
        os.kill(srv.proc.pid, signal.SIGSTOP)
        time.sleep(0.6)
        os.kill(srv.proc.pid, signal.SIGCONT)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
            assert s.recv(512).startswith(b"220")
        deadline = time.monotonic() + 10
        while not (stalls := srv.stalls(mark, longer_than=0.5)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stalls, srv.log()
        assert all(s.pid == srv.proc.pid and not s.ongoing for s in stalls)
    finally:
        srv.stop()


def test_stalls_merges_a_stall_logged_while_it_went_on(tmp_path: Path) -> None:
    """The parser reads what the real watchdog writes, in pymail's log format: a stall
    reported while it lasted gets its final length from the "ran again" line."""
    srv = PymailServer(tmp_path)
    handler = logging.FileHandler(srv.log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"))
    watchdog_log = logging.getLogger("pymail.watchdog")
    watchdog_log.addHandler(handler)
    watchdog_log.setLevel(logging.INFO)

    def hold(seconds: float) -> None:
        time.sleep(seconds)

    async def main() -> None:
        watchdog = LoopWatchdog(0.1, ongoing_report=0.3)
        watchdog.start()
        await asyncio.sleep(0.1)
        hold(0.2)
        await asyncio.sleep(0.1)
        hold(0.7)
        await asyncio.sleep(0.1)
        watchdog.stop()

    try:
        asyncio.run(main())
    finally:
        watchdog_log.removeHandler(handler)
        handler.close()
    short, long = srv.stalls()
    assert 0.1 < short.seconds < 0.3 and not short.ongoing and short.stack.endswith("<locals>.hold")
    assert 0.6 < long.seconds < 1.5 and not long.ongoing and long.pid == os.getpid()
    assert "so far, still running" in long.line
    assert [s.seconds for s in srv.stalls(longer_than=0.5)] == [long.seconds]
