"""A real `pymail serve` with ``log_format = "json"``: every stderr line is one JSON
object, and an SMTP transaction's line carries its fields (rip, from, to, reply)."""

from __future__ import annotations

import json
import smtplib

from tests.pymail_harness import PymailServer


def test_every_line_is_json_with_the_transaction_fields(tmp_path) -> None:
    server = PymailServer(tmp_path, server_config='log_format = "json"', loop_watchdog=None)
    server.start()
    try:
        server.add_user("alice@example.test")
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
            client.ehlo("client.remote.example")
            client.sendmail("carol@remote.example", ["alice@example.test"],
                            b"From: carol@remote.example\r\nSubject: hi\r\n\r\nhello\r\n")
    finally:
        assert server.stop() == 0
    lines = [line for line in server.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # each line parses on its own
    accepted = [e for e in entries if e.get("fields", {}).get("to") == "<alice@example.test>"
                and e["fields"].get("reply", "").startswith("250")]
    assert accepted, lines
    fields = accepted[0]["fields"]
    assert fields["rip"] == "127.0.0.1" and fields["from"] == "<carol@remote.example>"
    assert accepted[0]["logger"].startswith("pymail.")
