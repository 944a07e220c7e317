"""The embedded default's private CA and server certificate, and TLS server contexts.

On first start without a ``[tls]`` config, pymail makes, in ``<data>/tls/``:

* ``ca.pem`` / ``ca-key.pem``: a private certificate authority (RFC 5280 section 4.2.1.9
  BasicConstraints CA=TRUE, pathLenConstraint 0; KeyUsage keyCertSign + cRLSign), valid
  10 years.  A mail client trusts ``ca.pem`` once.
* ``cert.pem`` / ``key.pem``: a leaf server certificate signed by that CA (CA=FALSE;
  KeyUsage digitalSignature + keyEncipherment; ExtendedKeyUsage serverAuth; SAN
  DNS:<hostname>, DNS:localhost, IP:127.0.0.1, IP:::1; SKI/AKI), valid 825 days.
  A separate leaf is required: Thunderbird (NSS) rejects a CA certificate presented as
  the server's own certificate, even a trusted one.

Why RSA: every TLS client a mail server meets (old Outlook and Java clients, printers and
scanners that submit mail, embedded devices) does RSA, while ECDSA support is still
missing in some of them; RSA 2048 for the leaf (handshake cost and compatibility), RSA 3072
for the CA because it lives 10 years, past 2030, when NIST SP 800-57 retires 112-bit
strength.  825 days: the longest validity Apple clients accept for a TLS server
certificate (Apple, "Requirements for trusted certificates in iOS 13 and macOS 10.15").

Invariants:

* Idempotent: files that are valid are never rewritten (byte-identical after a second
  call).  The leaf (with a fresh key) is re-issued when it is missing, unreadable, not
  signed by the current CA, lacks a SAN for the host name, or expires within 30 days.
  The CA is kept across host-name changes; it is only re-created when both its files are
  missing or it expires within 30 days (then clients must trust the new ``ca.pem``).
  A CA certificate without its key (or vice versa) or one that cannot be parsed is an
  error, never silently replaced: that would break every client's trust.
* Private keys are written 0600 from creation (never world-readable, even briefly),
  atomically: temp file + fsync + rename + directory fsync.  Concurrent callers (several
  worker processes) are serialised by an ``flock`` on ``tls_dir/.lock``.
* ``make_server_context`` raises ``ValueError`` with a one-line message naming the file for
  any missing, unreadable, malformed or mismatched certificate/key.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import secrets
import ssl
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TlsFiles", "ensure_embedded_certificates", "make_server_context"]

log = logging.getLogger(__name__)

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=825)
#: A certificate expiring sooner than this is replaced.
RENEW_BEFORE = dt.timedelta(days=30)
#: Backdating of notBefore, for clients whose clock is slightly behind.
CLOCK_SKEW = dt.timedelta(hours=1)
CA_KEY_BITS = 3072
LEAF_KEY_BITS = 2048

# Names a leaf always carries besides the host name: clients on the machine itself.
_LOOPBACK_DNS = "localhost"
_LOOPBACK_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))

# What may sign leaves: the CA pymail makes is RSA; an operator-supplied ECDSA CA works too.
_SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class TlsFiles:
    """Where the embedded default's PEM files live."""

    ca: Path  # the private CA certificate clients trust (public)
    cert: Path  # the server's leaf certificate, signed by ``ca`` (public)
    key: Path  # the leaf's private key (0600)


class _Unusable(Exception):
    """An existing leaf that must be re-issued; the message says why (for the log)."""


def ensure_embedded_certificates(
    tls_dir: Path, hostname: str, *, now: dt.datetime | None = None
) -> TlsFiles:
    """Make (or keep) the private CA and the server certificate for ``hostname``.

    ``now`` (aware UTC) is injectable for tests; default the current time.  Raises
    ``ValueError`` (one line) for an invalid host name or unusable CA files.
    """
    tls_dir = Path(tls_dir)
    now = now or dt.datetime.now(dt.timezone.utc)
    name = _normalise_hostname(hostname)
    files = TlsFiles(ca=tls_dir / "ca.pem", cert=tls_dir / "cert.pem", key=tls_dir / "key.pem")
    ca_key_path = tls_dir / "ca-key.pem"

    tls_dir.mkdir(parents=True, exist_ok=True)
    with _locked(tls_dir / ".lock"):
        ca_cert, ca_key = _load_or_make_ca(files.ca, ca_key_path, now)
        try:
            _check_leaf(files.cert, files.key, ca_cert, name, now)
        except _Unusable as why:
            log.info("issuing TLS server certificate %s for %s (%s)", files.cert, name, why)
            _issue_leaf(files.cert, files.key, ca_cert, ca_key, name, now)
        for key_path in (ca_key_path, files.key):
            _tighten_permissions(key_path)
    return files


def make_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context with the certificate chain ``cert`` and key ``key``.

    Raises ``ValueError`` with a one-line message naming the file when either is missing,
    unreadable, not PEM, or the key does not belong to the certificate.
    """
    cert, key = Path(cert), Path(key)
    cert_pem = _read(cert, "TLS certificate")
    key_pem = _read(key, "TLS key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ValueError(f"TLS certificate {cert}: no PEM certificate in the file") from None
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"TLS key {key}: not an unencrypted PEM private key") from None
    except Exception as exc:  # e.g. UnsupportedAlgorithm
        raise ValueError(f"TLS key {key}: unusable private key ({type(exc).__name__})") from None
    if _public_der(private_key.public_key()) != _public_der(chain[0].public_key()):
        raise ValueError(f"TLS key {key} does not match the certificate in {cert}")

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996: TLS 1.0 and 1.1 are deprecated; RFC 9325 section 3.1.1: TLS 1.2 minimum.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME; RFC 9325 section 3.3
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)  # client-initiated reneg DoS
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (ssl.SSLError, OSError) as exc:
        reason = " ".join(str(exc).split())
        raise ValueError(f"TLS certificate {cert} / key {key}: cannot load ({reason})") from None
    return context


# --- the CA -----------------------------------------------------------------------------


def _load_or_make_ca(
    ca_path: Path, ca_key_path: Path, now: dt.datetime
) -> tuple[x509.Certificate, _SigningKey]:
    have_cert, have_key = ca_path.exists(), ca_key_path.exists()
    if have_cert and have_key:
        ca_cert = _load_cert(ca_path, "CA certificate")
        ca_key = _load_key(ca_key_path, "CA key")
        if _public_der(ca_key.public_key()) != _public_der(ca_cert.public_key()):
            raise ValueError(f"CA key {ca_key_path} does not match the CA certificate {ca_path}")
        if ca_cert.not_valid_after_utc - now > RENEW_BEFORE:
            return ca_cert, ca_key
        log.warning(
            "private CA %s expires %s: making a new one; clients must trust the new file",
            ca_path, ca_cert.not_valid_after_utc.date(),
        )
    elif have_cert or have_key:
        present, missing = (ca_path, ca_key_path) if have_cert else (ca_key_path, ca_path)
        raise ValueError(f"{present} exists but {missing} is missing: restore it, or remove both to make a new CA")
    return _make_ca(ca_path, ca_key_path, now)


def _make_ca(ca_path: Path, ca_key_path: Path, now: dt.datetime) -> tuple[x509.Certificate, _SigningKey]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=CA_KEY_BITS)
    # A random suffix makes each installation's CA name unique: NSS (Thunderbird) trips
    # over two different CAs with the same subject when both are trusted.
    subject = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pymail"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"pymail private CA {secrets.token_hex(4)}"),
    ])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    not_before = now - CLOCK_SKEW
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())  # RFC 5280 4.1.2.2: positive, <= 20 octets
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)  # 4.2.1.9
        .add_extension(
            x509.KeyUsage(  # 4.2.1.3
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)  # 4.2.1.2
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    log.info("made private CA %s (clients trust this file once)", ca_path)
    _write_atomic(ca_key_path, _key_pem(key), 0o600)
    _write_atomic(ca_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert, key


# --- the leaf ---------------------------------------------------------------------------


def _check_leaf(cert_path: Path, key_path: Path, ca_cert: x509.Certificate, name: str, now: dt.datetime) -> None:
    """Raise _Unusable unless the existing leaf is fine to keep."""
    if not cert_path.exists() or not key_path.exists():
        raise _Unusable("no certificate yet")
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except Exception:
        raise _Unusable("existing files unreadable") from None
    if _public_der(key.public_key()) != _public_der(cert.public_key()):
        raise _Unusable("key does not match certificate")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise _Unusable("not signed by the current CA") from None
    if cert.not_valid_after_utc - now <= RENEW_BEFORE:
        raise _Unusable(f"expires {cert.not_valid_after_utc.date()}")
    if cert.not_valid_before_utc > now:
        raise _Unusable("not yet valid")
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise _Unusable("no subjectAltName") from None
    if set(_san_entries(name)) - set(san):
        raise _Unusable("host name changed")


def _issue_leaf(
    cert_path: Path, key_path: Path, ca_cert: x509.Certificate, ca_key: _SigningKey,
    name: str, now: dt.datetime,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=LEAF_KEY_BITS)
    subject_attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pymail")]
    if len(name) <= 64:  # RFC 5280 ub-common-name; the SAN is what clients check anyway
        subject_attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, name))
    not_before = now - CLOCK_SKEW
    not_after = min(not_before + LEAF_VALIDITY, ca_cert.not_valid_after_utc)
    try:
        ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:  # a CA without SKI: derive the key id (RFC 5280 4.2.1.2)
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject_attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(  # RFC 5280 4.2.1.3; keyEncipherment for TLS 1.2 RSA key exchange
                digital_signature=True, content_commitment=False, key_encipherment=True,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)  # 4.2.1.12
        .add_extension(x509.SubjectAlternativeName(_san_entries(name)), critical=False)  # 4.2.1.6; RFC 6125
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)  # 4.2.1.1
        .sign(ca_key, hashes.SHA256())
    )
    # Key first: a crash between the two renames leaves a mismatched pair, which the
    # next start detects and re-issues.
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _san_entries(name: str) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        entries.append(x509.DNSName(name))
    else:
        if address not in _LOOPBACK_IPS:
            entries.append(x509.IPAddress(address))
    if x509.DNSName(_LOOPBACK_DNS) not in entries:
        entries.append(x509.DNSName(_LOOPBACK_DNS))
    entries.extend(x509.IPAddress(ip) for ip in _LOOPBACK_IPS)
    return entries


def _normalise_hostname(hostname: str) -> str:
    """Lower-case A-label host name (RFC 5890) or IP literal; ValueError if neither."""
    if not isinstance(hostname, str) or not hostname.strip():
        raise ValueError("TLS certificate host name is empty")
    name = hostname.strip().rstrip(".").lower()
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(name.strip("[]")))
    try:
        name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"TLS certificate host name {hostname!r} is not a valid domain name") from None
    labels = name.split(".")
    if len(name) > 253 or not all(
        0 < len(label) <= 63 and label[0] != "-" and label[-1] != "-"
        and all(c.isascii() and (c.isalnum() or c in "-_") for c in label)
        for label in labels
    ):
        raise ValueError(f"TLS certificate host name {hostname!r} is not a valid domain name")
    return name


# --- files ------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + rename + directory fsync."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _tighten_permissions(key_path: Path) -> None:
    """A key readable by group or others (e.g. copied in by hand) is set back to 0600."""
    with contextlib.suppress(FileNotFoundError):
        mode = stat.S_IMODE(key_path.stat().st_mode)
        if mode & 0o077:
            log.warning("private key %s had mode %o; setting 0600", key_path, mode)
            key_path.chmod(0o600)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path}: is a directory") from None
    except PermissionError:
        raise ValueError(f"{what} {path}: permission denied") from None
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot read ({exc.strerror})") from None


def _load_cert(path: Path, what: str) -> x509.Certificate:
    data = _read(path, what)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise ValueError(f"{what} {path}: not a PEM certificate") from None


def _load_key(path: Path, what: str) -> _SigningKey:
    data = _read(path, what)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except Exception:
        raise ValueError(f"{what} {path}: not an unencrypted PEM private key") from None
    if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
        raise ValueError(f"{what} {path}: not an RSA or ECDSA key")
    return key


def _key_pem(key: _SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
