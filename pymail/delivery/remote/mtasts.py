"""MTA-STS (RFC 8461): the domain's TXT record, its HTTPS policy, and the cache.

Sans-IO parsing (`parse_txt`, `parse_policy`, `mx_matches`) and the fetch:

* the TXT record ``_mta-sts.DOMAIN`` is ``v=STSv1; id=...`` (3.1); other TXT records
  there are ignored, and more than one STSv1 record means no policy;
* the policy is fetched from ``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` (3.3)
  with the certificate verified against the system's CA store (Python's default
  verify paths, which ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` override), no redirects
  (3.3: "HTTP 3xx redirects MUST NOT be followed"), at most `MAX_POLICY` octets, within
  `FETCH_TIMEOUT`; the host name is resolved through pymail's resolver, never the
  system's;
* the policy text (3.2): ``version: STSv1``, ``mode: enforce|testing|none``, one or more
  ``mx:`` patterns, ``max_age`` (seconds, at most 31557600).

`PolicyCache` keeps each domain's last valid policy until its max_age runs out and
refetches when the TXT id changes (5.1).  A TXT record that disappears or a failed
fetch does not end a cached, unexpired policy: that is what protects against an
attacker who can strip DNS answers (RFC 8461 section 10.2).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import re
import socket
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver

from pymail.dns.model import DnsError, Resolver, addresses

__all__ = ["MAX_POLICY", "Policy", "PolicyCache", "fetch_policy", "mx_matches", "parse_policy",
           "parse_txt"]

log = logging.getLogger("pymail.delivery")

MAX_POLICY = 64 * 1024  #: RFC 8461 3.3 suggests 64 KiB as a reasonable limit
FETCH_TIMEOUT = 10.0
MAX_AGE_LIMIT = 31_557_600  #: RFC 8461 3.2: "up to 31557600" (about one year)
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


@dataclass(frozen=True, slots=True)
class Policy:
    mode: str  #: "enforce", "testing" or "none"
    mx: tuple[str, ...]  #: patterns, lower case
    max_age: int  #: seconds


def parse_txt(records: list[bytes]) -> str | None:
    """The policy id of the one ``v=STSv1`` TXT record (RFC 8461 3.1), else None."""
    ids = []
    for raw in records:
        text = raw.decode("ascii", "replace").strip()
        fields = [f.strip() for f in text.split(";") if f.strip()]
        if not fields or fields[0].replace(" ", "") != "v=STSv1":
            continue
        found = None
        for item in fields[1:]:
            key, _, value = item.partition("=")
            if key.strip() == "id" and _ID.match(value.strip()):
                found = value.strip()
        ids.append(found)
    if len(ids) != 1:
        return None
    return ids[0]


def parse_policy(text: str) -> Policy:
    """The policy (RFC 8461 3.2); ValueError naming what is wrong."""
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"not a key: value line: {line[:80]!r}")
        key, value = key.strip().lower(), value.strip()
        if key == "mx":
            mx.append(value.lower().rstrip("."))
        elif key not in fields:  # 3.2: the first occurrence of a key counts
            fields[key] = value
    if fields.get("version") != "STSv1":
        raise ValueError("version is not STSv1")
    mode = fields.get("mode", "")
    if mode not in ("enforce", "testing", "none"):
        raise ValueError(f"unknown mode {mode!r}")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise ValueError(f"invalid max_age {age!r}")
    if mode != "none" and not mx:
        raise ValueError("no mx patterns")
    return Policy(mode, tuple(mx), min(int(age), MAX_AGE_LIMIT))


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 4.1: a pattern is a host name, or ``*.`` followed by a domain matching
    exactly one more label on the left."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


class _PymailResolver(AbstractResolver):
    """aiohttp's host lookups through pymail's resolver (the tests' DNS in tests)."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET):
        try:
            found, _ = await addresses(self.resolver, host)
        except DnsError as exc:
            raise OSError(f"cannot resolve {host}: {exc}") from None
        if not found:
            raise OSError(f"{host} has no address")
        return [{"hostname": host, "host": ip, "port": port,
                 "family": socket.AF_INET6 if ":" in ip else socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST} for ip in found]

    async def close(self) -> None:
        return None


async def fetch_policy(domain: str, resolver: Resolver, context) -> Policy:
    """Fetch and parse the policy of `domain` (module docstring); raises OSError,
    aiohttp.ClientError, asyncio.TimeoutError or ValueError."""
    url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    connector = aiohttp.TCPConnector(resolver=_PymailResolver(resolver), ssl=context,
                                     use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=False) as http:
        async with http.get(url, allow_redirects=False) as response:
            if response.status != 200:
                raise ValueError(f"{url} answered HTTP {response.status}")
            if response.content_type != "text/plain":  # 3.2: media type "text/plain"
                raise ValueError(f"{url} is {response.content_type}, not text/plain")
            body = await response.content.read(MAX_POLICY + 1)
            if len(body) > MAX_POLICY:
                raise ValueError(f"{url} is larger than {MAX_POLICY} octets")
    return parse_policy(body.decode("utf-8", "replace"))


@dataclass(slots=True)
class _Cached:
    policy_id: str
    policy: Policy
    expires: _dt.datetime


class PolicyCache:
    """Each domain's last valid policy (module docstring)."""

    def __init__(self) -> None:
        self._entries: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def lock(self, domain: str) -> asyncio.Lock:
        return self._locks.setdefault(domain, asyncio.Lock())

    def get(self, domain: str, now: _dt.datetime) -> _Cached | None:
        entry = self._entries.get(domain)
        if entry is not None and entry.expires <= now:
            del self._entries[domain]
            return None
        return entry

    def put(self, domain: str, policy_id: str, policy: Policy, now: _dt.datetime) -> None:
        self._entries[domain] = _Cached(policy_id, policy,
                                        now + _dt.timedelta(seconds=policy.max_age))
