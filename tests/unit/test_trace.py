"""Trace headers: format, and no header injection through client-supplied text."""

from __future__ import annotations

import datetime as dt

from pymail.mail import trace

WHEN = dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.timezone.utc)


def test_received_single_recipient() -> None:
    header = trace.received(
        helo="mx.remote.example", client_ip="203.0.113.5", client_name=None, by_host="mx.example.test",
        protocol="ESMTP", queue_id="ABCDEF0123", recipient="alice@example.test", when=WHEN,
    )
    assert header == (
        b"Received: from mx.remote.example (unknown [203.0.113.5])\r\n"
        b"\tby mx.example.test (pymail) with ESMTP id ABCDEF0123\r\n"
        b"\tfor <alice@example.test>; Fri, 27 Nov 2026 12:00:00 +0000\r\n"
    )


def test_received_ipv6_and_several_recipients() -> None:
    header = trace.received(
        helo="h", client_ip="2001:db8::1", client_name="h.example", by_host="mx", protocol="ESMTPS",
        queue_id="Q", recipient=None, when=WHEN,
    )
    assert b"(h.example [IPv6:2001:db8::1])" in header
    assert b"\tby mx (pymail) with ESMTPS id Q; Fri, 27 Nov 2026" in header
    assert b"for <" not in header


def test_no_header_injection() -> None:
    header = trace.received(
        helo="evil\r\nBcc: victim@example.test", client_ip="192.0.2.1", client_name=None,
        by_host="mx", protocol="SMTP", queue_id="Q", recipient="a\r\nX: y@example.test", when=WHEN,
    )
    assert header.count(b"\r\n") == 3 and b"\n" not in header.replace(b"\r\n", b"")
    assert trace.return_path("a\r\nX-Injected: 1") == b"Return-Path: <a??X-Injected: 1>\r\n"


def test_protocol_keywords() -> None:
    kw = trace.protocol_keyword
    assert kw(esmtp=False, tls=False, authenticated=False, smtputf8=False) == "SMTP"
    assert kw(esmtp=True, tls=False, authenticated=False, smtputf8=False) == "ESMTP"
    assert kw(esmtp=True, tls=True, authenticated=True, smtputf8=False) == "ESMTPSA"
    assert kw(esmtp=True, tls=True, authenticated=False, smtputf8=True) == "UTF8SMTPS"
    assert trace.return_path("") == b"Return-Path: <>\r\n"
