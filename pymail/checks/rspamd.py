"""Rspamd over HTTP: scan a message (``/checkv2``), and teach its Bayes (``/learnspam``,
``/learnham`` on the controller worker).

The protocol is Rspamd's own, not an RFC (OUTBOUND.md, "Wire protocols"): the body is
the raw message, the SMTP facts travel as request headers (``IP``, ``Helo``,
``Hostname``, ``From``, one ``Rcpt`` per recipient, ``Queue-Id``, ``User``,
``TLS-Cipher``, ``TLS-Version``) and the answer is JSON.  ``Pass: all`` is never sent:
Rspamd's own early exits (GTUBE, a settings "skip") are what an admin expects.

Invariants:

* `RspamdClient.check` either returns a `SpamVerdict` whose ``action`` is one Rspamd
  documents, or raises `ScannerError` with a one-line reason: a connection failure, a
  timeout, a status other than 200, a body that is not JSON or has no known action are
  all outages, never "clean" (OUTBOUND.md complaint 9: nothing unscanned passes as
  scanned; what an outage does is the policy's business).
* A spooled message is streamed from its file in `CHUNK` pieces read in a worker
  thread; only an in-memory message (under the spool threshold) is sent from memory.
* Header values are the client's words (HELO, MAIL FROM): CR, LF and other control
  characters are replaced by spaces before they go on the wire.
* Every request is one HTTP/1.1 exchange over a connection of its own
  (`_exchange`): Rspamd 3.4 answers every request with ``Connection: close``, keep-alive
  asked or not, so a pooling client (aiohttp) only adds its cost -- measured, its
  connection set-up was 15% of the MX's event-loop time with checks on.
* `learn` treats "already learned" (HTTP 208: the learn cache knows the message; HTTP
  204 "all learn conditions denied": Bayes files it in that class already) as done; a
  refusal Rspamd will repeat for the same message (HTTP 204, fewer tokens than
  ``min_tokens``; another 4xx with an error text) raises `LearnRefused` (a
  `ScannerError`), so a retrying caller can drop it; everything else -- 401/403 (wrong
  password), 5xx, Redis down (Rspamd 3.4 then answers a malformed status line), no
  connection -- is a plain `ScannerError`: retry later.  The controller's answers are
  read the same way (a pooling client would also refuse a 204 with a body).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from pymail.checks.results import ScannerError, SpamVerdict
from pymail.delivery.spool import MessageContent

__all__ = ["ACTIONS", "CHUNK", "LearnRefused", "RspamdClient", "RspamdMeta", "parse_verdict"]

#: The actions Rspamd answers with (its ``actions.conf``); anything else is garbage.
ACTIONS = frozenset({"no action", "greylist", "add header", "rewrite subject",
                     "soft reject", "reject"})
#: Octets read from a spool file per thread hop while streaming it to Rspamd.
CHUNK = 256 * 1024
#: What learning answers with when the message was taught before (Bayes signatures:
#: "<id> has been already learned as spam, ignore it"; the learn condition:
#: "already in class spam; probability 99.9%"): done, not an error.
#: "all learn conditions denied learning spam": the learn condition said "already in
#: class" (Rspamd 3.4 sends only this generic text): done too.
_ALREADY = re.compile(r"already learned|already in class|learn conditions denied", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
#: Longest body text quoted in a ScannerError.
_QUOTE = 120
#: Longest answer read (a /checkv2 JSON with all its symbols is a few KB; a learn answer a line).
_MAX_ANSWER = 1024 * 1024


class LearnRefused(ScannerError):
    """Rspamd refused to learn this message and would refuse it again (not an outage)."""


@dataclass(frozen=True, slots=True)
class RspamdMeta:
    """The SMTP facts Rspamd is told beside the message."""

    ip: str  #: the client's address
    helo: str = ""  #: its EHLO/HELO argument ("" -> not sent)
    hostname: str = ""  #: its forward-confirmed PTR name ("" -> not sent: unknown)
    mail_from: str = ""  #: the reverse path ("" -> ``<>``, a bounce)
    rcpts: list[str] = field(default_factory=list)  #: envelope recipients
    queue_id: str = ""  #: the transaction's id, for Rspamd's log ("" -> not sent)
    user: str | None = None  #: the authenticated sender (submission): Rspamd scans outbound
    tls_cipher: str | None = None  #: e.g. "TLS_AES_256_GCM_SHA384" (None: plaintext)
    tls_version: str | None = None  #: e.g. "TLSv1.3"

    def headers(self) -> list[tuple[str, str]]:
        """The request headers, in order; ``Rcpt`` once per recipient."""
        out = [("IP", self.ip), ("From", self.mail_from or "<>")]
        if self.helo:
            out.append(("Helo", self.helo))
        if self.hostname:
            out.append(("Hostname", self.hostname))
        out += [("Rcpt", rcpt) for rcpt in self.rcpts]
        if self.queue_id:
            out.append(("Queue-Id", self.queue_id))
        if self.user:
            out.append(("User", self.user))
        if self.tls_cipher:
            out.append(("TLS-Cipher", self.tls_cipher))
        if self.tls_version:
            out.append(("TLS-Version", self.tls_version))
        return [(name, _clean(value)) for name, value in out]


def _clean(value: str) -> str:
    return _CONTROL.sub(" ", value).strip()


def _quote(body: bytes) -> str:
    text = _clean(body[:_QUOTE].decode("utf-8", "replace"))
    return repr(text + ("..." if len(body) > _QUOTE else ""))


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    return float(value)


def _header_values(value: Any) -> list[str]:
    """``milter.add_headers`` values: a string, ``{"value": ..., "order": n}``, or a list
    of either (one header each)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        inner = value.get("value")
        return [inner] if isinstance(inner, str) else []
    if isinstance(value, list):
        return [v for item in value for v in _header_values(item) if not isinstance(item, list)]
    return []


def parse_verdict(data: Any) -> SpamVerdict:
    """A `/checkv2` JSON answer as a `SpamVerdict`; `ScannerError` when it is not one."""
    if not isinstance(data, dict):
        raise ScannerError("rspamd answered JSON that is not an object")
    action = data.get("action")
    if action not in ACTIONS:
        raise ScannerError(f"rspamd answered no known action: {str(action)[:_QUOTE]!r}")
    symbols = data.get("symbols")
    scored: list[tuple[float, str]] = []
    if isinstance(symbols, dict):
        for name, info in symbols.items():
            score = _number(info.get("score")) if isinstance(info, dict) else 0.0
            scored.append((score, str(name)))
    scored.sort(key=lambda pair: (-pair[0], pair[1]))
    messages = data.get("messages")
    smtp_message = messages.get("smtp_message") if isinstance(messages, dict) else None
    subject = data.get("subject")
    add: list[tuple[str, str]] = []
    remove: list[str] = []
    milter = data.get("milter")
    if isinstance(milter, dict):
        headers = milter.get("add_headers")
        if isinstance(headers, dict):
            add = [(str(name), _clean(value)) for name, spec in headers.items()
                   for value in _header_values(spec)]
        removed = milter.get("remove_headers")
        if isinstance(removed, dict):
            remove = [str(name) for name in removed]
        elif isinstance(removed, list):
            remove = [name for name in removed if isinstance(name, str)]
    return SpamVerdict(
        action=action,
        score=_number(data.get("score")),
        required_score=_number(data.get("required_score")),
        symbols=tuple(name for _, name in scored),
        subject=subject if isinstance(subject, str) else None,
        smtp_message=smtp_message if isinstance(smtp_message, str) else "",
        add_headers=tuple(add),
        remove_headers=tuple(remove),
    )


async def _exchange(method: str, url: str, headers: list[tuple[str, str]],
                    body: bytes | AsyncIterator[bytes], length: int) -> tuple[int, bytes]:
    """One request over a connection of its own, the answer read to its end (Rspamd
    closes the connection after it): the status and the body.

    The controller's learn answers are not HTTP an ordinary client accepts: a 204 with
    a body ("skip learning: ..."), a status line without a number's meaning when Redis is
    down ("HTTP/1.1 1 cannot get learned: ...").  So the answer (at most `_MAX_ANSWER`
    octets) is taken apart here; a status line that makes no sense raises `ValueError`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"not an http:// URL: {url}")
    host, port = parts.hostname, parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close",
             "Accept-Encoding: identity"]
    if method == "POST":
        lines.append(f"Content-Length: {length}")
    lines += [f"{name}: {_clean(value)}" for name, value in headers]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if isinstance(body, bytes):
            writer.write(head + body)
        else:
            writer.write(head)
            async for chunk in body:
                writer.write(chunk)
                await writer.drain()
        await writer.drain()
        answer = await reader.read(_MAX_ANSWER)
        while len(answer) < _MAX_ANSWER and (more := await reader.read(_MAX_ANSWER - len(answer))):
            answer += more
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head_part, _, rest = answer.partition(b"\r\n\r\n")
    status_line = head_part.split(b"\r\n", 1)[0].decode("latin-1")
    match = re.match(r"HTTP/1\.[01] (\d{3}) ", status_line + " ")
    if match is None:
        raise ValueError(f"malformed answer: {_clean(status_line)[:_QUOTE]!r}")
    if re.search(rb"(?im)^transfer-encoding:\s*chunked", head_part):
        rest = _unchunk(rest)
    return int(match.group(1)), rest


def _unchunk(data: bytes) -> bytes:
    """The body of a chunked transfer coding (RFC 9112 section 7.1)."""
    out, position = [], 0
    while True:
        end = data.find(b"\r\n", position)
        if end < 0:
            raise ValueError("truncated chunked answer")
        size = int(data[position:end].split(b";", 1)[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        position = end + 2 + size + 2


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A spool file's octets, read in a worker thread `CHUNK` at a time."""
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


class RspamdClient:
    """One Rspamd: the normal worker at `url` (scans), its controller at
    `controller_url` (learning; ``Password`` header when `password` is set).  Every
    request ends within `timeout` seconds."""

    def __init__(self, url: str, *, timeout: float = 20.0, controller_url: str | None = None,
                 password: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.controller_url = controller_url.rstrip("/") if controller_url else None
        self.password = password
        self.timeout = timeout

    async def close(self) -> None:
        """Nothing to close (each request has its connection); kept for the callers."""

    async def _request(self, method: str, url: str, *, headers: list[tuple[str, str]] | None = None,
                       body: bytes | AsyncIterator[bytes] = b"", length: int = 0) -> tuple[int, bytes]:
        try:
            async with asyncio.timeout(self.timeout):
                return await _exchange(method, url, headers or [], body, length)
        except TimeoutError:
            raise ScannerError(f"rspamd {url}: no answer within {self.timeout:g} s") from None
        except (OSError, ValueError) as exc:
            raise ScannerError(f"rspamd {url}: {_clean(str(exc)) or type(exc).__name__}") from None

    async def check(self, message: MessageContent, meta: RspamdMeta) -> SpamVerdict:
        """Scan `message` (POST ``/checkv2``); `ScannerError` on any outage."""
        body: Any
        if message.data is not None:
            body, size = message.data, len(message.data)
        elif message.path is not None:
            # A length up front: no chunked transfer encoding, and Rspamd knows the size.
            body, size = _file_chunks(message.path), message.size
        else:
            raise ValueError("MessageContent has neither data nor path")
        url = f"{self.url}/checkv2"
        status, answer = await self._request("POST", url, headers=meta.headers(), body=body,
                                             length=size)
        if status != 200:
            raise ScannerError(f"rspamd {url} answered HTTP {status}: {_quote(answer)}")
        try:
            data = json.loads(answer)
        except ValueError:
            raise ScannerError(f"rspamd {url} answered no JSON: {_quote(answer)}") from None
        return parse_verdict(data)

    async def ping(self) -> None:
        """``GET /ping`` answers ``pong``, or `ScannerError`."""
        url = f"{self.url}/ping"
        status, answer = await self._request("GET", url)
        if status != 200 or answer.strip() != b"pong":
            raise ScannerError(f"rspamd {url} answered HTTP {status}: {_quote(answer)}")

    async def learn(self, kind: str, message: bytes) -> None:
        """Teach `message` to Rspamd's Bayes as `kind` ("spam" or "ham") through the
        controller.  Already learned counts as done; `LearnRefused` when Rspamd will not
        learn this message; `ScannerError` on an outage (retry later)."""
        if kind not in ("spam", "ham"):
            raise ValueError(f"learn kind must be 'spam' or 'ham', not {kind!r}")
        if self.controller_url is None:
            raise ScannerError("rspamd: no controller configured for learning")
        url = f"{self.controller_url}/learn{kind}"
        headers = [("Password", self.password)] if self.password else []
        status, answer = await self._request("POST", url, headers=headers, body=message,
                                             length=len(message))
        try:
            data = json.loads(answer)
        except ValueError:
            data = None
        error = data.get("error", "") if isinstance(data, dict) else ""
        if status == 200 and isinstance(data, dict) and data.get("success") is True:
            return
        if isinstance(error, str) and _ALREADY.search(error):
            return
        reason = f"rspamd {url} answered HTTP {status}: {_quote(answer)}"
        # 204 "skip learning" (fewer tokens than min_tokens), or another 4xx but a refused
        # password: Rspamd judged the message and will judge it the same way again.
        if status == 204 or (400 <= status < 500 and status not in (401, 403) and error):
            raise LearnRefused(reason)
        raise ScannerError(reason)

    def __repr__(self) -> str:
        return f"RspamdClient({self.url}, controller {self.controller_url})"
