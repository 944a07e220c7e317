"""The authentication service every protocol calls (IMAP, POP3, SMTP submission).

`Authenticator.authenticate(username, password, client_ip=..., service=...)` answers
with the `User` or None, or raises `AuthUnavailable`, and:

* checks the password where the user's domain says: ``domains.auth_type = 'local'`` (the
  hash in ``virtual_users.password``, Dovecot ``{SCHEME}`` style) or ``'ldap'`` (a bind
  to the LDAP server, `pymail.auth.ldap`);
* gives the same answer, after the same work, for an unknown user, an inactive user or
  domain, and a wrong password: for a local (or unknown) domain a hash is always verified
  once (`dummy_verify` when there is no stored hash); for an LDAP domain one bind is
  always made (a search and a bind with ``user_filter``) whether or not the user has a
  mailbox row or is active, and an empty password is refused before any bind;
* logs every failure as one line a fail2ban filter can match, with the client address
  as ``rip=`` and never the password (docs/interface.md, "Logs";
  contrib/fail2ban/filter.d/pymail.conf)::

      authentication failed: service=imap rip=192.0.2.7 user=<alice@example.com> reason=wrong_password

* counts every failure in the `Jail` (per address and per account, shared through the
  index) and refuses logins from a banned address, whatever the password
  (``reason=banned``: no hash, not counted again); `is_banned(ip)` is what listeners
  call when a client connects;
* runs the hash in a thread, at most `MAX_CONCURRENT_VERIFICATIONS` at once (an ARGON2ID
  verification takes 64 MiB and ~140 ms of a core), so a login flood cannot exhaust
  memory or block the event loop;
* remembers successful local-hash checks in an `AuthCache` (``[auth] cache_ttl``,
  `pymail.auth.cache`): once the row says the user and its domain are active, a login with
  the password last verified against the same stored hash is accepted without a hash
  (``pymail_auth_cache_hits_total``).  Anything else -- not cached, expired, another
  password, a changed hash -- is verified in full, so a wrong password takes the same
  work as ever and is counted as a failure.  The row is read for every login, so
  ``pymail user passwd`` / ``user disable`` / ``domain disable`` take effect at once.
  LDAP domains are not cached: pymail would not see a password changed or an account
  locked in LDAP, so the old password would keep working for ``cache_ttl``, and their
  cost is a network round trip to the LDAP server, not a core here;
* raises `AuthUnavailable` (a `StorageError`) when it cannot tell: LDAP unreachable or
  timed out, LDAP not configured for an LDAP domain, and `StorageError` when the
  directory cannot answer.  The caller replies with a temporary failure (SMTP
  ``454 4.7.0``, IMAP ``NO [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``), never with "wrong
  password" and never with an accept.  Such a login is logged as
  ``authentication unavailable: ...`` (which fail2ban does not count) and not counted.

LDAP users and their mailboxes: a user of an LDAP domain needs a ``virtual_users`` row
like any other (its mailboxes hang off the row's id, and the MX accepts mail only for
addresses in the directory); `pymail user add ADDRESS` on an LDAP domain creates it with
`LDAP_PASSWORD` (``{LDAP}``), a value no password matches, and asks for no password.  The
row's ``is_active`` is honoured; its password column is never read for an LDAP domain.
pymail does not create rows on first login: an LDAP entry without a row cannot log in
(``reason=unknown_user``, after the bind).

SASL authorization identities: pymail has no proxy authorization.  A protocol that
receives an authzid (SASL PLAIN's first field, RFC 4616) passes it as ``authzid=``; an
authzid other than the authcid (case-insensitively) fails the login like a wrong
password (``reason=authzid_mismatch``), logged and counted.  `authzid_allowed` is the
same rule for code that needs it without a login.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pymail import metrics
from pymail.auth.ban import BanPolicy, Jail
from pymail.auth.cache import AuthCache
from pymail.auth.ldap import LdapAuthenticator, LdapSettings, LdapUnavailable
from pymail.auth.passwords import DEFAULT_ARGON2_COST, Argon2Cost, dummy_verify, verify_password
from pymail.store.interfaces import BanStore, Directory, Domain, StorageError, User

if TYPE_CHECKING:
    from pymail.config.schema import AuthConfig

__all__ = [
    "LDAP_PASSWORD",
    "AuthUnavailable",
    "Authenticator",
    "authenticator_from_config",
    "authzid_allowed",
    "ban_policy_from_config",
    "ldap_settings_from_config",
]

log = logging.getLogger("pymail.auth")

MAX_CONCURRENT_VERIFICATIONS = 4
#: `virtual_users.password` of a user of an LDAP domain: no password ever matches it.
LDAP_PASSWORD = "{LDAP}"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class AuthUnavailable(StorageError):
    """The login could not be checked (LDAP unreachable or timed out, LDAP not set up
    for an LDAP domain).  Temporary: reply SMTP ``454 4.7.0``, IMAP ``NO
    [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``.  A `StorageError`, so code that already
    answers a directory failure with a temporary failure does the right thing."""


def _safe(text: str) -> str:
    """Client-supplied text made safe for one log line (and bounded)."""
    return _CONTROL.sub("?", text)[:256]


def authzid_allowed(authzid: str | None, authcid: str) -> bool:
    """Whether a SASL authorization identity is acceptable for the authentication
    identity: empty, or the same address (pymail has no proxy authorization)."""
    if not authzid:
        return True
    return authzid.strip().lower() == authcid.strip().lower()


class Authenticator:
    """Password authentication against the directory, or LDAP for LDAP domains, with
    failed-login counting and bans (see the module docstring)."""

    def __init__(
        self,
        directory: Directory,
        *,
        ldap: LdapAuthenticator | None = None,
        jail: Jail | None = None,
        cache: AuthCache | None = None,
        argon2_cost: Argon2Cost = DEFAULT_ARGON2_COST,
    ) -> None:
        self.directory = directory
        self.ldap = ldap
        self.jail = jail
        #: successful local checks (off when None is given)
        self.cache = cache if cache is not None else AuthCache(0)
        #: the cost of new hashes, which the dummy verification of a failure matches
        self.argon2_cost = argon2_cost
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_VERIFICATIONS)

    async def is_banned(self, ip: str) -> bool:
        """Whether `ip` is banned now: listeners refuse the connection (SMTP ``421
        4.7.0``, IMAP ``* BYE``, POP3 ``-ERR``).  Cheap (cached per process for a few
        seconds); False when bans are off or the index cannot answer."""
        if self.jail is None:
            return False
        return await self.jail.is_banned(ip)

    async def authenticate(
        self,
        username: str,
        password: str,
        *,
        client_ip: str,
        service: str,
        authzid: str | None = None,
    ) -> User | None:
        """The user if `username` (a full address) and `password` match an active
        account of an active domain; else None.  `AuthUnavailable` / `StorageError`:
        temporary failure (see the module docstring)."""
        address = username.strip().lower()
        if self.jail is not None:
            if await self.jail.is_banned(client_ip):
                # No hash: a banned address learns nothing about the account either way,
                # and must not cost a core per attempt.
                self._log_failure(service, client_ip, address, "banned")
                return None
            await self.jail.throttle(address)

        user = await self.directory.get_user(address) if "@" in address else None
        domain = await self.directory.get_domain(address.rpartition("@")[2]) if "@" in address else None
        if not authzid_allowed(authzid, username):
            async with self._slots:
                await asyncio.to_thread(dummy_verify, password, self.argon2_cost)
            reason = "authzid_mismatch"
        elif domain is not None and domain.is_active and domain.auth_type == "ldap":
            reason = await self._check_ldap(address, password, user, domain, client_ip, service)
        else:
            reason = await self._check_local(password, user, domain)
        if reason:
            self._log_failure(service, client_ip, address, reason)
            if self.jail is not None:
                await self.jail.record_failure(client_ip, address, service=service)
            return None
        assert user is not None
        log.info("authenticated: service=%s rip=%s user=<%s>", service, client_ip, address)
        return user

    async def _check_local(self, password: str, user: User | None, domain: Domain | None) -> str:
        """"" if the password matches the user's stored hash, else why not; one hash
        verification unless the cache accepts (active user, same password, same hash)."""
        reason = ""
        if user is None:
            reason = "unknown_user"
        elif not user.is_active:
            reason = "user_disabled"
        elif domain is None or not domain.is_active:
            reason = "domain_disabled"
        if reason or user is None:
            if user is not None:
                self.cache.forget(user.address)
            async with self._slots:
                await asyncio.to_thread(dummy_verify, password, self.argon2_cost)
            return reason or "unknown_user"
        stored = user.password_hash
        if self.cache.enabled:
            if self.cache.accepts(user.address, password, stored):
                metrics.AUTH_CACHE_HITS.inc()
                return ""
            metrics.AUTH_CACHE_MISSES.inc()
        async with self._slots:
            ok = await asyncio.to_thread(verify_password, password, stored)
        if not ok:
            return "wrong_password"
        self.cache.remember(user.address, password, stored)
        return ""

    async def _check_ldap(
        self, address: str, password: str, user: User | None, domain: Domain,
        client_ip: str, service: str,
    ) -> str:
        """"" if LDAP accepts the password and the user has an active row, else why not;
        `AuthUnavailable` when LDAP cannot tell."""
        if not password:
            return "empty_password"  # never a bind: it would be an anonymous success
        if self.ldap is None or not domain.ldap_base_dn:
            problem = (
                "[auth.ldap] url is not set" if self.ldap is None
                else "the domain has no ldap_base_dn"
            )
            log.error(
                "authentication unavailable: service=%s rip=%s user=<%s> reason=ldap_not_configured"
                " (domain %s uses LDAP but %s)",
                service, client_ip, _safe(address), domain.name, problem,
            )
            raise AuthUnavailable(f"LDAP is not configured for {domain.name}: {problem}")
        localpart = address.rpartition("@")[0]
        try:
            verdict = await self.ldap.check(localpart, domain.name, domain.ldap_base_dn, password)
        except LdapUnavailable as exc:
            log.warning(
                "authentication unavailable: service=%s rip=%s user=<%s> reason=ldap_unavailable (%s)",
                service, client_ip, _safe(address), exc,
            )
            raise AuthUnavailable(f"LDAP: {exc}") from None
        if not verdict.ok:
            return verdict.reason or "ldap_invalid_credentials"
        if user is None:
            return "unknown_user"
        if not user.is_active:
            return "user_disabled"
        return ""

    @staticmethod
    def _log_failure(service: str, client_ip: str, address: str, reason: str) -> None:
        log.warning(
            "authentication failed: service=%s rip=%s user=<%s> reason=%s",
            service, client_ip, _safe(address), reason,
        )


# --------------------------------------------------------------------------- from config


def _read_secret(path: Path, key: str) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{key}: cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    if not secret:
        raise ValueError(f"{key}: {path} is empty")
    return secret


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def ldap_settings_from_config(auth: "AuthConfig") -> LdapSettings | None:
    """The LDAP settings of ``[auth.ldap]`` with the service password read from its file;
    None when no url is set.  `ValueError` with one line naming the key."""
    cfg = auth.ldap
    if cfg.url is None:
        return None
    password = None
    if cfg.bind_password_file is not None:
        password = _read_secret(cfg.bind_password_file, "auth.ldap.bind_password_file")
    if cfg.ca_file is not None:
        try:
            cfg.ca_file.read_bytes()
        except OSError as e:
            raise ValueError(f"auth.ldap.ca_file: cannot read {cfg.ca_file}: {e.strerror or e}") from None
    settings = LdapSettings(
        url=cfg.url,
        starttls=cfg.starttls,
        ca_file=str(cfg.ca_file) if cfg.ca_file is not None else None,
        bind_dn=cfg.bind_dn,
        bind_password=password,
        user_filter=cfg.user_filter,
        timeout=cfg.timeout,
    )
    if not settings.implicit_tls and not settings.starttls and not _is_loopback(settings.host):
        log.warning(
            "auth.ldap: %s without starttls: LDAP passwords cross the network in clear text",
            cfg.url,
        )
    return settings


def ban_policy_from_config(auth: "AuthConfig") -> BanPolicy:
    """The numbers of ``[auth.ban]``."""
    ban = auth.ban
    return BanPolicy.from_networks(
        ban.ignore_ips,
        enabled=ban.enabled,
        max_failures=ban.max_failures,
        find_time=ban.find_time,
        ban_time=ban.ban_time,
        account_max_failures=ban.account_max_failures,
        account_delay=ban.account_delay,
    )


def authenticator_from_config(auth: "AuthConfig", directory: Directory,
                              bans: BanStore | None) -> Authenticator:
    """The `Authenticator` that ``[auth]`` describes, over `directory` and the index's
    `bans`.  `ValueError` with one line naming the key (e.g. an unreadable
    bind_password_file)."""
    settings = ldap_settings_from_config(auth)
    try:
        ldap = LdapAuthenticator(settings) if settings is not None else None
    except Exception as e:  # ldap3 refusing the TLS settings, e.g. a bad CA file
        raise ValueError(f"auth.ldap: {' '.join(str(e).split())}") from None
    return Authenticator(directory, ldap=ldap, jail=Jail(bans, ban_policy_from_config(auth)),
                         cache=AuthCache(auth.cache_ttl), argon2_cost=auth.argon2_cost)
