"""The resolver interface and its answer model (see the package docstring).

Record values, per type (``Answer.records``):

============  ==========================================================
``A``         ``str``, the IPv4 address
``AAAA``      ``str``, the IPv6 address (compressed form)
``MX``        `MxRecord` (preference, host name)
``TXT``       ``bytes``, the record's character-strings concatenated
              (RFC 7208 section 3.3, RFC 6376 section 3.6.2.2)
``TLSA``      `TlsaRecord` (RFC 6698 section 2.1)
``PTR``       ``str``, the target host name
``CNAME``     ``str``, the target host name
``SRV``       `SrvRecord` (RFC 2782; `pymail dns check`, RFC 6186 client SRV)
============  ==========================================================
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol

SUPPORTED_TYPES = ("A", "AAAA", "MX", "TXT", "TLSA", "PTR", "CNAME", "SRV")


class DnsError(Exception):
    """A question pymail could not ask (e.g. a malformed name)."""


class DnsTemporaryError(DnsError):
    """No answer now (SERVFAIL, REFUSED, timeout, no nameserver answered): retry later."""


@dataclass(frozen=True, slots=True)
class MxRecord:
    preference: int
    host: str  #: lower case, no trailing dot; "" for the null MX "." (RFC 7505)


@dataclass(frozen=True, slots=True)
class SrvRecord:
    priority: int
    weight: int
    port: int
    target: str  #: lower case, no trailing dot; "" for "." (no such service, RFC 2782)


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    usage: int  #: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE (RFC 7218)
    selector: int  #: 0 full certificate, 1 SubjectPublicKeyInfo
    matching_type: int  #: 0 exact, 1 SHA-256, 2 SHA-512
    data: bytes


@dataclass(frozen=True, slots=True)
class Answer:
    """What DNS said about (name, rdtype)."""

    name: str  #: the name asked, normalised
    rdtype: str  #: "MX", "TXT", ...
    records: tuple[Any, ...]  #: values as in the module docstring; empty if none
    exists: bool = True  #: False for NXDOMAIN
    authenticated: bool = False  #: the response's AD bit (DNSSEC-validated)
    canonical_name: str = ""  #: where the CNAME chain ended (= name without CNAMEs)


class Resolver(Protocol):
    """The one DNS interface pymail uses."""

    async def query(self, name: str, rdtype: str) -> Answer:
        """Ask for `rdtype` records of `name`.  Raises `DnsTemporaryError` when no
        answer could be had, `DnsError` for a question that cannot be asked."""
        ...


def normalise_name(name: str) -> str:
    """Lower case, no trailing dot; IDNA A-labels for a non-ASCII name."""
    name = name.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise DnsError(f"invalid domain name {name!r}") from exc
    if not name or len(name) > 253 or any(not label or len(label) > 63 for label in name.split(".")):
        raise DnsError(f"invalid domain name {name!r}")
    return name


async def mx_records(resolver: Resolver, domain: str) -> Answer:
    """The MX records of `domain`, sorted by preference (equal preferences keep the
    order DNS gave; the caller shuffles them, RFC 5321 section 5.1)."""
    answer = await resolver.query(domain, "MX")
    ordered = tuple(sorted(answer.records, key=lambda r: r.preference))
    return Answer(answer.name, "MX", ordered, answer.exists, answer.authenticated,
                  answer.canonical_name)


async def addresses(resolver: Resolver, host: str) -> tuple[list[str], bool]:
    """(IPv6 and IPv4 addresses of `host`, whether both answers were authenticated).

    The two lookups run concurrently.  One family failing temporarily is tolerated when
    the other answered with addresses; both failing raises `DnsTemporaryError`."""
    results = await asyncio.gather(resolver.query(host, "AAAA"), resolver.query(host, "A"),
                                   return_exceptions=True)
    found: list[str] = []
    authenticated = True
    failure: BaseException | None = None
    for result in results:
        if isinstance(result, BaseException):
            if not isinstance(result, DnsError):
                raise result
            failure = result
            authenticated = False
            continue
        found.extend(result.records)
        authenticated = authenticated and result.authenticated
    if failure is not None and not found:
        raise failure
    return found, authenticated


async def txt_records(resolver: Resolver, name: str) -> list[bytes]:
    """The TXT records of `name` (each one's strings concatenated); [] if none."""
    return list((await resolver.query(name, "TXT")).records)
