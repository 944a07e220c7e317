"""A private authoritative DNS server (NSD) for the tests, on a free loopback port.

Recipe: ../shared/docs/TEST-SERVICES.md ("NSD").  Nothing in /etc is read or written: a
generated ``nsd.conf`` (``ip-address: 127.0.0.1@PORT``, no chroot, no database, no
remote control, pid and logs in the service's own directory), one zone file per zone,
``nsd -d -c nsd.conf`` in the foreground, stopped by its own PID.

* `zones` maps a zone's origin (``"example.test"``) to the text of its records, written
  relative to the origin (``"@ MX 10 mail"``, ``"mail A 127.0.0.2"``); `NsdService`
  adds the SOA and NS records.  Names outside every zone get REFUSED at once (NSD is
  not recursive), so nothing is ever looked up outside the tests' own data.
* `set_zone()` rewrites a zone and restarts NSD on the same port (0.3-0.5 s).
* `pause()` / `resume()`: SIGSTOP / SIGCONT, a nameserver that never answers (timeouts).
* `signers` (origin -> `tests.services.dnssec.ZoneSigner`): those zones are served
  DNSSEC-signed (RRSIG, NSEC, DNSKEY), signed again on each (re)start with the same key,
  so `set_zone` keeps the trust anchor.  A validating resolver in front of NSD:
  tests/services/unbound.py.
* Ready = a real query for the first zone's SOA answers.

Needs the Debian package ``nsd``; without it `NsdServiceError` says what to install.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import dns.message
import dns.query
import dns.rcode

if TYPE_CHECKING:
    from tests.services.dnssec import ZoneSigner

__all__ = ["NsdService", "NsdServiceError", "free_dns_port", "start_nsd_service"]

HOST = "127.0.0.1"
DEBIAN_PACKAGES = "nsd"
READY_TIMEOUT = 30.0


class NsdServiceError(RuntimeError):
    """The test DNS server could not be made or started (the message says why)."""


def free_dns_port() -> int:
    """A loopback port free for both UDP and TCP."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise NsdServiceError("no free loopback port for DNS")


def _zone_text(origin: str, records: str) -> str:
    return (
        f"$ORIGIN {origin}.\n$TTL 60\n"
        f"@ SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n"
        f"@ NS ns.{origin}.\n"
        f"ns A {HOST}\n"
        f"{records}\n"
    )


class NsdService:
    """One NSD process serving `zones` on 127.0.0.1:`port` (UDP and TCP)."""

    def __init__(self, zones: dict[str, str], *, port: int | None = None,
                 signers: "dict[str, ZoneSigner] | None" = None) -> None:
        if shutil.which("nsd") is None:
            raise NsdServiceError(f"nsd not found: apt-get install {DEBIAN_PACKAGES}")
        self.zones = {origin.rstrip(".").lower(): text for origin, text in zones.items()}
        self.signers = {origin.rstrip(".").lower(): s for origin, s in (signers or {}).items()}
        self.port = port or free_dns_port()
        self.root = Path(tempfile.mkdtemp(prefix="pymail-nsd-"))
        self.proc: subprocess.Popen[bytes] | None = None
        atexit.register(self.stop)

    @property
    def nameserver(self) -> str:
        return HOST

    def _write(self) -> Path:
        lines = [
            "server:",
            f"  ip-address: {HOST}@{self.port}",
            f"  port: {self.port}",
            '  username: ""',
            '  chroot: ""',
            '  database: ""',
            f"  zonesdir: \"{self.root}\"",
            f"  pidfile: \"{self.root}/nsd.pid\"",
            f"  logfile: \"{self.root}/nsd.log\"",
            f"  xfrdfile: \"{self.root}/xfrd.state\"",
            f"  zonelistfile: \"{self.root}/zone.list\"",
            "  server-count: 1",
            "  verbosity: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin, records in self.zones.items():
            text = _zone_text(origin, records)
            if origin in self.signers:
                text = self.signers[origin].sign(text)
            (self.root / f"{origin}.zone").write_text(text)
            lines += ["zone:", f"  name: {origin}", f"  zonefile: \"{origin}.zone\""]
        conf = self.root / "nsd.conf"
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def start(self) -> "NsdService":
        conf = self._write()
        # its own process group: NSD forks its serving processes, pause() stops them all
        self.proc = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.root / "stderr.log", "ab"),
                                     start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        first = next(iter(self.zones), None)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NsdServiceError(f"nsd exited with {self.proc.returncode}: {self.log()}")
            if first is None or self._answers(first):
                return self
            time.sleep(0.05)
        self.stop()
        raise NsdServiceError(f"nsd did not answer within {READY_TIMEOUT} s: {self.log()}")

    def _answers(self, origin: str) -> bool:
        # over TCP: refused at once until NSD listens (a UDP probe sent too early would
        # wait out its whole timeout)
        query = dns.message.make_query(origin + ".", "SOA")
        with contextlib.suppress(Exception):
            response = dns.query.tcp(query, HOST, port=self.port, timeout=2)
            return response.rcode() == dns.rcode.NOERROR and bool(response.answer)
        return False

    def set_zone(self, origin: str, records: str) -> None:
        """Replace (or add) a zone and restart on the same port."""
        self.zones[origin.rstrip(".").lower()] = records
        self.stop_server()
        self.start()

    def _signal_all(self, signum: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signum)

    def stop_server(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal_all(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def pause(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def stop(self) -> None:
        self.stop_server()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        out = []
        for name in ("nsd.log", "stderr.log"):
            path = self.root / name
            if path.exists():
                out.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(out)


def start_nsd_service(zones: dict[str, str], *, port: int | None = None,
                      signers: "dict[str, ZoneSigner] | None" = None) -> NsdService:
    return NsdService(zones, port=port, signers=signers).start()
