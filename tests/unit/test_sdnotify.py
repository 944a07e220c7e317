"""Tests for pymail.net.sdnotify against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymail.net import sdnotify


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket at a file system path, exported as $NOTIFY_SOCKET."""
    short_dir = None
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) > 100:  # sun_path is 108 bytes
        short_dir = tempfile.TemporaryDirectory(prefix="sdn")
        path = Path(short_dir.name) / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()
    if short_dir is not None:
        short_dir.cleanup()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket in the abstract namespace, exported as @name."""
    name = f"pymail-test-{os.getpid()}-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def test_ready_stopping_status_on_path_socket(path_socket: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert path_socket.recv(4096) == b"READY=1"
    assert sdnotify.status("delivering: 3 queued") is True
    assert path_socket.recv(4096) == b"STATUS=delivering: 3 queued"
    assert sdnotify.stopping() is True
    assert path_socket.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket(abstract_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1\nSTATUS=up") is True
    assert abstract_socket.recv(4096) == b"READY=1\nSTATUS=up"


def test_status_is_one_line_and_utf8(path_socket: socket.socket) -> None:
    assert sdnotify.status("line one\nREADY=1\r\nthree — ünïcode")
    assert path_socket.recv(4096) == "STATUS=line one READY=1 three — ünïcode".encode()


def test_no_notify_socket_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.ready() is False


@pytest.mark.parametrize("address", [
    "/nonexistent/dir/notify.sock", "relative/notify.sock", "vsock:2:1234", "@", "/",
    "@pymail-nobody-listens-" + "x" * 200,
])
def test_unusable_addresses_are_false_never_raise(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.ready() is False
    assert sdnotify.status("x") is False


def test_path_that_is_not_a_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(regular))
    assert sdnotify.stopping() is False


def test_stream_socket_instead_of_datagram(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pymail-test-stream-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + name)
        listener.listen(1)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready() is False  # EPROTOTYPE, swallowed


def test_bad_arguments_never_raise(path_socket: socket.socket) -> None:
    assert sdnotify.notify(None) is False  # type: ignore[arg-type]
    assert sdnotify.notify("") is False
    assert sdnotify.notify("\udcff") is False  # not encodable
    assert sdnotify.status(12) is True  # str() of anything printable
    assert path_socket.recv(4096) == b"STATUS=12"


def test_failures_log_at_debug_only(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger=sdnotify.__name__)
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    assert sdnotify.ready() is False
    assert caplog.records and all(r.levelname == "DEBUG" for r in caplog.records)


# -- the watchdog: WATCHDOG_USEC / WATCHDOG_PID and the keep-alive task ----------------


def _other_pid() -> int:
    """A pid that is neither this process nor its parent."""
    return next(pid for pid in (1, 2, 3) if pid not in (os.getpid(), os.getppid()))


@pytest.mark.parametrize("usec, pid, expected", [
    ("60000000", "own", 30.0),        # WatchdogSec=60s: every 30 s, named by pid (workers = 1)
    ("60000000", "parent", 30.0),     # a prefork worker: systemd named its parent, the main pid
    ("60000000", None, 30.0),         # no WATCHDOG_PID: any process may answer
    ("1000000", "own", 0.5),
    ("60000000", "other", None),      # the watchdog is another process's
    ("60000000", "12ab", None),       # garbage pid
    ("60000000", "-1", None),
    ("0", "own", None),               # no watchdog
    ("-5", "own", None),
    ("sixty", "own", None),           # garbage timeout
    ("", "own", None),
    (None, "own", None),
])
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    for name, value in (("WATCHDOG_USEC", usec),
                        ("WATCHDOG_PID", {"own": str(os.getpid()), "parent": str(os.getppid()),
                                          "other": str(_other_pid())}.get(pid or "", pid))):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert sdnotify.watchdog_interval() == expected


def test_watchdog_interval_in_a_child_named_by_its_parent() -> None:
    """A real child process (as a prefork worker is) accepts WATCHDOG_PID = its parent's
    pid, and refuses a pid that is neither its own nor its parent's."""
    code = "from pymail.net import sdnotify; print(sdnotify.watchdog_interval())"
    for pid, expected in ((os.getpid(), "2.0"), (_other_pid(), "None")):
        env = dict(os.environ, WATCHDOG_USEC="4000000", WATCHDOG_PID=str(pid))
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.stdout.strip() == expected, proc.stderr


def test_keep_alive_sends_watchdog_on_schedule_until_cancelled(path_socket: socket.socket,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """WATCHDOG_USEC=100000 (0.1 s): WATCHDOG=1 at once, then every 0.05 s of the loop's
    clock, each datagram timestamped as it arrives; nothing after the task is cancelled."""
    monkeypatch.setenv("WATCHDOG_USEC", "100000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    interval = sdnotify.watchdog_interval()
    assert interval == 0.05
    path_socket.setblocking(False)
    arrivals: list[tuple[float, bytes]] = []

    async def run() -> float:
        loop = asyncio.get_running_loop()
        loop.add_reader(path_socket.fileno(),
                        lambda: arrivals.append((loop.time(), path_socket.recv(4096))))
        started = loop.time()
        task = asyncio.ensure_future(sdnotify.keep_alive(interval))
        await asyncio.sleep(0.6)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)  # anything sent after the cancel would arrive by now
        loop.remove_reader(path_socket.fileno())
        return started

    started = asyncio.run(run())
    assert {data for _, data in arrivals} == {b"WATCHDOG=1"}
    times = [t - started for t, _ in arrivals]
    assert times[0] < 0.04, times  # the first at once
    assert 8 <= len(times) <= 13, times  # 0.6 s / 0.05 s: about 12
    assert times[-1] < 0.62, times  # none after the cancel
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert 0.03 < sum(gaps) / len(gaps) < 0.08, gaps


def test_keep_alive_skips_the_sends_a_held_loop_missed(path_socket: socket.socket) -> None:
    """A loop held by blocking code sends no keep-alive meanwhile (that is the point),
    and afterwards one at once and then on the interval again, not a burst."""
    path_socket.setblocking(False)
    arrivals: list[float] = []

    async def run() -> float:
        loop = asyncio.get_running_loop()
        loop.add_reader(path_socket.fileno(),
                        lambda: (path_socket.recv(4096), arrivals.append(loop.time())))
        task = asyncio.ensure_future(sdnotify.keep_alive(0.05))
        await asyncio.sleep(0.01)
        held = loop.time()
        time.sleep(0.3)  # the loop is held: six sends are due meanwhile
        await asyncio.sleep(0.12)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        loop.remove_reader(path_socket.fileno())
        return held

    held = asyncio.run(run())
    after = [t - held for t in arrivals if t > held]
    # after the hold (0.3 s): one at once, then 0.05 s apart -- about 3 in 0.12 s, not 6 more
    assert 2 <= len(after) <= 4, after
    assert after[0] >= 0.3
