"""A private validating resolver (unbound) in front of the tests' NSD, for DANE.

pymail trusts the AD bit of its configured resolver (pymail/dns/resolver.py, RFC 7672
section 2.2); this is the local validating resolver of the tests.  Nothing in /etc is
read or written: a generated ``unbound.conf`` in the service's own directory, ``unbound
-d -c unbound.conf`` in the foreground, in its own process group, stopped by its PID.

* Every zone NSD serves is a ``stub-zone`` pointing at NSD (``do-not-query-localhost:
  no``); everything else is forwarded to NSD too (``forward-zone: "."``), which REFUSES
  it, so a name outside the test zones is SERVFAIL at once.  unbound never uses root
  hints, never asks anything outside 127.0.0.1 (``outgoing-interface``), and has no
  root trust anchor.
* Trust anchors: the DS of each signed zone (`tests.services.dnssec.ZoneSigner`, given
  to NSD as ``signers``).  So a signed zone's answers come back with the AD bit
  (``Answer.authenticated``), an unsigned zone's without it (insecure: no anchor covers
  it), and a signed zone with a broken signature is bogus: SERVFAIL
  (`pymail.dns.DnsTemporaryError`).
* `restart()` empties unbound's cache (after `NsdService.set_zone`); the cache also
  keeps nothing longer than `CACHE_MAX_TTL` seconds, so a test that changes a zone sees
  the change soon even without it.
* Ready = a real query (the SOA of the first zone) gets an answer.

Needs the Debian package ``unbound``; without it `UnboundServiceError` says what to
install.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import dns.flags
import dns.message
import dns.query
import dns.rcode

from tests.services.nsd import HOST, free_dns_port

if TYPE_CHECKING:
    from tests.services.nsd import NsdService

__all__ = ["UnboundService", "UnboundServiceError", "start_unbound_service"]

DEBIAN_PACKAGE = "unbound"
READY_TIMEOUT = 30.0
#: Seconds unbound may keep an answer (the zones' TTL is 60).
CACHE_MAX_TTL = 2


class UnboundServiceError(RuntimeError):
    """The test resolver could not be made or started (the message says why)."""


def _die_with_parent() -> None:
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class UnboundService:
    """One unbound process validating what `nsd` serves (see the module docstring)."""

    def __init__(self, nsd: "NsdService", *, port: int | None = None) -> None:
        if shutil.which("unbound") is None and not Path("/usr/sbin/unbound").exists():
            raise UnboundServiceError(f"unbound not found: apt-get install {DEBIAN_PACKAGE}")
        self.nsd = nsd
        self.port = port or free_dns_port()
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def nameserver(self) -> str:
        return HOST

    def dns_config(self) -> str:
        """The ``[dns]`` section a PymailServer needs to resolve through this unbound."""
        return f'[dns]\nnameservers = ["{HOST}"]\nport = {self.port}\n'

    def _conf(self) -> str:
        assert self.root is not None
        nsd = f"{HOST}@{self.nsd.port}"
        lines = [
            "server:",
            f"  interface: {HOST}",
            f"  port: {self.port}",
            f"  outgoing-interface: {HOST}",
            "  do-ip6: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.root}"',
            f'  pidfile: "{self.root}/unbound.pid"',
            f'  logfile: "{self.root}/unbound.log"',
            "  use-syslog: no",
            "  verbosity: 1",
            "  val-log-level: 2",
            "  log-servfail: yes",
            "  num-threads: 1",
            "  so-reuseport: no",
            "  access-control: 127.0.0.0/8 allow",
            "  do-not-query-localhost: no",
            '  module-config: "validator iterator"',
            "  qname-minimisation: no",
            "  prefetch: no",
            f"  cache-max-ttl: {CACHE_MAX_TTL}",
            f"  cache-max-negative-ttl: {CACHE_MAX_TTL}",
            # unbound answers these itself by default (RFC 6761/6303 names): ask NSD
            '  local-zone: "test." nodefault',
            '  local-zone: "127.in-addr.arpa." nodefault',
        ]
        lines += [f'  trust-anchor: "{s.trust_anchor}"' for s in self.nsd.signers.values()]
        for origin in self.nsd.zones:
            lines += ["stub-zone:", f'  name: "{origin}."', f"  stub-addr: {nsd}"]
        lines += ["forward-zone:", '  name: "."', f"  forward-addr: {nsd}",
                  "remote-control:", "  control-enable: no"]
        return "\n".join(lines) + "\n"

    def start(self) -> "UnboundService":
        self.root = Path(tempfile.mkdtemp(prefix="pymail-unbound-"))
        atexit.register(self.stop)
        try:
            self.start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def start_server(self) -> None:
        assert self.root is not None
        if self.proc is not None and self.proc.poll() is None:
            raise UnboundServiceError("unbound runs already")
        conf = self.root / "unbound.conf"
        conf.write_text(self._conf())
        stderr = open(self.root / "stderr.log", "ab")
        self.proc = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=stderr, stderr=stderr, preexec_fn=_die_with_parent)
        stderr.close()
        deadline = time.monotonic() + READY_TIMEOUT
        first = next(iter(self.nsd.zones), None)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UnboundServiceError(f"unbound exited with {self.proc.returncode}: {self.log()}")
            if self._answers(first):
                return
            time.sleep(0.05)
        self.stop_server()
        raise UnboundServiceError(f"unbound did not answer within {READY_TIMEOUT} s: {self.log()}")

    def _answers(self, origin: str | None) -> bool:
        # over TCP: refused at once until unbound listens (a UDP probe sent too early
        # would wait out its whole timeout)
        query = dns.message.make_query((origin or "test") + ".", "SOA", flags=dns.flags.RD)
        with contextlib.suppress(Exception):
            dns.query.tcp(query, HOST, port=self.port, timeout=2)
            return True
        return False

    def stop_server(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def restart(self) -> None:
        """Start again with an empty cache (and the zones and anchors NSD has now)."""
        self.stop_server()
        self.start_server()

    def stop(self) -> None:
        self.stop_server()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            atexit.unregister(self.stop)

    def log(self) -> str:
        if self.root is None:
            return ""
        out = []
        for name in ("unbound.log", "stderr.log"):
            path = self.root / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def __repr__(self) -> str:
        state = "running" if self.proc is not None and self.proc.poll() is None else "stopped"
        return f"UnboundService({HOST}:{self.port} -> NSD {HOST}:{self.nsd.port}, {state})"


def start_unbound_service(nsd: "NsdService", *, port: int | None = None) -> UnboundService:
    """A started unbound validating `nsd`'s zones (call `.stop()` when done)."""
    return UnboundService(nsd, port=port).start()
