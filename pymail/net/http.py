"""The HTTP service: health and metrics for monitoring (aiohttp).

* `GET /healthz`: 200 `ok` when the storage backends answer (the database and the blob
  store, each reached once, within 5 s) and the local disks have room
  (``storage.min_free_space``), else 503 with one line naming what failed
  (``degraded: disk full: ...`` while new mail is refused for want of space; ``degraded:
  rspamd: down ...`` while a scanner whose outage defers mail does not answer a ping).
  Scanners that are up, or down with ``on error = accept``, are listed after ``ok``.
  For load balancers and systemd watchdogs; it reveals nothing but the failing part.
* `GET /metrics`: Prometheus text exposition of `pymail.metrics` (the outbound queue's
  depth and oldest age read from the index at most every few seconds).

The client autoconfiguration files and the MTA-STS policy (pymail.net.web's
`ClientAutoconfig`) are served here too, for a TLS proxy in front or a local test.

Listen on loopback or a monitoring network only (`[listen] http`): neither endpoint
authenticates.  Other paths are 404.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from pymail import metrics
from pymail.net.listen import bound_addresses
from pymail.store import StorageError, Store

if TYPE_CHECKING:
    from pymail.checks.session import Checks
    from pymail.net.web import ClientAutoconfig

log = logging.getLogger("pymail.http")

HEALTH_TIMEOUT = 5.0


class HttpService:
    """/healthz and /metrics (and the autoconfig files) on the given addresses."""

    def __init__(self, addresses: list[tuple[str, int]], store: Store, *, reuse_port: bool = False,
                 checks: Checks | None = None, autoconfig: ClientAutoconfig | None = None) -> None:
        self.addresses = addresses
        self.autoconfig = autoconfig
        self.checks = checks
        self.store = store
        self.reuse_port = reuse_port
        self.runner: web.AppRunner | None = None

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            await asyncio.wait_for(self.store.check(), HEALTH_TIMEOUT)
        except StorageError as e:
            return web.Response(status=503, text=f"storage: {e}\n")
        except asyncio.TimeoutError:
            return web.Response(status=503, text="storage: no answer within 5 s\n")
        space = self.store.space
        if space is not None and space.low:  # new mail is refused until there is room
            return web.Response(status=503, text=f"degraded: disk full: {space.describe()}\n")
        detail = ""
        if self.checks is not None:  # the scanners, asked now
            for name, up, text in await self.checks.health():
                health = self.checks.rspamd_health if name == "rspamd" else self.checks.clamd_health
                if not up and health.on_error in ("tempfail", "reject"):
                    return web.Response(status=503, text=f"degraded: {name}: {text}\n")
                detail += f"{name}: {text}\n"
        return web.Response(text="ok\n" + detail)

    async def metrics(self, request: web.Request) -> web.Response:
        if self.store.queue is not None:  # the queue's depth and age, read now (cached)
            try:
                await asyncio.wait_for(metrics.refresh_queue(
                    self.store.queue, now=asyncio.get_running_loop().time(),
                    wall=datetime.datetime.now(datetime.timezone.utc)), HEALTH_TIMEOUT)
            except (StorageError, asyncio.TimeoutError) as e:
                log.warning("metrics: cannot read the queue: %s", e or "timed out")
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def start(self) -> list[str]:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        if self.autoconfig is not None:
            self.autoconfig.add_routes(app, secure=True)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self.runner.setup()
        bound = []
        for host, port in self.addresses:
            site = web.TCPSite(self.runner, host, port, reuse_port=self.reuse_port or None)
            await site.start()
            if site._server is not None:  # aiohttp keeps the asyncio server private
                bound += bound_addresses(site._server.sockets)  # type: ignore[attr-defined]
        return bound

    async def stop(self, grace: float = 5.0) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
