"""Edits of a received message's header that the inbound checks ask for: fields added at
the top, fields removed (forged Authentication-Results, what Rspamd's milter block
says), the Subject rewritten.

Fields added go at the top of the header (RFC 5321 section 4.4, RFC 8601 section 5:
trace-like fields are prepended), below a leading Return-Path, which final delivery put
first.  Every other field keeps its octets: a DKIM signature over them still verifies.

`edit_header` works on the header block's octets only; the caller copies the body
(pymail.delivery.pipeline).  A header larger than the part given is left as it is
beyond that part, except that fields are still added.
"""

from __future__ import annotations

import email.header
from collections.abc import Callable
from dataclasses import dataclass, field

from pymail.mail.headers import HeaderField, parse_header

__all__ = ["HeaderEdit", "edit_header", "encode_field"]


def _keep(_field: HeaderField) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class HeaderEdit:
    """What to change in a header (an empty edit changes nothing)."""

    prepend: bytes = b""  #: whole fields, CRLF-terminated, put at the top
    #: fields for which this returns True are removed
    remove: Callable[[HeaderField], bool] = field(default=_keep)
    subject: str | None = None  #: a new Subject value (encoded here when not ASCII)

    @property
    def empty(self) -> bool:
        return not self.prepend and self.remove is _keep and self.subject is None


def encode_field(name: str, value: str) -> bytes:
    """``Name: value`` + CRLF; a non-ASCII value as RFC 2047 UTF-8 encoded-words,
    folded (RFC 5322 section 2.2.3)."""
    if value.isascii():
        text = " ".join(value.split())
        return f"{name}: {text}\r\n".encode()
    encoded = email.header.Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    return f"{name}: {encoded}\r\n".encode("ascii")


def edit_header(head: bytes, edit: HeaderEdit) -> tuple[bytes, int]:
    """(the new header fields, octets of `head` they replace): the caller writes the
    first, then the message from the second on.  `head` is the start of the message
    (at least its header block, where it can)."""
    block = parse_header(head)
    out: list[bytes] = []
    fields = list(block.fields)
    if fields and fields[0].lower_name == "return-path":
        out.append(fields.pop(0).raw)
    out.append(edit.prepend)
    subject_done = edit.subject is None
    for f in fields:
        if edit.remove(f):
            continue
        if not subject_done and f.lower_name == "subject":
            out.append(encode_field("Subject", edit.subject or ""))
            subject_done = True
            continue
        out.append(f.raw)
    if not subject_done:
        out.append(encode_field("Subject", edit.subject or ""))
    return b"".join(out), block.fields_end
