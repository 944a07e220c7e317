"""MAIL and RCPT parameters pymail reads itself: RFC 3461 DSN (RET, ENVID; NOTIFY,
ORCPT) and RFC 8689 REQUIRETLS.  Sans-IO: text in, values or a reply out.

aiosmtpd 1.4 knows only SIZE, BODY and SMTPUTF8 and upper-cases the whole parameter
string before it looks at it, which would destroy ENVID and ORCPT (xtext is case
sensitive).  So `split_extensions` takes these parameters out of the raw text first
(`PymailSMTP._getaddr`), and the handler validates them with `mail_parameters` /
`rcpt_parameters`.

Rules (RFC 3461 section 4):
* RET=FULL|HDRS and ENVID=xtext (at most 100 characters once decoded, printable ASCII)
  on MAIL only; NOTIFY=NEVER or a comma list of SUCCESS, FAILURE, DELAY and
  ORCPT=addr-type;xtext (at most 500 characters) on RCPT only; each at most once.
  Keywords and RET/NOTIFY values are case-insensitive.
* REQUIRETLS (RFC 8689 section 4) takes no value and only on a TLS session: elsewhere it
  is refused with ``530 5.7.10``.
* A malformed value is ``501 5.5.4``; a parameter on the wrong command ``555 5.5.4``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "EXTENSION_KEYWORDS",
    "MailParameters",
    "ParameterError",
    "RcptParameters",
    "mail_parameters",
    "rcpt_parameters",
    "split_extensions",
    "xtext_decode",
    "xtext_encode",
]

#: The parameters this module handles (the rest stay aiosmtpd's).
EXTENSION_KEYWORDS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT", "REQUIRETLS"})
MAIL_KEYWORDS = frozenset({"RET", "ENVID", "REQUIRETLS"})
RCPT_KEYWORDS = frozenset({"NOTIFY", "ORCPT"})
MAX_ENVID = 100
MAX_ORCPT = 500
NOTIFY_VALUES = frozenset({"SUCCESS", "FAILURE", "DELAY"})

_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-Fa-f]{2})*")
_ADDR_TYPE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")  # an atom (RFC 5322)


class ParameterError(ValueError):
    """A parameter refused; `reply` is what to say."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def _bad(what: str) -> ParameterError:
    return ParameterError(f"501 5.5.4 Invalid {what} parameter")


def xtext_decode(text: str) -> str:
    """RFC 3461 section 4: ``+XX`` is the octet XX; `ValueError` for what is not xtext."""
    if not _XTEXT.fullmatch(text):
        raise ValueError("not xtext")
    return re.sub(r"\+([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text)


def xtext_encode(text: str) -> str:
    """The xtext form of `text` (for passing ORCPT and ENVID on, RFC 3461 section 4)."""
    return "".join(c if "!" <= c <= "~" and c not in "+=" else f"+{ord(c):02X}"
                   for c in text)


def split_extensions(params: str) -> tuple[str, dict[str, str | None]]:
    """(the rest for aiosmtpd, {KEYWORD: raw value or None}) of a MAIL/RCPT parameter
    string.  A keyword given twice is a `ParameterError` (``501``)."""
    rest: list[str] = []
    found: dict[str, str | None] = {}
    for word in params.split():
        keyword, eq, value = word.partition("=")
        upper = keyword.upper()
        if upper not in EXTENSION_KEYWORDS:
            rest.append(word)
            continue
        if upper in found:
            raise _bad(f"duplicate {upper}")
        found[upper] = value if eq else None
    return " ".join(rest), found


@dataclass(frozen=True, slots=True)
class MailParameters:
    ret: str | None = None  #: FULL or HDRS
    envid: str | None = None  #: decoded
    requiretls: bool = False


@dataclass(frozen=True, slots=True)
class RcptParameters:
    notify: frozenset[str] = frozenset()  #: NEVER, or some of SUCCESS/FAILURE/DELAY
    orcpt: str | None = None  #: ``addr-type;address`` decoded, e.g. ``rfc822;bob@b.example``


def mail_parameters(found: dict[str, str | None], *, tls: bool) -> MailParameters:
    """Validate the MAIL parameters `split_extensions` found (`ParameterError`)."""
    wrong = set(found) - MAIL_KEYWORDS
    if wrong:
        raise ParameterError(f"555 5.5.4 {min(wrong)} is not a MAIL parameter")
    ret = found.get("RET")
    if "RET" in found:
        if ret is None or ret.upper() not in ("FULL", "HDRS"):
            raise _bad("RET")
        ret = ret.upper()
    envid = None
    if "ENVID" in found:
        raw = found["ENVID"]
        try:
            envid = xtext_decode(raw or "")
        except ValueError:
            raise _bad("ENVID") from None
        if not envid or len(envid) > MAX_ENVID or not envid.isprintable() or not envid.isascii():
            raise _bad("ENVID")
    requiretls = "REQUIRETLS" in found
    if requiretls:
        if found["REQUIRETLS"] is not None:
            raise _bad("REQUIRETLS")
        if not tls:  # RFC 8689 section 4.1: offered, and accepted, only over TLS
            raise ParameterError("530 5.7.10 REQUIRETLS needs a TLS session")
    return MailParameters(ret=ret, envid=envid, requiretls=requiretls)


def rcpt_parameters(found: dict[str, str | None]) -> RcptParameters:
    """Validate the RCPT parameters `split_extensions` found (`ParameterError`)."""
    wrong = set(found) - RCPT_KEYWORDS
    if wrong:
        raise ParameterError(f"555 5.5.4 {min(wrong)} is not a RCPT parameter")
    notify: frozenset[str] = frozenset()
    if "NOTIFY" in found:
        raw = (found["NOTIFY"] or "").upper()
        values = raw.split(",")
        if raw == "NEVER":
            notify = frozenset({"NEVER"})
        elif not raw or len(set(values)) != len(values) or not set(values) <= NOTIFY_VALUES:
            raise _bad("NOTIFY")
        else:
            notify = frozenset(values)
    orcpt = None
    if "ORCPT" in found:
        raw = found["ORCPT"] or ""
        addr_type, semi, value = raw.partition(";")
        if not semi or not _ADDR_TYPE.match(addr_type) or not value or len(raw) > MAX_ORCPT:
            raise _bad("ORCPT")
        try:
            decoded = xtext_decode(value)
        except ValueError:
            raise _bad("ORCPT") from None
        if any(ord(c) < 32 or ord(c) == 127 for c in decoded):
            raise _bad("ORCPT")
        orcpt = f"{addr_type.lower()};{decoded}"
    return RcptParameters(notify=notify, orcpt=orcpt)
