"""DMARC (pymail.checks.dmarc) over the fake resolver: record discovery, tags,
alignment, pct sampling and the failure cases, one row per case."""

from __future__ import annotations

import asyncio

import pytest

from pymail.checks.dmarc import check_dmarc, from_domains, organizational_domain, parse_record
from pymail.checks.results import DkimResult, DkimSignature, SpfResult
from pymail.dns import FakeResolver

RECORDS = {
    "_dmarc.reject.test TXT": [b"v=DMARC1; p=reject; rua=mailto:d@reject.test"],
    "_dmarc.quarantine.test TXT": [b"v=DMARC1; p=quarantine"],
    "_dmarc.none.test TXT": [b"v=DMARC1; p=none"],
    "_dmarc.strict.test TXT": [b"v=DMARC1; p=reject; adkim=s; aspf=s"],
    "_dmarc.parent.test TXT": [b"v=DMARC1; p=reject; sp=quarantine"],
    "_dmarc.own.parent.test TXT": [b"v=DMARC1; p=none"],
    "_dmarc.example.co.uk TXT": [b"v=DMARC1; p=reject"],
    "_dmarc.alice.github.io TXT": [b"v=DMARC1; p=reject"],
    "_dmarc.pct0.test TXT": [b"v=DMARC1; p=reject; pct=0"],
    "_dmarc.pct0q.test TXT": [b"v=DMARC1; p=quarantine; pct=0"],
    "_dmarc.pct50.test TXT": [b"v=DMARC1; p=reject; pct=50"],
    "_dmarc.two.test TXT": [b"v=DMARC1; p=reject", b"v=DMARC1; p=none"],
    "_dmarc.other-txt.test TXT": [b"some verification token", b"v=DMARC1; p=reject"],
    "_dmarc.nop.test TXT": [b"v=DMARC1; rua=mailto:agg@nop.test"],
    "_dmarc.badp.test TXT": [b"v=DMARC1; p=bogus"],
    "_dmarc.notfirst.test TXT": [b"p=reject; v=DMARC1"],
    "_dmarc.lower.test TXT": [b"v=dmarc1; p=reject"],
    "_dmarc.unknown-tags.test TXT": [b"v=DMARC1; p=reject; fo=1; xyz=abc; ri=86400"],
    "_dmarc.servfail.test TXT": FakeResolver.SERVFAIL,
    "_dmarc.timeout.test TXT": FakeResolver.TIMEOUT,
    "_dmarc.orgfail.test TXT": FakeResolver.SERVFAIL,
}


def dkim_pass(*domains: str) -> DkimResult:
    return DkimResult(tuple(DkimSignature("pass", d, "sel1") for d in domains))


def dkim_sigs(*sigs: tuple[str, str]) -> DkimResult:
    return DkimResult(tuple(DkimSignature(result, d, "sel1") for result, d in sigs))


def spf(result: str, domain: str, identity: str = "mailfrom") -> SpfResult:
    subject = f"bounce@{domain}" if identity == "mailfrom" else domain
    return SpfResult(result, identity, subject, domain)


NO_DKIM = DkimResult()

# (case, From domain, SPF, DKIM, result, policy, disposition, spf_aligned, dkim_aligned)
CASES = [
    ("dkim pass", "reject.test", None, dkim_pass("reject.test"),
     "pass", "reject", "none", False, True),
    ("spf pass", "reject.test", spf("pass", "reject.test"), NO_DKIM,
     "pass", "reject", "none", True, False),
    ("both fail: reject", "reject.test", spf("fail", "reject.test"), NO_DKIM,
     "fail", "reject", "reject", False, False),
    ("quarantine", "quarantine.test", None, NO_DKIM,
     "fail", "quarantine", "quarantine", False, False),
    ("p=none", "none.test", None, NO_DKIM, "fail", "none", "none", False, False),
    ("unaligned dkim domain", "reject.test", None, dkim_pass("elsewhere.test"),
     "fail", "reject", "reject", False, False),
    ("relaxed: dkim subdomain aligns", "reject.test", None, dkim_pass("mail.reject.test"),
     "pass", "reject", "none", False, True),
    ("relaxed: spf subdomain aligns", "reject.test", spf("pass", "bounces.reject.test"),
     NO_DKIM, "pass", "reject", "none", True, False),
    ("strict: dkim subdomain does not", "strict.test", None, dkim_pass("mail.strict.test"),
     "fail", "reject", "reject", False, False),
    ("strict: spf subdomain does not", "strict.test", spf("pass", "b.strict.test"), NO_DKIM,
     "fail", "reject", "reject", False, False),
    ("strict: exact dkim aligns", "strict.test", None, dkim_pass("strict.test"),
     "pass", "reject", "none", False, True),
    ("helo identity never aligns", "reject.test", spf("pass", "reject.test", "helo"), NO_DKIM,
     "fail", "reject", "reject", False, False),
    ("spf softfail does not count", "reject.test", spf("softfail", "reject.test"), NO_DKIM,
     "fail", "reject", "reject", False, False),
    ("dkim fail does not count", "reject.test", None, dkim_sigs(("fail", "reject.test")),
     "fail", "reject", "reject", False, False),
    ("subdomain: sp= applies", "sub.parent.test", None, NO_DKIM,
     "fail", "quarantine", "quarantine", False, False),
    ("subdomain: aligned with parent key", "sub.parent.test", None, dkim_pass("parent.test"),
     "pass", "quarantine", "none", False, True),
    ("subdomain with its own record: p=", "own.parent.test", None, NO_DKIM,
     "fail", "none", "none", False, False),
    ("subdomain of p-only record: p=", "deep.sub.reject.test", None, NO_DKIM,
     "fail", "reject", "reject", False, False),
    ("multi-label public suffix", "mail.example.co.uk", None, dkim_pass("example.co.uk"),
     "pass", "reject", "none", False, True),
    ("multi-label suffix: other org", "mail.example.co.uk", None, dkim_pass("other.co.uk"),
     "fail", "reject", "reject", False, False),
    ("private suffix: github.io sites are separate", "alice.github.io", None,
     dkim_pass("mallory.github.io"), "fail", "reject", "reject", False, False),
    ("private suffix: own subdomain aligns", "alice.github.io", None,
     dkim_pass("www.alice.github.io"), "pass", "reject", "none", False, True),
    ("pct=0 reject -> quarantine", "pct0.test", None, NO_DKIM,
     "fail", "reject", "quarantine", False, False),
    ("pct=0 quarantine -> none", "pct0q.test", None, NO_DKIM,
     "fail", "quarantine", "none", False, False),
    ("no record", "norecord.test", None, NO_DKIM, "none", "none", "none", False, False),
    ("two records: no DMARC", "two.test", None, NO_DKIM, "none", "none", "none", False, False),
    ("other TXT ignored", "other-txt.test", None, NO_DKIM,
     "fail", "reject", "reject", False, False),
    ("no p= but rua: p=none", "nop.test", None, NO_DKIM, "fail", "none", "none", False, False),
    ("bad p= and no rua", "badp.test", None, NO_DKIM,
     "permerror", "none", "none", False, False),
    ("v= not first: not DMARC", "notfirst.test", None, NO_DKIM,
     "none", "none", "none", False, False),
    ("v=dmarc1 lower case: not DMARC", "lower.test", None, NO_DKIM,
     "none", "none", "none", False, False),
    ("unknown tags ignored", "unknown-tags.test", None, NO_DKIM,
     "fail", "reject", "reject", False, False),
    ("record servfail", "servfail.test", None, dkim_pass("servfail.test"),
     "temperror", "none", "none", False, False),
    ("record timeout", "timeout.test", None, NO_DKIM,
     "temperror", "none", "none", False, False),
    ("org record servfail", "sub.orgfail.test", None, NO_DKIM,
     "temperror", "none", "none", False, False),
    ("aligned dkim temperror: temperror, not fail", "reject.test", None,
     dkim_sigs(("temperror", "reject.test")), "temperror", "reject", "none", False, False),
    ("aligned spf temperror: temperror", "reject.test", spf("temperror", "reject.test"),
     NO_DKIM, "temperror", "reject", "none", False, False),
    ("unaligned temperror: still fail", "reject.test", spf("temperror", "else.test"),
     dkim_sigs(("temperror", "else.test")), "fail", "reject", "reject", False, False),
    ("aligned pass beats a temperror", "reject.test", None,
     dkim_sigs(("temperror", "reject.test"), ("pass", "reject.test")),
     "pass", "reject", "none", False, True),
]


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("case,domain,spf_result,dkim_result,result,policy,disposition,"
                         "spf_aligned,dkim_aligned", CASES, ids=[c[0] for c in CASES])
def test_dmarc_table(case, domain, spf_result, dkim_result, result, policy, disposition,
                     spf_aligned, dkim_aligned) -> None:
    got = run(check_dmarc(FakeResolver(RECORDS), from_header=[domain], spf=spf_result,
                          dkim=dkim_result, random=lambda: 0.99))
    assert (got.result, got.policy, got.disposition) == (result, policy, disposition), got
    assert (got.spf_aligned, got.dkim_aligned) == (spf_aligned, dkim_aligned), got
    assert got.domain == domain
    assert got.org_domain == organizational_domain(domain)


def test_record_discovery_asks_the_from_domain_then_the_org_domain() -> None:
    resolver = FakeResolver(RECORDS)
    run(check_dmarc(resolver, from_header=["a.b.parent.test"], spf=None, dkim=NO_DKIM))
    assert resolver.queries == [("_dmarc.a.b.parent.test", "TXT"), ("_dmarc.parent.test", "TXT")]
    resolver = FakeResolver(RECORDS)
    run(check_dmarc(resolver, from_header=["reject.test"], spf=None, dkim=NO_DKIM))
    assert resolver.queries == [("_dmarc.reject.test", "TXT")]


@pytest.mark.parametrize("draw,disposition", [(0.49, "reject"), (0.5, "quarantine")])
def test_pct_sampling_is_injectable(draw: float, disposition: str) -> None:
    got = run(check_dmarc(FakeResolver(RECORDS), from_header=["pct50.test"], spf=None,
                          dkim=NO_DKIM, random=lambda: draw))
    assert (got.result, got.policy, got.disposition) == ("fail", "reject", disposition)


HEADER_CASES = [
    ("one From", b"From: Alice <alice@Reject.Test>\r\nTo: b@x.test\r\n\r\nbody", "pass",
     "reject.test"),
    ("no From", b"To: b@x.test\r\nSubject: x\r\n\r\nbody", "fail", ""),
    ("two From fields", b"From: a@reject.test\r\nFrom: b@reject.test\r\n\r\n", "fail", ""),
    ("two addresses in one From", b"From: a@reject.test, b@reject.test\r\n\r\n", "fail", ""),
    ("From without a domain", b"From: Alice <alice>\r\n\r\n", "fail", ""),
    ("empty group", b"From: undisclosed-recipients:;\r\n\r\n", "fail", ""),
]


@pytest.mark.parametrize("case,header,result,domain", HEADER_CASES,
                         ids=[c[0] for c in HEADER_CASES])
def test_from_header(case: str, header: bytes, result: str, domain: str) -> None:
    got = run(check_dmarc(FakeResolver(RECORDS), from_header=header, spf=None,
                          dkim=dkim_pass("reject.test")))
    assert (got.result, got.domain) == (result, domain), got
    if result == "fail":
        assert got.reason


def test_from_domains() -> None:
    assert from_domains(b"From: \"A, B\"\r\n\t<a@Example.TEST>\r\nSubject: x\r\n\r\n") == ["example.test"]
    assert from_domains(b"From: a@x.test, b@y.test\r\nFrom: c@z.test\r\n\r\n") == [
        "x.test", "y.test", "z.test"]
    assert from_domains("From: a@bücher.test\r\n\r\n".encode()) == ["xn--bcher-kva.test"]
    assert from_domains(b"Subject: none\r\n\r\nFrom: body@x.test\r\n") == []


@pytest.mark.parametrize("domain,org", [
    ("example.test", "example.test"), ("a.b.example.test", "example.test"),
    ("mail.example.co.uk", "example.co.uk"), ("co.uk", "co.uk"),
    ("alice.github.io", "alice.github.io"), ("www.alice.github.io", "alice.github.io"),
    ("github.io", "github.io"), ("Mail.Example.COM.", "example.com"),
])
def test_organizational_domain(domain: str, org: str) -> None:
    # The private section of the list counts: github.io is a public suffix.
    assert organizational_domain(domain) == org


@pytest.mark.parametrize("text,expected", [
    ("v=DMARC1; p=reject", ("reject", "reject", "r", "r", 100)),
    ("v=DMARC1;p=quarantine;sp=none;adkim=s;aspf=s;pct=20",
     ("quarantine", "none", "s", "s", 20)),
    ("v = DMARC1 ; p = Reject ; pct=abc ; adkim=x", ("reject", "reject", "r", "r", 100)),
    ("v=DMARC1; p=reject; sp=bogus; rua=mailto:a@b.test", ("none", "none", "r", "r", 100)),
    ("v=DMARC1; p=none; pct=101", ("none", "none", "r", "r", 100)),
])
def test_parse_record(text: str, expected: tuple) -> None:
    record = parse_record(text)
    assert (record.p, record.sp, record.adkim, record.aspf, record.pct) == expected


def test_parse_record_not_dmarc_or_broken() -> None:
    assert parse_record("v=spf1 -all") is None
    assert parse_record("v=DMARC2; p=reject") is None
    assert isinstance(parse_record("v=DMARC1; sp=reject"), str)  # no p=, no rua
    assert isinstance(parse_record("v=DMARC1; p=reject; sp=bogus"), str)
