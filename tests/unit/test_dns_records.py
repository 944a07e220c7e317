"""`pymail.ops.dnsrecords` (the records a domain needs, and the zone fragment printed
for them) and `pymail.ops.dnscheck.check_domain` against tables of records
(`FakeResolver`): every wrong case named, DNS failures as errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dns.rdatatype
import dns.zone
import pytest

from pymail.config.schema import Config
from pymail.delivery.dkimkeys import domain_keys, generate_key
from pymail.dns import FakeResolver, MxRecord, SrvRecord
from pymail.ops.dnscheck import check_domain
from pymail.ops.dnsrecords import expected_records, public_addresses, zone_text
from pymail.ops.mtasts import txt_record

DOMAIN = "example.test"
HOST = "mail.example.test"
V4 = "192.0.2.10"
V6 = "2001:db8::10"


def make_config(tmp_path: Path, **sections: dict) -> Config:
    raw: dict = {"server": {"hostname": HOST, "data_dir": str(tmp_path / "data")},
                 "publish": {"ipv4": [V4], "ipv6": [V6]},
                 "listen": {"https": ["0.0.0.0:443"], "pop3": []}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return Config.model_validate(raw)


@pytest.fixture(scope="module")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dkim")
    generate_key(path, DOMAIN, "s1", bits=2048)
    generate_key(path, DOMAIN, "s1-ed25519", algorithm="ed25519")
    return path


@pytest.fixture
def config(tmp_path: Path, key_dir: Path) -> Config:
    return make_config(tmp_path, dkim={"key_dir": str(key_dir)})


def by_name(records, name: str, rtype: str):
    [found] = [r for r in records if r.name == name and r.rtype == rtype]
    return found


def test_expected_records(config: Config) -> None:
    keys = domain_keys(config.dkim_key_dir, DOMAIN)
    records = expected_records(config, DOMAIN, keys)
    assert by_name(records, HOST, "A").value == V4 and by_name(records, HOST, "A").required
    assert by_name(records, HOST, "AAAA").value == V6
    assert by_name(records, DOMAIN, "MX").value == f"10 {HOST}."
    assert by_name(records, DOMAIN, "TXT").value == f"v=spf1 mx ip4:{V4} ip6:{V6} ~all"
    rsa = by_name(records, f"s1._domainkey.{DOMAIN}", "TXT")
    assert rsa.required and rsa.value.startswith("v=DKIM1; k=rsa; p=MI")
    assert by_name(records, f"s1-ed25519._domainkey.{DOMAIN}", "TXT").value.startswith(
        "v=DKIM1; k=ed25519; p=")
    assert by_name(records, f"_dmarc.{DOMAIN}", "TXT").value == \
        f"v=DMARC1; p=none; rua=mailto:postmaster@{DOMAIN}"
    sts = by_name(records, f"_mta-sts.{DOMAIN}", "TXT")
    assert sts.value == txt_record(config) and not sts.required
    assert by_name(records, f"mta-sts.{DOMAIN}", "CNAME").value == f"{HOST}."
    assert by_name(records, f"_smtp._tls.{DOMAIN}", "TXT").value == \
        f"v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}"
    assert by_name(records, f"_submissions._tcp.{DOMAIN}", "SRV").value == f"0 1 2465 {HOST}."
    assert by_name(records, f"_imaps._tcp.{DOMAIN}", "SRV").value == f"0 1 2993 {HOST}."
    assert by_name(records, f"_pop3._tcp.{DOMAIN}", "SRV").value == "0 0 0 ."  # off
    assert by_name(records, f"autoconfig.{DOMAIN}", "CNAME").value == f"{HOST}."
    assert by_name(records, f"_autodiscover._tcp.{DOMAIN}", "SRV").value == f"0 1 443 {HOST}."
    ptr = by_name(records, "10.2.0.192.in-addr.arpa", "PTR")
    assert ptr.value == f"{HOST}." and ptr.required and not ptr.in_zone
    required = {(r.rtype, r.name) for r in records if r.required}
    assert required == {("A", HOST), ("AAAA", HOST), ("MX", DOMAIN), ("TXT", DOMAIN),
                        ("TXT", f"s1._domainkey.{DOMAIN}"),
                        ("TXT", f"s1-ed25519._domainkey.{DOMAIN}"),
                        ("TXT", f"_dmarc.{DOMAIN}"), ("PTR", "10.2.0.192.in-addr.arpa"),
                        ("PTR", "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2"
                                ".ip6.arpa")}


def test_settings_shape_the_records(tmp_path: Path) -> None:
    config = make_config(tmp_path, publish={"spf_all": "-all", "dmarc_policy": "quarantine",
                                            "dmarc_rua": "dmarc@reports.example",
                                            "mx": ["mx1.example.test", "mx2.example.test"]},
                         listen={"https": [], "submissions": ["0.0.0.0:465"]})
    records = expected_records(config, DOMAIN, [])
    assert [r.value for r in records if r.rtype == "MX"] == ["10 mx1.example.test.",
                                                            "20 mx2.example.test."]
    assert by_name(records, DOMAIN, "TXT").value.endswith(" -all")
    assert by_name(records, f"_dmarc.{DOMAIN}", "TXT").value == \
        "v=DMARC1; p=quarantine; rua=mailto:dmarc@reports.example"
    assert by_name(records, f"_submissions._tcp.{DOMAIN}", "SRV").value == f"0 1 465 {HOST}."
    assert not [r for r in records if r.name.startswith(("autoconfig.", "_autodiscover."))]
    assert not [r for r in records if "_domainkey" in r.name]  # no key, no record


def test_public_addresses_from_listeners(tmp_path: Path) -> None:
    config = make_config(tmp_path, publish={"ipv4": [], "ipv6": []},
                         listen={"smtp": ["0.0.0.0:25", "198.51.100.7:25", "10.0.0.1:25"],
                                 "imaps": ["[2001:db8:1::5]:993", "[::1]:993"],
                                 "submission": ["198.51.100.7:587"]})
    assert public_addresses(config) == ([], [])  # documentation ranges are not global
    config = make_config(tmp_path, publish={"ipv4": [], "ipv6": []},
                         listen={"smtp": ["0.0.0.0:25", "8.8.4.4:25", "10.0.0.1:25"],
                                 "imaps": ["[2a00:1450::5]:993", "[::1]:993"],
                                 "submission": ["8.8.4.4:587"]})
    assert public_addresses(config) == (["8.8.4.4"], ["2a00:1450::5"])


def test_no_public_address_is_said_not_invented(tmp_path: Path) -> None:
    config = make_config(tmp_path, publish={"ipv4": [], "ipv6": []})
    records = expected_records(config, DOMAIN, [])
    assert not [r for r in records if r.rtype in ("A", "AAAA", "PTR")]
    assert by_name(records, DOMAIN, "TXT").value == "v=spf1 mx ~all"
    text = zone_text(config, DOMAIN, records)
    assert "no public address of this host is known: set [publish] ipv4" in text


def test_zone_text_parses_back(config: Config) -> None:
    keys = domain_keys(config.dkim_key_dir, DOMAIN)
    records = expected_records(config, DOMAIN, keys)
    text = zone_text(config, DOMAIN, records)
    zone = dns.zone.from_text(text, origin=DOMAIN + ".", relativize=False, check_origin=False)
    for record in records:
        if not record.in_zone:
            assert f";   {record.name}. 3600 IN PTR {record.value}" in text
            continue
        rdataset = zone.find_rdataset(record.name + ".", dns.rdatatype.from_text(record.rtype))
        values = []
        for rdata in rdataset:
            if record.rtype == "TXT":
                assert all(len(s) <= 255 for s in rdata.strings)
                values.append(b"".join(rdata.strings).decode())
            else:
                values.append(rdata.to_text())
        assert record.value in values, (record, values)
    rsa = zone.find_rdataset(f"s1._domainkey.{DOMAIN}.", "TXT")
    assert len(next(iter(rsa)).strings) > 1  # a 2048-bit key's record needs two strings


# ------------------------------------------------------------------------------ check


def published(config: Config) -> FakeResolver:
    """A resolver answering every expected record as printed (the right setup)."""
    keys = domain_keys(config.dkim_key_dir, DOMAIN)
    table: dict[str, list] = {}
    for r in expected_records(config, DOMAIN, keys):
        if r.rtype == "MX":
            pref, host = r.value.split()
            value = MxRecord(int(pref), host.rstrip("."))
        elif r.rtype == "TXT":
            value = r.value.encode()
        elif r.rtype == "SRV":
            p, w, port, target = r.value.split()
            value = SrvRecord(int(p), int(w), int(port), target.rstrip("."))
        else:
            value = r.value.rstrip(".")
        table.setdefault(f"{r.name} {r.rtype}", []).append(value)
    return FakeResolver(table)


def checks(config: Config, resolver: FakeResolver) -> dict[tuple[str, str], object]:
    results = asyncio.run(check_domain(config, DOMAIN, resolver))
    return {(c.record.rtype, c.record.name): c for c in results}


def test_everything_published_is_ok(config: Config) -> None:
    results = checks(config, published(config))
    bad = {k: (c.status, c.detail) for k, c in results.items() if c.status != "ok"}
    assert bad == {}
    assert "pass for 192.0.2.10, 2001:db8::10" in results[("TXT", DOMAIN)].detail
    assert "FCrDNS" in results[("PTR", "10.2.0.192.in-addr.arpa")].detail


@pytest.mark.parametrize("change,key,status,words", [
    ({"example.test TXT": [b"v=spf1 ip4:192.0.2.99 -all"]}, ("TXT", DOMAIN), "wrong",
     "192.0.2.10 is not authorised: SPF gives fail"),
    ({"example.test TXT": [b"v=spf1 mx ~all", b"v=spf1 -all"]}, ("TXT", DOMAIN), "wrong",
     "2 SPF records"),
    ({"example.test TXT": [b"v=spf1 " + b" ".join(b"a:h%d.example.test" % i for i in range(11))
                           + b" ~all"], **{f"h{i}.example.test A": ["192.0.2.50"] for i in range(11)}},
     ("TXT", DOMAIN), "wrong", "permerror: SPF Permanent Error: Too many DNS lookups"),
    ({"example.test TXT": [b"google-site-verification=x"]}, ("TXT", DOMAIN), "missing",
     "no SPF record"),
    ({"_dmarc.example.test TXT": []}, ("TXT", f"_dmarc.{DOMAIN}"), "missing", "no DMARC record"),
    ({"_dmarc.example.test TXT": [b"v=DMARC1; p=none", b"v=DMARC1; p=reject"]},
     ("TXT", f"_dmarc.{DOMAIN}"), "wrong", "2 DMARC records"),
    ({"_dmarc.example.test TXT": [b"v=DMARC1; p=block"]}, ("TXT", f"_dmarc.{DOMAIN}"),
     "wrong", "p=block is not a DMARC policy"),
    ({"_dmarc.example.test TXT": FakeResolver.SERVFAIL}, ("TXT", f"_dmarc.{DOMAIN}"),
     "error", "DNS gave no answer"),
    ({"example.test MX": [MxRecord(10, "mx.elsewhere.test")],
      "mx.elsewhere.test A": ["198.51.100.1"]}, ("MX", DOMAIN), "wrong",
     "the MX points at mx.elsewhere.test, not at mail.example.test"),
    ({"example.test MX": [MxRecord(0, "")]}, ("MX", DOMAIN), "wrong", "null MX"),
    ({"example.test MX": FakeResolver.TIMEOUT}, ("MX", DOMAIN), "error", "DNS gave no answer"),
    ({"mail.example.test A": ["192.0.2.99"]}, ("A", HOST), "wrong",
     "has 192.0.2.99, not 192.0.2.10"),
    ({"10.2.0.192.in-addr.arpa PTR": ["static-10.isp.example"]},
     ("PTR", "10.2.0.192.in-addr.arpa"), "wrong",
     "names static-10.isp.example, not mail.example.test (and no name resolves back"),
    ({"10.2.0.192.in-addr.arpa PTR": []}, ("PTR", "10.2.0.192.in-addr.arpa"), "missing",
     "no reverse DNS"),
    ({"mail.example.test A": ["192.0.2.99"]}, ("PTR", "10.2.0.192.in-addr.arpa"), "wrong",
     "no forward-confirmed reverse DNS"),
    ({"_mta-sts.example.test TXT": [b"v=STSv1; id=20240101"]}, ("TXT", f"_mta-sts.{DOMAIN}"),
     "wrong", "senders keep the old policy"),
    ({"mta-sts.example.test CNAME": ["web.hoster.test"], "web.hoster.test A": ["198.51.100.9"]},
     ("CNAME", f"mta-sts.{DOMAIN}"), "wrong", "a CNAME to web.hoster.test, resolves to"),
    ({"_imaps._tcp.example.test SRV": [SrvRecord(0, 1, 993, HOST)]},
     ("SRV", f"_imaps._tcp.{DOMAIN}"), "wrong", "not mail.example.test port 2993"),
    ({"_pop3._tcp.example.test SRV": [SrvRecord(0, 1, 110, HOST)]},
     ("SRV", f"_pop3._tcp.{DOMAIN}"), "wrong", "advertises a service that is off here"),
    ({"_smtp._tls.example.test TXT": [b"v=TLSRPTv1;"]}, ("TXT", f"_smtp._tls.{DOMAIN}"),
     "wrong", "no rua="),
    ({"10.2.0.192.in-addr.arpa PTR": FakeResolver.SERVFAIL}, ("PTR", "10.2.0.192.in-addr.arpa"),
     "error", "DNS gave no answer"),
    ({"example.test TXT": [b"v=spf1 include:broken.test ~all"], "broken.test TXT": FakeResolver.SERVFAIL},
     ("TXT", DOMAIN), "error", "could not be evaluated"),
], ids=["spf-not-authorised", "spf-two", "spf-too-many-lookups", "spf-none", "dmarc-missing",
        "dmarc-two", "dmarc-bad-p", "dmarc-servfail", "mx-elsewhere", "null-mx", "mx-timeout",
        "a-wrong", "ptr-other-name", "ptr-missing", "no-fcrdns", "mta-sts-stale",
        "cname-elsewhere", "srv-port", "srv-off-advertised", "tlsrpt-no-rua", "ptr-servfail",
        "spf-include-servfail"])
def test_wrong_cases(config: Config, change: dict, key: tuple[str, str], status: str,
                     words: str) -> None:
    resolver = published(config)
    for k, v in change.items():
        resolver.add(k, v)
    result = checks(config, resolver)[key]
    assert result.status == status, (result.status, result.detail)
    assert words in result.detail
    assert result.failed == result.record.required
    if status in ("wrong", "missing"):
        assert result.fix


def test_dkim_another_key_is_not_ours(config: Config, tmp_path: Path) -> None:
    other = generate_key(tmp_path / "other", DOMAIN, "s1", bits=1024)
    resolver = published(config)
    resolver.add(f"s1._domainkey.{DOMAIN} TXT",
                 [f"v=DKIM1; k=rsa; p={other.public_b64}".encode()])
    result = checks(config, resolver)[("TXT", f"s1._domainkey.{DOMAIN}")]
    assert result.status == "wrong" and "the key is not ours" in result.detail
    resolver.add(f"s1._domainkey.{DOMAIN} TXT", [b"v=DKIM1; k=rsa; p="])
    assert "revoked" in checks(config, resolver)[("TXT", f"s1._domainkey.{DOMAIN}")].detail
    resolver.add(f"s1._domainkey.{DOMAIN} TXT", [])
    assert checks(config, resolver)[("TXT", f"s1._domainkey.{DOMAIN}")].status == "missing"


def test_dkim_key_with_folded_whitespace_is_ours(config: Config) -> None:
    [key] = [k for k in domain_keys(config.dkim_key_dir, DOMAIN) if k.algorithm == "rsa"]
    p = key.public_b64
    resolver = published(config)
    resolver.add(f"s1._domainkey.{DOMAIN} TXT",
                 [f"v=DKIM1;  k=rsa ; h=sha256; p={p[:100]} {p[100:]}".encode()])
    assert checks(config, resolver)[("TXT", f"s1._domainkey.{DOMAIN}")].status == "ok"


def test_cnames_are_followed(config: Config) -> None:
    resolver = published(config)
    # the host's A behind a CNAME; mta-sts. as an A of our address instead of a CNAME;
    # the MX naming another name of ours
    resolver.records.pop((HOST, "A"))
    resolver.records.pop((HOST, "AAAA"))
    resolver.add(f"{HOST} CNAME", ["server.example.test"])
    resolver.add("server.example.test A", [V4])
    resolver.add("server.example.test AAAA", [V6])
    resolver.records.pop((f"mta-sts.{DOMAIN}", "CNAME"))
    resolver.add(f"mta-sts.{DOMAIN} A", [V4])
    resolver.add(f"{DOMAIN} MX", [MxRecord(5, "smtp.example.test")])
    resolver.add("smtp.example.test A", [V4])
    results = checks(config, resolver)
    a = results[("A", HOST)]
    assert a.status == "ok" and "through the CNAME to server.example.test" in a.detail
    assert results[("CNAME", f"mta-sts.{DOMAIN}")].status == "ok"
    mx = results[("MX", DOMAIN)]
    assert mx.status == "ok" and "smtp.example.test resolves to this host's address" in mx.detail
    assert results[("PTR", "10.2.0.192.in-addr.arpa")].status == "ok"  # FCrDNS via the CNAME


def test_spf_without_a_known_address_is_not_evaluated(tmp_path: Path) -> None:
    config = make_config(tmp_path, publish={"ipv4": [], "ipv6": []})
    resolver = FakeResolver({f"{DOMAIN} TXT": [b"v=spf1 mx ~all"],
                             f"{DOMAIN} MX": [MxRecord(10, HOST)], f"{HOST} A": [V4]})
    results = checks(config, resolver)
    spf = results[("TXT", DOMAIN)]
    assert spf.status == "info" and "set [publish] ipv4" in spf.detail and not spf.failed
    assert results[("MX", DOMAIN)].status == "ok"
