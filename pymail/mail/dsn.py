"""Delivery Status Notifications pymail writes about mail it could not (yet) deliver.

`build_dsn` returns one complete RFC 5322 message: a ``multipart/report;
report-type=delivery-status`` (RFC 6522) of three parts:

1. a human-readable ``text/plain`` part that quotes every remote server's reply exactly,
   line for line (users complain when a bounce hides the remote error: OUTBOUND.md);
2. the machine-readable ``message/delivery-status`` (RFC 3464 section 2): per-message
   fields (Reporting-MTA, Original-Envelope-Id, Arrival-Date), then one block per
   recipient (Final-Recipient, Original-Recipient, Action, Status, Remote-MTA,
   Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until);
3. the original: its header block as ``text/rfc822-headers`` (RET=HDRS or none, or a
   message over `size_limit`), or the whole message as ``message/rfc822`` (RET=FULL,
   RFC 3461 section 4.3).

Internationalised mail (RFC 6533): when an address, reply or original header holds
non-ASCII text, the report uses ``message/global-delivery-status`` (addresses typed
``utf-8``) and ``message/global-headers`` / ``message/global`` for the original, so a
UTF-8 original is carried as it is instead of being mangled or crashing the builder.

The envelope is the caller's business: the DSN is sent with ``MAIL FROM:<>``, never to
the null sender (RFC 3461 section 6.2), through `Pipeline.submit_dsn`.

Invariants: the output is CRLF throughout; every header line is folded under 998 octets
(long values at existing white space, so unfolding gives the exact text back); no CR, LF
or other control character from a remote reply or address reaches a header (no header
injection through a reply); the boundary occurs nowhere in the content; the function
does no I/O and never raises for odd input (unknown actions, malformed statuses, a
header block without a body, 8-bit octets).
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ACTIONS", "DsnRecipient", "build_dsn", "subject_for"]

#: RFC 3464 section 2.3.3.
ACTIONS = frozenset({"failed", "delayed", "delivered", "relayed", "expanded"})

_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")  # RFC 3463 section 2
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LINE = 78  # RFC 5322 section 2.1.1: SHOULD
_HARD = 900  # a margin under the 998 octets a line MUST stay within


@dataclass(frozen=True)
class DsnRecipient:
    """What the report says about one recipient (RFC 3464 section 2.3)."""

    address: str  #: the recipient as delivery tried it (Final-Recipient)
    orcpt: str | None  #: RCPT's ORCPT, ``addr-type;address`` decoded (Original-Recipient)
    action: str  #: "failed" | "delayed" | "delivered" | "relayed" | "expanded"
    status: str  #: the enhanced status code, e.g. "5.1.1" (RFC 3463)
    remote_mta: str | None  #: the host that answered, e.g. "mx.remote.test"
    diagnostic: str | None  #: the remote's full reply, e.g. "550 5.1.1 <x@y>: unknown"
    last_attempt: _dt.datetime | None
    will_retry_until: _dt.datetime | None = None  #: for "delayed" only


def subject_for(recipients: Sequence[DsnRecipient]) -> str:
    """The Subject: failure wins over delay, delay over success."""
    actions = {r.action for r in recipients}
    if "failed" in actions:
        return "Undelivered Mail Returned to Sender"
    if "delayed" in actions:
        return "Delayed Mail (still being retried)"
    return "Successful Mail Delivery Report"


def build_dsn(*, reporting_mta: str, original_sender: str, recipients: Sequence[DsnRecipient],
              original: bytes, ret: str | None, envid: str | None, arrival: _dt.datetime,
              now: _dt.datetime, queue_id: str, size_limit: int,
              token: str | None = None) -> bytes:
    """The DSN about `original` (the queued message, without Return-Path) for
    `recipients`, from ``MAILER-DAEMON@reporting_mta`` to `original_sender`.

    `ret` is RET (``"FULL"``/``"HDRS"``/None); `size_limit` caps the returned original
    (over it only the headers are returned, as Postfix's bounce_size_limit); `token`
    fixes the random part of the Message-ID and boundary (reproducible output in tests).
    """
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    token = token or secrets.token_hex(8)
    head, _ = _split_original(original)
    full = (ret or "").upper() == "FULL" and len(original) <= size_limit
    headers_8bit = not head.isascii()
    fields_utf8 = (not original_sender.isascii() or not reporting_mta.isascii()
                   or any(not _text(r).isascii() for r in recipients))
    global_report = fields_utf8 or headers_8bit

    boundary = _boundary(token, original)
    human = _human_part(reporting_mta, recipients, full)
    status = _status_part(reporting_mta, recipients, envid, arrival, queue_id,
                          utf8=global_report)
    if full:
        body_8bit = not original.isascii()
        kind = "message/global" if headers_8bit else "message/rfc822"
        third = (f"Content-Type: {kind}\r\n"
                 "Content-Description: Undelivered Message\r\n"
                 f"Content-Transfer-Encoding: {'8bit' if body_8bit else '7bit'}\r\n"
                 "\r\n").encode() + _crlf_ended(original)
    else:
        kind = "message/global-headers" if headers_8bit else "text/rfc822-headers"
        third = (f"Content-Type: {kind}\r\n"
                 "Content-Description: Undelivered Message Headers\r\n"
                 f"Content-Transfer-Encoding: {'8bit' if headers_8bit else '7bit'}\r\n"
                 "\r\n").encode() + _limit_header(head, size_limit)

    status_type = "message/global-delivery-status" if global_report else "message/delivery-status"
    sender = _clean(original_sender)
    top = [
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{_clean(reporting_mta)}>"),
        _field("To", f"<{sender}>"),
        _field("Subject", subject_for(recipients)),
        _field("Date", email.utils.format_datetime(_aware(now))),
        _field("Message-ID", f"<{_clean(queue_id)}.{int(_aware(now).timestamp())}.{token}"
                             f"@{_clean(reporting_mta)}>"),
        _field("Auto-Submitted", "auto-generated"),  # RFC 3834 section 5
        _field("MIME-Version", "1.0"),
        _field("Content-Type", f'multipart/report; report-type=delivery-status;'
                               f' boundary="{boundary}"'),
        _field("Content-Transfer-Encoding",
               "8bit" if global_report or (full and not original.isascii()) else "7bit"),
    ]
    parts = [
        ("Content-Type: text/plain; charset=utf-8\r\n"
         "Content-Description: Notification\r\n"
         f"Content-Transfer-Encoding: {'7bit' if human.isascii() else '8bit'}\r\n"
         "\r\n").encode() + human.encode("utf-8", "surrogateescape"),
        (f"Content-Type: {status_type}\r\n"
         "Content-Description: Delivery report\r\n"
         f"Content-Transfer-Encoding: {'7bit' if status.isascii() else '8bit'}\r\n"
         "\r\n").encode() + status.encode("utf-8", "surrogateescape"),
        third,
    ]
    out = bytearray("".join(top).encode("utf-8", "surrogateescape"))
    out += b"\r\nThis is a MIME-encapsulated message (a delivery status notification).\r\n"
    delimiter = b"--" + boundary.encode()
    for part in parts:
        # the CRLF before a delimiter belongs to it (RFC 2046 section 5.1.1): each part
        # keeps its own last line end, so the original comes back octet for octet
        out += b"\r\n" + delimiter + b"\r\n" + _crlf_ended(part)
    out += b"\r\n" + delimiter + b"--\r\n"
    return bytes(out)


# --------------------------------------------------------------------------- the parts


def _human_part(host: str, recipients: Sequence[DsnRecipient], full: bool) -> str:
    groups = {
        "failed": "could not be delivered to the following recipients; the delivery attempt\n"
                  "failed permanently, and nothing more will be tried:",
        "delayed": "has not yet been delivered to the following recipients; delivery is\n"
                   "being retried:",
        "delivered": "was delivered to the following recipients:",
        "relayed": "was passed on to the following recipients' servers, which will send no\n"
                   "further notice:",
        "expanded": "was delivered to the following recipients, which are lists or aliases\n"
                    "of several addresses:",
    }
    lines = [f"This is the mail system at host {_clean(host)}.", ""]
    order = ["failed", "delayed", "delivered", "relayed", "expanded"]
    for action in order + sorted({r.action for r in recipients} - set(order)):
        members = [r for r in recipients if r.action == action]
        if not members:
            continue
        lines.append("Your message " + groups.get(action, f"has the status '{action}' for:"))
        lines.append("")
        for r in members:
            lines.append(f"<{_clean(r.address)}>:")
            if r.remote_mta and r.diagnostic:
                lines.append(f"    host {_clean(r.remote_mta)} said:")
            elif r.diagnostic:
                lines.append("    reason:")
            if r.diagnostic:
                lines.extend("        " + _clean(line)[i:i + _HARD]
                             for line in _reply_lines(r.diagnostic)
                             for i in range(0, max(len(_clean(line)), 1), _HARD))
            if action == "delayed" and r.will_retry_until is not None:
                lines.append("    Delivery will be retried until "
                             + email.utils.format_datetime(_aware(r.will_retry_until)) + ".")
            lines.append("")
    lines.append("The original message is attached." if full
                 else "The header of the original message is attached.")
    return "".join(line + "\r\n" for text in lines for line in text.split("\n"))


def _status_part(host: str, recipients: Sequence[DsnRecipient], envid: str | None,
                 arrival: _dt.datetime, queue_id: str, *,
                 utf8: bool) -> str:
    """The delivery-status body: per-message fields, then one block per recipient, each
    ended by a blank line (RFC 3464 section 2.1)."""
    blocks = [[
        _field("Reporting-MTA", f"dns; {_clean(host)}"),
        _field("X-Pymail-Queue-ID", _clean(queue_id)),  # an extension-field, RFC 3464 2.4
        *([_field("Original-Envelope-Id", _clean(envid))] if envid else []),
        _field("Arrival-Date", email.utils.format_datetime(_aware(arrival))),
    ]]
    for r in recipients:
        action = r.action if r.action in ACTIONS else "failed"
        block = [_field("Final-Recipient", _typed_address("rfc822", r.address, utf8))]
        if r.orcpt:
            kind, sep, address = r.orcpt.partition(";")
            if sep and kind.strip():
                block.append(_field("Original-Recipient",
                                    _typed_address(kind.strip(), address.strip(), utf8)))
        block.append(_field("Action", action))
        block.append(_field("Status", _status(r.status, action)))
        if r.remote_mta:
            block.append(_field("Remote-MTA", f"dns; {_clean(r.remote_mta)}"))
        if r.diagnostic:
            block.append(_field("Diagnostic-Code", "smtp; " + " ".join(
                _clean(line) for line in _reply_lines(r.diagnostic))))
        if r.last_attempt is not None:
            block.append(_field("Last-Attempt-Date",
                                email.utils.format_datetime(_aware(r.last_attempt))))
        if action == "delayed" and r.will_retry_until is not None:
            block.append(_field("Will-Retry-Until",
                                email.utils.format_datetime(_aware(r.will_retry_until))))
        blocks.append(block)
    return "\r\n".join("".join(b) for b in blocks)


def _typed_address(kind: str, address: str, utf8: bool) -> str:
    """``addr-type; address``; a non-ASCII address is typed ``utf-8`` in a global report
    (RFC 6533 section 3; any non-ASCII address makes the report global)."""
    address = _clean(address)
    if address.isascii() or not utf8:
        return f"{_clean(kind)}; {address}"
    return f"utf-8; {address}"


def _status(status: str, action: str) -> str:
    status = (status or "").strip()
    if _STATUS.match(status):
        return status
    return {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")


def _text(r: DsnRecipient) -> str:
    return "".join(x or "" for x in (r.address, r.orcpt, r.remote_mta, r.diagnostic))


# --------------------------------------------------------------------------- helpers


def _reply_lines(reply: str) -> list[str]:
    """The lines of a (possibly multi-line) SMTP reply, as the remote sent them."""
    return [line for line in reply.replace("\r\n", "\n").replace("\r", "\n").split("\n")
            if line.strip()] or [reply.strip()]


def _clean(text: str) -> str:
    """Text for a header or a line of the report: no CR, LF or other control character
    (a tab stays); surrogate-escaped octets made visible."""
    text = _CONTROL.sub("?", text)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _field(name: str, value: str) -> str:
    """``Name: value`` CRLF, folded at existing spaces before column 78 where it can and
    always before 998 octets (RFC 5322 sections 2.1.1 and 2.2.3)."""
    words = value.split(" ")
    lines: list[str] = []
    current = f"{name}:"
    for n, word in enumerate(words):
        candidate = f"{current} {word}"
        if n and word and len(candidate.encode()) > _LINE and current.strip():
            lines.append(current)
            current = f" {word}"
        else:
            current = candidate
        while len(current.encode()) > _HARD:  # one word too long for a line: cut it
            cut = _HARD
            while len(current[:cut].encode()) > _HARD:
                cut -= 1
            lines.append(current[:cut])
            current = " " + current[cut:]
    lines.append(current)
    return "\r\n".join(lines) + "\r\n"


def _aware(when: _dt.datetime) -> _dt.datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=_dt.timezone.utc)


def _boundary(token: str, original: bytes) -> str:
    """A boundary that occurs nowhere in the original ("=_" cannot appear in
    quoted-printable or base64 content either, RFC 2045 section 6.7)."""
    n = 0
    while True:
        boundary = f"=_pymail-dsn-{token}" + (f"-{n}" if n else "")
        if boundary.encode() not in original:
            return boundary
        n += 1


def _split_original(original: bytes) -> tuple[bytes, bytes]:
    """(header block ending with CRLF, body); a message with no blank line is all header."""
    data = _crlf_ended(original)
    end = data.find(b"\r\n\r\n")
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    if end < 0:
        return _crlf_ended(data), b""
    return data[: end + 2], data[end + 4:]


def _limit_header(head: bytes, size_limit: int) -> bytes:
    """The header block cut to `size_limit` octets at a field boundary (at least the
    first field; Postfix's bounce_size_limit applies to headers too)."""
    if len(head) <= size_limit:
        return head
    cut = head.rfind(b"\r\n", 0, size_limit)
    while cut > 0 and head[cut + 2: cut + 3] in (b" ", b"\t"):  # not inside a folded field
        cut = head.rfind(b"\r\n", 0, cut)
    return head[: cut + 2] if cut > 0 else head[: head.find(b"\r\n") + 2]


def _crlf_ended(data: bytes) -> bytes:
    """`data` with bare LFs as CRLF (a stored message is CRLF already) ending in CRLF."""
    if b"\n" in data and b"\r\n" not in data:
        data = data.replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") or not data else data + b"\r\n"
