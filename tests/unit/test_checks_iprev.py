"""iprev (pymail.checks.iprev) over the fake resolver, one row per case."""

from __future__ import annotations

import asyncio

import pytest

from pymail.checks.iprev import MAX_NAMES, check_iprev
from pymail.dns import FakeResolver

RECORDS = {
    "1.2.0.192.in-addr.arpa PTR": ["mail.good.test"],
    "mail.good.test A": ["192.0.2.1"],
    "2.2.0.192.in-addr.arpa PTR": ["liar.test"],
    "liar.test A": ["198.51.100.7"],
    "3.2.0.192.in-addr.arpa PTR": ["gone.test"],  # gone.test does not exist
    "4.2.0.192.in-addr.arpa PTR": ["broken.test"],
    "broken.test A": FakeResolver.SERVFAIL,
    "5.2.0.192.in-addr.arpa PTR": ["broken.test", "mail.five.test"],
    "mail.five.test A": ["192.0.2.5"],
    "6.2.0.192.in-addr.arpa PTR": FakeResolver.SERVFAIL,
    "7.2.0.192.in-addr.arpa PTR": FakeResolver.TIMEOUT,
    "8.2.0.192.in-addr.arpa PTR": ["liar.test", "broken.test"],
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa PTR":
        ["v6.good.test"],
    "v6.good.test AAAA": ["2001:db8::1"],
    "v6.good.test A": ["192.0.2.99"],
}

CASES = [
    ("forward-confirmed", "192.0.2.1", "pass", "mail.good.test"),
    ("ptr name points elsewhere", "192.0.2.2", "fail", "liar.test"),
    ("ptr name does not exist", "192.0.2.3", "fail", "gone.test"),
    ("no ptr", "192.0.2.9", "permerror", ""),
    ("forward servfail", "192.0.2.4", "temperror", "broken.test"),
    ("one name servfails, another passes", "192.0.2.5", "pass", "mail.five.test"),
    ("one name fails, another servfails", "192.0.2.8", "temperror", "liar.test"),
    ("ptr servfail", "192.0.2.6", "temperror", ""),
    ("ptr timeout", "192.0.2.7", "temperror", ""),
    ("ipv6", "2001:db8::1", "pass", "v6.good.test"),
    ("ipv4-mapped ipv6", "::ffff:192.0.2.1", "pass", "mail.good.test"),
    ("not an address", "mail.good.test", "permerror", ""),
]


@pytest.mark.parametrize("case,ip,result,name", CASES, ids=[c[0] for c in CASES])
def test_iprev_table(case: str, ip: str, result: str, name: str) -> None:
    got = asyncio.run(check_iprev(FakeResolver(RECORDS), ip))
    assert (got.result, got.name) == (result, name), got


def test_ipv6_client_asks_aaaa_only() -> None:
    resolver = FakeResolver(RECORDS)
    asyncio.run(check_iprev(resolver, "2001:db8::1"))
    assert ("v6.good.test", "A") not in resolver.queries


def test_at_most_max_names_are_followed() -> None:
    names = [f"n{i}.test" for i in range(MAX_NAMES + 5)]
    resolver = FakeResolver({"99.2.0.192.in-addr.arpa PTR": names, names[-1] + " A": ["192.0.2.99"]})
    got = asyncio.run(check_iprev(resolver, "192.0.2.99"))
    assert got.result == "fail"
    assert len([q for q in resolver.queries if q[1] == "A"]) == MAX_NAMES
