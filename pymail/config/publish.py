"""``[publish]``: what this server tells the world through DNS and its web service.

`pymail dns records` prints the records these settings imply, `pymail dns check` and
`pymail doctor` compare them with what DNS says, and the HTTP service serves the
MTA-STS policy (RFC 8461) and client autoconfiguration from them.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, field_validator

from pymail.config.types import Duration, _Section

__all__ = ["PublishConfig"]


class PublishConfig(_Section):
    ipv4: list[str] = Field(
        default=[],
        description="This host's public IPv4 addresses (the A record, SPF ip4:, the PTR to "
        "ask the ISP for). Empty: taken from the listen addresses that are not 0.0.0.0 or "
        "private; `pymail dns records` says when it cannot tell.",
    )
    ipv6: list[str] = Field(
        default=[],
        description="This host's public IPv6 addresses (AAAA, SPF ip6:, PTR).",
    )
    spf_all: str = Field(
        default="~all",
        pattern="^[-~?]all$",
        description="How SPF treats other senders: \"~all\" (softfail, the seed's form and "
        "a safe start) or \"-all\" (fail) once every sender of the domain is listed.",
    )
    dmarc_policy: str = Field(
        default="none",
        pattern="^(none|quarantine|reject)$",
        description="DMARC p= for the printed record: \"none\" (reports only, the safe "
        "start), then \"quarantine\", then \"reject\" once the reports are clean.",
    )
    dmarc_rua: str | None = Field(
        default=None,
        description="Where aggregate DMARC reports go (rua=mailto:...). Default "
        "postmaster@DOMAIN, an address every domain must accept (RFC 5321 section 4.5.1).",
    )
    tls_rpt_rua: str | None = Field(
        default=None,
        description="Where SMTP TLS reports go (RFC 8460, _smtp._tls). Default "
        "postmaster@DOMAIN.",
    )
    mta_sts_mode: str = Field(
        default="testing",
        pattern="^(none|testing|enforce)$",
        description="The MTA-STS policy served at https://mta-sts.DOMAIN/.well-known/mta-sts.txt "
        "(RFC 8461 section 3.2): \"testing\" (senders report but deliver), \"enforce\" "
        "(senders refuse to deliver without valid TLS), \"none\" (withdraw a policy).",
    )
    mta_sts_max_age: Duration = Field(
        default=7 * 86400.0,
        ge=86400,
        le=31557600,
        description="How long senders cache the MTA-STS policy (max_age; at least 1 day, "
        "RFC 8461 recommends weeks once it is enforced).",
    )
    mx: list[str] = Field(
        default=[],
        description="The MX host names of the domains, in preference order. Default: "
        "server.hostname.",
    )

    @field_validator("ipv4")
    @classmethod
    def _v4(cls, value: list[str]) -> list[str]:
        return [_address(item, 4) for item in value]

    @field_validator("ipv6")
    @classmethod
    def _v6(cls, value: list[str]) -> list[str]:
        return [_address(item, 6) for item in value]

    @field_validator("dmarc_rua", "tls_rpt_rua")
    @classmethod
    def _mailto(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip().removeprefix("mailto:")
        local, at, domain = value.rpartition("@")
        if not at or not local or "." not in domain:
            raise ValueError(f"invalid address {value!r} (expected e.g. \"dmarc@example.com\")")
        return value

    @field_validator("mx")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        out = []
        for name in value:
            name = str(name).strip().lower().rstrip(".")
            if not name or "." not in name:
                raise ValueError(f"invalid host name {name!r}")
            out.append(name)
        return out


def _address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(str(text).strip())
    except ValueError:
        raise ValueError(f"invalid IPv{version} address {text!r}") from None
    if address.version != version:
        raise ValueError(f"{text!r} is not an IPv{version} address")
    return str(address)
