"""`pymail firewall`: the ports the configured listeners serve, and nothing else."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pymail.config.schema import Config
from pymail.ops.firewall import openings, render_nftables, render_ufw

PRODUCTION = {
    "smtp": ["0.0.0.0:25", "[::]:25"],
    "submission": ["0.0.0.0:587"],
    "submissions": ["0.0.0.0:465"],
    "imap": [],
    "imaps": ["0.0.0.0:993"],
    "pop3": ["127.0.0.1:110"],  # loopback only: no rule
    "pop3s": ["[::]:995"],
    "http": ["127.0.0.1:2080"],
    "web": ["0.0.0.0:80"],
    "https": ["0.0.0.0:443"],
}


def config(tmp_path: Path, **listen) -> Config:
    return Config.model_validate({"server": {"hostname": "mail.example.com", "data_dir": str(tmp_path)},
                                  "listen": listen})


def test_the_seeds_ufw_list_and_nothing_more(tmp_path: Path) -> None:
    found, warnings = openings(config(tmp_path, **PRODUCTION))
    assert [o.port for o in found] == [25, 80, 443, 465, 587, 993, 995]
    assert warnings == []
    lines = [line for line in render_ufw(found, warnings).splitlines() if not line.startswith("#")]
    assert lines[0] == "ufw allow 25/tcp comment 'pymail smtp (MX)'"
    assert all(re.fullmatch(r"ufw allow \d+/tcp comment '[^']+'", line) for line in lines)
    assert len(lines) == 7


def test_loopback_listeners_open_nothing(tmp_path: Path) -> None:
    found, warnings = openings(config(tmp_path))  # the embedded default: all on 127.0.0.1
    assert found == [] and warnings == []
    assert "nothing to open" in render_ufw(found, warnings)


def test_public_monitoring_is_a_warning_not_a_rule(tmp_path: Path) -> None:
    found, warnings = openings(config(tmp_path, smtp=["0.0.0.0:25"], http=["0.0.0.0:9100"]))
    assert [o.port for o in found] == [25]
    assert len(warnings) == 1 and "9100" in warnings[0] and "monitoring network" in warnings[0]


def test_one_rule_per_port_naming_every_listener_on_it(tmp_path: Path) -> None:
    found, _ = openings(config(tmp_path, smtp=["192.0.2.1:25"], submission=["[2001:db8::1]:25"]))
    assert len(found) == 1 and found[0].services == ("smtp", "submission")


def test_nftables_table_accepts_exactly_those_ports(tmp_path: Path) -> None:
    found, warnings = openings(config(tmp_path, **PRODUCTION))
    text = render_nftables(found, warnings)
    body = [line.strip() for line in text.splitlines() if not line.startswith("#")]
    assert body[:3] == ["table inet pymail {", "chain input {",
                        "type filter hook input priority filter; policy accept;"]
    assert body[-2:] == ["}", "}"]
    ports = [int(m.group(1)) for line in body if (m := re.fullmatch(r'tcp dport (\d+) accept comment "[^"]+"', line))]
    assert ports == [25, 80, 443, 465, 587, 993, 995]
    assert len(body) == 3 + len(ports) + 2  # nothing else in the table
    assert text.count("{") == text.count("}")


def test_cli_prints_rules_and_refuses_two_formats(tmp_path: Path) -> None:
    conf = tmp_path / "pymail.toml"
    conf.write_text(f'[server]\nhostname = "mail.example.com"\ndata_dir = "{tmp_path}"\n'
                    '[listen]\nsmtp = ["0.0.0.0:25"]\nhttp = ["0.0.0.0:2080"]\n')
    run = [sys.executable, "-m", "pymail", "--config", str(conf), "firewall"]
    ufw = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert ufw.returncode == 0, ufw.stderr
    assert "ufw allow 25/tcp comment 'pymail smtp (MX)'" in ufw.stdout
    assert "2080" in ufw.stderr and "warning" in ufw.stderr
    nft = subprocess.run(run + ["--nftables"], capture_output=True, text=True, timeout=60)
    assert nft.returncode == 0 and "tcp dport 25 accept" in nft.stdout
    both = subprocess.run(run + ["--ufw", "--nftables"], capture_output=True, text=True, timeout=60)
    assert both.returncode == 2 and "not allowed with" in both.stderr
    assert "Traceback" not in both.stderr
