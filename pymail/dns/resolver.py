"""`DnsResolver`: the `Resolver` over dnspython's asyncio resolver (``[dns]`` config).

* With ``nameservers`` configured, only those are asked, on ``port``; ``/etc/resolv.conf``
  is not read at all (``configure=False``).  With none, the system's resolver
  configuration is used, as any other program on the machine would.
* Queries carry the AD bit (RFC 6840 section 5.7) so that a validating resolver says
  whether it validated the answer; pymail does no DNSSEC validation itself, and trusts
  the AD bit only as far as it trusts its configured resolver (RFC 7672 section 2.2:
  run a local validating resolver for DANE).
* Answers are cached by their TTL (dnspython's LRU cache, per process).
* Every failure to get an answer is `DnsTemporaryError` (see the package docstring).
"""

from __future__ import annotations

import ipaddress
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename

from pymail.dns.model import (
    SUPPORTED_TYPES,
    Answer,
    DnsError,
    DnsTemporaryError,
    MxRecord,
    SrvRecord,
    TlsaRecord,
    normalise_name,
)

__all__ = ["DnsResolver", "reverse_name"]

CACHE_ENTRIES = 10_000


def _host(name: dns.name.Name) -> str:
    text = name.to_text(omit_final_dot=True).lower()
    return "" if text == "." else text


def _value(rdtype: str, rdata: Any) -> Any:
    if rdtype in ("A", "AAAA"):
        return str(ipaddress.ip_address(rdata.address))
    if rdtype == "MX":
        return MxRecord(int(rdata.preference), _host(rdata.exchange))
    if rdtype == "TXT":
        return b"".join(rdata.strings)
    if rdtype == "TLSA":
        return TlsaRecord(int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))
    if rdtype == "SRV":
        return SrvRecord(int(rdata.priority), int(rdata.weight), int(rdata.port),
                         _host(rdata.target))
    if rdtype in ("PTR", "CNAME"):
        return _host(rdata.target)
    raise DnsError(f"unsupported record type {rdtype}")


def reverse_name(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa name of an address (for PTR lookups)."""
    try:
        return _host(dns.reversename.from_address(ip))
    except (ValueError, dns.exception.SyntaxError) as exc:
        raise DnsError(f"invalid address {ip!r}") from exc


class DnsResolver:
    """Asks the configured nameservers (or the system's); see the module docstring."""

    def __init__(self, nameservers: list[str] | None = None, *, port: int = 53,
                 timeout: float = 5.0) -> None:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = list(nameservers)
            resolver.port = port
        else:
            resolver = dns.asyncresolver.Resolver(configure=True)
        resolver.lifetime = timeout
        resolver.timeout = min(timeout, 2.0)  # per server try; lifetime bounds the whole
        resolver.flags = dns.flags.RD | dns.flags.AD
        resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
        self._resolver = resolver
        self.nameservers = list(nameservers or [])
        self.port = port

    async def query(self, name: str, rdtype: str) -> Answer:
        rdtype = rdtype.upper()
        if rdtype not in SUPPORTED_TYPES:
            raise DnsError(f"unsupported record type {rdtype}")
        qname = normalise_name(name)
        try:
            answer = await self._resolver.resolve(qname + ".", rdtype, raise_on_no_answer=False,
                                                  search=False)
        except dns.resolver.NXDOMAIN as exc:
            authenticated = any(bool(r.flags & dns.flags.AD) for r in exc.responses().values())
            return Answer(qname, rdtype, (), exists=False, authenticated=authenticated,
                          canonical_name=qname)
        except dns.resolver.NoNameservers as exc:  # every server SERVFAIL/REFUSED/broken
            raise DnsTemporaryError(f"{qname}/{rdtype}: no nameserver answered ({exc})") from exc
        except dns.exception.Timeout as exc:
            raise DnsTemporaryError(f"{qname}/{rdtype}: timed out") from exc
        except dns.resolver.YXDOMAIN as exc:
            raise DnsError(f"{qname}/{rdtype}: name too long after DNAME") from exc
        except (dns.exception.DNSException, OSError) as exc:
            raise DnsTemporaryError(f"{qname}/{rdtype}: {exc}") from exc
        records = tuple(_value(rdtype, rd) for rd in answer.rrset) if answer.rrset is not None else ()
        return Answer(
            qname, rdtype, records, exists=True,
            authenticated=bool(answer.response.flags & dns.flags.AD),
            canonical_name=_host(answer.canonical_name),
        )
