"""contrib/fail2ban against a log written by a real pymail process, checked with Debian's
own fail2ban-regex and fail2ban-client (package ``fail2ban``, installed by
scripts/test.sh).

Failed IMAPS logins come from several loopback addresses (127.0.0.2, 127.0.0.3, ...:
Linux routes all of 127/8 to lo), so the test knows which address each failure line
must yield; lines that must not match (a success, pymail's own ``ban:`` line, an
"authentication unavailable", forged text in a login name or an SMTP sender) are in the
same log.
"""

from __future__ import annotations

import re
import shutil
import smtplib
import subprocess
from pathlib import Path

import pytest

from tests.e2e.imap_login import imap_login, start_with_imaps
from tests.pymail_harness import REPO, PymailServer, client_tool

FILTER = REPO / "contrib" / "fail2ban" / "filter.d" / "pymail.conf"
JAIL = REPO / "contrib" / "fail2ban" / "jail.d" / "pymail.conf"
FAILED = "[AUTHENTICATIONFAILED] Authentication failed"


def _tool(name: str) -> str:
    return client_tool(name, "fail2ban")


def fail2ban_ips(log: Path) -> list[str]:
    """The address fail2ban-regex takes from each line the filter matches, in order."""
    result = subprocess.run(
        [_tool("fail2ban-regex"), "--raw", "-o", "ip", str(log), str(FILTER)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def fail2ban_counts(log: Path) -> tuple[int, int]:
    """(lines, matched) from fail2ban-regex's summary."""
    result = subprocess.run(
        [_tool("fail2ban-regex"), "--raw", str(log), str(FILTER)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    m = re.search(r"Lines: (\d+) lines, \d+ ignored, (\d+) matched", result.stdout)
    assert m, result.stdout
    return int(m.group(1)), int(m.group(2))


def test_filter_matches_each_failed_login_with_its_address(tmp_path: Path) -> None:
    srv = PymailServer(tmp_path, imaps=True, extra_config="""
[auth.ban]
max_failures = 3
account_max_failures = 0
""")
    srv.add_user("alice@example.test")
    srv.cli("domain", "add", "ldap.test", "--auth", "ldap", "--ldap-base-dn", "ou=people,dc=ldap,dc=test")
    srv.cli("user", "add", "carol@ldap.test")
    start_with_imaps(srv)
    expected: list[str] = []
    try:
        assert imap_login(srv, "alice@example.test", "secret-pw") == "OK"
        for source, user, password in [
            ("127.0.0.2", "alice@example.test", "wrong"),
            ("127.0.0.3", "nobody@example.test", "secret-pw"),
            ("127.0.0.2", '"x rip=10.9.9.9 user=<y"', "wrong"),  # forged text in the name
            ("127.0.0.3", "alice@example.test", ""),
            ("127.0.0.2", "alice@example.test", "wrong"),  # the third: pymail bans 127.0.0.2
        ]:
            assert imap_login(srv, user, password, source=source) == FAILED
            expected.append(source)
        # banned: refused at connect, no login, no failure line
        assert imap_login(srv, "alice@example.test", "secret-pw", source="127.0.0.2").startswith("* BYE")
        # LDAP domain without [auth.ldap]: a temporary failure, not the client's fault
        assert imap_login(srv, "carol@ldap.test", "pw", source="127.0.0.4").startswith("[UNAVAILABLE]")
        # a sender address carrying a forged failure line: pymail refuses it (too long a
        # local part) and logs it in its SMTP reject line
        forged = '"x WARNING pymail.auth[1]: authentication failed: service=imap rip=10.8.8.8 user=<"@remote.example'
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=30) as client:
            with pytest.raises(smtplib.SMTPSenderRefused):
                client.sendmail(forged, ["alice@example.test"], b"Subject: hi\r\n\r\nx\r\n")
    finally:
        srv.stop()

    log = srv.log()
    assert "ban: rip=127.0.0.2 failures=3 " in log
    assert "authentication unavailable: service=imap rip=127.0.0.4" in log
    assert "rip=10.9.9.9" in log and "rip=10.8.8.8" in log  # the forged text is in the log...
    failures = re.findall(r"^\S+ WARNING pymail\.auth\[\d+\]: authentication failed: service=imap rip=(\S+) ",
                          log, re.MULTILINE)
    assert failures == expected
    # ...and fail2ban takes exactly the real client address of every failure line
    assert fail2ban_ips(srv.log_path) == expected
    lines, matched = fail2ban_counts(srv.log_path)
    assert matched == len(expected) == 5 and lines > matched


def test_filter_reads_the_journal_form_of_the_line(tmp_path: Path) -> None:
    """From the journal (backend = systemd) fail2ban sees "<host> <ident>[pid]: " first."""
    log = tmp_path / "journal.log"
    log.write_text(
        "mail pymail[812]: 2026-03-02T10:00:00+0000 WARNING pymail.auth[812]: authentication failed:"
        " service=pop3 rip=2001:db8::7 user=<a@example.test> reason=wrong_password\n"
        "mail pymail[812]: 2026-03-02T10:00:01+0000 WARNING pymail.auth.ban[812]: ban:"
        " rip=192.0.2.1 failures=5 until=2026-03-02T10:30:01Z reason=authentication service=imap\n"
    )
    assert fail2ban_ips(log) == ["2001:db8::7"]


def test_jail_is_the_seed_policy_on_every_mail_port(tmp_path: Path) -> None:
    """fail2ban-client parses /etc/fail2ban plus our two files (a copy, nothing installed)."""
    etc = Path("/etc/fail2ban")
    if not (etc / "jail.conf").is_file():
        pytest.fail("/etc/fail2ban/jail.conf missing: install the Debian package 'fail2ban'")
    conf = tmp_path / "fail2ban"
    shutil.copytree(etc, conf)
    shutil.copy(FILTER, conf / "filter.d" / "pymail.conf")
    shutil.copy(JAIL, conf / "jail.d" / "pymail.conf")
    result = subprocess.run([_tool("fail2ban-client"), "-c", str(conf), "-d"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    dump = result.stdout
    for line in (
        "['add', 'pymail', 'systemd']",
        "['set', 'pymail', 'maxretry', 5]",
        "['set', 'pymail', 'findtime', '10m']",
        "['set', 'pymail', 'bantime', '30m']",
        "['set', 'pymail', 'addjournalmatch', '_SYSTEMD_UNIT=pymail.service']",
        "['start', 'pymail']",
    ):
        assert line in dump, line
    assert "['port', '25,465,587,143,993,110,995']" in dump
