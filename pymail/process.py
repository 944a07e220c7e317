"""The process model: how `pymail serve` runs -- one process, or a prefork parent and its
workers --, its signals, and what it tells systemd.

`serve` prepares what every process shares (data_dir, the spool, the certificates; with
workers, the storage migration), then runs `pymail.app.Worker` in this process
(`server.workers = 1`) or forks that many workers which each bind the same ports with
SO_REUSEPORT and open their own storage connections; the parent forwards SIGTERM,
SIGINT and SIGHUP to every worker and waits for them (it runs no event loop).

In each worker (`_run_worker`): SIGTERM/SIGINT start the stop (`Worker.stop`: finishing
deliveries within the grace period); a second signal during the stop ends the process at
once.  SIGHUP re-reads the certificates.

The first (or only) worker -- "announcing" -- is the one that speaks for the service: it
logs the listening addresses, sweeps orphan blobs, runs the ACME client with ``[acme]``
(cancelled first at a stop) and sends systemd ``READY=1`` once its listeners are bound,
then, with ``WatchdogSec=``, the keep-alive. Every worker sends ``STOPPING=1`` when its
stop begins.

The systemd watchdog (``WATCHDOG=1``, pymail.net.sdnotify.keep_alive) is sent from an
asyncio task on the announcing worker's serving event loop, so each keep-alive proves
that loop ran its timers, not merely that a process exists. One worker sends it, not
every worker: systemd keeps one timer per unit and any process may reset it
(NotifyAccess=all), so keep-alives from N workers would prove only that at least one
loop is alive and would hide a worker that hangs; from the first worker alone, a hang of
that one is caught, and so is a hang of all of them (the first is among them). A stall
of another worker is not restarted; the loop watchdog below logs it when it is on. It
starts right after ``READY=1`` (systemd arms the timer when the start completes) and
goes on through the graceful stop -- that loop still serves the sessions finishing, and
TimeoutStopSec= bounds the stop -- until `Worker.stop` returns. With `server.workers =
1` that worker is the main process, whose pid systemd puts in ``$WATCHDOG_PID``; a
prefork worker's parent is (sdnotify's `watchdog_interval` accepts both).

With `server.loop_watchdog` above 0, each worker's event loop is watched while it serves
(`pymail.net.watchdog`): code that holds it longer is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from pymail.app import (
    SHUTDOWN_GRACE_SECONDS,
    StartupError,
    Worker,
    prepare_spool,
    prepare_storage,
    prepare_tls,
)
from pymail.config import Config
from pymail.logformat import setup_logging
from pymail.net import sdnotify
from pymail.net.tlsstore import ServerCertificates
from pymail.net.watchdog import LoopWatchdog

__all__ = ["serve"]

log = logging.getLogger("pymail")


async def _run_worker(config: Config, reuse_port: bool, announce: bool,
                      certificates: ServerCertificates | None = None) -> None:
    """One worker's life on its event loop: start the `Worker`, serve until SIGTERM or
    SIGINT, stop it.  `announce`: this is the first (or only) worker (see above)."""
    if certificates is not None:
        certificates.warn_expiry = announce  # the warnings once, not once per worker
    worker = Worker(config, reuse_port=reuse_port, certificates=certificates, announce=announce)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Future[bool]] = set()  # held until done (the loop keeps weak refs)

    def reload_soon() -> None:
        task = asyncio.ensure_future(worker.reload_certificates())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload_soon)
    try:
        lines = await worker.start()
    except BaseException:
        await worker.stop()
        raise
    # The watchdog watches the loop while it serves clients: from the moment every
    # listener is bound to the end of the stop.  (Before, the start loads keys, whose
    # checks keep the GIL for a moment, with no client to wait for them.)
    watchdog = None
    if config.server.loop_watchdog > 0:  # off: nothing is created
        watchdog = LoopWatchdog(config.server.loop_watchdog)
        watchdog.start()
    acme_task = None
    keep_alive: asyncio.Future[None] | None = None
    try:
        if announce:  # the first (or only) worker also sweeps orphan blobs
            for line in lines:
                log.info(line)
            if config.acme.enabled:  # and keeps the ACME certificate, once the listeners answer
                acme_task = asyncio.ensure_future(worker.acme_manager().run())
            if watchdog is not None:
                log.info("loop watchdog on: a warning names code that holds the event loop over %.3fs",
                         watchdog.threshold)
            worker.start_sweeper()
            sdnotify.ready()
            keep_alive = _start_keep_alive()
        await stop.wait()
        if acme_task is not None:  # (an exchange already in its thread ends on its own)
            acme_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acme_task
        log.info("stopping: finishing deliveries in progress (up to %ds)", SHUTDOWN_GRACE_SECONDS)
        sdnotify.stopping()
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal: stop now
            loop.add_signal_handler(sig, lambda: os._exit(1))
        await worker.stop()
    finally:
        if keep_alive is not None:  # after the stop: the loop served until the end
            keep_alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keep_alive
        if watchdog is not None:
            watchdog.stop()
    log.info("stopped")


def _start_keep_alive() -> asyncio.Future[None] | None:
    """The systemd watchdog's keep-alive task on this loop, when systemd asks for one
    (`sdnotify.watchdog_interval`); None otherwise."""
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return None
    log.info("systemd watchdog on: WATCHDOG=1 every %.3gs", interval)
    return asyncio.ensure_future(sdnotify.keep_alive(interval))


def _event_loop_runner():
    """uvloop's `run` where it is installed (Linux), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run
    return uvloop.run


def announce_config(config: Config) -> None:
    """Log where the data lives, once, before any worker starts."""
    log.info("data in %s (index %s, blobs %s)", config.server.data_dir, config.index_url, config.blobs_url)


def serve(config: Config) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT.  Returns the exit code."""
    setup_logging(config.server.log_level, config.server.log_format)
    # SIGHUP reloads the certificates once the workers run; until then it must not end
    # the process (its default action).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    run = _event_loop_runner()
    try:
        config.server.data_dir.mkdir(parents=True, exist_ok=True)
        prepare_spool(config)
        certificates = prepare_tls(config)
        announce_config(config)
        if config.server.workers == 1:
            run(_run_worker(config, reuse_port=False, announce=True, certificates=certificates))
            return 0
        # Prefork: storage is migrated once here, before any thread exists.
        async def migrate_once() -> None:
            store = await prepare_storage(config)
            await store.close()

        run(migrate_once())
    except StartupError as e:
        log.error("cannot start: %s", e)
        return 1
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return _prefork(config, run, certificates)


def _prefork(config: Config, run, certificates: ServerCertificates | None = None) -> int:
    """Fork `server.workers` workers, forward signals to them, wait for them all; the
    worst exit code."""
    children: list[int] = []
    for index in range(config.server.workers):
        pid = os.fork()
        if pid == 0:  # worker
            code = 0
            try:
                run(_run_worker(config, reuse_port=True, announce=index == 0,
                                certificates=certificates))
            except StartupError as e:
                log.error("worker %d cannot start: %s", index, e)
                code = 1
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            os._exit(code)
        children.append(pid)
    log.info("started %d worker processes", len(children))

    def forward(signum, _frame):
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)  # each worker reloads its certificates
    worst = 0
    for child in children:
        _, status = os.waitpid(child, 0)
        worst = max(worst, os.waitstatus_to_exitcode(status) if os.waitstatus_to_exitcode(status) > 0 else 0)
    return worst
