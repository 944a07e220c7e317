"""DKIM signing of outbound mail (RFC 6376; Ed25519-SHA256 from RFC 8463): the
`DkimSigner` the delivery pipeline calls (its `Signer` protocol) for the outbound copy
of mail from our users and for pymail's own DSNs.

What a signature is made of:
* relaxed/relaxed canonicalisation (RFC 6376 section 3.4.2 and 3.4.4), no ``l=`` (a
  body length limit lets anyone append to the body), no ``i=``, ``t=`` the signing time;
* an RSA-SHA256 signature with the domain's RSA key and, when the domain also has an
  Ed25519 key, a second Ed25519-SHA256 signature (RFC 8463 section 6: receivers that
  do not know Ed25519 ignore it and verify the RSA one);
* ``h=``: the fields of `OVERSIGNED` once more than they occur (RFC 6376 section 8.15:
  signing a field one extra time, "as null", stops anyone adding another instance, so
  no second From or Subject can be slipped in above ours), the fields of `SIGNED_ONCE`
  as often as they occur (lists add their List-* fields: not oversigned, as maddy).

The work split: pymail.mail.headers splits the header into its raw fields (a header
with a stray line is not signed), dkimpy canonicalises them (`Relaxed`) and picks the
instances `h=` names (`select_headers`); the body is
canonicalised here in a streaming pass (a 50 MB message is hashed in 1 MB pieces, never
held whole; `test_dkim.py` checks it equals dkimpy's), and the RSA/Ed25519 operation is
OpenSSL's through `cryptography`: dkimpy's own RSA is pure Python, about ten times
slower (benchmarks/dkim.py) and not constant time.

Keys (pymail.delivery.dkimkeys) are loaded once per domain and reloaded when a key file
of the domain changes (a stat of its folder and files per message, in the signing
thread).  All of it -- stat, read, hash, sign -- runs in a worker thread, never on the
event loop.  A message pymail cannot parse, or a domain without a usable key, is sent
unsigned (logged): a broken key file must not stop outbound mail.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import dkim
from dkim.canonicalization import Relaxed

from pymail.delivery.dkimkeys import ALGORITHMS, DkimKey, domain_keys, signing_keys
from pymail.mail.headers import HeaderBlock, parse_header

if TYPE_CHECKING:
    from pymail.config.schema import Config
    from pymail.delivery.spool import MessageContent

__all__ = ["OVERSIGNED", "SIGNED_ONCE", "DkimSigner", "RelaxedBodyHash", "sign_message",
           "signer_from_config"]

log = logging.getLogger("pymail.dkim")

#: Signed once more than present (maddy's list, internal/modify/dkim/dkim.go).
OVERSIGNED = ("from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
              "mime-version", "content-type", "content-transfer-encoding", "in-reply-to",
              "references")
#: Signed as often as present.
SIGNED_ONCE = ("list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post",
               "list-subscribe", "list-post", "list-owner", "list-archive",
               "resent-date", "resent-from", "resent-sender", "resent-to", "resent-cc",
               "resent-message-id", "auto-submitted", "content-language", "autocrypt")
MAX_HEADER = 256 * 1024  #: a header block larger than this is not signed
_CHUNK = 1024 * 1024
_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]*[a-z0-9])?")
_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")
_SPACES = re.compile(rb"  +")
_WSP = re.compile(rb"[ \t]+")
_BARE_LF = re.compile(rb"(?<!\r)\n")


class RelaxedBodyHash:
    """SHA-256 of a body under relaxed canonicalisation (RFC 6376 section 3.4.4), fed in
    pieces: trailing white space of each line removed, runs of white space made one
    space, empty lines at the end ignored, a non-empty body ending in one CRLF.  Empty
    lines are held back until a non-empty line follows (they may be the end)."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._rest = b""  #: an incomplete last line
        self._blank = 0  #: CRLFs held back
        self._any = False  #: a non-empty line was hashed

    def update(self, data: bytes) -> None:
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        if cut:
            self._lines(data[:cut])

    def _lines(self, block: bytes) -> None:
        # Tabs made spaces, runs of spaces one, then the one space left before a line
        # end dropped: the same result as regex substitutions of every WSP run, at a
        # tenth of the cost (a per-match substitution is slow on a text with many runs).
        if block.count(b"\n") != block.count(b"\r\n"):  # bare LFs: CRLF, as dkimpy reads them
            block = _BARE_LF.sub(b"\r\n", block)
        block = block.translate(_TAB_TO_SPACE)
        if b"  " in block:
            block = _SPACES.sub(b" ", block)
        block = block.replace(b" \r\n", b"\r\n")
        end = len(block)
        while end >= 2 and block.startswith(b"\r\n", end - 2):
            end -= 2
        ending = (len(block) - end) // 2
        content = block[:end]
        if content:
            self._hash.update(b"\r\n" * self._blank + content)
            self._any = True
            self._blank = ending
        else:
            self._blank += ending

    def digest(self) -> bytes:
        # a last line without CRLF (not from SMTP, whose DATA ends in CRLF): its
        # white space compressed, not removed, and a CRLF added, as dkimpy does
        rest = _WSP.sub(b" ", self._rest)
        if rest:
            self._hash.update(b"\r\n" * self._blank + rest + b"\r\n")
        elif self._any:
            self._hash.update(b"\r\n")
        self._rest, self._blank, self._any = b"", 0, False
        return self._hash.digest()


def _header_names(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """The h= list: each field of OVERSIGNED and SIGNED_ONCE present, in message order,
    then one more of each OVERSIGNED name (present or not)."""
    wanted = set(OVERSIGNED) | set(SIGNED_ONCE)
    names = [name.strip().lower() for name, _ in headers]
    present = [n for n in names if n.decode("ascii", "replace") in wanted]
    return present + [n.encode() for n in OVERSIGNED]


def _fold_tags(tags: list[tuple[str, str]]) -> str:
    """``DKIM-Signature:`` value text: tags joined by "; ", lines folded before a tag
    or inside h= at a colon, kept under 78 columns (FWS is allowed there, RFC 6376
    section 3.2 and 3.5)."""
    lines = []
    current = "DKIM-Signature:"
    for n, (tag, value) in enumerate(tags):
        piece = f" {tag}={value}" + (";" if n < len(tags) - 1 else "")
        if tag == "h" and len(current) + len(piece) > 76:
            lines.append(current)
            current = "\t"
            items = value.split(":")
            current += f"h={items[0]}"
            for item in items[1:]:
                if len(current) + len(item) + 2 > 76:
                    lines.append(current + ":")
                    current = f"\t{item}"
                else:
                    current += f":{item}"
            current += ";"
            continue
        if len(current) + len(piece) > 76 and current.strip():
            lines.append(current)
            current = "\t" + piece.lstrip()
        else:
            current += piece
    lines.append(current)
    return "\r\n".join(lines)


def sign_message(headers: list[tuple[bytes, bytes]], body_hash: bytes, domain: str,
                 keys: list[DkimKey], *, now: float) -> bytes:
    """The DKIM-Signature fields (one per key, CRLF-terminated) for a message whose
    header is `headers` ((name, raw value) pairs, `HeaderBlock.pairs`) and whose relaxed body
    hash is `body_hash`."""
    names = _header_names(headers)
    canonical = Relaxed.canonicalize_headers(headers)
    selected = dkim.select_headers(canonical, names)
    signed_part = b"".join(name + b":" + value for name, value in selected)
    out = []
    for key in keys:
        tags = [("v", "1"), ("a", ALGORITHMS[key.algorithm]), ("c", "relaxed/relaxed"),
                ("d", domain), ("s", key.selector), ("t", str(int(now))),
                ("h", ":".join(n.decode() for n in names)),
                ("bh", base64.b64encode(body_hash).decode()), ("b", "")]
        unsigned = _fold_tags(tags).encode()
        # RFC 6376 section 3.7: the signature field itself, b= empty, canonicalised,
        # without its final CRLF, after the signed fields
        name, value = unsigned.split(b":", 1)
        [(cname, cvalue)] = Relaxed.canonicalize_headers([(name, value)])
        digest = hashlib.sha256(signed_part + cname + b":" + cvalue.rstrip(b"\r\n")).digest()
        b64 = base64.b64encode(key.sign(digest)).decode()
        last_line = len(unsigned) - unsigned.rfind(b"\n") - 1
        first = max(0, 76 - last_line)
        folded = b64[:first] + "".join("\r\n\t" + b64[i:i + 72]
                                       for i in range(first, len(b64), 72))
        out.append(unsigned + folded.encode() + b"\r\n")
    return b"".join(out)


class _DomainCache:
    """The keys of one domain and the fingerprint (names, mtimes, sizes) they were
    loaded from."""

    def __init__(self, fingerprint: tuple, keys: list[DkimKey]) -> None:
        self.fingerprint = fingerprint
        self.keys = keys


class DkimSigner:
    """The pipeline's `Signer`: DKIM-Signature fields for a domain with keys under
    `key_dir` (see the module docstring)."""

    def __init__(self, key_dir: Path, *, selector: str = "mail",
                 clock: Callable[[], float] = time.time) -> None:
        self.key_dir = Path(key_dir)
        self.selector = selector
        self.clock = clock
        self._cache: dict[str, _DomainCache] = {}
        self._lock = threading.Lock()

    async def signature(self, message: MessageContent, domain: str) -> bytes | None:
        return await asyncio.to_thread(self.sign, message.data, message.path, domain)

    # -- in the worker thread ---------------------------------------------------------

    def keys_for(self, domain: str) -> list[DkimKey]:
        """The keys that sign for `domain`, reloaded when its files changed."""
        domain = domain.lower().rstrip(".")
        if not domain.isascii():  # a U-label From domain: its key is under the A-label
            try:
                domain = domain.encode("idna").decode("ascii")
            except UnicodeError:
                return []
        if not _DOMAIN.fullmatch(domain):  # never a path outside key_dir, nor a NUL
            return []
        folder = self.key_dir / domain
        try:
            entries = sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size)
                             for e in os.scandir(folder) if e.name.endswith(".pem"))
        except (FileNotFoundError, NotADirectoryError):
            entries = []
        except OSError as e:
            log.error("DKIM keys of %s: cannot read %s: %s", domain, folder, e.strerror or e)
            entries = []
        fingerprint = tuple(entries)
        with self._lock:
            cached = self._cache.get(domain)
            if cached is not None and cached.fingerprint == fingerprint:
                return cached.keys
        keys = domain_keys(self.key_dir, domain) if entries else []
        for k in keys:
            if k.error:
                log.error("DKIM key %s cannot sign: %s", k.path, k.error)
        chosen = signing_keys(keys, self.selector)
        if chosen:
            log.info("DKIM keys for %s: %s", domain,
                     ", ".join(f"{k.selector} ({k.algorithm} {k.bits})" for k in chosen))
        with self._lock:
            self._cache[domain] = _DomainCache(fingerprint, chosen)
        return chosen

    def sign(self, data: bytes | None, path: Path | None, domain: str) -> bytes | None:
        """DKIM-Signature fields for the message in `data` or the file `path`; None
        when the domain has no usable key or the header cannot be parsed."""
        keys = self.keys_for(domain)
        if not keys:
            return None
        body = RelaxedBodyHash()
        try:
            if data is not None:
                header = self._header(data[:MAX_HEADER + 4], domain)
                if header is None:
                    return None
                body.update(data[header.body_start:])
            else:
                assert path is not None
                with open(path, "rb") as f:
                    header = self._header(f.read(MAX_HEADER + 4), domain)
                    if header is None:
                        return None
                    f.seek(header.body_start)
                    while chunk := f.read(_CHUNK):
                        body.update(chunk)
        except OSError as e:
            log.error("DKIM: not signing for %s: cannot read %s: %s", domain, path, e.strerror or e)
            return None
        if header.get("From") is None:
            return None
        # d= is the key's domain: lower case, A-labels (RFC 6376 section 3.5)
        return sign_message(header.pairs(), body.digest(), keys[0].domain, keys, now=self.clock())

    @staticmethod
    def _header(head: bytes, domain: str) -> HeaderBlock | None:
        """The parsed header of a message that starts with `head`, or None (logged) when
        it is not one verifiers would read as we do."""
        header = parse_header(head)
        if not header.clean:
            log.warning("DKIM: not signing for %s: a malformed header line at offset %d",
                        domain, header.fields_end)
            return None
        if header.body_start == len(head) and len(head) > MAX_HEADER:
            log.warning("DKIM: not signing for %s: no end of header in %d octets",
                        domain, MAX_HEADER)
            return None
        return header


def signer_from_config(config: Config) -> DkimSigner | None:
    """The signer of ``[dkim]`` (None when signing is off)."""
    if not config.dkim.sign:
        return None
    return DkimSigner(config.dkim_key_dir, selector=config.dkim.selector)
