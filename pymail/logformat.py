"""Log line formats for ``[server] log_format``: "text" and "json".

Every event is one line on stderr.  The text form is what journald and fail2ban read
(``2026-12-03T10:00:00+0000 INFO pymail.net.mx[123]: 4Xa...: accept rip=... reply="250 ..."``).
The JSON form carries the same facts for log shippers, one object per line:

    {"time": "...", "level": "INFO", "logger": "pymail.net.mx", "pid": 123,
     "message": "<the text line's message, unchanged>",
     "fields": {"rip": "192.0.2.1", "from": "<a@example.org>", "reply": "250 2.0.0 ..."}}

``fields`` are the message's ``key=value`` / ``key="quoted value"`` tokens (the form
every pymail event line uses), so a shipper can index ``rip`` without a parser of its
own; ``message`` stays whole, so nothing is lost when a value does not fit that form.
A traceback, if any, is the string field ``exception``.

Invariants: a record always becomes exactly one line (json.dumps escapes newlines);
formatting never raises for odd messages (non-str arguments, bad % formats are
rendered by `logging.Formatter` as usual).
"""

from __future__ import annotations

import json
import logging
import re
import sys

__all__ = ["JsonFormatter", "TEXT_FORMAT", "message_fields", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

# key=value or key="value with spaces" (a quoted value may hold \" escapes).
_FIELD = re.compile(r'(?:^|\s)([A-Za-z_][A-Za-z0-9_.-]*)=("(?:[^"\\]|\\.)*"|\S*)')


def message_fields(message: str) -> dict[str, str]:
    """The ``key=value`` tokens of a log message; quoted values unquoted.  A key seen
    twice keeps its first value."""
    fields: dict[str, str] = {}
    for match in _FIELD.finditer(message):
        key, value = match.group(1), match.group(2)
        if len(value) >= 2 and value.startswith('"') and value.endswith('"'):
            value = re.sub(r'\\(.)', r'\1', value[1:-1])
        fields.setdefault(key, value)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, pid, message, fields[, exception]."""

    def __init__(self) -> None:
        super().__init__(datefmt=DATE_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": self.formatTime(record, self.datefmt),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": message,
        }
        fields = message_fields(message)
        if fields:
            entry["fields"] = fields
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str, log_format: str = "text") -> None:
    """One line per event on stderr (journald adds its own timestamps and unit name)."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, datefmt=DATE_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler], force=True)
    # aiosmtpd logs every command at INFO; its lines are debugging material.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
