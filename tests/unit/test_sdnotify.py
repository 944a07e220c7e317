"""Tests for pymail.net.sdnotify against real AF_UNIX datagram sockets (path and abstract)."""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymail.net import sdnotify


@pytest.fixture
def path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket at a file system path, exported as $NOTIFY_SOCKET."""
    short_dir = None
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) > 100:  # sun_path is 108 bytes
        short_dir = tempfile.TemporaryDirectory(prefix="sdn")
        path = Path(short_dir.name) / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()
    if short_dir is not None:
        short_dir.cleanup()


@pytest.fixture
def abstract_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket in the abstract namespace, exported as @name."""
    name = f"pymail-test-{os.getpid()}-{secrets.token_hex(6)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield sock
    sock.close()


def test_ready_stopping_status_on_path_socket(path_socket: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert path_socket.recv(4096) == b"READY=1"
    assert sdnotify.status("delivering: 3 queued") is True
    assert path_socket.recv(4096) == b"STATUS=delivering: 3 queued"
    assert sdnotify.stopping() is True
    assert path_socket.recv(4096) == b"STOPPING=1"


def test_abstract_namespace_socket(abstract_socket: socket.socket) -> None:
    assert sdnotify.notify("READY=1\nSTATUS=up") is True
    assert abstract_socket.recv(4096) == b"READY=1\nSTATUS=up"


def test_status_is_one_line_and_utf8(path_socket: socket.socket) -> None:
    assert sdnotify.status("line one\nREADY=1\r\nthree — ünïcode")
    assert path_socket.recv(4096) == "STATUS=line one READY=1 three — ünïcode".encode()


def test_no_notify_socket_is_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "")
    assert sdnotify.ready() is False


@pytest.mark.parametrize("address", [
    "/nonexistent/dir/notify.sock", "relative/notify.sock", "vsock:2:1234", "@", "/",
    "@pymail-nobody-listens-" + "x" * 200,
])
def test_unusable_addresses_are_false_never_raise(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    assert sdnotify.ready() is False
    assert sdnotify.status("x") is False


def test_path_that_is_not_a_socket(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    monkeypatch.setenv("NOTIFY_SOCKET", str(regular))
    assert sdnotify.stopping() is False


def test_stream_socket_instead_of_datagram(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"pymail-test-stream-{secrets.token_hex(6)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + name)
        listener.listen(1)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.ready() is False  # EPROTOTYPE, swallowed


def test_bad_arguments_never_raise(path_socket: socket.socket) -> None:
    assert sdnotify.notify(None) is False  # type: ignore[arg-type]
    assert sdnotify.notify("") is False
    assert sdnotify.notify("\udcff") is False  # not encodable
    assert sdnotify.status(12) is True  # str() of anything printable
    assert path_socket.recv(4096) == b"STATUS=12"


def test_failures_log_at_debug_only(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger=sdnotify.__name__)
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify.sock")
    assert sdnotify.ready() is False
    assert caplog.records and all(r.levelname == "DEBUG" for r in caplog.records)
