"""The inbound checks of one SMTP session, and the verdict on each of its messages.

`Checks` is made once per process from ``[checks]`` (`Checks.from_config`); the MX and
submission handlers ask it for a `CheckSession` per SMTP session.  The work starts as
early as its inputs exist (issue 12, item 1):

* at the session's first MAIL: iprev, the client address's forward-confirmed PTR
  (kept for the session's later transactions);
* at MAIL: SPF for the envelope sender (RFC 7208; the HELO identity for ``<>``);
* at the end of DATA (`CheckSession.verdict`): DKIM, ARC, Rspamd and ClamAV
  concurrently, then DMARC once SPF and DKIM are known.

All of it within ``checks.timeout`` seconds from the end of DATA: a check still running
then is that check's temporary error (``temperror``; a scanner's ``error``), never a hang.

Who is checked: mail from the MX's clients gets everything configured, except that the
sender-authentication checks (SPF, DKIM, DMARC, ARC, iprev) are skipped for
``checks.skip_networks`` (this host's own programs).  Mail of an authenticated user
(submission) is not SPF/DMARC-checked -- it is ours -- but is virus-scanned, and
Rspamd-scanned with its ``User`` when ``checks.rspamd_submission`` is on.

The verdict (`pymail.checks.verdict`) maps every outcome to an action by the policy
(`pymail.config.checks`) and says what the pipeline does: refuse with a reply, or
deliver with header edits (Authentication-Results and the scanners' headers) and the
local copies in INBOX or Junk.

Invariant: no check raises into the SMTP session; every outage is a result, counted,
logged once per change (`pymail.checks.health`) and acted on by the policy.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pymail.checks.health import ServiceHealth, count_result
from pymail.checks.results import (
    ArcResult,
    DkimResult,
    DmarcResult,
    IprevResult,
    ScannerError,
    SpfResult,
)
from pymail.checks.verdict import Findings, Verdict, decide

if TYPE_CHECKING:
    from pymail.checks.clamav import ClamdClient
    from pymail.checks.rspamd import RspamdClient
    from pymail.config.checks import ChecksConfig
    from pymail.config.schema import Config
    from pymail.delivery.spool import MessageContent
    from pymail.delivery.transaction import ClientFacts, Transaction
    from pymail.dns import Resolver

__all__ = ["CheckSession", "Checks"]

log = logging.getLogger("pymail.checks")
T = TypeVar("T")


class Checks:
    """The configured checks of this process (see the module docstring)."""

    def __init__(self, config: ChecksConfig, *, hostname: str, resolver: Resolver | None,
                 rspamd: RspamdClient | None = None, clamd: ClamdClient | None = None) -> None:
        self.config = config
        self.hostname = hostname
        self.resolver = resolver
        self.rspamd = rspamd
        self.clamd = clamd
        self.rspamd_health = ServiceHealth("rspamd", config.action("rspamd", "error"))
        self.clamd_health = ServiceHealth("clamav", config.action("clamav", "error"))
        self._skip = [ipaddress.ip_network(n) for n in config.skip_networks]
        authenticating = resolver is not None
        self.spf = config.spf and authenticating
        self.dkim = config.dkim and authenticating
        self.dmarc = config.dmarc and self.spf and self.dkim
        self.arc = config.arc and authenticating
        self.iprev = config.iprev and authenticating

    @classmethod
    def from_config(cls, config: Config, resolver: Resolver | None) -> Checks:
        checks = config.checks
        rspamd = clamd = None
        if checks.rspamd_url:
            from pymail.checks.rspamd import RspamdClient

            rspamd = RspamdClient(checks.rspamd_url, timeout=checks.rspamd_timeout)
        if checks.clamav:
            from pymail.checks.clamav import ClamdClient

            clamd = ClamdClient(checks.clamav, timeout=checks.clamav_timeout,
                                max_size=checks.clamav_max_size)
        return cls(checks, hostname=config.server.hostname, resolver=resolver, rspamd=rspamd,
                   clamd=clamd)

    def describe(self) -> str:
        """One start-up line: which checks are on, and why the others are off."""
        names = ("spf", "dkim", "dmarc", "arc", "iprev")
        on = [n for n in names if getattr(self, n)]
        off = [n for n in names if not getattr(self, n)]
        parts = [f"inbound checks: {' '.join(on) if on else 'no sender authentication'}"]
        parts.append(f"rspamd {self.config.rspamd_url}" if self.rspamd else "rspamd off (no rspamd_url)")
        parts.append(f"clamav {self.config.clamav}" if self.clamd else "clamav off (no clamav)")
        if off:
            parts.append("off: " + " ".join(off))
        return "; ".join(parts)

    @property
    def active(self) -> bool:
        return any((self.spf, self.dkim, self.arc, self.iprev, self.rspamd, self.clamd))

    def session(self, client: ClientFacts) -> CheckSession:
        return CheckSession(self, client)

    def authenticates(self, client: ClientFacts) -> bool:
        """Whether mail of `client` gets the sender-authentication checks."""
        if client.user is not None or client.service not in ("smtp",):
            return False
        try:
            address = ipaddress.ip_address(client.ip)
        except ValueError:
            return True
        return not any(address in network for network in self._skip)

    async def health(self) -> list[tuple[str, bool, str]]:
        """(scanner, up, detail) for each configured scanner, asked now (/healthz)."""
        out = []
        for name, client, health in (("rspamd", self.rspamd, self.rspamd_health),
                                     ("clamav", self.clamd, self.clamd_health)):
            if client is None:
                continue
            try:
                await asyncio.wait_for(client.ping(), 5.0)
            except (ScannerError, asyncio.TimeoutError) as e:
                health.record_failure(str(e) or "no answer within 5 s")
                out.append((name, False, health.describe()))
            else:
                health.record_ok()
                out.append((name, True, "up"))
        return out

    async def close(self) -> None:
        if self.rspamd is not None:
            await self.rspamd.close()


class CheckSession:
    """The checks of one SMTP session (see the module docstring)."""

    def __init__(self, checks: Checks, client: ClientFacts) -> None:
        self.checks = checks
        self.client = client
        self.authenticate = checks.authenticates(client)
        self._iprev: asyncio.Task[IprevResult] | None = None
        self._spf: asyncio.Task[SpfResult] | None = None
        self._spf_identity = "mailfrom"

    def mail_from(self, client: ClientFacts, sender: str, helo: str) -> None:
        """A transaction of `client` starts: begin iprev (once per session) and SPF."""
        self.reset()
        self.client = client
        self.authenticate = self.checks.authenticates(client)
        if not self.authenticate:
            return
        resolver = self.checks.resolver
        assert resolver is not None
        if self.checks.iprev and self._iprev is None:
            from pymail.checks.iprev import check_iprev

            self._iprev = asyncio.ensure_future(check_iprev(resolver, self.client.ip))
        if self.checks.spf:
            from pymail.checks.spf import check_spf

            self._spf_identity = "mailfrom" if sender else "helo"
            self._spf = asyncio.ensure_future(check_spf(
                resolver, ip=self.client.ip, sender=sender, helo=helo,
                timeout=self.checks.config.timeout))

    def reset(self) -> None:
        """RSET or a new MAIL: the transaction's SPF answer is no longer wanted."""
        if self._spf is not None and not self._spf.done():
            self._spf.cancel()
        self._spf = None

    def close(self) -> None:
        """The session ended: stop whatever still runs."""
        self.reset()
        if self._iprev is not None and not self._iprev.done():
            self._iprev.cancel()

    async def verdict(self, txn: Transaction, message: MessageContent) -> Verdict:
        """Every check's outcome for `message` and what to do with it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.checks.config.timeout
        findings = Findings()
        jobs: list[Awaitable[None]] = []
        raw: bytes | None = None
        if self.authenticate and (self.checks.dkim or self.checks.arc):
            raw = await _read(message)
        if raw is not None and self.checks.dkim:
            jobs.append(self._dkim(raw, deadline, findings))
        if raw is not None and self.checks.arc:
            jobs.append(self._arc(raw, deadline, findings))
        if self.checks.rspamd is not None and (self.authenticate or self.client.user is None
                                               or self.checks.config.rspamd_submission):
            jobs.append(self._rspamd(txn, message, deadline, findings))
        if self.checks.clamd is not None:
            jobs.append(self._clamav(message, deadline, findings))
        if self._iprev is not None:
            jobs.append(self._await_iprev(deadline, findings))
        if self._spf is not None:
            jobs.append(self._await_spf(deadline, findings))
        await asyncio.gather(*jobs)
        if raw is not None and self.checks.dmarc:
            await self._dmarc(raw, deadline, findings)
        findings.authenticated = self.authenticate
        verdict = decide(findings, self.checks.config, authserv_id=self.checks.hostname)
        for check, outcome in verdict.outcomes:
            count_result(check, outcome)
        return verdict

    # -- each check, bounded by the deadline -----------------------------------------

    async def _await_iprev(self, deadline: float, findings: Findings) -> None:
        assert self._iprev is not None
        findings.iprev = await _bounded(asyncio.shield(self._iprev), deadline,
                                        IprevResult("temperror", self.client.ip))

    async def _await_spf(self, deadline: float, findings: Findings) -> None:
        assert self._spf is not None
        findings.spf = await _bounded(self._spf, deadline, SpfResult(
            "temperror", self._spf_identity, "", "", "timed out"))

    async def _dkim(self, raw: bytes, deadline: float, findings: Findings) -> None:
        from pymail.checks.dkimverify import verify_dkim

        resolver = self.checks.resolver
        findings.dkim = await _bounded(
            verify_dkim(resolver, raw, min_key_bits=self.checks.config.dkim_min_key_bits,
                        timeout=_left(deadline)),
            deadline, DkimResult())
        if findings.dkim is None:
            findings.dkim = DkimResult()

    async def _arc(self, raw: bytes, deadline: float, findings: Findings) -> None:
        from pymail.checks.arc import verify_arc

        findings.arc = await _bounded(verify_arc(self.checks.resolver, raw, timeout=_left(deadline)),
                                      deadline, ArcResult("fail", reason="timed out"))

    async def _dmarc(self, raw: bytes, deadline: float, findings: Findings) -> None:
        from pymail.checks.dmarc import check_dmarc

        head = raw[: raw.find(b"\r\n\r\n") + 4] if b"\r\n\r\n" in raw else raw
        findings.dmarc = await _bounded(
            check_dmarc(self.checks.resolver, from_header=head, spf=findings.spf,
                        dkim=findings.dkim or DkimResult(), timeout=_left(deadline)),
            deadline, DmarcResult("temperror", "", reason="timed out"))

    async def _rspamd(self, txn: Transaction, message: MessageContent, deadline: float,
                      findings: Findings) -> None:
        from pymail.checks.rspamd import RspamdMeta

        rspamd = self.checks.rspamd
        assert rspamd is not None
        client = txn.client
        tls_version, _, tls_cipher = (client.tls or "").partition(" ")
        iprev = None
        if self._iprev is not None and self._iprev.done() and not self._iprev.cancelled() \
                and self._iprev.exception() is None:
            iprev = self._iprev.result()
        meta = RspamdMeta(
            ip=client.ip, helo=client.helo,
            hostname=iprev.name if iprev is not None and iprev.result == "pass" else "",
            mail_from=txn.sender, rcpts=[r.address for r in txn.recipients],
            queue_id=txn.queue_id, user=client.user.address if client.user else None,
            tls_cipher=tls_cipher or None, tls_version=tls_version or None)
        try:
            async with asyncio.timeout_at(deadline):
                findings.spam = await rspamd.check(message, meta)
        except (ScannerError, TimeoutError) as e:
            findings.spam_error = str(e) or "no answer in time"
            self.checks.rspamd_health.record_failure(findings.spam_error)
        else:
            self.checks.rspamd_health.record_ok()

    async def _clamav(self, message: MessageContent, deadline: float, findings: Findings) -> None:
        clamd = self.checks.clamd
        assert clamd is not None
        try:
            async with asyncio.timeout_at(deadline):
                findings.virus = await clamd.scan(message)
        except (ScannerError, TimeoutError) as e:
            findings.virus_error = str(e) or "no answer in time"
            self.checks.clamd_health.record_failure(findings.virus_error)
        else:
            if not findings.virus.skipped:
                self.checks.clamd_health.record_ok()


def _left(deadline: float) -> float:
    return max(0.1, deadline - asyncio.get_running_loop().time())


async def _bounded(awaitable: Awaitable[T], deadline: float, on_timeout: T) -> T:
    """`awaitable`'s result, or `on_timeout` once `deadline` passed (it is cancelled)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await awaitable
    except TimeoutError:
        return on_timeout


async def _read(message: MessageContent) -> bytes:
    """The whole message, read in a thread when it is a spool file."""
    if message.data is not None:
        return message.data
    path: Path | None = message.path
    assert path is not None
    return await asyncio.to_thread(path.read_bytes)

