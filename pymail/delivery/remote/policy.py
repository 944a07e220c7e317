"""The TLS policy of outbound delivery: what the SMTP client must demand of each MX.

Decided per domain (`TlsPolicy.for_domain` -> `DomainTls`), then per MX host
(`TlsPolicy.for_mx` -> `MxTls`), strongest first:

1. ``TLS-Required: No`` on the message (RFC 8689 section 5): its sender asks that no
   policy block delivery: opportunistic TLS only, MTA-STS and DANE ignored.
2. DANE (RFC 7672) for an MX whose name and addresses came from DNSSEC-validated
   answers (the resolver's AD bit) and whose ``_25._tcp.HOST`` TLSA RRset is validated
   and has usable records: TLS is mandatory and the chain must match (`dane`).  DANE
   wins over MTA-STS for that host (RFC 8461 section 2).  A TLSA lookup that fails
   in a signed zone is a temporary failure for the host, never a downgrade (7672 2.2).
3. REQUIRETLS on the message (RFC 8689 4.2.1) or an MTA-STS ``enforce`` policy
   (RFC 8461 section 5): STARTTLS with a certificate valid for the MX name under the
   system's CA store; with ``enforce``, only MX hosts the policy lists are used.
4. MTA-STS ``testing``: opportunistic, and a host the policy would refuse is logged.
5. Otherwise opportunistic STARTTLS without verification (RFC 7435); the client falls
   back to plaintext after a failed handshake only in this case (`MxTls.required`
   False).

Never raises: a policy that cannot be fetched is "none" (or the cached one), a DNS
failure where DANE applies is `MxTls.error`.  `[delivery] mta_sts` / `dane` turn the
two off.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

from pymail.delivery.remote import dane as _dane
from pymail.delivery.remote.mtasts import PolicyCache, fetch_policy, mx_matches, parse_txt
from pymail.dns.model import DnsError, DnsTemporaryError, Resolver, TlsaRecord, txt_records

__all__ = ["DomainTls", "MxTls", "TlsPolicy", "opportunistic_context", "pkix_context"]

log = logging.getLogger("pymail.delivery")


@functools.cache
def pkix_context() -> ssl.SSLContext:
    """A client context that verifies the server's certificate and name against the
    system CA store (SSL_CERT_FILE / SSL_CERT_DIR override it); TLS 1.2 at least."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@functools.cache
def opportunistic_context() -> ssl.SSLContext:
    """Encryption without verification (opportunistic, and DANE, which checks the chain
    itself after the handshake); the protocol versions are OpenSSL's defaults."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _chain(ssl_object) -> list[bytes]:
    """The certificates the server presented, its own first (DER)."""
    inner = getattr(ssl_object, "_sslobj", None)  # Python 3.13: get_unverified_chain()
    getter = getattr(inner, "get_unverified_chain", None) or getattr(
        ssl_object, "get_unverified_chain", None)
    if getter is not None:
        try:
            chain = getter() or []
            return [c.public_bytes(ssl._ssl.ENCODING_DER) if hasattr(c, "public_bytes") else c
                    for c in chain]
        except (AttributeError, ssl.SSLError, ValueError):
            pass
    leaf = ssl_object.getpeercert(binary_form=True)
    return [leaf] if leaf else []


@dataclass(frozen=True)
class MxTls:
    """What the SMTP client must do about TLS with one MX host."""

    name: str  #: for the log: dane, mta-sts enforce, mta-sts testing, requiretls, opportunistic
    required: bool  #: STARTTLS must succeed and `check` pass: never plaintext
    context: ssl.SSLContext
    server_hostname: str  #: SNI and the PKIX name (the MX host)
    error: str | None = None  #: the policy cannot be met before connecting (temporary)
    tlsa: tuple[TlsaRecord, ...] = field(default=())

    @property
    def verifies(self) -> bool:
        return bool(self.tlsa) or self.context.verify_mode == ssl.CERT_REQUIRED

    def check(self, ssl_object) -> str | None:
        """After the handshake: None if acceptable, else why not."""
        if not self.tlsa:
            return None  # PKIX was checked by the handshake; opportunistic checks nothing
        return _dane.chain_matches(self.tlsa, _chain(ssl_object), self.server_hostname)

    def describe(self, ssl_object) -> str:
        cipher = (ssl_object.cipher() or ("?",))[0]
        verified = "verified" if self.verifies else "unverified"
        return f"{ssl_object.version()} {cipher} {verified} ({self.name})"


@dataclass(frozen=True)
class DomainTls:
    """The domain-wide part of the policy."""

    name: str  #: mta-sts enforce | mta-sts testing | requiretls | tls-required-no | none
    mx: tuple[str, ...] = ()  #: MTA-STS mx patterns
    requiretls: bool = False

    def allows(self, mx_host: str) -> bool:
        """Whether `mx_host` may be used (MTA-STS enforce: only listed hosts, 4.1)."""
        if not self.name.startswith("mta-sts") or any(mx_matches(p, mx_host) for p in self.mx):
            return True
        if self.name == "mta-sts testing":
            log.info("MTA-STS (testing): MX %s is not in the policy's mx list %s", mx_host,
                     ",".join(self.mx))
            return True
        return False


class TlsPolicy:
    """Decides `DomainTls` and `MxTls` (module docstring); MTA-STS policies cached."""

    def __init__(self, *, config, resolver: Resolver,
                 clock: Callable[[], _dt.datetime]) -> None:
        self.config, self.resolver, self.clock = config, resolver, clock
        self.cache = PolicyCache()

    async def for_domain(self, domain: str, *, requiretls: bool,
                         tls_required_no: bool) -> DomainTls:
        if tls_required_no and not requiretls:
            return DomainTls("tls-required-no")
        sts = await self._mta_sts(domain) if self.config.delivery.mta_sts else None
        if sts is not None and sts.mode in ("enforce", "testing"):
            return DomainTls(f"mta-sts {sts.mode}", sts.mx, requiretls)
        return DomainTls("requiretls" if requiretls else "none", requiretls=requiretls)

    async def _mta_sts(self, domain: str):
        """The domain's MTA-STS policy, or None (module docstring of mtasts)."""
        async with self.cache.lock(domain):
            now = self.clock()
            cached = self.cache.get(domain, now)
            try:
                policy_id = parse_txt(await txt_records(self.resolver, f"_mta-sts.{domain}"))
            except DnsError as exc:
                log.info("MTA-STS: TXT lookup for %s failed (%s)%s", domain, exc,
                         "; using the cached policy" if cached else "")
                return cached.policy if cached else None
            if policy_id is None:
                return cached.policy if cached else None  # RFC 8461 10.2: keep a live cache
            if cached is not None and cached.policy_id == policy_id:
                return cached.policy
            try:
                policy = await fetch_policy(domain, self.resolver, pkix_context())
            except Exception as exc:  # any failure to fetch is "no new policy"
                log.warning("MTA-STS: cannot fetch the policy of %s: %s%s", domain, exc,
                            "; using the cached policy" if cached else "")
                return cached.policy if cached else None
            self.cache.put(domain, policy_id, policy, now)
            log.info("MTA-STS: %s has policy id %s: mode %s, mx %s, max_age %d", domain,
                     policy_id, policy.mode, ",".join(policy.mx), policy.max_age)
            return policy

    async def for_mx(self, domain_tls: DomainTls | None, mx_host: str, *,
                     mx_authenticated: bool) -> MxTls:
        if domain_tls is None or domain_tls.name == "tls-required-no":
            return MxTls("opportunistic", False, opportunistic_context(), mx_host)
        if self.config.delivery.dane and mx_authenticated:
            try:
                answer = await self.resolver.query(f"_25._tcp.{mx_host}", "TLSA")
            except DnsTemporaryError as exc:
                return MxTls("dane", True, opportunistic_context(), mx_host,
                             error=f"TLSA lookup failed in a signed zone: {exc}")
            except DnsError:
                answer = None
            usable = _dane.tlsa_usable(answer.records) if answer and answer.authenticated else ()
            if usable:
                return MxTls("dane", True, opportunistic_context(), mx_host, tlsa=usable)
        if domain_tls.name == "mta-sts enforce" or domain_tls.requiretls:
            return MxTls(domain_tls.name, True, pkix_context(), mx_host)
        if domain_tls.name == "mta-sts testing":
            return MxTls("mta-sts testing", False, opportunistic_context(), mx_host)
        return MxTls("opportunistic", False, opportunistic_context(), mx_host)

    async def close(self) -> None:
        return None
