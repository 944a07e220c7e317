"""The authentication cache: successful password checks remembered for a while, so a
client that logs in again (Thunderbird opens about five connections per start) costs
an HMAC instead of an Argon2id verification.  Dovecot's ``auth_cache`` does the same.

`AuthCache` maps a login address to an `_Entry`: HMAC-SHA256(key, address NUL password)
under a random key made per process (never stored, never logged), the stored password
hash string (``virtual_users.password``) the password was verified against, and the
time the entry expires.  `Authenticator` uses it after it has read the user's row (the
row is read for every login: it carries ``is_active``), and only once the row says the
user and its domain are active.

Invariants:

* Only a successful verification is remembered (`remember`); a failure never is.
* `accepts` is True only for the same address, the same password (compared with
  ``hmac.compare_digest``), the same stored hash string and before the expiry.  A
  changed password (``pymail user passwd``, on any node) changes the row's hash: the
  entry no longer matches and the login does the full verification; a disabled user or
  domain is refused by the row before the cache is asked.
* A wrong password for a cached user is not decided here: the caller does the full
  verification, so it takes as long as any other failure and is counted as one.  The
  entry stays (a guesser cannot evict the real user's entry).
* Bounded: at most `max_entries` (least recently used dropped first) for at most
  `ttl` seconds each; ``ttl == 0`` turns the cache off (`enabled`).
* Per process and in memory only: workers and nodes each keep their own.

Security trade-off: for ``ttl`` after a successful login, the password is checked with a
fast keyed hash instead of a slow one, inside this process only.  A dump of the process's
memory reveals the key and keyed hashes, not passwords; with the key, an attacker who has
the dump can test guesses fast (the strength of Argon2id is lost for the cached users, as
it is for anyone who can read the memory of a process that sees passwords in clear
anyway).  Nothing is written to disk or shared.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_ENTRIES", "AuthCache"]

#: Users remembered per process at most (Dovecot's auth_cache_size is 10 MB by default,
#: in the order of as many entries).
DEFAULT_MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: bytes  #: HMAC-SHA256(key, address NUL password)
    stored_hash: str  #: the virtual_users.password value it was verified against
    expires: float  #: clock() after which the entry is dead


class AuthCache:
    """Successful password checks per address (see the module docstring).  `clock` is
    monotonic seconds (injected by tests)."""

    def __init__(self, ttl: float, *, max_entries: int = DEFAULT_MAX_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self.clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def __len__(self) -> int:
        return len(self._entries)

    def _digest(self, address: str, password: str) -> bytes:
        message = address.encode("utf-8") + b"\0" + password.encode("utf-8", "surrogatepass")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def accepts(self, address: str, password: str, stored_hash: str) -> bool:
        """Whether `password` was verified for `address` against exactly `stored_hash`
        within the last `ttl` seconds.  False means "verify it", never "wrong"."""
        if not self.enabled:
            return False
        entry = self._entries.get(address)
        if entry is None:
            return False
        if self.clock() >= entry.expires:
            del self._entries[address]
            return False
        same_hash = hmac.compare_digest(entry.stored_hash.encode("utf-8", "surrogatepass"),
                                        stored_hash.encode("utf-8", "surrogatepass"))
        same_password = hmac.compare_digest(entry.digest, self._digest(address, password))
        if not same_hash:
            del self._entries[address]  # the password was changed: the entry is dead
            return False
        if not same_password:
            return False  # the caller verifies in full; the real user's entry stays
        self._entries.move_to_end(address)
        return True

    def remember(self, address: str, password: str, stored_hash: str) -> None:
        """Record a successful verification of `password` against `stored_hash`."""
        if not self.enabled:
            return
        self._entries[address] = _Entry(self._digest(address, password), stored_hash,
                                        self.clock() + self.ttl)
        self._entries.move_to_end(address)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, address: str) -> None:
        """Drop `address` (its row says it may not log in any more)."""
        self._entries.pop(address, None)
