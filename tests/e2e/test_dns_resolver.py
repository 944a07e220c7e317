"""DnsResolver against a real authoritative server (NSD on loopback): records, NODATA,
NXDOMAIN, REFUSED and a silent server become the answers and errors the package
docstring promises, and only the configured server is asked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from pymail.dns import DnsResolver, DnsTemporaryError, MxRecord, addresses, mx_records, txt_records
from pymail.dns.resolver import reverse_name
from tests.services.nsd import NsdService, free_dns_port, start_nsd_service

ZONE = """
@ MX 10 mail
@ MX 20 backup
@ TXT "v=spf1 ip4:127.0.0.0/8 " "-all"
mail A 127.0.0.2
mail AAAA ::1
backup A 127.0.0.3
www CNAME mail
_25._tcp.mail TLSA 3 1 1 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
nullmx MX 0 .
"""


@pytest.fixture(scope="module")
def nsd() -> Iterator[NsdService]:
    service = start_nsd_service({"example.test": ZONE, "127.in-addr.arpa": "2.0.0 PTR mail.example.test."})
    try:
        yield service
    finally:
        service.stop()


def run(coro):
    return asyncio.run(coro)


def resolver_for(nsd: NsdService, timeout: float = 3.0) -> DnsResolver:
    return DnsResolver([nsd.nameserver], port=nsd.port, timeout=timeout)


def test_records_of_each_type(nsd: NsdService) -> None:
    resolver = resolver_for(nsd)
    mx = run(mx_records(resolver, "example.test"))
    assert mx.records == (MxRecord(10, "mail.example.test"), MxRecord(20, "backup.example.test"))
    assert run(txt_records(resolver, "example.test")) == [b"v=spf1 ip4:127.0.0.0/8 -all"]
    found, _ = run(addresses(resolver, "mail.example.test"))
    assert sorted(found) == ["127.0.0.2", "::1"]
    tlsa = run(resolver.query("_25._tcp.mail.example.test", "TLSA")).records[0]
    assert (tlsa.usage, tlsa.selector, tlsa.matching_type) == (3, 1, 1) and len(tlsa.data) == 32
    assert run(resolver.query("nullmx.example.test", "MX")).records == (MxRecord(0, ""),)
    ptr = run(resolver.query(reverse_name("127.0.0.2"), "PTR"))
    assert ptr.records == ("mail.example.test",)
    cname = run(resolver.query("www.example.test", "A"))
    assert cname.records == ("127.0.0.2",) and cname.canonical_name == "mail.example.test"
    # an authoritative server that does not validate never sets AD
    assert not mx.authenticated


def test_nodata_and_nxdomain(nsd: NsdService) -> None:
    resolver = resolver_for(nsd)
    nodata = run(resolver.query("backup.example.test", "MX"))
    assert nodata.exists and nodata.records == ()
    nxdomain = run(resolver.query("nobody.example.test", "A"))
    assert not nxdomain.exists and nxdomain.records == ()


def test_refused_outside_the_zones_is_temporary(nsd: NsdService) -> None:
    with pytest.raises(DnsTemporaryError):
        run(resolver_for(nsd).query("example.com", "MX"))


def test_a_silent_server_is_a_temporary_error_within_the_timeout(nsd: NsdService) -> None:
    nsd.pause()
    try:
        started = time.monotonic()
        with pytest.raises(DnsTemporaryError):
            run(resolver_for(nsd, timeout=1.0).query("example.test", "MX"))
        assert time.monotonic() - started < 10
    finally:
        nsd.resume()


def test_nobody_listening_is_a_temporary_error() -> None:
    resolver = DnsResolver(["127.0.0.1"], port=free_dns_port(), timeout=1.0)
    with pytest.raises(DnsTemporaryError):
        run(resolver.query("example.test", "MX"))
