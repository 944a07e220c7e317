"""POP3 session states and the commands allowed in each, as data.

RFC 1939 section 3: a session goes AUTHORIZATION -> TRANSACTION -> UPDATE.  UPDATE is
entered only by QUIT in the TRANSACTION state, and lasts while the marked messages are
removed; no command is read in it.  Extensions: CAPA (RFC 2449 section 5, both states),
STLS (RFC 2595 section 4, AUTHORIZATION only), AUTH (RFC 5034 section 4, AUTHORIZATION
only), TOP and UIDL (RFC 1939 section 7, TRANSACTION only).

Invariant: the session looks commands up here; no per-state ``if`` chains elsewhere.
APOP is not offered (it needs the plaintext secret; pymail keeps password hashes) and is
an unknown command, as is anything not listed here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Pop3State(enum.Enum):
    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


# RFC 1939 section 4 (USER/PASS in section 7), RFC 2449, RFC 2595, RFC 5034.
AUTHORIZATION_COMMANDS = frozenset({"USER", "PASS", "AUTH", "CAPA", "STLS", "QUIT"})
# RFC 1939 sections 5 and 7, RFC 2449 (CAPA is valid in both states).
TRANSACTION_COMMANDS = frozenset({
    "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP", "UIDL", "CAPA",
})

COMMANDS_BY_STATE: Mapping[Pop3State, frozenset[str]] = {
    Pop3State.AUTHORIZATION: AUTHORIZATION_COMMANDS,
    Pop3State.TRANSACTION: TRANSACTION_COMMANDS,
    Pop3State.UPDATE: frozenset(),
}

ALL_COMMANDS = frozenset().union(*COMMANDS_BY_STATE.values())


def command_allowed(state: Pop3State, name: str) -> bool:
    """Whether command ``name`` (upper case) may run in ``state``."""
    return name in COMMANDS_BY_STATE[state]
