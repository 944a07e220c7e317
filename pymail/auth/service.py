"""The authentication service every protocol calls (IMAP now; SMTP submission and POP3
with their issues).

`Authenticator.authenticate(username, password, client_ip=..., service=...)` answers
with the `User` or None, and:

* gives the same answer, after the same work, for an unknown user, an inactive user or
  domain, and a wrong password: a hash is always verified once (`dummy_verify` when there
  is no stored hash), so neither the reply nor its timing tells them apart;
* logs every failure as one line a fail2ban filter can match, with the client address
  as ``rip=`` (docs/interface.md, "Logs"), and never the password;
* runs the hash in a thread, at most `MAX_CONCURRENT_VERIFICATIONS` at once (an ARGON2ID
  verification takes 64 MiB and ~140 ms of a core), so a login flood cannot exhaust
  memory or block the event loop;
* raises `StorageError` when the directory cannot answer: the caller replies with a
  temporary failure, never with "wrong password".

Domains with ``auth_type = 'ldap'`` are refused here (logged ``reason=ldap_not_supported``)
until LDAP binding arrives with the submission/auth issue.
"""

from __future__ import annotations

import asyncio
import logging
import re

from pymail.auth.passwords import dummy_verify, verify_password
from pymail.store.interfaces import Directory, User

log = logging.getLogger("pymail.auth")

MAX_CONCURRENT_VERIFICATIONS = 4
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _safe(text: str) -> str:
    """Client-supplied text made safe for one log line (and bounded)."""
    return _CONTROL.sub("?", text)[:256]


class Authenticator:
    """Password authentication against the directory's `virtual_users`."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_VERIFICATIONS)

    async def authenticate(
        self, username: str, password: str, *, client_ip: str, service: str
    ) -> User | None:
        """The user if `username` (a full address) and `password` match an active
        account of an active local domain; else None (see the module docstring)."""
        address = username.strip().lower()
        user = await self.directory.get_user(address) if "@" in address else None
        reason = ""
        if user is None:
            reason = "unknown_user"
        elif not user.is_active:
            reason = "user_disabled"
        else:
            domain = await self.directory.get_domain(address.rpartition("@")[2])
            if domain is None or not domain.is_active:
                reason = "domain_disabled"
            elif domain.auth_type == "ldap":
                reason = "ldap_not_supported"
        async with self._slots:
            if reason or user is None:
                await asyncio.to_thread(dummy_verify, password)
                ok = False
            else:
                ok = await asyncio.to_thread(verify_password, password, user.password_hash)
                if not ok:
                    reason = "wrong_password"
        if not ok:
            log.warning(
                "authentication failed: service=%s rip=%s user=<%s> reason=%s",
                service, client_ip, _safe(address), reason,
            )
            return None
        log.info("authenticated: service=%s rip=%s user=<%s>", service, client_ip, address)
        return user
