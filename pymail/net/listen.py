"""Helpers the listening services share."""

from __future__ import annotations

import socket
from collections.abc import Iterable


def bound_addresses(sockets: Iterable[socket.socket]) -> list[str]:
    """The "host:port" ("[v6]:port") each listening socket is bound to (the real port when
    port 0 was asked), as the start-up log lines show them."""
    out = []
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        out.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return out
