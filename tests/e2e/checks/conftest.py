"""The inbound-checks tests: pymail's MX with every check on, against the test internet
(tests/internet.py: NSD, Rspamd) and a private clamd, all on loopback.

Zones added for these tests (the sending side; 127.0.0.2 is the "remote" host whose PTR
mx.remote.test is forward-confirmed in the default zones):

===============  ================================================================
signed.test      SPF ``ip4:127.0.0.2 -all``, DKIM key ``sel1``, DMARC p=reject
quarantine.test  SPF ``ip4:127.0.0.2 -all``, DMARC p=quarantine
lists.trusted    a mailing list on 127.0.0.3 that ARC-seals (key ``arc``), a trusted
                 sealer (``checks.arc_trusted_sealers``); lists.other the same, untrusted
===============  ================================================================

`inbound` is one server per module (its config from `checks_config`), with user
bob@example.test; a test that stops a service starts it again before it ends.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dkim
import pytest

from tests.internet import Internet, dkim_record, make_dkim_key
from tests.pymail_harness import PymailServer

HOSTNAME = "mail.example.test"
RECIPIENT = "bob@example.test"
SENDER_IP = "127.0.0.2"  #: authorised by signed.test's SPF; PTR mx.remote.test
STRANGER_IP = "127.0.0.9"  #: authorised by nobody, no PTR
LIST_IP = "127.0.0.3"  #: the mailing lists' host


@dataclass
class Inbound:
    server: PymailServer
    internet: Internet
    key_pem: bytes  #: signed.test's DKIM key (selector sel1)

    def sign(self, raw: bytes, domain: str = "signed.test") -> bytes:
        signature = dkim.sign(raw, b"sel1", domain.encode(), self.key_pem,
                              include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
        return signature + raw

    def seal(self, raw: bytes, sealer: str) -> bytes:
        """What a mailing list at `sealer` does: it checked the original (its own A-R
        says DMARC passed), changed the message (a footer: the author's DKIM signature
        breaks) and sealed it (RFC 8617 section 5.1), with an independent sealer,
        dkimpy's arc_sign."""
        footer = raw + b"--\r\nThe list footer\r\n"
        results = (f"Authentication-Results: {sealer}; dkim=pass header.d=signed.test; "
                   "spf=pass smtp.mailfrom=alice@signed.test; dmarc=pass header.from=signed.test\r\n")
        with_ar = results.encode() + footer
        arc_set = dkim.arc_sign(with_ar, b"arc", sealer.encode(), self.key_pem, sealer.encode())
        return b"".join(arc_set) + with_ar

    def send(self, raw: bytes, *, sender: str = "alice@signed.test", source: str = SENDER_IP,
             helo: str = "mx.remote.test") -> tuple[int, str]:
        """(code, text) of the reply to the end of DATA."""
        with smtplib.SMTP("127.0.0.1", self.server.port, local_hostname=helo, timeout=60,
                          source_address=(source, 0)) as client:
            client.ehlo(helo)
            code, text = client.mail(sender)
            assert code == 250, text
            code, text = client.rcpt(RECIPIENT)
            assert code == 250, text
            code, text = client.data(raw)
            return code, text.decode()

    def mailbox(self, name: str = "INBOX") -> list[bytes]:
        return [raw for _, raw, _ in self.server.inbox(RECIPIENT, name)]


def message(subject: str, body: str = "Hello Bob,\r\nsee you tomorrow.\r\n", *,
            sender: str = "alice@signed.test", extra: str = "") -> bytes:
    return (f"From: Alice <{sender}>\r\nTo: {RECIPIENT}\r\nSubject: {subject}\r\n"
            f"Date: Wed, 02 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{abs(hash(subject))}@test>\r\n"
            f"{extra}MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n{body}").encode()


def sender_zones(public_key: str) -> dict[str, str]:
    return {
        "signed.test": f"""
@ MX 10 mx
mx A {SENDER_IP}
@ TXT "v=spf1 ip4:{SENDER_IP} -all"
{dkim_record("sel1", public_key)}
_dmarc TXT "v=DMARC1; p=reject"
""",
        "quarantine.test": f"""
@ MX 10 mx
mx A {SENDER_IP}
@ TXT "v=spf1 ip4:{SENDER_IP} -all"
_dmarc TXT "v=DMARC1; p=quarantine"
""",
        **{origin: f"""
@ TXT "v=spf1 ip4:{LIST_IP} -all"
{dkim_record("arc", public_key)}
""" for origin in ("lists.trusted.test", "lists.other.test")},
    }


def checks_config(internet: Internet, clamd_socket: str, extra: str = "") -> str:
    return internet.dns_config() + f"""
[checks]
rspamd_url = "{internet.rspamd.url}"
clamav = "{clamd_socket}"
timeout = "12s"
arc_trusted_sealers = ["lists.trusted.test"]
rspamd_timeout = "8s"
clamav_timeout = "4s"
{extra}
"""


@pytest.fixture(scope="module")
def inbound(internet_session: Internet, clamd_service, tmp_path_factory) -> Iterator[Inbound]:
    pem, public = make_dkim_key(2048)
    for origin, records in sender_zones(public).items():
        internet_session.set_zone(origin, records)
    workdir: Path = tmp_path_factory.mktemp("inbound")
    server = PymailServer(workdir, hostname=HOSTNAME, http=True,
                          extra_config=checks_config(internet_session, clamd_service.socket_path))
    server.add_user(RECIPIENT)
    server.start()
    try:
        yield Inbound(server, internet_session, pem)
    finally:
        server.stop()
        internet_session.reset()
