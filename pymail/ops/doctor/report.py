"""The doctor's checklist: one `Check` per checkpoint, the score out of 10, and the
text and JSON forms `pymail doctor` prints.

A check is ``ok`` (✓), ``fail`` (✗: a required checkpoint is not met; the command exits
non-zero), ``warn`` (!: worth fixing, not fatal) or ``skip`` (–: could not be run here,
e.g. no test account given, SpamAssassin not installed; never counted against the
setup).  Each check may carry a `deduction`: the score is 10 minus the sum of them, as
mail-tester.com scores a message, so every point lost is named next to its reason.

Invariant: the score is computed from the checks alone (no hidden penalties), and
rounding happens once, at the end.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

__all__ = ["Check", "Report", "Status"]

Status = Literal["ok", "fail", "warn", "skip"]

MARK = {"ok": "✓", "fail": "✗", "warn": "!", "skip": "–"}
SECTIONS = {
    "setup": "Setup",
    "dns": "DNS records",
    "host": "Host name, HELO and reverse DNS",
    "listeners": "Listeners (banner, TLS, login)",
    "relay": "Open relay probe",
    "dkim": "DKIM",
    "deliverability": "Deliverability self-test (offline mail-tester)",
}


@dataclass
class Check:
    """One checkpoint.  `detail`: what was found (for ok too); `fix`: what to do when it
    is not ok; `deduction`: points off the score of 10 (0 for most)."""

    section: str
    name: str
    status: Status
    detail: str = ""
    fix: str = ""
    deduction: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass
class Report:
    """Every check of one doctor run, in the order they were made."""

    hostname: str
    checks: list[Check] = field(default_factory=list)

    def add(self, section: str, name: str, status: Status, detail: str = "", fix: str = "",
            deduction: float = 0.0) -> Check:
        check = Check(section, name, status, detail, fix, deduction)
        self.checks.append(check)
        return check

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.failed]

    @property
    def score(self) -> float:
        """10 minus every deduction, floored at 0, to one decimal."""
        return max(0.0, round(10.0 - sum(c.deduction for c in self.checks), 1))

    def text(self) -> str:
        """The checklist as the admin reads it, section by section."""
        out = [f"pymail doctor: {self.hostname}"]
        for section, title in SECTIONS.items():
            checks = [c for c in self.checks if c.section == section]
            if not checks:
                continue
            out += ["", title]
            for c in checks:
                off = f"  (-{c.deduction:g})" if c.deduction else ""
                detail = f": {c.detail}" if c.detail else ""
                out.append(f"  {MARK[c.status]} {c.name}{detail}{off}")
                if c.fix and c.status in ("fail", "warn"):
                    out.append(f"      fix: {c.fix}")
        out.append("")
        deductions = [c for c in self.checks if c.deduction]
        out.append(f"Score: {self.score:g}/10")
        for c in deductions:
            out.append(f"  -{c.deduction:g}  {c.name}")
        failed = self.failed
        warned = sum(1 for c in self.checks if c.status == "warn")
        if failed:
            out.append(f"{len(failed)} required check(s) failed, {warned} warning(s): "
                       + "; ".join(c.name for c in failed))
        else:
            out.append(f"every required check passed ({warned} warning(s))")
        return "\n".join(out) + "\n"

    def json(self) -> str:
        """The same data for monitoring: ``ok``, ``score`` and every check."""
        return json.dumps({
            "hostname": self.hostname, "ok": not self.failed, "score": self.score,
            "checks": [{**asdict(c), "failed": c.failed} for c in self.checks],
        }, indent=2, ensure_ascii=False) + "\n"
