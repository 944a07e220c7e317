"""The doctor's listener checks: every address of every ``[listen]`` service answers
with the right greeting (the seed's ``telnet mail.example.com 25``), its TLS is valid for
the host name, not expired and TLS 1.2+ only, and — when a test account is given — IMAP,
POP3 and submission accept its login.

Per listener address, up to four checks: *answers* (greeting; STARTTLS offered where the
service has it), *TLS certificate* (the chain verifies against the trust store for
``server.hostname``: RFC 6125 name matching as Python's ssl does it; days to expiry,
warning below 14), *TLS versions* (a client offering only TLS 1.0/1.1 is refused:
RFC 8996) and *login*.  Wildcard addresses are probed on the loopback of their family.

Only the MX listener's failures cost points (mail cannot arrive, or arrives in clear);
the others fail the run without touching the deliverability score.
"""

from __future__ import annotations

import base64
import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from pymail.config.types import split_hostport
from pymail.ops.doctor.probe import Conversation, ProbeError, connect, probe_address
from pymail.ops.doctor.report import Report

__all__ = ["Account", "check_listeners"]

EXPIRY_WARNING_DAYS = 14

#: [listen] key -> (protocol, how TLS starts: implicit / starttls / none)
SERVICES = {
    "smtp": ("smtp", "starttls"), "submission": ("smtp", "starttls"),
    "submissions": ("smtp", "implicit"), "imap": ("imap", "starttls"),
    "imaps": ("imap", "implicit"), "pop3": ("pop3", "starttls"),
    "pop3s": ("pop3", "implicit"), "https": ("http", "implicit"),
    "web": ("http", "none"), "http": ("http", "none"),
}
LOGIN_SERVICES = {"submission", "submissions", "imap", "imaps", "pop3", "pop3s"}


@dataclass(frozen=True)
class Account:
    """A test account for the login checks (never logged, never printed)."""

    address: str
    password: str


def _quote(text: str) -> str:
    """An IMAP quoted string (RFC 3501 section 4.3)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def trusting_context(cafile: Path | None) -> ssl.SSLContext:
    """What a careful client uses: the system's trust store (or `cafile`), host name
    checked."""
    return ssl.create_default_context(cafile=str(cafile) if cafile else None)


def _any_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _old_tls_context() -> ssl.SSLContext:
    """A client that offers only TLS 1.0 and 1.1 (for the versions check)."""
    context = _any_context()
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


class _Probe:
    """Open one listener the way its protocol does, TLS included."""

    def __init__(self, service: str, host: str, port: int, hostname: str, timeout: float) -> None:
        self.service = service
        self.protocol, self.tls_mode = SERVICES[service]
        self.host, self.port = host, port
        self.hostname = hostname
        self.timeout = timeout
        self.greeting = ""
        self.starttls_offered = True

    async def open(self, context: ssl.SSLContext | None) -> Conversation:
        """Connected, greeted and (with `context`) in TLS; ProbeError/SSLError else."""
        implicit = context if self.tls_mode == "implicit" else None
        conv = await connect(self.host, self.port, context=implicit,
                             server_hostname=self.hostname, timeout=self.timeout)
        try:
            if self.protocol != "http":
                self.greeting = await self._greeting(conv)
            if context is not None and self.tls_mode == "starttls":
                await self._starttls(conv, context)
            return conv
        except BaseException:
            await conv.close()
            raise

    async def _greeting(self, conv: Conversation) -> str:
        if self.protocol == "smtp":
            code, lines = await conv.smtp_reply()
            if code != 220:
                raise ProbeError(f"greeting {code} {lines[0] if lines else ''}")
            return lines[0]
        line = await conv.line()
        ok = "* OK" if self.protocol == "imap" else "+OK"
        if not line.upper().startswith(ok.upper()):
            raise ProbeError(f"greeting {line[:100]!r}, not {ok}")
        return line

    async def _starttls(self, conv: Conversation, context: ssl.SSLContext) -> None:
        if self.protocol == "smtp":
            code, lines = await conv.smtp(f"EHLO {self.hostname}")
            if code != 250:
                raise ProbeError(f"EHLO answered {code} {lines[0] if lines else ''}")
            if not any(x.upper().split()[:1] == ["STARTTLS"] for x in lines[1:]):
                self.starttls_offered = False
                raise ProbeError("STARTTLS is not offered after EHLO")
            code, lines = await conv.smtp("STARTTLS")
            if code != 220:
                raise ProbeError(f"STARTTLS answered {code} {lines[0] if lines else ''}")
        elif self.protocol == "imap":
            status, _ = await conv.imap("d1", "STARTTLS")
            if not status.upper().startswith("OK"):
                self.starttls_offered = False
                raise ProbeError(f"STARTTLS answered {status[:100]!r}")
        else:
            await conv.send("STLS")
            line = await conv.line()
            if not line.startswith("+OK"):
                self.starttls_offered = False
                raise ProbeError(f"STLS answered {line[:100]!r}")
        await conv.start_tls(context, self.hostname)


def _greeting_check(probe: _Probe) -> tuple[str, str, str]:
    """(status, detail, fix) for the greeting just read."""
    if probe.protocol == "smtp":
        named = probe.greeting.split()[:1]
        if not named or named[0].lower().rstrip(".") != probe.hostname:
            return ("warn", f"220 {probe.greeting[:80]}: the greeting names "
                    f"{named[0] if named else 'nothing'}, not {probe.hostname}",
                    "RFC 5321 section 4.3.1: the greeting starts with the server's own name; "
                    "set [server] hostname")
        return "ok", f"220 {probe.greeting[:80]}", ""
    if probe.protocol == "http":
        return "ok", probe.greeting, ""
    return "ok", probe.greeting[:80], ""


async def _http(conv: Conversation, hostname: str, path: str) -> str:
    await conv.send(f"GET {path} HTTP/1.1\r\nHost: {hostname}\r\nConnection: close\r\n")
    line = await conv.line()
    if not line.startswith("HTTP/1."):
        raise ProbeError(f"not an HTTP answer: {line[:80]!r}")
    return line


def _certificate_facts(conv: Conversation) -> tuple[str, dt.datetime | None]:
    """(TLS version, certificate expiry) of the served certificate."""
    tls = conv.tls()
    if tls is None:
        return "", None
    der = tls.getpeercert(binary_form=True)
    expiry = x509.load_der_x509_certificate(der).not_valid_after_utc if der else None
    return tls.version() or "", expiry


async def _login(probe: _Probe, conv: Conversation, account: Account) -> tuple[str, str]:
    """(status, detail) of a login with the test account on an open TLS connection."""
    if probe.protocol == "imap":
        status, _ = await conv.imap("d2", f"LOGIN {_quote(account.address)} {_quote(account.password)}")
        if not status.upper().startswith("OK"):
            return "fail", f"LOGIN answered {status[:100]}"
        await conv.imap("d3", "LOGOUT")
        return "ok", f"LOGIN {account.address} accepted"
    if probe.protocol == "pop3":
        await conv.send(f"USER {account.address}")
        line = await conv.line()
        if line.startswith("+OK"):
            await conv.send(f"PASS {account.password}")
            line = await conv.line()
        if not line.startswith("+OK"):
            return "fail", f"USER/PASS answered {line[:100]}"
        await conv.send("QUIT")  # no DELE was given: QUIT commits nothing
        return "ok", f"USER/PASS {account.address} accepted"
    code, lines = await conv.smtp(f"EHLO {probe.hostname}")
    if code != 250 or not any(x.upper().startswith("AUTH") for x in lines[1:]):
        return "fail", "AUTH is not offered after TLS"
    token = base64.b64encode(f"\0{account.address}\0{account.password}".encode()).decode()
    code, lines = await conv.smtp(f"AUTH PLAIN {token}")
    if code != 235:
        return "fail", f"AUTH PLAIN answered {code} {lines[0] if lines else ''}"
    await conv.smtp("QUIT")
    return "ok", f"AUTH PLAIN {account.address} accepted"


async def _versions(probe: _Probe) -> tuple[str, str]:
    """(status, detail) of a handshake offering only TLS 1.0/1.1."""
    try:
        context = _old_tls_context()
    except (ssl.SSLError, ValueError) as e:
        return "skip", f"this machine's OpenSSL cannot offer TLS 1.1 ({e})"
    try:
        conv = await probe.open(context)
    except ssl.SSLError as e:
        if "NO_PROTOCOLS_AVAILABLE" in str(e) or "no protocols available" in str(e):
            return "skip", "this machine's OpenSSL cannot offer TLS 1.1"
        return "ok", "TLS 1.0 and 1.1 refused"
    except ProbeError:
        return "ok", "TLS 1.0 and 1.1 refused"
    version = conv.tls().version() if conv.tls() else "?"
    await conv.close()
    return "fail", f"a client offering only TLS 1.0/1.1 got {version}"


async def check_one(report: Report, service: str, hostport: str, hostname: str,
                    trusting: ssl.SSLContext, account: Account | None, timeout: float) -> None:
    host, port = split_hostport(hostport)
    probe = _Probe(service, probe_address(host), port, hostname, timeout)
    name = f"{service} {hostport}"
    mx = service == "smtp"
    down = 3.0 if mx else 0.0

    if probe.tls_mode == "none":
        try:
            conv = await probe.open(None)
            try:
                path = "/healthz" if service == "http" else "/"
                probe.greeting = await _http(conv, hostname, path)
            finally:
                await conv.close()
        except ProbeError as e:
            report.add("listeners", f"{name} answers", "fail", str(e),
                       "is pymail running? ('systemctl status pymail', the log)")
            return
        if service == "http" and " 200 " not in probe.greeting + " ":
            report.add("listeners", f"{name} answers", "fail", f"GET /healthz: {probe.greeting}",
                       "a storage backend is not answering: see 'pymail' in the log")
            return
        report.add("listeners", f"{name} answers", "ok", probe.greeting)
        return

    trusted, reason = True, ""
    try:
        conv = await probe.open(trusting)
    except ssl.SSLCertVerificationError as e:
        trusted, reason = False, e.verify_message or str(e)
        try:
            conv = await probe.open(_any_context())
        except (ProbeError, ssl.SSLError) as e2:
            report.add("listeners", f"{name} answers", "fail", f"TLS failed: {e2}",
                       "see the TLS error in pymail's log", down)
            return
    except ssl.SSLError as e:
        report.add("listeners", f"{name} answers", "fail", f"TLS handshake failed: {e}",
                   "see the TLS error in pymail's log", down)
        return
    except ProbeError as e:
        fix = ("offer STARTTLS: configure [tls] cert/key or [acme]" if not probe.starttls_offered
               else "is pymail running and listening there? ('systemctl status pymail')")
        report.add("listeners", f"{name} answers", "fail", str(e), fix, down)
        return
    try:
        if probe.protocol == "http":
            probe.greeting = await _http(conv, hostname, "/")
        status, detail, fix = _greeting_check(probe)
        report.add("listeners", f"{name} answers", status, detail, fix)
        version, expiry = _certificate_facts(conv)
        _certificate_check(report, name, hostname, version, expiry, trusted, reason, mx)
        if service in LOGIN_SERVICES:
            if account is None:
                report.add("listeners", f"{name} login", "skip",
                           "no test account given (--login ADDRESS)")
            elif trusted:
                status, detail = await _login(probe, conv, account)
                report.add("listeners", f"{name} login", status, detail,
                           "check the password with 'pymail user passwd', and the log")
            else:
                report.add("listeners", f"{name} login", "skip",
                           "not sending a password over TLS that did not verify")
    except ProbeError as e:
        report.add("listeners", f"{name} answers", "fail", str(e), "see pymail's log", down)
    finally:
        await conv.close()
    status, detail = await _versions(probe)
    report.add("listeners", f"{name} TLS versions", status, detail,
               "pymail refuses TLS below 1.2 itself: is a proxy in front of it?")


def _certificate_check(report: Report, name: str, hostname: str, version: str,
                       expiry: dt.datetime | None, trusted: bool, reason: str, mx: bool) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    days = (expiry - now).total_seconds() / 86400 if expiry else None
    when = f"expires {expiry:%Y-%m-%d}" if expiry else "no certificate"
    if days is not None and days < 0:
        report.add("listeners", f"{name} TLS certificate", "fail",
                   f"{version}, the certificate expired on {expiry:%Y-%m-%d %H:%M}Z",
                   "renew it: 'pymail acme renew', or 'certbot renew' then 'systemctl reload pymail'",
                   1.0 if mx else 0.0)
    elif not trusted:
        report.add("listeners", f"{name} TLS certificate", "fail",
                   f"{version}, {reason} (checked for {hostname}; {when})",
                   "use a certificate from a public CA for [server] hostname: [acme], or "
                   "certbot's files in [tls] cert/key", 1.0 if mx else 0.0)
    elif days is not None and days < EXPIRY_WARNING_DAYS:
        report.add("listeners", f"{name} TLS certificate", "warn",
                   f"{version}, valid for {hostname}, but {when} (in {days:.1f} days)",
                   "renewal should have happened by now: 'pymail acme status' or 'certbot renew'")
    else:
        report.add("listeners", f"{name} TLS certificate", "ok",
                   f"{version}, valid for {hostname}, {when}")


async def check_listeners(report: Report, config, *, cafile: Path | None,  # noqa: ANN001
                          account: Account | None, timeout: float = 10.0) -> None:
    """Every configured listener address, in [listen] order."""
    hostname = config.server.hostname.lower().rstrip(".")
    trusting = trusting_context(cafile)
    for service in SERVICES:
        for hostport in getattr(config.listen, service):
            await check_one(report, service, hostport, hostname, trusting, account, timeout)
