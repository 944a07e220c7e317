"""Trace header fields a receiving server adds: Return-Path and Received.

RFC 5321 section 4.4: each SMTP server that accepts a message for relaying or final
delivery inserts a Received line at the top; the server that makes final delivery inserts
Return-Path with the reverse-path of the MAIL command.  The "with" protocol keywords are
those registered by RFC 3848 (ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 section 3.7.3
(UTF8SMTP, UTF8SMTPS, UTF8SMTPA, UTF8SMTPSA).

Invariant: the returned bytes are complete header lines ending in CRLF, folded to stay
within 78 characters where the content allows, and contain no CR or LF from client input
(HELO names and addresses are sanitised: a header injection through EHLO is impossible).
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def _clean(text: str) -> str:
    """Client-supplied text made safe for a header: no control characters."""
    return _UNSAFE.sub("?", text)


def protocol_keyword(*, esmtp: bool, tls: bool, authenticated: bool, smtputf8: bool) -> str:
    """The `with` keyword of RFC 3848 / RFC 6531 for a session."""
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if authenticated else "")


def return_path(reverse_path: str) -> bytes:
    """`Return-Path: <sender>` (empty angle brackets for the null reverse-path)."""
    return f"Return-Path: <{_clean(reverse_path)}>\r\n".encode("utf-8", "surrogateescape")


def received(
    *,
    helo: str,
    client_ip: str,
    client_name: str | None,
    by_host: str,
    protocol: str,
    queue_id: str,
    recipient: str | None,
    when: _dt.datetime,
    tls_info: str | None = None,
) -> bytes:
    """A Received header (RFC 5321 section 4.4, RFC 5322 section 3.6.7 syntax).

    `recipient` is given only for single-recipient transactions (a "for" clause naming one
    of several recipients would disclose the others' presence, RFC 5321 section 7.2)."""
    literal = f"IPv6:{client_ip}" if ":" in client_ip else client_ip
    from_part = f"from {_clean(helo) or 'unknown'} ({_clean(client_name or 'unknown')} [{literal}])"
    lines = [f"Received: {from_part}"]
    if tls_info:
        lines.append(f"\t({_clean(tls_info)})")
    by = f"\tby {by_host} (pymail) with {protocol} id {queue_id}"
    if recipient is not None:
        lines.append(by)
        lines.append(f"\tfor <{_clean(recipient)}>; {email.utils.format_datetime(when)}")
    else:
        lines.append(f"{by}; {email.utils.format_datetime(when)}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
