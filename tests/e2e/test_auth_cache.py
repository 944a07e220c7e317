"""The authentication cache on a real server (issue 14 item 5): the second IMAP login of
a user is answered from the cache (``pymail_auth_cache_hits_total`` in /metrics), and
``pymail user passwd`` -- another process writing the row -- makes the old password
fail at once, the new one then being verified in full and cached in turn."""

from __future__ import annotations

import imaplib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pymail_harness import PymailServer

ALICE = "alice@example.test"


def counter(server: PymailServer, name: str) -> float:
    status, text = server.http_get("/metrics")
    assert status == 200
    match = re.search(rf"(?m)^{name} (\S+)$", text)
    return float(match.group(1)) if match else 0.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PymailServer]:
    srv = PymailServer(tmp_path, imaps=True, http=True, extra_config='[auth]\ncache_ttl = "1h"\n')
    srv.add_user(ALICE, "old pw")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()


def test_a_second_login_is_a_cache_hit_and_user_passwd_ends_it_at_once(server: PymailServer) -> None:
    hits = lambda: counter(server, "pymail_auth_cache_hits_total")  # noqa: E731
    misses = lambda: counter(server, "pymail_auth_cache_misses_total")  # noqa: E731
    assert hits() == 0
    server.imaps_client(ALICE, "old pw").logout()
    assert (hits(), misses()) == (0, 1)
    for n in range(1, 4):
        server.imaps_client(ALICE, "old pw").logout()
        assert hits() == n
    with pytest.raises(imaplib.IMAP4.error):  # a wrong password is no hit
        server.imaps_client(ALICE, "guess")
    assert hits() == 3

    server.cli("user", "passwd", ALICE, "--password-stdin", input="new pw\n")
    with pytest.raises(imaplib.IMAP4.error):
        server.imaps_client(ALICE, "old pw")
    assert hits() == 3
    server.imaps_client(ALICE, "new pw").logout()
    server.imaps_client(ALICE, "new pw").logout()
    assert hits() == 4
    log = server.log()
    assert "reason=wrong_password" in log and "old pw" not in log and "new pw" not in log


def test_cache_ttl_zero_turns_it_off(tmp_path: Path) -> None:
    srv = PymailServer(tmp_path, imaps=True, http=True, extra_config="[auth]\ncache_ttl = 0\n")
    srv.add_user(ALICE, "old pw")
    srv.start()
    try:
        for _ in range(2):
            srv.imaps_client(ALICE, "old pw").logout()
        assert counter(srv, "pymail_auth_cache_hits_total") == 0
        assert counter(srv, "pymail_auth_cache_misses_total") == 0
    finally:
        srv.stop()
