"""Recipient routing: which local users does mail for an envelope address reach?

The router answers one question per RCPT TO, from the directory (the seed's `domains`,
`virtual_users`, `virtual_aliases`), the way Postfix's virtual alias and mailbox maps do:

1. The domain decides first: not in `domains` → the address is not ours (the SMTP layer
   refuses it as relaying unless the client may relay); `is_active = false` → refused.
2. Aliases are applied before mailboxes (Postfix `virtual_alias_maps` semantics): an
   address with alias rows goes to their destinations, recursively; a destination equal
   to the address itself means "also keep a copy in its own mailbox".  `@domain` is a
   catch-all used only when neither an alias nor a user exists for the exact address;
   a catch-all destination `@other.domain` keeps the local part (domain aliasing).
3. A mailbox (`virtual_users` row) receives the mail if it is active.

Invariants:
* Expansion is bounded: at most `MAX_DEPTH` alias hops and `MAX_USERS` mailboxes; a
  cycle is cut where it closes (each address expands once per lookup).  An expansion that
  reaches no mailbox because of a loop is reported as `LOOP`.
* The result lists each user once, in first-reached order.
* A destination outside our domains is reported as `FORWARD_UNAVAILABLE`: pymail has no
  outbound queue yet, and accepting such mail would lose the remote copy.
* Directory failures propagate as `StorageError` (the caller answers 451).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pymail.store.interfaces import Directory, User

MAX_DEPTH = 20
MAX_USERS = 1000

#: `domains.transport` values that mean "deliver to mailboxes here".  Postfix writes
#: `virtual:` for its virtual mailbox transport; Dovecot setups often say `lmtp:...`.
LOCAL_TRANSPORT_PREFIXES = ("virtual", "lmtp", "dovecot", "local")


class RecipientStatus(enum.Enum):
    LOCAL = "local"  #: delivered to `users`
    NOT_LOCAL = "not_local"  #: the domain is not ours
    UNKNOWN_USER = "unknown_user"
    USER_DISABLED = "user_disabled"
    DOMAIN_DISABLED = "domain_disabled"
    LOOP = "alias_loop"
    FORWARD_UNAVAILABLE = "forward_unavailable"  #: an alias points outside, or a relay transport


@dataclass(slots=True)
class Resolution:
    status: RecipientStatus
    users: list[User] = field(default_factory=list)
    detail: str = ""  #: for the log, never for the client


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


def _is_local_transport(transport: str | None) -> bool:
    return (transport or "virtual:").lower().startswith(LOCAL_TRANSPORT_PREFIXES)


class Router:
    """Resolves envelope recipients against a `Directory`."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory

    async def resolve(self, address: str) -> Resolution:
        """Route one canonical `local@domain` address (see the module docstring)."""
        address = address.lower()
        _, domain_name = _split(address)
        domain = await self.directory.get_domain(domain_name)
        if domain is None:
            return Resolution(RecipientStatus.NOT_LOCAL)
        if not domain.is_active:
            return Resolution(RecipientStatus.DOMAIN_DISABLED)
        if not _is_local_transport(domain.transport):
            return Resolution(
                RecipientStatus.FORWARD_UNAVAILABLE, detail=f"transport {domain.transport}"
            )

        walk = _Walk()
        await self._expand(address, 0, walk)
        if walk.remote:
            return Resolution(
                RecipientStatus.FORWARD_UNAVAILABLE, detail=f"alias to {walk.remote[0]}"
            )
        if walk.users:
            return Resolution(RecipientStatus.LOCAL, list(walk.users.values()))
        if walk.looped:
            return Resolution(RecipientStatus.LOOP, detail="alias loop")
        if walk.disabled:
            return Resolution(RecipientStatus.USER_DISABLED, detail=walk.disabled[0])
        if walk.disabled_domain:
            return Resolution(RecipientStatus.DOMAIN_DISABLED, detail=walk.disabled_domain[0])
        return Resolution(RecipientStatus.UNKNOWN_USER)

    async def _expand(self, address: str, depth: int, walk: "_Walk") -> None:
        if address in walk.seen or depth > MAX_DEPTH:
            walk.looped = True
            return
        walk.seen.add(address)
        local, domain_name = _split(address)
        if depth > 0:
            domain = await self.directory.get_domain(domain_name)
            if domain is None:
                walk.remote.append(address)
                return
            if not domain.is_active:
                walk.disabled_domain.append(address)
                return
            if not _is_local_transport(domain.transport):
                walk.remote.append(address)
                return

        destinations = await self.directory.get_alias_destinations(address)
        if destinations:
            for destination in destinations:
                destination = destination.strip().lower()
                if destination == address:
                    await self._mailbox(address, walk)
                else:
                    await self._expand(destination, depth + 1, walk)
            return
        if await self._mailbox(address, walk):
            return
        for destination in await self.directory.get_alias_destinations(f"@{domain_name}"):
            destination = destination.strip().lower()
            if destination.startswith("@"):
                destination = f"{local}{destination}"
            await self._expand(destination, depth + 1, walk)

    async def _mailbox(self, address: str, walk: "_Walk") -> bool:
        """Add the user owning `address`; False if there is none."""
        user = await self.directory.get_user(address)
        if user is None:
            return False
        if not user.is_active:
            walk.disabled.append(address)
        elif len(walk.users) < MAX_USERS:
            walk.users.setdefault(user.id, user)
        return True


@dataclass(slots=True)
class _Walk:
    """State of one expansion."""

    seen: set[str] = field(default_factory=set)
    users: dict[int, User] = field(default_factory=dict)
    remote: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    disabled_domain: list[str] = field(default_factory=list)
    looped: bool = False
