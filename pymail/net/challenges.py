"""Pending ACME challenges, shared between the ACME client and every listener.

The ACME client (pymail.ops.acme, in one worker) writes a challenge here before it asks
the CA to validate, and removes it afterwards; whichever worker process the CA's
validation connection lands on (SO_REUSEPORT) answers it from here, so the store is a
directory, not process memory:

* http-01 (RFC 8555 section 8.3): ``<dir>/http-01/<token>`` holds the key authorization
  the web service returns for ``GET /.well-known/acme-challenge/<token>``;
* tls-alpn-01 (RFC 8737): ``<dir>/tls-alpn-01/<name>.pem`` holds the self-signed
  validation certificate and its key; the TLS layer serves it, with ALPN
  ``acme-tls/1``, to a client that asks for ``<name>`` while it exists.

Invariants: tokens and names are checked before they touch the file system (base64url
tokens, host names), so no request can name another file; files are written atomically
and 0600; a missing directory means no challenge.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path

__all__ = ["ACME_TLS_ALPN", "ChallengeStore"]

#: The ALPN protocol of tls-alpn-01 (RFC 8737 section 6.2).
ACME_TLS_ALPN = "acme-tls/1"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{16,256}$")  # base64url, RFC 8555 section 8.1
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,62})(\.[a-z0-9]([a-z0-9-]{0,62}))*$")


class ChallengeStore:
    """Challenges in files under ``directory`` (``<data_dir>/acme/challenges``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._contexts: dict[str, tuple[float, ssl.SSLContext]] = {}

    # ---------------------------------------------------------------- http-01

    def put_http01(self, token: str, key_authorization: str) -> None:
        self._write(self._http01_path(token), key_authorization.encode("ascii"))

    def remove_http01(self, token: str) -> None:
        self._http01_path(token).unlink(missing_ok=True)

    def http01(self, token: str) -> str | None:
        """The key authorization for ``token``, or None (not a challenge of ours)."""
        if not _TOKEN.match(token):
            return None
        try:
            return self._http01_path(token).read_text("ascii")
        except (OSError, UnicodeDecodeError):
            return None

    # ------------------------------------------------------------ tls-alpn-01

    def put_tls_alpn(self, name: str, cert_pem: bytes, key_pem: bytes) -> None:
        self._write(self._alpn_path(name), key_pem + cert_pem)

    def remove_tls_alpn(self, name: str) -> None:
        self._alpn_path(name).unlink(missing_ok=True)
        self._contexts.pop(name, None)

    def tls_alpn_context(self, server_name: str | None) -> ssl.SSLContext | None:
        """A server context presenting the validation certificate for ``server_name``
        and offering only ALPN ``acme-tls/1``, or None when no challenge is pending for
        that name.  Cached per file modification time."""
        if not server_name:
            return None
        name = server_name.lower().rstrip(".")
        if not _NAME.match(name):
            return None
        path = self.directory / "tls-alpn-01" / f"{name}.pem"
        try:
            mtime = path.stat().st_mtime
        except OSError:
            self._contexts.pop(name, None)
            return None
        cached = self._contexts.get(name)
        if cached is not None and cached[0] == mtime:
            return cached[1]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(path)
        except (OSError, ssl.SSLError):
            return None
        context.set_alpn_protocols([ACME_TLS_ALPN])
        self._contexts[name] = (mtime, context)
        return context

    # ---------------------------------------------------------------- files

    def _http01_path(self, token: str) -> Path:
        if not _TOKEN.match(token):
            raise ValueError(f"invalid ACME token {token!r}")
        return self.directory / "http-01" / token

    def _alpn_path(self, name: str) -> Path:
        name = name.lower().rstrip(".")
        if not _NAME.match(name):
            raise ValueError(f"invalid host name {name!r}")
        return self.directory / "tls-alpn-01" / f"{name}.pem"

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, path)
