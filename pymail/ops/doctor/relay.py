"""The open-relay probe: the MX must refuse to pass mail from strangers to strangers.

Over a real connection to each MX listener (from ``--source`` when given, an address the
MX does not treat as its own), the probe says MAIL FROM a foreign sender and then one
RCPT per classic relay vector — a foreign domain, the %-hack, a bang path, a quoted
``@`` in the local part, a source route (RFC 5321 section 4.1.1.3: to be ignored, never
followed), an address literal — and RSETs after each; it never sends DATA, so nothing is
ever queued.  Any 2xx to a vector is an open relay (✗, the score drops to 0: an open relay
is on every blocklist within hours).

pymail has no "trusted networks" that may relay, so the one misconfiguration that opens
a relay is a domain with a non-local ``domains.transport`` (``smtp:``/``relay:``) that is
not ours to relay for: anyone may then send to that domain through us.  For each such
domain the probe checks that RCPT is accepted (it is, by design) and that the domain's
MX names this host — a backup MX is legitimate; otherwise it is a ✗ with the fix.
"""

from __future__ import annotations

from pymail.config.types import split_hostport
from pymail.delivery.router import is_local_transport
from pymail.dns.model import DnsError, Resolver, addresses, mx_records
from pymail.ops.doctor.probe import ProbeError, connect, probe_address
from pymail.ops.doctor.report import Report

__all__ = ["check_relay", "relay_vectors"]

FOREIGN = "relay-probe.pymail.invalid"  #: RFC 2606: never anyone's domain
PROBE_USER = "pymail-doctor-relay-test"


def relay_vectors(local_domain: str, literal: str) -> list[tuple[str, str]]:
    """(what it tries, the RCPT address) for every vector."""
    user, d = PROBE_USER, local_domain
    return [
        ("a foreign domain", f"{user}@{FOREIGN}"),
        ("the %-hack", f"{user}%{FOREIGN}@{d}"),
        ("a bang path", f"{FOREIGN}!{user}@{d}"),
        ("a quoted @ in the local part", f'"{user}@{FOREIGN}"@{d}'),
        ("a source route", f"@{d}:{user}@{FOREIGN}"),
        ("an address literal", f"{user}@[{literal}]"),
    ]


async def _probe(host: str, port: int, hostname: str, source: str | None,
                 rcpts: list[str], timeout: float) -> list[tuple[str, int, str]]:
    """(rcpt, code, text) for each RCPT, each in a transaction of its own."""
    conv = await connect(host, port, source=source, timeout=timeout)
    out = []
    try:
        code, lines = await conv.smtp_reply()
        if code != 220:
            raise ProbeError(f"greeting {code} {lines[0] if lines else ''}")
        code, lines = await conv.smtp(f"EHLO {FOREIGN}")
        if code != 250:
            raise ProbeError(f"EHLO answered {code} {lines[0] if lines else ''}")
        for rcpt in rcpts:
            code, lines = await conv.smtp(f"MAIL FROM:<doctor@{FOREIGN}>")
            if code != 250:
                raise ProbeError(f"MAIL FROM answered {code} {lines[0] if lines else ''}")
            code, lines = await conv.smtp(f"RCPT TO:<{rcpt}>")
            out.append((rcpt, code, lines[0] if lines else ""))
            await conv.smtp("RSET")
        await conv.smtp("QUIT")
    finally:
        await conv.close()
    return out


async def _names_us(resolver: Resolver, domain: str, hostname: str, ours: set[str]) -> tuple[bool, str]:
    """(does `domain`'s MX name this host, what its MX is)."""
    try:
        answer = await mx_records(resolver, domain)
    except DnsError as e:
        return False, f"its MX could not be looked up ({e})"
    hosts = [r.host for r in answer.records if r.host]
    if hostname in hosts:
        return True, f"MX {', '.join(hosts)}"
    for host in hosts:
        try:
            found, _ = await addresses(resolver, host)
        except DnsError:
            continue
        if ours & set(found):
            return True, f"MX {', '.join(hosts)}"
    return False, f"its MX is {', '.join(hosts) or 'not published'}"


async def check_relay(report: Report, config, domains, resolver: Resolver, *,  # noqa: ANN001
                      source: str | None, ours: set[str], timeout: float = 10.0) -> None:
    """Probe every [listen] smtp address; `domains`: the directory's `Domain` rows."""
    hostname = config.server.hostname.lower().rstrip(".")
    local = [d.name for d in domains if d.is_active and is_local_transport(d.transport)]
    relayed = [d for d in domains if d.is_active and not is_local_transport(d.transport)]
    if not config.listen.smtp:
        report.add("relay", "open relay probe", "skip", "no [listen] smtp: no MX to probe")
        return
    for hostport in config.listen.smtp:
        host, port = split_hostport(hostport)
        address = probe_address(host)
        vectors = relay_vectors(local[0] if local else hostname, address)
        extra = [f"postmaster@{d.name}" for d in relayed]
        try:
            answers = await _probe(address, port, hostname, source,
                                   [rcpt for _, rcpt in vectors] + extra, timeout)
        except ProbeError as e:
            report.add("relay", f"open relay probe {hostport}", "fail", f"could not probe: {e}",
                       "is the MX running? ('systemctl status pymail')")
            continue
        accepted = [(what, rcpt, code) for (what, rcpt), (_, code, _t) in zip(vectors, answers)
                    if 200 <= code < 300]
        if accepted:
            report.add("relay", f"open relay probe {hostport}", "fail",
                       "OPEN RELAY: accepted " + "; ".join(f"{what} <{rcpt}> ({code})"
                                                          for what, rcpt, code in accepted),
                       "never accept mail for other domains from unauthenticated clients; "
                       "report this as a pymail bug", 10.0)
        else:
            codes = sorted({code for _, code, _t in answers[:len(vectors)]})
            report.add("relay", f"open relay probe {hostport}", "ok",
                       f"{len(vectors)} relay vectors refused ({', '.join(map(str, codes))}), "
                       f"from {source or 'this host'}")
        for domain, (rcpt, code, text) in zip(relayed, answers[len(vectors):]):
            name = f"relay domain {domain.name}"
            if not 200 <= code < 300:
                report.add("relay", name, "ok", f"transport {domain.transport}, RCPT <{rcpt}> "
                           f"refused: {code} {text[:60]}")
                continue
            ok, mx = await _names_us(resolver, domain.name, hostname, ours)
            if ok:
                report.add("relay", name, "ok", f"relayed to {domain.transport}, and this host "
                           f"is its MX ({mx}): a backup MX or a gateway")
            else:
                report.add("relay", name, "fail",
                           f"anyone can send mail to {domain.name} through pymail (transport "
                           f"{domain.transport}), but {mx}, not {hostname}",
                           f"'pymail domain remove {domain.name}' if you do not relay for it; "
                           f"if you are its backup MX, publish {hostname} in its MX", 3.0)
