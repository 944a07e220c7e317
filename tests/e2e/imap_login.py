"""One IMAPS login attempt from a chosen loopback address, for the authentication tests.

Linux routes all of 127.0.0.0/8 to the loopback interface, so a client bound to
127.0.0.2 reaches pymail's 127.0.0.1 listener and pymail sees ``rip=127.0.0.2``: the
tests get several distinct client addresses without leaving the machine.
"""

from __future__ import annotations

import imaplib
import socket
import ssl
import time

from tests.pymail_harness import PymailServer


class SourcedIMAP4_SSL(imaplib.IMAP4_SSL):
    """imaplib's IMAP4_SSL connecting from `source` (an address of this machine)."""

    def __init__(self, host: str, port: int, *, source: str, ssl_context: ssl.SSLContext,
                 timeout: float) -> None:
        self.source = source
        super().__init__(host, port, ssl_context=ssl_context, timeout=timeout)

    def _create_socket(self, timeout):  # noqa: ANN001, ANN202 - imaplib's signature
        sock = socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def start_with_imaps(server: PymailServer) -> PymailServer:
    """Start `server` and wait until its IMAPS port accepts connections too (the harness
    waits for the SMTP banner only)."""
    server.start()
    assert server.imaps_port is not None, "made without imaps=True"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", server.imaps_port), timeout=1):
                return server
        except OSError:
            if time.monotonic() > deadline or (server.proc is not None and server.proc.poll() is not None):
                raise RuntimeError(f"IMAPS port {server.imaps_port} does not accept:\n{server.log()}") from None
            time.sleep(0.05)


def imap_login(server: PymailServer, user: str, password: str, *, source: str = "127.0.0.1") -> str:
    """"OK" if LOGIN succeeds (then SELECT INBOX and LOGOUT), else the text of the tagged
    NO, e.g. "[AUTHENTICATIONFAILED] Authentication failed", or the greeting when it is
    not OK ("* BYE ...")."""
    assert server.imaps_port is not None, "started without imaps=True"
    context = ssl.create_default_context(cafile=str(server.ca_file))
    try:
        client = SourcedIMAP4_SSL("127.0.0.1", server.imaps_port, source=source,
                                  ssl_context=context, timeout=60)
    except imaplib.IMAP4.error as exc:  # a BYE greeting, e.g. for a banned address
        text = exc.args[0] if exc.args else b""
        return text.decode() if isinstance(text, bytes) else str(text)
    try:
        try:
            client.login(user, password)
        except imaplib.IMAP4.error as exc:
            text = exc.args[0] if exc.args else b""
            return text.decode() if isinstance(text, bytes) else str(text).removeprefix("b'").removesuffix("'")
        client.select("INBOX")
        client.logout()
        return "OK"
    finally:
        try:
            client.shutdown()
        except OSError:
            pass
