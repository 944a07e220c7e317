"""The test internet's independent verifier (Rspamd, tests/services/rspamd.py), used as
the outbound tests use it: a message DKIM-signed (here with dkimpy, the key published in
the tests' NSD) and sent from an address the SPF record authorises passes DKIM, SPF and
DMARC; changed after signing, or sent from elsewhere, it does not; GTUBE is rejected.
The last test goes through the remote Postfix and `Internet.verify_delivered`, the path
of the "done means" test."""

from __future__ import annotations

import smtplib

import pytest

from tests.internet import (
    POSTFIX_ADDRESS,
    PYMAIL_ADDRESS,
    PYMAIL_HOSTNAME,
    Internet,
    dkim_record,
    make_dkim_key,
)
from tests.pymail_harness import client_module

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
           b"Subject: signed\r\nDate: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
           b"Message-ID: <signed-1@example.test>\r\n\r\nHello Bob, this is signed.\r\n")
AUTHENTICATED = ("R_DKIM_ALLOW", "R_SPF_ALLOW", "DMARC_POLICY_ALLOW")


@pytest.fixture(scope="module")
def dkim_key() -> tuple[bytes, str]:
    return make_dkim_key()


@pytest.fixture
def signed(internet: Internet, dkim_key: tuple[bytes, str]) -> bytes:
    """MESSAGE signed by example.test (selector sel1), its key published."""
    dkim = client_module("dkim", "dkimpy (pip; the test extra)")
    private, public = dkim_key
    internet.add_records("example.test", dkim_record("sel1", public))
    return dkim.sign(MESSAGE, b"sel1", b"example.test", private) + MESSAGE


def scan(internet: Internet, message: bytes, ip: str = PYMAIL_ADDRESS):
    return internet.rspamd.check(message, ip=ip, helo=PYMAIL_HOSTNAME, hostname=PYMAIL_HOSTNAME,
                                 mail_from="alice@example.test", rcpt="bob@remote.test")


def test_signed_mail_from_an_authorised_address_passes_dkim_spf_and_dmarc(
        internet: Internet, signed: bytes) -> None:
    result = scan(internet, signed)
    assert result.has(*AUTHENTICATED), result
    assert result.symbols["R_DKIM_ALLOW"]["options"] == ["example.test:s=sel1"]
    assert result.action == "no action"
    assert internet.rspamd.start_seconds is not None


def test_a_change_after_signing_or_another_address_fails(internet: Internet, signed: bytes) -> None:
    tampered = signed.replace(b"this is signed", b"this is forged")
    result = scan(internet, tampered)  # SPF still passes and aligns: DMARC passes on it
    assert result.has("R_DKIM_REJECT", "R_SPF_ALLOW", "DMARC_POLICY_ALLOW_WITH_FAILURES"), result
    assert not result.has("R_DKIM_ALLOW")
    result = scan(internet, signed, ip="127.0.0.9")  # not example.test's MX; DKIM aligns
    assert result.has("R_DKIM_ALLOW", "R_SPF_FAIL", "DMARC_POLICY_ALLOW"), result
    result = scan(internet, tampered, ip="127.0.0.9")  # neither: p=reject applies
    assert result.has("R_DKIM_REJECT", "R_SPF_FAIL", "DMARC_POLICY_REJECT"), result


def test_gtube_is_rejected(internet: Internet) -> None:
    result = scan(internet, b"From: alice@example.test\r\nSubject: test\r\n\r\n" + GTUBE + b"\r\n")
    assert result.action == "reject" and result.has("GTUBE"), result


def test_mail_delivered_through_postfix_verifies(internet: Internet, signed: bytes) -> None:
    with smtplib.SMTP(POSTFIX_ADDRESS, 25, local_hostname=PYMAIL_HOSTNAME, timeout=10) as client:
        client.sendmail("alice@example.test", ["bob@remote.test"], signed)
    [raw] = internet.postfix.wait_for_messages("bob")
    result = internet.verify_delivered(raw)
    assert result.has(*AUTHENTICATED), result
