"""The sans-IO parts of the outbound TLS policy: MTA-STS TXT and policy parsing and MX
patterns (RFC 8461), TLSA matching (RFC 7672, RFC 6698) over certificates made here,
and `TlsPolicy.for_mx` decisions over the fake resolver (AD bit or not, SERVFAIL)."""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pymail.config import load_config
from pymail.delivery.remote.dane import chain_matches, tlsa_usable
from pymail.delivery.remote.mtasts import mx_matches, parse_policy, parse_txt
from pymail.delivery.remote.policy import DomainTls, TlsPolicy
from pymail.dns.fake import FakeResolver
from pymail.dns.model import TlsaRecord

NOW = _dt.datetime(2026, 12, 2, tzinfo=_dt.timezone.utc)


def test_txt_record() -> None:
    assert parse_txt([b"v=STSv1; id=20261202T1"]) == "20261202T1"
    assert parse_txt([b"v=spf1 -all", b"v=STSv1;id=abc;"]) == "abc"
    assert parse_txt([b"v=STSv1; id=1", b"v=STSv1; id=2"]) is None  # two: no policy
    assert parse_txt([b"v=STSv2; id=1"]) is None and parse_txt([]) is None
    assert parse_txt([b"v=STSv1; id=not-alnum!"]) is None


def test_policy_text() -> None:
    policy = parse_policy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.org\r\n"
                          "mx: *.backup.example.org\r\nmax_age: 604800\r\n")
    assert (policy.mode, policy.mx, policy.max_age) == (
        "enforce", ("mail.example.org", "*.backup.example.org"), 604800)
    assert parse_policy("version: STSv1\nmode: none\nmax_age: 9999999999\n").max_age == 31557600
    for bad in ("mode: enforce\nmx: a\nmax_age: 1\n",  # no version
                "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
                "version: STSv1\nmode: enforce\nmax_age: 1\n",  # no mx
                "version: STSv1\nmode: enforce\nmx: a\nmax_age: soon\n",
                "<html>not a policy</html>"):
        with pytest.raises(ValueError):
            parse_policy(bad)


def test_mx_patterns() -> None:
    assert mx_matches("mail.example.org", "MAIL.example.org.")
    assert mx_matches("*.example.org", "mx1.example.org")
    assert not mx_matches("*.example.org", "a.b.example.org")  # one label only (4.1)
    assert not mx_matches("*.example.org", "example.org")
    assert not mx_matches("mail.example.org", "mail.example.org.evil")


def make_cert(name: str, issuer_key=None, issuer_name=None, *, ca: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_name or subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(NOW - _dt.timedelta(days=1)).not_valid_after(NOW + _dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert, cert.public_bytes(serialization.Encoding.DER)


def spki(cert) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def test_dane_ee_matches_the_leaf_by_certificate_or_key() -> None:
    _, leaf, der = make_cert("mx.example.org")
    for record in (TlsaRecord(3, 1, 1, hashlib.sha256(spki(leaf)).digest()),
                   TlsaRecord(3, 0, 1, hashlib.sha256(der).digest()),
                   TlsaRecord(3, 1, 2, hashlib.sha512(spki(leaf)).digest()),
                   TlsaRecord(3, 0, 0, der)):
        assert chain_matches([record], [der], "anything.example") is None  # EE: no name check
    wrong = TlsaRecord(3, 1, 1, b"\x00" * 32)
    assert "matches no TLSA record" in chain_matches([wrong], [der], "mx.example.org")


def test_dane_ta_needs_the_signature_chain_and_the_name() -> None:
    ca_key, ca, ca_der = make_cert("Test TA", ca=True)
    _, leaf, leaf_der = make_cert("mx.example.org", ca_key, ca.subject)
    ta = TlsaRecord(2, 1, 1, hashlib.sha256(spki(ca)).digest())
    assert chain_matches([ta], [leaf_der, ca_der], "mx.example.org") is None
    assert "does not name" in chain_matches([ta], [leaf_der, ca_der], "other.example.org")
    _, stranger, stranger_der = make_cert("mx.example.org")  # self-signed, not by the TA
    assert chain_matches([ta], [stranger_der, ca_der], "mx.example.org") is not None
    assert chain_matches([ta], [leaf_der], "mx.example.org") is not None  # TA not presented


def test_only_dane_usages_are_usable() -> None:
    records = [TlsaRecord(0, 0, 1, b"x"), TlsaRecord(1, 1, 1, b"x"), TlsaRecord(3, 1, 1, b"y"),
               TlsaRecord(2, 2, 1, b"z"), TlsaRecord(3, 1, 9, b"w")]
    assert tlsa_usable(records) == (TlsaRecord(3, 1, 1, b"y"),)


def policy(tmp_path: Path, resolver: FakeResolver, extra: str = "") -> TlsPolicy:
    path = tmp_path / "pymail.toml"
    path.write_text(f'[server]\nhostname = "mail.example.test"\ndata_dir = "{tmp_path}"\n' + extra)
    return TlsPolicy(config=load_config(path), resolver=resolver, clock=lambda: NOW)


def test_for_mx_uses_dane_only_with_validated_answers(tmp_path: Path) -> None:
    record = TlsaRecord(3, 1, 1, b"\x01" * 32)
    resolver = FakeResolver({"_25._tcp.mx.example.org TLSA": [record],
                             "_25._tcp.mx.broken.org TLSA": FakeResolver.SERVFAIL},
                            authenticated={"_25._tcp.mx.example.org TLSA"})
    tls = policy(tmp_path, resolver)
    none = DomainTls("none")
    dane = asyncio.run(tls.for_mx(none, "mx.example.org", mx_authenticated=True))
    assert (dane.name, dane.required, dane.tlsa) == ("dane", True, (record,))
    plain = asyncio.run(tls.for_mx(none, "mx.example.org", mx_authenticated=False))
    assert (plain.name, plain.required) == ("opportunistic", False)
    failed = asyncio.run(tls.for_mx(none, "mx.broken.org", mx_authenticated=True))
    assert failed.error is not None and failed.required  # never a downgrade (RFC 7672 2.2)
    enforce = asyncio.run(tls.for_mx(DomainTls("mta-sts enforce", ("mx.other.org",)), "mx.other.org",
                                     mx_authenticated=False))
    assert enforce.required and enforce.context.check_hostname
    off = policy(tmp_path, resolver, "[delivery]\ndane = false\n")
    assert asyncio.run(off.for_mx(none, "mx.example.org", mx_authenticated=True)).name == "opportunistic"
    assert not DomainTls("mta-sts enforce", ("mx.other.org",)).allows("mx.example.org")
    assert DomainTls("mta-sts testing", ("mx.other.org",)).allows("mx.example.org")
