"""Failed-login counting and client-address bans: fail2ban's job, inside pymail.

`Jail` keeps its state in the index (`pymail.store.BanStore`), so every worker process
and every node sharing the index counts the same failures and refuses the same
addresses; it needs neither root nor a firewall.  (`contrib/fail2ban/` has a filter for
operators who also want firewall bans from pymail's log lines.)

Policy (config section ``[auth.ban]``; the seed: 5 failures -> 30 minutes):

* **Per client address**: `max_failures` failed logins within `find_time` ban the
  address for `ban_time`.  A ban uses up the failures that earned it, so after it ends
  the address starts from zero.  IPv4 addresses are banned one by one; IPv6 by /64 (one
  customer's network: an attacker gets billions of addresses in it, a household one
  /64).  IPv4-mapped IPv6 (``::ffff:192.0.2.1``) counts as the IPv4 address.
  `ignore_ips` are never banned (their failures still count for the account).
* **Per account** (the login name, lower case, from any address): from
  `account_max_failures` failures within `find_time` on, every login for that account
  waits `account_delay` before it is checked (`throttle`), success or not, so the delay
  tells nothing about the password.  It slows a distributed guesser down and never locks
  the real user out: a hard account lockout would let anyone lock anyone out.
* A successful login clears nothing: the address's earlier failures (maybe for other
  accounts) keep counting, so one valid account cannot launder a guessing run.
* Bans are logged as one line each (fail2ban-friendly, never matched by pymail's own
  failure filter):
  ``ban: rip=192.0.2.7 failures=5 until=2026-03-02T10:30:00Z reason=authentication service=imap``
  and their end as ``unban: rip=192.0.2.7 reason=expired`` (by the first process that
  prunes it, within `PRUNE_INTERVAL` of activity) or ``reason=manual``
  (`pymail ban remove`).

Invariants:

* `is_banned` is called for every connection: a process remembers the answer for an
  address for `CACHE_SECONDS` (at most `CACHE_ENTRIES` addresses), so a ban made by
  another process or node, or lifted with `pymail ban remove`, takes effect here within
  `CACHE_SECONDS`.  A ban this process makes is effective here at once.
* When the index cannot answer, `is_banned` says False (fail open: a database outage
  must not refuse every client; logins fail anyway while it lasts), answers from what
  it remembers without asking for `CACHE_SECONDS` (so connections do not each wait for
  a dead database), and `record_failure` logs and carries on: the login's own answer
  never depends on the ban store.
* Times come from the injected `clock` (UTC, timezone-aware) and `monotonic`; delays use
  the injected `sleep`, so tests drive time instead of waiting.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from pymail.store.interfaces import Ban, BanStore, StorageError

__all__ = ["BanPolicy", "Jail", "ban_key"]

log = logging.getLogger("pymail.auth.ban")

#: Seconds a process trusts what it last read about an address (the staleness bound).
CACHE_SECONDS = 5.0
#: Addresses (and throttled accounts) a process remembers at most.
CACHE_ENTRIES = 10_000
#: Seconds between two prunes of old failures and ended bans by one process.
PRUNE_INTERVAL = 60.0
#: Prefix length an IPv6 address is counted and banned by.
IPV6_PREFIX = 64
#: Longest account name stored (the rest is cut).
MAX_ACCOUNT_LENGTH = 255

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _utcnow() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def ban_key(ip: str) -> str | None:
    """What an address is counted and banned as: the IPv4 address, or the IPv6 /64
    network (``2001:db8:1:2::/64``); None for something that is not an IP address (a
    unix socket peer): it is never banned."""
    try:
        address = ipaddress.ip_address(ip.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_PREFIX), strict=False))
    return str(address)


def _iso(moment: _dt.datetime) -> str:
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class BanPolicy:
    """The numbers of ``[auth.ban]`` (seconds for times)."""

    enabled: bool = True
    max_failures: int = 5
    find_time: float = 600.0
    ban_time: float = 1800.0
    ignore_networks: tuple[Network, ...] = ()
    account_max_failures: int = 10
    account_delay: float = 2.0

    @classmethod
    def from_networks(cls, networks: Iterable[str], **numbers: object) -> "BanPolicy":
        """A policy with `ignore_networks` parsed from strings ("10.0.0.0/8", "::1")."""
        parsed = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        return cls(ignore_networks=parsed, **numbers)  # type: ignore[arg-type]


@dataclass(slots=True)
class _Seen:
    checked: float  #: monotonic time of the lookup
    until: _dt.datetime | None  #: end of the ban found, None if none


class Jail:
    """Counts failed logins and bans addresses (see the module docstring)."""

    def __init__(
        self,
        store: BanStore | None,
        policy: BanPolicy,
        *,
        clock: Callable[[], _dt.datetime] = _utcnow,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    ) -> None:
        self.store = store
        self.policy = policy
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._seen: dict[str, _Seen] = {}
        #: account -> monotonic time until which its logins are throttled
        self._throttled: dict[str, float] = {}
        self._last_prune = float("-inf")
        self._last_outage_log = float("-inf")
        #: monotonic time until which lookups are skipped after the index failed
        self._skip_lookups_until = float("-inf")

    @property
    def active(self) -> bool:
        return self.policy.enabled and self.store is not None

    def is_ignored(self, ip: str) -> bool:
        """Whether `ip` is in `ignore_ips` (never banned)."""
        try:
            address = ipaddress.ip_address(ip.strip().split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.policy.ignore_networks)

    # -- at connect ------------------------------------------------------------------

    async def is_banned(self, ip: str) -> bool:
        """Whether connections and logins from `ip` are refused now (cached for
        `CACHE_SECONDS`; False when the index cannot answer)."""
        if not self.active:
            return False
        key = ban_key(ip)
        if key is None or self.is_ignored(ip):
            return False
        now = self._clock()
        now_m = self._monotonic()
        seen = self._seen.get(key)
        if seen is not None and (now_m - seen.checked < CACHE_SECONDS
                                 or now_m < self._skip_lookups_until):
            return seen.until is not None and seen.until > now
        if now_m < self._skip_lookups_until:
            return False
        assert self.store is not None
        try:
            ban = await self.store.get_ban(key, now)
        except StorageError as exc:
            # Do not make every new connection wait for a database that is down.
            self._skip_lookups_until = self._monotonic() + CACHE_SECONDS
            self._outage("ban lookup", exc)
            return False
        self._remember(key, ban.until if ban else None)
        await self._maybe_prune()
        return ban is not None

    # -- after a login ---------------------------------------------------------------

    async def throttle(self, account: str) -> None:
        """Wait `account_delay` if `account` has failed too often lately (call it before
        checking the password, for every login)."""
        if not self.active or self.policy.account_delay <= 0:
            return
        until = self._throttled.get(_account(account))
        if until is None:
            return
        if self._monotonic() >= until:
            self._throttled.pop(_account(account), None)
            return
        await self._sleep(self.policy.account_delay)

    async def record_failure(self, ip: str, account: str, *, service: str) -> Ban | None:
        """Count one failed login of `account` from `ip`; the ban it caused, if any."""
        if not self.active:
            return None
        assert self.store is not None
        policy = self.policy
        key = ban_key(ip)
        name = _account(account)
        now = self._clock()
        since = now - _dt.timedelta(seconds=policy.find_time)
        try:
            counts = await self.store.record_failure(key or "", name, now, since)
        except StorageError as exc:
            self._outage("recording a failed login", exc)
            return None
        if policy.account_max_failures and counts.account >= policy.account_max_failures:
            if name not in self._throttled:
                log.warning(
                    "throttle: user=<%s> failures=%d delay=%gs", _printable(name),
                    counts.account, policy.account_delay,
                )
            self._bounded(self._throttled)
            self._throttled[name] = self._monotonic() + policy.find_time
        ban = None
        if key is not None and not self.is_ignored(ip) and counts.ip >= policy.max_failures:
            try:
                ban = await self.store.ban(
                    key, now + _dt.timedelta(seconds=policy.ban_time),
                    failures=counts.ip, reason="authentication", now=now,
                )
            except StorageError as exc:
                self._outage("banning an address", exc)
                return None
            self._remember(key, ban.until)
            log.warning(
                "ban: rip=%s failures=%d until=%s reason=%s service=%s",
                key, ban.failures, _iso(ban.until), ban.reason, service,
            )
        await self._maybe_prune()
        return ban

    # -- administration (pymail ban ...) --------------------------------------------------

    async def list_bans(self) -> list[Ban]:
        """Every active ban (`StorageError` if the index cannot answer)."""
        if self.store is None:
            return []
        return await self.store.list_bans(self._clock())

    async def unban(self, ip: str) -> bool:
        """Lift the ban of `ip` (an address, or an IPv6 /64 as `ban list` shows it) and
        forget its failures; False if it was not banned.  `ValueError` for something
        that is not an address."""
        key = ban_key(ip) if "/" not in ip else _network_key(ip)
        if key is None:
            raise ValueError(f"{ip!r} is not an IP address")
        if self.store is None:
            return False
        removed = await self.store.remove_ban(key)
        self._seen.pop(key, None)
        if removed:
            log.info("unban: rip=%s reason=manual", key)
        return removed

    # -- internals ------------------------------------------------------------------------

    def _remember(self, key: str, until: _dt.datetime | None) -> None:
        self._bounded(self._seen)
        self._seen[key] = _Seen(self._monotonic(), until)

    def _bounded(self, table: dict) -> None:
        """Keep a per-process table under `CACHE_ENTRIES` (oldest entries go first)."""
        while len(table) >= CACHE_ENTRIES:
            table.pop(next(iter(table)))

    async def _maybe_prune(self) -> None:
        now_m = self._monotonic()
        if now_m - self._last_prune < PRUNE_INTERVAL:
            return
        self._last_prune = now_m
        assert self.store is not None
        now = self._clock()
        try:
            ended = await self.store.prune(now - _dt.timedelta(seconds=self.policy.find_time), now)
        except StorageError as exc:
            self._outage("pruning old failed logins", exc)
            return
        for ban in ended:
            self._seen.pop(ban.ip, None)
            log.info("unban: rip=%s reason=expired until=%s", ban.ip, _iso(ban.until))

    def _outage(self, what: str, exc: BaseException) -> None:
        """Log an index failure at most once a minute per process."""
        now_m = self._monotonic()
        if now_m - self._last_outage_log >= 60.0:
            self._last_outage_log = now_m
            log.warning("bans: %s failed, carrying on without: %s", what, exc)


def _printable(text: str) -> str:
    """Client-supplied text made safe for one log line."""
    return "".join("?" if ord(c) < 32 or ord(c) == 127 else c for c in text)


def _account(name: str) -> str:
    return name.strip().lower()[:MAX_ACCOUNT_LENGTH]


def _network_key(text: str) -> str | None:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    if network.num_addresses == 1:
        return ban_key(str(network.network_address))
    return str(network)
