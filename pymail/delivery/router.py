"""Recipient routing: where does mail for an envelope address go?

The router answers one question per RCPT TO, from the directory (the seed's `domains`,
`virtual_users`, `virtual_aliases`), the way Postfix's virtual alias and mailbox maps and
its transport map do.  The answer is data (`Resolution`): local users, remote
destinations (`NextHop`), or a refusal reason; what a client may do with it (the MX
never relays for strangers, submission does for its users) is the pipeline's decision
(pymail.delivery.pipeline).

1. The domain decides first: not in `domains` → `REMOTE` (the address is not ours: the
   outbound queue, for a client that may relay); `is_active = false` → refused.  A domain
   whose ``transport`` is ``smtp:``/``relay:`` (Postfix semantics, e.g.
   ``smtp:[10.0.0.5]:25``) is one we relay for: `RELAY_DOMAIN`, every address of it goes
   to that next hop, from anyone (Postfix's relay_domains).
2. Aliases are applied before mailboxes (Postfix `virtual_alias_maps` semantics): an
   address with alias rows goes to their destinations, recursively; a destination equal
   to the address itself means "also keep a copy in its own mailbox".  `@domain` is a
   catch-all used only when neither an alias nor a user exists for the exact address;
   a catch-all destination `@other.domain` keeps the local part (domain aliasing).
   A destination outside our domains (or in a relay domain) is a *forward*: the
   resolution is `LOCAL` with it in `forwards`.
3. A mailbox (`virtual_users` row) receives the mail if it is active.

Invariants:
* Expansion is bounded: at most `MAX_DEPTH` alias hops and `MAX_USERS` mailboxes (and
  as many forwards); a cycle is cut where it closes (each address expands once per
  lookup).  An expansion that reaches nothing because of a loop is reported as `LOOP`.
* The result lists each user once and each forward once, in first-reached order.
* A transport pymail does not speak (``uucp:``, ``error:``...) is `UNSUPPORTED_TRANSPORT`
  (a temporary refusal: a configuration to fix, not mail to lose).
* Directory failures propagate as `StorageError` (the caller answers 451).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from pymail.store.interfaces import Directory, User

MAX_DEPTH = 20
MAX_USERS = 1000

#: `domains.transport` values that mean "deliver to mailboxes here".  Postfix writes
#: `virtual:` for its virtual mailbox transport; Dovecot setups often say `lmtp:...`.
LOCAL_TRANSPORT_PREFIXES = ("virtual", "lmtp", "dovecot", "local")


class RecipientStatus(enum.Enum):
    LOCAL = "local"  #: delivered to `users` and/or forwarded to `forwards`
    REMOTE = "remote"  #: the domain is not ours: `nexthop` (its MX), for clients that may relay
    RELAY_DOMAIN = "relay_domain"  #: a domain we relay for: `nexthop` from its transport
    UNKNOWN_USER = "unknown_user"
    USER_DISABLED = "user_disabled"
    DOMAIN_DISABLED = "domain_disabled"
    LOOP = "alias_loop"
    UNSUPPORTED_TRANSPORT = "unsupported_transport"  #: `domains.transport` pymail cannot use


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where a remote address goes: `route` is ``mx`` (the MX of `domain`, RFC 5321
    section 5.1) or ``smtp:host:port`` (that host, no MX lookup: a transport
    ``smtp:[host]:port``).  `domain` is what the queue groups and limits by."""

    domain: str
    route: str = "mx"


@dataclass(frozen=True, slots=True)
class Forward:
    """An alias destination outside our mailboxes."""

    address: str
    nexthop: NextHop


@dataclass(slots=True)
class Resolution:
    status: RecipientStatus
    users: list[User] = field(default_factory=list)
    forwards: list[Forward] = field(default_factory=list)
    nexthop: NextHop | None = None  #: for REMOTE and RELAY_DOMAIN
    detail: str = ""  #: for the log, never for the client


def _split(address: str) -> tuple[str, str]:
    local, _, domain = address.rpartition("@")
    return local, domain.lower()


def is_local_transport(transport: str | None) -> bool:
    """Whether ``domains.transport`` means local delivery (``virtual:``, ``lmtp:``...,
    or unset); anything else relays the domain's mail onward."""
    return (transport or "virtual:").lower().startswith(LOCAL_TRANSPORT_PREFIXES)


_PORT = re.compile(r"^[0-9]{1,5}$")


def parse_transport(transport: str | None, domain: str) -> NextHop | None:
    """The next hop a non-local ``domains.transport`` names, Postfix's way (transport(5)):
    ``smtp:`` or ``relay:`` then ``[host]:port`` (that host, no MX lookup; port 25 when
    left out), ``host:port`` or ``host`` (the MX of host), or nothing (the MX of the
    domain itself).  None for a transport pymail does not speak."""
    name, _, nexthop = (transport or "").strip().partition(":")
    if name.lower() not in ("smtp", "relay"):
        return None
    nexthop = nexthop.strip()
    if not nexthop:
        return NextHop(domain)
    port = "25"
    if nexthop.startswith("["):
        host, sep, rest = nexthop[1:].partition("]")
        if not sep or not host:
            return None
        if rest:
            if not rest.startswith(":") or not _PORT.match(rest[1:]):
                return None
            port = rest[1:]
        if not 0 < int(port) < 65536:
            return None
        return NextHop(host.lower(), f"smtp:{host.lower()}:{int(port)}")
    host, _, port_text = nexthop.partition(":")
    if port_text and not _PORT.match(port_text):
        return None
    # "host:port" with an MX lookup has no route of its own in the queue: the MX of host
    return NextHop(host.lower()) if host else None


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
            return Resolution(RecipientStatus.REMOTE, nexthop=NextHop(domain_name))
        if not domain.is_active:
            return Resolution(RecipientStatus.DOMAIN_DISABLED)
        if not is_local_transport(domain.transport):
            nexthop = parse_transport(domain.transport, domain_name)
            if nexthop is None:
                return Resolution(RecipientStatus.UNSUPPORTED_TRANSPORT,
                                  detail=f"transport {domain.transport}")
            return Resolution(RecipientStatus.RELAY_DOMAIN, nexthop=nexthop,
                              detail=f"transport {domain.transport}")

        walk = _Walk()
        await self._expand(address, 0, walk)
        if walk.users or walk.forwards:
            return Resolution(RecipientStatus.LOCAL, list(walk.users.values()),
                              list(walk.forwards.values()))
        if walk.unsupported:
            return Resolution(RecipientStatus.UNSUPPORTED_TRANSPORT, detail=walk.unsupported[0])
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
                walk.forward(address, NextHop(domain_name))
                return
            if not domain.is_active:
                walk.disabled_domain.append(address)
                return
            if not is_local_transport(domain.transport):
                nexthop = parse_transport(domain.transport, domain_name)
                if nexthop is None:
                    walk.unsupported.append(f"{address}: transport {domain.transport}")
                else:
                    walk.forward(address, nexthop)
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
    forwards: dict[str, Forward] = field(default_factory=dict)
    disabled: list[str] = field(default_factory=list)
    disabled_domain: list[str] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    looped: bool = False

    def forward(self, address: str, nexthop: NextHop) -> None:
        if len(self.forwards) < MAX_USERS:
            self.forwards.setdefault(address, Forward(address, nexthop))
