# PLACEHOLDER until out-tls lands (replaced by its policy.py at merge): opportunistic only.
from __future__ import annotations
import functools
import ssl
from dataclasses import dataclass


# Built once: ssl.create_default_context loads the system CA bundle, ~50 ms of CPU on the
# event loop per call -- per delivery attempt it capped outbound at ~17 msgs/s
# (benchmarks/outbound.py).  An SSLContext serves any number of connections.
@functools.lru_cache(maxsize=None)
def pkix_context() -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


@functools.lru_cache(maxsize=None)
def _opportunistic() -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@dataclass(frozen=True)
class MxTls:
    name: str
    required: bool
    context: ssl.SSLContext
    server_hostname: str
    error: str | None = None

    def check(self, ssl_object):
        return None

    def describe(self, ssl_object):
        return f"{ssl_object.version()} {ssl_object.cipher()[0]} {self.name}"


@dataclass(frozen=True)
class DomainTls:
    name: str = "none"

    def allows(self, mx_host):
        return True


class TlsPolicy:
    def __init__(self, *, config, resolver, clock):
        pass

    async def for_domain(self, domain, *, requiretls, tls_required_no):
        return DomainTls()

    async def for_mx(self, domain_tls, mx_host, *, mx_authenticated):
        return MxTls("opportunistic", False, _opportunistic(), mx_host)

    async def close(self):
        pass
