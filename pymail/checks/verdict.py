"""From the checks' findings to one verdict: each outcome's action by the policy
(``[checks.policy]``, pymail.config.checks), the strongest action wins, and what the
pipeline must do about it.

Outcome names (`pymail.config.checks.OUTCOMES`):

* spf, iprev, arc: the result word;
* dkim: ``pass`` when any signature passed, else the first of temperror, fail,
  permerror, policy, neutral that some signature got; ``none`` without signatures;
* dmarc: pass, none, temperror, permerror; a fail is named by its disposition after
  pct= (RFC 7489 section 6.6.4): ``reject``, ``quarantine``, or ``fail`` (p=none).  A
  fail is only annotated when a trusted ARC sealer (``checks.arc_trusted_sealers``)
  sealed a valid chain whose first hop saw DMARC pass (RFC 8617 section 7.2);
* rspamd: its action, spaces as ``_``, or ``error``;
* clamav: clean, found, oversize (over ``clamav_max_size``, not scanned), error.

Headers: the Authentication-Results field (pymail.checks.authres) whenever the sender
was authenticated; ``X-Spam: Yes`` (when Rspamd's action asks for a header, a subject
rewrite, or the verdict files the message into Junk) and ``X-Spam-Score`` after an
Rspamd scan, with Rspamd's milter headers; ``X-Pymail-Unscanned`` naming each scanner
that could not scan the message, so nothing is ever taken as clean silently.  Incoming
fields that would pass for ours are removed: Authentication-Results with our
authserv-id, X-Pymail-Unscanned, and X-Spam/X-Spam-Score when Rspamd scanned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pymail.checks.authres import authentication_results, claims_authserv_id
from pymail.checks.results import (
    ArcResult,
    DkimResult,
    DmarcResult,
    IprevResult,
    SpamVerdict,
    SpfResult,
    VirusVerdict,
)
from pymail.config.checks import ACTIONS, ChecksConfig
from pymail.mail.headeredit import HeaderEdit, encode_field
from pymail.mail.headers import HeaderField
from pymail.proto.smtp.replies import Reply

__all__ = ["Findings", "Verdict", "decide"]

UNSCANNED = "X-Pymail-Unscanned"
_DKIM_ORDER = ("temperror", "fail", "permerror", "policy", "neutral")
_SPAM_ACTIONS = ("add header", "rewrite subject")


@dataclass(slots=True)
class Findings:
    """What each check found (None: not run)."""

    authenticated: bool = False  #: the sender-authentication checks ran
    iprev: IprevResult | None = None
    spf: SpfResult | None = None
    dkim: DkimResult | None = None
    arc: ArcResult | None = None
    dmarc: DmarcResult | None = None
    spam: SpamVerdict | None = None
    spam_error: str | None = None
    virus: VirusVerdict | None = None
    virus_error: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with the message."""

    action: str  #: the strongest: accept annotate junk tempfail reject
    reply: str | None  #: the SMTP reply for tempfail and reject
    edit: HeaderEdit  #: header changes for delivery
    junk: bool  #: local copies go to the Junk mailbox
    outcomes: tuple[tuple[str, str], ...]  #: (check, outcome) of every check run
    decided_by: str  #: "check.outcome" that chose the action ("" for accept)
    log: str  #: for the transaction's log line
    extra: dict[str, str] = field(default_factory=dict)


def _dkim_outcome(dkim: DkimResult) -> str:
    if not dkim.signatures:
        return "none"
    if dkim.passing_domains():
        return "pass"
    results = {s.result for s in dkim.signatures}
    return next((r for r in _DKIM_ORDER if r in results), "fail")


def _dmarc_outcome(dmarc: DmarcResult) -> str:
    if dmarc.result != "fail":
        return dmarc.result
    return {"reject": "reject", "quarantine": "quarantine"}.get(dmarc.disposition, "fail")


def _arc_vouches(findings: Findings, config: ChecksConfig) -> bool:
    arc = findings.arc
    if arc is None or arc.result != "pass" or not arc.sealers:
        return False
    trusted = {d.lower().rstrip(".") for d in config.arc_trusted_sealers}
    return arc.sealers[0].lower() in trusted and arc.first_dmarc == "pass"


def _outcomes(findings: Findings) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if findings.iprev is not None:
        out.append(("iprev", findings.iprev.result))
    if findings.spf is not None:
        out.append(("spf", findings.spf.result))
    if findings.dkim is not None:
        out.append(("dkim", _dkim_outcome(findings.dkim)))
    if findings.arc is not None:
        out.append(("arc", findings.arc.result))
    if findings.dmarc is not None:
        out.append(("dmarc", _dmarc_outcome(findings.dmarc)))
    if findings.spam_error is not None:
        out.append(("rspamd", "error"))
    elif findings.spam is not None:
        out.append(("rspamd", findings.spam.action.replace(" ", "_")))
    if findings.virus_error is not None:
        out.append(("clamav", "error"))
    elif findings.virus is not None:
        virus = findings.virus
        out.append(("clamav", "found" if virus.infected else "oversize" if virus.skipped else "clean"))
    return out


def _reply(action: str, check: str, outcome: str) -> str | None:
    if action == "reject":
        return {"dmarc": Reply.REJECT_DMARC, "clamav": Reply.REJECT_VIRUS,
                "rspamd": Reply.REJECT_SPAM}.get(check, Reply.REJECT_POLICY)
    if action == "tempfail":
        if check == "rspamd" and outcome in ("greylist", "soft_reject"):
            return Reply.TEMPFAIL_GREYLIST
        return Reply.TEMPFAIL_CHECKS
    return None


def decide(findings: Findings, config: ChecksConfig, *, authserv_id: str) -> Verdict:
    """The verdict on one message (see the module docstring)."""
    outcomes = _outcomes(findings)
    action, decided = "accept", ""
    for check, outcome in outcomes:
        chosen = config.action(check, outcome)
        if check == "dmarc" and outcome in ("reject", "quarantine") and _arc_vouches(findings, config):
            chosen = "annotate"
        if ACTIONS.index(chosen) > ACTIONS.index(action):
            action, decided = chosen, f"{check}.{outcome}"
    check, _, outcome = decided.partition(".")
    reply = _reply(action, check, outcome)
    return Verdict(action=action, reply=reply, edit=_edit(findings, action, authserv_id),
                   junk=action == "junk", outcomes=tuple(outcomes), decided_by=decided,
                   log=_log(findings, outcomes))


def _edit(findings: Findings, action: str, authserv_id: str) -> HeaderEdit:
    fields: list[bytes] = []
    if findings.authenticated:
        fields.append(authentication_results(
            authserv_id, iprev=findings.iprev, spf=findings.spf, dkim=findings.dkim,
            arc=findings.arc, dmarc=findings.dmarc))
    spam = findings.spam
    remove_names = {"x-pymail-unscanned"}
    subject = None
    if spam is not None:
        remove_names |= {"x-spam", "x-spam-score"}
        remove_names |= {name.lower() for name in spam.remove_headers}
        if spam.action in _SPAM_ACTIONS or action == "junk":
            fields.append(b"X-Spam: Yes\r\n")
        fields.append(f"X-Spam-Score: {spam.score:.2f} / {spam.required_score:.2f}\r\n".encode())
        for name, value in spam.add_headers:
            if name.lower() not in ("x-spam", "x-spam-score") and _field_name_ok(name):
                fields.append(encode_field(name, value))
        if spam.action == "rewrite subject" and spam.subject:
            subject = spam.subject
    unscanned = []
    if findings.spam_error is not None:
        unscanned.append(f"rspamd ({findings.spam_error})")
    if findings.virus_error is not None:
        unscanned.append(f"clamav ({findings.virus_error})")
    elif findings.virus is not None and findings.virus.skipped:
        unscanned.append("clamav (over the scan size limit)")
    if unscanned:
        fields.append(encode_field(UNSCANNED, "; ".join(_printable(u) for u in unscanned)))

    def remove(f: HeaderField) -> bool:
        name = f.lower_name
        if name in remove_names:
            return True
        return name == "authentication-results" and claims_authserv_id(f.value, authserv_id)

    return HeaderEdit(prepend=b"".join(fields), remove=remove, subject=subject)


def _field_name_ok(name: str) -> bool:
    return bool(name) and name.isascii() and all(33 <= ord(c) <= 126 and c != ":" for c in name)


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)[:200]


def _log(findings: Findings, outcomes: list[tuple[str, str]]) -> str:
    """``checks=spf:pass,dkim:pass,... spam=SCORE/REQUIRED(SYM,...) virus=NAME``."""
    parts = ["checks=" + ",".join(f"{c}:{o}" for c, o in outcomes)] if outcomes else []
    if findings.spam is not None:
        symbols = ",".join(findings.spam.symbols[:12])
        parts.append(f"spam={findings.spam.score:.2f}/{findings.spam.required_score:.2f}({symbols})")
    if findings.spam_error is not None:
        parts.append(f'rspamd_error="{_printable(findings.spam_error)}"')
    if findings.virus is not None and findings.virus.infected:
        parts.append(f"virus={_printable(findings.virus.name).replace(' ', '_')}")
    if findings.virus_error is not None:
        parts.append(f'clamav_error="{_printable(findings.virus_error)}"')
    return " ".join(parts)
