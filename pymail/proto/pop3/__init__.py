"""POP3 protocol machine, sans-IO (RFC 1939, RFC 2449, RFC 2595, RFC 5034).

The command reader (``reader.CommandReader``) with its one error type (``errors``), the
per-state command sets (``states``), the response encoder with the incremental
dot-stuffer for RETR/TOP (``responses``) and the session's view of the maildrop
(``maildrop``).  The asyncio glue and the store calls live in `pymail.net.pop3`.
"""

from pymail.proto.pop3 import responses
from pymail.proto.pop3.errors import CommandError
from pymail.proto.pop3.maildrop import Maildrop, MaildropEntry
from pymail.proto.pop3.reader import (
    CONNECTION_CLOSED, NEED_DATA, Command, CommandReader, SaslResponse, parse_command,
)
from pymail.proto.pop3.responses import DotStuffer, LineLimit
from pymail.proto.pop3.states import COMMANDS_BY_STATE, Pop3State, command_allowed

__all__ = [
    "CommandError", "Maildrop", "MaildropEntry", "CONNECTION_CLOSED", "NEED_DATA", "Command",
    "CommandReader", "SaslResponse", "parse_command", "DotStuffer", "LineLimit",
    "COMMANDS_BY_STATE", "Pop3State", "command_allowed", "responses",
]
