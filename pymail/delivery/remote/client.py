"""One SMTP client session to a remote host, over aiosmtplib: connect, EHLO, STARTTLS as
the TLS policy says, AUTH to a smarthost, and one mail transaction with per-recipient
results.  `RemoteDelivery` (this package's __init__) chooses the hosts and keeps the
sessions for reuse.

What is sent (RFC 5321 section 4.1; extensions only when the server advertises them):

* ``EHLO server.hostname`` (``HELO`` when EHLO is refused, 4.1.4);
* ``MAIL FROM:<sender>`` with ``SIZE=`` (RFC 1870), ``BODY=8BITMIME`` (RFC 6152),
  ``SMTPUTF8`` (RFC 6531; a message that needs it and a server without it is a
  permanent ``553 5.6.7`` for each recipient, never a mangled address), ``RET=`` and
  ``ENVID=`` (RFC 3461 4.3-4.4) and ``REQUIRETLS`` (RFC 8689 4.1);
* one ``RCPT TO`` per recipient with ``NOTIFY=`` and ``ORCPT=`` (RFC 3461 4.1-4.2);
  each reply decides that recipient (``2xx`` accepted for now, ``5xx`` permanent,
  otherwise temporary);
* ``DATA`` when someone was accepted: its final reply decides every accepted recipient.

aiosmtplib sends one command at a time: it has no PIPELINING (RFC 2920) support, so a
transaction costs one round trip per command.  On a LAN or loopback that is well under
a millisecond each; to an MX across the internet it adds latency, not load.

Timeouts (RFC 5321 section 4.5.3.2) are the RFC's minimums, as Postfix's are: a remote
that is merely slow is waited for; connecting has Postfix's 30 s.

Invariants: the socket is opened here from an address the caller resolved through
pymail's resolver (never the system's), so the tests' DNS is the only DNS; failures
are values (`HopFailure` for "try the next host", `Attempt`s otherwise), never an
exception out of `Session.transaction`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from pymail.delivery.attempt import Attempt
from pymail.proto.smtp.params import xtext_encode
from pymail.store.queue import QueuedMessage, RecipientState

__all__ = ["HopFailure", "Session", "open_session"]

log = logging.getLogger("pymail.delivery")

CONNECT_TIMEOUT = 30.0  #: Postfix's smtp_connect_timeout
GREETING_TIMEOUT = 300.0  #: RFC 5321 4.5.3.2.1: initial 220, 5 minutes
COMMAND_TIMEOUT = 300.0  #: 4.5.3.2.2-3: MAIL and RCPT, 5 minutes (EHLO, STARTTLS alike)
DATA_TIMEOUT = 600.0  #: 4.5.3.2.4-6: DATA 2 min, each block 3, the final dot 10 minutes


class HopFailure(Exception):
    """This host could not take the message now: try the next one.  `permanent` only for
    a reply that says so for every host (a 5xx greeting does not: the next MX may
    differ)."""

    def __init__(self, text: str, *, code: int = 0, enhanced: str = "4.4.1",
                 remote_host: str | None = None, permanent: bool = False,
                 tls_failed: bool = False) -> None:
        super().__init__(text)
        self.text, self.code, self.enhanced = text, code, enhanced
        self.remote_host, self.permanent, self.tls_failed = remote_host, permanent, tls_failed


def enhanced_of(code: int, text: str) -> str | None:
    """The RFC 3463 code at the start of a reply text, if it has one."""
    first = text.split(None, 1)[0] if text.strip() else ""
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] == str(code)[:1]:
        return first
    return None


def _default_enhanced(code: int) -> str:
    return {2: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")


@dataclass(slots=True)
class Session:
    """A connected, greeted (and, as the policy says, TLS-protected) SMTP session."""

    smtp: aiosmtplib.SMTP
    remote_host: str  #: "mx.remote.test[127.0.0.2]"
    tls: str  #: the TLS outcome for the log ("none", "TLSv1.3 ... verified", ...)
    key: tuple
    messages: int = 0  #: transactions done on it (reuse is capped)

    @property
    def usable(self) -> bool:
        return self.smtp.is_connected

    def supports(self, extension: str) -> bool:
        return self.smtp.supports_extension(extension)

    async def reset(self) -> bool:
        """RSET before reusing the session for another message (RFC 5321 4.1.1.5)."""
        try:
            response = await self.smtp.rset(timeout=COMMAND_TIMEOUT)
        except (aiosmtplib.SMTPException, OSError):
            return False
        return response.code == 250

    async def quit(self) -> None:
        try:
            await asyncio.wait_for(self.smtp.quit(), 10.0)
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            pass
        finally:
            self.smtp.close()

    def _result(self, state: RecipientState, code: int, text: str, *,
                permanent: bool | None = None, enhanced: str | None = None,
                dsn_passed: bool = False) -> Attempt:
        return Attempt(state.id, code, text, enhanced=enhanced or enhanced_of(code, text)
                       or _default_enhanced(code), remote_host=self.remote_host,
                       permanent=code >= 500 if permanent is None else permanent,
                       tls=self.tls, dsn_passed=dsn_passed)

    async def transaction(self, message: QueuedMessage, recipients: Sequence[RecipientState],
                          content: bytes) -> list[Attempt]:
        """One mail transaction (module docstring); one `Attempt` per recipient.  Raises
        `HopFailure` only before any recipient is decided (MAIL FROM refused with 4xx,
        or the connection lost there), so the caller may try the next host."""
        self.messages += 1
        smtp = self.smtp
        if message.smtputf8 and not self.supports("smtputf8"):
            text = f"{self.remote_host} does not support SMTPUTF8 (RFC 6531 3.2)"
            return [self._result(r, 553, text, enhanced="5.6.7") for r in recipients]
        if message.requiretls and not self.supports("requiretls"):
            # RFC 8689 4.2.1: never relay a REQUIRETLS message to a server without it.
            raise HopFailure(f"{self.remote_host} does not offer REQUIRETLS (RFC 8689 4.2.1)",
                             enhanced="5.7.30", remote_host=self.remote_host)
        dsn = self.supports("dsn")
        options = []
        if self.supports("size"):
            options.append(f"SIZE={len(content)}")
        if message.body == "8BITMIME" and self.supports("8bitmime"):
            options.append("BODY=8BITMIME")
        if message.smtputf8:
            options.append("SMTPUTF8")
        if dsn and message.ret:
            options.append(f"RET={message.ret}")
        if dsn and message.envid:
            options.append(f"ENVID={xtext_encode(message.envid)}")
        if message.requiretls:
            options.append("REQUIRETLS")
        encoding = "utf-8" if message.smtputf8 else "ascii"
        try:
            response = await smtp.mail(message.sender, options=options, encoding=encoding,
                                       timeout=COMMAND_TIMEOUT)
        except aiosmtplib.SMTPSenderRefused as exc:
            if exc.code >= 500:
                return [self._result(r, exc.code, exc.message) for r in recipients]
            raise HopFailure(exc.message, code=exc.code,
                             enhanced=enhanced_of(exc.code, exc.message) or "4.0.0",
                             remote_host=self.remote_host) from None
        except (aiosmtplib.SMTPException, OSError, UnicodeError) as exc:
            raise HopFailure(f"lost connection with {self.remote_host} at MAIL FROM: {exc}",
                             remote_host=self.remote_host) from None
        del response
        results: dict[int, Attempt] = {}
        accepted: list[RecipientState] = []
        for state in recipients:
            rcpt_options = []
            if dsn and state.recipient.notify:
                rcpt_options.append("NOTIFY=" + ",".join(sorted(state.recipient.notify)))
            if dsn and state.recipient.orcpt:
                kind, _, address = state.recipient.orcpt.partition(";")
                rcpt_options.append(f"ORCPT={kind};{xtext_encode(address)}")
            try:
                await smtp.rcpt(state.recipient.address, options=rcpt_options, encoding=encoding,
                                timeout=COMMAND_TIMEOUT)
            except aiosmtplib.SMTPRecipientRefused as exc:
                results[state.id] = self._result(state, exc.code, exc.message)
                continue
            except (aiosmtplib.SMTPException, OSError, UnicodeError) as exc:
                return self._lost(recipients, results, f"at RCPT TO: {exc}")
            accepted.append(state)
        if accepted:
            try:
                response = await smtp.data(content, timeout=DATA_TIMEOUT)
            except aiosmtplib.SMTPDataError as exc:
                for state in accepted:
                    results[state.id] = self._result(state, exc.code, exc.message)
            except (aiosmtplib.SMTPException, OSError) as exc:
                return self._lost(recipients, results, f"during DATA: {exc}")
            else:
                for state in accepted:
                    results[state.id] = self._result(state, response.code, response.message,
                                                     dsn_passed=dsn)
        else:
            await self.reset()
        return [results[state.id] for state in recipients]

    def _lost(self, recipients: Sequence[RecipientState], results: dict[int, Attempt],
              where: str) -> list[Attempt]:
        """The connection broke mid-transaction: what was decided stays decided, the
        rest is temporary (RFC 5321 4.1.1.4: no 250 after the dot, no delivery)."""
        self.smtp.close()
        text = f"lost connection with {self.remote_host} {where}"
        return [results.get(r.id) or self._result(r, 0, text, permanent=False, enhanced="4.4.2")
                for r in recipients]


def _family(address: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET


async def _connect_socket(address: str, port: int) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, port)),
                               CONNECT_TIMEOUT)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_session(*, host: str, address: str, port: int, local_hostname: str,
                       tls, implicit_tls: bool = False, credentials: tuple[str, str] | None = None,
                       key: tuple = ()) -> Session:
    """Connect to `address`:`port` (the host `host`), read the greeting, EHLO, and do
    TLS as `tls` (a `pymail.delivery.remote.policy.MxTls`, or None for none at all)
    says; AUTH with `credentials` (only over TLS).  Raises `HopFailure`."""
    remote = f"{host}[{address}]" if host != address else f"[{address}]"
    if port != 25:
        remote += f":{port}"
    try:
        sock = await _connect_socket(address, port)
    except (OSError, asyncio.TimeoutError) as exc:
        raise HopFailure(f"connect to {remote} failed: {exc or 'timed out'}",
                         remote_host=remote) from None
    smtp = aiosmtplib.SMTP(hostname=host, sock=sock, local_hostname=local_hostname,
                           timeout=GREETING_TIMEOUT, validate_certs=False, start_tls=False,
                           use_tls=implicit_tls,
                           tls_context=tls.context if implicit_tls and tls is not None else None)
    try:
        try:
            await smtp.connect(timeout=GREETING_TIMEOUT)
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise HopFailure(f"{remote} greeted with: {exc.code} {exc.message}", code=exc.code,
                             enhanced=enhanced_of(exc.code, exc.message) or "4.4.1",
                             remote_host=remote) from None
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise HopFailure(f"no greeting from {remote}: {exc}", remote_host=remote,
                             tls_failed=implicit_tls) from None
        await _hello(smtp, remote)
        outcome = "none"
        if implicit_tls:
            outcome = _describe(tls, smtp)
        elif tls is not None:
            outcome = await _starttls(smtp, tls, remote)
        if credentials is not None:
            if outcome == "none":
                raise HopFailure(f"not sending the password to {remote} without TLS",
                                 enhanced="4.7.10", remote_host=remote)
            try:
                await smtp.login(*credentials, timeout=COMMAND_TIMEOUT)
            except aiosmtplib.SMTPAuthenticationError as exc:
                raise HopFailure(f"{remote} refused our login: {exc.code} {exc.message}",
                                 code=exc.code, enhanced="4.7.8", remote_host=remote) from None
            except aiosmtplib.SMTPException as exc:
                raise HopFailure(f"AUTH at {remote} failed: {exc}", remote_host=remote) from None
    except BaseException:
        smtp.close()
        raise
    return Session(smtp, remote, outcome, key)


async def _hello(smtp: aiosmtplib.SMTP, remote: str) -> None:
    try:
        await smtp.ehlo(timeout=COMMAND_TIMEOUT)
    except aiosmtplib.SMTPHeloError as exc:
        if exc.code < 500:
            raise HopFailure(f"{remote} refused EHLO: {exc.code} {exc.message}", code=exc.code,
                             remote_host=remote) from None
        try:  # RFC 5321 4.1.4: a server without EHLO still takes HELO
            await smtp.helo(timeout=COMMAND_TIMEOUT)
        except aiosmtplib.SMTPException as helo:
            raise HopFailure(f"{remote} refused EHLO and HELO: {helo}", remote_host=remote) from None
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise HopFailure(f"lost connection with {remote} at EHLO: {exc}", remote_host=remote) from None


def _describe(tls, smtp: aiosmtplib.SMTP) -> str:
    ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
    if ssl_object is None:
        return "none"
    return tls.describe(ssl_object) if tls is not None else str(ssl_object.version())


async def _starttls(smtp: aiosmtplib.SMTP, tls, remote: str) -> str:
    """STARTTLS as the policy `tls` says (RFC 3207); the TLS outcome for the log."""
    if not smtp.supports_extension("starttls"):
        if tls.required:
            raise HopFailure(f"{remote} does not offer STARTTLS, which {tls.name} requires",
                             enhanced="4.7.5", remote_host=remote, tls_failed=True)
        return "none"
    try:
        await smtp.starttls(server_hostname=tls.server_hostname, tls_context=tls.context,
                            timeout=COMMAND_TIMEOUT)
    except aiosmtplib.SMTPResponseException as exc:  # a refusal: the session is still plain
        if tls.required:
            raise HopFailure(f"{remote} refused STARTTLS ({exc.code} {exc.message}), which "
                             f"{tls.name} requires", enhanced="4.7.5", remote_host=remote,
                             tls_failed=True) from None
        return "none"
    except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
        raise HopFailure(f"TLS handshake with {remote} failed: {exc}", enhanced="4.7.5",
                         remote_host=remote, tls_failed=True) from None
    ssl_object = smtp.transport.get_extra_info("ssl_object") if smtp.transport else None
    problem = tls.check(ssl_object) if ssl_object is not None else "no TLS session"
    if problem is not None:
        if tls.required:
            raise HopFailure(f"TLS with {remote} does not meet {tls.name}: {problem}",
                             enhanced="4.7.5", remote_host=remote, tls_failed=True)
        log.info("TLS with %s: %s (%s; delivering anyway)", remote, problem, tls.name)
    await _hello(smtp, remote)  # RFC 3207 4.2: forget what was learnt before TLS
    return tls.describe(ssl_object)
