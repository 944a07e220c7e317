"""The sender-authentication checks (pymail.checks.spf, .dkimverify, .dmarc, .iprev)
against a real authoritative server (NSD on loopback) through pymail's DnsResolver:
pyspf's and dkimpy's questions really go over the bridge to the event loop, and a
silent nameserver is temperror for every check, within the time given."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pymail.checks.dkimverify import verify_dkim
from pymail.checks.dmarc import check_dmarc
from pymail.checks.iprev import check_iprev
from pymail.checks.spf import check_spf
from pymail.dns import DnsResolver
from tests.services.nsd import NsdService, start_nsd_service

MESSAGE = (b"From: Alice <alice@signed.test>\r\n"
           b"To: bob@example.test\r\n"
           b"Subject: over real DNS\r\n"
           b"\r\n"
           b"Hello.\r\n")


def _txt(record: bytes) -> str:
    """A TXT record in zone-file form, split into strings of at most 255 octets."""
    text = record.decode()
    return " ".join(f'"{text[i:i + 250]}"' for i in range(0, len(text), 250))


@pytest.fixture(scope="module")
def key() -> bytes:
    return rsa.generate_private_key(65537, 2048)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def nsd(key) -> Iterator[NsdService]:
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)
    zone = f"""
@ TXT "v=spf1 ip4:127.0.0.2 a:relay.signed.test -all"
relay A 127.0.0.3
mail A 127.0.0.2
sel1._domainkey TXT {_txt(record)}
_dmarc TXT "v=DMARC1; p=reject; adkim=s"
"""
    service = start_nsd_service({"signed.test": zone,
                                 "127.in-addr.arpa": "2.0.0 PTR mail.signed.test."})
    try:
        yield service
    finally:
        service.stop()


def signed(key) -> bytes:
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    return dkim.sign(MESSAGE, b"sel1", b"signed.test", pem) + MESSAGE


async def all_checks(resolver: DnsResolver, message: bytes, ip: str, timeout: float):
    spf, dkim_result, iprev = await asyncio.gather(
        check_spf(resolver, ip=ip, sender="alice@signed.test", helo="mail.signed.test",
                  timeout=timeout),
        verify_dkim(resolver, message, timeout=timeout),
        check_iprev(resolver, ip, timeout=timeout))
    dmarc = await check_dmarc(resolver, from_header=message, spf=spf, dkim=dkim_result,
                              timeout=timeout)
    return spf, dkim_result, dmarc, iprev


def test_pass_over_real_dns(nsd, key) -> None:
    resolver = DnsResolver([nsd.nameserver], port=nsd.port, timeout=3)
    spf, dkim_result, dmarc, iprev = asyncio.run(all_checks(resolver, signed(key),
                                                            "127.0.0.2", 10))
    assert spf.result == "pass", spf
    assert [s.result for s in dkim_result.signatures] == ["pass"], dkim_result
    assert (dmarc.result, dmarc.dkim_aligned, dmarc.spf_aligned) == ("pass", True, True), dmarc
    assert (iprev.result, iprev.name) == ("pass", "mail.signed.test"), iprev
    relay = asyncio.run(check_spf(resolver, ip="127.0.0.3", sender="alice@signed.test",
                                  helo="relay.signed.test"))
    assert relay.result == "pass", relay  # the a: mechanism's A lookup, over the bridge


def test_fail_over_real_dns(nsd, key) -> None:
    resolver = DnsResolver([nsd.nameserver], port=nsd.port, timeout=3)
    broken = signed(key).replace(b"Hello.", b"Hello, forged.")
    spf, dkim_result, dmarc, iprev = asyncio.run(all_checks(resolver, broken, "127.0.0.9", 10))
    assert spf.result == "fail", spf
    assert [s.result for s in dkim_result.signatures] == ["fail"], dkim_result
    assert (dmarc.result, dmarc.disposition) == ("fail", "reject"), dmarc
    assert iprev.result == "permerror", iprev  # no PTR for 127.0.0.9


def test_silent_nameserver_is_temperror_everywhere(nsd, key) -> None:
    resolver = DnsResolver([nsd.nameserver], port=nsd.port, timeout=1)
    nsd.pause()
    try:
        start = time.monotonic()
        spf, dkim_result, dmarc, iprev = asyncio.run(all_checks(resolver, signed(key),
                                                                "127.0.0.2", 5))
        elapsed = time.monotonic() - start
    finally:
        nsd.resume()
    assert spf.result == "temperror", spf
    assert [s.result for s in dkim_result.signatures] == ["temperror"], dkim_result
    assert dmarc.result == "temperror", dmarc
    assert iprev.result == "temperror", iprev
    assert elapsed < 5, elapsed
