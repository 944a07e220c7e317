"""DKIM private keys on disk: where they live, how they are made, which one signs, and
the DNS record that publishes each (RFC 6376 section 3.6.1, RFC 8463 section 4.2).

Layout (``[dkim] key_dir``, default ``data_dir/dkim``)::

    key_dir/                      mode 0700
      example.org/                mode 0700
        mail.rsa.pem              PKCS#8 PEM, mode 0600: selector "mail", RSA
        2027.rsa.pem              a second selector (rotation)
        mail-ed25519.ed25519.pem  an Ed25519 key (a second signature)

A selector names one DNS record (``SELECTOR._domainkey.DOMAIN``), so it names one key:
an RSA and an Ed25519 key never share a selector (keygen refuses; if two files do, the
Ed25519 one is reported and does not sign).

Which key signs, per domain and algorithm: the one whose selector is ``[dkim]
selector`` when the domain has it, else the newest file of that algorithm (its modification time; ties by
name).  So rotating is: `pymail dkim keygen DOMAIN --selector NEW`, publish its record,
then make it sign (set ``[dkim] selector = "NEW"``, or remove the old file once no
domain uses the configured selector); keep the old record published a few days for
mail still in transit.

Invariants: keys are written 0600 in a 0700 directory, never over an existing file
unless asked (`KeyExists`); a file that cannot be read or parsed is reported
(`DkimKey.error`) and never signs; nothing here talks to the network.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

__all__ = [
    "ALGORITHMS",
    "DkimKey",
    "KeyExists",
    "dns_record",
    "domain_keys",
    "generate_key",
    "list_keys",
    "signing_keys",
]

#: file suffix -> the a= tag's key part (RFC 6376 section 3.5, RFC 8463 section 3)
ALGORITHMS = {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}
RSA_BITS = (1024, 2048, 3072, 4096)  #: RFC 8301 section 3.2: at least 1024; 2048 the default
MIN_RSA_BITS = 1024
_FILE = re.compile(r"^(?P<selector>[A-Za-z0-9](?:[A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)"
                   r"\.(?P<algorithm>rsa|ed25519)\.pem$")


class KeyExists(Exception):
    """keygen would overwrite an existing key file."""


@dataclass(frozen=True)
class DkimKey:
    """One key file: ``key_dir/domain/selector.algorithm.pem``."""

    domain: str
    selector: str
    algorithm: str  #: "rsa" | "ed25519"
    path: Path
    mtime_ns: int
    private: Any = field(default=None, repr=False, compare=False)  #: a cryptography key
    error: str | None = None  #: why it cannot sign (unreadable, wrong type, too short)

    @property
    def bits(self) -> int:
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.key_size
        return 256 if self.private is not None else 0

    @property
    def public_b64(self) -> str:
        """The p= tag: the SubjectPublicKeyInfo DER for RSA, the raw 32 octets for
        Ed25519 (RFC 8463 section 4.2)."""
        public = self.private.public_key()
        if self.algorithm == "ed25519":
            raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(raw).decode()

    def sign(self, digest: bytes) -> bytes:
        """The b= signature of a SHA-256 `digest` of the canonical header (OpenSSL,
        constant time: RSASSA-PKCS1-v1_5 for RSA, PureEdDSA over the digest for
        Ed25519 as RFC 8463 section 3 says)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, utils

        if self.algorithm == "ed25519":
            return self.private.sign(digest)
        return self.private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))


def _load(domain: str, selector: str, algorithm: str, path: Path) -> DkimKey:
    try:
        mtime = path.stat().st_mtime_ns
        data = path.read_bytes()
    except OSError as e:
        return DkimKey(domain, selector, algorithm, path, 0, error=f"cannot read: {e.strerror or e}")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as e:
        return DkimKey(domain, selector, algorithm, path, mtime, error=f"not a PEM private key ({e})")
    expected = rsa.RSAPrivateKey if algorithm == "rsa" else ed25519.Ed25519PrivateKey
    if not isinstance(key, expected):
        return DkimKey(domain, selector, algorithm, path, mtime,
                       error=f"not an {algorithm} key (the file name says {algorithm})")
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size < MIN_RSA_BITS:
        return DkimKey(domain, selector, algorithm, path, mtime,
                       error=f"RSA key of {key.key_size} bits (RFC 8301: at least {MIN_RSA_BITS})")
    return DkimKey(domain, selector, algorithm, path, mtime, private=key)


def domain_keys(key_dir: Path, domain: str) -> list[DkimKey]:
    """Every key file of `domain` (loaded; broken ones carry their `error`), sorted by
    algorithm then selector."""
    folder = key_dir / domain.lower()
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = []
    for name in names:
        m = _FILE.match(name)
        if m:
            keys.append(_load(domain.lower(), m["selector"], m["algorithm"], folder / name))
    rsa_selectors = {k.selector for k in keys if k.algorithm == "rsa"}
    keys = [k if k.algorithm == "rsa" or k.selector not in rsa_selectors or k.error
            else replace(k, error="its selector is also the RSA key's: one DNS record "
                         "publishes one key (give it another selector)")
            for k in keys]
    return sorted(keys, key=lambda k: (k.algorithm != "rsa", k.selector))


def list_keys(key_dir: Path) -> list[DkimKey]:
    """Every key of every domain under `key_dir`."""
    try:
        domains = sorted(d for d in os.listdir(key_dir) if (key_dir / d).is_dir())
    except FileNotFoundError:
        return []
    return [k for d in domains for k in domain_keys(key_dir, d)]


def signing_keys(keys: list[DkimKey], selector: str) -> list[DkimKey]:
    """The keys that sign, at most one per algorithm, RSA first (see the module
    docstring: the configured selector, else the newest)."""
    chosen = []
    for algorithm in ALGORITHMS:
        usable = [k for k in keys if k.algorithm == algorithm and k.error is None]
        if not usable:
            continue
        preferred = [k for k in usable if k.selector == selector]
        chosen.append(preferred[0] if preferred
                      else max(usable, key=lambda k: (k.mtime_ns, k.selector)))
    return chosen


def generate_key(key_dir: Path, domain: str, selector: str, *, algorithm: str = "rsa",
                 bits: int = 2048, force: bool = False) -> DkimKey:
    """Make a new key file (0600, its directories 0700); `KeyExists` if there is one."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r} (rsa or ed25519)")
    if algorithm == "rsa" and bits not in RSA_BITS:
        raise ValueError(f"RSA keys have {', '.join(map(str, RSA_BITS))} bits, not {bits}")
    if not _FILE.match(f"{selector}.{algorithm}.pem"):
        raise ValueError(f"invalid selector {selector!r} (letters, digits, '-', '.', '_')")
    folder = key_dir / domain.lower()
    for d in (key_dir, folder):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(d, 0o700)
    path = folder / f"{selector}.{algorithm}.pem"
    if path.exists() and not force:
        raise KeyExists(f"{path} exists (use --force to replace it)")
    other = folder / f"{selector}.{'ed25519' if algorithm == 'rsa' else 'rsa'}.pem"
    if other.exists():
        raise KeyExists(f"selector {selector!r} is taken by {other.name}: one DNS record "
                        "publishes one key, choose another selector")
    key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=bits)
                if algorithm == "rsa" else ed25519.Ed25519PrivateKey.generate())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return _load(domain.lower(), selector, algorithm, path)


def dns_record(key: DkimKey) -> str:
    """The zone-file line to publish: ``SELECTOR._domainkey.DOMAIN. TXT "..." "..."``,
    the value cut into character-strings of at most 255 octets (RFC 1035 section
    3.3.14; RFC 6376 section 3.6.2.2: a verifier joins them)."""
    value = f"v=DKIM1; k={key.algorithm}; p={key.public_b64}"
    strings = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return f"{key.selector}._domainkey.{key.domain}. TXT {strings}"
