"""Several processes opening one NEW SQLite index at the same instant (the embedded
default): two worker processes, or a CLI command beside a starting daemon.

Each process runs what `pymail serve` and every CLI command run first,
`prepare_storage(config)` (check, open, migrate), at an instant shared by all of them,
on a fresh data directory per round.  Before the fix, one process in about one round of
five got ``StorageError: sqlite: database is locked``: switching a new file to WAL needs
an exclusive lock, and SQLite answers a connection that would deadlock for it at once,
without honouring the busy timeout (pymail/store/sqlite/database.py `_ensure_wal`).
60 rounds made that failure all but certain (0.8 ** 60 < 1e-5); now every round passes.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path

import pytest

ROUNDS = 60
PROCESSES = 2  #: two processes race hardest on the 2-core box (more only queue up)
SPACING = 0.05  #: seconds between the rounds' start instants


def _open_at(configs: list[str], start: float, results) -> None:  # runs in a child process
    from pymail.app import prepare_storage
    from pymail.config import load_config

    async def open_once(config) -> str:
        try:
            store = await prepare_storage(config)
        except Exception as e:  # noqa: BLE001 - reported to the test
            return f"{type(e).__name__}: {e}"
        await store.close()
        return ""

    for n, path in enumerate(configs):
        config = load_config(Path(path))
        go = start + n * SPACING
        if go - time.time() > 0.003:
            time.sleep(go - time.time() - 0.003)
        while time.time() < go:  # spin the last few ms: all processes start together
            pass
        results.put((n, asyncio.run(open_once(config))))


@pytest.mark.slow
def test_processes_opening_a_new_index_at_once_all_succeed(tmp_path: Path) -> None:
    configs = []
    for n in range(ROUNDS):
        directory = tmp_path / f"round{n}"
        directory.mkdir()
        (directory / "pymail.toml").write_text(f'[server]\ndata_dir = "{directory}"\n')
        configs.append(str(directory / "pymail.toml"))
    context = multiprocessing.get_context("spawn")  # separate interpreters, nothing shared
    results = context.Queue()
    start = time.time() + 5  # after every child imported pymail
    children = [context.Process(target=_open_at, args=(configs, start, results)) for _ in range(PROCESSES)]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=120) for _ in range(ROUNDS * PROCESSES)]
    finally:
        for child in children:
            child.join(30)
    failed = sorted((n, error) for n, error in outcomes if error)
    assert not failed, f"{len({n for n, _ in failed})} of {ROUNDS} rounds failed: {failed[:5]}"
    assert all(child.exitcode == 0 for child in children)

