"""SPF (pymail.checks.spf) over the fake resolver: a table of records, one row per case
(mox's spf tests are the model), plus the DNS bridge's own invariants."""

from __future__ import annotations

import asyncio
import time

import pytest
import spf

from pymail.checks.spf import check_spf, spf_domain
from pymail.dns import Answer, FakeResolver, MxRecord

#: Eleven includes in a chain: the 11th DNS-querying term is over the limit.
CHAIN = {f"l{i}.test TXT": [f"v=spf1 include:l{i + 1}.test -all".encode()] for i in range(11)}
CHAIN["l11.test TXT"] = [b"v=spf1 ip4:192.0.2.1 -all"]

RECORDS = {
    "ip4.test TXT": [b"v=spf1 ip4:192.0.2.0/24 -all"],
    "ip6.test TXT": [b"v=spf1 ip6:2001:db8::/32 -all"],
    "a.test TXT": [b"v=spf1 a -all"],
    "a.test A": ["192.0.2.10"],
    "mx.test TXT": [b"v=spf1 mx -all"],
    "mx.test MX": [MxRecord(10, "mail.mx.test")],
    "mail.mx.test A": ["192.0.2.20"],
    "include.test TXT": [b"v=spf1 include:ip4.test -all"],
    "redirect.test TXT": [b"v=spf1 redirect=ip4.test"],
    "soft.test TXT": [b"v=spf1 ip4:192.0.2.0/24 ~all"],
    "neutral.test TXT": [b"v=spf1 ip4:192.0.2.0/24 ?all"],
    "nospf.test TXT": [b"google-site-verification=abc"],
    "nospf.test A": ["192.0.2.1"],
    "two.test TXT": [b"v=spf1 -all", b"v=spf1 +all"],
    "syntax.test TXT": [b"v=spf1 ip4:192.0.2.0/24 bogus:x -all"],
    "badip.test TXT": [b"v=spf1 ip4:192.0.2.300 -all"],
    # Three void lookups (a:, a:, a: names that do not exist): the third is one too many.
    "void3.test TXT": [b"v=spf1 a:nx1.void.test a:nx2.void.test a:nx3.void.test -all"],
    "void2.test TXT": [b"v=spf1 a:nx1.void.test a:nx2.void.test ip4:192.0.2.0/24 -all"],
    "servfail.test TXT": FakeResolver.SERVFAIL,
    "timeout.test TXT": FakeResolver.TIMEOUT,
    "inner-fail.test TXT": [b"v=spf1 include:servfail.test -all"],
    "helo.example.test TXT": [b"v=spf1 ip4:192.0.2.30 -all"],
    **CHAIN,
}

CASES = [
    # (name, ip, sender, helo, result, identity)
    ("ip4 pass", "192.0.2.5", "alice@ip4.test", "mx.client.test", "pass", "mailfrom"),
    ("ip6 pass", "2001:db8::25", "alice@ip6.test", "mx.client.test", "pass", "mailfrom"),
    ("a pass", "192.0.2.10", "alice@a.test", "mx.client.test", "pass", "mailfrom"),
    ("mx pass", "192.0.2.20", "alice@mx.test", "mx.client.test", "pass", "mailfrom"),
    ("include pass", "192.0.2.5", "alice@include.test", "mx.client.test", "pass", "mailfrom"),
    ("redirect pass", "192.0.2.5", "alice@redirect.test", "mx.client.test", "pass", "mailfrom"),
    ("fail", "203.0.113.5", "alice@ip4.test", "mx.client.test", "fail", "mailfrom"),
    ("mx fail", "203.0.113.5", "alice@mx.test", "mx.client.test", "fail", "mailfrom"),
    ("softfail", "203.0.113.5", "alice@soft.test", "mx.client.test", "softfail", "mailfrom"),
    ("neutral", "203.0.113.5", "alice@neutral.test", "mx.client.test", "neutral", "mailfrom"),
    ("no record", "203.0.113.5", "alice@nospf.test", "mx.client.test", "none", "mailfrom"),
    ("nxdomain", "203.0.113.5", "alice@nowhere.test", "mx.client.test", "none", "mailfrom"),
    ("two records", "203.0.113.5", "alice@two.test", "mx.client.test", "permerror", "mailfrom"),
    ("unknown mechanism", "192.0.2.5", "alice@syntax.test", "x.test", "permerror", "mailfrom"),
    ("bad ip4", "192.0.2.5", "alice@badip.test", "mx.client.test", "permerror", "mailfrom"),
    ("11 lookups", "192.0.2.1", "alice@l0.test", "mx.client.test", "permerror", "mailfrom"),
    ("10 lookups", "192.0.2.1", "alice@l1.test", "mx.client.test", "pass", "mailfrom"),
    ("3 void lookups", "192.0.2.5", "alice@void3.test", "x.test", "permerror", "mailfrom"),
    ("2 void lookups", "192.0.2.5", "alice@void2.test", "x.test", "pass", "mailfrom"),
    ("servfail", "192.0.2.5", "alice@servfail.test", "mx.client.test", "temperror", "mailfrom"),
    ("timeout", "192.0.2.5", "alice@timeout.test", "mx.client.test", "temperror", "mailfrom"),
    ("servfail in include", "192.0.2.5", "a@inner-fail.test", "x.test", "temperror", "mailfrom"),
    ("null sender: helo pass", "192.0.2.30", "", "helo.example.test", "pass", "helo"),
    ("null sender: helo fail", "203.0.113.5", "", "helo.example.test", "fail", "helo"),
    ("null sender: helo literal", "192.0.2.30", "", "[192.0.2.30]", "none", "helo"),
    ("null sender: helo bare ip", "192.0.2.30", "", "192.0.2.30", "none", "helo"),
    ("null sender: single label", "192.0.2.30", "", "localhost", "none", "helo"),
    ("sender without domain", "192.0.2.5", "alice@", "x.test", "none", "mailfrom"),
    ("single-label sender domain", "192.0.2.5", "alice@test", "x.test", "none", "mailfrom"),
    ("sender without local part", "192.0.2.5", "ip4.test", "x.test", "pass", "mailfrom"),
    ("ipv4-mapped client", "::ffff:192.0.2.5", "alice@ip4.test", "x.test", "pass", "mailfrom"),
]


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("name,ip,sender,helo,result,identity", CASES, ids=[c[0] for c in CASES])
def test_spf_table(name: str, ip: str, sender: str, helo: str, result: str,
                   identity: str) -> None:
    got = run(check_spf(FakeResolver(RECORDS), ip=ip, sender=sender, helo=helo))
    assert (got.result, got.identity) == (result, identity), got
    assert got.subject == (sender or helo)
    assert got.ptype_property == f"smtp.{identity}"


def test_permerror_reasons_name_the_limit() -> None:
    resolver = FakeResolver(RECORDS)
    lookups = run(check_spf(resolver, ip="192.0.2.1", sender="a@l0.test", helo="x.test"))
    assert "DNS lookups" in lookups.reason, lookups
    void = run(check_spf(resolver, ip="192.0.2.5", sender="a@void3.test", helo="x.test"))
    assert "Void lookup limit" in void.reason, void


def test_helo_identity_asks_the_helo_domain() -> None:
    resolver = FakeResolver(RECORDS)
    got = run(check_spf(resolver, ip="192.0.2.30", sender="", helo="HELO.Example.Test."))
    assert got.result == "pass" and got.domain == "helo.example.test"
    assert ("helo.example.test", "TXT") in resolver.queries


def test_address_literal_helo_asks_no_dns() -> None:
    resolver = FakeResolver(RECORDS)
    got = run(check_spf(resolver, ip="192.0.2.30", sender="", helo="[192.0.2.30]"))
    assert got.result == "none" and got.domain == "" and resolver.queries == []


def test_type_99_is_never_asked() -> None:
    resolver = FakeResolver(RECORDS)
    run(check_spf(resolver, ip="203.0.113.5", sender="a@nospf.test", helo="x.test"))
    assert all(rdtype != "SPF" for _, rdtype in resolver.queries)


def test_bad_client_address_is_permerror() -> None:
    got = run(check_spf(FakeResolver(RECORDS), ip="not-an-ip", sender="a@ip4.test",
                        helo="x.test"))
    assert got.result == "permerror"


class SlowResolver:
    """Answers every question after `delay` seconds (an unresponsive nameserver)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def query(self, name: str, rdtype: str) -> Answer:
        await asyncio.sleep(self.delay)
        return Answer(name, rdtype, ())


def test_whole_check_timeout_is_temperror_and_prompt() -> None:
    start = time.monotonic()
    got = run(check_spf(SlowResolver(5), ip="192.0.2.5", sender="a@slow.test", helo="x.test",
                        timeout=0.3))
    assert got.result == "temperror", got
    assert time.monotonic() - start < 2


def test_concurrent_checks_use_their_own_resolvers() -> None:
    allow = FakeResolver({"same.test TXT": [b"v=spf1 ip4:192.0.2.0/24 -all"]})
    deny = FakeResolver({"same.test TXT": [b"v=spf1 -all"]})

    async def both():
        return await asyncio.gather(*[
            check_spf(allow if i % 2 else deny, ip="192.0.2.5", sender="a@same.test",
                      helo="x.test") for i in range(40)])

    results = run(both())
    assert [r.result for r in results] == ["fail", "pass"] * 20


def test_pyspf_outside_a_check_never_uses_the_system_resolver() -> None:
    # pyspf called directly, in a thread without a bridge: temperror, no socket.
    result, _ = spf.check2(i="192.0.2.5", s="a@ip4.test", h="x.test")
    assert result == "temperror"


@pytest.mark.parametrize("name,expected", [
    ("Example.Test.", "example.test"), ("[192.0.2.1]", ""), ("192.0.2.1", ""),
    ("localhost", ""), ("a..test", ""), ("x" * 64 + ".test", ""), ("", ""),
    ("bücher.test", "xn--bcher-kva.test"),
])
def test_spf_domain(name: str, expected: str) -> None:
    assert spf_domain(name) == expected
