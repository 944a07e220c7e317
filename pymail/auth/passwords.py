"""Dovecot-style ``{SCHEME}`` password hashes: make new ones, verify old ones.

pymail reads the seed's ``virtual_users.password`` column, which an existing Postfix +
Dovecot installation filled with values such as ``{SHA512-CRYPT}$6$...`` or
``{SSHA512}base64...``.  This module verifies every scheme such a table is likely to hold,
and writes new hashes as ``{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$salt$hash``, a value
Dovecot itself (libsodium) verifies too, so the table stays usable by either server.

Formats (Dovecot's "Password Schemes" documentation, ``src/auth/password-scheme*.c``):

* ``{ARGON2ID}`` / ``{ARGON2I}``: the PHC string of RFC 9106 Argon2 (``$argon2id$...``).
* ``{BLF-CRYPT}``: bcrypt, ``$2y$`` as Dovecot writes it; ``$2a$`` and ``$2b$`` accepted.
* ``{SHA512-CRYPT}`` / ``{SHA256-CRYPT}``: glibc's SHA-crypt (``$6$`` / ``$5$``, optional
  ``rounds=N$``), U. Drepper, "Unix crypt using SHA-256 and SHA-512".
* ``{CRYPT}``: libc crypt(3); only the modular formats above are understood (no DES).
* ``{SSHA512}`` / ``{SSHA256}`` / ``{SSHA}``: ``base64(digest(password + salt) + salt)``.
* ``{SHA512}`` / ``{SHA256}`` / ``{SHA}`` (alias ``{SHA1}``): ``base64(digest(password))``.
* ``{PLAIN}`` / ``{CLEARTEXT}``: the password itself.

Scheme names are case-insensitive.  The digest and plain schemes take Dovecot's encoding
suffix (``{SSHA512.b64}``, ``{SHA256.hex}``, ``.base64``); without one, an unsalted digest
whose length is exactly twice the digest size is read as hex, as Dovecot guesses
(``password_decode()``), everything else as base64.  A value without a ``{...}`` prefix is
recognised by its crypt(3) prefix (``$6$``, ``$5$``, ``$2?$``, ``$argon2id$``,
``$argon2i$``), else read with the caller's ``default_scheme`` (Dovecot's
``default_pass_scheme``).

Invariants:

* ``verify_password`` never raises, whatever it is given: an unknown scheme, a malformed or
  truncated hash, a non-``str`` argument or an unencodable password all give ``False``.
* Secrets are compared with ``hmac.compare_digest`` (or inside the hash library's own
  constant-time verify).  Passwords are ``str`` and hashed as UTF-8.
* Nothing here logs a password or a hash; debug lines name the scheme and the reason only.
* Every function is CPU-bound and blocking (``hash_password`` ~0.14 s): asyncio callers run
  it in a thread (``asyncio.to_thread``).  argon2-cffi and bcrypt release the GIL; the
  SHA-crypt code (libpass, pure Python over hashlib) mostly does not, but costs ~3 ms.
* ``dummy_verify`` does the same work as checking a wrong password against an
  ``{ARGON2ID}`` hash of the given cost, so an unknown user and a wrong password take the
  same time.
* New hashes take their Argon2id cost from an `Argon2Cost` (``[auth] argon2_time_cost``,
  ``argon2_memory_cost``, ``argon2_parallelism``; default: the constants below), never
  below `OWASP_ARGON2ID_MINIMUMS`.  A stored hash is verified with the parameters in its
  own PHC string (``m=...,t=...,p=...``), whatever the configured cost is now.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import argon2
import argon2.low_level
import bcrypt
from passlib.hash import sha256_crypt, sha512_crypt

__all__ = [
    "DEFAULT_ARGON2_COST",
    "DEFAULT_SCHEME",
    "OWASP_ARGON2ID_MINIMUMS",
    "Argon2Cost",
    "SUPPORTED_SCHEMES",
    "dummy_verify",
    "hash_password",
    "needs_rehash",
    "scheme_of",
    "verify_password",
]

log = logging.getLogger(__name__)

#: The scheme every new hash is written in.
DEFAULT_SCHEME = "ARGON2ID"

# Argon2id parameters for new hashes: RFC 9106 section 4, second recommended option
# (64 MiB, 3 passes), but with one lane (p=1) instead of the RFC's 4.  Dovecot verifies
# ARGON2* with libsodium, which only handles p=1, so p=1 keeps every hash pymail writes
# readable by Dovecot again (the point of using its table).  Measured on a 2-core machine:
# ~0.14 s per hash or verify, one core, 64 MiB for its duration; the auth layer should
# bound concurrent verifications so that memory stays bounded (64 MiB each).
ARGON2_TIME_COST = 3
ARGON2_MEMORY_COST_KIB = 65536
ARGON2_PARALLELISM = 1
ARGON2_HASH_LEN = 32
ARGON2_SALT_LEN = 16

# A stored Argon2 hash asking for more than this much memory is treated as malformed
# rather than allowed to exhaust the process (no sane deployment uses > 1 GiB per login).
_ARGON2_MAX_MEMORY_KIB = 1024 * 1024

# SHA-crypt here is pure Python holding the GIL (~0.5 us per round): a stored value asking
# for more rounds than this (glibc allows 999,999,999, i.e. minutes) is treated as
# malformed rather than allowed to stall every thread.  Dovecot writes 5000 by default;
# passlib's default is 656,000.
_SHA_CRYPT_MAX_ROUNDS = 5_000_000

# bcrypt only reads the first 72 bytes of a password (OpenBSD bcrypt, crypt_blowfish as
# Dovecot uses); the bcrypt package refuses longer input instead of truncating it.
_BCRYPT_MAX_PASSWORD_BYTES = 72

#: The floor of a configured Argon2id cost: OWASP Password Storage Cheat Sheet, "Argon2id"
#: (minimum configurations of equal strength, one lane): (memory KiB, passes).  A cost is
#: acceptable when its memory and its passes both reach one of these pairs.
OWASP_ARGON2ID_MINIMUMS: tuple[tuple[int, int], ...] = ((46 * 1024, 1), (19 * 1024, 2))
_ARGON2_MAX_TIME_COST = 100
_ARGON2_MAX_PARALLELISM = 16


@dataclass(frozen=True, slots=True)
class Argon2Cost:
    """The Argon2id parameters of new hashes: passes, memory (KiB), lanes."""

    time_cost: int = ARGON2_TIME_COST
    memory_cost: int = ARGON2_MEMORY_COST_KIB  #: KiB
    parallelism: int = ARGON2_PARALLELISM

    def problem(self) -> str | None:
        """Why this cost may not be used for new hashes (one line), or None."""
        if not 1 <= self.parallelism <= _ARGON2_MAX_PARALLELISM:
            return f"argon2_parallelism must be 1 to {_ARGON2_MAX_PARALLELISM}"
        if not 1 <= self.time_cost <= _ARGON2_MAX_TIME_COST:
            return f"argon2_time_cost must be 1 to {_ARGON2_MAX_TIME_COST}"
        if self.memory_cost > _ARGON2_MAX_MEMORY_KIB:
            return (f"argon2_memory_cost must be at most {_ARGON2_MAX_MEMORY_KIB} KiB (1 GiB): "
                    "pymail refuses to verify larger stored hashes")
        if self.memory_cost < 8 * self.parallelism:
            return "argon2_memory_cost must be at least 8 KiB per lane (argon2_parallelism)"
        if not any(self.memory_cost >= m and self.time_cost >= t for m, t in OWASP_ARGON2ID_MINIMUMS):
            floors = " or ".join(f"m={m // 1024} MiB with t>={t}" for m, t in OWASP_ARGON2ID_MINIMUMS)
            return (f"Argon2id cost m={self.memory_cost} KiB, t={self.time_cost} is below "
                    f"OWASP's minimum ({floors})")
        return None


#: Today's parameters (the constants above).
DEFAULT_ARGON2_COST = Argon2Cost()


@lru_cache(maxsize=8)
def _hasher_for(cost: Argon2Cost) -> argon2.PasswordHasher:
    return argon2.PasswordHasher(
        time_cost=cost.time_cost,
        memory_cost=cost.memory_cost,
        parallelism=cost.parallelism,
        hash_len=ARGON2_HASH_LEN,
        salt_len=ARGON2_SALT_LEN,
        type=argon2.Type.ID,
    )

# Unsalted and salted digest schemes: name -> hashlib constructor name.
_DIGESTS: dict[str, str] = {"SHA": "sha1", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
_SALTED_DIGESTS: dict[str, str] = {"SSHA": "sha1", "SSHA256": "sha256", "SSHA512": "sha512"}
_PLAIN = frozenset({"PLAIN", "CLEARTEXT"})
_ARGON2 = {"ARGON2ID": argon2.low_level.Type.ID, "ARGON2I": argon2.low_level.Type.I}
_ARGON2_PREFIX = {"ARGON2ID": "$argon2id$", "ARGON2I": "$argon2i$"}

#: Every scheme name ``verify_password`` understands (upper case, without suffix).
SUPPORTED_SCHEMES: frozenset[str] = frozenset(
    {"ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "CRYPT"}
    | _DIGESTS.keys()
    | _SALTED_DIGESTS.keys()
    | _PLAIN
)

# Encoding suffixes (Dovecot: "{SCHEME.b64}", "{SCHEME.hex}"); only for these schemes.
_ENCODINGS = {"b64": "base64", "base64": "base64", "hex": "hex"}
_ENCODABLE = frozenset(_DIGESTS.keys() | _SALTED_DIGESTS.keys() | _PLAIN)

_PREFIX_RE = re.compile(r"\{([^{}]*)\}")
_HEX_RE = re.compile(r"(?:[0-9A-Fa-f]{2})*")
_BASE64_RE = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_BCRYPT_RE = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


class _Malformed(Exception):
    """A stored value this module cannot read; verify answers False."""


def hash_password(password: str, cost: Argon2Cost = DEFAULT_ARGON2_COST) -> str:
    """Return a new ``{ARGON2ID}`` hash of ``password`` (UTF-8) with a random salt, at
    `cost` (`ValueError` if it is below the floor, see `Argon2Cost.problem`)."""
    if not isinstance(password, str):
        raise TypeError("password must be str")
    problem = cost.problem()
    if problem:
        raise ValueError(problem)
    return "{" + DEFAULT_SCHEME + "}" + _hasher_for(cost).hash(password)


def scheme_of(stored: str) -> str | None:
    """The upper-case scheme name of a stored value, without encoding suffix.

    ``"{ssha512.hex}..."`` -> ``"SSHA512"``; an unprefixed ``$6$...`` -> ``"SHA512-CRYPT"``
    (and likewise for the other crypt(3) prefixes); anything else -> ``None``.  The name
    is returned even when pymail does not support it (check ``SUPPORTED_SCHEMES``).
    """
    if not isinstance(stored, str):
        return None
    match = _PREFIX_RE.match(stored)
    if match:
        name = match.group(1).split(".", 1)[0].strip().upper()
        return name or None
    return _scheme_from_crypt_prefix(stored)


def verify_password(password: str, stored: str, default_scheme: str | None = "SHA512-CRYPT") -> bool:
    """True when ``password`` matches the ``stored`` hash; False otherwise, never raises.

    ``default_scheme`` is used for a value without ``{SCHEME}`` prefix and without a
    recognisable crypt(3) prefix, like Dovecot's ``default_pass_scheme`` (``None``: such a
    value never matches).
    """
    try:
        if not isinstance(password, str) or not isinstance(stored, str):
            return False
        scheme, encoding, body = _split(stored, default_scheme)
        return _verify(password.encode("utf-8"), scheme, encoding, body)
    except _Malformed as exc:
        log.debug("password hash not usable: %s", exc)
        return False
    except Exception as exc:  # a library failing on odd input: still just "no match"
        log.debug("password verification failed: %s", type(exc).__name__)
        return False


def needs_rehash(stored: str, cost: Argon2Cost = DEFAULT_ARGON2_COST) -> bool:
    """True when ``stored`` is not an ``{ARGON2ID}`` hash with the parameters of `cost`.

    Call it after a successful ``verify_password``; then store ``hash_password(password)``.
    """
    try:
        if scheme_of(stored) != DEFAULT_SCHEME:
            return True
        _scheme, encoding, body = _split(stored, None)
        if encoding is not None or not body.startswith(_ARGON2_PREFIX[DEFAULT_SCHEME]):
            return True
        return _hasher_for(cost).check_needs_rehash(body)
    except Exception:
        return True


def dummy_verify(password: str, cost: Argon2Cost = DEFAULT_ARGON2_COST) -> None:
    """Do the work of verifying ``password`` against an ``{ARGON2ID}`` hash of `cost`
    (the cost new hashes get, i.e. what most users' hashes cost).

    For an unknown user: the caller spends the same time as for a known user with a wrong
    password, so response timing does not tell which user names exist.
    """
    verify_password(password, _dummy_hash(cost))


@lru_cache(maxsize=8)
def _dummy_hash(cost: Argon2Cost) -> str:
    """A well-formed ``{ARGON2ID}`` value of `cost` that no password matches (random
    salt and random "hash"), made once per process: verifying against it costs a real
    Argon2 computation followed by a failed comparison, exactly like a wrong password."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii").rstrip("=")

    return (
        "{ARGON2ID}$argon2id$v=19"
        f"$m={cost.memory_cost},t={cost.time_cost},p={cost.parallelism}"
        f"${b64(os.urandom(ARGON2_SALT_LEN))}${b64(os.urandom(ARGON2_HASH_LEN))}"
    )


# --- parsing -------------------------------------------------------------------------


def _scheme_from_crypt_prefix(value: str) -> str | None:
    """The scheme of an unprefixed crypt(3)/PHC string, from its ``$id$``."""
    if value.startswith("$6$"):
        return "SHA512-CRYPT"
    if value.startswith("$5$"):
        return "SHA256-CRYPT"
    if value.startswith(("$2a$", "$2b$", "$2y$")):
        return "BLF-CRYPT"
    if value.startswith("$argon2id$"):
        return "ARGON2ID"
    if value.startswith("$argon2i$"):
        return "ARGON2I"
    return None


def _split(stored: str, default_scheme: str | None) -> tuple[str, str | None, str]:
    """``stored`` -> (SCHEME, encoding or None, the rest)."""
    match = _PREFIX_RE.match(stored)
    if match:
        name, _dot, suffix = match.group(1).partition(".")
        scheme = name.strip().upper()
        body = stored[match.end():]
        if not _dot:
            return scheme, None, body
        encoding = _ENCODINGS.get(suffix.strip().lower())
        if encoding is None:
            raise _Malformed(f"unknown encoding suffix for scheme {scheme}")
        if scheme not in _ENCODABLE:
            raise _Malformed(f"scheme {scheme} takes no encoding suffix")
        return scheme, encoding, body
    detected = _scheme_from_crypt_prefix(stored)
    if detected is not None:
        return detected, None, stored
    if default_scheme is None:
        raise _Malformed("no {SCHEME} prefix and no default scheme")
    return _split("{" + default_scheme + "}" + stored, None)


def _decode(body: str, encoding: str) -> bytes:
    body = body.strip()
    if encoding == "hex":
        if not _HEX_RE.fullmatch(body):
            raise _Malformed("not hex")
        return bytes.fromhex(body)
    if not _BASE64_RE.fullmatch(body):
        raise _Malformed("not base64")
    try:  # Dovecot's decoder does not insist on padding; neither do we.
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise _Malformed("not base64") from None


# --- verification ----------------------------------------------------------------------


def _verify(password: bytes, scheme: str, encoding: str | None, body: str) -> bool:
    if scheme in _ARGON2:
        return _verify_argon2(password, scheme, body)
    if scheme == "BLF-CRYPT":
        return _verify_bcrypt(password, body)
    if scheme == "SHA512-CRYPT":
        return _verify_sha_crypt(password, "$6$", body)
    if scheme == "SHA256-CRYPT":
        return _verify_sha_crypt(password, "$5$", body)
    if scheme == "CRYPT":
        detected = _scheme_from_crypt_prefix(body)
        if detected is None:
            raise _Malformed("CRYPT value is not a supported crypt(3) format")
        return _verify(password, detected, None, body)
    if scheme in _DIGESTS:
        return _verify_digest(password, _DIGESTS[scheme], encoding, body)
    if scheme in _SALTED_DIGESTS:
        return _verify_salted_digest(password, _SALTED_DIGESTS[scheme], encoding, body)
    if scheme in _PLAIN:
        expected = body.encode("utf-8") if encoding is None else _decode(body, encoding)
        return hmac.compare_digest(password, expected)
    raise _Malformed(f"unsupported scheme {scheme[:32]!r}")


def _verify_argon2(password: bytes, scheme: str, body: str) -> bool:
    # The PHC string must name the same variant as the {SCHEME} (libsodium's
    # crypto_pwhash_argon2id_str_verify refuses a $argon2i$ string, and vice versa).
    if not body.startswith(_ARGON2_PREFIX[scheme]):
        raise _Malformed(f"{scheme} value is not a {_ARGON2_PREFIX[scheme]} string")
    try:
        params = argon2.extract_parameters(body)
    except Exception:
        raise _Malformed(f"{scheme} value is not a valid Argon2 string") from None
    if params.memory_cost > _ARGON2_MAX_MEMORY_KIB:
        raise _Malformed(f"{scheme} memory cost above {_ARGON2_MAX_MEMORY_KIB} KiB")
    try:
        return argon2.low_level.verify_secret(body.encode("ascii"), password, _ARGON2[scheme])
    except argon2.exceptions.VerifyMismatchError:
        return False
    except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        raise _Malformed(f"{scheme} value rejected by libargon2") from None


def _verify_bcrypt(password: bytes, body: str) -> bool:
    match = _BCRYPT_RE.fullmatch(body)
    if not match or not 4 <= int(match.group(1)) <= 31:
        raise _Malformed("BLF-CRYPT value is not a $2a$/$2b$/$2y$ bcrypt string")
    # $2y$ (crypt_blowfish) and $2b$ (OpenBSD) compute the same hash; the bcrypt package
    # accepts both, and $2a$, which for passwords shorter than 255 bytes is the same too.
    return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD_BYTES], body.encode("ascii"))


def _verify_sha_crypt(password: bytes, ident: str, body: str) -> bool:
    if not body.startswith(ident):
        raise _Malformed(f"SHA-crypt value does not start with {ident}")
    handler = sha512_crypt if ident == "$6$" else sha256_crypt
    try:
        rounds = handler.from_string(body).rounds
    except ValueError:
        raise _Malformed("SHA-crypt value is malformed") from None
    if rounds > _SHA_CRYPT_MAX_ROUNDS:
        raise _Malformed(f"SHA-crypt rounds above {_SHA_CRYPT_MAX_ROUNDS}")
    # libpass's verify compares the whole checksum in constant time
    # (passlib.utils.consteq); its parser rejects malformed salts/rounds with ValueError.
    try:
        return bool(handler.verify(password, body))
    except ValueError:
        raise _Malformed("SHA-crypt value is malformed") from None


def _verify_digest(password: bytes, algorithm: str, encoding: str | None, body: str) -> bool:
    size = hashlib.new(algorithm).digest_size
    if encoding is None:  # Dovecot's guess: hex iff exactly 2 * digest size characters.
        encoding = "hex" if len(body.strip()) == 2 * size else "base64"
    expected = _decode(body, encoding)
    if len(expected) != size:
        raise _Malformed("digest has the wrong length")
    return hmac.compare_digest(hashlib.new(algorithm, password).digest(), expected)


def _verify_salted_digest(password: bytes, algorithm: str, encoding: str | None, body: str) -> bool:
    size = hashlib.new(algorithm).digest_size
    raw = _decode(body, encoding or "base64")
    if len(raw) <= size:  # Dovecot: "password is too short" (no salt)
        raise _Malformed("salted digest has no salt")
    digest, salt = raw[:size], raw[size:]
    return hmac.compare_digest(hashlib.new(algorithm, password + salt).digest(), digest)
