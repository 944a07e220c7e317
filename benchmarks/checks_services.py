"""The scanners and DNS for ``benchmarks/delivery.py --checks``: every inbound check pymail
has, asked for every message, against real services on loopback.

* NSD (tests/services/nsd.py) serves the load generator's domain: SPF
  ``ip4:127.0.0.0/8 -all``, a DKIM key (selector ``bench``; every message is signed with
  it), DMARC ``p=reject``, and the PTR of 127.0.0.1 forward-confirmed (iprev pass);
* Rspamd (tests/services/rspamd.py) asking that NSD, and a private clamd
  (tests/services/clamd.py);
* pymail's ``[checks]`` with ``skip_networks = []``: the load comes from 127.0.0.1, which
  the default exempts.

`CheckServices.cpu_seconds` reads the scanners' CPU (each process tree), so the report
can show their cost apart from pymail's.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DOMAIN = "bench.example"
SELECTOR = b"bench"


@dataclass
class CheckServices:
    config: str  #: [dns] and [checks] TOML for pymail
    dkim_key: tuple[bytes, bytes, bytes]  #: (selector, domain, private key PEM)
    pids: dict[str, int] = field(default_factory=dict)

    def cpu_seconds(self) -> dict[str, float]:
        """user+sys CPU seconds of each service's process tree so far."""
        import psutil

        out = {}
        for name, pid in self.pids.items():
            total = 0.0
            try:
                root = psutil.Process(pid)
                for proc in [root, *root.children(recursive=True)]:
                    times = proc.cpu_times()
                    total += times.user + times.system
            except psutil.Error:
                pass
            out[name] = total
        return out


class _Closing:
    """Adapts a service whose final stop is `close()` to the benchmark's `stop()`."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def stop(self) -> None:
        self.service.close()


def start_check_services(workdir: Path, services: list[Any]) -> CheckServices:
    """Start NSD, Rspamd and clamd (appended to `services` for stopping)."""
    sys.path.insert(0, str(REPO))
    from tests.internet import dkim_record, make_dkim_key
    from tests.services.clamd import start_clamd_service
    from tests.services.nsd import NsdService
    from tests.services.rspamd import RspamdService

    pem, public = make_dkim_key(2048)
    zones = {
        BENCH_DOMAIN: f"""
@ MX 10 mx
mx A 127.0.0.1
@ TXT "v=spf1 ip4:127.0.0.0/8 -all"
{dkim_record(SELECTOR.decode(), public)}
_dmarc TXT "v=DMARC1; p=reject"
""",
        "127.in-addr.arpa": f"1.0.0 PTR mx.{BENCH_DOMAIN}.\n",
    }
    nsd = NsdService(zones)
    nsd.start()
    services.append(nsd)
    print(f"  checks: NSD on 127.0.0.1:{nsd.port}; starting Rspamd (the first start on a "
          "machine compiles its hyperscan cache: up to a minute) ...", flush=True)
    rspamd = RspamdService(nsd.port).start()
    services.append(rspamd)
    clamd = start_clamd_service()
    services.append(_Closing(clamd))
    config = f"""
[dns]
nameservers = ["127.0.0.1"]
port = {nsd.port}
timeout = "3s"

[checks]
skip_networks = []
rspamd_url = "{rspamd.url}"
clamav = "{clamd.socket_path}"
"""
    pids = {}
    for name, service in (("rspamd", rspamd), ("clamd", clamd), ("nsd", nsd)):
        proc = getattr(service, "proc", None)
        if proc is not None:
            pids[name] = proc.pid
    return CheckServices(config, (SELECTOR, BENCH_DOMAIN.encode(), pem), pids)
