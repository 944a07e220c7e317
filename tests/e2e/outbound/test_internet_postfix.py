"""The test internet's remote MX (a private Postfix, tests/services/postfix.py) and DNS,
used the way the outbound tests use them: real SMTP to 127.0.0.2:25, found through the
tests' NSD, delivered into Maildirs the tests read; Postfix's own refusal texts; STARTTLS
verified against the private CA; an outage; smtp-sink for the benchmark."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl

import pytest

from pymail.dns import DnsResolver, addresses, mx_records
from tests.internet import (
    POSTFIX_ADDRESS,
    PYMAIL_HOSTNAME,
    Internet,
    as_sent,
    received_facts,
    require_test_network,
)
from tests.services.postfix import UNKNOWN_USER_REPLY, SmtpSink

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
           b"Subject: over the wire\r\nDate: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
           b"Message-ID: <wire-1@example.test>\r\n\r\nHello Bob.\r\n")


def connect(internet: Internet) -> smtplib.SMTP:
    client = smtplib.SMTP(timeout=10)
    client.connect(POSTFIX_ADDRESS, 25)
    client._host = internet.postfix.hostname  # type: ignore[attr-defined]  # name TLS checks
    client.ehlo(PYMAIL_HOSTNAME)
    return client


def test_the_remote_domain_resolves_to_postfix_on_port_25(internet: Internet) -> None:
    assert internet.nsd is not None
    resolver = DnsResolver(["127.0.0.1"], port=internet.nsd.port, timeout=3)

    async def lookup() -> tuple[str, list[str]]:
        mx = await mx_records(resolver, "remote.test")
        found, _ = await addresses(resolver, mx.records[0].host)
        return mx.records[0].host, found

    host, found = asyncio.run(lookup())
    assert (host, found) == ("mx.remote.test", [POSTFIX_ADDRESS])
    with socket.create_connection((found[0], 25), timeout=5) as sock:
        assert sock.recv(512).startswith(b"220 mx.remote.test ESMTP")


def test_a_message_lands_in_bobs_maildir_unchanged(internet: Internet) -> None:
    with connect(internet) as client:
        assert client.has_extn("starttls") and client.has_extn("dsn") and client.has_extn("smtputf8")
        assert client.sendmail("alice@example.test", ["bob@remote.test", "carol@remote.test"],
                               MESSAGE) == {}
    [raw] = internet.postfix.wait_for_messages("bob")
    assert internet.postfix.wait_for_messages("carol") and internet.postfix.messages("carol@dane.test") == []
    facts = received_facts(raw)
    assert (facts.ip, facts.helo, facts.mail_from, facts.rcpt, facts.tls) == (
        "127.0.0.1", PYMAIL_HOSTNAME, "alice@example.test", "bob@remote.test", False)
    # what the client sent, byte for byte (LF line ends in the Maildir), under one Received
    sent = as_sent(raw)
    assert sent.startswith(b"Received: from mail.example.test")
    assert sent.split(b"\n\n", 1)[1] == b"Hello Bob.\n"
    assert MESSAGE.replace(b"\r\n", b"\n").split(b"\n\n")[0] in sent


def test_unknown_users_and_other_domains_are_refused_with_postfixs_own_text(internet: Internet) -> None:
    with connect(internet) as client:
        client.mail("alice@example.test")
        code, text = client.rcpt("nobody@remote.test")
        assert f"{code} {text.decode()}" == UNKNOWN_USER_REPLY.format(address="nobody@remote.test")
        code, text = client.rcpt("someone@elsewhere.test")
        assert (code, text) == (554, b"5.7.1 <someone@elsewhere.test>: Relay access denied")
    internet.postfix.wait_for_log(r"NOQUEUE: reject: RCPT from .*550 5\.1\.1 <nobody@remote\.test>")


def test_starttls_is_verified_against_the_private_ca(internet: Internet) -> None:
    context = ssl.create_default_context(cafile=str(internet.postfix.ca_file))
    with connect(internet) as client:
        client.starttls(context=context)
        client.ehlo(PYMAIL_HOSTNAME)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
        client.sendmail("alice@example.test", ["bob@remote.test"], MESSAGE)
    [raw] = internet.postfix.wait_for_messages("bob")
    assert received_facts(raw).tls
    # a client that trusts only the system's CAs does not accept the certificate
    with connect(internet) as client, pytest.raises(ssl.SSLCertVerificationError):
        client.starttls(context=ssl.create_default_context())


def test_an_outage_refuses_connections_then_postfix_comes_back(internet: Internet) -> None:
    internet.postfix.stop_server()
    with pytest.raises(OSError):
        socket.create_connection((POSTFIX_ADDRESS, 25), timeout=2).close()
    internet.postfix.start_server()
    with connect(internet) as client:
        client.sendmail("alice@example.test", ["bob@remote.test"], MESSAGE)
    internet.postfix.wait_for_messages("bob")


def test_settings_change_postfix_and_reset_puts_them_back(internet: Internet) -> None:
    internet.postfix.configure(message_size_limit="2000")
    with connect(internet) as client:
        assert client.esmtp_features["size"] == "2000"
    internet.reset()
    with connect(internet) as client:
        assert client.esmtp_features["size"] == "10240000"


def test_smtp_sink_counts_what_it_swallows() -> None:
    require_test_network()
    sink = SmtpSink("127.0.0.3", 25).start()
    try:
        for n in range(3):
            with smtplib.SMTP("127.0.0.3", 25, timeout=10) as client:
                client.sendmail("a@example.test", ["x@sink.test", "y@sink.test"], MESSAGE)
        assert sink.wait_for_messages(3, timeout=10) == 3
    finally:
        sink.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.3", 25), timeout=2).close()
