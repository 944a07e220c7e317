"""Tests for pymail.auth.passwords: Dovecot {SCHEME} hashes.

Every fixed vector below was produced outside this module:
* SHA512-CRYPT / SHA256-CRYPT: ``openssl passwd -6 -salt saltsalt secret`` (and ``-5``),
  OpenSSL 3.0.19; the ``rounds=`` ones by glibc crypt(3) (Python's ``crypt`` module);
* BLF-CRYPT: the ``bcrypt`` package (``$2b$`` rewritten to ``$2y$`` as Dovecot writes);
* ARGON2I / ARGON2ID: the examples of the reference implementation's README
  (P-H-C/phc-winner-argon2: password "password", salt "somesalt", t=2, m=64 MiB, p=4);
* SSHA256.hex: the salting example of Dovecot's "Password Schemes" page ("pass");
* SSHA: the example of the dovehash README ("abcdef"); SHA: SHA-1("password"), the
  classic LDAP ``{SHA}`` value;
* salted/unsalted digests are also recomputed here with hashlib + base64, a separate
  implementation of Dovecot's format: base64(digest(password + salt) + salt).
"""

from __future__ import annotations

import base64
import hashlib
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymail.auth import passwords
from pymail.auth.passwords import (
    DEFAULT_SCHEME,
    SUPPORTED_SCHEMES,
    DEFAULT_ARGON2_COST,
    OWASP_ARGON2ID_MINIMUMS,
    Argon2Cost,
    dummy_verify,
    hash_password,
    needs_rehash,
    scheme_of,
    verify_password,
)

NON_ASCII = "pässwörd"

# (password, stored) pairs that must verify.
VECTORS = [
    # openssl passwd -6 -salt saltsalt secret
    ("secret", "{SHA512-CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"),
    # openssl passwd -5 -salt saltsalt secret
    ("secret", "{SHA256-CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA"),
    # openssl passwd -6 -salt saltsalt 'pässwörd'   (UTF-8 argv)
    (NON_ASCII, "{SHA512-CRYPT}$6$saltsalt$TQjRhpJdqmLx0U8it3EsUajwkmOMMvw5vhUFc7mohzFFoj/QHrfYUHU1oSkwyCEoTUCDOiAOW135nel3bqtKe."),
    # glibc crypt("secret", "$6$rounds=10000$saltsalt$") / ("$5$rounds=12000$saltsalt$")
    ("secret", "{SHA512-CRYPT}$6$rounds=10000$saltsalt$WowrPBpEDVlCoruBosYlrZycTCx3//TyDHYqEhX9DUHHt0XTztUqzQDDUuvUGRA8aUe9p55hcAxeGcu58sm3u."),
    ("secret", "{SHA256-CRYPT}$5$rounds=12000$saltsalt$3vadl10ciRvk2.9i8vqtmK/C/MKkyIctDtCu0foQrH3"),
    # glibc: explicit rounds=5000 (the default) gives the same checksum as no rounds
    ("secret", "{SHA512-CRYPT}$6$rounds=5000$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1"),
    # bcrypt.hashpw(b"secret", gensalt(5)), $2b$ -> $2y$
    ("secret", "{BLF-CRYPT}$2y$05$U.2ZYjdMJCJUqwKqXnMB..72ISUm6PNrqQqDseUhRWvxb4nSJnMuK"),
    ("secret", "{BLF-CRYPT}$2b$05$U.2ZYjdMJCJUqwKqXnMB..72ISUm6PNrqQqDseUhRWvxb4nSJnMuK"),
    ("secret", "{BLF-CRYPT}$2a$05$U.2ZYjdMJCJUqwKqXnMB..72ISUm6PNrqQqDseUhRWvxb4nSJnMuK"),
    (NON_ASCII, "{BLF-CRYPT}$2y$05$cdx6d.58UWNCwrTQMaHzie5sB81mDb2YvqKnPT.Y3gDXbprdGqEIy"),
    # phc-winner-argon2 README examples
    ("password", "{ARGON2I}$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"),
    ("password", "{ARGON2ID}$argon2id$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo"),
    # Dovecot documentation, "Salting": {SSHA256.hex} of "pass"
    ("pass", "{SSHA256.hex}4a847fefc4f9ab450f16783c5025d64313942a1ceb2599707cdb65940ba901e513fa442f"),
    # dovehash README: {SSHA} of "abcdef"
    ("abcdef", "{SSHA}PTggDCOUPEVj5h7bZjhxfKWQBpey47nF"),
    # SHA-1("password"), base64 and hex
    ("password", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="),
    ("password", "{SHA1}W6ph5Mm5Pz8GgiULbPgzG37mj9g="),
    ("password", "{SHA.hex}5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"),
    ("password", "{SHA}5baa61e4c9b93f3f0682250b6cf8331b7ee68fd8"),  # Dovecot guesses hex by length
    ("secret", "{PLAIN}secret"),
    ("secret", "{CLEARTEXT}secret"),
    (NON_ASCII, "{PLAIN}" + NON_ASCII),
    ("secret", "{PLAIN.hex}736563726574"),
    ("secret", "{PLAIN.b64}c2VjcmV0"),
    # {CRYPT} with a modular crypt(3) value
    ("secret", "{CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA"),
]

SALT = b"\x01\x02pymail\xff\x00salt"


def _ssha(algorithm: str, password: str, salt: bytes = SALT) -> bytes:
    return hashlib.new(algorithm, password.encode("utf-8") + salt).digest() + salt


def _digest_vectors() -> list[tuple[str, str]]:
    """Dovecot's salted/unsalted digest formats, rebuilt with hashlib + base64."""
    out = []
    for scheme, algorithm in (("SSHA512", "sha512"), ("SSHA256", "sha256"), ("SSHA", "sha1")):
        for password in ("secret", NON_ASCII, ""):
            raw = _ssha(algorithm, password)
            out.append((password, "{%s}%s" % (scheme, base64.b64encode(raw).decode())))
            out.append((password, "{%s.b64}%s" % (scheme, base64.b64encode(raw).decode())))
            out.append((password, "{%s.base64}%s" % (scheme, base64.b64encode(raw).decode())))
            out.append((password, "{%s.HEX}%s" % (scheme.lower(), raw.hex())))
    for scheme, algorithm in (("SHA512", "sha512"), ("SHA256", "sha256"), ("SHA", "sha1")):
        for password in ("secret", NON_ASCII):
            digest = hashlib.new(algorithm, password.encode("utf-8")).digest()
            out.append((password, "{%s}%s" % (scheme, base64.b64encode(digest).decode())))
            out.append((password, "{%s.hex}%s" % (scheme, digest.hex())))
            out.append((password, "{%s.b64}%s" % (scheme.lower(), base64.b64encode(digest).decode())))
    return out


ALL_VECTORS = VECTORS + _digest_vectors()


@pytest.mark.parametrize("password, stored", ALL_VECTORS)
def test_vector_verifies(password: str, stored: str) -> None:
    assert verify_password(password, stored)


@pytest.mark.parametrize("password, stored", ALL_VECTORS)
def test_wrong_password_is_false(password: str, stored: str) -> None:
    assert not verify_password(password + "x", stored)
    assert not verify_password("Secret" if password != "Secret" else "secret", stored)


@pytest.mark.parametrize("password, stored", VECTORS)
def test_scheme_name_is_case_insensitive(password: str, stored: str) -> None:
    end = stored.index("}")
    assert verify_password(password, stored[:end].lower() + stored[end:])


def test_unprefixed_values_are_recognised_by_crypt_prefix() -> None:
    for password, stored in VECTORS:
        body = stored[stored.index("}") + 1:]
        if body.startswith("$"):
            assert verify_password(password, body), stored
            assert verify_password(password, body, default_scheme=None), stored
            assert scheme_of(body) == scheme_of(stored) or scheme_of(stored) == "CRYPT"


def test_unprefixed_value_uses_default_scheme() -> None:
    digest = base64.b64encode(hashlib.sha256(b"secret").digest()).decode()
    assert verify_password("secret", digest, default_scheme="SHA256")
    assert not verify_password("secret", digest)  # default SHA512-CRYPT: not a $6$ value
    assert not verify_password("secret", digest, default_scheme=None)
    assert verify_password("secret", "secret", default_scheme="PLAIN")
    assert not verify_password("secret", "secret")
    assert not verify_password("secret", "secret", default_scheme="NOSUCH")


def test_argon2_variant_must_match_scheme() -> None:
    argon2i = "$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG"
    assert not verify_password("password", "{ARGON2ID}" + argon2i)


def test_bcrypt_uses_first_72_bytes_like_crypt_blowfish() -> None:
    import bcrypt

    long_password = "p" * 72
    stored = "{BLF-CRYPT}" + bcrypt.hashpw(long_password.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$")
    assert verify_password(long_password, stored)
    assert verify_password(long_password + "ignored", stored)  # as Dovecot would
    assert not verify_password("p" * 71, stored)


# --- hash_password / needs_rehash / scheme_of ----------------------------------------


def test_hash_password_round_trip() -> None:
    stored = hash_password(NON_ASCII)
    assert stored.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert verify_password(NON_ASCII, stored)
    assert not verify_password("passwörd", stored)
    assert not needs_rehash(stored)
    assert scheme_of(stored) == DEFAULT_SCHEME
    assert hash_password(NON_ASCII) != stored  # random salt


def test_hash_password_rejects_non_str() -> None:
    with pytest.raises(TypeError):
        hash_password(b"secret")  # type: ignore[arg-type]


def test_needs_rehash() -> None:
    for _password, stored in ALL_VECTORS:
        assert needs_rehash(stored), stored  # none of them uses the current parameters
    assert needs_rehash("")
    assert needs_rehash("{ARGON2ID}garbage")
    assert needs_rehash(None)  # type: ignore[arg-type]
    assert not needs_rehash(hash_password("x"))
    assert not needs_rehash("{argon2id}" + hash_password("x")[len("{ARGON2ID}"):])


def test_scheme_of() -> None:
    assert scheme_of("{ssha512.hex}00") == "SSHA512"
    assert scheme_of("{BLF-CRYPT}$2y$...") == "BLF-CRYPT"
    assert scheme_of("$6$saltsalt$x") == "SHA512-CRYPT"
    assert scheme_of("$5$saltsalt$x") == "SHA256-CRYPT"
    assert scheme_of("$2y$05$x") == "BLF-CRYPT"
    assert scheme_of("$argon2id$v=19$x") == "ARGON2ID"
    assert scheme_of("$argon2i$v=19$x") == "ARGON2I"
    assert scheme_of("{NOSUCH}x") == "NOSUCH"
    assert scheme_of("plaintext") is None
    assert scheme_of("") is None
    assert scheme_of("{}x") is None
    assert scheme_of(None) is None  # type: ignore[arg-type]


def test_supported_schemes() -> None:
    required = {
        "ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "SSHA512",
        "SSHA256", "SSHA", "SHA512", "SHA256", "SHA", "PLAIN", "CLEARTEXT",
    }
    assert required <= SUPPORTED_SCHEMES
    assert isinstance(SUPPORTED_SCHEMES, frozenset)


# --- malformed input: always False, never an exception --------------------------------

MALFORMED = [
    "",
    "{",
    "}",
    "{}",
    "{}secret",
    "{ARGON2ID}",
    "{ARGON2ID}garbage",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$",
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$c29tZXNhbHQ$!!!",
    "{ARGON2ID}$argon2id$v=19$m=4294967295,t=3,p=1$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo",
    "{ARGON2ID}$argon2d$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$GpZ3sK/oH9p7VIiV56G/64Zo/8GaUw434IimaPqxwCo",
    "{ARGON2I}$argon2i$v=19$m=65536,t=2,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+d",  # truncated
    "{BLF-CRYPT}",
    "{BLF-CRYPT}$2y$05$U.2ZYjdMJCJUqwKqXnMB..72ISUm6PNrqQqDseUhRWvxb4nSJnMu",  # truncated
    "{BLF-CRYPT}$2x$05$U.2ZYjdMJCJUqwKqXnMB..72ISUm6PNrqQqDseUhRWvxb4nSJnMuK",
    "{BLF-CRYPT}$2y$99$U.2ZYjdMJCJUqwKqXnMB..72ISUm6PNrqQqDseUhRWvxb4nSJnMuK",
    "{BLF-CRYPT}$2y$05$U.2ZYjdMJCJUqwKqXnMB..72ISUm6PNrqQqDseUhRWvxb4nSJnMuK=",
    "{SHA512-CRYPT}",
    "{SHA512-CRYPT}$6$",
    "{SHA512-CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQ",  # truncated
    "{SHA512-CRYPT}$6$rounds=abc$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
    # absurd cost parameters are refused, not computed for minutes
    "{SHA512-CRYPT}$6$rounds=999999999$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
    "{SHA512-CRYPT}$6$rounds=01000$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
    "{SHA512-CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA",  # wrong ident
    "{SHA256-CRYPT}$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5s!",
    "{SSHA512}",
    "{SSHA512}not*base64",
    "{SSHA512}" + base64.b64encode(b"\x00" * 64).decode(),  # digest without salt
    "{SSHA512.hex}abc",  # odd length
    "{SSHA512.hex}zz" * 70,
    "{SSHA}PTggDCOUPEVj5h7bZjhxfKWQBpey47n",  # truncated base64
    "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9",  # truncated
    "{SHA256}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # wrong length for SHA-256
    "{SHA.rot13}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # unknown encoding
    "{SHA512-CRYPT.hex}00",  # crypt schemes take no suffix
    "{MD5-CRYPT}$1$ozdpg0V0$0fb643pVsPtHVPX8mCZYW/",  # not supported
    "{CRYPT}vpvKh.SaNbR6s",  # DES crypt: not supported
    "{NOSUCH}secret",
    "{PLAIN.hex}zz",
    "$1$ozdpg0V0$0fb643pVsPtHVPX8mCZYW/",
    "garbage",
    "\x00\x00",
]


@pytest.mark.parametrize("stored", MALFORMED)
def test_malformed_is_false(stored: str) -> None:
    for password in ("secret", "password", "pass", "", NON_ASCII):
        assert verify_password(password, stored) is False


@pytest.mark.parametrize("password, stored", [
    (None, "{PLAIN}secret"), ("secret", None), (b"secret", "{PLAIN}secret"),
    ("secret", b"{PLAIN}secret"), (42, 42), ("\udcff", "{PLAIN}\udcff"), ("\ud800", "{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g="),
])
def test_bad_types_and_unencodable_passwords_are_false(password, stored) -> None:
    assert verify_password(password, stored) is False


def test_nul_in_password_never_raises() -> None:
    for _password, stored in VECTORS:
        assert verify_password("sec\x00ret", stored) is False


_stored_strings = st.one_of(
    st.text(),
    st.text(alphabet=st.characters(codec="ascii")),
    st.builds(
        lambda scheme, suffix, body: "{%s%s}%s" % (scheme, suffix, body),
        st.sampled_from(sorted(SUPPORTED_SCHEMES) + ["MD5", "", "X"]),
        st.sampled_from(["", ".b64", ".hex", ".base64", ".HEX", ".x"]),
        st.one_of(
            st.text(),
            st.text(alphabet="0123456789abcdefABCDEF"),
            st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="),
            st.builds(lambda p, s: p + s, st.sampled_from(["$6$", "$5$", "$2y$05$", "$argon2id$v=19$", "$argon2i$", "$6$rounds=1000$"]), st.text()),
        ),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(password=st.text(), stored=_stored_strings)
def test_random_stored_values_never_raise(password: str, stored: str) -> None:
    assert verify_password(password, stored) in (True, False)
    needs_rehash(stored)
    scheme_of(stored)


@settings(max_examples=200, deadline=None)
@given(password=st.text())
def test_plain_and_ssha_for_any_password(password: str) -> None:
    assert verify_password(password, "{PLAIN}" + password)
    raw = _ssha("sha512", password)
    assert verify_password(password, "{SSHA512}" + base64.b64encode(raw).decode())


# --- logging and timing -------------------------------------------------------------


def test_nothing_secret_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG", logger=passwords.__name__)
    secret_hash = "{SSHA512}c2VjcmV0LWhhc2gtdmFsdWU*"
    verify_password("hunter2-secret", secret_hash)
    verify_password("hunter2-secret", "{ARGON2ID}garbage-hash-value")
    verify_password("hunter2-secret", "{PLAIN}hunter3")
    text = caplog.text
    assert "hunter2" not in text and "c2VjcmV0" not in text and "garbage-hash" not in text


def test_dummy_verify_costs_like_a_real_verify() -> None:
    stored = hash_password("right password")

    def timed(fn) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        return best

    real = timed(lambda: verify_password("wrong password", stored))
    dummy = timed(lambda: dummy_verify("wrong password"))
    assert dummy_verify("anything") is None
    # Same Argon2 parameters, same work: within a generous factor (CI machines are noisy).
    assert 0.5 * real < dummy < 2.0 * real, (real, dummy)


# -- the configured cost of new hashes (issue 14 item 5) --------------------------------


@pytest.mark.parametrize(("m", "t", "p"), [(19456, 2, 1), (47104, 1, 1), (65536, 3, 1), (19456, 2, 2)])
def test_a_cost_at_or_above_the_owasp_floor_makes_hashes_with_its_own_parameters(m: int, t: int, p: int) -> None:
    cost = Argon2Cost(time_cost=t, memory_cost=m, parallelism=p)
    assert cost.problem() is None
    stored = hash_password("pw", cost)
    assert f"$m={m},t={t},p={p}$" in stored
    assert verify_password("pw", stored) and not verify_password("px", stored)
    assert not needs_rehash(stored, cost) and (cost == DEFAULT_ARGON2_COST) == (not needs_rehash(stored))
    dummy_verify("pw", cost)  # a dummy hash of that cost


@pytest.mark.parametrize(("m", "t", "p", "why"), [
    (19455, 2, 1, "below OWASP"), (19456, 1, 1, "below OWASP"), (47103, 1, 1, "below OWASP"),
    (65536, 0, 1, "argon2_time_cost"), (65536, 3, 0, "argon2_parallelism"),
    (2 * 1024 * 1024, 3, 1, "at most"),
])
def test_a_cost_below_the_floor_is_refused(m: int, t: int, p: int, why: str) -> None:
    cost = Argon2Cost(time_cost=t, memory_cost=m, parallelism=p)
    assert why in (cost.problem() or "")
    with pytest.raises(ValueError, match=why):
        hash_password("pw", cost)


def test_the_default_cost_is_todays() -> None:
    assert DEFAULT_ARGON2_COST == Argon2Cost(3, 65536, 1)
    assert OWASP_ARGON2ID_MINIMUMS == ((47104, 1), (19456, 2))
