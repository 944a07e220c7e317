"""Delivery to remote servers: `RemoteDelivery`, the `RemoteSender` the queue runner uses.

For one (domain, route) group of one message (pymail.delivery.attempt):

1. the hosts to try (`mx.plan_route`: MX in preference order, equal ones shuffled; the
   implicit MX; null MX and NXDOMAIN permanent; DNS failure temporary);
2. the domain's TLS policy (`policy.TlsPolicy`: REQUIRETLS, ``TLS-Required: No``,
   MTA-STS), then per host its addresses (through pymail's resolver, AD bit kept) and
   its TLS requirement (DANE when authenticated, else what the domain's policy says);
3. a session (`client.open_session`, or an idle one reused: several messages to one
   host share a connection, RSET between them) and one transaction
   (`client.Session.transaction`).  A host that cannot be reached, greets with an
   error, refuses MAIL FROM with 4xx or cannot meet the TLS policy is passed over for
   the next; the attempt ends with the first host that decides the recipients.

Opportunistic TLS (no policy applies) that fails in the handshake is retried on a new
connection in plaintext, and said so in the log: that is what "opportunistic" means
(RFC 7435).  When a policy applies (MTA-STS enforce, DANE, REQUIRETLS, the smarthost's
``relay_tls = "starttls"``) there is never a plaintext fallback: the recipients stay
queued.

One log line per recipient per attempt, in Postfix's words: queue id, ``to=<>``,
``relay=host[ip]:port``, ``tls=``, ``dsn=``, ``status=sent|deferred|bounced`` and the
reply.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import email.parser
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pymail.config.schema import Config
from pymail.delivery.attempt import Attempt
from pymail.delivery.remote.client import HopFailure, Session, open_session
from pymail.delivery.remote.mx import Hop, plan_route
from pymail.delivery.remote.policy import MxTls, TlsPolicy, pkix_context
from pymail.dns.model import DnsError, Resolver, addresses
from pymail.store.queue import QueuedMessage, RecipientState

__all__ = ["RemoteDelivery"]

log = logging.getLogger("pymail.delivery")

#: An unused connection is closed after this (Postfix's smtp_connection_cache_time_limit: 2 s).
IDLE_SECONDS = 5.0
REUSE_LIMIT = 100  #: messages over one connection at most
MAX_ADDRESSES = 2  #: addresses of one host tried per attempt (the rest next time)
HEADER_SCAN = 64 * 1024


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def tls_required_no(content: bytes) -> bool:
    """Whether the message has ``TLS-Required: No`` (RFC 8689 section 5): its sender
    asks that TLS policies (MTA-STS, DANE) not block its delivery."""
    head = content[:HEADER_SCAN].split(b"\r\n\r\n", 1)[0]
    if b"tls-required" not in head.lower():
        return False
    parsed = email.parser.BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
    return any(value.strip().lower() == "no" for value in parsed.get_all("TLS-Required", []))


def read_credentials(path: Path | None) -> tuple[str, str] | None:
    """``[delivery] relay_auth_file``: first line ``username:password``."""
    if path is None:
        return None
    line = path.read_text(encoding="utf-8").splitlines()[0] if path.exists() else ""
    user, sep, password = line.partition(":")
    if not sep or not user:
        raise ValueError(f"{path}: the first line must be username:password")
    return user, password


class RemoteDelivery:
    """The `RemoteSender` (see the module docstring)."""

    def __init__(self, *, config: Config, resolver: Resolver,
                 clock: Callable[[], _dt.datetime] = _now, policy: TlsPolicy | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.resolver = resolver
        self.clock = clock
        self.policy = policy or TlsPolicy(config=config, resolver=resolver, clock=clock)
        self.rng = rng or random.Random()
        self._idle: dict[tuple, list[tuple[float, Session]]] = {}
        self._reaper: asyncio.Task | None = None
        self._plaintext_after_tls_failure: dict[tuple[str, int], float] = {}

    # ------------------------------------------------------------------ the RemoteSender

    async def send(self, message: QueuedMessage, recipients: Sequence[RecipientState],
                   content: bytes) -> list[Attempt]:
        try:
            attempts = await self._send(message, recipients, content)
        except Exception as exc:  # a defect here must not lose or bounce mail
            log.exception("%s: delivery attempt failed unexpectedly", message.queue_id)
            attempts = [Attempt(r.id, 0, f"internal error: {exc}", enhanced="4.3.0")
                        for r in recipients]
        for state, attempt in zip(recipients, attempts):
            self._log(message, state, attempt)
        return attempts

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        idle, self._idle = self._idle, {}
        await asyncio.gather(*(s.quit() for sessions in idle.values() for _, s in sessions))
        await self.policy.close()

    # ------------------------------------------------------------------ one attempt

    async def _send(self, message: QueuedMessage, recipients: Sequence[RecipientState],
                    content: bytes) -> list[Attempt]:
        first = recipients[0].recipient
        plan = await plan_route(self.resolver, self.config, first.domain, first.route, rng=self.rng)
        if plan.failure is not None:
            code, enhanced, text, permanent = plan.failure
            return [Attempt(r.id, code, text, enhanced=enhanced, permanent=permanent)
                    for r in recipients]
        domain_tls = None
        if any(hop.mx for hop in plan.hops):
            domain_tls = await self.policy.for_domain(
                first.domain, requiretls=message.requiretls,
                tls_required_no=tls_required_no(content))
        last = HopFailure(f"no usable host for {first.domain}", enhanced="4.4.4")
        for hop in plan.hops:
            if hop.mx and domain_tls is not None and not domain_tls.allows(hop.name):
                last = HopFailure(f"MX host {hop.name} is not in the MTA-STS policy of "
                                  f"{first.domain}", enhanced="4.7.5")
                continue
            try:
                found, authenticated = await self._addresses(hop)
            except HopFailure as failure:
                last = failure
                continue
            for address in found[:MAX_ADDRESSES]:
                tls = await self._tls(hop, domain_tls, hop.authenticated and authenticated)
                if tls is not None and tls.error is not None:
                    last = HopFailure(f"{hop.name}: {tls.error}", enhanced="4.7.5",
                                      remote_host=f"{hop.name}[{address}]")
                    continue
                try:
                    session = await self._session(hop, address, tls)
                except HopFailure as failure:
                    last = failure
                    continue
                try:
                    attempts = await session.transaction(message, recipients, content)
                except HopFailure as failure:
                    await session.quit()
                    if failure.enhanced.startswith("5."):
                        return [Attempt(r.id, failure.code, failure.text, enhanced=failure.enhanced,
                                        remote_host=failure.remote_host, permanent=True)
                                for r in recipients]
                    last = failure
                    continue
                self._keep(session)
                return attempts
        return [Attempt(r.id, last.code, last.text, enhanced=last.enhanced,
                        remote_host=last.remote_host, permanent=False) for r in recipients]

    async def _addresses(self, hop: Hop) -> tuple[list[str], bool]:
        if hop.is_address:
            return [hop.name], False
        try:
            found, authenticated = await addresses(self.resolver, hop.name)
        except DnsError as exc:
            raise HopFailure(f"DNS lookup of {hop.name} failed: {exc}", enhanced="4.4.3") from None
        if not found:
            raise HopFailure(f"{hop.name} has no address (A/AAAA)", enhanced="4.4.4")
        return found, authenticated

    async def _tls(self, hop: Hop, domain_tls, authenticated: bool) -> MxTls | None:
        if hop.relay:
            mode = self.config.delivery.relay_tls
            if mode == "none":
                return None
            return MxTls(name=f"relay {mode}", required=True, context=pkix_context(),
                         server_hostname=hop.name)
        if domain_tls is None:  # a transport's host: opportunistic, as Postfix's default
            return await self.policy.for_mx(None, hop.name, mx_authenticated=False)
        return await self.policy.for_mx(domain_tls, hop.name, mx_authenticated=authenticated)

    # ------------------------------------------------------------------ sessions

    async def _session(self, hop: Hop, address: str, tls: MxTls | None) -> Session:
        key = (address, hop.port, tls.name if tls else "none", hop.relay)
        while self._idle.get(key):
            _, session = self._idle[key].pop()
            if session.usable and await session.reset():
                return session
            await session.quit()
        credentials = None
        if hop.relay:
            try:
                credentials = read_credentials(self.config.delivery.relay_auth_file)
            except (OSError, ValueError) as exc:
                raise HopFailure(f"relay_auth_file: {exc}", enhanced="4.3.5") from None
        implicit = hop.relay and self.config.delivery.relay_tls == "implicit"
        opportunistic = tls is not None and not tls.required
        if opportunistic and self._plaintext_after_tls_failure.get((address, hop.port), 0) > time.monotonic():
            tls = None
        try:
            return await self._open(hop, address, tls, implicit, credentials, key)
        except HopFailure as failure:
            if not (failure.tls_failed and opportunistic):
                raise
            # Opportunistic TLS failed: plaintext, as RFC 7435 allows when no policy applies
            log.info("%s: %s; no TLS policy applies, retrying without TLS", hop.name, failure.text)
            self._plaintext_after_tls_failure[(address, hop.port)] = time.monotonic() + 3600
            return await self._open(hop, address, None, implicit, credentials, key)

    async def _open(self, hop: Hop, address: str, tls: MxTls | None, implicit: bool,
                    credentials: tuple[str, str] | None, key: tuple) -> Session:
        return await open_session(host=hop.name, address=address, port=hop.port,
                                  local_hostname=self.config.server.hostname, tls=tls,
                                  implicit_tls=implicit, credentials=credentials, key=key)

    def _keep(self, session: Session) -> None:
        if not session.usable or session.messages >= REUSE_LIMIT:
            asyncio.ensure_future(session.quit())
            return
        self._idle.setdefault(session.key, []).append((time.monotonic(), session))
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap())

    async def _reap(self) -> None:
        """Close sessions idle for IDLE_SECONDS (QUIT, RFC 5321 4.1.1.10)."""
        while self._idle:
            await asyncio.sleep(IDLE_SECONDS / 2)
            cutoff = time.monotonic() - IDLE_SECONDS
            for key in list(self._idle):
                keep = [(t, s) for t, s in self._idle[key] if t > cutoff]
                old = [s for t, s in self._idle[key] if t <= cutoff]
                if keep:
                    self._idle[key] = keep
                else:
                    del self._idle[key]
                for session in old:
                    await session.quit()

    # ------------------------------------------------------------------ the log

    def _log(self, message: QueuedMessage, state: RecipientState, attempt: Attempt) -> None:
        status = ("sent" if attempt.delivered else "bounced" if attempt.permanent else "deferred")
        reply = " ".join(attempt.text.split())
        log.info("%s: to=<%s>, relay=%s, tls=%s, dsn=%s, status=%s (%s%s)", message.queue_id,
                 state.recipient.address, attempt.remote_host or "none", attempt.tls or "none",
                 attempt.enhanced or "-", status, f"{attempt.code} " if attempt.code else "", reply)
