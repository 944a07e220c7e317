"""IMAP connection states and the commands allowed in each, as data.

RFC 3501 section 3 (states) and section 6 (commands by state), RFC 9051 sections 3 and
6, plus the extensions pymail will offer: ID (RFC 2971, any state), ENABLE (RFC 5161,
authenticated only), IDLE (RFC 2177), NAMESPACE (RFC 2342), QUOTA (RFC 9208), UNSELECT
(RFC 3691), MOVE (RFC 6851), UIDPLUS (RFC 4315).  Invariant: the session looks commands
up here; no per-state ``if`` chains elsewhere.  ``UID FETCH`` etc. are keyed by their
command name (``FETCH``) because ``Command.uid`` carries the prefix.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class ConnectionState(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


# RFC 3501 section 6.1: valid in any state.
ANY_STATE_COMMANDS = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "ID"})
# RFC 3501 section 6.2.
NOT_AUTHENTICATED_COMMANDS = ANY_STATE_COMMANDS | {"STARTTLS", "AUTHENTICATE", "LOGIN"}
# RFC 3501 section 6.3 (+ extensions valid once authenticated).
AUTHENTICATED_COMMANDS = ANY_STATE_COMMANDS | {
    "SELECT", "EXAMINE", "CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE",
    "LIST", "LSUB", "STATUS", "APPEND", "NAMESPACE", "ENABLE", "IDLE",
    "GETQUOTA", "GETQUOTAROOT",
}
# RFC 3501 section 6.4: the authenticated commands plus the per-mailbox ones.
SELECTED_COMMANDS = AUTHENTICATED_COMMANDS | {
    "CHECK", "CLOSE", "UNSELECT", "EXPUNGE", "SEARCH", "FETCH", "STORE", "COPY", "MOVE",
    "SORT", "THREAD",  # RFC 5256
}

COMMANDS_BY_STATE: Mapping[ConnectionState, frozenset[str]] = {
    ConnectionState.NOT_AUTHENTICATED: NOT_AUTHENTICATED_COMMANDS,
    ConnectionState.AUTHENTICATED: AUTHENTICATED_COMMANDS,
    ConnectionState.SELECTED: SELECTED_COMMANDS,
    ConnectionState.LOGOUT: frozenset(),
}

# Commands that take the UID prefix (RFC 3501 section 6.4.8, RFC 4315, RFC 6851).
UID_COMMANDS = frozenset({
    "COPY", "MOVE", "FETCH", "STORE", "SEARCH", "EXPUNGE", "SORT", "THREAD",  # RFC 5256
})

ALL_COMMANDS = frozenset().union(*COMMANDS_BY_STATE.values())


def command_allowed(state: ConnectionState, name: str) -> bool:
    """Whether command ``name`` (upper case, without ``UID``) may run in ``state``."""
    return name in COMMANDS_BY_STATE[state]
