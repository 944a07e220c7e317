"""A certificate authority for tests: EC P-256 leaves (fast to make) for given names,
valid, expiring soon or expired, signed by a CA that the test's clients trust."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = dt.datetime.now(dt.timezone.utc)


@dataclass
class Pair:
    """A leaf: its PEM chain (leaf, then the CA), its PEM key, its serial number."""

    cert_pem: bytes
    key_pem: bytes
    serial: int


class CA:
    """A private CA (EC P-256, a year) that issues leaves for tests."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pymail test CA")])
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1)).not_valid_after(NOW + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, names: list[str], *, days: float = 60, expired: bool = False,
              not_after: dt.datetime | None = None) -> Pair:
        """`not_after`: an exact expiry (e.g. seconds from now, to expire while running)."""
        key = ec.generate_private_key(ec.SECP256R1())
        if not_after is not None:
            not_before = NOW - dt.timedelta(hours=1)
        elif expired:
            not_before, not_after = NOW - dt.timedelta(days=30), NOW - dt.timedelta(days=1)
        else:
            not_before, not_after = NOW - dt.timedelta(hours=1), NOW + dt.timedelta(days=days)
        san = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.cert.subject).public_key(key.public_key()).serial_number(serial)
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return Pair(cert.public_bytes(serialization.Encoding.PEM) + self.pem, key_pem, serial)
