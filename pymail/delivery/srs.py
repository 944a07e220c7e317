"""SRS, the Sender Rewriting Scheme: the envelope sender of mail pymail forwards.

An alias that points outside makes pymail send someone else's mail from its own IP.  If
it kept the original reverse-path (``carol@gmail.example``), the next hop's SPF check
would fail: our address is not in that domain's SPF record.  So the forwarded copy goes
out from an address of *our* domain that encodes the original one (Shevek's "Guarded"
scheme, the one libsrs2, postsrsd and Mail::SRS use)::

    SRS0=HHHH=TT=gmail.example=carol@example.test          (first hop: us)
    SRS1=HHHH=first.example==HHHH=TT=orig.example=carol@example.test   (we forward an SRS0)

``HHHH`` is an HMAC (SHA-1, base64, 4 characters, compared case-insensitively) over the
rest with our secret, ``TT`` the day (base32, mod 1024).  A bounce to such an address
comes back to our MX, which reverses it (`SenderRewriter.reverse`) and forwards the
bounce to the original sender; a forged hash or an address older than `VALIDITY_DAYS`
is refused, so nobody can use our MX as a relay through made-up SRS addresses.

The encoding is srslib's (a small, pure-Python implementation of the Guarded scheme,
compatible with libsrs2): this module adds the secrets' file, the clock and pymail's
limits.

Invariants:
* The secret comes from ``[delivery] srs_secret_file`` (first line the current secret,
  later lines older ones still accepted for reversing: rotation), else from
  ``<data_dir>/srs.secret``, made once with 32 random bytes, mode 0600 (created with
  O_EXCL, so workers starting together agree on one).  Several nodes must share the
  file: set ``srs_secret_file`` to one they all read.
* The null sender is never rewritten (bounces are not forwarded with a sender), nor a
  sender in one of our own domains (its SPF is ours already) -- the caller checks the
  latter.  A rewritten address whose local part would exceed RFC 5321's 64 octets is not
  made (`forward` returns None; the caller keeps the original sender).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import srslib

__all__ = ["SRS_SECRET_NAME", "SenderRewriter", "SrsError", "is_srs_address", "load_srs_secrets"]

log = logging.getLogger("pymail.delivery")

#: File under data_dir holding the secret when [delivery] srs_secret_file is unset.
SRS_SECRET_NAME = "srs.secret"
#: How long a rewritten address can be reversed (libsrs2's default is 21 days too).
VALIDITY_DAYS = 21
#: RFC 5321 section 4.5.3.1.1.
MAX_LOCAL_PART = 64


class SrsError(ValueError):
    """An SRS address that is not ours to reverse: forged hash, expired, malformed."""


def is_srs_address(address: str) -> bool:
    """Whether the local part of `address` looks like SRS0/SRS1 (not that it is valid)."""
    local = address.rpartition("@")[0]
    return len(local) > 5 and local[:4].upper() in ("SRS0", "SRS1") and local[4] in "=+-"


def load_srs_secrets(secret_file: Path | None, data_dir: Path) -> list[bytes]:
    """The secrets (current first), from `secret_file`, else ``data_dir/srs.secret``
    (made on first use).  `OSError` if the file cannot be read or made; `ValueError` if
    it holds no secret."""
    path = secret_file or data_dir / SRS_SECRET_NAME
    if secret_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another worker made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
            log.info("SRS: made a new secret in %s", path)
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    found = [line.encode() for line in lines if line and not line.startswith("#")]
    if not found:
        raise ValueError(f"{path} holds no SRS secret")
    return found


class SenderRewriter:
    """Rewrites senders to our domain and reverses our own SRS addresses."""

    def __init__(self, secrets_: list[bytes], *, clock: Callable[[], float] = time.time) -> None:
        if not secrets_:
            raise ValueError("SRS needs a secret")
        self._srs = srslib.SRS(secrets_[0], prev_secrets=secrets_[1:], validity_days=VALIDITY_DAYS)
        # srslib's own hook for its time (it reads the day from it)
        self._srs._time_fn = clock

    def forward(self, sender: str, domain: str) -> str | None:
        """The SRS0 (or, for an SRS address of another forwarder, SRS1) address at
        `domain` for `sender`; None for the null sender or when it would be too long."""
        if not sender or "@" not in sender:
            return None
        try:
            rewritten = self._srs.forward(sender, domain.lower())
        except srslib.Error:
            return None
        if len(rewritten.rpartition("@")[0].encode()) > MAX_LOCAL_PART:
            return None
        return rewritten

    def reverse(self, address: str) -> str:
        """The address an SRS address of ours stands for (the original sender, or for
        SRS1 the first forwarder's SRS0 address); `SrsError` if the hash is forged, the
        address expired or it is not SRS."""
        try:
            return self._srs.reverse(address)
        except srslib.Error as e:
            raise SrsError(str(e)) from None
