"""Several nodes, one store: two pymail processes on the same PostgreSQL + S3."""

from __future__ import annotations

import asyncio
import smtplib
import threading
from pathlib import Path

from pymail.store import ChangeFeed, MailboxChange
from tests.conftest import make_storage
from tests.pymail_harness import PymailServer


def test_two_nodes_share_one_store(tmp_path: Path, request) -> None:  # noqa: ANN001
    storage = make_storage("postgres+s3", request, tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    node_a = PymailServer(tmp_path / "a", storage_config=storage.config, hostname="a.example.test")
    node_b = PymailServer(tmp_path / "b", storage_config=storage.config, hostname="b.example.test")
    node_a.cli("domain", "add", "example.test")
    node_a.add_user("alice@example.test")
    assert "alice@example.test" in node_b.cli("user", "list").stdout  # one directory
    node_a.start()
    node_b.start()
    try:
        async def scenario() -> list[MailboxChange]:
            store = node_a.store()
            assert isinstance(store.index, ChangeFeed)
            changes: list[MailboxChange] = []
            feed = store.index.watch()
            try:
                first = asyncio.ensure_future(feed.__anext__())
                await asyncio.sleep(0.5)  # the listener is in place

                def deliver() -> None:
                    for n in range(6):
                        node = (node_a, node_b)[n % 2]
                        with smtplib.SMTP("127.0.0.1", node.port, timeout=30) as client:
                            client.sendmail("c@remote.example", ["alice@example.test"],
                                            f"Subject: via {node.port} #{n}\r\n\r\nx\r\n".encode())

                sender = threading.Thread(target=deliver)
                sender.start()
                changes.append(await asyncio.wait_for(first, 30))
                while len({c.uidnext for c in changes}) < 6:
                    changes.append(await asyncio.wait_for(feed.__anext__(), 30))
                await asyncio.to_thread(sender.join)
            finally:
                await feed.aclose()
                await store.close()
            return changes

        changes = asyncio.run(scenario())
        inbox = node_b.inbox("alice@example.test")  # read through node b's config
        assert [uid for uid, _, _ in inbox] == [1, 2, 3, 4, 5, 6]
        subjects = [blob.split(b"Subject: ")[1].split(b"\r\n")[0] for _, blob, _ in inbox]
        assert [s.endswith(b"#%d" % n) for n, s in enumerate(subjects)] == [True] * 6
        assert {s.split(b" ")[1] for s in subjects} == {str(node_a.port).encode(), str(node_b.port).encode()}
        # every delivery, from either node, was announced to the watcher on node a's store
        assert sorted({c.uidnext for c in changes}) == [2, 3, 4, 5, 6, 7]
        assert len({c.mailbox_id for c in changes}) == 1
    finally:
        node_a.stop()
        node_b.stop()
