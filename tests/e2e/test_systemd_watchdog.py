"""systemd's watchdog (WatchdogSec=) against a real `pymail serve`: the test plays
systemd -- a bound AF_UNIX datagram socket as $NOTIFY_SOCKET, WATCHDOG_USEC=1 s and
WATCHDOG_PID set to the server's own pid as it is exec'd -- and reads what arrives,
with the sender's pid from SCM_CREDENTIALS (what systemd checks for NotifyAccess=).

With workers = 1 the keep-alive comes from the main process; with workers = 2 from the
first worker, a child of the main process (pymail.process).
"""

from __future__ import annotations

import shutil
import socket
import struct
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pymail_harness import PymailServer

CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@pytest.fixture
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket that reports each sender's pid, at a short path (sun_path)."""
    directory = Path(tempfile.mkdtemp(prefix="pymail-wd-", dir="/tmp"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.bind(str(directory / "notify"))
    yield sock, str(directory / "notify")
    sock.close()
    shutil.rmtree(directory)


def receive(sock: socket.socket, timeout: float) -> list[tuple[float, int, bytes]]:
    """Every datagram that arrives within `timeout` seconds: (arrival, sender pid, data)."""
    got = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(CREDENTIALS.size))
        except TimeoutError:
            break
        pid = next(CREDENTIALS.unpack(body[:CREDENTIALS.size])[0] for level, kind, body in ancillary
                   if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS)
        got.append((time.monotonic(), pid, data))
    return got


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


@pytest.mark.parametrize("workers", [1, 2])
def test_keep_alive_every_half_timeout_from_the_serving_loop(tmp_path: Path, workers: int,
                                                             notify_socket) -> None:
    sock, path = notify_socket
    srv = PymailServer(tmp_path, workers=workers, own_pid_env=("WATCHDOG_PID",),
                       env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    srv.start()
    try:
        assert srv.proc is not None
        got = receive(sock, 3.0)
        messages = [data for _, _, data in got]
        assert messages[0] == b"READY=1", messages
        keep_alives = [(t, pid) for t, pid, data in got if data == b"WATCHDOG=1"]
        assert set(messages[1:]) == {b"WATCHDOG=1"}, messages
        assert len(keep_alives) >= 3, messages  # every 0.5 s: about 6 in 3 s
        gaps = [b[0] - a[0] for a, b in zip(keep_alives, keep_alives[1:])]
        assert max(gaps) < 0.9, gaps  # well inside the 1 s timeout
        senders = {pid for _, pid in keep_alives}
        assert len(senders) == 1, senders  # one worker answers for the unit
        (sender,) = senders
        if workers == 1:
            assert sender == srv.proc.pid
        else:  # the first worker, a child of the main pid systemd named
            assert sender != srv.proc.pid and parent_of(sender) == srv.proc.pid
        assert "systemd watchdog on: WATCHDOG=1 every 0.5s" in srv.log()
    finally:
        assert srv.stop() == 0
    after = [data for _, _, data in receive(sock, 0.5)]
    assert after.count(b"STOPPING=1") == workers, after  # each worker, as its stop begins


def test_no_keep_alive_for_a_watchdog_of_another_process(tmp_path: Path, notify_socket) -> None:
    """WATCHDOG_PID naming neither the server nor its parent: the watchdog is not ours."""
    sock, path = notify_socket
    srv = PymailServer(tmp_path, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                                      "WATCHDOG_PID": "1"})
    srv.start()
    try:
        assert [data for _, _, data in receive(sock, 1.5)] == [b"READY=1"]
        assert "systemd watchdog on" not in srv.log()
    finally:
        assert srv.stop() == 0
