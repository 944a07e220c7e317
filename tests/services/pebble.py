"""A private pebble (Let's Encrypt's ACME test CA, RFC 8555) on free loopback ports.

Pebble gets its whole configuration from a JSON file in the service's own temp
directory: the ACME directory at ``https://127.0.0.1:<port>/dir``, the management
interface (``/roots/0``: the issuing root, new at every start) on a second port, and the
ports it *validates* challenges on -- ``http_port`` (http-01, RFC 8555 section 8.3) and
``tls_port`` (tls-alpn-01, RFC 8737) -- where the test's listener for the names must be.
Names are resolved through the tests' NSD (``-dnsserver 127.0.0.1:<port>``), so
``mail.example.test`` is 127.0.0.1; nothing else is asked.

The Debian package ships no certificate for pebble's own HTTPS listener, so the service
makes a small CA and a certificate for 127.0.0.1/localhost with `cryptography`;
`ca_file` is what an ACME client must trust (``[acme] ca_file``).

Environment: ``PEBBLE_VA_NOSLEEP=1`` (no random validation delays) and
``PEBBLE_WFE_NONCEREJECT=0`` (no random badNonce errors), ``PEBBLE_AUTHZREUSE=0`` (every
order validates its challenges anew) for fast, deterministic tests;
never ``PEBBLE_VA_ALWAYS_VALID``: every challenge is really validated.
``validity`` (seconds) sets the issued certificates' lifetime (pebble's default: 5 years).

Ready = the directory answers.  Stopped by its own process group.
"""

from __future__ import annotations

import atexit
import datetime
import ipaddress
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.services.process import free_loopback_port, own_group_and_die_with_parent, stop_group

__all__ = ["PebbleService", "PebbleServiceError"]

HOST = "127.0.0.1"
DEBIAN_PACKAGE = "pebble"
READY_TIMEOUT = 20.0


class PebbleServiceError(RuntimeError):
    """pebble could not be made or started (the message says why)."""


def _make_listener_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a CA and pebble's HTTPS certificate for
    127.0.0.1 and localhost."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pymail tests: pebble listener CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = directory / "listener-ca.pem", directory / "listener-cert.pem", directory / "listener-key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


class PebbleService:
    """One pebble: `directory_url`, `ca_file` (its HTTPS), `http_port` / `tls_port` (where
    it validates challenges), `root_pem()` (the issuing root)."""

    def __init__(self, dns_port: int, *, http_port: int | None = None, tls_port: int | None = None,
                 validity: int | None = None) -> None:
        self.binary = shutil.which("pebble") or "/usr/bin/pebble"
        if not os.access(self.binary, os.X_OK):
            raise PebbleServiceError(f"pebble not found: apt-get install {DEBIAN_PACKAGE}")
        self.dns_port = dns_port
        self.port = free_loopback_port()
        self.management_port = free_loopback_port()
        self.http_port = http_port or free_loopback_port()
        self.tls_port = tls_port or free_loopback_port()
        self.validity = validity
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.ca_file: Path | None = None

    @property
    def directory_url(self) -> str:
        return f"https://{HOST}:{self.port}/dir"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "pebble.log"

    def start(self) -> "PebbleService":
        self.root = Path(tempfile.mkdtemp(prefix="pymail-pebble-"))
        atexit.register(self.stop)
        self.ca_file, cert, key = _make_listener_certificate(self.root)
        settings = {
            "listenAddress": f"{HOST}:{self.port}",
            "managementListenAddress": f"{HOST}:{self.management_port}",
            "certificate": str(cert),
            "privateKey": str(key),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
        if self.validity is not None:
            settings["certificateValidityPeriod"] = self.validity
        config = self.root / "pebble-config.json"
        config.write_text(json.dumps({"pebble": settings}, indent=2))
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PEBBLE_VA_NOSLEEP": "1",
               "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-config", str(config), "-dnsserver", f"{HOST}:{self.dns_port}"],
                cwd=self.root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=own_group_and_die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise PebbleServiceError(f"pebble exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                self._get(self.directory_url)
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise PebbleServiceError(f"pebble not ready in {READY_TIMEOUT:.0f}s: {self.log_tail()}")
                time.sleep(0.05)

    def _get(self, url: str) -> bytes:
        assert self.ca_file is not None
        context = ssl.create_default_context(cafile=str(self.ca_file))
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return response.read()

    def root_pem(self) -> bytes:
        """The root that signs this run's issued chains (management ``/roots/0``)."""
        return self._get(f"https://{HOST}:{self.management_port}/roots/0")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
            self.proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
