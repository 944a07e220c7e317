"""The records a domain needs and what DNS says about them: the data shared by
`pymail dns records`, `pymail dns check` and `pymail doctor`.

A `Record` is one resource record pymail wants published, in zone-file terms; a
`RecordCheck` is the verdict on one of them after asking DNS.  Both are plain data:
the text output, ``--format json`` and the doctor's checklist are made from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Record", "RecordCheck", "Status"]

#: ok: published as expected; missing: no such record (NXDOMAIN/NODATA); wrong: records
#: exist but none is what we need (``detail`` says why); error: DNS gave no answer
#: (SERVFAIL, timeout), so nothing can be said; info: not checkable (e.g. a PTR pymail
#: cannot look up without a public address), shown but never counted as a failure.
Status = Literal["ok", "missing", "wrong", "error", "info"]


@dataclass(frozen=True)
class Record:
    """One record to publish.

    ``name`` is absolute, lower case, without the trailing dot (``_dmarc.example.com``);
    ``value`` is the RDATA in presentation form without quoting (a TXT value is the whole
    string, split into 255-octet strings only when printed: RFC 7208 section 3.3);
    ``required``: `pymail dns check` exits non-zero when it is not ok; ``in_zone``: False
    for a record the domain's owner does not publish in their zone (the PTR, which the
    owner of the address block — the ISP or hosting provider — publishes)."""

    name: str
    rtype: str
    value: str
    purpose: str
    required: bool = True
    in_zone: bool = True
    ttl: int = 3600


@dataclass(frozen=True)
class RecordCheck:
    """The verdict on one `Record`: ``found`` holds the values DNS returned (TXT strings
    joined), ``detail`` the reason for anything but ok, ``fix`` what to do about it."""

    record: Record
    status: Status
    found: tuple[str, ...] = ()
    detail: str = ""
    fix: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        """A required record that is not right (an unanswerable lookup counts too)."""
        return self.record.required and self.status in ("missing", "wrong", "error")
