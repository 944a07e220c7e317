"""POP3 response encoding, sans-IO: status lines, multi-line responses, and the pieces
RETR and TOP stream a message through.

* A status line is ``+OK text`` or ``-ERR [CODE] text`` and CRLF (RFC 1939 section 3);
  the text is one line of printable characters (anything else becomes ``?``), at most
  `MAX_TEXT` characters, so a response line stays within RFC 2449 section 4's 512 octets.
* Response codes (RFC 2449 section 8, RFC 3206) are named constants; the session puts
  one in brackets at the start of the text.
* A multi-line response is its status line, the lines dot-stuffed, and ``.`` CRLF
  (RFC 1939 section 3).  `DotStuffer` does the same for a message streamed in chunks
  of any size; `LineLimit` keeps the first n lines of a body for TOP.
* `unique_id` is the UIDL of a message (RFC 1939 section 7): printable, at most 70
  characters, derived from the mailbox's UIDVALIDITY and the message's UID, so it is the
  same in every session and names the message IMAP calls by that UID.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

# Response codes: RFC 2449 section 8 (IN-USE, LOGIN-DELAY), RFC 3206 (SYS/TEMP,
# SYS/PERM, AUTH).
CODE_IN_USE = "IN-USE"
CODE_LOGIN_DELAY = "LOGIN-DELAY"
CODE_SYS_TEMP = "SYS/TEMP"
CODE_SYS_PERM = "SYS/PERM"
CODE_AUTH = "AUTH"

MAX_TEXT = 400
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")
# A LF not preceded by CR (a stored message with bare LF line ends).
_BARE_LF = re.compile(rb"(?<!\r)\n")


def _text(text: str) -> str:
    return _UNPRINTABLE.sub("?", text)[:MAX_TEXT]


def _status(indicator: str, text: str, code: str | None) -> bytes:
    parts = [indicator]
    if code:
        parts.append(f"[{code}]")
    if text:
        parts.append(_text(text))
    return (" ".join(parts) + "\r\n").encode("utf-8")


def ok(text: str = "", code: str | None = None) -> bytes:
    """``+OK [code] text`` CRLF."""
    return _status("+OK", text, code)


def err(text: str, code: str | None = None) -> bytes:
    """``-ERR [code] text`` CRLF."""
    return _status("-ERR", text, code)


def multiline(text: str, lines: Iterable[str | bytes]) -> bytes:
    """A whole multi-line response: ``+OK text``, each line (without its CRLF) with a
    leading ``.`` doubled, then the terminating ``.`` line (RFC 1939 section 3)."""
    out = [ok(text)]
    for line in lines:
        data = line.encode("utf-8") if isinstance(line, str) else line
        out.append(b"." + data + b"\r\n" if data.startswith(b".") else data + b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)


def sasl_challenge(data: bytes) -> bytes:
    """A SASL server challenge, ``+ <base64>`` CRLF (RFC 5034 section 4)."""
    return b"+ " + base64.b64encode(data) + b"\r\n"


def unique_id(uidvalidity: int, uid: int) -> str:
    """The UIDL unique-id of a message: ``<UIDVALIDITY>.<UID>`` in decimal (at most 21
    characters of 0x21-0x7E, RFC 1939 section 7).  UIDs are never reused within a
    UIDVALIDITY, so an id is never given to two messages."""
    return f"{uidvalidity}.{uid}"


class DotStuffer:
    """Turns message bytes, fed in chunks of any size, into the body of a multi-line
    response (RFC 1939 section 3):

    * every line end becomes CRLF: a bare LF gets its CR, also when the CR of a CRLF
      ended the previous chunk (it was sent already; the LF alone follows);
    * a line that starts with ``.`` gets one more ``.`` in front, also when the line
      starts a chunk;
    * `finish` ends the last line with CRLF if the message did not, then adds the
      terminating ``.`` CRLF.

    Fields: ``at_line_start`` the next byte starts a line; ``after_cr`` the last byte
    sent was CR.  Memory is one chunk: nothing is held back between calls.
    """

    def __init__(self) -> None:
        self.at_line_start = True
        self.after_cr = False

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        out = _BARE_LF.sub(b"\r\n", data)
        if self.after_cr and data[:1] == b"\n":
            out = out[1:]  # the CR of this CRLF ended the previous chunk
        out = out.replace(b"\n.", b"\n..")
        if self.at_line_start and out[:1] == b".":
            out = b"." + out
        self.at_line_start = out.endswith(b"\n")
        self.after_cr = out.endswith(b"\r")
        return out

    def finish(self) -> bytes:
        """The end of the multi-line response."""
        tail = b""
        if not self.at_line_start:
            tail = b"\n" if self.after_cr else b"\r\n"
        self.at_line_start, self.after_cr = True, False
        return tail + b".\r\n"


class LineLimit:
    """Keeps the first ``lines`` lines of a body fed in chunks (TOP, RFC 1939 section 7).

    A line ends at LF (a bare CR does not end a line).  ``done`` once that many line
    ends have passed; `take` then returns ``b""``.  A last line without its LF counts
    as a line: it is kept whole."""

    def __init__(self, lines: int) -> None:
        self.remaining = lines

    @property
    def done(self) -> bool:
        return self.remaining <= 0

    def take(self, data: bytes) -> bytes:
        """The prefix of ``data`` that is within the limit."""
        if self.done:
            return b""
        count = data.count(b"\n")
        if count < self.remaining:
            self.remaining -= count
            return data
        end = -1
        for _ in range(self.remaining):
            end = data.index(b"\n", end + 1)
        self.remaining = 0
        return data[:end + 1]
