"""The configuration schema: every key of pymail.toml, its type, default and meaning.

Each field carries its documentation in `description`; `conf/pymail.toml` is the commented
production example and a test checks that it names every field here and validates.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import string
from pathlib import Path
from urllib.parse import urlsplit

from typing import Annotated

from pydantic import BeforeValidator, Field, field_validator, model_validator

from pymail.config.checks import ChecksConfig
from pymail.config.publish import PublishConfig
from pymail.config.tls import AcmeConfig, TlsConfig
from pymail.config.types import (
    Duration,
    HostPort,
    Size,
    _networks,
    _Section,
    parse_duration,
    parse_hostport,
    parse_size,
    split_hostport,
)

__all__ = ["parse_duration", "parse_hostport", "parse_size", "split_hostport"]


def _default_hostname() -> str:
    fqdn = socket.getfqdn()
    return socket.gethostname() if fqdn.startswith("localhost") else fqdn


def default_data_dir() -> Path:
    return Path(os.environ.get("PYMAIL_DATA") or "pymail-data").absolute()


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
    log_format: str = Field(
        default="text",
        pattern="^(text|json)$",
        description="\"text\": one line per event (journald adds the time and unit); "
        "\"json\": one JSON object per line with the same fields, for log shippers.",
    )
    postmaster: str | None = Field(
        default=None,
        description="Where mail to the bare address <postmaster> goes (RFC 5321 section "
        "4.5.1 requires accepting it): an address routed like any other. Default: "
        "postmaster@ the host name's parent domain (mail.example.com -> "
        "postmaster@example.com).",
    )
    loop_watchdog: Duration = Field(
        default=0.0,
        description="Debugging: when above 0, log a warning with the stack of the code "
        "that held the event loop for longer than this many seconds (e.g. 0.1). Off by "
        "default; the test suite turns it on.",
    )
    proxy_protocol_from: list[str] = Field(
        default=[],
        description="Load balancers (addresses or networks, e.g. [\"10.0.0.0/8\"]) whose "
        "connections to every mail listener start with a PROXY protocol header, v1 or v2 "
        "(HAProxy send-proxy / send-proxy-v2, before TLS on implicit-TLS ports). The header's "
        "source address is then the client everywhere: logs, bans, Received, connection "
        "limits. A listed peer that sends no valid header within 10 s is disconnected; other "
        "peers are served directly and a PROXY header from them is not honoured.",
    )

    @field_validator("proxy_protocol_from")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        return _networks(value)

    @field_validator("postmaster")
    @classmethod
    def _postmaster(cls, value: str | None) -> str | None:
        if value is None:
            return None
        local, at, domain = value.strip().rpartition("@")
        if not at or not local or "." not in domain:
            raise ValueError(f"invalid address {value!r} (expected e.g. \"postmaster@example.com\")")
        return f"{local}@{domain.lower()}"

    @property
    def postmaster_address(self) -> str:
        """`postmaster`, or postmaster@ the host name's parent domain (the host name
        itself when it has only two labels)."""
        if self.postmaster:
            return self.postmaster
        labels = self.hostname.lower().rstrip(".").split(".")
        domain = ".".join(labels[1:]) if len(labels) > 2 else ".".join(labels)
        return f"postmaster@{domain}"


class ListenConfig(_Section):
    smtp: list[HostPort] = Field(
        default=["127.0.0.1:2525"],
        description="MX: inbound SMTP from other servers (port 25 in production).",
    )
    submission: list[HostPort] = Field(
        default=["127.0.0.1:2587"],
        description="Message submission: STARTTLS required, then SASL PLAIN/LOGIN (port 587).",
    )
    submissions: list[HostPort] = Field(
        default=["127.0.0.1:2465"],
        description="Message submission over implicit TLS, then SASL PLAIN/LOGIN (port 465).",
    )
    imap: list[HostPort] = Field(
        default=["127.0.0.1:2143"], description="IMAP with STARTTLS (port 143); passwords are refused until TLS is up "
        "(LOGINDISABLED)."
    )
    imaps: list[HostPort] = Field(
        default=["127.0.0.1:2993"], description="IMAP over implicit TLS, TLS 1.2+ (port 993)."
    )
    pop3: list[HostPort] = Field(
        default=["127.0.0.1:2110"], description="POP3 with STLS (port 110); USER/PASS/AUTH only after STLS."
    )
    pop3s: list[HostPort] = Field(
        default=["127.0.0.1:2995"], description="POP3 over implicit TLS (port 995)."
    )
    http: list[HostPort] = Field(
        default=["127.0.0.1:2080"],
        description="Monitoring over HTTP: /healthz (storage reachable) and /metrics "
        "(Prometheus), and the client autoconfiguration files. No authentication: keep it "
        "on loopback or a monitoring network.",
    )
    web: list[HostPort] = Field(
        default=[],
        description="The public web port (80): ACME http-01 challenges, client "
        "autoconfiguration, MTA-STS; never /metrics or /healthz. Other paths redirect to "
        "https when [listen] https is on.",
    )
    https: list[HostPort] = Field(
        default=[],
        description="The public HTTPS port (443): client autoconfiguration (Thunderbird, "
        "Outlook Autodiscover, Apple .mobileconfig) and the MTA-STS policy, with the "
        "certificate for those names; ACME tls-alpn-01 challenges.",
    )


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
    min_free_space: Size | None = Field(
        default=None,
        description="Free space the local file systems pymail writes to (data_dir, the "
        "SQLite index, file blobs) must keep: below it new mail is refused with 452 4.3.1 "
        "(IMAP APPEND/COPY: NO [OVERQUOTA]) while flag changes and expunges go on, and "
        "/healthz says disk full. Default: 1.5 x limits.message_size (Postfix's "
        "queue_minfree rule).",
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
        ge=300.0,
        description="Seconds an SMTP client may stay silent before the connection is "
        "closed; at least 300 (RFC 5321 section 4.5.3.2: 5 minutes).",
    )
    connections_per_ip: int = Field(
        default=50,
        ge=0,
        le=1_000_000,
        description="Simultaneous connections one client address may hold to one pymail "
        "process, all services together (SMTP, submission, IMAP, POP3); more are refused "
        "(SMTP 421 4.7.0, IMAP BYE, POP3 -ERR [SYS/TEMP]). Counted per worker process. "
        "0: no limit.",
    )
    connection_rate_per_ip: int = Field(
        default=0,
        ge=0,
        le=1_000_000,
        description="New connections one client address may open per minute to one pymail "
        "process, all mail services together (Postfix's smtpd_client_connection_rate_limit); "
        "more are refused like connections_per_ip. The minute starts at the address's first "
        "attempt and every attempt counts, a refused one too. Counted per worker process. "
        "0: no limit.",
    )
    command_timeout: Duration = Field(
        default=60.0,
        ge=1.0,
        description="Seconds in which a command line must arrive complete once its first "
        "byte has (SMTP, IMAP, POP3; a deadline, not restarted by each byte: a client "
        "trickling a command is cut off). Literal data and DATA content have min_data_rate "
        "instead.",
    )
    min_data_rate: Size = Field(
        default=500,
        ge=1,
        description="Bytes per second a client must keep up on average while it sends "
        "message content (SMTP DATA, IMAP literals), counted from the start of the content "
        "with command_timeout of grace (Postfix's smtpd_min_data_rate). Slower: disconnected.",
    )
    login_timeout: Duration = Field(
        default=60.0,
        ge=1.0,
        description="Seconds from connect in which a client of IMAP, POP3 or submission must "
        "have logged in; counted from connect, whatever it sends meanwhile.",
    )
    send_timeout: Duration = Field(
        default=60.0,
        ge=1.0,
        description="Seconds a client may leave pymail's output unread (a full send buffer "
        "that does not drain) before it is disconnected and its buffers freed.",
    )
    spool_threshold: Size = Field(
        default=parse_size("1MB"),
        ge=64 * 1024,
        description="Message content larger than this (SMTP DATA, an IMAP APPEND literal) is "
        "spooled to a file under data_dir/spool while it arrives instead of being held in memory.",
    )
    prelogin_literal: Size = Field(
        default=parse_size("8KB"),
        ge=1024,
        le=parse_size("1MB"),
        description="Most IMAP literal octets one command may carry before login (a LOGIN "
        "password); a larger synchronising literal is refused before it is read, a larger "
        "non-synchronising one ends the connection.",
    )
    mailboxes_per_user: int = Field(
        default=1000,
        ge=10,
        le=1_000_000,
        description="Most mailboxes (folders) one user may have; CREATE past it gets NO [LIMIT].",
    )
    mailbox_name_length: int = Field(
        default=255,
        ge=16,
        le=4096,
        description="Longest mailbox name, in octets of UTF-8, hierarchy included; longer "
        "names get NO [LIMIT].",
    )
    mailbox_depth: int = Field(
        default=16,
        ge=1,
        le=256,
        description="Most hierarchy levels in a mailbox name (a/b/c is 3); deeper names get "
        "NO [LIMIT].",
    )
    fetch_sections: int = Field(
        default=100,
        ge=8,
        le=100_000,
        description="Most body sections (BODY[...], BINARY[...], RFC822...) one IMAP FETCH "
        "may ask for per message; more get BAD.",
    )


class DnsConfig(_Section):
    """How pymail asks DNS (outbound MX lookups, MTA-STS, DANE, SPF/DKIM/DMARC checks)."""

    nameservers: list[str] = Field(
        default=[],
        description="Addresses of the resolvers to ask (e.g. [\"127.0.0.1\"] for a local "
        "unbound, which DANE needs: it trusts the AD bit of a validating resolver). Empty: "
        "the system's resolver (/etc/resolv.conf).",
    )
    port: int = Field(default=53, ge=1, le=65535, description="Port of the nameservers.")
    timeout: Duration = Field(
        default=5.0,
        gt=0,
        le=120,
        description="Seconds one lookup may take in all (every server and retry); past it "
        "the answer is a temporary failure.",
    )

    @field_validator("nameservers")
    @classmethod
    def _addresses(cls, value: list[str]) -> list[str]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_address(str(item).strip())))
            except ValueError:
                raise ValueError(f"invalid nameserver address {item!r} (an IP address)") from None
        return out


_FILTER_FIELDS = frozenset({"localpart", "domain", "address"})


class LdapConfig(_Section):
    """How to reach the LDAP server of the domains whose ``domains.auth_type`` is 'ldap'
    (pymail.auth.ldap).  Their users log in by binding to LDAP with their own password;
    the domain's ``ldap_base_dn`` says where they are."""

    url: str | None = Field(
        default=None,
        description="LDAP server, \"ldap://host[:port]\" or \"ldaps://host[:port]\" "
        "(implicit TLS). Unset: LDAP domains cannot log in (a temporary failure, logged).",
    )
    starttls: bool = Field(
        default=False,
        description="Upgrade an ldap:// connection with StartTLS before sending a password. "
        "Use it (or ldaps://) for any server that is not on this machine.",
    )
    ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that sign the LDAP server's certificate, for "
        "ldaps:// and StartTLS. Unset: the system's trusted CAs.",
    )
    bind_dn: str | None = Field(
        default=None,
        description="Service account that searches for the user's entry (with user_filter), "
        "e.g. \"cn=pymail,ou=services,dc=example,dc=com\". Unset: the search, if any, "
        "is anonymous.",
    )
    bind_password_file: Path | None = Field(
        default=None,
        description="File holding bind_dn's password (one line; keep it 0640 root:pymail). "
        "The password never appears in the config itself or in logs.",
    )
    user_filter: str | None = Field(
        default=None,
        description="Search filter that finds the user's entry under the domain's "
        "ldap_base_dn, e.g. \"(&(objectClass=inetOrgPerson)(uid={localpart}))\"; "
        "{localpart}, {domain} and {address} are replaced by the escaped login. pymail "
        "then binds as the entry found. Unset: no search, pymail binds as "
        "\"uid=<localpart>,<ldap_base_dn>\".",
    )
    timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Seconds to wait for the LDAP server to connect and to answer each "
        "request; past it the login gets a temporary failure, never an accept.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValueError(f"invalid LDAP URL {value!r}") from None
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"invalid LDAP URL {value!r} (expected ldap://host or ldaps://host)")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"invalid LDAP URL {value!r} (only ldap[s]://host[:port])")
        return value

    @field_validator("user_filter")
    @classmethod
    def _filter(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
        except ValueError:
            raise ValueError(f"invalid filter {value!r} (unbalanced braces)") from None
        unknown = fields - _FILTER_FIELDS
        if unknown:
            raise ValueError(f"unknown placeholder {{{sorted(unknown)[0]}}} (use {{localpart}}, "
                             "{domain} or {address})")
        if not fields & {"localpart", "address"}:
            raise ValueError("the filter must contain {localpart} or {address}")
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError(f"invalid filter {value!r} (an LDAP filter is in parentheses)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "LdapConfig":
        if self.starttls and self.url is not None and self.url.startswith("ldaps:"):
            raise ValueError("starttls is for ldap:// URLs (ldaps:// is TLS already)")
        if (self.bind_dn is None) != (self.bind_password_file is None):
            raise ValueError("set both bind_dn and bind_password_file, or neither")
        if self.bind_dn is not None and self.user_filter is None:
            raise ValueError("bind_dn is only used to search: set user_filter too")
        return self


class BanConfig(_Section):
    """Failed logins and bans (pymail.auth.ban), shared by every worker and node through
    the index, like fail2ban's jail but without root or a firewall."""

    enabled: bool = Field(
        default=True,
        description="Count failed logins and ban client addresses that fail too often.",
    )
    max_failures: int = Field(
        default=5,
        ge=1,
        le=10000,
        description="Failed logins from one client address within find_time that get it "
        "banned (fail2ban maxretry).",
    )
    find_time: Duration = Field(
        default=600.0,
        gt=0,
        description="Window in which failures are counted, e.g. \"10m\" (fail2ban findtime).",
    )
    ban_time: Duration = Field(
        default=1800.0,
        gt=0,
        description="How long a banned address is refused, e.g. \"30m\" (fail2ban bantime).",
    )
    ignore_ips: list[str] = Field(
        default=[],
        description="Addresses or networks never banned, e.g. [\"192.0.2.10\", "
        "\"10.0.0.0/8\"] (a webmail host that logs everyone in). Loopback is not "
        "ignored unless listed.",
    )
    account_max_failures: int = Field(
        default=10,
        ge=0,
        le=100000,
        description="Failed logins for one account, from any addresses, within find_time "
        "after which every login for it waits account_delay first (a throttle, never a "
        "lockout of the real user). 0 turns the throttle off.",
    )
    account_delay: Duration = Field(
        default=2.0,
        ge=0,
        le=60,
        description="Seconds each login of a throttled account waits before it is checked.",
    )

    @field_validator("ignore_ips")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _networks(value)


class DeliveryConfig(_Section):
    """Outbound mail: the queue, its retries, TLS policy, bounces (pymail.delivery)."""

    relay_host: str | None = Field(
        default=None,
        description="Send all outbound mail through this smarthost, \"host:port\" (e.g. "
        "your ISP's \"smtp.isp.example:587\" when port 25 is blocked), instead of to each "
        "domain's MX. A domain whose domains.transport names its own next hop "
        "(smtp:[host]:port) still goes there, as in Postfix. Unset: direct delivery.",
    )
    relay_tls: str = Field(
        default="starttls",
        pattern="^(starttls|implicit|none)$",
        description="TLS to the relay host: \"starttls\" (required, certificate verified), "
        "\"implicit\" (TLS from the first byte, port 465), or \"none\" (only for a relay "
        "on the same trusted network).",
    )
    relay_auth_file: Path | None = Field(
        default=None,
        description="SASL login for the relay host: a file whose first line is "
        "\"username:password\", readable by pymail only. Unset: no AUTH.",
    )
    max_lifetime: Duration = Field(
        default=5 * 86400.0,
        ge=60.0,
        description="How long a message is retried before it is bounced (Postfix's "
        "maximal_queue_lifetime, 5 days).",
    )
    retry_first: Duration = Field(
        default=300.0,
        ge=1.0,
        description="Delay before the first retry; each later one doubles it, with jitter.",
    )
    retry_max: Duration = Field(
        default=4 * 3600.0,
        ge=1.0,
        description="The longest delay between two attempts.",
    )
    delay_warning: Duration = Field(
        default=4 * 3600.0,
        ge=0.0,
        description="After this long undelivered, the sender gets one delayed-delivery "
        "notice (RFC 3464 Action: delayed). 0: never.",
    )
    concurrency: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Deliveries in progress at once, per worker process.",
    )
    per_domain: int = Field(
        default=20,
        ge=1,
        le=1000,
        description="Connections to one destination domain at once, per worker process "
        "(Postfix's default_destination_concurrency_limit).",
    )
    lease: Duration = Field(
        default=600.0,
        ge=30.0,
        description="How long a node owns the recipients it took from the shared queue; a "
        "node that dies mid-delivery leaves them to another node after this.",
    )
    mta_sts: bool = Field(
        default=True,
        description="Honour MTA-STS policies (RFC 8461): enforce = verified TLS to matching MX "
        "hosts only.",
    )
    dane: bool = Field(
        default=True,
        description="Honour DANE TLSA records (RFC 7672) when the resolver's answers are "
        "DNSSEC-validated (AD bit: list a local validating resolver in [dns]).",
    )
    bounce_size_limit: Size = Field(
        default=parse_size("50KB"),
        ge=0,
        description="Most bytes of the original message a bounce quotes for RET=FULL; "
        "larger ones quote the headers only (Postfix's bounce_size_limit).",
    )
    srs_secret_file: Path | None = Field(
        default=None,
        description="Secret for SRS, the sender rewriting of mail forwarded to other domains "
        "(so SPF passes at the next hop): the first line is the secret, later lines older "
        "secrets still accepted for bounces (rotation); several nodes must share one file. "
        "Unset: made under data_dir (srs.secret, mode 0600) on first use.",
    )

    @field_validator("relay_host")
    @classmethod
    def _relay(cls, value: str | None) -> str | None:
        return None if value is None else parse_hostport(value)


class DkimConfig(_Section):
    """DKIM signing of outbound mail (RFC 6376, RFC 8463)."""

    sign: bool = Field(
        default=True,
        description="Sign mail sent by authenticated users of local domains, and pymail's "
        "own bounces, with the domain's keys in key_dir (if it has any).",
    )
    selector: str = Field(
        default="mail",
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$",
        description="The selector that signs for a domain that has a key with it (else "
        "the domain's newest key signs), and the one `pymail dkim keygen` uses when none "
        "is given (Ed25519 keys: SELECTOR-ed25519).",
    )
    key_dir: Path | None = Field(
        default=None,
        description="Where the keys live: key_dir/DOMAIN/SELECTOR.{rsa,ed25519}.pem (mode "
        "0600), re-read when they change. Default: data_dir/dkim.",
    )


def _argon2_memory_kib(value: object) -> int:
    """argon2_memory_cost: a number is KiB (as in the PHC string's m=), a string a size
    ("64MiB", "19MB"; binary units) that must be a whole number of KiB."""
    if isinstance(value, bool):
        raise ValueError("expected KiB (65536) or a size such as \"64MiB\"")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    size = parse_size(value)
    if size % 1024:
        raise ValueError(f"{value!r} is not a whole number of KiB")
    return size // 1024


class AuthConfig(_Section):
    cache_ttl: Duration = Field(
        default=3600.0,
        le=86400 * 7,
        description="How long a successful password check is remembered per user, in each "
        "process's memory (Dovecot's auth_cache_ttl), e.g. \"1h\": a later login with the "
        "same password against the same stored hash skips the Argon2id verification. A "
        "changed password (pymail user passwd) or a disabled user or domain takes effect "
        "at once; failures are never cached; LDAP domains are not cached. 0 turns it off.",
    )
    argon2_time_cost: int = Field(
        default=3,
        description="Argon2id passes (t) of NEW password hashes (pymail user add / passwd). "
        "Existing hashes keep verifying with their own parameters.",
    )
    argon2_memory_cost: Annotated[int, BeforeValidator(_argon2_memory_kib)] = Field(
        default=65536,
        description="Argon2id memory (m) of new hashes: KiB as a number (65536) or a size "
        "(\"64MiB\"). At least OWASP's minimum: 19 MiB with argon2_time_cost >= 2, or 46 "
        "MiB with 1 pass; at most 1 GiB. Each login verification uses this much memory "
        "(4 at once per process).",
    )
    argon2_parallelism: int = Field(
        default=1,
        description="Argon2id lanes (p) of new hashes. Keep 1 if Dovecot must read the same "
        "table: its libsodium verifies p=1 only.",
    )
    ldap: LdapConfig = Field(
        default_factory=LdapConfig, description="LDAP for domains with auth_type 'ldap'."
    )
    ban: BanConfig = Field(
        default_factory=BanConfig, description="Failed-login counting and address bans."
    )

    @model_validator(mode="after")
    def _argon2_floor(self) -> "AuthConfig":
        problem = self.argon2_cost.problem()
        if problem:
            raise ValueError(problem)
        return self

    @property
    def argon2_cost(self):  # noqa: ANN201 - pymail.auth.passwords.Argon2Cost
        """The Argon2id cost of new hashes."""
        from pymail.auth.passwords import Argon2Cost

        return Argon2Cost(time_cost=self.argon2_time_cost, memory_cost=self.argon2_memory_cost,
                          parallelism=self.argon2_parallelism)


class Config(_Section):
    """The whole file."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="This server.")
    listen: ListenConfig = Field(
        default_factory=ListenConfig,
        description="Listening addresses per service, each a list of \"host:port\"; [] "
        "turns the service off.",
    )
    tls: TlsConfig = Field(default_factory=TlsConfig, description="Certificate and key.")
    acme: AcmeConfig = Field(
        default_factory=AcmeConfig, description="Certificates from an ACME CA (Let's Encrypt)."
    )
    publish: PublishConfig = Field(
        default_factory=PublishConfig,
        description="What DNS and the web service publish: addresses, SPF, DMARC, MTA-STS.",
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig, description="Index, directory and message storage."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Protocol limits.")
    dns: DnsConfig = Field(default_factory=DnsConfig, description="DNS resolvers.")
    delivery: DeliveryConfig = Field(
        default_factory=DeliveryConfig, description="Outbound mail: queue, retries, relay."
    )
    dkim: DkimConfig = Field(default_factory=DkimConfig, description="DKIM signing.")
    checks: ChecksConfig = Field(
        default_factory=ChecksConfig,
        description="Inbound checks: SPF, DKIM, DMARC, ARC, iprev, Rspamd, ClamAV.",
    )
    auth: AuthConfig = Field(
        default_factory=AuthConfig, description="Login: the authentication cache, the Argon2id cost of new hashes, LDAP "
        "domains, failed-login bans."
    )

    @model_validator(mode="after")
    def _one_certificate_source(self) -> "Config":
        if self.acme.enabled and self.tls.cert is not None:
            raise ValueError("acme.directory_url and tls.cert are two sources of the same "
                             "certificate: set one of them")
        return self

    @property
    def acme_names(self) -> list[str]:
        """The names the ACME certificate covers: ``acme.names``, else the host name."""
        return self.acme.names or [self.server.hostname.lower().rstrip(".")]

    @property
    def acme_dir(self) -> Path:
        """ACME account key, certificates and keys (0700)."""
        return self.server.data_dir / "acme"

    @property
    def mx_hosts(self) -> list[str]:
        """``publish.mx``, else the host name."""
        return self.publish.mx or [self.server.hostname.lower().rstrip(".")]

    @property
    def index_url(self) -> str:
        return self.storage.index or f"sqlite://{self.server.data_dir / 'index.sqlite3'}"

    @property
    def blobs_url(self) -> str:
        return self.storage.blobs or f"file://{self.server.data_dir / 'blobs'}"

    @property
    def tls_dir(self) -> Path:
        return self.server.data_dir / "tls"

    @property
    def dkim_key_dir(self) -> Path:
        return self.dkim.key_dir or self.server.data_dir / "dkim"

    @property
    def spool_dir(self) -> Path:
        """Where message content over ``limits.spool_threshold`` is spooled while it
        arrives (always local, whatever the storage backends)."""
        return self.server.data_dir / "spool"

    @property
    def min_free_space(self) -> int:
        """``storage.min_free_space``, or 1.5 x ``limits.message_size``."""
        if self.storage.min_free_space is not None:
            return self.storage.min_free_space
        return self.limits.message_size * 3 // 2
