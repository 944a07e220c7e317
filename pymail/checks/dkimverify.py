"""DKIM verification (RFC 6376 section 6; RSA keys per RFC 8301, Ed25519 per RFC 8463):
every DKIM-Signature on an incoming message, each with its own result.

(pymail.delivery.dkim is the signer; this is the verifier.)

How: the key records (``s._domainkey.d`` TXT) of all signatures are asked concurrently
on the event loop through pymail's resolver; then dkimpy verifies each signature in a
worker thread, handed the records already fetched (pymail.checks.dnsbridge is its DNS
only as a fall-back, should dkimpy ask a name we did not foresee).  Fetching the key
ourselves is also what tells "no key" from "DNS did not answer": dkimpy's own lookups
turn SERVFAIL into "no key" and any error into a plain False (OUTBOUND.md).

Results per signature (RFC 8601 section 2.7.1 words; the choices follow mox):

=====================================  ==========  ===================================
what                                   result      RFC
=====================================  ==========  ===================================
signature and body hash verify         pass        6376 6.1.3
b= does not verify / body changed      fail        6376 6.1.3 ("body hash mismatch")
key lookup SERVFAIL / timeout          temperror   6376 6.1.2 (TEMPFAIL)
no key record (NXDOMAIN, none)         permerror   6376 6.1.2 ("no key for signature")
key revoked (empty ``p=``)             permerror   6376 3.6.1, 6.1.2 ("key revoked")
RSA key under `min_key_bits` (1024)    permerror   8301 3.2: MUST NOT be valid
malformed, expired, From not in h=     permerror   6376 6.1.1, 6.1.2 (PERMFAIL)
beyond `MAX_SIGNATURES`                policy      not verified (8601 2.7.1 "policy")
=====================================  ==========  ===================================

RFC 8301 says only that a signature with a key under 1024 bits is not valid; like mox
we report ``permerror`` ("key too small"), a problem of the signer's key that no retry
fixes, rather than ``fail``, which says the message was changed.  For DMARC both are
"not a pass".

Invariants: `verify_dkim` never raises (except CancelledError); a DNS failure is
``temperror`` for that signature, never fail, never "no key"; the whole verification is
bounded by `timeout` (signatures not done by then are ``temperror``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from pymail.checks.dnsbridge import DkimDnsTemporaryError, dkim_dnsfunc, run_with_resolver
from pymail.checks.results import DkimResult, DkimSignature
from pymail.dns.model import DnsError, DnsTemporaryError, Resolver

__all__ = ["MAX_SIGNATURES", "verify_dkim"]

log = logging.getLogger(__name__)

#: Signatures verified per message; any more are reported ``policy``, not verified (a
#: message with a thousand signatures must not cost a thousand key lookups).
MAX_SIGNATURES = 16

_WS = re.compile(rb"\s+")
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class _DemotedLog(logging.LoggerAdapter):
    """dkimpy logs a bad incoming signature at ERROR; for a mail server that is a
    stranger's mistake, not ours: everything it says goes to our log at DEBUG."""

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        self.logger.log(logging.DEBUG, msg, *args, **kwargs)

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        return self.logger.isEnabledFor(logging.DEBUG)


#: The logger dkimpy is given (by the DKIM and the ARC verifier).
DKIMPY_LOG = _DemotedLog(logging.getLogger("pymail.checks.dkimpy"), {})


@dataclass
class _Signature:
    """One DKIM-Signature and what has been found out about it so far."""

    index: int  #: position among the message's DKIM-Signature fields, topmost 0
    tags: dict[bytes, bytes] = field(default_factory=dict)
    key_name: str = ""  #: s._domainkey.d, lower case
    key_record: bytes | None = None  #: the TXT record fetched for it
    result: DkimSignature | None = None  #: set once decided

    def tag(self, name: bytes) -> str:
        return _WS.sub(b"", self.tags.get(name, b"")).decode("ascii", "replace")

    def decide(self, result: str, reason: str) -> DkimSignature:
        b = self.tag(b"b")
        self.result = DkimSignature(
            result=result, domain=self.tag(b"d").lower(), selector=self.tag(b"s"),
            b=b[:12], algorithm=self.tag(b"a").lower(), identity=self.tag(b"i"),
            reason=reason)
        return self.result


def _signature_fields(message: bytes) -> list[bytes]:
    """The values of the DKIM-Signature fields, in message order (dkimpy's idx)."""
    end = _HEADER_END.search(message)  # parse the header only, not the whole body
    headers, _ = dkim.rfc822_parse(message[:end.end()] if end else message)
    return [value for name, value in headers if name.lower() == b"dkim-signature"]


def _key_problem(sig: _Signature) -> tuple[str, str] | None:
    """(result, reason) when the fetched key record already decides the signature."""
    record = sig.key_record
    if not record or not record.strip():
        return "permerror", "no key for signature"  # RFC 6376 section 6.1.2
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList as exc:
        return "permerror", f"key record syntax error: {exc}"
    if b"p" not in tags:
        return "permerror", "key record has no p="
    if not _WS.sub(b"", tags[b"p"]):
        return "permerror", "key revoked"  # RFC 6376 section 3.6.1: empty p=
    key_type = tags.get(b"k", b"rsa").strip().lower()
    sig_type = sig.tags.get(b"a", b"").strip().lower().partition(b"-")[0]
    if sig_type and key_type != sig_type:  # RFC 6376 section 6.1.2 step 6
        return "permerror", f"key type {key_type.decode(errors='replace')} does not match a="
    return None


async def _fetch_key(resolver: Resolver, sig: _Signature) -> None:
    try:
        answer = await resolver.query(sig.key_name, "TXT")
    except DnsTemporaryError as exc:
        sig.decide("temperror", f"key lookup failed: {exc}")
        return
    except DnsError as exc:
        sig.decide("permerror", f"no key for signature: {exc}")
        return
    # RFC 6376 section 3.6.2.2: one record per selector; with several, the first.
    sig.key_record = answer.records[0] if answer.records else None
    problem = _key_problem(sig)
    if problem:
        sig.decide(*problem)


def _verify_in_thread(message: bytes, signatures: list[_Signature], min_key_bits: int) -> None:
    """dkimpy's verification of each undecided signature (in a worker thread)."""
    records = {s.key_name: s.key_record for s in signatures if s.key_name}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        key = name.decode("ascii", "replace").rstrip(".").lower()
        if key in records:
            return records[key]
        return dkim_dnsfunc(name, timeout)

    try:
        verifier = dkim.DKIM(message, logger=DKIMPY_LOG, minkey=min_key_bits)
    except dkim.DKIMException as exc:
        for sig in signatures:
            if sig.result is None:
                sig.decide("permerror", f"message format: {exc}")
        return
    for sig in signatures:
        if sig.result is not None:
            continue
        try:
            dkim.evaluate_pk(sig.key_name.encode(), sig.key_record)
            ok = verifier.verify(idx=sig.index, dnsfunc=dnsfunc)
        except DkimDnsTemporaryError as exc:
            sig.decide("temperror", f"key lookup failed: {exc}")
        except dkim.KeyFormatError as exc:
            text = str(exc)
            if "too small" in text:  # RFC 8301 section 3.2
                sig.decide("permerror", f"key too small ({verifier.keysize} bits)")
            else:
                sig.decide("permerror", f"key: {text}")
        except dkim.ValidationError as exc:
            text = str(exc)
            if text.startswith("body hash mismatch"):
                sig.decide("fail", "body hash mismatch")
            else:
                sig.decide("permerror", f"signature: {text}")
        except dkim.DKIMException as exc:
            sig.decide("permerror", f"signature: {exc}")
        except Exception as exc:  # noqa: BLE001 - a result, never an exception
            log.warning("dkimpy raised verifying signature %d", sig.index, exc_info=True)
            sig.decide("permerror", f"verifier error: {type(exc).__name__}: {exc}")
        else:
            if ok:
                sig.decide("pass", "")
            else:
                sig.decide("fail", "signature did not verify")


async def verify_dkim(resolver: Resolver, message: bytes, *, min_key_bits: int = 1024,
                      timeout: float = 20.0) -> DkimResult:
    """Verify every DKIM-Signature of `message` (the raw message, header and body).

    No signature: ``DkimResult(())`` (A-R ``dkim=none``).  See the module docstring."""
    deadline = time.monotonic() + timeout
    try:
        fields = _signature_fields(message)
    except dkim.DKIMException as exc:
        return DkimResult((DkimSignature("permerror", "", "", reason=f"message format: {exc}"),))
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot split the message header for DKIM", exc_info=True)
        return DkimResult((DkimSignature("permerror", "", "", reason=f"message format: {exc}"),))
    signatures = [_Signature(i) for i in range(len(fields))]
    for sig, value in zip(signatures, fields):
        try:
            sig.tags = parse_tag_value(value)
        except InvalidTagValueList as exc:
            sig.decide("permerror", f"signature syntax error: {exc}")
            continue
        if sig.index >= MAX_SIGNATURES:
            sig.decide("policy", f"not verified: more than {MAX_SIGNATURES} signatures")
            continue
        domain, selector = sig.tag(b"d").lower(), sig.tag(b"s").lower()
        if not domain or not selector:
            sig.decide("permerror", "signature without d= or s=")
            continue
        signed = [name.strip().lower() for name in sig.tags.get(b"h", b"").split(b":")]
        if b"h" in sig.tags and b"from" not in signed:
            sig.decide("permerror", "From field not signed")  # RFC 6376 section 6.1.1
            continue
        sig.key_name = f"{selector}._domainkey.{domain}"

    pending = [s for s in signatures if s.result is None]
    try:
        await asyncio.wait_for(asyncio.gather(*(_fetch_key(resolver, s) for s in pending)),
                               max(deadline - time.monotonic(), 0.001))
        pending = [s for s in signatures if s.result is None]
        if pending:
            await run_with_resolver(resolver, max(deadline - time.monotonic(), 0.001),
                                    _verify_in_thread, message, signatures, min_key_bits)
    except TimeoutError:
        for sig in signatures:
            if sig.result is None:
                sig.decide("temperror", f"verification took longer than {timeout:g}s")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001
        log.warning("DKIM verification raised", exc_info=True)
        for sig in signatures:
            if sig.result is None:
                sig.decide("permerror", f"verifier error: {exc}")
    # A signature the thread had not reached when the deadline passed is still undecided
    # here only if the thread is still running: report it as temporary.
    return DkimResult(tuple(
        s.result if s.result is not None
        else DkimSignature("temperror", s.tag(b"d").lower(), s.tag(b"s"), s.tag(b"b")[:12],
                           s.tag(b"a").lower(), s.tag(b"i"), "not verified in time")
        for s in signatures))
