"""iprev (RFC 8601 section 3): the client address's PTR names, forward-confirmed.

The address's PTR names are asked (at most `MAX_NAMES` are followed, as RFC 7208
section 4.6.4 bounds the ``ptr`` mechanism), then the addresses of each name in the
client's family (A for IPv4, AAAA for IPv6; an IPv4-mapped IPv6 address counts as
IPv4), concurrently.  Results, in RFC 8601 section 3's words:

* ``pass``: a PTR name resolves back to the address (`IprevResult.name` is that name);
* ``fail``: PTR names were found, and their forward lookups answered, but none with
  the address (NXDOMAIN / no data counts as an answer);
* ``permerror``: no PTR data for the address (NXDOMAIN or no answer) -- section 3 names
  this case explicitly; also for an `ip` that is not an address;
* ``temperror``: a DNS failure on the PTR lookup, or on a forward lookup when no other
  name passed (that name might have).

Invariant: `check_iprev` never raises (except CancelledError); a DNS failure is
``temperror``.
"""

from __future__ import annotations

import asyncio
import ipaddress

from pymail.checks.results import IprevResult
from pymail.dns.model import DnsError, DnsTemporaryError, Resolver

__all__ = ["MAX_NAMES", "check_iprev", "reverse_pointer"]

#: PTR names whose addresses are looked up.
MAX_NAMES = 10


def reverse_pointer(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The in-addr.arpa / ip6.arpa name of `address` (RFC 1035 3.5, RFC 3596 2.5)."""
    return address.reverse_pointer


async def _forward(resolver: Resolver, name: str, rdtype: str) -> tuple[str, list[str] | None]:
    """(name, its addresses), or (name, None) on a temporary failure."""
    try:
        answer = await resolver.query(name, rdtype)
    except DnsTemporaryError:
        return name, None
    except DnsError:
        return name, []
    return name, list(answer.records)


async def check_iprev(resolver: Resolver, ip: str, *, timeout: float = 20.0) -> IprevResult:
    """The iprev result for the client address `ip` (see the module docstring)."""
    try:
        address = ipaddress.ip_address(ip.strip().strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return IprevResult("permerror", ip)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    rdtype = "A" if address.version == 4 else "AAAA"
    try:
        async with asyncio.timeout(timeout):
            try:
                ptr = await resolver.query(reverse_pointer(address), "PTR")
            except DnsError as exc:
                if isinstance(exc, DnsTemporaryError):
                    return IprevResult("temperror", str(address))
                return IprevResult("permerror", str(address))
            names = [n for n in dict.fromkeys(ptr.records) if n][:MAX_NAMES]
            if not names:
                return IprevResult("permerror", str(address))
            answers = await asyncio.gather(*(_forward(resolver, n, rdtype) for n in names))
    except TimeoutError:
        return IprevResult("temperror", str(address))
    temporary = False
    for name, found in answers:
        if found is None:
            temporary = True
            continue
        for value in found:
            try:
                if ipaddress.ip_address(value) == address:
                    return IprevResult("pass", str(address), name)
            except ValueError:
                continue
    return IprevResult("temperror" if temporary else "fail", str(address), names[0])
