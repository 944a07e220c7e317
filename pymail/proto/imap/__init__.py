"""IMAP4rev1/rev2 protocol machine, sans-IO (RFC 3501, RFC 9051).

Today this package holds the command reader (``reader.CommandReader``: lines, literals
and their limits) and the command grammar (``parser``), the two error types
(``errors``), the typed command arguments (``types``) and the per-state command sets
(``states``), the response encoder (``responses``), the FETCH answers computed from the
stored message structure (``bodystructure``, ``sections``), mailbox names (``names``)
and the streamed SEARCH text (``search``).  The session state machine comes next.
"""

from pymail.proto.imap import bodystructure, responses
from pymail.proto.imap.errors import BadCommand, FatalProtocolError
from pymail.proto.imap.reader import (
    CONNECTION_CLOSED,
    NEED_DATA,
    CommandReader,
    ContinuationLine,
    IdleDone,
    LiteralData,
    NeedContinuation,
)
from pymail.proto.imap.states import COMMANDS_BY_STATE, ConnectionState, command_allowed
from pymail.proto.imap.types import Command, SequenceSet

__all__ = [
    "BadCommand", "FatalProtocolError", "CONNECTION_CLOSED", "NEED_DATA", "CommandReader",
    "ContinuationLine", "IdleDone", "LiteralData", "NeedContinuation", "COMMANDS_BY_STATE",
    "ConnectionState", "command_allowed", "Command", "SequenceSet", "bodystructure", "responses",
]
