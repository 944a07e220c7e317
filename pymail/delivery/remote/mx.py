"""Where a (domain, route) group goes: the hosts to try, in order (RFC 5321 section 5.1).

Routes (pymail.store.queue.QueuedRecipient.route):

* ``mx``: the MX records of the domain, lowest preference first, hosts of equal
  preference shuffled (RFC 5321 5.1: "the sender-SMTP MUST randomize them to spread the
  load"); no MX record at all means the domain itself is the one host (the "implicit
  MX", 5.1); a null MX (``0 .``, RFC 7505) means the domain accepts no mail: a permanent
  failure at once (3: ``556 5.1.10``); a domain that does not exist (NXDOMAIN) is
  permanent too (``5.1.2``); a DNS failure (SERVFAIL, timeout) is temporary, never a
  bounce.  At most `MAX_MX_HOSTS` hosts are tried per attempt (Postfix's
  smtp_mx_address_limit).
* ``relay``: ``[delivery] relay_host``, the smarthost: that host and port, no MX lookup
  (Postfix's ``relayhost = [host]:port``); TLS and AUTH as ``relay_tls`` and
  ``relay_auth_file`` say.
* ``smtp:host:port``: a domain's ``transport`` (``smtp:[host]:port``): that host and port,
  no MX lookup.

The answer is data (`Plan`); looking up each host's addresses is the client's job, one
host at a time, since it needs the AD bit of each answer for DANE.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass

from pymail.config.schema import Config, split_hostport
from pymail.dns.model import DnsError, DnsTemporaryError, Resolver, mx_records, normalise_name

__all__ = ["MAX_MX_HOSTS", "Hop", "Plan", "plan_route"]

#: Hosts tried per attempt (Postfix's smtp_mx_address_limit is 5).
MAX_MX_HOSTS = 5
SMTP_PORT = 25


@dataclass(frozen=True, slots=True)
class Hop:
    """One host to try."""

    name: str  #: host name (lower case, no dot) or an IP address literal
    port: int = SMTP_PORT
    mx: bool = True  #: from the domain's MX (MTA-STS and DANE apply) or a configured next hop
    authenticated: bool = False  #: the MX answer was DNSSEC-validated (AD; DANE needs it)
    relay: bool = False  #: the smarthost: relay_tls and relay_auth_file apply

    @property
    def is_address(self) -> bool:
        try:
            ipaddress.ip_address(self.name)
        except ValueError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Plan:
    """The hosts to try, or why there are none."""

    hops: tuple[Hop, ...] = ()
    #: when `hops` is empty: (code, enhanced code, text, permanent)
    failure: tuple[int, str, str, bool] | None = None


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


async def plan_route(resolver: Resolver, config: Config, domain: str, route: str, *,
                     rng: random.Random | None = None) -> Plan:
    """The `Plan` for recipients of `domain` queued with `route` (module docstring)."""
    if route == "relay":
        relay = config.delivery.relay_host
        if relay is None:  # queued while a relay was configured, and it no longer is
            return await plan_route(resolver, config, domain, "mx", rng=rng)
        host, port = split_hostport(relay)
        return Plan((Hop(_unbracket(host).lower(), port, mx=False, relay=True),))
    if route.startswith("smtp:"):
        host, _, port = route[5:].rpartition(":")
        if not host or not port.isdigit():
            return Plan(failure=(0, "4.3.5", f"invalid route {route!r} in the queue", False))
        return Plan((Hop(_unbracket(host).lower(), int(port), mx=False),))
    if route != "mx":
        return Plan(failure=(0, "4.3.5", f"unknown route {route!r} in the queue", False))
    return await _mx_plan(resolver, domain, rng or random.Random())


async def _mx_plan(resolver: Resolver, domain: str, rng: random.Random) -> Plan:
    try:
        name = normalise_name(domain)
        answer = await mx_records(resolver, name)
    except DnsTemporaryError as exc:
        return Plan(failure=(0, "4.4.3", f"DNS lookup of the MX of {domain} failed: {exc}", False))
    except DnsError as exc:
        return Plan(failure=(0, "5.1.2", f"bad destination domain {domain!r}: {exc}", True))
    if not answer.exists:
        return Plan(failure=(0, "5.1.2", f"Host or domain name not found: {domain} does not "
                             "exist (NXDOMAIN)", True))
    records = answer.records
    if not records:  # RFC 5321 5.1: no MX, the domain is its own implicit MX
        return Plan((Hop(name, authenticated=answer.authenticated),))
    if any(record.host == "" for record in records):
        # RFC 7505 section 3: a null MX (alone, by 3; with others it is a
        # misconfiguration, and "." is never a host to connect to either way)
        return Plan(failure=(556, "5.1.10", f"{domain} does not accept mail (null MX, "
                             "RFC 7505)", True))
    hops: list[Hop] = []
    preference: int | None = None
    group: list[Hop] = []
    for record in records:  # sorted by preference
        if record.preference != preference and group:
            rng.shuffle(group)
            hops.extend(group)
            group = []
        preference = record.preference
        group.append(Hop(record.host, authenticated=answer.authenticated))
    rng.shuffle(group)
    hops.extend(group)
    # One host listed twice (at two preferences) is tried once, at its best.
    seen: set[str] = set()
    unique = [hop for hop in hops if not (hop.name in seen or seen.add(hop.name))]
    return Plan(tuple(unique[:MAX_MX_HOSTS]))
