"""RFC 5321 envelope addresses: the paths of MAIL FROM and RCPT TO, and the mailbox inside.

Three steps, each usable on its own by the SMTP server:

1. `split_path` cuts the argument of ``MAIL FROM:`` / ``RCPT TO:`` into the path (inside
   the angle brackets) and the ESMTP parameters that follow it;
2. `split_route` separates an obsolete source route (``@a,@b:``) from the mailbox, so the
   caller can refuse or ignore it (RFC 5321 section 4.1.2, Appendix C);
3. `parse_mailbox` validates ``Local-part "@" ( Domain / address-literal )`` strictly and
   returns a `Mailbox` with the local part unquoted and the domain canonical.

Invariants:

- The only exception these functions raise is `AddressError`; its message is short,
  generic text that is safe to put in an SMTP reply (e.g. "bad local part"). Anything
  else escaping from here is a bug (the unit tests fuzz this with hypothesis).
- A `Mailbox` is always valid: parsing ``mailbox.address`` gives back the same local part
  and domain.
- ``Mailbox.domain`` is lower-case ASCII: a U-label domain (RFC 6531, SMTPUTF8) is turned
  into its A-label with the stdlib "idna" codec, an address literal is kept as written,
  lower-cased. The local part keeps its case (RFC 5321 section 2.4: it is case-sensitive,
  only the receiving host may decide otherwise).
- UTF-8 is accepted in the local part and in domains (RFC 6531 section 3.3); C0/C1 control
  characters, DEL and undecodable bytes (surrogate escapes) are refused everywhere.
- Pure functions: no I/O, no DNS, stdlib only.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

__all__ = ["AddressError", "Mailbox", "split_path", "split_route", "parse_mailbox"]

# RFC 5321 section 4.5.3.1.1 and 4.5.3.1.2: size limits, in octets.
MAX_LOCAL_PART_OCTETS = 64
MAX_DOMAIN_OCTETS = 255
MAX_LABEL_OCTETS = 63


class AddressError(ValueError):
    """A path or mailbox is malformed; ``str(error)`` is short text safe to send to a client."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """One valid RFC 5321 mailbox.

    ``local_part`` is the semantic value (quotes and backslash escapes removed);
    ``domain`` is lower-case ASCII (A-labels for IDNs) or an address literal such as
    ``[127.0.0.1]`` / ``[ipv6:::1]``; ``quoted`` says the client wrote the local part as a
    Quoted-string; ``is_literal`` says the domain is an address literal.
    """

    local_part: str
    domain: str
    quoted: bool
    is_literal: bool

    @property
    def address(self) -> str:
        """Canonical ``local@domain``; the local part is quoted only when it is not a
        Dot-string (RFC 5321 section 4.1.2: a Quoted-string SHOULD NOT be used where a
        Dot-string would do)."""
        return f"{_quote_local_part(self.local_part)}@{self.domain}"


# --- character classes -------------------------------------------------------------------

# RFC 5322 section 3.2.3 atext, plus RFC 6531 section 3.3 UTF8-non-ascii (checked apart).
_ATEXT_ASCII = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")
# RFC 5321 section 4.1.2 Dot-string = Atom *("." Atom), ASCII or UTF-8 atext.
_DOT_STRING = re.compile(r"[^\x00-\x20\x7f-\x9f\"(),.:;<>@\[\\\]]+(?:\.[^\x00-\x20\x7f-\x9f\"(),.:;<>@\[\\\]]+)*")
# RFC 5321 section 4.1.2 Domain: sub-domain = Let-dig [Ldh-str], after IDNA conversion.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# C0 controls, DEL, C1 controls and lone surrogates (undecodable bytes): never in an address.
_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _is_atext(char: str) -> bool:
    if char in _ATEXT_ASCII:
        return True
    # RFC 6531 section 3.3: atext =/ UTF8-non-ascii (controls were refused earlier).
    return char > "\x7f" and not char.isspace()


def _quote_local_part(local_part: str) -> str:
    """Dot-string when possible, otherwise a Quoted-string (RFC 5321 section 4.1.2)."""
    if _DOT_STRING.fullmatch(local_part) and all(_is_atext(c) for c in local_part if c != "."):
        return local_part
    escaped = local_part.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --- paths -------------------------------------------------------------------------------


def _scan_quoted(text: str, start: int) -> int:
    """Index just past the closing DQUOTE of the quoted string opening at ``text[start]``."""
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == '"':
            return i + 1
        i += 1
    raise AddressError("unterminated quoted string")


def split_path(text: str) -> tuple[str, str]:
    """Parse the argument of MAIL FROM:/RCPT TO: (everything after the colon, may start
    with spaces).

    Returns ``(path, rest)``: ``path`` is what was inside ``<...>`` with the angle brackets
    removed (``''`` for the null path ``<>``), ``rest`` is the remaining text (the ESMTP
    parameters, RFC 5321 section 4.1.2 Mail-parameters / Rcpt-parameters), stripped. A
    source route is kept in ``path`` (``'@a.example,@b.example:user@c.example'``) so the
    caller can refuse it. A missing pair of angle brackets is accepted, as Postfix does:
    ``'user@example.com SIZE=10'`` gives ``('user@example.com', 'SIZE=10')``.

    Raises `AddressError` for an empty argument, unbalanced angle brackets, a quoted
    string that never closes, text glued to the closing bracket, or a control character.
    """
    if _FORBIDDEN.search(text.replace("\t", " ")):
        raise AddressError("control character in address")
    text = text.lstrip(" \t")
    if not text:
        raise AddressError("missing address")

    if text[0] == "<":
        # RFC 5321 section 4.1.2: Path = "<" [ A-d-l ":" ] Mailbox ">"
        i = 1
        while i < len(text):
            char = text[i]
            if char == '"':
                i = _scan_quoted(text, i)
                continue
            if char == "<":
                raise AddressError("unbalanced angle brackets")
            if char == ">":
                break
            i += 1
        else:
            raise AddressError("unbalanced angle brackets")
        path, rest = text[1:i], text[i + 1 :]
        if rest and rest[0] not in " \t":
            raise AddressError("bad syntax after address")
        return path, rest.strip(" \t")

    # Lenient: no angle brackets; the path runs to the first blank outside quotes.
    i = 0
    while i < len(text) and text[i] not in " \t":
        if text[i] == '"':
            i = _scan_quoted(text, i)
            continue
        if text[i] in "<>":
            raise AddressError("unbalanced angle brackets")
        i += 1
    return text[:i], text[i:].strip(" \t")


def split_route(path: str) -> tuple[tuple[str, ...], str]:
    """Separate an RFC 5321 source route (A-d-l, section 4.1.2) from the mailbox.

    ``'@a.example,@b.example:user@c.example'`` gives
    ``(('@a.example', '@b.example'), 'user@c.example')``; a path without a route gives
    ``((), path)``. Each hop is checked to be ``"@" Domain``; raises `AddressError`
    ("bad source route") otherwise.
    """
    if not path.startswith("@"):
        return (), path
    colon = path.find(":")
    if colon < 0:
        raise AddressError("bad source route")
    hops = tuple(path[:colon].split(","))
    for hop in hops:
        if not hop.startswith("@"):
            raise AddressError("bad source route")
        try:
            _canonical_domain(hop[1:])
        except AddressError:
            raise AddressError("bad source route") from None
    return hops, path[colon + 1 :]


# --- mailboxes ---------------------------------------------------------------------------


def parse_mailbox(text: str) -> Mailbox:
    """Strict RFC 5321 section 4.1.2 ``Mailbox = Local-part "@" ( Domain / address-literal )``.

    UTF-8 is allowed in the local part and the domain (RFC 6531 section 3.3). Enforces
    section 4.5.3.1.1 (local part at most 64 octets, as written), section 4.5.3.1.2
    (domain at most 255 octets, in A-label form), labels of 1..63 octets made of letters,
    digits and inner hyphens; address literals are checked with `ipaddress` (IPv4 dotted
    quad, ``IPv6:`` tag). Raises `AddressError` for anything else.
    """
    if _FORBIDDEN.search(text):
        raise AddressError("control character in address")
    if not text:
        raise AddressError("missing address")

    if text[0] == '"':
        # Quoted-string = DQUOTE *QcontentSMTP DQUOTE
        end = _scan_quoted(text, 0)
        local_written = text[:end]
        local_part = _unquote_local_part(local_written)
        quoted = True
        if end >= len(text) or text[end] != "@":
            raise AddressError("bad local part" if "@" in text[end:] else "missing @")
        domain_written = text[end + 1 :]
    else:
        local_written, at, domain_written = text.partition("@")
        if not at:
            raise AddressError("missing @")
        if not local_written:
            raise AddressError("empty local part")
        local_part = local_written
        quoted = False
        if not _DOT_STRING.fullmatch(local_part) or not all(_is_atext(c) for c in local_part if c != "."):
            raise AddressError("bad local part")

    if not local_part:
        raise AddressError("empty local part")
    if len(local_written.encode("utf-8")) > MAX_LOCAL_PART_OCTETS:
        raise AddressError("local part too long")
    if "@" in domain_written:
        raise AddressError("too many @")

    if domain_written.startswith("["):
        domain = _canonical_address_literal(domain_written)
        is_literal = True
    else:
        domain = _canonical_domain(domain_written)
        is_literal = False
    return Mailbox(local_part=local_part, domain=domain, quoted=quoted, is_literal=is_literal)


def _unquote_local_part(written: str) -> str:
    """Semantic value of a Quoted-string local part (RFC 5321 section 4.1.2)."""
    out: list[str] = []
    i = 1
    last = len(written) - 1  # index of the closing DQUOTE
    while i < last:
        char = written[i]
        if char == "\\":
            # quoted-pairSMTP = %d92 %d32-126 (RFC 6531 adds nothing here)
            escaped = written[i + 1] if i + 1 < last else ""
            if not escaped or not " " <= escaped <= "~":
                raise AddressError("bad local part")
            out.append(escaped)
            i += 2
            continue
        # qtextSMTP = %d32-33 / %d35-91 / %d93-126, RFC 6531: =/ UTF8-non-ascii
        if not (" " <= char <= "~" or char > "\x7f"):
            raise AddressError("bad local part")
        out.append(char)
        i += 1
    return "".join(out)


def _canonical_domain(written: str) -> str:
    """Lower-case ASCII form of an RFC 5321 Domain, U-labels converted to A-labels."""
    if not written:
        raise AddressError("missing domain")
    if written.isascii():
        domain = written.lower()
    else:
        # RFC 6531 section 3.3: sub-domain =/ U-label. The stdlib codec is IDNA 2003.
        try:
            domain = written.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise AddressError("bad domain") from None
    if len(domain) > MAX_DOMAIN_OCTETS:
        raise AddressError("domain too long")
    for label in domain.split("."):
        if len(label) > MAX_LABEL_OCTETS:
            raise AddressError("domain label too long")
        if not _LDH_LABEL.fullmatch(label):
            raise AddressError("bad domain")
    return domain


def _canonical_address_literal(written: str) -> str:
    """RFC 5321 section 4.1.3 address-literal, validated with `ipaddress`, lower-cased."""
    if len(written) < 3 or not written.endswith("]") or not written.isascii():
        raise AddressError("bad address literal")
    inner = written[1:-1]
    if len(written) > MAX_DOMAIN_OCTETS:
        raise AddressError("domain too long")
    try:
        if inner[:5].lower() == "ipv6:":
            # IPv6-address-literal = "IPv6:" IPv6-addr; no zone index ("%eth0") in mail.
            if "%" in inner:
                raise ValueError(inner)
            ipaddress.IPv6Address(inner[5:])
        else:
            # IPv4-address-literal = Snum 3("."  Snum); General-address-literal has no
            # registered tag other than IPv6, so any other "tag:" is refused.
            ipaddress.IPv4Address(inner)
    except ValueError:
        raise AddressError("bad address literal") from None
    return written.lower()
