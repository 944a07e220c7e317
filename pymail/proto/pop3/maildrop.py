"""The maildrop as one POP3 session sees it: message numbers, sizes, unique ids and the
deletion marks, sans-IO (RFC 1939 sections 5 and 6).

Invariants:
* The messages are fixed when the session enters the TRANSACTION state: message
  ``n`` is ``entries[n - 1]`` for the whole session, whatever other sessions deliver
  or expunge meanwhile (RFC 1939 section 5: "message-numbers ... are fixed").
* A message marked deleted (DELE) keeps its number but is named by no command any
  more; STAT and LIST without argument leave it out; RSET unmarks every message.
* Nothing here changes the store: the session removes `deleted_uids` in the UPDATE
  state (QUIT), and nothing if the connection ends any other way.
* A message number that names no message (0, past the end, or marked deleted) raises
  `CommandError` with a generic text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pymail.proto.pop3 import errors, responses
from pymail.proto.pop3.errors import CommandError


@dataclass(frozen=True, slots=True)
class MaildropEntry:
    """One message of the maildrop: its UID in the mailbox, its size in octets and an
    opaque key to read its bytes with (the blob key)."""

    uid: int
    size: int
    key: str


class Maildrop:
    """The session's fixed list of messages and its set of deletion marks.

    Fields: ``uidvalidity`` of the mailbox the messages came from; ``entries`` in UID
    order (message number = index + 1); ``deleted`` the marked message numbers."""

    def __init__(self, uidvalidity: int, entries: Sequence[MaildropEntry]) -> None:
        self.uidvalidity = uidvalidity
        self.entries: tuple[MaildropEntry, ...] = tuple(entries)
        self.deleted: set[int] = set()

    def message(self, number: int) -> MaildropEntry:
        """The message ``number`` names, or `CommandError`."""
        if not 1 <= number <= len(self.entries):
            raise CommandError(errors.TEXT_NO_SUCH_MESSAGE)
        if number in self.deleted:
            raise CommandError(errors.TEXT_ALREADY_DELETED)
        return self.entries[number - 1]

    def unique_id(self, number: int) -> str:
        return responses.unique_id(self.uidvalidity, self.message(number).uid)

    @property
    def count(self) -> int:
        """Messages not marked deleted (STAT)."""
        return len(self.entries) - len(self.deleted)

    @property
    def size(self) -> int:
        """Octets of the messages not marked deleted (STAT)."""
        return sum(e.size for n, e in enumerate(self.entries, 1) if n not in self.deleted)

    def listing(self) -> list[tuple[int, MaildropEntry]]:
        """(number, entry) of every message not marked deleted, ascending (LIST, UIDL)."""
        return [(n, e) for n, e in enumerate(self.entries, 1) if n not in self.deleted]

    def delete(self, number: int) -> None:
        """Mark a message deleted (DELE, RFC 1939 section 5)."""
        self.message(number)
        self.deleted.add(number)

    def reset(self) -> None:
        """Unmark every message (RSET)."""
        self.deleted.clear()

    def deleted_uids(self) -> list[int]:
        """UIDs of the marked messages, ascending (removed in the UPDATE state)."""
        return sorted(self.entries[n - 1].uid for n in self.deleted)
