"""What each inbound check found, as data (the checks never raise: an outage is a result).

Result words are RFC 8601's (section 2.7): ``pass``, ``fail``, ``softfail``, ``neutral``,
``none``, ``temperror`` (a DNS timeout or SERVFAIL: try again later) and ``permerror``
(a broken record: retrying will not help).  The A-R builder (pymail.checks.authres)
prints them as they are; the policy (pymail.checks.policy) decides what each one does.

Invariant: a DNS failure is ``temperror``, never ``fail`` and never ``none`` (OUTBOUND.md,
complaint 6: a DNS timeout turned into a DMARC fail).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ArcResult",
    "DkimResult",
    "DkimSignature",
    "DmarcResult",
    "IprevResult",
    "ScannerError",
    "SpamVerdict",
    "SpfResult",
    "VirusVerdict",
]


class ScannerError(Exception):
    """A scanner (Rspamd, clamd) could not be asked or answered nonsense: an outage."""


@dataclass(frozen=True, slots=True)
class SpfResult:
    """RFC 7208 check_host() for one identity."""

    result: str  #: pass fail softfail neutral none temperror permerror
    identity: str  #: "mailfrom" or "helo" (RFC 7208 section 2.4: HELO when MAIL FROM is <>)
    subject: str  #: the address (mailfrom) or host name (helo) that was checked
    domain: str  #: the domain whose record was evaluated ("" when the subject had none)
    reason: str = ""  #: one line for the log and the A-R comment

    @property
    def ptype_property(self) -> str:
        """A-R ``smtp.mailfrom`` / ``smtp.helo`` (RFC 8601 section 2.7.2)."""
        return f"smtp.{self.identity}"


@dataclass(frozen=True, slots=True)
class DkimSignature:
    """One DKIM-Signature's verification (RFC 6376 section 6)."""

    result: str  #: pass fail neutral temperror permerror policy
    domain: str  #: d=
    selector: str  #: s=
    b: str = ""  #: the first 12 characters of b= (RFC 6008: header.b tells signatures apart)
    algorithm: str = ""  #: a=, e.g. rsa-sha256, ed25519-sha256
    identity: str = ""  #: i= (empty when absent)
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DkimResult:
    """Every DKIM signature on the message (none: an empty tuple, A-R ``dkim=none``)."""

    signatures: tuple[DkimSignature, ...] = ()

    def passing_domains(self) -> set[str]:
        return {s.domain.lower() for s in self.signatures if s.result == "pass"}

    @property
    def temporary(self) -> bool:
        """Some signature could not be checked for a DNS failure (and none passed)."""
        return not self.passing_domains() and any(s.result == "temperror" for s in self.signatures)


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """RFC 7489 evaluation for the RFC5322.From domain."""

    result: str  #: pass fail none temperror permerror
    domain: str  #: the From domain ("" when there was not exactly one From address)
    policy: str = "none"  #: the policy that applies: none quarantine reject (p= or sp=)
    #: what to do after pct= sampling (RFC 7489 section 6.6.4): none quarantine reject
    disposition: str = "none"
    spf_aligned: bool = False
    dkim_aligned: bool = False
    org_domain: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ArcResult:
    """RFC 8617 chain validation."""

    result: str  #: pass fail none; temperror when a key lookup got no DNS answer
    sealers: tuple[str, ...] = ()  #: d= of each ARC-Seal, instance 1 first
    #: the A-R of instance 1 (the first forwarder's view), for a trusted-sealer override
    first_dmarc: str = ""  #: "pass"/"fail"/... as instance 1's ARC-Authentication-Results said
    reason: str = ""


@dataclass(frozen=True, slots=True)
class IprevResult:
    """RFC 8601 section 3: the client address's PTR names, forward-confirmed."""

    result: str  #: pass fail temperror permerror
    ip: str
    name: str = ""  #: the forward-confirmed name (pass), or the first PTR name found


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    """Rspamd's answer to /checkv2 (OUTBOUND.md, "Wire protocols")."""

    #: no action, greylist, add header, rewrite subject, soft reject, reject
    action: str
    score: float = 0.0
    required_score: float = 0.0
    symbols: tuple[str, ...] = ()  #: symbol names, highest score first
    subject: str | None = None  #: the rewritten Subject (action "rewrite subject")
    smtp_message: str = ""  #: messages.smtp_message (for the log, not the client)
    #: milter.add_headers: (name, value) pairs to add
    add_headers: tuple[tuple[str, str], ...] = ()
    #: milter.remove_headers: header names to remove
    remove_headers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class VirusVerdict:
    """clamd's answer to INSTREAM."""

    infected: bool
    name: str = ""  #: the signature that matched, e.g. "Eicar-Test-Signature.UNOFFICIAL"
    #: True when the message was over the scan limit and not sent to clamd
    skipped: bool = False
    extra: dict[str, str] = field(default_factory=dict)
