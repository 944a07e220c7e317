"""The doctor's pure parts: the score from named deductions, the text and JSON forms,
SpamAssassin's X-Spam-Status parsed, the relay vectors and where wildcards are probed."""

from __future__ import annotations

import json

from pymail.ops.doctor.message import _spamassassin_score, doctor_message
from pymail.ops.doctor.probe import probe_address
from pymail.ops.doctor.relay import relay_vectors
from pymail.ops.doctor.report import Report


def test_score_is_ten_minus_named_deductions() -> None:
    report = Report("mail.example.com")
    report.add("host", "reverse DNS of 192.0.2.1", "fail", "no PTR record", "ask your ISP", 1.0)
    report.add("deliverability", "DMARC", "warn", "no DMARC record", "publish it", 0.5)
    report.add("listeners", "imaps login", "skip", "no test account given")
    report.add("dns", "MX example.com", "ok", "mail.example.com is an exchange")
    assert report.score == 8.5
    text = report.text()
    assert "  ✗ reverse DNS of 192.0.2.1: no PTR record  (-1)\n      fix: ask your ISP\n" in text
    assert "  – imaps login: no test account given\n" in text
    assert "Score: 8.5/10\n  -1  reverse DNS of 192.0.2.1\n  -0.5  DMARC\n" in text
    assert text.endswith("1 required check(s) failed, 1 warning(s): reverse DNS of 192.0.2.1\n")
    data = json.loads(report.json())
    assert data["ok"] is False and data["score"] == 8.5
    assert [c["failed"] for c in data["checks"]] == [True, False, False, False]


def test_score_floors_at_zero() -> None:
    report = Report("h.example")
    report.add("relay", "open relay probe", "fail", "OPEN RELAY", "", 10.0)
    report.add("deliverability", "SPF", "fail", "fail", "", 2.5)
    assert report.score == 0.0


def test_spamassassin_status_parsed() -> None:
    out = (b"Received: x\nX-Spam-Status: No, score=1.3 required=5.0 tests=DKIM_SIGNED,\n"
           b"\tDKIM_VALID,NO_RELAYS autolearn=ham autolearn_force=no version=4.0.0\n\nbody\n")
    assert _spamassassin_score(out) == (1.3, "DKIM_SIGNED, DKIM_VALID, NO_RELAYS")
    assert _spamassassin_score(b"Subject: x\n\nno status\n") is None


def test_relay_vectors_and_probe_addresses() -> None:
    vectors = dict(relay_vectors("example.com", "127.0.0.1"))
    assert vectors["the %-hack"] == "pymail-doctor-relay-test%relay-probe.pymail.invalid@example.com"
    assert vectors["a source route"] == "@example.com:pymail-doctor-relay-test@relay-probe.pymail.invalid"
    assert vectors["an address literal"] == "pymail-doctor-relay-test@[127.0.0.1]"
    assert len(vectors) == 6
    assert probe_address("0.0.0.0") == "127.0.0.1" and probe_address("::") == "::1"
    assert probe_address("192.0.2.7") == "192.0.2.7"


def test_message_is_well_formed() -> None:
    raw = doctor_message("postmaster@example.com", "mail.example.com", now=0)
    head, _, body = raw.partition(b"\r\n\r\n")
    names = [line.split(b":")[0] for line in head.split(b"\r\n")]
    assert names == [b"From", b"To", b"Subject", b"Date", b"Message-ID", b"MIME-Version",
                     b"Content-Type", b"Content-Transfer-Encoding"]
    assert b"Thu, 01 Jan 1970 00:00:00 -0000" in head and body.endswith(b"\r\n")
