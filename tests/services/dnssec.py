"""DNSSEC-signed test zones (for the DANE tests) and TLSA records for test certificates.

The zones are signed in Python with dnspython's own signer (``dns.dnssec.sign_zone``,
RFC 4034/4035: RRSIG on every RRset, an NSEC chain for denial of existence, the DNSKEY
added at the apex), not with ldns-signzone or BIND's dnssec-signzone: dnspython is
already a dependency of pymail, signing needs no key files, no extra Debian package and no
subprocess, and a test can corrupt the signature of exactly one RRset
(`ZoneSigner.break_signature`).  The validator is a different implementation (unbound,
tests/services/unbound.py), so a signing mistake here shows up as a validation failure
there, never as a silent pass.

* `ZoneSigner(origin)`: one ECDSA P-256 key (algorithm 13, RFC 6605) that signs every
  RRset of the zone (a single zone key, no SEP flag: no KSK/ZSK split is needed when the
  key itself is the trust anchor).  The key lives as long as the signer, so a zone can be
  changed and signed again (`NsdService.set_zone`) under the same trust anchor.
* `ZoneSigner.sign(zone_text)` -> the signed zone as master-file text for NSD; signatures
  valid from one hour ago for 30 days.
* `ZoneSigner.trust_anchor` -> ``"dane.test. DS <tag> 13 2 <sha256>"`` for unbound's
  ``trust-anchor:``.
* `tlsa_data(cert_pem)` -> ``"3 1 1 <hex>"``, the DANE-EE SPKI SHA-256 TLSA of a
  certificate (RFC 6698 section 2.1, RFC 7671 section 5.1) to publish for a server.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import dns.dnssec
import dns.name
import dns.rdataclass
import dns.rdatatype
import dns.rdataset
import dns.transaction
import dns.zone
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["ZoneSigner", "tlsa_data"]

SIGNATURE_LIFETIME = 30 * 86400
#: Signatures start this long ago, for a validator whose clock is a little behind.
INCEPTION_BACKDATE = 3600


class ZoneSigner:
    """Signs one zone with one key (see the module docstring)."""

    def __init__(self, origin: str) -> None:
        self.origin = dns.name.from_text(origin.rstrip(".") + ".")
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.dnskey = dns.dnssec.make_dnskey(self._key.public_key(),
                                             dns.dnssec.Algorithm.ECDSAP256SHA256)
        #: (owner name relative to the origin, "@" for the apex; record type) whose RRSIG
        #: `sign` corrupts: a validator must answer SERVFAIL (bogus) for that RRset.
        self.broken: set[tuple[str, str]] = set()

    @property
    def trust_anchor(self) -> str:
        ds = dns.dnssec.make_ds(self.origin, self.dnskey, "SHA256")
        return f"{self.origin.to_text()} DS {ds.to_text()}"

    def break_signature(self, name: str, rdtype: str) -> None:
        """Corrupt the signature of (`name`, `rdtype`) from the next `sign` on."""
        self.broken.add((name, rdtype.upper()))

    def sign(self, zone_text: str) -> str:
        zone = dns.zone.from_text(zone_text, origin=self.origin, relativize=False,
                                  check_origin=True)
        now = int(time.time())
        with zone.writer() as txn:
            dns.dnssec.sign_zone(zone, txn=txn, keys=[(self._key, self.dnskey)],
                                 inception=now - INCEPTION_BACKDATE, lifetime=SIGNATURE_LIFETIME)
            for name, rdtype in self.broken:
                self._corrupt(txn, name, rdtype)
        return f"$ORIGIN {self.origin.to_text()}\n" + zone.to_text(relativize=False)

    def _corrupt(self, txn: dns.transaction.Transaction, name: str, rdtype: str) -> None:
        owner = self.origin if name == "@" else dns.name.from_text(name, self.origin)
        covered = dns.rdatatype.from_text(rdtype)
        signatures = txn.get(owner, dns.rdatatype.RRSIG, covered)
        if not signatures:
            raise ValueError(f"no RRSIG for {owner} {rdtype} to break")
        corrupted = dns.rdataset.Rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covered,
                                          ttl=signatures.ttl)
        for sig in signatures:
            corrupted.add(sig.replace(signature=bytes([sig.signature[0] ^ 0xFF]) + sig.signature[1:]))
        txn.replace(owner, corrupted)


def tlsa_data(cert_pem: bytes | str | Path, usage: int = 3, selector: int = 1,
              matching_type: int = 1) -> str:
    """The TLSA record data (``"3 1 1 <hex>"``) matching the PEM certificate `cert_pem`
    (bytes, or a path): selector 0 = the whole certificate, 1 = its SubjectPublicKeyInfo;
    matching type 0 = exact, 1 = SHA-256, 2 = SHA-512."""
    if isinstance(cert_pem, (str, Path)):
        cert_pem = Path(cert_pem).read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    else:
        data = cert.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    if matching_type == 1:
        data = hashlib.sha256(data).digest()
    elif matching_type == 2:
        data = hashlib.sha512(data).digest()
    return f"{usage} {selector} {matching_type} {data.hex()}"
