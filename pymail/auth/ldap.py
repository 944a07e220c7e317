"""LDAP password checks for the domains whose ``domains.auth_type`` is 'ldap'.

A user of such a domain logs in with the password the LDAP server holds; pymail checks it
by *binding* to the server as the user (RFC 4513 section 5.1.3, simple bind), so it never
reads or compares a password hash.  Where the user's entry is:

* without ``user_filter``: ``uid=<localpart>,<domain's ldap_base_dn>``, the DN escaped
  with RFC 4514 rules (``ldap3.utils.dn.escape_rdn``), so a login such as
  ``"a,ou=admins"@example.com`` cannot name another entry;
* with ``user_filter``: pymail binds as ``bind_dn`` (or anonymously), searches the
  subtree under the base DN with the filter, ``{localpart}``/``{domain}``/``{address}``
  replaced by the login escaped with RFC 4515 rules (``escape_filter_chars``: ``*``,
  ``(``, ``)``, ``\\``, NUL), and then binds, on the same connection, as the one entry it
  found (none or several: a failed login).

Invariants:

* An empty password never reaches a bind: RFC 4513 section 5.1.2 makes a simple bind
  with a DN and no password an *unauthenticated* bind, which servers answer with success.
  `LdapAuthenticator.check` refuses it itself, whatever its caller did.
* The answer is either a `LdapVerdict` (the server said yes or no) or `LdapUnavailable`
  (no answer: connection refused, timed out, TLS failure, server busy, the service
  account refused, the base DN missing).  Callers turn the second into a temporary
  failure; nothing here ever turns an error into an accept.
* Only invalidCredentials (49), inappropriateAuthentication (48), insufficientAccessRights
  (50) and unwillingToPerform (53) count as "no" from the server; every other result code
  is `LdapUnavailable`.
* Passwords (the user's and the service account's) are never logged, put in an exception
  message or in a repr.
* ldap3 is synchronous: each check runs in a thread (`asyncio.to_thread`), at most
  `MAX_CONCURRENT_CHECKS` at once, with ``connect_timeout`` and ``receive_timeout`` of
  `LdapSettings.timeout` on every socket operation (the receive timeout rounded up to
  whole seconds, as ldap3 sets it) and an overall bound in asyncio.
* One fresh connection per check, closed at its end (no pool): simple and always
  correct after a server restart, at the price of one TCP (and TLS) handshake per login;
  logins are rare next to the mail traffic.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import ssl
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import ldap3
from ldap3.core import exceptions as ldap_errors
from ldap3.core.results import (
    RESULT_INAPPROPRIATE_AUTHENTICATION,
    RESULT_INSUFFICIENT_ACCESS_RIGHTS,
    RESULT_INVALID_CREDENTIALS,
    RESULT_NO_SUCH_OBJECT,
    RESULT_SIZE_LIMIT_EXCEEDED,
    RESULT_SUCCESS,
    RESULT_UNWILLING_TO_PERFORM,
)
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

__all__ = [
    "LdapAuthenticator",
    "LdapSettings",
    "LdapUnavailable",
    "LdapVerdict",
    "user_dn",
    "user_filter",
]

log = logging.getLogger("pymail.auth.ldap")

#: LDAP checks running at once per process (each holds a thread and a connection).
MAX_CONCURRENT_CHECKS = 8

#: Result codes that mean "this DN and password do not authenticate".
_REFUSED = frozenset({
    RESULT_INVALID_CREDENTIALS,
    RESULT_INAPPROPRIATE_AUTHENTICATION,
    RESULT_INSUFFICIENT_ACCESS_RIGHTS,
    RESULT_UNWILLING_TO_PERFORM,
})


class LdapUnavailable(Exception):
    """The LDAP server gave no usable answer; the message is one line for the log."""


@dataclass(frozen=True, slots=True)
class LdapSettings:
    """Where and how to reach the LDAP server (config section ``[auth.ldap]``)."""

    url: str  #: ``ldap://host[:port]`` or ``ldaps://host[:port]``
    starttls: bool = False
    ca_file: str | None = None  #: PEM CA bundle; None: the system's CAs
    bind_dn: str | None = None  #: service account for the search
    bind_password: str | None = field(default=None, repr=False)
    user_filter: str | None = None  #: search filter with {localpart}/{domain}/{address}
    timeout: float = 5.0

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (636 if parts.scheme == "ldaps" else 389)

    @property
    def implicit_tls(self) -> bool:
        return self.url.startswith("ldaps:")


@dataclass(frozen=True, slots=True)
class LdapVerdict:
    """The server's answer to one login."""

    ok: bool
    reason: str = ""  #: why not, for the log (``ldap_invalid_credentials``, ...)
    dn: str | None = None  #: the entry that was (or would have been) bound


def user_dn(localpart: str, base_dn: str) -> str | None:
    """``uid=<localpart escaped>,<base_dn>``, or None when the result is not a valid DN
    (an empty local part, a broken base DN)."""
    if not localpart:
        return None
    dn = f"uid={escape_rdn(localpart)},{base_dn}"
    try:
        parse_dn(dn)
    except (ldap_errors.LDAPException, ValueError, IndexError):
        return None
    return dn


def user_filter(template: str, localpart: str, domain: str) -> str:
    """The search filter for a login: `template` with its placeholders replaced by the
    RFC 4515-escaped values."""
    return template.format(
        localpart=escape_filter_chars(localpart),
        domain=escape_filter_chars(domain),
        address=escape_filter_chars(f"{localpart}@{domain}"),
    )


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


class LdapAuthenticator:
    """Checks passwords by binding to one LDAP server (see the module docstring)."""

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        self._tls = None
        if settings.implicit_tls or settings.starttls:
            self._tls = ldap3.Tls(
                validate=ssl.CERT_REQUIRED,
                ca_certs_file=settings.ca_file,
                sni=settings.host,
            )

    def _server(self) -> ldap3.Server:
        # A new Server per check: ldap3 remembers an address that failed once as
        # unusable for minutes (ADDRESS_INFO_REFRESH_TIME), which would outlast the
        # outage it saw.
        return ldap3.Server(
            self.settings.host,
            port=self.settings.port,
            use_ssl=self.settings.implicit_tls,
            tls=self._tls,
            get_info=ldap3.NONE,
            connect_timeout=self.settings.timeout,
        )

    def __repr__(self) -> str:
        return f"LdapAuthenticator({self.settings.url!r})"

    async def check(self, localpart: str, domain: str, base_dn: str, password: str) -> LdapVerdict:
        """Whether `password` is the LDAP password of `localpart`@`domain`, whose entry is
        under `base_dn`.  `LdapUnavailable` when the server cannot tell."""
        if not password:
            return LdapVerdict(False, "empty_password")
        # Each socket operation is bounded by `timeout`; a check makes at most four round
        # trips (connect, StartTLS, search or bind, bind) plus the TLS handshake.
        bound = self.settings.timeout * 6 + 1
        async with self._slots:
            try:
                return await asyncio.wait_for(
                    asyncio.to_thread(self._check_sync, localpart, domain, base_dn, password),
                    bound,
                )
            except asyncio.TimeoutError:
                raise LdapUnavailable(
                    f"{self.settings.url}: no answer within {bound:g} s"
                ) from None

    # -- blocking part, in a thread ------------------------------------------------------

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        return ldap3.Connection(
            self._server(),
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            auto_bind=ldap3.AUTO_BIND_NONE,
            # ldap3 packs it into SO_RCVTIMEO as an integer of seconds
            receive_timeout=max(1, math.ceil(self.settings.timeout)),
            raise_exceptions=False,
            read_only=True,
            check_names=True,
        )

    def _open(self, conn: ldap3.Connection) -> None:
        conn.open(read_server_info=False)
        if self.settings.starttls and not conn.start_tls(read_server_info=False):
            raise LdapUnavailable(f"{self.settings.url}: StartTLS refused: {self._result(conn)}")

    @staticmethod
    def _result(conn: ldap3.Connection) -> str:
        result = conn.result or {}
        text = result.get("description") or "no result"
        if result.get("message"):
            text += f" ({_one_line(result['message'])})"
        return text

    def _check_sync(self, localpart: str, domain: str, base_dn: str, password: str) -> LdapVerdict:
        url = self.settings.url
        conn: ldap3.Connection | None = None
        try:
            if self.settings.user_filter:
                conn = self._connection(self.settings.bind_dn, self.settings.bind_password)
                self._open(conn)
                if self.settings.bind_dn and not conn.bind(read_server_info=False):
                    raise LdapUnavailable(
                        f"{url}: the service account bind_dn was refused: {self._result(conn)}"
                    )
                dn, reason = self._search(conn, localpart, domain, base_dn)
                if dn is None:
                    # Bind anyway, as an entry that does not exist, so that a login for
                    # nobody costs what a wrong password costs.
                    conn.rebind(f"cn=pymail-absent-{secrets.token_hex(8)},{base_dn}", password)
                    return LdapVerdict(False, reason)
                ok = conn.rebind(dn, password)
            else:
                dn = user_dn(localpart, base_dn)
                if dn is None:
                    return LdapVerdict(False, "ldap_invalid_login")
                conn = self._connection(dn, password)
                self._open(conn)
                ok = conn.bind(read_server_info=False)
            if ok:
                return LdapVerdict(True, "", dn)
            code = (conn.result or {}).get("result")
            if code in _REFUSED:
                return LdapVerdict(False, "ldap_invalid_credentials", dn)
            raise LdapUnavailable(f"{url}: bind failed: {self._result(conn)}")
        except LdapUnavailable:
            raise
        except ldap_errors.LDAPInvalidDnError:
            return LdapVerdict(False, "ldap_invalid_login")
        except ldap_errors.LDAPException as exc:
            raise LdapUnavailable(f"{url}: {type(exc).__name__}: {_one_line(exc)}") from None
        except (OSError, ssl.SSLError) as exc:
            raise LdapUnavailable(f"{url}: {_one_line(exc) or type(exc).__name__}") from None
        except Exception as exc:  # ldap3 failing in an unexpected way: still no accept
            log.error("LDAP check failed unexpectedly", exc_info=True)
            raise LdapUnavailable(f"{url}: {type(exc).__name__}: {_one_line(exc)}") from None
        finally:
            if conn is not None:
                try:
                    conn.unbind()
                except Exception:  # noqa: BLE001 - the connection is gone anyway
                    pass

    def _search(
        self, conn: ldap3.Connection, localpart: str, domain: str, base_dn: str
    ) -> tuple[str | None, str]:
        """(the DN of the one entry the filter finds, "") or (None, why not)."""
        assert self.settings.user_filter is not None
        if not localpart:
            return None, "ldap_invalid_login"
        search_filter = user_filter(self.settings.user_filter, localpart, domain)
        conn.search(
            base_dn,
            search_filter,
            search_scope=ldap3.SUBTREE,
            attributes=[ldap3.NO_ATTRIBUTES],
            size_limit=2,
            time_limit=max(1, int(self.settings.timeout)),
        )
        code = (conn.result or {}).get("result")
        if code == RESULT_NO_SUCH_OBJECT:
            raise LdapUnavailable(
                f"{self.settings.url}: the base DN {base_dn!r} does not exist"
            )
        if code not in (RESULT_SUCCESS, RESULT_SIZE_LIMIT_EXCEEDED):
            raise LdapUnavailable(f"{self.settings.url}: search failed: {self._result(conn)}")
        entries = [e["dn"] for e in conn.response or () if e.get("type") == "searchResEntry"]
        if not entries:
            return None, "ldap_no_entry"
        if len(entries) > 1 or code == RESULT_SIZE_LIMIT_EXCEEDED:
            return None, "ldap_ambiguous_entry"
        return entries[0], ""
