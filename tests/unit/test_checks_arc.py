"""ARC (pymail.checks.arc) over the fake resolver: chains sealed by dkimpy's arc_sign
(an independent sealer), one hop and two, intact and tampered."""

from __future__ import annotations

import asyncio
import base64

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pymail.checks.arc import verify_arc
from pymail.dns import FakeResolver

MESSAGE = (b"From: Alice <alice@origin.test>\r\n"
           b"To: list@lists.test\r\n"
           b"Subject: forwarded\r\n"
           b"Date: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
           b"Message-ID: <m1@origin.test>\r\n"
           b"\r\n"
           b"Hello list.\r\n")


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def key() -> tuple[bytes, bytes]:
    private = rsa.generate_private_key(65537, 2048)
    pem = private.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    spki = private.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


def seal(message: bytes, pem: bytes, domain: bytes, results: bytes) -> bytes:
    """What a forwarder at `domain` does: its own A-R, then an ARC set over it."""
    with_ar = b"Authentication-Results: " + domain + b"; " + results + b"\r\n" + message
    arc_set = dkim.arc_sign(with_ar, b"arc", domain, pem, domain)
    assert len(arc_set) == 3, arc_set
    return b"".join(arc_set) + with_ar


@pytest.fixture(scope="module")
def sealed(key) -> dict[str, bytes]:
    pem, _ = key
    one = seal(MESSAGE, pem, b"lists.test",
               b"spf=pass smtp.mailfrom=origin.test; dmarc=pass header.from=origin.test")
    two = seal(one, pem, b"forwarder.test", b"arc=pass; dmarc=fail header.from=origin.test")
    return {"one": one, "two": two}


@pytest.fixture(scope="module")
def dns(key) -> dict[str, object]:
    return {"arc._domainkey.lists.test TXT": [key[1]],
            "arc._domainkey.forwarder.test TXT": [key[1]]}


def test_one_hop_passes(sealed, dns) -> None:
    got = run(verify_arc(FakeResolver(dns), sealed["one"]))
    assert (got.result, got.sealers, got.first_dmarc) == ("pass", ("lists.test",), "pass"), got


def test_two_hops_pass_with_sealers_in_instance_order(sealed, dns) -> None:
    got = run(verify_arc(FakeResolver(dns), sealed["two"]))
    assert got.result == "pass", got
    assert got.sealers == ("lists.test", "forwarder.test")
    assert got.first_dmarc == "pass"  # instance 1's view, not the second hop's


@pytest.mark.parametrize("change", [
    (b"Hello list.", b"Hello, changed."),  # the body
    (b"Subject: forwarded", b"Subject: changed"),  # a signed field
])
def test_tampered_chain_fails(sealed, dns, change) -> None:
    got = run(verify_arc(FakeResolver(dns), sealed["one"].replace(*change)))
    assert got.result == "fail", got
    assert got.sealers == ("lists.test",)


def test_missing_seal_key_fails(sealed) -> None:
    got = run(verify_arc(FakeResolver({}), sealed["one"]))
    assert got.result == "fail", got


@pytest.mark.parametrize("failure", [FakeResolver.SERVFAIL, FakeResolver.TIMEOUT])
def test_dns_failure_is_temperror_not_fail(sealed, dns, failure) -> None:
    records = dict(dns, **{"arc._domainkey.lists.test TXT": failure})
    got = run(verify_arc(FakeResolver(records), sealed["two"]))
    assert got.result == "temperror", got
    assert got.sealers == ("lists.test", "forwarder.test")


def test_unsealed_message_is_none(dns) -> None:
    assert run(verify_arc(FakeResolver(dns), MESSAGE)).result == "none"


def test_incomplete_set_fails(sealed, dns) -> None:
    # arc_sign puts the ARC-Seal first: cut that one field (with its folded lines).
    fields = sealed["one"].split(b"\r\nARC-Message-Signature:", 1)
    assert len(fields) == 2 and fields[0].startswith(b"ARC-Seal:")
    without_seal = b"ARC-Message-Signature:" + fields[1]
    got = run(verify_arc(FakeResolver(dns), without_seal))
    assert got.result == "fail", got
