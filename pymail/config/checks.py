"""``[checks]``: the inbound checks (pymail.checks) and what each outcome does.

Every check outcome maps to one action (`ACTIONS`), from `DEFAULT_POLICY` unless the
``[checks.policy]`` table says otherwise, e.g.::

    [checks.policy]
    spf.fail = "junk"
    rspamd.add_header = "annotate"

Unknown checks, outcomes or actions stop the start with one line naming the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from pymail.config.types import Duration, Size, _networks, _Section, parse_hostport

__all__ = ["ACTIONS", "ChecksConfig", "DEFAULT_POLICY", "OUTCOMES"]

#: Weakest to strongest: the strongest action of all outcomes of a message wins.
#: accept: deliver as usual (the A-R header says what was found); annotate: deliver to
#: the INBOX with a header that says it (X-Spam for Rspamd, X-Pymail-Unscanned for a
#: scanner outage); junk: deliver into the recipient's Junk mailbox; tempfail: 451 4.7.1;
#: reject: 550 5.7.1 (554 5.7.1 for a virus).
ACTIONS = ("accept", "annotate", "junk", "tempfail", "reject")

#: The outcomes of each check a policy may name (RFC 8601 result words; for DMARC a
#: ``fail`` is split by the policy that applies after pct=: ``reject``, ``quarantine``,
#: or ``fail`` under p=none; Rspamd's actions with ``_`` for spaces; ``error``: the
#: scanner is unreachable, slow or answered garbage; ``oversize``: over the scan limit,
#: not scanned).
OUTCOMES: dict[str, tuple[str, ...]] = {
    "spf": ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"),
    "dkim": ("pass", "fail", "neutral", "none", "policy", "temperror", "permerror"),
    "dmarc": ("pass", "none", "fail", "quarantine", "reject", "temperror", "permerror"),
    "iprev": ("pass", "fail", "temperror", "permerror"),
    "arc": ("pass", "fail", "none", "temperror"),
    "rspamd": ("no_action", "greylist", "add_header", "rewrite_subject", "soft_reject",
               "reject", "error"),
    "clamav": ("clean", "found", "oversize", "error"),
}

#: What an admin would pick (issue 12, item 8; OUTBOUND.md's complaint list): no check
#: refuses on SPF alone (forwarders), DMARC is obeyed as the domain asks, a virus or
#: Rspamd's reject is refused, spam is filed in Junk rather than refused, and a scanner
#: outage or a DMARC lookup that failed defers the mail (451: the sender retries) rather
#: than let it in unchecked.
DEFAULT_POLICY: dict[str, dict[str, str]] = {
    "spf": {o: "accept" for o in OUTCOMES["spf"]} | {"fail": "annotate"},
    "dkim": {o: "accept" for o in OUTCOMES["dkim"]},
    "dmarc": {o: "accept" for o in OUTCOMES["dmarc"]} | {
        "quarantine": "junk", "reject": "reject", "temperror": "tempfail"},
    "iprev": {o: "accept" for o in OUTCOMES["iprev"]},
    "arc": {o: "accept" for o in OUTCOMES["arc"]},
    "rspamd": {"no_action": "accept", "greylist": "tempfail", "add_header": "junk",
               "rewrite_subject": "junk", "soft_reject": "tempfail", "reject": "reject",
               "error": "tempfail"},
    "clamav": {"clean": "accept", "found": "reject", "oversize": "annotate",
               "error": "tempfail"},
}


class ChecksConfig(_Section):
    """Inbound checks on the MX (pymail.checks): sender authentication, spam and virus
    scanning, and what each outcome does."""

    spf: bool = Field(default=True, description="Check SPF (RFC 7208) of the envelope "
                      "sender (the HELO name for the null sender).")
    dkim: bool = Field(default=True, description="Verify every DKIM signature (RFC 6376, "
                       "RFC 8463 Ed25519).")
    dmarc: bool = Field(default=True, description="Evaluate DMARC (RFC 7489) for the From "
                        "domain; needs spf and dkim.")
    arc: bool = Field(default=True, description="Verify ARC chains (RFC 8617) of forwarded "
                      "mail.")
    iprev: bool = Field(default=True, description="Look up the client's reverse DNS "
                        "(forward-confirmed, RFC 8601 section 3).")
    arc_trusted_sealers: list[str] = Field(
        default=[],
        description="Domains whose valid ARC seal vouches for forwarded mail: a DMARC "
        "fail of mail they sealed, which passed DMARC when they received it, is only "
        "annotated, never rejected or filed in Junk (mailing lists you trust).",
    )
    skip_networks: list[str] = Field(
        default=["127.0.0.1/32", "::1/128"],
        description="Clients whose mail gets no SPF, DKIM, DMARC, ARC or iprev check "
        "(this host's own programs). Rspamd and ClamAV still scan it.",
    )
    timeout: Duration = Field(
        default=30.0, gt=0, le=600,
        description="Seconds all checks of one message may take together; a check still "
        "running then counts as its temporary error (temperror, or the scanner's error).",
    )
    dkim_min_key_bits: int = Field(
        default=1024, ge=512, le=4096,
        description="RSA DKIM keys shorter than this fail (RFC 8301 section 3.2).",
    )
    rspamd_url: str = Field(
        default="",
        description="Rspamd's normal worker, e.g. \"http://127.0.0.1:11333\" (/checkv2). "
        "Empty: no Rspamd scan.",
    )
    rspamd_timeout: Duration = Field(default=20.0, gt=0, le=600,
                                     description="Seconds one Rspamd scan may take.")
    rspamd_submission: bool = Field(
        default=True,
        description="Also scan mail of authenticated users (submission), with their "
        "login in Rspamd's User header (outbound spam from a stolen password).",
    )
    rspamd_controller_url: str = Field(
        default="",
        description="Rspamd's controller, e.g. \"http://127.0.0.1:11334\", for spam "
        "training: a message a user moves into Junk is learned as spam, one moved out as "
        "ham. Empty: no training.",
    )
    rspamd_password_file: Path | None = Field(
        default=None,
        description="File holding the controller's password (one line). Unset: none is "
        "sent (the controller trusts its secure_ip).",
    )
    clamav: str = Field(
        default="",
        description="clamd's socket: a path (\"/run/clamav/clamd.ctl\") or \"host:port\". "
        "Empty: no virus scan.",
    )
    clamav_timeout: Duration = Field(default=30.0, gt=0, le=600,
                                     description="Seconds one clamd scan may take.")
    clamav_max_size: Size = Field(
        default=25 * 1024 * 1024,
        description="Largest message streamed to clamd (keep it at or under clamd's "
        "StreamMaxLength); larger ones get the clamav.oversize action.",
    )
    policy: dict[str, dict[str, str]] = Field(
        default={},
        description="What each outcome does, overriding the defaults: "
        "check.outcome = action (see the README's table of checks).",
    )

    @field_validator("skip_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        return _networks(value)

    @field_validator("rspamd_url", "rspamd_controller_url")
    @classmethod
    def _url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith(("http://", "https://")):
            raise ValueError(f"invalid URL {value!r} (expected http://host:port)")
        return value

    @field_validator("clamav")
    @classmethod
    def _clamd(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith("/"):
            try:
                return parse_hostport(value)
            except ValueError as e:
                raise ValueError(f"{e}; or a socket path such as /run/clamav/clamd.ctl") from None
        return value

    @field_validator("policy")
    @classmethod
    def _policy(cls, value: dict[str, Any]) -> dict[str, dict[str, str]]:
        for check, table in value.items():
            if check not in OUTCOMES:
                raise ValueError(f"unknown check {check!r} (one of {', '.join(OUTCOMES)})")
            if not isinstance(table, dict):
                raise ValueError(f"{check}: expected a table of outcome = action")
            for outcome, action in table.items():
                if outcome not in OUTCOMES[check]:
                    raise ValueError(f"{check}.{outcome}: unknown outcome (one of "
                                     f"{', '.join(OUTCOMES[check])})")
                if action not in ACTIONS:
                    raise ValueError(f"{check}.{outcome} = {action!r}: unknown action "
                                     f"(one of {', '.join(ACTIONS)})")
        return value

    def action(self, check: str, outcome: str) -> str:
        """The configured action of `check`'s `outcome` (its default when not set)."""
        return self.policy.get(check, {}).get(outcome) or DEFAULT_POLICY[check].get(outcome, "accept")
