"""ARC (RFC 8617): is the chain of ARC sets forwarders added to the message intact?

`verify_arc` runs dkimpy's ARC validation (``dkim.ARC.verify``) in a worker thread with
its key lookups bridged to pymail's resolver (pymail.checks.dnsbridge), and returns an
`ArcResult`:

* ``result``: the chain validation status (RFC 8617 section 5.2): ``none`` (no ARC
  sets), ``pass``, ``fail`` (a seal or the newest ARC-Message-Signature does not verify,
  a set is missing or duplicated, a seal says ``cv=fail``: the chain is over), or
  ``temperror`` when a key lookup got no DNS answer (SERVFAIL, timeout) or the check ran
  past `timeout`.  ``temperror`` is not one of RFC 8617's words, but pymail's invariant
  (pymail.checks.results) is that a DNS failure is never ``fail``: the policy must not
  reject forwarded mail on DMARC because of our DNS outage.
* ``sealers``: d= of each ARC-Seal, instance 1 first, whatever the result (the policy
  trusts a chain only when it passed *and* its sealers are ones the admin trusts).
* ``first_dmarc``: the ``dmarc=`` result in instance 1's ARC-Authentication-Results,
  i.e. what the first forwarder saw before it changed the message ("" if none or not
  parseable).  Only meaningful with ``result == "pass"``.

Invariant: `verify_arc` never raises (except CancelledError).
"""

from __future__ import annotations

import asyncio
import logging
import re

import authres
import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from pymail.checks.dkimverify import DKIMPY_LOG
from pymail.checks.dnsbridge import DkimDnsTemporaryError, dkim_dnsfunc, run_with_resolver
from pymail.checks.results import ArcResult
from pymail.dns.model import Resolver
from pymail.mail.headers import parse_header

__all__ = ["verify_arc"]

log = logging.getLogger(__name__)

_INSTANCE = re.compile(rb"^\s*i\s*=\s*\d+\s*;", re.IGNORECASE)
_DMARC = re.compile(r"(?:^|;)\s*dmarc\s*=\s*([A-Za-z]+)", re.IGNORECASE)


def _first_dmarc(aar_value: bytes) -> str:
    """dmarc= of an ARC-Authentication-Results value (``i=1; authserv-id; ...``)."""
    text = _INSTANCE.sub(b"", aar_value, count=1).decode("utf-8", "replace").strip()
    try:
        header = authres.AuthenticationResultsHeader.parse("Authentication-Results: " + text)
        for result in header.results:
            if result.method.lower() == "dmarc":
                return str(result.result).lower()
        return ""
    except Exception:  # noqa: BLE001 - authres is strict; fall back to a plain search
        match = _DMARC.search(text)
        return match.group(1).lower() if match else ""


_ARC_FIELDS = frozenset({"arc-seal", "arc-message-signature", "arc-authentication-results"})


def _verify_in_thread(message: bytes, min_key_bits: int) -> ArcResult:
    arc = dkim.ARC(message, logger=DKIMPY_LOG, minkey=min_key_bits)
    _, headers = arc.sorted_arc_headers()
    seals: dict[int, str] = {}
    first_aar = b""
    for instance, (name, value) in headers:
        if name.lower() == b"arc-seal" and instance not in seals:
            try:
                seals[instance] = parse_tag_value(value).get(b"d", b"").decode(
                    "ascii", "replace").strip().lower()
            except InvalidTagValueList:
                seals[instance] = ""
        elif name.lower() == b"arc-authentication-results" and instance == 1:
            first_aar = value
    sealers = tuple(seals[i] for i in sorted(seals))
    if not headers:
        return ArcResult("none")
    try:
        cv, _results, reason = arc.verify(dnsfunc=dkim_dnsfunc)
    except DkimDnsTemporaryError as exc:
        return ArcResult("temperror", sealers, reason=f"key lookup failed: {exc}")
    except dkim.DKIMException as exc:
        return ArcResult("fail", sealers, reason=str(exc))
    # dkimpy's None: a seal said cv=fail, the chain was broken before us (section 5.2).
    result = {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")
    return ArcResult(result, sealers, _first_dmarc(first_aar) if first_aar else "",
                     reason=str(reason))


async def verify_arc(resolver: Resolver, message: bytes, *, min_key_bits: int = 1024,
                     timeout: float = 20.0) -> ArcResult:
    """Validate the ARC chain of `message` (the raw message).  See the module docstring."""
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[:end + 2]
    if not any(f.lower_name in _ARC_FIELDS for f in parse_header(head)):
        return ArcResult("none")  # most mail: no thread, no dkimpy
    try:
        return await run_with_resolver(resolver, timeout, _verify_in_thread, message,
                                       min_key_bits)
    except TimeoutError:
        return ArcResult("temperror", reason=f"ARC validation took longer than {timeout:g}s")
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a result, never an exception
        log.warning("ARC validation raised", exc_info=True)
        return ArcResult("fail", reason=f"ARC validation error: {type(exc).__name__}: {exc}")
