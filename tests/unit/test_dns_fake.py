"""The table-driven FakeResolver and the helpers over any Resolver (no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from pymail.dns import DnsError, DnsTemporaryError, FakeResolver, MxRecord, addresses, mx_records
from pymail.dns.model import normalise_name


def run(coro):
    return asyncio.run(coro)


def test_records_nodata_and_nxdomain_are_answers() -> None:
    resolver = FakeResolver({
        "example.test MX": [MxRecord(20, "b.example.test"), MxRecord(10, "a.example.test")],
        "a.example.test A": ["127.0.0.2"],
    })
    mx = run(mx_records(resolver, "Example.TEST."))
    assert [r.host for r in mx.records] == ["a.example.test", "b.example.test"]
    nodata = run(resolver.query("a.example.test", "MX"))
    assert nodata.exists and nodata.records == ()
    nxdomain = run(resolver.query("nowhere.test", "A"))
    assert not nxdomain.exists and nxdomain.records == ()
    assert resolver.queries == [("example.test", "MX"), ("a.example.test", "MX"), ("nowhere.test", "A")]


def test_failures_are_temporary_errors_never_empty_answers() -> None:
    resolver = FakeResolver({"broken.test MX": FakeResolver.SERVFAIL,
                             "slow.test A": FakeResolver.TIMEOUT})
    with pytest.raises(DnsTemporaryError):
        run(resolver.query("broken.test", "MX"))
    with pytest.raises(DnsTemporaryError):
        run(resolver.query("slow.test", "A"))


def test_cname_chain_and_authentication() -> None:
    resolver = FakeResolver({"www.test CNAME": ["host.test"], "host.test A": ["127.0.0.3"]},
                            authenticated={"host.test A"})
    answer = run(resolver.query("www.test", "A"))
    assert answer.records == ("127.0.0.3",) and answer.canonical_name == "host.test"
    assert not answer.authenticated  # the CNAME itself was not authenticated
    assert run(resolver.query("host.test", "A")).authenticated


def test_addresses_tolerate_one_family_failing() -> None:
    resolver = FakeResolver({"mx.test A": ["127.0.0.4"], "mx.test AAAA": FakeResolver.SERVFAIL,
                             "down.test A": FakeResolver.SERVFAIL,
                             "down.test AAAA": FakeResolver.SERVFAIL})
    assert run(addresses(resolver, "mx.test")) == (["127.0.0.4"], False)
    with pytest.raises(DnsTemporaryError):
        run(addresses(resolver, "down.test"))


@pytest.mark.parametrize("name", ["", "a..b", "x" * 64 + ".test", "a." * 130 + "test"])
def test_malformed_names_are_refused(name: str) -> None:
    with pytest.raises(DnsError):
        normalise_name(name)


def test_idn_names_become_a_labels() -> None:
    assert normalise_name("Bücher.Example.") == "xn--bcher-kva.example"
