"""SPF (RFC 7208): is the client address allowed to send mail for the sender's domain?

`check_spf` runs pyspf's check_host() in a worker thread with its DNS bridged to
pymail's resolver (pymail.checks.dnsbridge), and returns an `SpfResult`, never raises.

The identity (RFC 7208 section 2.4, 2.3):
* MAIL FROM ``local@domain``: the "mailfrom" identity, check_host(ip, domain, sender).
* MAIL FROM ``<>`` (a bounce): the "helo" identity, check_host(ip, helo,
  postmaster@helo).  A HELO that is an address literal (``[192.0.2.1]``) or not a
  multi-label domain name gives ``none`` without asking DNS (section 2.3: the check is
  only possible for a fully qualified domain name).

Results and limits:
* RFC 7208 section 4.6.4: more than 10 DNS-querying terms, or more than 2 void lookups
  (NXDOMAIN / no answer), is ``permerror`` (pyspf's strict mode; the limits are pinned
  in pymail.checks.dnsbridge).  A record syntax error is ``permerror`` (section 4.6).
* A domain that is malformed or not multi-label, or has no SPF record, is ``none``
  (section 4.3, 4.5).
* A DNS failure (SERVFAIL, timeout) is ``temperror`` (section 2.6.6), and so is the whole
  check taking longer than `timeout` (section 4.6.4 lets a verifier bound the time).
* pyspf raising anything else (a bug, or a record it chokes on) is ``permerror``: the
  same input would fail the same way again, so a retry would not help.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging

import spf

from pymail.checks.dnsbridge import run_with_resolver
from pymail.checks.results import SpfResult
from pymail.dns.model import Resolver

__all__ = ["check_spf", "spf_domain"]

log = logging.getLogger(__name__)

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")


def spf_domain(name: str) -> str:
    """`name` lower-cased, without a trailing dot, if it can be an SPF domain (RFC 7208
    section 4.3: multi-label, no empty label, labels of at most 63 octets, ASCII or
    IDNA-encodable); "" when it cannot (an address literal, "localhost", "a..b")."""
    name = name.strip().rstrip(".").lower()
    if not name or name.startswith("[") or len(name) > 253:
        return ""
    try:
        ipaddress.ip_address(name)
        return ""  # a bare address given as HELO
    except ValueError:
        pass
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    labels = name.split(".")
    if len(labels) < 2 or any(not label or len(label) > 63 for label in labels):
        return ""
    if any(c.isspace() or c in "@\\\"" for c in name):
        return ""
    return name


def _check_host(ip: str, sender: str, helo: str, timeout: float) -> tuple[str, str]:
    """pyspf's check_host() (in the worker thread; DNS through the bridge)."""
    query = spf.query(i=ip, s=sender, h=helo, strict=True, timeout=timeout,
                      querytime=timeout)
    result, _code, explanation = query.check()
    return result, explanation


async def check_spf(resolver: Resolver, *, ip: str, sender: str, helo: str,
                    timeout: float = 20.0) -> SpfResult:
    """The SPF result for a client at `ip` that said HELO/EHLO `helo` and MAIL FROM
    `sender` ("" for the null reverse-path).  See the module docstring."""
    if sender:
        identity = "mailfrom"
        local, at, domain_part = sender.rpartition("@")
        if not at:
            local, domain_part = "", sender  # RFC 7208 section 4.3: no local part
        subject = sender
        domain = spf_domain(domain_part)
        check_sender = f"{local or 'postmaster'}@{domain}"
    else:
        identity = "helo"
        subject = helo
        domain = spf_domain(helo)
        check_sender = ""  # pyspf checks postmaster@helo for the "helo" identity
    if not domain:
        return SpfResult("none", identity, subject, "",
                         reason=f"{identity} {subject!r} is not a domain SPF can check")
    try:
        client = ipaddress.ip_address(ip.strip().strip("[]").removeprefix("IPv6:"))
    except ValueError:
        return SpfResult("permerror", identity, subject, domain,
                         reason=f"client address {ip!r} is not an IP address")
    try:
        result, explanation = await run_with_resolver(
            resolver, timeout, _check_host, str(client), check_sender, domain, timeout)
    except TimeoutError:
        return SpfResult("temperror", identity, subject, domain,
                         reason=f"SPF check took longer than {timeout:g}s")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a result, never an exception
        log.warning("SPF check of %s for %s raised", domain, ip, exc_info=True)
        return SpfResult("permerror", identity, subject, domain,
                         reason=f"SPF evaluation error: {exc}")
    if result not in RESULTS:
        return SpfResult("permerror", identity, subject, domain,
                         reason=f"unexpected SPF result {result!r}")
    return SpfResult(result, identity, subject, domain,
                     reason=" ".join(str(explanation).split()))
