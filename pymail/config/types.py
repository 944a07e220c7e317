"""The value types of pymail.toml (sizes, durations, addresses) and the base of every
section model: shared by pymail.config.schema and the section modules beside it."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

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


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like "90s", "10m", "1.5h", "2d" (fail2ban's
    findtime/bantime style; a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 10m")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]
    raise ValueError(f"invalid duration {value!r} (use e.g. 30s, 10m, 1h, 2d or a number of seconds)")


Duration = Annotated[float, BeforeValidator(parse_duration)]


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


def _networks(value: list[str]) -> list[str]:
    """Addresses or networks ("192.0.2.10", "10.0.0.0/8", "2001:db8::/32"), normalised."""
    out = []
    for item in value:
        try:
            out.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"invalid address or network {item!r}") from None
    return out


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
