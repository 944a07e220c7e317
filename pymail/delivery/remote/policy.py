# PLACEHOLDER until out-tls lands (replaced by its policy.py at merge): opportunistic only.
from __future__ import annotations
import ssl
from dataclasses import dataclass


def pkix_context() -> ssl.SSLContext:
    return ssl.create_default_context(ssl.Purpose.SERVER_AUTH)


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
