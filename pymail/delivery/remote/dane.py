"""DANE for SMTP (RFC 7672): does a server's certificate chain match its TLSA records?

Pure functions over DER bytes (no I/O), used by `policy.MxTls.check` after the TLS
handshake.  Only the two usages RFC 7672 section 3.1 allows for SMTP are usable:

* DANE-EE (3): the server's own certificate (selector 0) or its public key
  (SubjectPublicKeyInfo, selector 1) matches; nothing else is checked -- no name, no
  expiry, no chain (3.1.1);
* DANE-TA (2): some certificate of the presented chain matches as a trust anchor, the
  chain from the server's certificate up to it is correctly signed, and the server's
  certificate names the MX host (3.1.2, 3.2.3).

Matching types (RFC 6698 2.1.3): 0 the full data, 1 SHA-256, 2 SHA-512.  PKIX-TA (0)
and PKIX-EE (1) records, and unknown selectors or matching types, are "unusable"
(RFC 7672 3.1.3): a TLSA RRset with none usable is treated as no TLSA at all
(section 2.2), and TLS is then merely opportunistic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pymail.dns.model import TlsaRecord

__all__ = ["certificate_names_host", "chain_matches", "tlsa_usable"]

DANE_TA, DANE_EE = 2, 3


def tlsa_usable(records: Iterable[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    """The records RFC 7672 3.1 lets SMTP use."""
    return tuple(r for r in records
                 if r.usage in (DANE_TA, DANE_EE) and r.selector in (0, 1)
                 and r.matching_type in (0, 1, 2))


def _selected(cert: x509.Certificate, der: bytes, selector: int) -> bytes:
    if selector == 0:
        return der
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def _digest(data: bytes, matching_type: int) -> bytes:
    if matching_type == 1:
        return hashlib.sha256(data).digest()
    if matching_type == 2:
        return hashlib.sha512(data).digest()
    return data


def _matches(record: TlsaRecord, cert: x509.Certificate, der: bytes) -> bool:
    return _digest(_selected(cert, der, record.selector), record.matching_type) == record.data


def certificate_names_host(cert: x509.Certificate, host: str) -> bool:
    """RFC 7672 3.2.3 with RFC 6125: a DNS subjectAltName equal to `host`, or a
    wildcard in its left-most label only ("*.example.net" covers "mx.example.net");
    the subject CN only when the certificate has no DNS names."""
    host = host.rstrip(".").lower()
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = [n.lower().rstrip(".") for n in names.get_values_for_type(x509.DNSName)]
    except x509.ExtensionNotFound:
        dns_names = []
    if not dns_names:
        dns_names = [a.value.lower() for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
                     if isinstance(a.value, str)]
    for name in dns_names:
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, Exception):  # InvalidSignature, unsupported key types
        return False
    return True


def chain_matches(records: Sequence[TlsaRecord], chain_der: Sequence[bytes], host: str) -> str | None:
    """None when the presented chain (server certificate first) satisfies one of the
    usable `records`; otherwise why not, for the log."""
    if not chain_der:
        return "the server presented no certificate"
    try:
        chain = [x509.load_der_x509_certificate(der) for der in chain_der]
    except ValueError as exc:
        return f"unreadable server certificate: {exc}"
    leaf, leaf_der = chain[0], chain_der[0]
    for record in records:
        if record.usage == DANE_EE and _matches(record, leaf, leaf_der):
            return None
    ta_records = [r for r in records if r.usage == DANE_TA]
    if ta_records:
        for depth, (cert, der) in enumerate(zip(chain, chain_der)):
            if not any(_matches(r, cert, der) for r in ta_records):
                continue
            signed = all(_issued_by(chain[i], chain[i + 1]) for i in range(depth))
            if depth == 0 or signed:
                if certificate_names_host(leaf, host):
                    return None
                return f"the certificate does not name {host} (DANE-TA, RFC 7672 3.2.3)"
        return "no certificate of the chain matches a DANE-TA record"
    return "the server certificate matches no TLSA record"
