"""DMARC (RFC 7489): does the RFC5322.From domain's owner vouch for this message, and
what does it ask us to do if not?

* `from_domains`: the domains of all addresses of all From fields (section 6.6.1).
* `organizational_domain`: section 3.2, from the public suffix list the
  ``publicsuffixlist`` package bundles (never fetched at run time).  The *whole* list is
  used, ICANN and private sections: with the ICANN section alone, ``github.io`` would be
  the organisational domain of every ``*.github.io`` site, and any one of them would be
  "aligned" with every other (OUTBOUND.md complaint 7).  OpenDMARC and mox use the full
  list too.
* `check_dmarc`: the policy record (section 6.6.3), identifier alignment (section 3.1),
  the result and the disposition after ``pct`` sampling (section 6.6.4).

Decisions, with their sections:

* Not exactly one From address (no From field, two From fields, one field with two
  addresses, an address without a domain): ``fail`` with domain "" (section 6.6.1 leaves
  it to the receiver; issue 12 asks for fail: a message DMARC cannot be applied to must
  not slip past it).
* Record discovery: TXT ``_dmarc.<From domain>``, and when that has no DMARC record,
  ``_dmarc.<organisational domain>``, where ``sp=`` (else ``p=``) then applies to a From
  domain below it.  TXT records not starting with ``v=DMARC1`` are not DMARC records;
  more than one DMARC record: no DMARC processing (``none``, section 6.6.3 step 3).
* Tags (section 6.3): ``v=DMARC1`` must come first; unknown tags are ignored; an invalid
  or missing ``p=`` (or an invalid ``sp=``) makes the record ``p=none`` when it has a
  syntactically valid ``rua=``, else the record is broken: ``permerror`` (section 6.6.3,
  after step 6; mox reports permerror too).  An invalid ``adkim``/``aspf``/``pct`` value
  is taken as its default (``r``, ``r``, 100).
* Alignment (section 3.1): relaxed = the organisational domains are equal; strict = the
  domains are equal.  DKIM counts for any passing signature; SPF only for the
  ``mailfrom`` identity (section 3.1.2: the HELO identity never aligns) and only when it
  passed.
* ``pass`` when either aligns; else ``fail`` -- except that when a signature or the SPF
  check that *could* have aligned ended in ``temperror``, the result is ``temperror``
  (a DNS timeout is never turned into a DMARC fail: OUTBOUND.md complaint 6).  A DNS
  failure looking up the record itself is ``temperror``.
* Disposition (section 6.6.4): on ``fail``, the applicable policy, unless ``pct`` sampling
  leaves the message out: then the next lower one (reject -> quarantine, quarantine ->
  none).  ``pass``, ``none``, ``temperror`` and ``permerror`` have disposition none.

Invariant: `check_dmarc` returns a `DmarcResult`, never raises (except CancelledError).
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import logging
import random as _random
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

from pymail.checks.results import DkimResult, DmarcResult, SpfResult
from pymail.dns.model import DnsError, DnsTemporaryError, Resolver, normalise_name

__all__ = [
    "DmarcRecord",
    "check_dmarc",
    "from_domains",
    "organizational_domain",
    "parse_record",
]

log = logging.getLogger(__name__)

POLICIES = ("none", "quarantine", "reject")
#: Section 6.6.4: the disposition when pct= sampling leaves a failing message out.
LOWER = {"reject": "quarantine", "quarantine": "none", "none": "none"}

_psl_lock = threading.Lock()


@functools.cache
def _psl() -> PublicSuffixList:
    # Parsing the bundled list takes ~0.2 s: once, on first use, not at import.
    with _psl_lock:
        return PublicSuffixList(only_icann=False)


def _ascii_domain(domain: str) -> str:
    """Lower case A-labels without a trailing dot; "" when not a valid domain."""
    try:
        return normalise_name(domain)
    except DnsError:
        return ""


def organizational_domain(domain: str) -> str:
    """The organisational domain of `domain` (RFC 7489 section 3.2): the public suffix
    (ICANN and private sections of the list) plus one label.  A domain that is itself a
    public suffix (``co.uk``, ``github.io``) is its own organisational domain; an
    unknown top-level domain counts as a public suffix (``a.b.example.test`` ->
    ``example.test``)."""
    name = _ascii_domain(domain)
    if not name:
        return domain.strip().rstrip(".").lower()
    return _psl().privatesuffix(name) or name


_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # ftext, RFC 5322 section 3.6.8
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _header_fields(header_block: bytes) -> list[tuple[bytes, bytes]]:
    """(name, unfolded value) of each field up to the first empty line (RFC 5322
    section 2.2.3); a line that is neither a field nor a continuation is skipped."""
    fields: list[list[bytes]] = []
    end = _HEADER_END.search(header_block)  # split the header only, not a whole message
    if end:
        header_block = header_block[:end.start()]
    for line in re.split(rb"\r?\n", header_block):
        if not line.strip(b"\r"):
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1][1] += b" " + line.strip()
            continue
        name, colon, value = line.partition(b":")
        if colon and _FIELD_NAME.fullmatch(name):
            fields.append([name, value.strip()])
    return [(name, value) for name, value in fields]


def from_domains(header_block: bytes) -> list[str]:
    """The domain of every address of every From field of `header_block` (the message
    header, or the whole message: parsing stops at the empty line), in order, lower
    case A-labels; "" for an address without a (valid) domain."""
    fields = [value.decode("utf-8", "replace") for name, value in _header_fields(header_block)
              if name.lower() == b"from"]
    domains: list[str] = []
    for field in fields:
        addresses = [addr for _, addr in email.utils.getaddresses([field]) if addr]
        if not addresses:
            domains.append("")  # a From field without a parseable address
        for address in addresses:
            _, at, domain = address.rpartition("@")
            domains.append(_ascii_domain(domain) if at else "")
    return domains


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed DMARC policy record (RFC 7489 section 6.3)."""

    p: str  #: none quarantine reject
    sp: str  #: the subdomain policy; = p when absent
    adkim: str = "r"  #: r (relaxed) or s (strict)
    aspf: str = "r"
    pct: int = 100


_RUA_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S+$")


def parse_record(text: str) -> DmarcRecord | None | str:
    """`DmarcRecord`; None when `text` is not a DMARC record (no leading ``v=DMARC1``);
    a reason (str) when it is one but unusable (see the module docstring)."""
    parts = [part.strip() for part in text.split(";")]
    first = parts[0].replace(" ", "").replace("\t", "")
    if first != "v=DMARC1":  # section 6.3: exactly, and first
        return None
    tags: dict[str, str] = {}
    for part in parts[1:]:
        name, eq, value = part.partition("=")
        name = name.strip().lower()
        if eq and name and name not in tags:
            tags[name] = value.strip()
    p = tags.get("p", "").lower()
    sp = tags.get("sp", p).lower()
    if p not in POLICIES or sp not in POLICIES:
        rua = [uri.strip() for uri in tags.get("rua", "").split(",")]
        if any(_RUA_URI.match(uri) for uri in rua):
            p = sp = "none"  # section 6.6.3: act as if p=none was published
        else:
            return f"invalid DMARC record: p={tags.get('p', '')!r} sp={tags.get('sp', '')!r}"
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    if not 0 <= pct <= 100:
        pct = 100
    return DmarcRecord(p=p, sp=sp, adkim=adkim if adkim in ("r", "s") else "r",
                       aspf=aspf if aspf in ("r", "s") else "r", pct=pct)


async def _lookup(resolver: Resolver, domain: str) -> DmarcRecord | None | str:
    """The DMARC record at _dmarc.`domain`: a record, None (none there), or a reason
    string (unusable / several).  Raises DnsTemporaryError."""
    try:
        answer = await resolver.query(f"_dmarc.{domain}", "TXT")
    except DnsTemporaryError:
        raise
    except DnsError:
        return None  # a name that cannot exist
    records = []
    for txt in answer.records:
        parsed = parse_record(txt.decode("utf-8", "replace"))
        if parsed is not None:
            records.append(parsed)
    if len(records) > 1:
        return "multiple DMARC records"
    return records[0] if records else None


def _aligned(identifier: str, from_domain: str, mode: str) -> bool:
    """Section 3.1: strict = equal; relaxed = same organisational domain."""
    identifier = _ascii_domain(identifier)
    if not identifier:
        return False
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


async def check_dmarc(resolver: Resolver, *, from_header: bytes | list[str],
                      spf: SpfResult | None, dkim: DkimResult, timeout: float = 20.0,
                      random: Callable[[], float] = _random.random) -> DmarcResult:
    """The DMARC result for a message.

    `from_header`: the message header (bytes; the whole message will do) or the From
    domains already extracted with `from_domains`.  `spf`: the SPF result (None when
    SPF was not checked, e.g. authenticated submission).  `random`: a float in [0, 1)
    per call, for ``pct`` sampling (inject a fixed one in tests).
    """
    try:
        domains = from_domains(from_header) if isinstance(from_header, bytes) else list(from_header)
    except Exception as exc:  # noqa: BLE001 - a result, never an exception
        return DmarcResult("fail", "", reason=f"cannot parse From: {exc}")
    if len(domains) != 1:
        how = "no From address" if not domains else f"{len(domains)} From addresses"
        return DmarcResult("fail", "", reason=how)
    from_domain = _ascii_domain(domains[0]) if domains[0] else ""
    if not from_domain:
        return DmarcResult("fail", "", reason="From address without a valid domain")
    org = organizational_domain(from_domain)

    try:
        async with asyncio.timeout(timeout):
            record = await _lookup(resolver, from_domain)
            at_org = False
            if record is None and org != from_domain:
                record = await _lookup(resolver, org)
                at_org = True
    except (DnsTemporaryError, TimeoutError) as exc:
        return DmarcResult("temperror", from_domain, org_domain=org,
                           reason=f"DMARC record lookup failed: {exc or 'timed out'}")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.warning("DMARC lookup for %s raised", from_domain, exc_info=True)
        return DmarcResult("temperror", from_domain, org_domain=org,
                           reason=f"DMARC record lookup failed: {exc}")
    if record is None:
        return DmarcResult("none", from_domain, org_domain=org, reason="no DMARC record")
    if isinstance(record, str):
        result = "none" if record.startswith("multiple") else "permerror"
        return DmarcResult(result, from_domain, org_domain=org, reason=record)

    # Section 6.6.3: the sp= of the organisational domain's record for a subdomain.
    policy = record.sp if at_org and from_domain != org else record.p

    dkim_aligned = any(_aligned(s.domain, from_domain, record.adkim)
                       for s in dkim.signatures if s.result == "pass")
    spf_aligned = (spf is not None and spf.identity == "mailfrom" and spf.result == "pass"
                   and _aligned(_spf_domain(spf), from_domain, record.aspf))
    common = dict(domain=from_domain, policy=policy, spf_aligned=spf_aligned,
                  dkim_aligned=dkim_aligned, org_domain=org)
    if dkim_aligned or spf_aligned:
        return DmarcResult("pass", disposition="none",
                           reason="aligned " + " and ".join(
                               n for n, ok in (("DKIM", dkim_aligned), ("SPF", spf_aligned)) if ok),
                           **common)

    # Would an identifier that could not be checked for a DNS failure have aligned?
    temporary = [f"DKIM d={s.domain}" for s in dkim.signatures
                 if s.result == "temperror" and _aligned(s.domain, from_domain, record.adkim)]
    if (spf is not None and spf.identity == "mailfrom" and spf.result == "temperror"
            and _aligned(_spf_domain(spf), from_domain, record.aspf)):
        temporary.append(f"SPF {_spf_domain(spf)}")
    if temporary:
        return DmarcResult("temperror", disposition="none",
                           reason="temporary error for " + ", ".join(temporary), **common)

    disposition = policy
    reason = "no aligned DKIM or SPF pass"
    if record.pct < 100 and random() * 100 >= record.pct:
        disposition = LOWER[policy]  # section 6.6.4
        reason += f"; not sampled (pct={record.pct})"
    return DmarcResult("fail", disposition=disposition, reason=reason, **common)


def _spf_domain(spf: SpfResult) -> str:
    return spf.domain or spf.subject.rpartition("@")[2]
