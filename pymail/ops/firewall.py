"""The firewall rules pymail needs: exactly the ports its configured listeners serve.

The seed opens 25, 587, 465, 993, 995 and 80/443 with UFW by hand; `pymail firewall`
prints the same list from the config, as ``ufw`` commands or an nftables table, so the
firewall never opens more (or less) than pymail serves.

Rules, from ``[listen]`` (one `Opening` per distinct port):

* Every mail and web listener bound to a non-loopback address (``0.0.0.0``, ``::`` or a
  public address) is opened to anyone, TCP only.
* Listeners on loopback (127.0.0.0/8, ::1) need no rule and get none.
* The monitoring listener (``[listen] http``: /metrics and /healthz, no authentication)
  is never opened: one bound to a non-loopback address gets a `warnings` line instead,
  saying to allow it only from the monitoring network.

Pure: config in, data out (no sockets, no firewall calls); `render_ufw` and
`render_nftables` turn it into text an admin reviews and applies.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pymail.config.schema import Config
from pymail.config.types import split_hostport

__all__ = ["Opening", "openings", "render_nftables", "render_ufw"]

#: [listen] key -> what the rule's comment calls it.
SERVICES = {
    "smtp": "smtp (MX)",
    "submission": "submission",
    "submissions": "submissions (implicit TLS)",
    "imap": "imap",
    "imaps": "imaps",
    "pop3": "pop3",
    "pop3s": "pop3s",
    "web": "http (ACME, autoconfig, MTA-STS)",
    "https": "https (autoconfig, MTA-STS, ACME tls-alpn)",
}


@dataclass(frozen=True)
class Opening:
    """One TCP port to open to anyone, and the listeners that use it."""

    port: int
    services: tuple[str, ...]  #: [listen] keys, e.g. ("smtp",)

    @property
    def comment(self) -> str:
        return "pymail " + ", ".join(SERVICES[s] for s in self.services)


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: not ours to decide, treat it as reachable
        return False


def openings(config: Config) -> tuple[list[Opening], list[str]]:
    """The ports to open (sorted) and warnings for the admin."""
    by_port: dict[int, list[str]] = {}
    for service in SERVICES:
        for address in getattr(config.listen, service):
            host, port = split_hostport(str(address))
            if not _is_loopback(host):
                names = by_port.setdefault(port, [])
                if service not in names:
                    names.append(service)
    warnings = []
    for address in config.listen.http:
        host, port = split_hostport(str(address))
        if not _is_loopback(host):
            warnings.append(
                f"[listen] http {address} (/metrics, /healthz, no authentication) is not "
                f"opened: allow tcp port {port} only from your monitoring network")
    return [Opening(port, tuple(names)) for port, names in sorted(by_port.items())], warnings


def render_ufw(found: list[Opening], warnings: list[str]) -> str:
    """``ufw allow PORT/tcp comment '...'`` lines (ufw(8)), SSH left to the admin."""
    lines = ["# pymail: the ports its listeners serve (pymail firewall --ufw)",
             "# keep your SSH rule (ufw allow OpenSSH) before 'ufw enable'"]
    lines += [f"# warning: {w}" for w in warnings]
    lines += [f"ufw allow {o.port}/tcp comment '{o.comment}'" for o in found]
    if not found:
        lines.append("# nothing to open: every listener is on loopback")
    return "\n".join(lines) + "\n"


def render_nftables(found: list[Opening], warnings: list[str]) -> str:
    """A ``table inet pymail`` that accepts the ports (``nft -f FILE``).  It only accepts:
    a base chain with policy accept leaves dropping everything else to the host's own
    ruleset, so loading it never locks anyone out."""
    lines = ["# pymail: the ports its listeners serve (pymail firewall --nftables)",
             "# load with: nft -f FILE; your own ruleset's input policy drops the rest"]
    lines += [f"# warning: {w}" for w in warnings]
    lines += ["table inet pymail {", "\tchain input {",
              "\t\ttype filter hook input priority filter; policy accept;"]
    for o in found:
        comment = o.comment.replace('"', "'")
        lines.append(f'\t\ttcp dport {o.port} accept comment "{comment}"')
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"
