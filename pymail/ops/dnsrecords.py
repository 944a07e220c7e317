"""The DNS records a domain served by this pymail needs, computed from the config and
the domain's DKIM keys: the data behind `pymail dns records` (and what `pymail dns
check` and `pymail doctor` look up).

Invariants:

* Pure: nothing here asks DNS or reads the directory; the only input besides the config
  is the list of DKIM keys the caller loaded (so the result is the same on every node).
* No address is invented: the host's public addresses are ``[publish] ipv4/ipv6``, else
  the global-scope addresses the mail listeners bind to (`public_addresses`); when
  neither says, the A/AAAA and PTR records are left out and `zone_text` says so.
* Names are absolute, lower case, without the trailing dot (`pymail.ops.model.Record`);
  host names inside RDATA (MX, CNAME, SRV, PTR) carry the trailing dot, as a zone file
  needs them.
* Required records (the seed's list: the host's A/AAAA, MX, SPF, DKIM when a key exists,
  DMARC, PTR) make `dns check` fail; the rest (MTA-STS, TLS-RPT, client SRV,
  autoconfig) are recommended.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from pymail.config.types import split_hostport
from pymail.dns.resolver import reverse_name
from pymail.ops.model import Record
from pymail.ops.mtasts import txt_record as mta_sts_txt

if TYPE_CHECKING:
    from pymail.config.schema import Config
    from pymail.delivery.dkimkeys import DkimKey

__all__ = [
    "CLIENT_SERVICES",
    "expected_records",
    "public_addresses",
    "records_json",
    "records_table",
    "zone_text",
]

#: The mail listeners whose addresses can be this host's public addresses.
MAIL_LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")

#: (SRV service label, [listen] key, what it is), implicit TLS first: RFC 8314 section
#: 5.1 (prefer implicit TLS) and RFC 6186 section 3.1 - 3.3 (the STARTTLS services).
CLIENT_SERVICES = (
    ("_submissions._tcp", "submissions", "mail submission over implicit TLS"),
    ("_submission._tcp", "submission", "mail submission with STARTTLS"),
    ("_imaps._tcp", "imaps", "IMAP over implicit TLS"),
    ("_imap._tcp", "imap", "IMAP with STARTTLS"),
    ("_pop3s._tcp", "pop3s", "POP3 over implicit TLS"),
    ("_pop3._tcp", "pop3", "POP3 with STLS"),
)

TXT_STRING_MAX = 255  #: octets per character-string (RFC 1035 section 3.3.14)


def _host(config: "Config") -> str:
    return config.server.hostname.lower().rstrip(".")


def public_addresses(config: "Config") -> tuple[list[str], list[str]]:
    """(IPv4, IPv6) public addresses of this host: ``[publish] ipv4/ipv6`` when either
    is set, else the global-scope addresses the mail listeners bind to (not 0.0.0.0,
    ::, loopback or private ones); ([], []) when it cannot tell."""
    if config.publish.ipv4 or config.publish.ipv6:
        return list(config.publish.ipv4), list(config.publish.ipv6)
    v4: list[str] = []
    v6: list[str] = []
    for listener in MAIL_LISTENERS:
        for hostport in getattr(config.listen, listener):
            host, _port = split_hostport(hostport)
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                continue  # a name: not an address we can publish
            if not address.is_global:
                continue
            bucket = v4 if address.version == 4 else v6
            if str(address) not in bucket:
                bucket.append(str(address))
    return v4, v6


def _port(config: "Config", listener: str) -> int | None:
    """The port of the first address of a [listen] key; None when it is off."""
    addresses = getattr(config.listen, listener)
    return split_hostport(addresses[0])[1] if addresses else None


def _mailto(address: str | None, domain: str) -> str:
    return f"mailto:{address or f'postmaster@{domain}'}"


def spf_value(config: "Config", domain: str) -> str:
    """The seed's SPF form, ``v=spf1 mx ip4:IP ~all`` (RFC 7208 section 5.4 ``mx``,
    5.6 ``ip4``/``ip6``; the ``all`` qualifier from ``[publish] spf_all``)."""
    v4, v6 = public_addresses(config)
    terms = ["v=spf1", "mx"] + [f"ip4:{ip}" for ip in v4] + [f"ip6:{ip}" for ip in v6]
    return " ".join(terms + [config.publish.spf_all])


def dkim_value(key: "DkimKey") -> str:
    """The DKIM key record (RFC 6376 section 3.6.1), as `dkimkeys.dns_record` prints it."""
    return f"v=DKIM1; k={key.algorithm}; p={key.public_b64}"


def expected_records(config: "Config", domain: str, dkim_keys: list["DkimKey"]) -> list[Record]:
    """Every record `domain` needs (see the module docstring), in the order an admin
    reads them: the host, mail routing and authentication, policies, client services,
    the PTR last."""
    domain = domain.lower().rstrip(".")
    host = _host(config)
    target = host + "."
    v4, v6 = public_addresses(config)
    records: list[Record] = []
    for ip in v4:
        records.append(Record(host, "A", ip, "the mail host's address ([server] hostname)"))
    for ip in v6:
        records.append(Record(host, "AAAA", ip, "the mail host's address ([server] hostname)"))
    for i, mx in enumerate(config.mx_hosts):
        records.append(Record(domain, "MX", f"{10 * (i + 1)} {mx}.",
                              "where mail for the domain goes (RFC 5321 section 5.1)"))
    records.append(Record(domain, "TXT", spf_value(config, domain),
                          "SPF: the hosts that send mail for the domain (RFC 7208)"))
    for key in dkim_keys:
        if key.error is None:
            records.append(Record(f"{key.selector}._domainkey.{domain}", "TXT", dkim_value(key),
                                  f"DKIM: the public key of selector {key.selector} "
                                  "(RFC 6376 section 3.6.1)"))
    dmarc = (f"v=DMARC1; p={config.publish.dmarc_policy}; "
             f"rua={_mailto(config.publish.dmarc_rua, domain)}")
    records.append(Record(f"_dmarc.{domain}", "TXT", dmarc,
                          "DMARC: what receivers do with mail failing SPF and DKIM, and where "
                          "reports go (RFC 7489)"))
    records.append(Record(f"_mta-sts.{domain}", "TXT", mta_sts_txt(config),
                          "MTA-STS: the policy's id; senders re-fetch the policy when it "
                          "changes (RFC 8461 section 3.1)", required=False))
    records.append(Record(f"mta-sts.{domain}", "CNAME", target,
                          "MTA-STS: the host serving https://mta-sts.DOMAIN/.well-known/"
                          "mta-sts.txt ([listen] https; an A record to the host's address "
                          "does too)", required=False))
    records.append(Record(f"_smtp._tls.{domain}", "TXT",
                          f"v=TLSRPTv1; rua={_mailto(config.publish.tls_rpt_rua, domain)}",
                          "TLS-RPT: where senders report TLS failures (RFC 8460)",
                          required=False))
    for label, listener, what in CLIENT_SERVICES:
        port = _port(config, listener)
        if port is not None:
            records.append(Record(f"{label}.{domain}", "SRV", f"0 1 {port} {target}",
                                  f"{what}: where mail clients find it (RFC 6186, RFC 8314 section 5.1)",
                                  required=False))
        else:
            records.append(Record(f"{label}.{domain}", "SRV", "0 0 0 .",
                                  f"{what}: off here ([listen] {listener} = []), said so "
                                  "(RFC 6186 section 3.4)", required=False))
    https = _port(config, "https")
    if https is not None:
        for name, what in (("autoconfig", "Thunderbird autoconfiguration"),
                           ("autodiscover", "Outlook Autodiscover")):
            records.append(Record(f"{name}.{domain}", "CNAME", target,
                                  f"{what}: the host serving it over HTTPS", required=False))
        records.append(Record(f"_autodiscover._tcp.{domain}", "SRV", f"0 1 {https} {target}",
                              "Outlook Autodiscover: the HTTPS service", required=False))
    for ip in v4 + v6:
        records.append(Record(reverse_name(ip), "PTR", target,
                              f"reverse DNS of {ip}: receivers check that it names the host "
                              "and that the host resolves back (FCrDNS)", in_zone=False))
    return records


# ------------------------------------------------------------------------------- output


def _quoted(value: str) -> str:
    """A TXT value as zone-file character-strings of at most 255 octets each (RFC 1035
    section 3.3.14; RFC 7208 section 3.3 and RFC 6376 section 3.6.2.2: they are joined
    without spaces)."""
    raw = value.encode("utf-8")
    chunks = [raw[i:i + TXT_STRING_MAX] for i in range(0, len(raw), TXT_STRING_MAX)] or [b""]
    out = []
    for chunk in chunks:
        text = chunk.decode("utf-8", errors="replace").replace("\\", "\\\\").replace('"', '\\"')
        out.append(f'"{text}"')
    return " ".join(out)


def zone_line(record: Record) -> str:
    value = _quoted(record.value) if record.rtype == "TXT" else record.value
    return f"{record.name}. {record.ttl} IN {record.rtype} {value}"


def _in_domain(name: str, domain: str) -> bool:
    return name == domain or name.endswith("." + domain)


def zone_text(config: "Config", domain: str, records: list[Record]) -> str:
    """A zone-file fragment for `domain`'s zone: each record after a comment naming its
    purpose; records that belong in another zone (the host name in another domain) and
    the PTR (the address owner's zone) as comment blocks."""
    domain = domain.lower().rstrip(".")
    v4, v6 = public_addresses(config)
    lines = [f"; DNS records for {domain}, served by {_host(config)} "
             f"(pymail dns records; check them with: pymail dns check {domain})"]
    if not v4 and not v6:
        lines += ["; no public address of this host is known: set [publish] ipv4 (and ipv6)",
                  "; in the config; the A/AAAA records, SPF ip4:/ip6: and the PTR need it."]
    elsewhere: list[Record] = []
    for record in records:
        if not record.in_zone:
            continue
        if not _in_domain(record.name, domain):
            elsewhere.append(record)
            continue
        need = "required" if record.required else "recommended"
        lines += ["", f"; {record.purpose} [{need}]", zone_line(record)]
    if elsewhere:
        lines += ["", "; in another zone (the host name's): publish there"]
        for record in elsewhere:
            need = "required" if record.required else "recommended"
            lines += [f";   {record.purpose} [{need}]", f";   {zone_line(record)}"]
    ptrs = [r for r in records if not r.in_zone]
    if ptrs:
        lines += ["", "; PTR (reverse DNS): not in this zone. Ask your ISP/hosting provider,",
                  "; who owns the address block, to set:"]
        lines += [f";   {zone_line(r)}" for r in ptrs]
    return "\n".join(lines) + "\n"


def records_table(records: list[Record]) -> str:
    """One line per record: need, type, name, value (tab-separated)."""
    lines = ["NEED\tTYPE\tNAME\tVALUE\tPURPOSE"]
    for r in records:
        need = "required" if r.required else "recommended"
        where = "" if r.in_zone else " (ask your ISP/hosting provider)"
        lines.append(f"{need}\t{r.rtype}\t{r.name}\t{r.value}\t{r.purpose}{where}")
    return "\n".join(lines) + "\n"


def records_json(config: "Config", domain: str, records: list[Record]) -> str:
    v4, v6 = public_addresses(config)
    return json.dumps({"domain": domain, "host": _host(config),
                       "addresses": {"ipv4": v4, "ipv6": v6},
                       "records": [asdict(r) for r in records]}, indent=2) + "\n"
