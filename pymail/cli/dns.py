"""`pymail dns records DOMAIN [--format zone|table|json]` and `pymail dns check DOMAIN
[--format text|json]`: the records a domain needs (pymail.ops.dnsrecords) and what DNS
says about them (pymail.ops.dnscheck), for the admin who pastes them into a zone.

Both work without the daemon: they read the config, the DKIM key files and, only to
warn about a domain pymail does not serve, the directory (a missing or unreachable
directory is a warning too: the records can be computed anyway).  Warnings go to
stderr, so that stdout stays a zone fragment or JSON.  `dns check` exits 0 only when
every required record is right; a failure to get an answer from DNS is a failure too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pymail.config.schema import Config

__all__ = ["add_dns_command", "cmd_dns"]

DIRECTORY_TIMEOUT = 10.0  #: seconds to read the directory before giving up (a warning)


def _warn(text: str) -> None:
    print(f"pymail: warning: {text}", file=sys.stderr)


async def _not_served(config: Config, domain: str) -> str | None:
    """A warning when the directory does not list `domain` (or cannot be read)."""
    from pymail.app import prepare_storage

    url = config.index_url
    if url.startswith("sqlite://") and not Path(url.removeprefix("sqlite://")).exists():
        return (f"{domain} is not in the directory (there is none yet: {url}); add it with "
                f"'pymail domain add {domain}'")

    async def lookup() -> str | None:
        store = await prepare_storage(config, check_blobs=False)
        try:
            if await store.directory.get_domain(domain) is None:
                return (f"{domain} is not in the directory: pymail does not serve it yet "
                        f"('pymail domain add {domain}')")
            return None
        finally:
            await store.close()

    try:
        return await asyncio.wait_for(lookup(), DIRECTORY_TIMEOUT)
    except TimeoutError:
        return (f"cannot read the directory to see whether it serves {domain}: no answer "
                f"in {DIRECTORY_TIMEOUT:g}s")
    except Exception as e:  # noqa: BLE001 - a warning, never a failure
        return f"cannot read the directory to see whether it serves {domain}: {e}"


def _status_word(check) -> str:  # noqa: ANN001 - a RecordCheck
    return check.status if check.status in ("ok", "info") else check.status.upper()


def cmd_dns(config: Config, args: argparse.Namespace) -> int:
    from pymail.cli.main import UserError, _domain_name
    from pymail.delivery.dkimkeys import domain_keys
    from pymail.dns import resolver_from_config
    from pymail.ops.dnscheck import check_records
    from pymail.ops.dnsrecords import (
        expected_records,
        public_addresses,
        records_json,
        records_table,
        zone_text,
    )

    domain = _domain_name(args.domain)
    if not domain.isascii():
        raise UserError(f"invalid domain name {args.domain!r}: use its A-label (xn--) form")
    if "." not in domain:
        raise UserError(f"invalid domain name {args.domain!r}: a mail domain has a dot")
    warning = asyncio.run(_not_served(config, domain))
    if warning:
        _warn(warning)
    v4, v6 = public_addresses(config)
    if not v4 and not v6:
        _warn("no public address of this host is known: set [publish] ipv4 (and ipv6); "
              "the A/AAAA and PTR records are left out")
    keys = domain_keys(config.dkim_key_dir, domain)
    for key in keys:
        if key.error:
            _warn(f"DKIM key {key.path} is left out: {key.error}")
    if not any(k.error is None for k in keys):
        _warn(f"{domain} has no DKIM key: make one with 'pymail dkim keygen {domain}'")
    records = expected_records(config, domain, keys)

    if args.action == "records":
        if args.format == "json":
            sys.stdout.write(records_json(config, domain, records))
        elif args.format == "table":
            sys.stdout.write(records_table(records))
        else:
            sys.stdout.write(zone_text(config, domain, records))
        return 0

    resolver = resolver_from_config(config.dns)
    checks = asyncio.run(check_records(config, domain, resolver, records, keys))
    failed = [c for c in checks if c.failed]
    if args.format == "json":
        out = {"domain": domain, "ok": not failed,
               "checks": [{**asdict(c), "failed": c.failed} for c in checks]}
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
        return 1 if failed else 0
    for c in checks:
        need = "" if c.record.required or c.status in ("ok", "info") else " (recommended)"
        print(f"{_status_word(c):<8} {c.record.rtype:<5} {c.record.name}  {c.detail}{need}")
        if c.status in ("missing", "wrong", "error"):
            if c.found and c.status == "wrong":
                print(f"         found:    {' | '.join(c.found)}")
            print(f"         expected: {c.record.value}")
            if c.fix:
                print(f"         fix: {c.fix}")
    if failed:
        print(f"{domain}: {len(failed)} required record(s) not right")
        return 1
    print(f"{domain}: every required record is right")
    return 0


def add_dns_command(command: Callable[..., argparse.ArgumentParser], parser_class: type) -> None:
    """Add `dns records|check` through main's `command` helper."""
    p = command("dns", "the DNS records a domain needs, and whether DNS has them", cmd_dns)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class,
                           required=True)
    rec = sub.add_parser("records", help="every record to publish for DOMAIN: A/AAAA, MX, SPF, "
                         "DKIM, DMARC, MTA-STS, TLS-RPT, SRV, autoconfig, and the PTR to ask for")
    rec.add_argument("domain", metavar="DOMAIN")
    rec.add_argument("--format", choices=("zone", "table", "json"), default="zone",
                     help="zone: a zone-file fragment to paste (default); table; json")
    chk = sub.add_parser("check", help="look each record up and say ok / missing / wrong; "
                         "exit 0 only when every required one is right")
    chk.add_argument("domain", metavar="DOMAIN")
    chk.add_argument("--format", choices=("text", "json"), default="text",
                     help="text: one line per record (default); json")
