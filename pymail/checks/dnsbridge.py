"""The DNS bridge: synchronous libraries (pyspf, dkimpy) in a worker thread asking
pymail's async `Resolver` on the event loop.

pyspf and dkimpy are blocking and do their own DNS.  Here they run in a worker thread
(`run_with_resolver`) and every question they ask is handed to the event loop with
``asyncio.run_coroutine_threadsafe(resolver.query(...), loop)``; the thread waits for the
answer.  So the checks ask the same resolver (``[dns]``, its cache, the tests' NSD) as
the rest of pymail, and never ``/etc/resolv.conf``.

* pyspf has no resolver argument: it calls the module global
  ``spf.DNSLookup(name, qtype, strict, timeout)``.  It is replaced once, process-wide,
  when this module is imported, by `_spf_dns_lookup`, which finds the bridge of the
  *current thread* (a thread-local set by `run_with_resolver` for the duration of one
  check), so concurrent checks with different resolvers never see each other's.  A
  thread without a bridge gets ``spf.TempError``: pyspf never falls back to the system
  resolver.
* dkimpy takes a ``dnsfunc(name: bytes, timeout=5) -> bytes | None``: `dkim_dnsfunc`.
  A failure to get an answer raises `DkimDnsTemporaryError`, which is deliberately *not*
  a ``dkim.DKIMException``: ``DKIM.verify`` and ``ARC.verify`` catch DKIMException (and
  turn it into False, i.e. "fail" or "no key"), so a DNS outage passes through them to
  our caller, who reports ``temperror`` (OUTBOUND.md complaint 6).

Invariants:

* ``DnsTemporaryError`` (SERVFAIL, timeout), a bridge past its deadline and a cancelled
  check are temporary errors (``spf.TempError`` / `DkimDnsTemporaryError`), never an
  empty answer; NXDOMAIN and NODATA are empty answers.
* The worker threads are our own small pool (`WORKERS`), not the loop's default
  executor: a check blocked on a DNS timeout must not starve other ``to_thread`` work
  (spool writes, password hashing) of threads.
* A check past its deadline is abandoned: the awaiting coroutine gets
  ``TimeoutError``; the thread, which cannot be killed, finds the bridge closed at its
  next DNS question and unwinds at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import spf

from pymail.dns.model import DnsError, DnsTemporaryError, Resolver

__all__ = [
    "DkimDnsTemporaryError",
    "DnsBridge",
    "WORKERS",
    "current_bridge",
    "dkim_dnsfunc",
    "run_with_resolver",
]

T = TypeVar("T")

#: Worker threads for the synchronous checks.  They mostly wait for DNS answers (the
#: event loop does the work), so more than the cores is right; a burst beyond this
#: queues, and the queueing counts against each check's deadline.
WORKERS = 32

_executor = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS,
                                                  thread_name_prefix="pymail-checks")
_local = threading.local()

# RFC 7208 section 4.6.4: at most 10 terms that cause DNS lookups, at most 2 "void"
# lookups (NXDOMAIN or no answer); past either, permerror.  pyspf's defaults are these
# numbers already; set them here so that nothing else in the process can loosen them
# unnoticed.  (pyspf enforces both only in strict mode, its default, which we use.)
spf.MAX_LOOKUP = 10
spf.MAX_VOID_LOOKUPS = 2


class DkimDnsTemporaryError(Exception):
    """A DKIM key lookup got no answer (SERVFAIL, timeout): the signature is
    ``temperror``.  Not a ``dkim.DKIMException``, so dkimpy does not swallow it."""


class DnsBridge:
    """One check's way from its worker thread to the resolver on the event loop.

    `query` is called in the worker thread; it blocks until the loop has the answer,
    the per-question timeout passes, or the check's deadline passes."""

    def __init__(self, resolver: Resolver, loop: asyncio.AbstractEventLoop,
                 deadline: float) -> None:
        self.resolver = resolver
        self.loop = loop
        self.deadline = deadline  #: time.monotonic() after which every question fails
        self.closed = False  #: set when the awaiting check gave up (timeout, cancel)
        self.questions = 0  #: how many questions went to the resolver

    def query(self, name: str, rdtype: str, timeout: float | None = None) -> tuple[Any, ...]:
        """The records of (name, rdtype); () for NXDOMAIN and NODATA and for a name
        that cannot be asked (DnsError: malformed).  Raises `DnsTemporaryError` when
        no answer could be had in time."""
        remaining = self.deadline - time.monotonic()
        if self.closed or remaining <= 0:
            raise DnsTemporaryError(f"{name}/{rdtype}: check deadline passed")
        wait = remaining if timeout is None else min(remaining, timeout)
        self.questions += 1
        try:
            future = asyncio.run_coroutine_threadsafe(self.resolver.query(name, rdtype),
                                                      self.loop)
        except RuntimeError as exc:  # the loop is closed: the server is stopping
            raise DnsTemporaryError(f"{name}/{rdtype}: event loop gone") from exc
        try:
            answer = future.result(wait)
        except concurrent.futures.TimeoutError as exc:
            future.cancel()
            raise DnsTemporaryError(f"{name}/{rdtype}: no answer in {wait:.1f}s") from exc
        except concurrent.futures.CancelledError as exc:
            raise DnsTemporaryError(f"{name}/{rdtype}: lookup cancelled") from exc
        except DnsTemporaryError:
            raise
        except DnsError:
            return ()
        return tuple(answer.records)


def current_bridge() -> DnsBridge | None:
    """The bridge of the check running in this thread, if any."""
    return getattr(_local, "bridge", None)


def _spf_dns_lookup(name: str, qtype: str, strict: Any = True,
                    timeout: float = 20) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's ``DNSLookup``: ``[((name, qtype), value), ...]`` as its dnspython driver
    returns them (A/AAAA: address text; MX: (preference, host); PTR: host; TXT: a tuple
    of byte strings, here the one concatenation pymail's resolver gives)."""
    bridge = current_bridge()
    if bridge is None:
        raise spf.TempError("DNS: no resolver for this thread (pymail.checks.dnsbridge)")
    qtype = qtype.upper()
    if qtype == "SPF":
        # RR type 99: RFC 7208 section 3.1 removed it; pymail's Resolver does not ask it.
        return []
    try:
        records = bridge.query(name, qtype, timeout)
    except DnsTemporaryError as exc:
        raise spf.TempError(f"DNS {exc}") from exc
    key = (name, qtype)
    if qtype == "MX":
        return [(key, (mx.preference, mx.host)) for mx in records]
    if qtype == "TXT":
        return [(key, (txt,)) for txt in records]
    return [(key, value) for value in records]


spf.DNSLookup = _spf_dns_lookup


def dkim_dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
    """dkimpy's ``dnsfunc``: the first TXT record of `name` (its strings joined), None
    when there is none; `DkimDnsTemporaryError` when DNS did not answer."""
    bridge = current_bridge()
    if bridge is None:
        raise DkimDnsTemporaryError("no resolver for this thread (pymail.checks.dnsbridge)")
    try:
        text = name.decode("ascii").rstrip(".")
    except UnicodeDecodeError:
        return None  # d= and s= are A-labels (RFC 6376 section 3.5): not a name we can ask
    try:
        records = bridge.query(text, "TXT", timeout)
    except DnsTemporaryError as exc:
        raise DkimDnsTemporaryError(str(exc)) from exc
    return records[0] if records else None


def _run_in_thread(bridge: DnsBridge, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    _local.bridge = bridge
    try:
        return fn(*args)
    finally:
        _local.bridge = None


async def run_with_resolver(resolver: Resolver, timeout: float, fn: Callable[..., T],
                            *args: Any) -> T:
    """Run ``fn(*args)`` in a worker thread whose DNS goes to `resolver`.

    Raises ``TimeoutError`` when it takes longer than `timeout` seconds in all (the
    thread is abandoned, see the module docstring); ``CancelledError`` propagates."""
    loop = asyncio.get_running_loop()
    bridge = DnsBridge(resolver, loop, time.monotonic() + timeout)
    future = loop.run_in_executor(_executor, _run_in_thread, bridge, fn, args)
    try:
        return await asyncio.wait_for(future, timeout)
    finally:
        bridge.closed = True
