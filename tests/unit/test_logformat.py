"""`[server] log_format = "json"`: one JSON object per record with the text line's facts."""

from __future__ import annotations

import json
import logging
import sys

from pymail.logformat import JsonFormatter, message_fields


def record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("pymail.net.mx", logging.INFO, __file__, 1, message, args, exc_info)


def test_fields_of_an_smtp_transaction_line() -> None:
    line = ('4XaB: accept rip=192.0.2.1 helo=<client.example> from=<a@example.org> '
            'to=<b@example.test> size=1234 reply="250 2.0.0 Ok: queued as 4XaB"')
    assert message_fields(line) == {
        "rip": "192.0.2.1", "helo": "<client.example>", "from": "<a@example.org>",
        "to": "<b@example.test>", "size": "1234", "reply": "250 2.0.0 Ok: queued as 4XaB",
    }


def test_quoted_values_unescaped_and_first_value_kept() -> None:
    assert message_fields('reason="say \\"hi\\"" x=1 x=2 plain words') == {"reason": 'say "hi"', "x": "1"}
    assert message_fields("no fields here") == {}


def test_one_line_with_the_same_message_and_the_traceback() -> None:
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        rec = record("lost %s rip=%s", "x", "203.0.113.9", exc_info=sys.exc_info())
    text = JsonFormatter().format(rec)
    assert "\n" not in text
    entry = json.loads(text)
    assert entry["message"] == "lost x rip=203.0.113.9"
    assert entry["level"] == "INFO" and entry["logger"] == "pymail.net.mx"
    assert entry["fields"] == {"rip": "203.0.113.9"}
    assert "ValueError: boom" in entry["exception"]
    assert isinstance(entry["pid"], int) and entry["time"][:2] == "20"
