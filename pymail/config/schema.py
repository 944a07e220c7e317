"""The configuration schema: every key of pymail.toml, its type, default and meaning.

Each field carries its documentation in `description`; `conf/pymail.toml` is the commented
production example and a test checks that it names every field here and validates.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(value: object) -> int:
    """Bytes from an integer or a string like "100MB", "512K", "1GiB".

    Units are binary, as in Postfix and Dovecot settings: 1 MB = 1 MiB = 1048576 bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 100MB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[m.group(2).upper()]
    raise ValueError(f"invalid size {value!r} (use e.g. 100MB, 512KB or a number of bytes)")


Size = Annotated[int, BeforeValidator(parse_size)]


def parse_hostport(value: object) -> str:
    """Validate "host:port" / "[v6]:port"; returns it normalised."""
    if not isinstance(value, str):
        raise ValueError("expected \"host:port\"")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid address {value!r} (expected \"host:port\", e.g. \"0.0.0.0:25\")")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"invalid address {value!r} (write IPv6 as \"[::1]:25\")")
    return f"{host}:{int(port)}"


HostPort = Annotated[str, BeforeValidator(parse_hostport)]


def split_hostport(value: str) -> tuple[str, int]:
    """("::1", 25) from "[::1]:25"."""
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _default_hostname() -> str:
    fqdn = socket.getfqdn()
    return socket.gethostname() if fqdn.startswith("localhost") else fqdn


def default_data_dir() -> Path:
    return Path(os.environ.get("PYMAIL_DATA") or "pymail-data").absolute()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerConfig(_Section):
    hostname: str = Field(
        default_factory=lambda: _default_hostname(),
        description="This server's host name: SMTP banner and HELO, Received headers, "
        "the name the certificate is made for.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Where pymail keeps its state: the SQLite index and message files of "
        "the embedded default, and the generated TLS certificates. Default ./pymail-data "
        "or $PYMAIL_DATA.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes sharing the listening ports (SO_REUSEPORT). "
        "One per core is a good start.",
    )
    @model_validator(mode="after")
    def _absolute(self) -> "ServerConfig":
        self.data_dir = self.data_dir.absolute()
        return self

    log_level: str = Field(
        default="info",
        pattern="^(debug|info|warning|error)$",
        description="Least severe log level written to stderr: debug, info, warning, error.",
    )


class ListenConfig(_Section):
    smtp: list[HostPort] = Field(
        default=["127.0.0.1:2525"],
        description="MX: inbound SMTP from other servers (port 25 in production).",
    )
    submission: list[HostPort] = Field(
        default=["127.0.0.1:2587"],
        description="Message submission with STARTTLS and SASL (port 587). Not served yet.",
    )
    submissions: list[HostPort] = Field(
        default=["127.0.0.1:2465"],
        description="Message submission over implicit TLS (port 465). Not served yet.",
    )
    imap: list[HostPort] = Field(
        default=["127.0.0.1:2143"], description="IMAP with STARTTLS (port 143); passwords are refused until TLS is up "
        "(LOGINDISABLED)."
    )
    imaps: list[HostPort] = Field(
        default=["127.0.0.1:2993"], description="IMAP over implicit TLS, TLS 1.2+ (port 993)."
    )
    pop3: list[HostPort] = Field(
        default=["127.0.0.1:2110"], description="POP3 with STLS (port 110). Not served yet."
    )
    pop3s: list[HostPort] = Field(
        default=["127.0.0.1:2995"], description="POP3 over implicit TLS (port 995). Not served yet."
    )
    http: list[HostPort] = Field(
        default=["127.0.0.1:2080"],
        description="Monitoring over HTTP: /healthz (storage reachable) and /metrics "
        "(Prometheus). No authentication: keep it on loopback or a monitoring network.",
    )


class TlsConfig(_Section):
    cert: Path | None = Field(
        default=None,
        description="PEM certificate chain (e.g. Let's Encrypt fullchain.pem). Unset: a "
        "private CA and a certificate signed by it are made in <data_dir>/tls on first start.",
    )
    key: Path | None = Field(
        default=None,
        description="PEM private key for `cert` (e.g. Let's Encrypt privkey.pem).",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> "TlsConfig":
        if (self.cert is None) != (self.key is None):
            raise ValueError("set both cert and key, or neither")
        return self


class S3Config(_Section):
    endpoint_url: str | None = Field(
        default=None,
        description="S3 endpoint, e.g. \"http://127.0.0.1:9000\" for MinIO. Unset: AWS's "
        "endpoint for `region`.",
    )
    region: str = Field(default="us-east-1", description="S3 region name.")
    access_key_id: str | None = Field(
        default=None,
        description="Access key id. Unset: the usual AWS sources ($AWS_ACCESS_KEY_ID, ...).",
    )
    secret_access_key_file: Path | None = Field(
        default=None,
        description="File holding the secret access key (one line; keep it 0640 root:pymail). "
        "Unset: $PYMAIL_S3_SECRET_ACCESS_KEY, else the usual AWS sources. The secret never "
        "appears in the config itself or in logs.",
    )
    addressing_style: str = Field(
        default="path",
        pattern="^(path|virtual|auto)$",
        description="\"path\" (bucket in the URL path, as MinIO wants), \"virtual\" or \"auto\".",
    )
    max_connections: int = Field(
        default=64, ge=1, le=1024, description="HTTP connections the S3 client keeps per process."
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"invalid endpoint {value!r} (expected http://host:port or https://...)")
        return value


class PostgresConfig(_Section):
    pool_min: int = Field(default=2, ge=0, le=1000, description="Connections kept open per process.")
    pool_max: int = Field(
        default=10, ge=1, le=1000, description="Most connections per process (per worker)."
    )
    connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds to wait for a new PostgreSQL connection."
    )

    @model_validator(mode="after")
    def _pool(self) -> "PostgresConfig":
        if self.pool_min > self.pool_max:
            raise ValueError("pool_min is larger than pool_max")
        return self


class StorageConfig(_Section):
    index: str | None = Field(
        default=None,
        description="Where the index and directory live: \"sqlite:///path/index.sqlite3\" or "
        "\"postgresql://user@host:port/dbname\" (password: in ~/.pgpass or $PGPASSWORD "
        "rather than here). Default: sqlite in data_dir.",
    )
    blobs: str | None = Field(
        default=None,
        description="Where message bytes live: \"file:///path/blobs\" or \"s3://bucket\" "
        "(\"s3://bucket/prefix\" to share a bucket). Default: files in data_dir.",
    )
    orphan_grace: float = Field(
        default=3600.0,
        ge=60.0,
        description="Seconds a blob no message refers to is kept before the sweeper deletes "
        "it (covers deliveries between their blob write and their index commit).",
    )
    orphan_sweep_interval: float = Field(
        default=6 * 3600.0,
        ge=0.0,
        description="Seconds between orphan-blob sweeps in the daemon; 0 turns the periodic "
        "sweep off (`pymail store gc` still works).",
    )
    s3: S3Config = Field(default_factory=S3Config, description="S3/MinIO for s3:// blobs.")
    postgres: PostgresConfig = Field(
        default_factory=PostgresConfig, description="Pool for a postgresql:// index."
    )

    @field_validator("index")
    @classmethod
    def _index_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
            raise ValueError(
                f"unsupported {value!r} (expected \"sqlite:///path\" or \"postgresql://...\")"
            )
        return value

    @field_validator("blobs")
    @classmethod
    def _blobs_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("s3://"):
            bucket = value[5:].split("/", 1)[0]
            if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
                raise ValueError(f"invalid S3 bucket name in {value!r}")
            return value
        if not value.startswith("file:///"):
            raise ValueError(f"unsupported {value!r} (expected \"file:///path\" or \"s3://bucket\")")
        return value


class LimitsConfig(_Section):
    message_size: Size = Field(
        default=parse_size("100MB"),
        description="Largest message accepted, advertised as the SMTP SIZE (binary units: "
        "100MB = 104857600 bytes).",
    )
    recipients: int = Field(
        default=1000,
        ge=1,
        description="Most RCPT TO per SMTP transaction; more get 452 4.5.3.",
    )
    smtp_timeout: float = Field(
        default=300.0,
        ge=30.0,
        description="Seconds an SMTP client may stay silent before the connection is "
        "closed (RFC 5321 section 4.5.3.2 asks for at least 5 minutes).",
    )


class Config(_Section):
    """The whole file."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="This server.")
    listen: ListenConfig = Field(
        default_factory=ListenConfig,
        description="Listening addresses per service, each a list of \"host:port\"; [] "
        "turns the service off.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="Certificate and key.")
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Index, directory and message storage."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Protocol limits.")

    @property
    def index_url(self) -> str:
        return self.storage.index or f"sqlite://{self.server.data_dir / 'index.sqlite3'}"

    @property
    def blobs_url(self) -> str:
        return self.storage.blobs or f"file://{self.server.data_dir / 'blobs'}"

    @property
    def tls_dir(self) -> Path:
        return self.server.data_dir / "tls"
