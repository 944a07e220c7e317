"""systemd ``Type=notify`` readiness: tell the service manager we are up or stopping.

The protocol (sd_notify(3), "Notification socket" in systemd.exec(5)): when systemd starts
a ``Type=notify`` service it sets ``$NOTIFY_SOCKET`` to an ``AF_UNIX`` datagram socket —
a file system path, or an abstract-namespace name written with a leading ``@`` — and the
service sends newline-separated ``VARIABLE=value`` assignments in one datagram each:
``READY=1`` once every listener is bound, ``STOPPING=1`` when shutdown begins,
``STATUS=...`` free text shown by ``systemctl status``.

Invariants:

* Nothing here raises: no ``$NOTIFY_SOCKET`` (not run by systemd), an unsupported
  address (e.g. ``vsock:``), a missing socket or a failed send all return ``False`` and
  log at debug level only.  Readiness reporting must never stop the mail server.
* One datagram per call, sent on a fresh unconnected socket; no state is kept, so it is
  safe to call from any thread or after a fork.
* A ``STATUS=`` text is a single line: newlines would inject further assignments.

The watchdog (``WatchdogSec=`` in the unit, sd_watchdog_enabled(3)): systemd sets
``$WATCHDOG_USEC`` (the timeout) and ``$WATCHDOG_PID`` (the unit's main pid) and expects
``WATCHDOG=1`` at least that often, else it kills and restarts the service.  pymail's
prefork workers are children of the main process, and the unit's ``NotifyAccess=all``
lets them send it, so `watchdog_interval` accepts a ``$WATCHDOG_PID`` naming this process
or its parent.  `keep_alive` sends from a task of the running event loop: a keep-alive
is due only when that loop runs its timers, so a loop held by blocking code misses them
and systemd notices.  Which loop sends it is pymail.process's choice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

__all__ = ["keep_alive", "notify", "ready", "reloading", "status", "stopping", "watchdog",
           "watchdog_interval"]

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` to ``$NOTIFY_SOCKET``; True if it was sent, False otherwise."""
    try:
        address = os.environ.get("NOTIFY_SOCKET", "")
        if not address:
            return False
        if address.startswith("@"):  # abstract namespace: leading NUL byte (unix(7))
            address = "\0" + address[1:]
        elif not address.startswith("/"):
            log.debug("sd_notify: unsupported NOTIFY_SOCKET address %r", address)
            return False
        data = message.encode("utf-8")
        if not data:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sent = sock.sendto(data, address)
        if sent != len(data):  # datagrams are all or nothing; belt and braces
            log.debug("sd_notify: short send (%d of %d bytes)", sent, len(data))
            return False
        return True
    except Exception as exc:
        log.debug("sd_notify: could not send %r: %s", message, exc)
        return False


def ready() -> bool:
    """Tell systemd the service is ready (every listener bound): ``READY=1``."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd the service is shutting down: ``STOPPING=1``."""
    return notify("STOPPING=1")


def reloading() -> bool:
    """Tell systemd a reload (SIGHUP) began: ``RELOADING=1`` with ``MONOTONIC_USEC``
    (systemd 253+ for Type=notify-reload wants the timestamp; older ones ignore it).
    Send `ready` when the reload is done."""
    return notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog() -> bool:
    """Keep-alive for ``WatchdogSec=``: ``WATCHDOG=1``."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between keep-alives systemd expects (half of ``$WATCHDOG_USEC``, as
    sd_watchdog_enabled(3) advises), or None when no watchdog is set for this process:
    no or a non-positive ``$WATCHDOG_USEC``, a value that is not a number, or a
    ``$WATCHDOG_PID`` naming neither this process nor its parent (systemd names the
    unit's main pid: this process with `server.workers = 1`, a prefork worker's parent
    otherwise).  Without ``$WATCHDOG_PID`` any process may send, as sd_watchdog_enabled
    has it."""
    try:
        usec = int(os.environ.get("WATCHDOG_USEC", "0"))
        pid = os.environ.get("WATCHDOG_PID")
        if usec <= 0 or (pid and int(pid) not in (os.getpid(), os.getppid())):
            return None
    except ValueError:
        return None
    return usec / 2_000_000


async def keep_alive(interval: float) -> None:
    """Send ``WATCHDOG=1`` now and then every `interval` seconds of the running loop's
    clock, until cancelled (the caller cancels it when the process stops).

    The times are kept from the start, not from each send, so they do not drift later
    and later; a send the loop was too busy to make on time is made at once, and the
    ones missed meanwhile are not made up (one keep-alive resets systemd's timer)."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        watchdog()
        due += interval
        now = loop.time()
        if due < now:  # the loop was held past one or more sends: start again from now
            due = now
        await asyncio.sleep(due - now)


def status(text: str) -> bool:
    """Set the one-line status ``systemctl status`` shows: ``STATUS=<text>``."""
    try:
        line = " ".join(str(text).splitlines())
    except Exception:
        return False
    return notify("STATUS=" + line)
