"""The IMAP commands that make, rename, remove and list a user's mailboxes: CREATE,
DELETE, RENAME, SUBSCRIBE/UNSUBSCRIBE, LIST and LSUB (RFC 3501 sections 6.3.3-6.3.9,
RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE), as a part of
`ImapSession` (a mixin: the session provides ``store``, ``user_id``, ``selected``,
``rev2``, ``mailbox_limits``, ``_name``, ``send`` and ``_status_values``).

Invariants:

* Every mailbox a user gets through IMAP is made here (CREATE and its superiors,
  RENAME of INBOX), and within ``limits.mailboxes_per_user``,
  ``limits.mailbox_name_length`` and ``limits.mailbox_depth``
  (`pymail.proto.imap.names.MailboxLimits`): a command that would break one creates
  nothing and is answered ``NO [LIMIT]`` (RFC 5530 section 3).  A RENAME must keep the
  children it renames along within the limits too.  The count is checked against a
  listing read just before, so two CREATEs racing in two sessions may pass it by one
  each; nothing else can.
* LIST and LSUB match with `ListPattern` (no backtracking regex) and build the tree with
  `mailbox_tree`, linear in the names.  The per-name loop yields to the event loop after
  `YIELD_AFTER` characters' worth of names and the answer goes out in pieces of about
  `SEND_PIECE` octets, so a user with thousands of mailboxes (or long names from before
  the limits) never holds other clients up.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pymail.net.imap.refusals import Refusal, bad
from pymail.proto.imap import responses as r
from pymail.proto.imap.names import (
    DELIMITER, INBOX, MAX_LIST_PATTERNS, TEXT_TOO_MANY, ListPattern, canonical_pattern,
    mailbox_tree, name_over_limit, superiors,
)
from pymail.proto.imap.types import Command, List, Lsub, MailboxName, Rename
from pymail.store import AlreadyExists, Mailbox, NotFound

if TYPE_CHECKING:
    from pymail.net.imap.session import ImapSession

#: Work between two yields to the event loop in LIST and LSUB, in characters of names
#: matched (each name counts `NAME_COST` more): a few milliseconds of matching.
YIELD_AFTER = 16 * 1024
NAME_COST = 256
#: LIST/LSUB responses are sent once this many octets are ready.
SEND_PIECE = 64 * 1024

TEXT_NO_MAILBOX = "No such mailbox"
TEXT_EXISTS = "Mailbox exists"


class MailboxCommands:
    """CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB."""

    def _check_name_limits(self: ImapSession, name: str) -> None:
        text = name_over_limit(name, self.mailbox_limits)
        if text is not None:
            raise Refusal(text, r.LIMIT)

    async def cmd_create(self: ImapSession, command: Command):
        # RFC 3501 section 6.3.3: superior names are created as needed -- all of them
        # within the limits, or none.
        args = command.arguments
        assert isinstance(args, MailboxName)
        name = self._name(args.mailbox)
        if name == INBOX:
            raise Refusal(TEXT_EXISTS, r.ALREADYEXISTS)
        self._check_name_limits(name)
        index = self.store.index
        existing = {box.name for box in await index.list_mailboxes(self.user_id)}
        if name in existing:
            raise Refusal(TEXT_EXISTS, r.ALREADYEXISTS)
        missing = sorted((p for p in superiors([name]) if p not in existing), key=len)
        if len(existing) + len(missing) + 1 > self.mailbox_limits.count:
            raise Refusal(TEXT_TOO_MANY, r.LIMIT)
        for parent in missing:
            try:
                await index.create_mailbox(self.user_id, parent)
            except AlreadyExists:  # another session made it meanwhile
                pass
        try:
            await index.create_mailbox(self.user_id, name)
        except AlreadyExists:
            raise Refusal(TEXT_EXISTS, r.ALREADYEXISTS) from None
        return "CREATE completed"

    async def cmd_delete(self: ImapSession, command: Command):
        # RFC 3501 section 6.3.4.
        args = command.arguments
        assert isinstance(args, MailboxName)
        name = self._name(args.mailbox)
        if name == INBOX:
            raise Refusal("INBOX cannot be deleted", r.CANNOT)
        if self.selected is not None and self.selected.mailbox.name == name:
            raise Refusal("Mailbox is selected", r.INUSE)
        try:
            await self.store.index.delete_mailbox(self.user_id, name)
        except NotFound:
            raise Refusal(TEXT_NO_MAILBOX, r.NONEXISTENT) from None
        except ValueError:
            raise Refusal("Mailbox cannot be deleted", r.CANNOT) from None
        return "DELETE completed"

    async def cmd_rename(self: ImapSession, command: Command):
        # RFC 3501 section 6.3.5: the children are renamed along (and must stay within
        # the limits); renaming INBOX makes one more mailbox.
        args = command.arguments
        assert isinstance(args, Rename)
        old, new = self._name(args.mailbox), self._name(args.new_name)
        if new == INBOX:
            raise Refusal(TEXT_EXISTS, r.ALREADYEXISTS)
        self._check_name_limits(new)
        boxes = await self.store.index.list_mailboxes(self.user_id)
        if old == INBOX:
            if len(boxes) + 1 > self.mailbox_limits.count:
                raise Refusal(TEXT_TOO_MANY, r.LIMIT)
        else:
            prefix = old + DELIMITER
            for box in boxes:
                if box.name.startswith(prefix):
                    self._check_name_limits(new + box.name[len(old):])
        try:
            await self.store.index.rename_mailbox(self.user_id, old, new)
        except NotFound:
            raise Refusal(TEXT_NO_MAILBOX, r.NONEXISTENT) from None
        except AlreadyExists:
            raise Refusal(TEXT_EXISTS, r.ALREADYEXISTS) from None
        except ValueError:
            raise Refusal("Mailbox cannot be renamed", r.CANNOT) from None
        return "RENAME completed"

    async def cmd_subscribe(self: ImapSession, command: Command):
        # RFC 3501 sections 6.3.6 and 6.3.7.
        args = command.arguments
        assert isinstance(args, MailboxName)
        try:
            await self.store.index.set_subscribed(
                self.user_id, self._name(args.mailbox), command.name == "SUBSCRIBE")
        except NotFound:
            raise Refusal(TEXT_NO_MAILBOX, r.NONEXISTENT) from None
        return f"{command.name} completed"

    cmd_unsubscribe = cmd_subscribe

    @staticmethod
    def _patterns(reference: str, patterns: list[str] | tuple[str, ...]) -> list[ListPattern]:
        if len(patterns) > MAX_LIST_PATTERNS:
            raise bad("Too many patterns")
        # RFC 5258 section 3: "Any syntactically valid pattern that is not accepted by a
        # server for any reason MUST be treated as non-matching" -- a pattern that is
        # not valid modified UTF-7 (``&'+,-``, imaptest's atoms group) matches nothing.
        out = []
        for pattern in patterns:
            if not pattern:
                continue
            try:
                out.append(ListPattern(canonical_pattern(reference, pattern)))
            except ValueError:
                continue
        return out

    async def _flush(self: ImapSession, out: bytearray, *, force: bool = False) -> None:
        """Send what is ready once it is a piece's worth (or at the end)."""
        if out and (force or len(out) >= SEND_PIECE):
            await self.send(bytes(out))
            out.clear()

    async def cmd_list(self: ImapSession, command: Command):
        # RFC 3501 section 6.3.8; RFC 5258 LIST-EXTENDED selection options (SUBSCRIBED,
        # SPECIAL-USE, RECURSIVEMATCH) and return options (SUBSCRIBED, CHILDREN,
        # SPECIAL-USE, STATUS: RFC 5819 LIST-STATUS); RFC 6154 special-use attributes.
        args = command.arguments
        assert isinstance(args, List)
        select = set(args.selection_options)
        returns = set(args.return_options)
        select.discard("REMOTE")  # RFC 5258 section 3.1: no remote mailboxes here
        if len(args.patterns) == 1 and args.patterns[0] == "" and not args.extended:
            # the hierarchy delimiter and root (RFC 3501 section 6.3.8)
            await self.send(r.list_response(["\\Noselect"], DELIMITER, ""))
            return "LIST completed"
        patterns = self._patterns(args.reference, args.patterns)
        boxes = {b.name: b for b in await self.store.index.list_mailboxes(self.user_id)}
        subscriptions = {n for n, b in boxes.items() if b.subscribed}
        listed = set(boxes)
        if "SUBSCRIBED" in select:
            # RFC 5258 section 3.1: a subscribed name without a mailbox (DELETE keeps the
            # subscription, RFC 3501 section 6.3.4) is listed, \NonExistent
            subscriptions = set(await self.store.index.list_subscriptions(self.user_id))
            listed |= subscriptions
        tree = mailbox_tree(listed)

        def selected_by_options(name: str) -> bool:
            box = boxes.get(name)
            if "SUBSCRIBED" in select and name not in subscriptions:
                return False
            if "SPECIAL-USE" in select and (box is None or not box.special_use):
                return False
            return True

        # RFC 5258 section 3.5 (RECURSIVEMATCH): a name is also returned when one of its
        # descendants meets the selection criteria, with CHILDINFO naming them.
        child_info: set[str] = set()
        if "RECURSIVEMATCH" in select:
            child_info = superiors(n for n in listed if selected_by_options(n))
        out = bytearray()
        work = 0
        for entry in tree:
            name = entry.name
            work += len(name) + NAME_COST
            if work > YIELD_AFTER:
                work = 0
                await asyncio.sleep(0)  # other clients' turn
            if not any(p.matches(name) for p in patterns):
                continue
            box = boxes.get(name)
            meets = selected_by_options(name)
            if not meets and name not in child_info:
                continue
            subscribed = name in subscriptions
            attrs = ["\\HasChildren" if entry.has_children else "\\HasNoChildren"]
            if box is None:
                attrs.insert(0, "\\NonExistent" if args.extended or self.rev2 else "\\Noselect")
            elif box.special_use:
                attrs.append(box.special_use)
            if subscribed and ("SUBSCRIBED" in select or "SUBSCRIBED" in returns):
                attrs.append("\\Subscribed")
            extended: list[tuple[str, object]] = []
            if name in child_info:
                extended.append(("CHILDINFO", ["SUBSCRIBED"] if "SUBSCRIBED" in select else ["SPECIAL-USE"]))
            out += r.list_response(attrs, DELIMITER, name, extended=extended, utf8=self.rev2)
            if args.status_items and box is not None and meets:  # RFC 5819 section 2
                values = await self._status_values(box, args.status_items)
                out += r.status_response(name, values, utf8=self.rev2)
            await self._flush(out)
        await self._flush(out, force=True)
        return "LIST completed"

    async def cmd_lsub(self: ImapSession, command: Command):
        # RFC 3501 section 6.3.9.
        args = command.arguments
        assert isinstance(args, Lsub)
        patterns = self._patterns(args.reference, [args.pattern])
        boxes = {b.name: b for b in await self.store.index.list_mailboxes(self.user_id)}
        subscriptions = set(await self.store.index.list_subscriptions(self.user_id))
        # RFC 3501 section 6.3.9: a "%" match that is not subscribed itself but has
        # subscribed children is returned with \Noselect.
        with_subscribed_children = superiors(subscriptions)
        out = bytearray()
        work = 0
        for entry in mailbox_tree(set(boxes) | subscriptions):
            name = entry.name
            work += len(name) + NAME_COST
            if work > YIELD_AFTER:
                work = 0
                await asyncio.sleep(0)
            if not patterns or not patterns[0].matches(name):
                continue
            box = boxes.get(name)
            if name not in subscriptions:
                if "%" in args.pattern and name in with_subscribed_children:
                    out += r.list_response(["\\Noselect"], DELIMITER, name, command="LSUB",
                                           utf8=self.rev2)
                continue
            attrs = ["\\HasChildren" if entry.has_children else "\\HasNoChildren"]
            if box is None:  # subscribed, its mailbox deleted (RFC 3501 section 6.3.4)
                attrs.insert(0, "\\Noselect")
            elif box.special_use:
                attrs.append(box.special_use)
            out += r.list_response(attrs, DELIMITER, name, command="LSUB", utf8=self.rev2)
            await self._flush(out)
        await self._flush(out, force=True)
        return "LSUB completed"
