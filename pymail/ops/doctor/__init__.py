"""`pymail doctor`: the seed's evening checkpoints, run by pymail against itself.

Sections, in order (each module's docstring says what "right" means):

* setup — the directory answers and names the domains to check;
* host (`names`) — HELO name, reverse DNS of each public address;
* dns (`names`) — every record `pymail dns check` judges, per domain;
* dkim (`message`) — a usable key per domain, a signed message verifying through DNS;
* listeners (`listeners`) — each [listen] address greets, TLS valid and 1.2+, logins;
* relay (`relay`) — the relay vectors refused; relay domains really ours to relay;
* deliverability (`message`) — SPF/DKIM/DMARC of a realistic message from our public
  address, Rspamd's and SpamAssassin's scores: the score out of 10.

It runs beside the daemon (it reads the same config and directory, and talks to the
listeners over real connections) and changes nothing: no message is queued or stored,
the relay probe never sends DATA, a POP3 login QUITs without DELE.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from pymail.ops.doctor.listeners import Account
from pymail.ops.doctor.report import Check, Report

__all__ = ["Account", "Check", "Options", "Report", "run_doctor"]

DIRECTORY_TIMEOUT = 15.0


@dataclass
class Options:
    """What the command line chose.  `domains` empty: every active local domain."""

    domains: list[str] = field(default_factory=list)
    cafile: Path | None = None
    account: Account | None = None
    source: str | None = None  #: local address the relay probe connects from
    sender: str | None = None  #: From of the deliverability message
    timeout: float = 10.0


async def _directory(config):  # noqa: ANN001, ANN202
    from pymail.app import prepare_storage

    store = await prepare_storage(config, check_blobs=False)
    try:
        return await store.directory.list_domains()
    finally:
        await store.close()


async def _our_addresses(report: Report, config, resolver) -> list[str]:  # noqa: ANN001
    from pymail.dns.model import DnsError, addresses
    from pymail.ops.dnsrecords import public_addresses

    v4, v6 = public_addresses(config)
    if v4 or v6:
        return v4 + v6
    try:
        found, _ = await addresses(resolver, config.server.hostname)
    except DnsError:
        found = []
    if found:
        report.add("setup", "public address", "warn",
                   f"not configured; using what {config.server.hostname} resolves to: "
                   f"{', '.join(found)}", "set [publish] ipv4 (and ipv6) to this host's public "
                   "addresses")
    return found


async def run_doctor(config, options: Options) -> Report:  # noqa: ANN001 - a Config
    """Every check, in section order; never raises for what it finds."""
    from pymail.checks.iprev import check_iprev
    from pymail.delivery.router import is_local_transport
    from pymail.dns import resolver_from_config
    from pymail.ops.doctor.listeners import check_listeners
    from pymail.ops.doctor.message import check_deliverability, check_dkim
    from pymail.ops.doctor.names import check_dns, check_host
    from pymail.ops.doctor.relay import check_relay

    report = Report(config.server.hostname)
    resolver = resolver_from_config(config.dns)
    try:
        rows = await asyncio.wait_for(_directory(config), DIRECTORY_TIMEOUT)
    except Exception as e:  # noqa: BLE001 - a failed check, named
        rows = []
        report.add("setup", "directory", "fail", f"cannot be read: {e}",
                   "check [storage] and that the database is up")
    else:
        local = [d.name for d in rows if d.is_active and is_local_transport(d.transport)]
        if rows:
            report.add("setup", "directory", "ok", f"{len(local)} local domain(s): {', '.join(local)}")
        else:
            report.add("setup", "directory", "fail", "no domain yet",
                       "'pymail domain add example.com', then 'pymail user add ...'")
    domains = [d.lower().rstrip(".") for d in options.domains] or [
        d.name for d in rows if d.is_active and is_local_transport(d.transport)]

    ours = await _our_addresses(report, config, resolver)
    await check_host(report, config, resolver, ours)
    for domain in domains:
        await check_dns(report, config, domain, resolver)
        await check_dkim(report, config, domain, resolver)
    await check_listeners(report, config, cafile=options.cafile, account=options.account,
                          timeout=options.timeout)
    await check_relay(report, config, rows, resolver, source=options.source, ours=set(ours),
                      timeout=options.timeout)
    sender = options.sender or (options.account.address if options.account else None) or (
        f"postmaster@{domains[0]}" if domains else None)
    if sender is None:
        report.add("deliverability", "test message", "skip", "no domain to send from")
        return report
    ip = ours[0] if ours else None
    ptr_name = ""
    if ip is not None:
        iprev = await check_iprev(resolver, ip)
        ptr_name = iprev.name if iprev.result == "pass" else ""
    await check_deliverability(report, config, sender, resolver, ip, ptr_name)
    return report
