"""SMTP replies pymail sends itself, and the enhanced status codes it adds to aiosmtpd's.

Reply codes are those of RFC 5321 section 4.2, enhanced codes those of RFC 3463 (RFC
2034: once ENHANCEDSTATUSCODES is advertised, every 2xx/4xx/5xx reply after the greeting
carries one).  Client-facing text stays generic; the reason goes to the log.
"""

from __future__ import annotations

import re

__all__ = ["Reply", "with_enhanced_code"]


class Reply:
    """Replies of the MX (the submission service adds its own, pymail.net.submission)."""

    SENDER_OK = "250 2.1.0 Sender ok"
    RECIPIENT_OK = "250 2.1.5 Recipient ok"
    QUEUED = "250 2.0.0 Ok: queued as {queue_id}"
    START_DATA = "354 End data with <CR><LF>.<CR><LF>"
    BAD_SENDER = "553 5.1.7 Bad sender address syntax"
    BAD_RECIPIENT = "501 5.1.3 Bad recipient address syntax"
    NEED_SMTPUTF8 = "553 5.6.7 Non-ASCII address requires SMTPUTF8"
    RELAY_DENIED = "554 5.7.1 Relay access denied"
    UNKNOWN_USER = "550 5.1.1 Recipient address rejected: user unknown"
    DOMAIN_DISABLED = "550 5.1.1 Recipient address rejected: domain disabled"
    USER_DISABLED = "550 5.2.1 Recipient address rejected: mailbox disabled"
    ALIAS_LOOP = "554 5.4.6 Recipient address rejected: alias loop"
    FORWARD_UNAVAILABLE = "451 4.3.0 Recipient address cannot be served now, try later"
    TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
    MAILBOX_FULL = "452 4.2.2 Recipient's mailbox is full, try again later"
    NEED_RCPT = "503 5.5.1 Error: need RCPT command"
    DATA_SYNTAX = "501 5.5.4 Syntax: DATA"
    TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"
    NO_SPACE = "452 4.3.1 Insufficient system storage"
    TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
    # Inbound checks (pymail.checks): generic texts; the log line says what was found.
    REJECT_DMARC = "550 5.7.1 Message rejected: the sender domain's DMARC policy says so"
    REJECT_SPAM = "550 5.7.1 Message rejected as spam"
    REJECT_POLICY = "550 5.7.1 Message rejected by policy"
    REJECT_VIRUS = "554 5.7.1 Message content rejected"
    TEMPFAIL_CHECKS = "451 4.7.1 Message could not be checked now, please try again later"
    TEMPFAIL_GREYLIST = "451 4.7.1 Try again later"
    BARE_LINE_END = "550 5.6.0 Bare CR or LF in message data; lines must end with CRLF"
    #: STARTTLS on a connection that is encrypted already (RFC 3207 section 4: only once)
    TLS_ALREADY = "503 5.5.1 TLS already active"
    #: RFC 5321 section 4.5.3.2: a limit on the client's time was exceeded
    TIMEOUT = "421 4.4.2 Timeout exceeded, closing connection"
    SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing connection"
    TOO_MANY_CONNECTIONS = "421 4.7.0 Too many connections from your address"


#: RFC 3463 defaults for replies that aiosmtpd composes without an enhanced code.
_DEFAULT_ENHANCED = {
    "221": "2.0.0", "235": "2.7.0", "250": "2.0.0", "251": "2.1.5", "252": "2.5.0",
    "421": "4.3.0", "450": "4.2.0", "451": "4.3.0", "452": "4.3.1", "454": "4.7.0",
    "500": "5.5.2", "501": "5.5.4", "502": "5.5.1", "503": "5.5.1", "504": "5.5.4",
    "530": "5.7.0", "534": "5.7.9", "535": "5.7.8", "538": "5.7.11", "550": "5.0.0",
    "551": "5.1.6", "552": "5.3.4", "553": "5.1.3", "554": "5.0.0", "555": "5.5.4",
}  # fmt: skip
_HAS_ENHANCED = re.compile(rb"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")


def with_enhanced_code(reply: bytes) -> bytes:
    """Insert the RFC 3463 code a 2xx/4xx/5xx reply lacks (RFC 2034 section 3)."""
    if len(reply) < 4 or reply[:1] not in b"245" or _HAS_ENHANCED.match(reply):
        return reply
    code = reply[:3].decode("ascii", "replace")
    enhanced = _DEFAULT_ENHANCED.get(code)
    if enhanced is None or code == "220":
        return reply
    return reply[:4] + enhanced.encode() + b" " + reply[4:]
