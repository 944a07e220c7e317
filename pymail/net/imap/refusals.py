"""How an IMAP command handler says no, shared by the session and its command groups
(`session`, `mailboxes`, `fetch`).

Invariant: a handler raises `Refusal` (``<tag> NO [code] text``, or BAD) and the
session's dispatcher sends it as the command's one tagged response; `NO_REPLY` is what a
handler returns when it has sent its tagged response itself (STARTTLS).
"""

from __future__ import annotations

from pymail.proto.imap import responses as r


class Refusal(Exception):
    """A handler's refusal: ``<tag> NO [code] text`` (or ``BAD`` with `bad`)."""

    def __init__(self, text: str, code: r.ResponseCode | None = None, status: str = r.STATUS_NO) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status


def bad(text: str) -> Refusal:
    """``<tag> BAD text``: the client's command cannot be done as sent."""
    return Refusal(text, status=r.STATUS_BAD)


class _NoReplyType:
    """Returned by a handler that has already sent its tagged response."""


NO_REPLY = _NoReplyType()


class Logout(Exception):
    """The connection ends after the current command's response."""
