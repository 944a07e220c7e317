"""`check_domain`: each record `pymail.ops.dnsrecords.expected_records` says a domain
needs, looked up through pymail's resolver and judged by what it means, not by string
equality (the data behind `pymail dns check` and the DNS part of `pymail doctor`).

What "right" means, per record:

* A/AAAA of the host: our address among the answers (CNAMEs followed).
* CNAME (mta-sts., autoconfig., autodiscover.): the name ends at our host name, or has
  an address of ours itself.
* MX: our host among the exchanges, or an exchange resolving to one of our addresses.
* SPF: exactly one ``v=spf1`` record (RFC 7208 section 3.2: two are permerror), and
  check_host() (pymail.checks.spf, the MX's own SPF code) gives ``pass`` for each of our
  addresses; a lookup-limit permerror (section 4.6.4) is named.
* DKIM: one key record whose ``p=`` is our public key (the TXT strings are joined
  before parsing, RFC 6376 section 3.6.2.2); another key is "not ours".
* DMARC: exactly one ``v=DMARC1`` record with a valid ``p=`` (RFC 7489 section 6.6.3).
* MTA-STS: exactly one ``v=STSv1`` record whose ``id`` is the current policy's (RFC 8461
  section 3.1: a sender that sees an old id keeps its cached old policy).
* TLS-RPT: exactly one ``v=TLSRPTv1`` record with ``rua=`` (RFC 8460 section 3).
* SRV: our host (or an address of ours) and the configured port; for a service that is
  off, nothing or the "." target (RFC 6186 section 3.4).
* PTR: the reverse name names our host AND our host resolves back to the address
  (forward-confirmed reverse DNS, RFC 8601 section 3 "iprev").

Invariants: one `RecordCheck` per expected record, in the same order; a DNS failure
(SERVFAIL, timeout) is ``error``, never ``missing``; nothing raises for what DNS says.
The lookups run concurrently.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pymail.checks.spf import check_spf
from pymail.delivery.dkimkeys import domain_keys
from pymail.dns.model import (
    DnsError,
    DnsTemporaryError,
    Resolver,
    addresses,
    mx_records,
    normalise_name,
)
from pymail.dns.resolver import reverse_name
from pymail.ops.dnsrecords import expected_records, public_addresses, zone_line
from pymail.ops.model import Record, RecordCheck
from pymail.ops.mtasts import policy_id

if TYPE_CHECKING:
    from pymail.config.schema import Config
    from pymail.delivery.dkimkeys import DkimKey

__all__ = ["check_domain", "check_records"]

SPF_TIMEOUT = 20.0  #: seconds for one check_host() (RFC 7208 section 4.6.4 allows a bound)


@dataclass
class _Context:
    config: "Config"
    domain: str
    resolver: Resolver
    host: str
    ours: set[str]  #: our public addresses (normalised); may be empty
    keys: dict[str, "DkimKey"]  #: selector -> key
    reverse: dict[str, str] = field(default_factory=dict)  #: reverse name -> address
    _host_addresses: "asyncio.Task[set[str]] | None" = None

    async def our_addresses(self) -> set[str]:
        """Our public addresses, else what our host name resolves to (shared lookup)."""
        if self.ours:
            return self.ours
        if self._host_addresses is None:
            self._host_addresses = asyncio.ensure_future(self._resolve(self.host))
        return await self._host_addresses

    async def _resolve(self, name: str) -> set[str]:
        try:
            found, _ = await addresses(self.resolver, name)
        except DnsError:
            return set()
        return {_ip(a) for a in found}


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 section 3.2, RFC 7489 section 6.4, RFC 8461 section
    3.1): names and values stripped of surrounding whitespace; the first of a name wins."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, eq, value = part.partition("=")
        if eq:
            tags.setdefault(name.strip(), value.strip())
    return tags


def _versioned(texts: list[str], version: str) -> list[str]:
    """The records that start with ``v=VERSION`` (then ``;``, space or the end)."""
    pattern = re.compile(rf"^v\s*=\s*{re.escape(version)}\s*(;|\s|$)")
    return [t for t in texts if pattern.match(t)]


def _missing(record: Record, detail: str, fix: str, found: tuple[str, ...] = ()) -> RecordCheck:
    return RecordCheck(record, "missing", found, detail, fix)


def _publish_fix(record: Record) -> str:
    return f"publish {zone_line(record)}"


def _replace_fix(record: Record) -> str:
    return f"replace it with {zone_line(record)}"


# ----------------------------------------------------------------------- per record type


async def _check_address(ctx: _Context, record: Record) -> RecordCheck:
    answer = await ctx.resolver.query(record.name, record.rtype)
    found = tuple(_ip(a) for a in answer.records)
    via = (f" (through the CNAME to {answer.canonical_name})"
           if answer.canonical_name and answer.canonical_name != record.name else "")
    if not found:
        what = "does not exist" if not answer.exists else f"has no {record.rtype} record"
        return _missing(record, f"{record.name} {what}{via}", _publish_fix(record))
    if _ip(record.value) in found:
        others = [a for a in found if a != _ip(record.value)]
        extra = f"; also {', '.join(others)}" if others else ""
        return RecordCheck(record, "ok", found, f"{record.value}{via}{extra}")
    return RecordCheck(record, "wrong", found,
                       f"{record.name} has {', '.join(found)}{via}, not {record.value}",
                       f"set the {record.rtype} record of {record.name} to {record.value}")


async def _check_alias(ctx: _Context, record: Record) -> RecordCheck:
    target = record.value.rstrip(".")
    v4, v6 = await asyncio.gather(ctx.resolver.query(record.name, "A"),
                                  ctx.resolver.query(record.name, "AAAA"))
    canonical = v4.canonical_name or record.name
    found_addresses = tuple(_ip(a) for a in v4.records + v6.records)
    found = ((f"CNAME {canonical}.",) if canonical != record.name else ()) + found_addresses
    if canonical == target:
        return RecordCheck(record, "ok", found, f"CNAME to {target}")
    if not found_addresses:
        if canonical != record.name:
            return RecordCheck(record, "wrong", found,
                               f"a CNAME to {canonical}, which has no address",
                               _replace_fix(record))
        what = "does not exist" if not v4.exists else "has no address"
        return _missing(record, f"{record.name} {what}", _publish_fix(record))
    ours = await ctx.our_addresses()
    if ours & set(found_addresses):
        return RecordCheck(record, "ok", found,
                           f"resolves to this host's address ({', '.join(found_addresses)})")
    where = f"a CNAME to {canonical}, " if canonical != record.name else ""
    return RecordCheck(record, "wrong", found,
                       f"{where}resolves to {', '.join(found_addresses)}, not to {ctx.host}",
                       _replace_fix(record))


async def _check_mx(ctx: _Context, record: Record) -> RecordCheck:
    want = record.value.split()[-1].rstrip(".")
    answer = await mx_records(ctx.resolver, record.name)
    found = tuple(f"{mx.preference} {mx.host or ''}." for mx in answer.records)
    if not answer.records:
        what = "does not exist" if not answer.exists else "has no MX record"
        return _missing(record, f"{record.name} {what}: mail goes to its A record, if any "
                        "(RFC 5321 section 5.1)", _publish_fix(record))
    hosts = [mx.host for mx in answer.records]
    if hosts == [""]:
        return RecordCheck(record, "wrong", found,
                           "a null MX: the domain says it accepts no mail (RFC 7505)",
                           _replace_fix(record))
    if want in hosts:
        return RecordCheck(record, "ok", found, f"{want} is an exchange")
    ours = await ctx.our_addresses()
    resolved = await asyncio.gather(*(ctx._resolve(h) for h in hosts if h))
    for host, addrs in zip([h for h in hosts if h], resolved):
        if ours & addrs:
            return RecordCheck(record, "ok", found,
                               f"exchange {host} resolves to this host's address "
                               f"({', '.join(sorted(ours & addrs))})")
    return RecordCheck(record, "wrong", found,
                       f"the MX points at {', '.join(h or '.' for h in hosts)}, not at {want} "
                       "(mail for the domain does not come here)",
                       _replace_fix(record))


async def _check_spf(ctx: _Context, record: Record) -> RecordCheck:
    answer = await ctx.resolver.query(record.name, "TXT")
    texts = [_text(t) for t in answer.records]
    spf = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if not spf:
        return _missing(record, f"no SPF record (v=spf1) at {record.name}",
                        _publish_fix(record), tuple(texts))
    found = tuple(spf)
    if len(spf) > 1:
        return RecordCheck(record, "wrong", found,
                           f"{len(spf)} SPF records: receivers treat that as permerror "
                           "(RFC 7208 section 3.2)",
                           f"merge them into one: {zone_line(record)}")
    if not ctx.ours:
        return RecordCheck(record, "info", found,
                           "not evaluated: no public address of this host is known "
                           "(set [publish] ipv4)")
    sender = f"postmaster@{ctx.domain}"
    results = await asyncio.gather(*(check_spf(ctx.resolver, ip=ip, sender=sender, helo=ctx.host,
                                               timeout=SPF_TIMEOUT) for ip in sorted(ctx.ours)))
    for ip, result in zip(sorted(ctx.ours), results):
        if result.result == "temperror":
            return RecordCheck(record, "error", found,
                               f"SPF for {ip} could not be evaluated: {result.reason}",
                               "check that the names the record refers to answer; try again")
        if result.result == "permerror":
            return RecordCheck(record, "wrong", found, f"permerror: {result.reason}",
                               f"fix the record (RFC 7208 section 4.6.4: at most 10 DNS "
                               f"lookups); this host needs: {zone_line(record)}")
        if result.result != "pass":
            term = "ip6" if ":" in ip else "ip4"
            return RecordCheck(record, "wrong", found,
                               f"{ip} is not authorised: SPF gives {result.result} for mail "
                               f"from {ctx.domain} sent from {ip}",
                               f"add {term}:{ip} (or mx) to the record: {zone_line(record)}")
    return RecordCheck(record, "ok", found,
                       f"pass for {', '.join(sorted(ctx.ours))}")


async def _check_dkim(ctx: _Context, record: Record) -> RecordCheck:
    selector = record.name.split("._domainkey.", 1)[0]
    key = ctx.keys[selector]
    answer = await ctx.resolver.query(record.name, "TXT")
    texts = tuple(_text(t) for t in answer.records)
    if not texts:
        return _missing(record, f"no key record at {record.name}: signatures with selector "
                        f"{selector} do not verify", _publish_fix(record))
    if len(texts) > 1:
        return RecordCheck(record, "wrong", texts,
                           f"{len(texts)} TXT records at {record.name}: verifiers may take "
                           "any (RFC 6376 section 3.6.2.2)",
                           f"keep only one: {zone_line(record)}")
    tags = _tags(texts[0])
    if tags.get("v", "DKIM1") != "DKIM1" or "p" not in tags:
        return RecordCheck(record, "wrong", texts, "not a DKIM key record (no v=DKIM1 / p=)",
                           _replace_fix(record))
    published = "".join(tags["p"].split())
    if not published:
        return RecordCheck(record, "wrong", texts,
                           "the key is revoked (empty p=, RFC 6376 section 3.6.1)",
                           _replace_fix(record))
    algorithm = tags.get("k", "rsa").strip().lower()
    if algorithm != key.algorithm:
        return RecordCheck(record, "wrong", texts,
                           f"k={algorithm}, but the key of selector {selector} is {key.algorithm}",
                           _replace_fix(record))
    try:
        same = base64.b64decode(published, validate=True) == base64.b64decode(key.public_b64)
    except (binascii.Error, ValueError):
        return RecordCheck(record, "wrong", texts, "p= is not valid base64",
                           _replace_fix(record))
    if not same:
        return RecordCheck(record, "wrong", texts,
                           f"the key is not ours: p= is not the public key of {key.path}",
                           _replace_fix(record))
    return RecordCheck(record, "ok", texts, f"the public key of {key.path.name}")


async def _check_dmarc(ctx: _Context, record: Record) -> RecordCheck:
    answer = await ctx.resolver.query(record.name, "TXT")
    texts = [_text(t) for t in answer.records]
    dmarc = tuple(_versioned(texts, "DMARC1"))
    if not dmarc:
        return _missing(record, f"no DMARC record (v=DMARC1) at {record.name}",
                        _publish_fix(record), tuple(texts))
    if len(dmarc) > 1:
        return RecordCheck(record, "wrong", dmarc,
                           f"{len(dmarc)} DMARC records: receivers then apply no policy "
                           "(RFC 7489 section 6.6.3)", f"keep only one: {zone_line(record)}")
    policy = _tags(dmarc[0]).get("p", "")
    if policy.lower() not in ("none", "quarantine", "reject"):
        return RecordCheck(record, "wrong", dmarc,
                           f"p={policy or '(none given)'} is not a DMARC policy (none, "
                           "quarantine, reject; RFC 7489 section 6.3)",
                           _replace_fix(record))
    return RecordCheck(record, "ok", dmarc, f"p={policy}")


async def _check_mta_sts(ctx: _Context, record: Record) -> RecordCheck:
    answer = await ctx.resolver.query(record.name, "TXT")
    texts = [_text(t) for t in answer.records]
    sts = tuple(_versioned(texts, "STSv1"))
    if not sts:
        return _missing(record, f"no MTA-STS record (v=STSv1) at {record.name}",
                        _publish_fix(record), tuple(texts))
    if len(sts) > 1:
        return RecordCheck(record, "wrong", sts,
                           f"{len(sts)} MTA-STS records: senders then assume no policy "
                           "(RFC 8461 section 3.1)", f"keep only one: {zone_line(record)}")
    found_id = _tags(sts[0]).get("id", "")
    current = policy_id(ctx.config)
    if found_id != current:
        return RecordCheck(record, "wrong", sts,
                           f"id={found_id or '(none)'} is not the current policy's id {current}: "
                           "senders keep the old policy (RFC 8461 section 3.1)",
                           _replace_fix(record))
    return RecordCheck(record, "ok", sts, f"id={current}")


async def _check_tls_rpt(ctx: _Context, record: Record) -> RecordCheck:
    answer = await ctx.resolver.query(record.name, "TXT")
    texts = [_text(t) for t in answer.records]
    rpt = tuple(_versioned(texts, "TLSRPTv1"))
    if not rpt:
        return _missing(record, f"no TLS-RPT record (v=TLSRPTv1) at {record.name}",
                        _publish_fix(record), tuple(texts))
    if len(rpt) > 1:
        return RecordCheck(record, "wrong", rpt,
                           f"{len(rpt)} TLS-RPT records: senders then report nothing "
                           "(RFC 8460 section 3)", f"keep only one: {zone_line(record)}")
    rua = _tags(rpt[0]).get("rua", "")
    if not rua:
        return RecordCheck(record, "wrong", rpt, "no rua= (where reports go, RFC 8460 section 3)",
                           _replace_fix(record))
    return RecordCheck(record, "ok", rpt, f"rua={rua}")


async def _check_srv(ctx: _Context, record: Record) -> RecordCheck:
    _priority, _weight, port_text, target = record.value.split()
    port, target = int(port_text), target.rstrip(".")
    answer = await ctx.resolver.query(record.name, "SRV")
    found = tuple(f"{r.priority} {r.weight} {r.port} {r.target or ''}." for r in answer.records)
    offered = [r for r in answer.records if r.target]
    if not target:  # the service is off here
        if not answer.records:
            return _missing(record, "not published (the service is off here; the \".\" form "
                            "says so to clients, RFC 6186 section 3.4)", _publish_fix(record))
        if not offered:
            return RecordCheck(record, "ok", found, "says the service is not offered")
        return RecordCheck(record, "wrong", found,
                           "advertises a service that is off here", _replace_fix(record))
    if not answer.records:
        return _missing(record, "not published: clients cannot find the service",
                        _publish_fix(record))
    if not offered:
        return RecordCheck(record, "wrong", found, "says the service is not offered (\".\")",
                           _replace_fix(record))
    ours = await ctx.our_addresses()
    for r in offered:
        if r.port != port:
            continue
        if r.target == target or (ours & await ctx._resolve(r.target)):
            return RecordCheck(record, "ok", found, f"{r.target} port {r.port}")
    return RecordCheck(record, "wrong", found,
                       f"points at {', '.join(f'{r.target} port {r.port}' for r in offered)}, "
                       f"not {target} port {port}", _replace_fix(record))


async def _check_ptr(ctx: _Context, record: Record) -> RecordCheck:
    ip = ctx.reverse.get(record.name, "")
    provider = (f"ask your ISP/hosting provider (who owns {ip}) to set its PTR to "
                f"{ctx.host}, and keep the A/AAAA record of {ctx.host} at {ip}")
    answer = await ctx.resolver.query(record.name, "PTR")
    names = [n for n in answer.records if n]
    found = tuple(f"{n}." for n in names)
    if not names:
        return _missing(record, f"{ip} has no reverse DNS (PTR): many receivers refuse such "
                        "mail", provider)
    if ctx.host in names:
        back = await _resolve_strict(ctx, ctx.host)
        if ip in back:
            return RecordCheck(record, "ok", found, f"{ip} -> {ctx.host} -> {ip} (FCrDNS)")
        return RecordCheck(record, "wrong", found,
                           f"the PTR names {ctx.host}, but {ctx.host} resolves to "
                           f"{', '.join(sorted(back)) or 'no address'}, not {ip}: no "
                           "forward-confirmed reverse DNS", f"set the A/AAAA record of "
                           f"{ctx.host} to {ip}")
    confirmed = [n for n, back in zip(names, await asyncio.gather(
        *(_resolve_strict(ctx, n) for n in names))) if ip in back]
    fcrdns = (f"{', '.join(confirmed)} resolves back to {ip}" if confirmed else
              "and no name resolves back to it: no forward-confirmed reverse DNS")
    return RecordCheck(record, "wrong", found,
                       f"the PTR of {ip} names {', '.join(names)}, not {ctx.host} ({fcrdns})",
                       provider)


async def _resolve_strict(ctx: _Context, name: str) -> set[str]:
    """Addresses of `name`; a DNS failure raises (an error, not a wrong answer)."""
    found, _ = await addresses(ctx.resolver, name)
    return {_ip(a) for a in found}


# ----------------------------------------------------------------------------- entry


async def _check(ctx: _Context, record: Record) -> RecordCheck:
    try:
        if record.rtype in ("A", "AAAA"):
            return await _check_address(ctx, record)
        if record.rtype == "CNAME":
            return await _check_alias(ctx, record)
        if record.rtype == "MX":
            return await _check_mx(ctx, record)
        if record.rtype == "SRV":
            return await _check_srv(ctx, record)
        if record.rtype == "PTR":
            return await _check_ptr(ctx, record)
        if record.rtype == "TXT":
            if record.name == ctx.domain:
                return await _check_spf(ctx, record)
            if "._domainkey." in record.name:
                return await _check_dkim(ctx, record)
            if record.name.startswith("_dmarc."):
                return await _check_dmarc(ctx, record)
            if record.name.startswith("_mta-sts."):
                return await _check_mta_sts(ctx, record)
            if record.name.startswith("_smtp._tls."):
                return await _check_tls_rpt(ctx, record)
        return RecordCheck(record, "info", detail="pymail does not check this record")
    except DnsTemporaryError as e:
        return RecordCheck(record, "error", detail=f"DNS gave no answer: {e}",
                           fix="check that the zone's nameservers answer (and [dns] "
                           "nameservers), then try again")
    except DnsError as e:
        return RecordCheck(record, "error", detail=f"cannot ask DNS: {e}")


async def check_records(config: "Config", domain: str, resolver: Resolver,
                        records: list[Record], dkim_keys: list["DkimKey"]) -> list[RecordCheck]:
    """Check the given `records` (from `expected_records` with `dkim_keys`)."""
    v4, v6 = public_addresses(config)
    ours = {_ip(a) for a in v4 + v6}
    ctx = _Context(config, domain, resolver, config.server.hostname.lower().rstrip("."), ours,
                   {k.selector: k for k in dkim_keys if k.error is None},
                   {reverse_name(ip): ip for ip in ours})
    return list(await asyncio.gather(*(_check(ctx, r) for r in records)))


async def check_domain(config: "Config", domain: str, resolver: Resolver) -> list[RecordCheck]:
    """One `RecordCheck` per record `expected_records` gives for `domain` (its DKIM keys
    from ``[dkim] key_dir``), in that order; see the module docstring."""
    domain = normalise_name(domain)
    keys = await asyncio.to_thread(domain_keys, config.dkim_key_dir, domain)
    records = expected_records(config, domain, keys)
    return await check_records(config, domain, resolver, records, keys)
