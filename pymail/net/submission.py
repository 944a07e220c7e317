"""Message submission (RFC 6409): port 587 with STARTTLS, port 465 with implicit TLS
(RFC 8314), SASL PLAIN and LOGIN (RFC 4954) against pymail's one `Authenticator`.

The rules, in the order a session meets them:

* **TLS first.** On 587 nothing but EHLO/HELO, STARTTLS, NOOP, RSET, QUIT is accepted
  before STARTTLS (``530``), and AUTH is not advertised before it (RFC 3207 section 4,
  RFC 8314 section 3.3); 465 is TLS from the first byte.  Plaintext pipelined behind
  STARTTLS is discarded (aiosmtpd clears its buffer when TLS is up), and the session
  state is reset (RFC 3207 section 4.2).
* **AUTH before MAIL.** MAIL without a successful AUTH gets ``530 5.7.0``.  A failed
  AUTH is ``535 5.7.8`` whatever the reason (unknown user, wrong password, inactive
  account, authzid mismatch); a directory/LDAP outage is ``454 4.7.0`` (RFC 4954
  section 6), never an accept.  After `MAX_AUTH_FAILURES` failures on one connection it
  is closed with ``421 4.7.0``; the `Authenticator`'s jail counts failures across
  connections, workers and nodes and bans the address.  The mechanisms are PLAIN and
  LOGIN, nothing else (aiosmtpd takes every attribute named ``auth_*`` of the protocol
  or the handler for a mechanism: no other may exist).
* **Login in time.** A client that has not authenticated ``limits.login_timeout`` after
  connecting gets ``421 4.4.2`` and is disconnected, whatever it sent meanwhile.
* **Sender ownership.** MAIL FROM must be the user's own address or an address that
  routes to the user (an alias pointing at them); anything else is ``553 5.7.1``, like
  Postfix's ``reject_sender_login_mismatch``.  The null sender is allowed (bounces).
* **Recipients.** Local recipients are routed exactly as on the MX (unknown user
  ``550 5.1.1`` ...).  Remote recipients are what submission is for: the pipeline
  queues them (pymail.delivery.pipeline; the transaction carries the authenticated user,
  so it may relay), and the outbound copy is DKIM-signed when the header From is in the
  user's or the envelope sender's domain and that domain has a key.  A ``250`` for
  local and remote recipients means the mailbox copies and the queue entry are durable
  together.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from dataclasses import replace

from aiosmtpd.smtp import AuthResult, Session

from pymail.auth.service import Authenticator
from pymail.delivery.transaction import ClientFacts
from pymail.net.mx import MxHandler, PymailEnvelope, _safe
from pymail.net.smtp import PymailSMTP
from pymail.store.interfaces import StorageError, User

log = logging.getLogger("pymail.smtp")

MAX_AUTH_FAILURES = 3


class SubmissionReply:
    """Replies of the submission service (RFC 4954 section 6, RFC 3463 codes)."""

    AUTH_OK = "235 2.7.0 Authentication successful"
    AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
    AUTH_UNAVAILABLE = "454 4.7.0 Temporary authentication failure, try again later"
    AUTH_TOO_MANY = "421 4.7.0 Too many authentication failures, closing connection"
    BAD_BASE64 = "501 5.5.2 Cannot decode base64"
    BAD_PLAIN = "501 5.5.2 Malformed SASL PLAIN response"
    CANCELLED = "501 5.7.0 Authentication cancelled"
    SENDER_NOT_OWNED = "553 5.7.1 Sender address rejected: not owned by the authenticated user"


class SubmissionSMTP(PymailSMTP):
    """`PymailSMTP` with SASL PLAIN and LOGIN answered by the async `Authenticator`
    (aiosmtpd's own ``authenticator`` hook is synchronous; password hashing must not
    block the event loop).

    aiosmtpd API used here: the ``auth_PLAIN`` / ``auth_LOGIN`` mechanism hooks (their
    names are what EHLO advertises) run from `SubmissionHandler.handle_AUTH`, the
    documented AUTH hook, which sets ``session.authenticated`` and ``session.auth_data``
    itself (so aiosmtpd never sets the deprecated ``session.login_data``, which logged a
    warning on every login).  Internals, beyond those of `PymailSMTP`: ``_reader`` (the
    challenge answers).  No other attribute may start with ``auth_``."""

    def __init__(self, handler: Any, *, authenticator: Authenticator, service: str,
                 login_timeout: float | None = None, **kwargs: Any) -> None:
        self.pymail_authenticator = authenticator
        self.service_name = service
        self.failed_logins = 0  #: on this connection (not "auth_...": see the class doc)
        super().__init__(handler, auth_required=True, auth_require_tls=True,
                         auth_exclude_mechanism=(), login_timeout=login_timeout, **kwargs)

    async def sasl(self, args: list[str]) -> AuthResult:
        """Run the mechanism ``args[0]`` (aiosmtpd checked it is one we offer)."""
        mechanism = self.auth_PLAIN if args[0].upper() == "PLAIN" else self.auth_LOGIN
        return await mechanism(self, args)

    async def auth_PLAIN(self, _server: Any, args: list[str]) -> AuthResult:
        # RFC 4616: [authzid] NUL authcid NUL passwd; the initial response may come
        # with the command (RFC 4954 section 4) or after an empty 334 challenge.
        if len(args) == 1:
            response = await self._challenge(b"")
            if response is None:
                return AuthResult(success=False, handled=True)
        else:
            response = self._decode(args[1])
            if response is None:
                await self.push(SubmissionReply.BAD_BASE64)
                return AuthResult(success=False, handled=True)
        parts = response.split(b"\x00")
        if len(parts) != 3:
            await self.push(SubmissionReply.BAD_PLAIN)
            return AuthResult(success=False, handled=True)
        authzid, authcid, password = (p.decode("utf-8", "surrogateescape") for p in parts)
        return await self._check(authcid, password, authzid)

    async def auth_LOGIN(self, _server: Any, args: list[str]) -> AuthResult:
        # draft-murchison-sasl-login: "Username:" then "Password:" challenges; Outlook
        # and older clients use it.
        if len(args) == 1:
            username = await self._challenge(b"Username:")
        else:
            username = self._decode(args[1])
            if username is None:
                await self.push(SubmissionReply.BAD_BASE64)
                return AuthResult(success=False, handled=True)
        if username is None:
            return AuthResult(success=False, handled=True)
        password = await self._challenge(b"Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._check(username.decode("utf-8", "surrogateescape"),
                                 password.decode("utf-8", "surrogateescape"), None)

    @staticmethod
    def _decode(text: str) -> bytes | None:
        if text == "=":  # RFC 4954 section 4: an empty initial response
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None

    async def _challenge(self, text: bytes) -> bytes | None:
        """Send a 334 challenge; the decoded answer, or None after replying to a
        cancel (``*``) or bad base64 (RFC 4954 section 4)."""
        await self.push(b"334 " + base64.b64encode(text))
        line = (await self._reader.readline()).strip()
        if line == b"*":
            await self.push(SubmissionReply.CANCELLED)
            return None
        decoded = self._decode(line.decode("ascii", "replace"))
        if decoded is None:
            await self.push(SubmissionReply.BAD_BASE64)
        return decoded

    async def _check(self, username: str, password: str, authzid: str | None) -> AuthResult:
        try:
            user = await self.pymail_authenticator.authenticate(
                username, password, client_ip=self._peer_ip(), service=self.service_name,
                authzid=authzid)
        except StorageError:  # AuthUnavailable included: LDAP or the directory is down
            return AuthResult(success=False, handled=False, message=SubmissionReply.AUTH_UNAVAILABLE)
        if user is None:
            self.failed_logins += 1
            if self.failed_logins >= MAX_AUTH_FAILURES:
                self._closed_by_server = True
                await self.push(SubmissionReply.AUTH_TOO_MANY)
                if self.transport is not None:
                    self.transport.close()
                return AuthResult(success=False, handled=True)
            return AuthResult(success=False, handled=False, message=SubmissionReply.AUTH_FAILED)
        # (the Authenticator logged "authenticated: service=... rip=... user=<...>")
        if self._deadlines is not None:
            self._deadlines.logged_in()
        return AuthResult(success=True, auth_data=user, message=SubmissionReply.AUTH_OK)


class SubmissionHandler(MxHandler):
    """Policy for authenticated submission: sender ownership; delivery and relaying
    through the pipeline for the authenticated user."""

    @staticmethod
    def _user(session: Session) -> User | None:
        data = session.auth_data
        return data if isinstance(data, User) else None

    def _client_facts(self, session: Session) -> ClientFacts:
        return replace(super()._client_facts(session), user=self._user(session))

    async def handle_AUTH(self, server: SubmissionSMTP, session: Session, envelope: PymailEnvelope,
                          args: list[str]) -> str | None:
        """aiosmtpd's AUTH hook (after its own checks: EHLO, TLS, not yet
        authenticated, a mechanism we offer): run the mechanism and mark the session.
        Returns the reply, or None when the mechanism sent it already."""
        result = await server.sasl(args)
        if result.success:
            session.authenticated = True
            session.auth_data = result.auth_data
            return result.message or SubmissionReply.AUTH_OK
        if result.handled:
            return None
        return result.message or SubmissionReply.AUTH_FAILED

    async def handle_MAIL(self, server: PymailSMTP, session: Session, envelope: PymailEnvelope,
                          address: str, mail_options: list[str]) -> str:
        reply = await super().handle_MAIL(server, session, envelope, address, mail_options)
        if not reply.startswith("250") or not envelope.sender:
            return reply
        user = self._user(session)
        if user is None or not await self._owns(user, envelope.sender):
            self._log(envelope, session, "reject", SubmissionReply.SENDER_NOT_OWNED, to="",
                      extra=f"user=<{_safe(user.address if user else '')}> reason=sender_not_owned")
            envelope.sender = ""  # as if MAIL had never been given
            envelope.mail_from = None
            envelope.mail_options.clear()
            envelope.queue_id = ""
            envelope.txn = None
            return SubmissionReply.SENDER_NOT_OWNED
        return reply

    async def _owns(self, user: User, sender: str) -> bool:
        """The user's own address, or one that routes to them (an alias or catch-all)."""
        if sender.lower() == user.address.lower():
            return True
        try:
            resolution = await self.router.resolve(sender)
        except StorageError:
            return False
        return any(u.id == user.id for u in resolution.users)

