"""Client autoconfiguration and the MTA-STS policy, as bytes (sans-IO: no sockets, no
storage; pymail.net.web serves them).

What each client fetches, and what it gets from here:

* Thunderbird's account wizard: ``GET /mail/config-v1.1.xml?emailaddress=ADDR`` (from
  ``autoconfig.DOMAIN``) or ``/.well-known/autoconfig/mail/config-v1.1.xml`` (from
  ``DOMAIN``) -> `thunderbird_config`, the ``clientConfig version="1.1"`` file of
  https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat.  The user
  name is the placeholder ``%EMAILADDRESS%``, which Thunderbird fills in.
* Outlook: ``POST /autodiscover/autodiscover.xml`` with a POX request naming the
  ``EMailAddress`` -> `autodiscover_address` reads it, `autodiscover_response` answers in
  the "outlook/responseschema/2006a" schema with IMAP, POP3 and SMTP ``Protocol``s.
* Apple Mail (macOS, iOS): ``GET /apple/mail.mobileconfig?email=ADDR`` ->
  `apple_mobileconfig`, an unsigned configuration profile with one
  ``com.apple.mail.managed`` payload (IMAP, else POP3, plus SMTP).
* Sending MTAs: ``GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt`` ->
  `mta_sts_policy` (RFC 8461 section 3.3; the text is pymail.ops.mtasts').

Invariants:

* Host names and ports come from the config only: ``server.hostname`` and the port of
  the first address of each listener; a listener that is off (``[]``) is not offered.
  Implicit TLS comes first (RFC 8314 section 3), STARTTLS after it; plain text never.
* Everything taken from a request (the address) is validated by
  pymail.mail.address.parse_mailbox (address literals refused) and put into XML through
  ElementTree, which escapes it; the domain deciding ``emailProvider`` is the address's.
* Bad input raises `AutoconfigError` (an HTTP status and one short line safe to send),
  and nothing else: a malformed, oversize or DTD-carrying Autodiscover request is a 400,
  never a traceback.
"""

from __future__ import annotations

import hashlib
import plistlib
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pymail.config.types import split_hostport
from pymail.mail.address import AddressError, Mailbox, parse_mailbox
from pymail.ops.mtasts import policy_text

if TYPE_CHECKING:
    from pymail.config.schema import Config

__all__ = [
    "AUTODISCOVER_MAX_REQUEST", "AUTODISCOVER_REQUEST_NS", "AUTODISCOVER_RESPONSE_NS",
    "AutoconfigError", "ClientSettings", "Endpoint", "MOBILECONFIG_TYPE", "OUTLOOK_RESPONSE_NS",
    "apple_mobileconfig", "autodiscover_address", "autodiscover_response", "client_settings",
    "mta_sts_policy", "requested_mailbox", "thunderbird_config",
]

#: The POX Autodiscover request and response schemas (Exchange's "Autodiscover for
#: Outlook"; [MS-OXDSCLI] section 2.2.3).
AUTODISCOVER_REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
AUTODISCOVER_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
#: A real request is a few hundred bytes; more is refused before it is parsed.
AUTODISCOVER_MAX_REQUEST = 16 * 1024
#: The media type Apple's profile installer opens.
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"


class AutoconfigError(Exception):
    """A request we cannot answer: `status` and a short `reason` safe to send."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One way in: ``protocol`` "imap" / "pop3" / "smtp", the ``port``, and
    ``socket_type`` "SSL" (implicit TLS) or "STARTTLS" (Thunderbird's words)."""

    protocol: str
    port: int
    socket_type: str


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What a mail client needs: the host name, then the ways in, best first."""

    hostname: str
    incoming: tuple[Endpoint, ...]  #: imaps, imap, pop3s, pop3 (those that are on)
    outgoing: tuple[Endpoint, ...]  #: submissions, submission (those that are on)


# (listener, protocol, socket type), in the order clients should prefer them.
_INCOMING = (("imaps", "imap", "SSL"), ("imap", "imap", "STARTTLS"),
             ("pop3s", "pop3", "SSL"), ("pop3", "pop3", "STARTTLS"))
_OUTGOING = (("submissions", "smtp", "SSL"), ("submission", "smtp", "STARTTLS"))


def client_settings(config: "Config") -> ClientSettings:
    """The host name and the listeners that are on, from the config."""
    def endpoints(table: tuple[tuple[str, str, str], ...]) -> tuple[Endpoint, ...]:
        out = []
        for listener, protocol, socket_type in table:
            addresses = getattr(config.listen, listener)
            if addresses:
                out.append(Endpoint(protocol, split_hostport(addresses[0])[1], socket_type))
        return tuple(out)

    return ClientSettings(config.server.hostname.lower().rstrip("."),
                          endpoints(_INCOMING), endpoints(_OUTGOING))


def requested_mailbox(text: str | None) -> Mailbox:
    """The address a client asked about, validated (RFC 5321 section 4.1.2 Mailbox, with
    a domain name: an address literal has no provider to describe)."""
    if not text:
        raise AutoconfigError(400, "missing email address")
    try:
        mailbox = parse_mailbox(text.strip())
    except AddressError:
        raise AutoconfigError(400, "invalid email address") from None
    if mailbox.is_literal:
        raise AutoconfigError(400, "invalid email address")
    return mailbox


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def _sub(parent: ET.Element, tag: str, text: str | int | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrs)
    if text is not None:
        element.text = str(text)
    return element


# ------------------------------------------------------------------ Thunderbird


def thunderbird_config(settings: ClientSettings, domain: str) -> bytes:
    """The Thunderbird autoconfig file (clientConfig version 1.1) for ``domain``."""
    root = ET.Element("clientConfig", version="1.1")
    provider = _sub(root, "emailProvider", id=domain)
    _sub(provider, "domain", domain)
    _sub(provider, "displayName", f"{domain} mail")
    _sub(provider, "displayShortName", domain)
    for tag, endpoints in (("incomingServer", settings.incoming), ("outgoingServer", settings.outgoing)):
        for endpoint in endpoints:
            server = _sub(provider, tag, type=endpoint.protocol)
            _sub(server, "hostname", settings.hostname)
            _sub(server, "port", endpoint.port)
            _sub(server, "socketType", endpoint.socket_type)
            _sub(server, "username", "%EMAILADDRESS%")  # Thunderbird substitutes it
            _sub(server, "authentication", "password-cleartext")  # PLAIN/LOGIN, over TLS
    return _xml(root)


# ------------------------------------------------------------------ Outlook Autodiscover


def autodiscover_address(body: bytes) -> Mailbox:
    """The ``EMailAddress`` of a POX Autodiscover request; `AutoconfigError` 400 for an
    oversize, malformed or DTD-carrying body, a missing or invalid address, or a schema
    other than Outlook's (mobile devices ask for ActiveSync's, which pymail has not)."""
    if len(body) > AUTODISCOVER_MAX_REQUEST:
        raise AutoconfigError(400, "request too large")
    if b"<!DOCTYPE" in body.upper() or b"<!ENTITY" in body.upper():
        raise AutoconfigError(400, "DTDs are not accepted")  # no entity expansion, ever
    try:
        root = ET.fromstring(body)
    except (ET.ParseError, ValueError):
        raise AutoconfigError(400, "malformed Autodiscover request") from None
    if _local(root.tag) != "Autodiscover":
        raise AutoconfigError(400, "not an Autodiscover request")
    address = schema = None
    for element in root.iter():
        name = _local(element.tag)
        if name == "EMailAddress" and address is None:
            address = (element.text or "").strip()
        elif name == "AcceptableResponseSchema" and schema is None:
            schema = (element.text or "").strip()
    if schema and schema != OUTLOOK_RESPONSE_NS:
        raise AutoconfigError(400, "unsupported response schema")
    return requested_mailbox(address)


def _local(tag: object) -> str:
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def autodiscover_response(settings: ClientSettings, mailbox: Mailbox) -> bytes:
    """The POX Autodiscover response for ``mailbox``: IMAP, POP3 and SMTP settings with
    the address as the login name."""
    root = ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_NS)
    response = _sub(root, "Response", xmlns=OUTLOOK_RESPONSE_NS)
    user = _sub(response, "User")
    _sub(user, "DisplayName", mailbox.address)
    account = _sub(response, "Account")
    _sub(account, "AccountType", "email")
    _sub(account, "Action", "settings")
    seen = set()
    for endpoint in settings.incoming + settings.outgoing:
        if endpoint.protocol in seen:  # one Protocol per type: the preferred one
            continue
        seen.add(endpoint.protocol)
        protocol = _sub(account, "Protocol")
        _sub(protocol, "Type", endpoint.protocol.upper())
        _sub(protocol, "Server", settings.hostname)
        _sub(protocol, "Port", endpoint.port)
        _sub(protocol, "DomainRequired", "off")
        _sub(protocol, "LoginName", mailbox.address)
        _sub(protocol, "SPA", "off")
        _sub(protocol, "SSL", "on")
        # Encryption overrides SSL: "SSL" is implicit TLS, "TLS" is STARTTLS.
        _sub(protocol, "Encryption", "SSL" if endpoint.socket_type == "SSL" else "TLS")
        _sub(protocol, "AuthRequired", "on")
        if endpoint.protocol == "smtp":
            _sub(protocol, "UsePOPAuth", "on")  # the same password as the mailbox
            _sub(protocol, "SMTPLast", "off")
    return _xml(root)


# ------------------------------------------------------------------ Apple


def apple_mobileconfig(settings: ClientSettings, mailbox: Mailbox) -> bytes:
    """An unsigned configuration profile (XML plist) with one ``com.apple.mail.managed``
    payload for ``mailbox``: IMAP (else POP3) and SMTP.  ``UseSSL`` is true for both
    implicit TLS and STARTTLS (Apple Mail negotiates STARTTLS on a non-TLS port).  The
    UUIDs derive from host and address, so installing it again replaces the account."""
    incoming = next((e for e in settings.incoming if e.protocol == "imap"), None) or next(
        iter(settings.incoming), None)
    outgoing = next(iter(settings.outgoing), None)
    if incoming is None or outgoing is None:
        raise AutoconfigError(404, "no mail listeners to configure")
    address = mailbox.address
    reverse = ".".join(reversed(settings.hostname.split(".")))
    tag = hashlib.sha256(address.encode("utf-8")).hexdigest()[:16]
    identifier = f"{reverse}.pymail.mail.{tag}"
    payload = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.account",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pymail:{settings.hostname}:{address}:account")).upper(),
        "PayloadDisplayName": f"Mail: {address}",
        "EmailAccountDescription": address,
        "EmailAccountName": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerHostName": settings.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": settings.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pymail:{settings.hostname}:{address}")).upper(),
        "PayloadDisplayName": f"{mailbox.domain} mail",
        "PayloadDescription": f"The mail account {address} on {settings.hostname}.",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [payload],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML)


# ------------------------------------------------------------------ MTA-STS


def mta_sts_policy(config: "Config") -> bytes:
    """The policy file served as text/plain (RFC 8461 section 3.3)."""
    return policy_text(config).encode("ascii")
