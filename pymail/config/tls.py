"""``[tls]`` and ``[acme]``: where the served certificates come from.

Three sources, one at a time for the main certificate:

* the embedded default (neither ``tls.cert`` nor ``[acme]``): a private CA and a
  certificate signed by it, made in ``<data_dir>/tls`` (pymail.net.certs);
* files another tool keeps up to date (``tls.cert`` / ``tls.key``, e.g. certbot's
  ``/etc/letsencrypt/live/NAME/``): re-read on SIGHUP and when they change;
* pymail's own ACME client (``[acme] directory_url``, RFC 8555): keys and certificates
  under ``<data_dir>/acme``, renewed ahead of expiry.

``tls.certificates`` adds certificates chosen by the name a client asks for (SNI,
RFC 6066 section 3), e.g. a separate one for ``mta-sts.example.com``; the names come from
each certificate's subjectAltName.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from pymail.config.types import Duration, _Section

__all__ = ["AcmeConfig", "CertificatePair", "TlsConfig"]


class CertificatePair(_Section):
    cert: Path = Field(description="PEM certificate chain (leaf first).")
    key: Path = Field(description="PEM private key of `cert`.")


class TlsConfig(_Section):
    cert: Path | None = Field(
        default=None,
        description="PEM certificate chain (e.g. Let's Encrypt fullchain.pem). Unset: a "
        "private CA and a certificate signed by it are made in <data_dir>/tls on first start "
        "(or [acme] gets one).",
    )
    key: Path | None = Field(
        default=None,
        description="PEM private key for `cert` (e.g. Let's Encrypt privkey.pem).",
    )
    certificates: list[CertificatePair] = Field(
        default=[],
        description="More certificates, each served to clients that ask for one of its "
        "names (SNI), e.g. [{cert = \".../mta-sts.example.com/fullchain.pem\", key = "
        "\".../privkey.pem\"}]. Clients asking for another name (or none) get `cert`.",
    )
    check_interval: Duration = Field(
        default=60.0,
        ge=0,
        description="How often the certificate files are looked at: changed files (certbot "
        "renew replaces the symlinks) are loaded for new connections without a restart; open "
        "connections keep theirs. 0: only on SIGHUP.",
    )
    expiry_warning: Duration = Field(
        default=14 * 86400.0,
        ge=0,
        description="A certificate expiring within this long (e.g. \"14d\") logs a warning "
        "at start, at every reload and once a day.",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> "TlsConfig":
        if (self.cert is None) != (self.key is None):
            raise ValueError("set both cert and key, or neither")
        return self


class AcmeConfig(_Section):
    """pymail's built-in ACME client (RFC 8555): certificates from Let's Encrypt or any
    ACME CA, without certbot."""

    directory_url: str | None = Field(
        default=None,
        description="The ACME server's directory, e.g. "
        "\"https://acme-v02.api.letsencrypt.org/directory\" (Let's Encrypt's staging server "
        "for a first try: \"https://acme-staging-v02.api.letsencrypt.org/directory\"). "
        "Unset: no ACME.",
    )
    contact: str | None = Field(
        default=None,
        description="E-mail address the CA writes to about the account (expiry notices).",
    )
    names: list[str] = Field(
        default=[],
        description="Names the certificate covers. Default: server.hostname (add e.g. "
        "\"mta-sts.example.com\", \"autoconfig.example.com\" when [listen] https serves them).",
    )
    challenge: str = Field(
        default="http-01",
        pattern="^(http-01|tls-alpn-01)$",
        description="How the CA checks that the names are ours: \"http-01\" (RFC 8555 "
        "section 8.3: a file served on port 80, [listen] web) or \"tls-alpn-01\" (RFC 8737: "
        "a special certificate on port 443, [listen] https).",
    )
    renew_before: Duration = Field(
        default=30 * 86400.0,
        gt=0,
        description="Renew when the certificate expires within this long (e.g. \"30d\"; "
        "Let's Encrypt's certificates last 90 days).",
    )
    key_type: str = Field(
        default="rsa",
        pattern="^(rsa|ecdsa)$",
        description="The certificate key: \"rsa\" (2048 bits, what every client speaks) or "
        "\"ecdsa\" (P-256).",
    )
    ca_file: Path | None = Field(
        default=None,
        description="CA bundle that signs the ACME server's own HTTPS certificate, for a "
        "private ACME server (e.g. pebble, step-ca). Unset: the system's CA store.",
    )

    @field_validator("directory_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"invalid directory URL {value!r} (expected https://...)")
        return value

    @field_validator("contact")
    @classmethod
    def _contact(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().removeprefix("mailto:")
        local, at, domain = value.rpartition("@")
        if not at or not local or "." not in domain:
            raise ValueError(f"invalid address {value!r} (expected e.g. \"hostmaster@example.com\")")
        return value

    @field_validator("names")
    @classmethod
    def _names(cls, value: list[str]) -> list[str]:
        out = []
        for name in value:
            name = str(name).strip().lower().rstrip(".")
            if not name or "." not in name or name.startswith("*"):
                raise ValueError(f"invalid name {name!r} (a host name; wildcards need dns-01, "
                                 "which pymail does not do)")
            out.append(name)
        return out

    @property
    def enabled(self) -> bool:
        return self.directory_url is not None
