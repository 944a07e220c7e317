"""Tests for pymail.net.certs: the embedded default's private CA, leaf and TLS context.

The chain is checked with the real ``openssl verify`` and with a real TLS handshake on
loopback by Python's client (OpenSSL's hostname/IP verification), not just by reading
back what the module wrote.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pymail.net.certs import TlsFiles, ensure_embedded_certificates, make_server_context
from tests.pymail_harness import client_tool

HOST = "mail.example.test"
OPENSSL = shutil.which("openssl")


@pytest.fixture
def openssl() -> str:
    """The openssl command (a skip without it; a failure under scripts/test.sh)."""
    return client_tool("openssl", "openssl")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """One generated tls dir for the read-only tests (key generation takes ~1 s)."""
    return ensure_embedded_certificates(tmp_path_factory.mktemp("tls-base") / "tls", HOST)


@pytest.fixture
def tls_copy(made: TlsFiles, tmp_path: Path) -> Path:
    """A private copy of the generated dir (modes preserved) for tests that change it."""
    target = tmp_path / "tls"
    shutil.copytree(made.ca.parent, target)
    return target


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("*.pem"))}


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _openssl_verify(files: TlsFiles, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(files.ca), *extra, str(files.cert)],
        capture_output=True, text=True, timeout=30,
    )


# --- what is generated ----------------------------------------------------------------


def test_files_and_modes(made: TlsFiles) -> None:
    tls_dir = made.ca.parent
    assert made == TlsFiles(ca=tls_dir / "ca.pem", cert=tls_dir / "cert.pem", key=tls_dir / "key.pem")
    for key in (made.key, tls_dir / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert b"PRIVATE KEY" in key.read_bytes()
    for cert in (made.ca, made.cert):
        assert stat.S_IMODE(cert.stat().st_mode) == 0o644, cert
        assert b"PRIVATE" not in cert.read_bytes()
    assert not list(tls_dir.glob(".*.tmp")), "temp files left behind"


@pytest.mark.usefixtures("openssl")
def test_openssl_verifies_chain_hostname_and_ips(made: TlsFiles) -> None:
    result = _openssl_verify(made, "-purpose", "sslserver")
    assert result.returncode == 0 and result.stdout.strip().endswith(": OK"), result
    for option, value in (("-verify_hostname", HOST), ("-verify_hostname", "localhost"),
                          ("-verify_ip", "127.0.0.1"), ("-verify_ip", "::1")):
        result = _openssl_verify(made, option, value)
        assert result.returncode == 0, (option, value, result.stdout, result.stderr)
    result = _openssl_verify(made, "-verify_hostname", "other.example.test")
    assert result.returncode != 0


@pytest.mark.usefixtures("openssl")
def test_openssl_refuses_the_leaf_as_a_ca(made: TlsFiles, tmp_path: Path) -> None:
    # The leaf must not be able to sign (CA=FALSE, no keyCertSign): a certificate "issued"
    # by it does not chain, while the CA is limited to one level (pathlen 0) anyway.
    leaf = _cert(made.cert)
    leaf_key = serialization.load_pem_private_key(made.key.read_bytes(), password=None)
    grandchild_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.timezone.utc)
    grandchild = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil.example.test")]))
        .issuer_name(leaf.subject)
        .public_key(grandchild_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(leaf_key, hashes.SHA256())
    )
    path = tmp_path / "grandchild.pem"
    path.write_bytes(grandchild.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(made.ca), "-untrusted", str(made.cert), str(path)],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode != 0
    assert "invalid CA certificate" in result.stdout + result.stderr, result


def test_ca_extensions(made: TlsFiles) -> None:
    ca = _cert(made.ca)
    assert ca.subject == ca.issuer
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature and not ku.value.key_encipherment
    ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = ca.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert ca.not_valid_after_utc - ca.not_valid_before_utc == dt.timedelta(days=3650)
    assert isinstance(ca.public_key(), rsa.RSAPublicKey) and ca.public_key().key_size == 3072
    assert ca.signature_hash_algorithm.name == "sha256"


def test_leaf_extensions(made: TlsFiles) -> None:
    ca, leaf = _cert(made.ca), _cert(made.cert)
    assert leaf.issuer == ca.subject and leaf.subject != ca.subject
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [HOST, "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    ski = leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf.public_key())
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=825)
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey) and leaf.public_key().key_size == 2048
    leaf.verify_directly_issued_by(ca)
    assert leaf.serial_number != ca.serial_number


# --- idempotency and re-issue ---------------------------------------------------------


def test_second_call_keeps_files_byte_identical(tls_copy: Path) -> None:
    before = _contents(tls_copy)
    files = ensure_embedded_certificates(tls_copy, HOST)
    assert _contents(tls_copy) == before
    assert files.cert == tls_copy / "cert.pem"
    # Host names are compared case-insensitively and without a trailing dot.
    ensure_embedded_certificates(tls_copy, "Mail.Example.TEST.")
    assert _contents(tls_copy) == before


@pytest.mark.usefixtures("openssl")
def test_hostname_change_reissues_leaf_keeps_ca(tls_copy: Path) -> None:
    before = _contents(tls_copy)
    files = ensure_embedded_certificates(tls_copy, "imap.example.org")
    after = _contents(tls_copy)
    assert after["ca.pem"] == before["ca.pem"] and after["ca-key.pem"] == before["ca-key.pem"]
    assert after["cert.pem"] != before["cert.pem"] and after["key.pem"] != before["key.pem"]
    san = _cert(files.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "imap.example.org" in san.get_values_for_type(x509.DNSName)
    assert _openssl_verify(files, "-verify_hostname", "imap.example.org").returncode == 0
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600


def test_leaf_expiring_within_30_days_is_reissued(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(days=780)
    files = ensure_embedded_certificates(tmp_path / "tls", HOST, now=start)
    old = _contents(files.ca.parent)
    # 780 days on, the 825-day leaf still has ~45 days: kept.
    ensure_embedded_certificates(files.ca.parent, HOST, now=now)
    assert _contents(files.ca.parent) == old
    # 800 days on, ~25 days left: re-issued from the same CA.
    ensure_embedded_certificates(files.ca.parent, HOST, now=start + dt.timedelta(days=800))
    new = _contents(files.ca.parent)
    assert new["ca.pem"] == old["ca.pem"] and new["cert.pem"] != old["cert.pem"]
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))


def test_damaged_or_foreign_leaf_is_reissued(tls_copy: Path, tmp_path: Path) -> None:
    files = TlsFiles(ca=tls_copy / "ca.pem", cert=tls_copy / "cert.pem", key=tls_copy / "key.pem")
    ca_before = files.ca.read_bytes()
    files.cert.write_bytes(b"not a certificate")
    ensure_embedded_certificates(tls_copy, HOST)
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))
    # A key that belongs to another certificate.
    other = ensure_embedded_certificates(tmp_path / "other", HOST)
    shutil.copy(other.key, files.key)
    ensure_embedded_certificates(tls_copy, HOST)
    make_server_context(files.cert, files.key)  # consistent again
    # A leaf signed by another CA.
    shutil.copy(other.cert, files.cert)
    shutil.copy(other.key, files.key)
    ensure_embedded_certificates(tls_copy, HOST)
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))
    assert files.ca.read_bytes() == ca_before


def test_removing_both_ca_files_makes_a_new_ca_and_leaf(tls_copy: Path) -> None:
    before = _contents(tls_copy)
    (tls_copy / "ca.pem").unlink()
    (tls_copy / "ca-key.pem").unlink()
    files = ensure_embedded_certificates(tls_copy, HOST)
    after = _contents(tls_copy)
    assert after["ca.pem"] != before["ca.pem"] and after["cert.pem"] != before["cert.pem"]
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))


@pytest.mark.parametrize("remove", ["ca.pem", "ca-key.pem"])
def test_half_a_ca_is_an_error_not_replaced(tls_copy: Path, remove: str) -> None:
    (tls_copy / remove).unlink()
    with pytest.raises(ValueError) as err:
        ensure_embedded_certificates(tls_copy, HOST)
    assert remove in str(err.value) and "\n" not in str(err.value)


def test_garbage_ca_is_an_error(tls_copy: Path) -> None:
    (tls_copy / "ca.pem").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="ca.pem"):
        ensure_embedded_certificates(tls_copy, HOST)


def test_loose_key_permissions_are_tightened(tls_copy: Path) -> None:
    (tls_copy / "key.pem").chmod(0o644)
    (tls_copy / "ca-key.pem").chmod(0o640)
    before = _contents(tls_copy)
    ensure_embedded_certificates(tls_copy, HOST)
    assert stat.S_IMODE((tls_copy / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tls_copy / "ca-key.pem").stat().st_mode) == 0o600
    assert _contents(tls_copy) == before


def test_concurrent_first_start_makes_one_ca(tmp_path: Path) -> None:
    results: list[object] = []

    def run() -> None:
        try:
            results.append(ensure_embedded_certificates(tmp_path / "tls", HOST))
        except Exception as exc:  # pragma: no cover - reported below
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert all(isinstance(r, TlsFiles) for r in results) and len(results) == 3, results
    files = results[0]
    _cert(files.cert).verify_directly_issued_by(_cert(files.ca))
    make_server_context(files.cert, files.key)


@pytest.mark.parametrize("hostname", ["localhost", "192.0.2.7", "::1", "bücher.example"])
def test_other_host_name_forms(tmp_path: Path, hostname: str) -> None:
    files = ensure_embedded_certificates(tmp_path / "tls", hostname)
    san = _cert(files.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert "localhost" in names and ipaddress.ip_address("::1") in ips
    if hostname == "192.0.2.7":
        assert ipaddress.ip_address("192.0.2.7") in ips
    if hostname == "bücher.example":
        assert "xn--bcher-kva.example" in names
    assert len(names) == len(set(names)) and len(ips) == len(set(ips))


@pytest.mark.parametrize("hostname", ["", "  ", "bad host", "a..b", "-x.example", "x" * 64 + ".example"])
def test_invalid_host_name(tmp_path: Path, hostname: str) -> None:
    with pytest.raises(ValueError):
        ensure_embedded_certificates(tmp_path / "tls", hostname)


# --- a real handshake on loopback ---------------------------------------------------------


async def _handshake(server_ctx: ssl.SSLContext, ca: Path, host: str, server_hostname: str) -> bytes:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"* OK " + await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, host, 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        client_ctx = ssl.create_default_context(cafile=str(ca))
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_ctx, server_hostname=server_hostname), 10)
        writer.write(b"hello\r\n")
        reply = await asyncio.wait_for(reader.readline(), 10)
        assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
        writer.close()
        return reply
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("server_hostname", ["localhost", "127.0.0.1", HOST])
def test_tls_handshake_verifies(made: TlsFiles, server_hostname: str) -> None:
    ctx = make_server_context(made.cert, made.key)
    assert asyncio.run(_handshake(ctx, made.ca, "127.0.0.1", server_hostname)) == b"* OK hello\r\n"


def test_tls_handshake_over_ipv6(made: TlsFiles) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("::1 not available")
    ctx = make_server_context(made.cert, made.key)
    assert asyncio.run(_handshake(ctx, made.ca, "::1", "::1")) == b"* OK hello\r\n"


def test_tls_handshake_wrong_name_fails(made: TlsFiles) -> None:
    ctx = make_server_context(made.cert, made.key)
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_handshake(ctx, made.ca, "127.0.0.1", "other.example.test"))


def test_tls_handshake_untrusted_ca_fails(made: TlsFiles, tmp_path: Path) -> None:
    other = ensure_embedded_certificates(tmp_path / "other", HOST)
    ctx = make_server_context(made.cert, made.key)
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(_handshake(ctx, other.ca, "127.0.0.1", "localhost"))


def test_server_context_is_tls12_or_later(made: TlsFiles) -> None:
    ctx = make_server_context(made.cert, made.key)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION


# --- make_server_context errors -------------------------------------------------------------


def _one_line_error_naming(path: Path, cert: Path, key: Path) -> str:
    with pytest.raises(ValueError) as err:
        make_server_context(cert, key)
    message = str(err.value)
    assert str(path) in message and "\n" not in message, message
    return message


def test_bogus_key_file(made: TlsFiles, tmp_path: Path) -> None:
    bogus = tmp_path / "key.pem"
    bogus.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    _one_line_error_naming(bogus, made.cert, bogus)
    bogus.write_bytes(b"\x00\x01garbage")
    _one_line_error_naming(bogus, made.cert, bogus)


def test_missing_or_unreadable_files(made: TlsFiles, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    assert "no such file" in _one_line_error_naming(missing, missing, made.key)
    _one_line_error_naming(missing, made.cert, missing)
    _one_line_error_naming(tmp_path, made.cert, tmp_path)  # a directory
    garbage_cert = tmp_path / "cert.pem"
    garbage_cert.write_text("hello")
    _one_line_error_naming(garbage_cert, garbage_cert, made.key)


def test_mismatched_key(made: TlsFiles, tmp_path: Path) -> None:
    other = ensure_embedded_certificates(tmp_path / "other", HOST)
    message = _one_line_error_naming(other.key, made.cert, other.key)
    assert "does not match" in message


def test_ca_key_is_not_the_server_key(made: TlsFiles) -> None:
    _one_line_error_naming(made.ca.parent / "ca-key.pem", made.cert, made.ca.parent / "ca-key.pem")
