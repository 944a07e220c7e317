"""`StreamConnection.peer_gone` / `output_lost`: what counts as the client's hang-up
(issue 14 item 7); the real sockets are in tests/e2e/test_hangups.py."""

from __future__ import annotations

import socket
import ssl

from pymail.net.listen import StreamConnection


class Transport:
    def __init__(self, closing: bool) -> None:
        self.closing = closing

    def is_closing(self) -> bool:
        return self.closing


class Writer:
    def __init__(self, closing: bool = False, sock: socket.socket | None = None) -> None:
        self.transport = Transport(closing)
        self.sock = sock

    def get_extra_info(self, name: str) -> object:
        return self.sock if name == "socket" else None


def connection(writer: Writer, *, tls: bool = False) -> StreamConnection:
    conn = object.__new__(StreamConnection)
    conn.writer, conn.tls, conn._poller = writer, tls, None  # type: ignore[assignment]
    return conn


def test_client_gone_errors_and_groups_of_them_are_hang_ups() -> None:
    conn = connection(Writer())
    assert conn.peer_gone(ConnectionResetError()) and conn.peer_gone(BrokenPipeError())
    assert conn.peer_gone(ssl.SSLEOFError()) and conn.peer_gone(EOFError())
    assert conn.peer_gone(ExceptionGroup("x", [BrokenPipeError(), ConnectionResetError()]))
    assert not conn.peer_gone(ExceptionGroup("x", [BrokenPipeError(), KeyError()]))
    assert not conn.peer_gone(AttributeError("a bug"))  # the output is fine: a bug


def test_any_error_once_the_output_is_lost_is_a_hang_up() -> None:
    conn = connection(Writer(closing=True))
    assert conn.output_lost() and conn.peer_gone(AttributeError("'NoneType' has no 'write'"))


def test_on_tls_a_client_fin_means_the_output_is_lost_not_on_plain_tcp() -> None:
    ours, theirs = socket.socketpair()
    try:
        tls, plain = connection(Writer(sock=ours), tls=True), connection(Writer(sock=ours))
        assert not tls.output_lost() and not plain.output_lost()
        theirs.shutdown(socket.SHUT_WR)
        assert tls.output_lost()
        assert not plain.output_lost()  # a half-closed client may still read
    finally:
        ours.close()
        theirs.close()
