"""Fixtures shared by every test directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pymail_harness import PymailServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PymailServer]:
    """A running pymail (embedded storage) with domain example.test and two users."""
    srv = PymailServer(tmp_path)
    srv.cli("domain", "add", "example.test")
    srv.add_user("alice@example.test")
    srv.add_user("bob@example.test")
    srv.start()
    try:
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
