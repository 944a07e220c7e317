"""What every private test service does with its process: a free loopback port, its own
process group that dies with the test run, and a stop that reaches the whole group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess

__all__ = ["free_loopback_port", "own_group_and_die_with_parent", "stop_group"]


def free_loopback_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def own_group_and_die_with_parent() -> None:
    """`preexec_fn`: a process group of its own (pause and stop reach every process and
    thread) and SIGTERM when the test run dies (PR_SET_PDEATHSIG)."""
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGCONT (it may be paused) and SIGTERM to the group, wait for the leader, SIGKILL
    what is left after `timeout`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGCONT)
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
