"""The test internet's validating resolver (unbound in front of NSD,
tests/services/unbound.py) with a DNSSEC-signed zone (tests/services/dnssec.py), asked
through pymail's own `DnsResolver` as the DANE code asks it: the AD bit for the signed
zone's MX, A and TLSA, none for an unsigned zone, SERVFAIL for a broken signature."""

from __future__ import annotations

import asyncio
import time

import pytest

from pymail.dns import Answer, DnsResolver, DnsTemporaryError, TlsaRecord
from tests.internet import POSTFIX_ADDRESS, Internet
from tests.services.dnssec import tlsa_data


def ask(port: int, name: str, rdtype: str) -> Answer:
    return asyncio.run(DnsResolver(["127.0.0.1"], port=port, timeout=3).query(name, rdtype))


def test_the_signed_zone_is_authenticated(internet: Internet) -> None:
    port = internet.unbound.port
    mx = ask(port, "dane.test", "MX")
    a = ask(port, "mx.dane.test", "A")
    tlsa = ask(port, "_25._tcp.mx.dane.test", "TLSA")
    assert [r.host for r in mx.records] == ["mx.dane.test"] and a.records == (POSTFIX_ADDRESS,)
    assert mx.authenticated and a.authenticated and tlsa.authenticated
    # the TLSA record is Postfix's certificate (DANE-EE, SPKI, SHA-256)
    usage, selector, mtype, data = tlsa_data(internet.postfix.cert_file).split()
    assert tlsa.records == (TlsaRecord(int(usage), int(selector), int(mtype), bytes.fromhex(data)),)
    # denial of existence is validated too (NSEC): no AAAA, no such name
    nodata = ask(port, "mx.dane.test", "AAAA")
    nxdomain = ask(port, "nothing.dane.test", "A")
    assert nodata.authenticated and nodata.exists and not nodata.records
    assert nxdomain.authenticated and not nxdomain.exists


def test_the_ad_bit_comes_from_validation_not_from_the_zone(internet: Internet) -> None:
    assert internet.nsd is not None
    # NSD itself (authoritative, not validating) never sets AD, even for the signed zone
    assert not ask(internet.nsd.port, "dane.test", "MX").authenticated
    # an unsigned zone through unbound: an answer, insecure (no trust anchor covers it)
    unsigned = ask(internet.unbound.port, "remote.test", "MX")
    assert [r.host for r in unsigned.records] == ["mx.remote.test"] and not unsigned.authenticated


def test_a_broken_signature_is_servfail(internet: Internet) -> None:
    internet.set_zone("bogus.test", "@ MX 10 mx\nmx A 127.0.0.4\n_25._tcp.mx TLSA 3 1 1 " + "00" * 32,
                      signed=True)
    internet.nsd.signers["bogus.test"].break_signature("_25._tcp.mx", "TLSA")  # type: ignore[union-attr]
    internet.set_zone("bogus.test", internet.zone("bogus.test"))
    internet.unbound.restart()
    port = internet.unbound.port
    # the rest of the zone still validates ...
    assert ask(port, "bogus.test", "MX").authenticated
    # ... the RRset whose RRSIG was corrupted is bogus: SERVFAIL, a temporary error
    with pytest.raises(DnsTemporaryError):
        ask(port, "_25._tcp.mx.bogus.test", "TLSA")
    assert "validation failure <_25._tcp.mx.bogus.test. TLSA IN>" in internet.unbound.log()


def test_names_outside_the_test_zones_fail_at_once(internet: Internet) -> None:
    started = time.monotonic()
    with pytest.raises(DnsTemporaryError):
        ask(internet.unbound.port, "example.com", "MX")
    assert time.monotonic() - started < 2.5  # REFUSED by NSD, not a timeout
