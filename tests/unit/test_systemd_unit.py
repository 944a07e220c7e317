"""The shipped systemd unit: `systemd-analyze verify` accepts it and the hardening keeps
`systemd-analyze security --offline=yes` exposure below 2.5 (issue 13).

verify checks that ExecStart's binary exists, so the unit is copied to a temporary
directory with /usr/local/bin/pymail rewritten to the pymail this test suite runs.
The sysusers/tmpfiles snippets are parsed by systemd's own tools (--dry-run / --cat).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pymail_harness import client_tool

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "pymail.service"
SYSUSERS = UNIT.with_name("pymail.sysusers")
TMPFILES = UNIT.with_name("pymail.tmpfiles")


def _pymail_binary() -> str:
    found = Path(sys.executable).with_name("pymail")
    if found.exists():
        return str(found)
    which = shutil.which("pymail")
    if which is None:
        pytest.skip("no pymail entry point installed")
    return which


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    client_tool("systemd-analyze", "systemd")
    text = UNIT.read_text().replace("/usr/local/bin/pymail", _pymail_binary())
    copy = tmp_path / "pymail.service"
    copy.write_text(text)
    return copy


def test_verify_accepts_the_unit(unit: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pymail.service" not in proc.stderr, proc.stderr  # no warnings about our unit


def test_security_exposure_below_2_5(unit: Path) -> None:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for pymail\.service: (\d+\.\d+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure < 2.5, proc.stdout


def test_unit_keeps_what_pymail_needs() -> None:
    """The hardening must not take away what pymail uses: low ports, notify (and the
    watchdog's keep-alive) from the prefork workers, SIGHUP reload and a writable data_dir."""
    text = UNIT.read_text()
    for line in ("Type=notify", "NotifyAccess=all", "AmbientCapabilities=CAP_NET_BIND_SERVICE",
                 "ExecReload=/bin/kill -HUP $MAINPID",
                 "ReadWritePaths=/var/lib/pymail", "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX"):
        assert line in text.splitlines(), line
    assert "PrivateUsers=yes" not in text  # would drop CAP_NET_BIND_SERVICE
    # The first worker answers the watchdog (pymail.process; tests/e2e/test_systemd_watchdog.py)
    assert "WatchdogSec=60s" in text.splitlines()


def test_sysusers_and_tmpfiles_create_the_user_and_directories(tmp_path: Path) -> None:
    """systemd-sysusers creates user pymail in a scratch root, then systemd-tmpfiles
    creates data_dir (pymail:pymail 0750) and /etc/pymail (root:pymail 0750) there."""
    client_tool("systemd-sysusers", "systemd")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "-"], input=SYSUSERS.read_text(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    uid = gid = None
    for line in (tmp_path / "etc" / "passwd").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "pymail":
            uid, gid = int(fields[2]), int(fields[3])
            assert fields[5:] == ["/var/lib/pymail", "/usr/sbin/nologin"]
    assert uid is not None
    proc = subprocess.run(["systemd-tmpfiles", f"--root={tmp_path}", "--create", str(TMPFILES)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data, etc = (tmp_path / "var/lib/pymail").stat(), (tmp_path / "etc/pymail").stat()
    assert (data.st_uid, data.st_gid, data.st_mode & 0o7777) == (uid, gid, 0o750)
    assert (etc.st_uid, etc.st_gid, etc.st_mode & 0o7777) == (0, gid, 0o750)
