"""DKIM verification (pymail.checks.dkimverify) over the fake resolver: messages signed
by dkimpy (an independent signer) with keys made once per module, one case per row."""

from __future__ import annotations

import asyncio
import base64
import random
import time

import dkim
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pymail.checks.dkimverify import MAX_SIGNATURES, verify_dkim
from pymail.dns import Answer, FakeResolver

MESSAGE = (b"From: Alice <alice@signed.test>\r\n"
           b"To: Bob <bob@example.test>\r\n"
           b"Subject: hello\r\n"
           b"Date: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
           b"Message-ID: <m1@signed.test>\r\n"
           b"\r\n"
           b"Hello Bob,\r\n"
           b"this is signed.\r\n")


def run(coro):
    return asyncio.run(coro)


def _probable_prime(bits: int, rng: random.Random) -> int:
    """A random prime of `bits` bits (Miller-Rabin): cryptography refuses to *generate*
    keys under 1024 bits, and the 512-bit case needs one."""
    while True:
        n = rng.getrandbits(bits) | (1 << (bits - 1)) | (1 << (bits - 2)) | 1
        if any(n % p == 0 for p in (3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
            continue
        d, r = n - 1, 0
        while d % 2 == 0:
            d, r = d // 2, r + 1
        for _ in range(24):
            x = pow(rng.randrange(2, n - 1), d, n)
            if x in (1, n - 1):
                continue
            for _ in range(r - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                break
        else:
            return n


def small_rsa_key(bits: int = 512) -> rsa.RSAPrivateKey:
    rng = random.Random(8301)
    e = 65537
    while True:
        p, q = _probable_prime(bits // 2, rng), _probable_prime(bits // 2, rng)
        phi = (p - 1) * (q - 1)
        if p != q and phi % e and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p),
                                    rsa.RSAPublicNumbers(e, p * q))
    return numbers.private_key()


def rsa_pem_and_record(key: rsa.RSAPrivateKey) -> tuple[bytes, bytes]:
    pem = key.private_bytes(serialization.Encoding.PEM,
                            serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, bytes]]:
    """name -> (private key as dkimpy takes it, DNS record)."""
    rsa2048 = rsa_pem_and_record(rsa.generate_private_key(65537, 2048))
    other = rsa_pem_and_record(rsa.generate_private_key(65537, 2048))
    small = rsa_pem_and_record(small_rsa_key(512))
    ed = nacl.signing.SigningKey.generate()
    ed_private = base64.b64encode(bytes(ed))
    ed_record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(ed.verify_key))
    return {"rsa": rsa2048, "other": other, "small": small, "ed25519": (ed_private, ed_record)}


def sign(message: bytes, key: bytes, selector: bytes = b"sel1", domain: bytes = b"signed.test",
         algorithm: bytes = b"rsa-sha256") -> bytes:
    header = dkim.sign(message, selector, domain, key, signature_algorithm=algorithm,
                       canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from", b"to", b"subject"])
    return header + message


@pytest.fixture(scope="module")
def dns(keys) -> dict[str, object]:
    return {
        "sel1._domainkey.signed.test TXT": [keys["rsa"][1]],
        "small._domainkey.signed.test TXT": [keys["small"][1]],
        "ed._domainkey.signed.test TXT": [keys["ed25519"][1]],
        "revoked._domainkey.signed.test TXT": [b"v=DKIM1; k=rsa; p="],
        "wrongkey._domainkey.signed.test TXT": [keys["other"][1]],
        "garbage._domainkey.signed.test TXT": [b"v=DKIM1; k=rsa; p=bm90IGEga2V5"],
        "edtype._domainkey.signed.test TXT": [keys["ed25519"][1]],
        "servfail._domainkey.signed.test TXT": FakeResolver.SERVFAIL,
        "timeout._domainkey.signed.test TXT": FakeResolver.TIMEOUT,
        "sel1._domainkey.other.test TXT": [keys["rsa"][1]],
        "signed.test A": ["192.0.2.1"],  # the domain exists; missing._domainkey does not
    }


def check(dns, message: bytes, **kwargs) -> list:
    return list(run(verify_dkim(FakeResolver(dns), message, **kwargs)).signatures)


# (case, key, selector, change applied after signing, expected result, reason fragment)
CASES = [
    ("good", "rsa", b"sel1", None, "pass", ""),
    ("body changed", "rsa", b"sel1", (b"this is signed.", b"this is forged."), "fail",
     "body hash"),
    ("header changed", "rsa", b"sel1", (b"Subject: hello", b"Subject: HELLO there"), "fail",
     "did not verify"),
    ("key missing", "rsa", b"missing", None, "permerror", "no key"),
    ("key revoked", "rsa", b"revoked", None, "permerror", "key revoked"),
    ("other key", "rsa", b"wrongkey", None, "fail", "did not verify"),
    ("unparsable key", "rsa", b"garbage", None, "permerror", "key"),
    ("512-bit key", "small", b"small", None, "permerror", "key too small (512 bits)"),
    ("servfail on key", "rsa", b"servfail", None, "temperror", "SERVFAIL"),
    ("timeout on key", "rsa", b"timeout", None, "temperror", "TIMEOUT"),
    ("rsa signature, ed25519 key", "rsa", b"edtype", None, "permerror", "does not match"),
]


@pytest.mark.parametrize("case,key,selector,change,result,reason", CASES,
                         ids=[c[0] for c in CASES])
def test_dkim_table(keys, dns, case, key, selector, change, result, reason) -> None:
    message = sign(MESSAGE, keys[key][0], selector)
    if change:
        message = message.replace(*change)
    (sig,) = check(dns, message)
    assert sig.result == result, sig
    assert reason in sig.reason, sig
    assert sig.domain == "signed.test" and sig.selector == selector.decode()
    assert sig.algorithm == "rsa-sha256"
    b = dkim.util.parse_tag_value(dkim.rfc822_parse(message)[0][0][1])[b"b"]
    assert sig.b == b"".join(b.split())[:12].decode() and len(sig.b) == 12


def test_ed25519(keys, dns) -> None:
    message = sign(MESSAGE, keys["ed25519"][0], b"ed", algorithm=b"ed25519-sha256")
    (sig,) = check(dns, message)
    assert (sig.result, sig.algorithm) == ("pass", "ed25519-sha256"), sig
    (bad,) = check(dns, message.replace(b"Bob,", b"Eve,"))
    assert bad.result == "fail"


def test_512_bit_key_passes_when_allowed(keys, dns) -> None:
    # The same signature verifies with the limit lowered: "too small" is the limit alone.
    (sig,) = check(dns, sign(MESSAGE, keys["small"][0], b"small"), min_key_bits=512)
    assert sig.result == "pass", sig


def test_two_signatures_one_bad(keys, dns) -> None:
    once = sign(MESSAGE, keys["rsa"][0], b"sel1", b"other.test")
    twice = sign(once, keys["rsa"][0], b"wrongkey")  # signed with a key DNS does not have
    first, second = check(dns, twice)
    assert (first.result, first.domain, first.selector) == ("fail", "signed.test", "wrongkey")
    assert (second.result, second.domain) == ("pass", "other.test")
    result = run(verify_dkim(FakeResolver(dns), twice))
    assert result.passing_domains() == {"other.test"} and not result.temporary


def test_temporary_only_when_nothing_passed(keys, dns) -> None:
    message = sign(MESSAGE, keys["rsa"][0], b"servfail")
    assert run(verify_dkim(FakeResolver(dns), message)).temporary
    both = sign(message, keys["rsa"][0], b"sel1")
    result = run(verify_dkim(FakeResolver(dns), both))
    assert [s.result for s in result.signatures] == ["pass", "temperror"]
    assert not result.temporary


def test_unsigned_message_has_no_signatures(dns) -> None:
    assert run(verify_dkim(FakeResolver(dns), MESSAGE)).signatures == ()


@pytest.mark.parametrize("value,reason", [
    (b" v=1; a=rsa-sha256; d=signed.test; s=sel1; h=from; bh=AAAA; b=AAAA; d=x.test",
     "syntax"),
    (b" v=1; a=rsa-sha256; s=sel1; h=from; bh=AAAA; b=AAAA", "without d="),
    (b" v=1; a=rsa-sha999; d=signed.test; s=sel1; h=from; bh=AAAA; b=AAAA", "algorithm"),
    (b" v=1; a=rsa-sha256; d=signed.test; s=sel1; h=from; b=AAAA", "missing"),
    (b" v=1; a=rsa-sha256; d=signed.test; s=sel1; h=to:subject; bh=AAAA; b=AAAA",
     "From field not signed"),
])
def test_malformed_signatures_are_permerror(dns, value, reason) -> None:
    (sig,) = check(dns, b"DKIM-Signature:" + value + b"\r\n" + MESSAGE)
    assert sig.result == "permerror" and reason in sig.reason, sig


def test_expired_signature_is_permerror(keys, dns) -> None:
    message = sign(MESSAGE, keys["rsa"][0], b"sel1")
    # x= in the past (dkim.sign has no expiry argument: add the tag; the signature is
    # then broken too, but expiry is checked first, RFC 6376 section 6.1.1).
    assert b" t=" in message
    (sig,) = check(dns, message.replace(b" t=", b" x=1000000000; t=", 1))
    assert sig.result == "permerror" and "x=" in sig.reason, sig


def test_signatures_beyond_the_limit_are_not_verified(keys, dns) -> None:
    resolver = FakeResolver(dns)
    header = sign(MESSAGE, keys["rsa"][0], b"sel1").split(b"\r\n\r\n")[0].split(b"From:")[0]
    message = header * (MAX_SIGNATURES + 2) + MESSAGE
    sigs = run(verify_dkim(resolver, message)).signatures
    assert [s.result for s in sigs] == ["pass"] * MAX_SIGNATURES + ["policy"] * 2
    assert len(resolver.queries) == MAX_SIGNATURES


class SlowResolver:
    async def query(self, name: str, rdtype: str) -> Answer:
        await asyncio.sleep(5)
        return Answer(name, rdtype, ())


def test_whole_verification_is_bounded(keys) -> None:
    start = time.monotonic()
    (sig,) = run(verify_dkim(SlowResolver(), sign(MESSAGE, keys["rsa"][0]), timeout=0.3)
                 ).signatures
    assert sig.result == "temperror" and time.monotonic() - start < 2, sig


def test_dkimpy_never_asks_dns_itself(keys, dns) -> None:
    # All key lookups are ours, one per signature, on the event loop.
    resolver = FakeResolver(dns)
    run(verify_dkim(resolver, sign(sign(MESSAGE, keys["rsa"][0]), keys["rsa"][0], b"revoked")))
    assert sorted(resolver.queries) == [("revoked._domainkey.signed.test", "TXT"),
                                        ("sel1._domainkey.signed.test", "TXT")]
