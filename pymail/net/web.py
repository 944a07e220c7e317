"""The public web listeners (aiohttp): ``[listen] web`` (plain HTTP, port 80) and
``[listen] https`` (port 443), and the client-autoconfiguration routes they share with
the monitoring listener (pymail.net.http).

``[listen] web`` (plain HTTP) answers:

* ``GET /.well-known/acme-challenge/{token}``: the key authorization of a pending
  http-01 challenge (RFC 8555 section 8.3), text/plain, from the `ChallengeStore` files
  any worker's ACME client wrote; 404 for anything else (the store checks the token
  before it touches a file, so no request names another file);
* the Thunderbird autoconfig file (Thunderbird asks over HTTP when HTTPS fails);
* everything else: ``301`` (``308`` for a method other than GET/HEAD, which keeps the
  method) to ``https://HOST[:port]/PATH`` when ``[listen] https`` is on, else 404.

``[listen] https`` (TLS, the worker's certificate context) answers the autoconfig
routes: Thunderbird (``/mail/config-v1.1.xml``,
``/.well-known/autoconfig/mail/config-v1.1.xml``), Outlook
(``POST /autodiscover/autodiscover.xml``), Apple
(``GET /apple/mail.mobileconfig?email=ADDR``) and the MTA-STS policy
(``/.well-known/mta-sts.txt``, HTTPS only: RFC 8461 section 3.3).  Other paths are 404.

Invariants: neither public listener routes /metrics or /healthz; answers about an
address are given only for a domain of the directory that is active (else 404), and the
bodies come from pymail.net.autoconfig (sans-IO), which validates and escapes what the
request says; a bad request is one line with a 4xx, never a traceback.  A connection
that has not sent a whole request within `KEEPALIVE_SECONDS` of connecting (or of its
last answer) is closed (aiohttp's keep-alive timer also covers the first request).
There is no per-address connection limit here (the mail listeners' ConnectionLimiter is
not wired into aiohttp).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from typing import TYPE_CHECKING

from aiohttp import web

from pymail.net import autoconfig
from pymail.net.autoconfig import AutoconfigError
from pymail.net.challenges import ChallengeStore
from pymail.net.listen import bound_addresses
from pymail.store import StorageError

if TYPE_CHECKING:
    from pymail.config.schema import Config
    from pymail.store.interfaces import Directory

__all__ = ["ClientAutoconfig", "PublicWebService", "THUNDERBIRD_PATHS", "AUTODISCOVER_PATHS",
           "MOBILECONFIG_PATH", "MTA_STS_PATH"]

log = logging.getLogger("pymail.web")

THUNDERBIRD_PATHS = ("/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml")
#: Outlook writes either case; aiohttp's routes are case-sensitive.
AUTODISCOVER_PATHS = ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml")
MOBILECONFIG_PATH = "/apple/mail.mobileconfig"
MTA_STS_PATH = "/.well-known/mta-sts.txt"
ACME_CHALLENGE_PATH = "/.well-known/acme-challenge/{token}"

#: Idle keep-alive connections are closed after this many seconds (a public port).
KEEPALIVE_SECONDS = 15.0
DIRECTORY_TIMEOUT = 5.0

_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?$")
_XML = "application/xml"


def _error(status: int, reason: str) -> web.Response:
    return web.Response(status=status, text=reason + "\n")


class ClientAutoconfig:
    """The autoconfig and MTA-STS handlers over one config and directory."""

    def __init__(self, config: "Config", directory: "Directory | None") -> None:
        self.config = config
        self.directory = directory
        self.settings = autoconfig.client_settings(config)

    def add_routes(self, app: web.Application, *, secure: bool = True) -> None:
        """Thunderbird's file always; with ``secure`` (TLS, or the monitoring listener)
        also Autodiscover, the Apple profile and the MTA-STS policy."""
        for path in THUNDERBIRD_PATHS:
            app.router.add_get(path, self.thunderbird)
        if secure:
            for path in AUTODISCOVER_PATHS:
                app.router.add_post(path, self.autodiscover)
            app.router.add_get(MOBILECONFIG_PATH, self.mobileconfig)
            app.router.add_get(MTA_STS_PATH, self.mta_sts)

    async def _served(self, domain: str) -> web.Response | None:
        """None when the directory has ``domain`` and it is active, else the answer."""
        if self.directory is None:
            return None
        try:
            found = await asyncio.wait_for(self.directory.get_domain(domain), DIRECTORY_TIMEOUT)
        except (StorageError, asyncio.TimeoutError) as e:
            log.warning("autoconfig: cannot read the directory: %s", e or "timed out")
            return _error(503, "try again later")
        if found is None or not found.is_active:
            return _error(404, "no such mail domain")
        return None

    async def thunderbird(self, request: web.Request) -> web.Response:
        """``?emailaddress=`` (Thunderbird always sends it); without it, the domain of
        the ``autoconfig.DOMAIN`` host name asked for."""
        text = request.query.get("emailaddress")
        try:
            if text:
                domain = autoconfig.requested_mailbox(text).domain
            else:
                host = request.host.rpartition(":")[0] if ":" in request.host else request.host
                host = host.lower().rstrip(".")
                if not host.startswith("autoconfig.") or not _HOST.match(host):
                    raise AutoconfigError(400, "missing emailaddress")
                domain = autoconfig.requested_mailbox(f"postmaster@{host[len('autoconfig.'):]}").domain
        except AutoconfigError as e:
            return _error(e.status, e.reason)
        if (refusal := await self._served(domain)) is not None:
            return refusal
        return web.Response(body=autoconfig.thunderbird_config(self.settings, domain), content_type=_XML,
                            charset="utf-8")

    async def autodiscover(self, request: web.Request) -> web.Response:
        if (request.content_length or 0) > autoconfig.AUTODISCOVER_MAX_REQUEST:
            return _error(400, "request too large")
        body = await request.content.read(autoconfig.AUTODISCOVER_MAX_REQUEST + 1)
        try:
            mailbox = autoconfig.autodiscover_address(body)
        except AutoconfigError as e:
            return _error(e.status, e.reason)
        if (refusal := await self._served(mailbox.domain)) is not None:
            return refusal
        return web.Response(body=autoconfig.autodiscover_response(self.settings, mailbox),
                            content_type=_XML, charset="utf-8")

    async def mobileconfig(self, request: web.Request) -> web.Response:
        try:
            mailbox = autoconfig.requested_mailbox(request.query.get("email"))
        except AutoconfigError as e:
            return _error(e.status, e.reason)
        if (refusal := await self._served(mailbox.domain)) is not None:
            return refusal
        try:
            body = autoconfig.apple_mobileconfig(self.settings, mailbox)
        except AutoconfigError as e:
            return _error(e.status, e.reason)
        return web.Response(body=body, content_type=autoconfig.MOBILECONFIG_TYPE, headers={
            "Content-Disposition": 'attachment; filename="mail.mobileconfig"'})

    async def mta_sts(self, request: web.Request) -> web.Response:
        return web.Response(body=autoconfig.mta_sts_policy(self.config), content_type="text/plain")


class PublicWebService:
    """One public listener: ``name`` "web" (plain HTTP) or "https" (TLS with
    ``tls_context``, the worker's certificate context, used as given)."""

    def __init__(self, name: str, addresses: list[tuple[str, int]], config: "Config",
                 directory: "Directory | None", *, tls_context: ssl.SSLContext | None = None,
                 reuse_port: bool = False) -> None:
        assert name in ("web", "https") and (tls_context is not None) == (name == "https")
        self.name = name
        self.addresses = addresses
        self.config = config
        self.tls_context = tls_context
        self.reuse_port = reuse_port
        self.autoconfig = ClientAutoconfig(config, directory)
        self.challenges = ChallengeStore(config.acme_dir / "challenges")
        self.runner: web.AppRunner | None = None

    async def acme_challenge(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        answer = await asyncio.to_thread(self.challenges.http01, token)  # a file read
        if answer is None:
            return _error(404, "no such challenge")
        return web.Response(text=answer, content_type="text/plain")

    async def to_https(self, request: web.Request) -> web.Response:
        """Everything else on port 80: to the same host and path over HTTPS."""
        https = self.config.listen.https
        if not https:
            return _error(404, "not found")
        host = request.host.rsplit(":", 1)[0] if request.host.count(":") == 1 else request.host
        if not _HOST.match(host):  # an IPv6 literal or garbage: our own name
            host = self.config.server.hostname
        port = int(https[0].rpartition(":")[2])
        location = f"https://{host.rstrip('.')}{'' if port == 443 else f':{port}'}{request.raw_path}"
        status = 301 if request.method in ("GET", "HEAD") else 308
        return web.Response(status=status, headers={"Location": location})

    async def start(self) -> list[str]:
        """Bind every address; the "host:port" each is bound to."""
        app = web.Application()
        if self.name == "web":
            app.router.add_get(ACME_CHALLENGE_PATH, self.acme_challenge)
            self.autoconfig.add_routes(app, secure=False)
            app.router.add_route("*", "/{path:.*}", self.to_https)  # last: the rest
        else:
            self.autoconfig.add_routes(app, secure=True)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    keepalive_timeout=KEEPALIVE_SECONDS)
        await self.runner.setup()
        bound = []
        for host, port in self.addresses:
            site = web.TCPSite(self.runner, host, port, ssl_context=self.tls_context,
                               reuse_port=self.reuse_port or None)
            await site.start()
            if site._server is not None:  # aiohttp keeps the asyncio server private
                bound += bound_addresses(site._server.sockets)  # type: ignore[attr-defined]
        return bound

    async def stop(self, grace: float = 5.0) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
