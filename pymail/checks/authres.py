"""The Authentication-Results header field (RFC 8601) pymail adds to received mail.

One field per message, authserv-id = ``server.hostname``, one resinfo per method, in the
order a reader follows the reasoning: iprev, spf, dkim (one per signature), arc, dmarc.
Each resinfo is ``method=result`` with the properties RFC 8601 section 2.7 defines
(``smtp.mailfrom``/``smtp.helo``, ``header.d``/``header.s``/``header.b`` (RFC 6008),
``header.from``, ``policy.iprev``) and the reason as a comment.

Incoming fields that claim our authserv-id are forgeries (or stale copies) and are
removed before ours is added (RFC 8601 section 5): `claims_authserv_id` recognises them.

Invariant: no client-supplied text reaches the field unquoted: values that are not
RFC 2045 tokens (or addr-specs, for smtp.mailfrom) are quoted, comments have their
parentheses, backslashes and control characters removed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pymail.checks.results import ArcResult, DkimResult, DmarcResult, IprevResult, SpfResult

__all__ = ["authentication_results", "claims_authserv_id", "FIELD_NAME"]

FIELD_NAME = "Authentication-Results"
#: RFC 2045 token characters (tspecials excluded).
_TOKEN = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")
#: an addr-spec simple enough to leave unquoted (RFC 8601 section 2.2: pvalue)
_ADDR = re.compile(r"^[!#$%&'*+\-/=?^_`{|}~0-9A-Za-z.]+@[0-9A-Za-z.\-]+$")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f()\\]")
MAX_COMMENT = 120


def _value(text: str) -> str:
    """A pvalue: the text itself when it is a token or an addr-spec, else quoted."""
    if text and (_TOKEN.match(text) or _ADDR.match(text)):
        return text
    escaped = _UNSAFE.sub("", text).replace('"', "")
    return f'"{escaped}"'


def _comment(text: str) -> str:
    text = _UNSAFE.sub("", text).strip()[:MAX_COMMENT]
    return f" ({text})" if text else ""


def _resinfo(method: str, result: str, props: Iterable[tuple[str, str]] = (),
             reason: str = "") -> str:
    parts = [f"{method}={result}"]
    parts.extend(f"{name}={_value(value)}" for name, value in props if value)
    return " ".join(parts) + _comment(reason)


def authentication_results(
    authserv_id: str,
    *,
    iprev: IprevResult | None = None,
    spf: SpfResult | None = None,
    dkim: DkimResult | None = None,
    arc: ArcResult | None = None,
    dmarc: DmarcResult | None = None,
) -> bytes:
    """The whole field, folded one resinfo per line, CRLF-terminated.  Checks not run
    (None) are left out; none at all gives ``; none`` (RFC 8601 section 2.2)."""
    infos: list[str] = []
    if iprev is not None:
        infos.append(_resinfo("iprev", iprev.result, [("policy.iprev", iprev.ip)],
                              iprev.name))
    if spf is not None:
        subject = spf.subject if spf.identity == "mailfrom" else spf.subject.rpartition("@")[2]
        infos.append(_resinfo("spf", spf.result, [(spf.ptype_property, subject)], spf.reason))
    if dkim is not None:
        if not dkim.signatures:
            infos.append("dkim=none")
        for sig in dkim.signatures:
            infos.append(_resinfo("dkim", sig.result, [
                ("header.d", sig.domain), ("header.s", sig.selector), ("header.b", sig.b),
                ("header.a", sig.algorithm)], sig.reason))
    if arc is not None:
        infos.append(_resinfo("arc", arc.result, [], arc.reason))
    if dmarc is not None:
        infos.append(_resinfo("dmarc", dmarc.result, [("header.from", dmarc.domain)],
                              _dmarc_comment(dmarc)))
    body = ";\r\n\t".join(infos) if infos else "none"
    return f"{FIELD_NAME}: {authserv_id};\r\n\t{body}\r\n".encode()


def _dmarc_comment(dmarc: DmarcResult) -> str:
    if dmarc.result == "fail":
        return f"p={dmarc.policy} dis={dmarc.disposition.upper()}"
    return dmarc.reason if dmarc.result != "pass" else ""


def claims_authserv_id(value: str, authserv_id: str) -> bool:
    """Whether an Authentication-Results field value (unfolded) names `authserv_id`
    (RFC 8601 section 2.2: the first element, before any version and the first ';').
    Comments around it are ignored; comparison is case-insensitive."""
    text = re.sub(r"\([^()]*\)", " ", value)
    first = text.split(";", 1)[0].split()
    return bool(first) and first[0].strip().lower().rstrip(".") == authserv_id.lower().rstrip(".")
