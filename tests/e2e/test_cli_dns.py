"""`pymail dns records` and `pymail dns check` as an admin runs them (real subprocesses)
against the tests' NSD: the printed records, served by NSD as the zone, check clean
(exit 0); then each wrong case is named in the output with exit 1.

Our "public address" is the loopback 127.0.0.1 (``[publish] ipv4``): the reverse zone
127.in-addr.arpa of the test internet has its PTR to mail.example.test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.e2e.test_cli import one_line_error, run
from tests.internet import LOCAL_DOMAIN, PYMAIL_ADDRESS, PYMAIL_HOSTNAME, default_zones, dkim_record, make_dkim_key

REVERSE = "127.in-addr.arpa"


@pytest.fixture
def conf(tmp_path: Path, internet) -> Path:  # noqa: ANN001 - tests.internet.Internet
    path = tmp_path / "pymail.toml"
    path.write_text(f"""
[server]
hostname = "{PYMAIL_HOSTNAME}"
data_dir = "{tmp_path / 'data'}"

[listen]
https = ["127.0.0.1:8443"]
pop3 = []

[publish]
ipv4 = ["{PYMAIL_ADDRESS}"]

[dkim]
selector = "s1"

{internet.dns_config()}
""")
    assert run("--config", str(path), "dkim", "keygen", LOCAL_DOMAIN).returncode == 0
    return path


def dns(conf: Path, *args: str):
    return run("--config", str(conf), "dns", *args)


def lines_of(output: str) -> dict[tuple[str, str], str]:
    """(TYPE, NAME) -> the status word of each record line of `dns check`."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"^(ok|info|MISSING|WRONG|ERROR)\s+(\S+)\s+(\S+)  ", line)
        if m:
            found[(m[2], m[3])] = m[1]
    return found


def line(output: str, rtype: str, name: str) -> str:
    [found] = [x for x in output.splitlines()
               if re.match(rf"^\S+\s+{re.escape(rtype)}\s+{re.escape(name)}  ", x)]
    return found


def published_zone(conf: Path, internet) -> str:  # noqa: ANN001
    result = dns(conf, "records", LOCAL_DOMAIN)
    assert result.returncode == 0, result.stderr
    internet.set_zone(LOCAL_DOMAIN, result.stdout)
    return result.stdout


def test_printed_records_served_check_clean(conf: Path, internet) -> None:  # noqa: ANN001
    zone = published_zone(conf, internet)
    assert f'{LOCAL_DOMAIN}. 3600 IN TXT "v=spf1 mx ip4:{PYMAIL_ADDRESS} ~all"' in zone
    assert f";   1.0.0.{REVERSE}. 3600 IN PTR {PYMAIL_HOSTNAME}." in zone
    dkim_line = next(x for x in zone.splitlines() if x.startswith(f"s1._domainkey.{LOCAL_DOMAIN}."))
    assert dkim_line.count('" "') == 1  # a 2048-bit key: two strings, joined by the checker
    # a domain not in the directory (there is none yet) is a warning, not a failure
    result = dns(conf, "check", LOCAL_DOMAIN)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"warning: {LOCAL_DOMAIN} is not in the directory" in result.stderr
    statuses = lines_of(result.stdout)
    assert set(statuses.values()) == {"ok"}, result.stdout
    assert len(statuses) == 18
    assert f"pass for {PYMAIL_ADDRESS}" in line(result.stdout, "TXT", LOCAL_DOMAIN)
    assert "(FCrDNS)" in line(result.stdout, "PTR", f"1.0.0.{REVERSE}")
    assert result.stdout.splitlines()[-1] == f"{LOCAL_DOMAIN}: every required record is right"

    as_json = json.loads(dns(conf, "check", LOCAL_DOMAIN, "--format", "json").stdout)
    assert as_json["ok"] is True and len(as_json["checks"]) == 18
    table = dns(conf, "records", LOCAL_DOMAIN, "--format", "table").stdout
    assert f"required\tPTR\t1.0.0.{REVERSE}\t{PYMAIL_HOSTNAME}." in table


def test_each_wrong_record_is_named(conf: Path, internet) -> None:  # noqa: ANN001
    zone = published_zone(conf, internet)
    _pem, other_key = make_dkim_key()
    kept = [x for x in zone.splitlines()
            if not x.startswith((f"{LOCAL_DOMAIN}. 3600 IN TXT", f"{LOCAL_DOMAIN}. 3600 IN MX",
                                 "s1._domainkey.", "_dmarc.", "mta-sts."))]
    internet.set_zone(LOCAL_DOMAIN, "\n".join(kept) + f"""
@ TXT "v=spf1 ip4:127.0.0.9 -all"
@ MX 10 mx.remote.test.
{dkim_record("s1", other_key)}
mta-sts CNAME mx.remote.test.
""")
    internet.set_zone(REVERSE, "1.0.0 PTR mx.remote.test.\n2.0.0 PTR mx.remote.test.\n")
    result = dns(conf, "check", LOCAL_DOMAIN)
    out = result.stdout
    assert result.returncode == 1, out
    assert f"{PYMAIL_ADDRESS} is not authorised: SPF gives fail" in line(out, "TXT", LOCAL_DOMAIN)
    assert "the key is not ours" in line(out, "TXT", f"s1._domainkey.{LOCAL_DOMAIN}")
    assert "the MX points at mx.remote.test, not at mail.example.test" in line(out, "MX", LOCAL_DOMAIN)
    assert line(out, "TXT", f"_dmarc.{LOCAL_DOMAIN}").startswith("MISSING")
    assert "a CNAME to mx.remote.test, resolves to 127.0.0.2" in line(out, "CNAME", f"mta-sts.{LOCAL_DOMAIN}")
    assert ("names mx.remote.test, not mail.example.test (and no name resolves back to it: no "
            "forward-confirmed reverse DNS)") in line(out, "PTR", f"1.0.0.{REVERSE}")
    assert "fix: ask your ISP/hosting provider" in out
    assert "found:    v=spf1 ip4:127.0.0.9 -all" in out
    assert out.splitlines()[-1] == f"{LOCAL_DOMAIN}: 5 required record(s) not right"


def test_ptr_without_fcrdns(conf: Path, internet) -> None:  # noqa: ANN001
    zone = published_zone(conf, internet)
    # the PTR names the host, but the host's A is another address
    internet.set_zone(LOCAL_DOMAIN, zone.replace(f"IN A {PYMAIL_ADDRESS}", "IN A 127.0.0.5"))
    result = dns(conf, "check", LOCAL_DOMAIN)
    assert result.returncode == 1
    assert ("the PTR names mail.example.test, but mail.example.test resolves to 127.0.0.5, not "
            "127.0.0.1: no forward-confirmed reverse DNS") in line(result.stdout, "PTR", f"1.0.0.{REVERSE}")
    assert "has 127.0.0.5, not 127.0.0.1" in line(result.stdout, "A", PYMAIL_HOSTNAME)


def test_cnames_and_split_strings_are_ok(conf: Path, internet) -> None:  # noqa: ANN001
    zone = published_zone(conf, internet)
    kept = [x for x in zone.splitlines()
            if not x.startswith((f"{PYMAIL_HOSTNAME}.", f"{LOCAL_DOMAIN}. 3600 IN TXT", "mta-sts."))]
    internet.set_zone(LOCAL_DOMAIN, "\n".join(kept) + f"""
mail CNAME server
server A {PYMAIL_ADDRESS}
mta-sts A {PYMAIL_ADDRESS}
@ TXT "v=spf1 " "mx " "ip4:{PYMAIL_ADDRESS} " "~all"
""")
    result = dns(conf, "check", LOCAL_DOMAIN)
    assert result.returncode == 0, result.stdout
    assert "through the CNAME to server.example.test" in line(result.stdout, "A", PYMAIL_HOSTNAME)
    assert "resolves to this host's address" in line(result.stdout, "CNAME", f"mta-sts.{LOCAL_DOMAIN}")
    assert f"pass for {PYMAIL_ADDRESS}" in line(result.stdout, "TXT", LOCAL_DOMAIN)


def test_the_test_internets_own_zone(conf: Path, internet) -> None:  # noqa: ANN001
    # default_zones()'s example.test: right host/MX/SPF (mx -all), DMARC p=reject, no DKIM key
    # record: only the DKIM record fails among the required ones
    assert "@ MX 10 mail" in default_zones()[LOCAL_DOMAIN]
    result = dns(conf, "check", LOCAL_DOMAIN)
    assert result.returncode == 1
    statuses = lines_of(result.stdout)
    assert statuses[("TXT", LOCAL_DOMAIN)] == "ok" and statuses[("MX", LOCAL_DOMAIN)] == "ok"
    assert statuses[("TXT", f"_dmarc.{LOCAL_DOMAIN}")] == "ok"
    assert statuses[("TXT", f"s1._domainkey.{LOCAL_DOMAIN}")] == "MISSING"
    assert f"{LOCAL_DOMAIN}: 1 required record(s) not right" in result.stdout


def test_dns_failure_is_an_error_and_bad_domain_one_line(conf: Path) -> None:
    # NSD serves no zone for elsewhere.test: REFUSED, no answer at all -> ERROR, never MISSING
    result = dns(conf, "check", "elsewhere.test")
    assert result.returncode == 1
    statuses = lines_of(result.stdout)
    assert statuses[("MX", "elsewhere.test")] == "ERROR"
    assert "MISSING" not in statuses.values()
    assert "invalid domain name" in one_line_error(dns(conf, "records", "not a domain"))
    assert "invalid domain name" in one_line_error(dns(conf, "check", "localhost"))


def test_a_domain_in_the_directory_gets_no_warning(conf: Path) -> None:
    assert run("--config", str(conf), "domain", "add", LOCAL_DOMAIN).returncode == 0
    result = dns(conf, "records", LOCAL_DOMAIN, "--format", "json")
    assert result.returncode == 0 and "directory" not in result.stderr, result.stderr
    assert json.loads(result.stdout)["addresses"] == {"ipv4": [PYMAIL_ADDRESS], "ipv6": []}
    other = dns(conf, "records", "other.test")
    assert other.returncode == 0
    assert "warning: other.test is not in the directory: pymail does not serve it" in other.stderr
