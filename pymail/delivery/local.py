"""The local copy's MIME structure: what the index stores beside a delivered blob
(ENVELOPE and BODYSTRUCTURE with part offsets, `pymail.mail.mime.MessageStructure`).

Local delivery itself -- for the MX, submission, IMAP APPEND and pymail's own bounces --
is `pymail.delivery.pipeline.Pipeline.deliver`, the one path (blob first, then one index
transaction, then the reply: docs/architecture.md, "The durability rule").  It parses
every local copy with these helpers.

Invariant: no large parse on the event loop.  A message in memory larger than
`PARSE_IN_THREAD_ABOVE` is parsed in a thread; a spooled one (larger than
``limits.spool_threshold``) is never read into memory: `structure_json_of_file` parses
it over an mmap of the spool file (file pages, which the kernel can drop), and is
called in a thread.
"""

from __future__ import annotations

import asyncio
import mmap
from pathlib import Path

from pymail.mail.mime import parse_structure

__all__ = ["PARSE_IN_THREAD_ABOVE", "structure_json", "structure_json_of_file"]

#: Messages larger than this are parsed in a thread so other sessions are not held up.
PARSE_IN_THREAD_ABOVE = 256 * 1024


def _structure_json(message: bytes) -> str:
    return parse_structure(message).to_json()


async def structure_json(message: bytes) -> str:
    """The stored structure (JSON) of `message`, parsed in a thread when it is large."""
    if len(message) > PARSE_IN_THREAD_ABOVE:
        return await asyncio.to_thread(_structure_json, message)
    return _structure_json(message)


def structure_json_of_file(path: Path) -> str:
    """The structure of the message in `path`, parsed over an mmap (blocking: run it in
    a thread)."""
    with open(path, "rb") as f:
        if not f.seek(0, 2):  # an empty file cannot be mapped
            return _structure_json(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return parse_structure(mapped).to_json()
