"""This server's MTA-STS policy (RFC 8461): the text the web service serves at
``https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` and the ``id`` of the
``_mta-sts.DOMAIN`` TXT record that announces it.

Invariant: the id is derived from the policy text, so it changes exactly when the
policy does (RFC 8461 section 3.1: senders re-fetch the policy when the id changes) and
every node and worker computes the same one without shared state.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pymail.config.schema import Config

__all__ = ["policy_id", "policy_text", "txt_record"]


def policy_text(config: "Config") -> str:
    """The policy file (RFC 8461 section 3.2): CRLF lines, version first."""
    lines = ["version: STSv1", f"mode: {config.publish.mta_sts_mode}"]
    lines += [f"mx: {host}" for host in config.mx_hosts]
    lines.append(f"max_age: {int(config.publish.mta_sts_max_age)}")
    return "\r\n".join(lines) + "\r\n"


def policy_id(config: "Config") -> str:
    """1-32 alphanumerics (RFC 8461 section 3.1): the first 20 hex digits of the
    policy's SHA-256."""
    return hashlib.sha256(policy_text(config).encode("ascii")).hexdigest()[:20]


def txt_record(config: "Config") -> str:
    """The value of the ``_mta-sts.DOMAIN`` TXT record."""
    return f"v=STSv1; id={policy_id(config)}"
