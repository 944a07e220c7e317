"""The doctor's message tests: DKIM per domain, and the deliverability self-test — the
seed's mail-tester.com step, offline.

DKIM, per domain: the domain has a usable private key (``dkim.key_dir``), and a test
message signed by `DkimSigner` — the very signer the outbound queue uses — verifies
through DNS (`pymail.checks.dkimverify`, dkimpy): the published key is the private
key's, the record parses, the selector is the one that signs.

Deliverability: one realistic message (Date, Message-ID, MIME text, a From of ours) is
signed the same way and then judged as a receiving server judges mail coming from this
host's public address with our HELO name: SPF for that address and the envelope sender
(RFC 7208), DKIM (RFC 6376), DMARC alignment of both with the From domain (RFC 7489),
then Rspamd (``checks.rspamd_url``, /checkv2 with the same envelope facts) and, when
installed, SpamAssassin (``spamassassin -t -L``: local tests, no network).  What it does
not do: send the message over the Internet, or consult blocklists (no network here) —
mail-tester.com still sees what the world sees.

Scoring, like mail-tester.com (points off 10): SPF fail -2.5, softfail/neutral/none -1,
error -1.5; DKIM none -1.5, fail -2.5; DMARC fail -2 (no record: -0.5); content: the
larger of SpamAssassin's score and Rspamd's scaled to SpamAssassin's range (× 5 / its
reject score), when positive, at most 5.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import re
import secrets
import shutil
import time

from pymail.checks.dkimverify import verify_dkim
from pymail.checks.dmarc import check_dmarc
from pymail.checks.results import ScannerError
from pymail.checks.rspamd import RspamdClient, RspamdMeta
from pymail.checks.spf import check_spf
from pymail.delivery.dkim import DkimSigner
from pymail.delivery.dkimkeys import domain_keys
from pymail.delivery.spool import MessageContent
from pymail.dns.model import Resolver
from pymail.ops.doctor.report import Report

__all__ = ["check_deliverability", "check_dkim", "doctor_message"]

SPF_DEDUCTION = {"pass": 0.0, "softfail": 1.0, "neutral": 1.0, "none": 1.0, "fail": 2.5}
DKIM_NONE, DKIM_FAIL = 1.5, 2.5
DMARC_FAIL, DMARC_NONE = 2.0, 0.5
CONTENT_MAX = 5.0
SPAMASSASSIN_TIMEOUT = 120.0
RECIPIENT = "deliverability-test@verifier.pymail.invalid"


def doctor_message(sender: str, hostname: str, *, now: float | None = None) -> bytes:
    """A plain, well-formed message such as a person sends (RFC 5322 fields a receiver
    expects; nothing a filter would take for bulk mail)."""
    now = time.time() if now is None else now
    token = secrets.token_hex(8)
    return (
        f"From: pymail doctor <{sender}>\r\n"
        f"To: <{RECIPIENT}>\r\n"
        f"Subject: Deliverability check of {hostname}\r\n"
        f"Date: {email.utils.formatdate(now)}\r\n"
        f"Message-ID: <{token}.doctor@{hostname}>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
        "Hello,\r\n"
        "\r\n"
        f"this message was written by 'pymail doctor' on {hostname} to check that mail\r\n"
        "from this server is signed, authorised by SPF and aligned for DMARC, the way\r\n"
        "the receiving servers of your correspondents will check it.\r\n"
        "\r\n"
        "Nothing needs to be done about it.\r\n"
        "\r\n"
        "Regards,\r\n"
        "the postmaster\r\n"
    ).encode()


def _sign(signer: DkimSigner, message: bytes, domain: str) -> bytes:
    signature = signer.sign(message, None, domain)
    return (signature or b"") + message


async def check_dkim(report: Report, config, domain: str, resolver: Resolver) -> None:  # noqa: ANN001
    """Key present and a signed message verifying through DNS."""
    keys = domain_keys(config.dkim_key_dir, domain)
    usable = [k for k in keys if k.error is None]
    for k in keys:
        if k.error:
            report.add("dkim", f"DKIM key {k.path.name} of {domain}", "fail", k.error,
                       f"replace it: 'pymail dkim keygen {domain}'")
    if not config.dkim.sign:
        report.add("dkim", f"DKIM signing for {domain}", "fail", "[dkim] sign = false",
                   "set [dkim] sign = true: unsigned mail fails DMARC at many receivers")
        return
    if not usable:
        report.add("dkim", f"DKIM key for {domain}", "fail",
                   f"no key under {config.dkim_key_dir / domain}",
                   f"'pymail dkim keygen {domain}', then publish the record "
                   f"'pymail dns records {domain}' prints")
        return
    signer = DkimSigner(config.dkim_key_dir, selector=config.dkim.selector)
    signed = _sign(signer, doctor_message(f"postmaster@{domain}", config.server.hostname), domain)
    result = await verify_dkim(resolver, signed, min_key_bits=config.checks.dkim_min_key_bits)
    for sig in result.signatures:
        name = f"DKIM {sig.selector}._domainkey.{sig.domain} ({sig.algorithm})"
        if sig.result == "pass":
            report.add("dkim", name, "ok", "a signed test message verifies through DNS")
        else:
            report.add("dkim", name, "fail", f"{sig.result}: {sig.reason}",
                       f"publish the key 'pymail dns records {domain}' prints for "
                       f"{sig.selector}._domainkey.{domain}")
    if not result.signatures:
        report.add("dkim", f"DKIM signature for {domain}", "fail", "the signer made no signature",
                   "see the DKIM lines in pymail's log")


def _spamassassin_score(output: bytes) -> tuple[float, str] | None:
    """(score, tests) from the X-Spam-Status field ``spamassassin -t`` adds."""
    head = output.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0].decode("utf-8", "replace")
    m = re.search(r"(?mi)^X-Spam-Status:\s*\w+,\s*score=(-?[0-9.]+)((?:.*\n?[ \t].*)*)", head)
    if not m:
        return None
    tests = re.search(r"tests=([^\s]*(?:\s+[A-Z0-9_,]+)*)", m[2])
    names = re.sub(r"\s+", "", tests[1]) if tests else ""
    return float(m[1]), names.replace(",", ", ")


async def spamassassin(message: bytes) -> tuple[float, str] | str:
    """SpamAssassin's score and tests, or the reason there is none."""
    binary = shutil.which("spamassassin")
    if binary is None:
        return "SpamAssassin is not installed (Debian package spamassassin)"
    proc = await asyncio.create_subprocess_exec(
        binary, "-t", "-L", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(message), SPAMASSASSIN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"spamassassin gave no answer within {SPAMASSASSIN_TIMEOUT:g}s"
    found = _spamassassin_score(out)
    if found is None:
        return f"spamassassin -t gave no score (exit {proc.returncode}): " \
               f"{err.decode('utf-8', 'replace').strip()[:200]}"
    return found


async def check_deliverability(report: Report, config, sender: str, resolver: Resolver,  # noqa: ANN001
                               ip: str | None, ptr_name: str) -> None:
    """The offline mail-tester run for a message from `sender` leaving from `ip`."""
    hostname = config.server.hostname.lower().rstrip(".")
    domain = sender.rpartition("@")[2].lower()
    message = doctor_message(sender, hostname)
    if config.dkim.sign:
        message = _sign(DkimSigner(config.dkim_key_dir, selector=config.dkim.selector), message, domain)
    section = "deliverability"

    if ip is None:
        report.add(section, "SPF", "skip", "no public address of this host is known: set "
                   "[publish] ipv4 (and ipv6)")
        spf = None
    else:
        spf = await check_spf(resolver, ip=ip, sender=sender, helo=hostname)
        if spf.result == "pass":
            report.add(section, "SPF", "ok", f"pass for {ip} sending as {sender}")
        else:
            off = SPF_DEDUCTION.get(spf.result, 1.5)
            report.add(section, "SPF", "fail" if spf.result == "fail" else "warn",
                       f"{spf.result} for {ip} sending as {sender}"
                       + (f" ({spf.reason})" if spf.reason else ""),
                       f"publish the SPF record 'pymail dns records {domain}' prints", off)

    dkim = await verify_dkim(resolver, message, min_key_bits=config.checks.dkim_min_key_bits)
    passing = dkim.passing_domains()
    if passing:
        report.add(section, "DKIM", "ok", f"pass (d={', '.join(sorted(passing))})")
    elif not dkim.signatures:
        report.add(section, "DKIM", "fail", "the message is not signed",
                   f"'pymail dkim keygen {domain}' and [dkim] sign = true", DKIM_NONE)
    else:
        reasons = "; ".join(f"{s.result}: {s.reason}" for s in dkim.signatures)
        report.add(section, "DKIM", "fail", reasons,
                   f"publish the DKIM record 'pymail dns records {domain}' prints", DKIM_FAIL)

    dmarc = await check_dmarc(resolver, from_header=message, spf=spf, dkim=dkim,
                              random=lambda: 0.0)
    aligned = [n for n, ok in (("SPF", dmarc.spf_aligned), ("DKIM", dmarc.dkim_aligned)) if ok]
    if dmarc.result == "pass":
        report.add(section, "DMARC", "ok", f"pass, aligned: {' and '.join(aligned)} "
                   f"(policy {dmarc.policy})")
    elif dmarc.result == "none":
        report.add(section, "DMARC", "warn", f"no DMARC record for {dmarc.domain or domain}",
                   f"publish the _dmarc record 'pymail dns records {domain}' prints", DMARC_NONE)
    else:
        report.add(section, "DMARC", "fail", f"{dmarc.result}"
                   + (f": {dmarc.reason}" if dmarc.reason else "") + " (neither SPF nor DKIM "
                   "aligned with the From domain)" * (not aligned),
                   "fix SPF and DKIM above; both must be for the From domain", DMARC_FAIL)

    content: list[tuple[float, object]] = []
    if config.checks.rspamd_url:
        client = RspamdClient(config.checks.rspamd_url, timeout=config.checks.rspamd_timeout)
        meta = RspamdMeta(ip=ip or "127.0.0.1", helo=hostname, hostname=ptr_name,
                          mail_from=sender, rcpts=[RECIPIENT])
        data = MessageContent(len(message), hashlib.sha256(message).hexdigest(), data=message)
        try:
            verdict = await client.check(data, meta)
        except ScannerError as e:
            report.add(section, "Rspamd", "fail", str(e), "is Rspamd running? ('systemctl status rspamd')")
        else:
            reject = verdict.required_score or 15.0
            off = min(CONTENT_MAX, max(0.0, verdict.score) * 5.0 / reject)
            check = report.add(section, "Rspamd", "ok" if verdict.action == "no action" else "warn",
                               f"score {verdict.score:g} of {reject:g} ({verdict.action}); "
                               f"symbols: {', '.join(verdict.symbols[:12])}",
                               "read the symbols: each names what Rspamd disliked")
            content.append((off, check))
        finally:
            await client.close()
    else:
        report.add(section, "Rspamd", "skip", "no [checks] rspamd_url")
    found = await spamassassin(message)
    if isinstance(found, str):
        report.add(section, "SpamAssassin", "skip", found)
    else:
        score, tests = found
        score += 0.0  # never "-0"
        check = report.add(section, "SpamAssassin", "ok" if score < 5.0 else "warn",
                           f"score {score:g} of 5 (tests: {tests or 'none'})",
                           "read the tests: each names what SpamAssassin disliked")
        content.append((min(CONTENT_MAX, max(0.0, score)), check))
    if content:
        off, check = max(content, key=lambda x: x[0])
        check.deduction = round(off, 1)  # type: ignore[attr-defined]
