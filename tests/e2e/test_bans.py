"""Bans end to end: two real pymail processes (nodes) on one index, on both storage pairs,
failed IMAPS logins from distinct loopback addresses, and the `pymail ban` commands."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.conftest import StorageSetup
from tests.e2e.imap_login import imap_login, start_with_imaps
from tests.pymail_harness import PymailServer

FAILED = "[AUTHENTICATIONFAILED] Authentication failed"
BANS = """
[auth.ban]
max_failures = 3
find_time = "10m"
ban_time = "30m"
account_max_failures = 0
"""


def refused(answer: str) -> bool:
    """A banned address: refused at connect (BYE greeting) or at login."""
    return answer.startswith("* BYE") or answer == FAILED


def two_nodes(tmp_path: Path, storage: StorageSetup) -> tuple[PymailServer, PymailServer]:
    config = storage.config
    if not config:  # sqlite+file: both processes on one index file and one blob directory
        shared = tmp_path / "shared"
        config = f'[storage]\nindex = "sqlite://{shared}/index.sqlite3"\nblobs = "file://{shared}/blobs"\n'
    nodes = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        nodes.append(PymailServer(tmp_path / name, storage_config=config, imaps=True,
                                  extra_config=BANS, hostname=f"{name}.example.test"))
    return nodes[0], nodes[1]


def test_a_ban_made_on_one_node_holds_on_the_other(tmp_path: Path, storage: StorageSetup) -> None:
    node_a, node_b = two_nodes(tmp_path, storage)
    node_a.add_user("alice@example.test")
    start_with_imaps(node_a)
    start_with_imaps(node_b)
    try:
        user = "alice@example.test"
        assert imap_login(node_b, user, "secret-pw", source="127.0.0.6") == "OK"
        for _ in range(3):
            assert imap_login(node_a, user, "wrong", source="127.0.0.5") == FAILED
        assert re.search(r"ban: rip=127\.0\.0\.5 failures=3 until=\S+Z reason=authentication service=imap",
                         node_a.log())
        # node b never saw 127.0.0.5 (nothing cached): it learns the ban from the index
        assert refused(imap_login(node_b, user, "secret-pw", source="127.0.0.5"))
        assert refused(imap_login(node_a, user, "secret-pw", source="127.0.0.5"))
        assert imap_login(node_b, user, "secret-pw", source="127.0.0.6") == "OK"
        assert "authenticated: service=imap rip=127.0.0.5" not in node_a.log().split("ban: rip=127.0.0.5")[1]
        assert "authenticated: service=imap rip=127.0.0.5" not in node_b.log()

        listed = node_b.cli("ban", "list").stdout.splitlines()
        assert len(listed) == 1 and listed[0].startswith("127.0.0.5\tuntil=")
        assert listed[0].endswith("\tfailures=3\treason=authentication")

        removed = node_b.cli("ban", "remove", "127.0.0.5")
        assert removed.stdout.startswith("ban of 127.0.0.5 removed")
        assert node_a.cli("ban", "list").stdout == ""
        # each node notices within its few seconds of cache: poll, no timing asserted
        for node in (node_a, node_b):
            deadline = time.monotonic() + 60
            while (answer := imap_login(node, user, "secret-pw", source="127.0.0.5")) != "OK":
                assert refused(answer), answer
                assert time.monotonic() < deadline, "the ban was not lifted"
                time.sleep(0.5)

        again = node_a.cli("ban", "remove", "127.0.0.5", check=False)
        assert again.returncode == 1
        assert again.stderr.strip() == "pymail: error: not found: 127.0.0.5 is not banned"
        bad = node_a.cli("ban", "remove", "not-an-address", check=False)
        assert bad.returncode == 1
        assert bad.stderr.strip() == "pymail: error: 'not-an-address' is not an IP address"
    finally:
        node_a.stop()
        node_b.stop()
