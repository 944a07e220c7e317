"""The doctor's DNS checks: every record `pymail dns check` judges, per domain, and the
host's own names — the HELO name (``server.hostname``: a fully qualified name that
resolves to our address, RFC 5321 section 4.1.1.1) and the reverse DNS of each public
address (a PTR naming the host and forward-confirmed, RFC 8601 section 3 "iprev"; many
receivers refuse mail without it).

Deductions are taken where a receiver would hold the record against a message (PTR,
HELO) or where mail cannot arrive at all (MX); SPF, DKIM and DMARC records cost points
in the deliverability test instead, where their effect on a real message is measured —
never twice.
"""

from __future__ import annotations

from pymail.checks.iprev import check_iprev
from pymail.dns.model import DnsError, Resolver, addresses
from pymail.ops.dnscheck import check_domain
from pymail.ops.doctor.report import Report

__all__ = ["check_dns", "check_host"]

PTR_DEDUCTION = 1.0
HELO_DEDUCTION = 0.5
MX_DEDUCTION = 1.0


async def check_dns(report: Report, config, domain: str, resolver: Resolver) -> None:  # noqa: ANN001
    """The `dns check` records of `domain` (the PTR is the host section's)."""
    for c in await check_domain(config, domain, resolver):
        record = c.record
        if record.rtype == "PTR":
            continue
        name = f"{record.rtype} {record.name}"
        if c.status == "ok":
            report.add("dns", name, "ok", c.detail or ", ".join(c.found))
            continue
        if c.status == "info":
            report.add("dns", name, "skip", c.detail)
            continue
        status = "fail" if record.required else "warn"
        found = f" (found: {' | '.join(c.found)})" if c.found and c.status == "wrong" else ""
        fix = c.fix or f"publish: {record.name}. IN {record.rtype} {record.value}"
        deduction = MX_DEDUCTION if record.rtype == "MX" and status == "fail" else 0.0
        report.add("dns", name, status, f"{c.status}: {c.detail}{found}", fix, deduction)


async def check_host(report: Report, config, resolver: Resolver, ours: list[str]) -> None:  # noqa: ANN001
    """HELO name and reverse DNS of each public address in `ours`."""
    hostname = config.server.hostname.lower().rstrip(".")
    if "." not in hostname or hostname in ("localhost", "localhost.localdomain"):
        report.add("host", f"HELO name {hostname}", "fail",
                   "not a fully qualified domain name: receivers refuse such a HELO",
                   "set [server] hostname to the host's public name, e.g. mail.example.com",
                   HELO_DEDUCTION)
    else:
        try:
            found, _ = await addresses(resolver, hostname)
        except DnsError as e:
            found = []
            report.add("host", f"HELO name {hostname}", "fail", f"cannot be looked up: {e}",
                       "check the [dns] resolver", HELO_DEDUCTION)
        else:
            if not found:
                report.add("host", f"HELO name {hostname}", "fail", "has no A/AAAA record",
                           f"publish {hostname}. IN A <this host's public address> "
                           "(see 'pymail dns records')", HELO_DEDUCTION)
            elif ours and not set(ours) & set(found):
                report.add("host", f"HELO name {hostname}", "fail",
                           f"resolves to {', '.join(found)}, not to {', '.join(ours)}",
                           f"point {hostname} at this host", HELO_DEDUCTION)
            else:
                report.add("host", f"HELO name {hostname}", "ok", f"resolves to {', '.join(found)}")
    if not ours:
        report.add("host", "reverse DNS", "skip",
                   "no public address of this host is known: set [publish] ipv4 (and ipv6)")
        return
    for ip in ours:
        result = await check_iprev(resolver, ip)
        if result.result == "pass" and result.name == hostname:
            report.add("host", f"reverse DNS of {ip}", "ok", f"PTR {hostname}, forward-confirmed")
        elif result.result == "pass":
            report.add("host", f"reverse DNS of {ip}", "warn",
                       f"PTR {result.name} (forward-confirmed), not the HELO name {hostname}",
                       f"ask your ISP/hosting provider to set the PTR of {ip} to {hostname}")
        else:
            why = {"fail": f"the PTR names {result.name} and that name does not resolve back"
                   if result.name else "no PTR record",
                   "temperror": "the lookup failed", "permerror": "no usable PTR"}.get(
                       result.result, result.result)
            report.add("host", f"reverse DNS of {ip}", "fail", why,
                       f"ask your ISP/hosting provider to set the PTR of {ip} to {hostname} "
                       f"(and keep {hostname} resolving to {ip})", PTR_DEDUCTION)
