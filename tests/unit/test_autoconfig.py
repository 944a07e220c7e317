"""pymail.net.autoconfig without sockets: which listeners are offered, and the
Autodiscover request reader raises AutoconfigError and nothing else (fuzzed)."""

from __future__ import annotations

import plistlib
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymail.config.schema import Config
from pymail.net import autoconfig
from pymail.net.autoconfig import AutoconfigError, Endpoint

REQUEST = ('<Autodiscover xmlns="{ns}"><Request><EMailAddress>{address}</EMailAddress>'
           "</Request></Autodiscover>")


def config(**listen: list[str]) -> Config:
    return Config.model_validate({"server": {"hostname": "Mail.Example.COM.", "data_dir": "/nonexistent"},
                                  "listen": listen})


def test_listeners_that_are_off_are_not_offered() -> None:
    settings_ = autoconfig.client_settings(config(imaps=[], pop3=[], pop3s=["0.0.0.0:995", "[::]:9995"],
                                                  imap=["0.0.0.0:143"], submissions=[],
                                                  submission=["0.0.0.0:587"]))
    assert settings_.hostname == "mail.example.com"
    assert settings_.incoming == (Endpoint("imap", 143, "STARTTLS"), Endpoint("pop3", 995, "SSL"))
    assert settings_.outgoing == (Endpoint("smtp", 587, "STARTTLS"),)
    root = ET.fromstring(autoconfig.thunderbird_config(settings_, "example.com"))
    assert [s.findtext("socketType") for s in root.iter("incomingServer")] == ["STARTTLS", "SSL"]
    mailbox = autoconfig.requested_mailbox("bob@example.com")
    response = ET.fromstring(autoconfig.autodiscover_response(settings_, mailbox))
    ns = {"o": autoconfig.OUTLOOK_RESPONSE_NS}
    assert [p.findtext("o:Encryption", namespaces=ns) for p in response.iterfind(".//o:Protocol", ns)] == [
        "TLS", "SSL", "TLS"]  # IMAP STARTTLS, POP3 implicit, SMTP STARTTLS
    profile = plistlib.loads(autoconfig.apple_mobileconfig(settings_, mailbox))
    assert profile["PayloadContent"][0]["IncomingMailServerPortNumber"] == 143


def test_no_mail_listeners_no_profile() -> None:
    settings_ = autoconfig.client_settings(config(imaps=[], imap=[], pop3=[], pop3s=[]))
    with pytest.raises(AutoconfigError) as e:
        autoconfig.apple_mobileconfig(settings_, autoconfig.requested_mailbox("bob@example.com"))
    assert e.value.status == 404


def test_autodiscover_reads_the_address() -> None:
    body = REQUEST.format(ns=autoconfig.AUTODISCOVER_REQUEST_NS, address=" Bob@Example.COM ").encode()
    mailbox = autoconfig.autodiscover_address(body)
    assert (mailbox.local_part, mailbox.domain) == ("Bob", "example.com")


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=400),
    st.text(max_size=80).map(lambda a: REQUEST.format(ns=autoconfig.AUTODISCOVER_REQUEST_NS,
                                                      address=a).encode("utf-8", "surrogatepass")),
))
def test_autodiscover_reader_raises_only_autoconfig_error(body: bytes) -> None:
    try:
        mailbox = autoconfig.autodiscover_address(body)
    except AutoconfigError as e:
        assert e.status == 400 and "\n" not in e.reason
    else:
        assert "@" in mailbox.address
