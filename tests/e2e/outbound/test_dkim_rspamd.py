"""pymail's DKIM signatures checked by an independent verifier: Rspamd (the test
internet's, tests/services/rspamd.py) looks the keys up in the tests' NSD, where they
are published with the record `pymail dkim keygen` prints.  RSA-SHA256 alone, RSA plus
Ed25519-SHA256 (RFC 8463), a spooled 1 MB message, and a change after signing."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from pymail.delivery.dkim import DkimSigner
from pymail.delivery.dkimkeys import dns_record, generate_key
from tests.internet import PYMAIL_ADDRESS, PYMAIL_HOSTNAME, Internet, dkim_record

MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
           b"Subject: signed by pymail\r\nDate: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
           b"Message-ID: <pymail-dkim-1@example.test>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nHello Bob,\r\n\r\nsigned  by pymail.\r\n")


#: a new selector per test: Rspamd caches the keys it looked up by selector and domain
_SELECTORS = (f"pm{n}" for n in itertools.count(1))


def scan(internet: Internet, message: bytes):
    return internet.rspamd.check(message, ip=PYMAIL_ADDRESS, helo=PYMAIL_HOSTNAME,
                                 hostname=PYMAIL_HOSTNAME, mail_from="alice@example.test",
                                 rcpt="bob@remote.test")


@pytest.fixture
def selector() -> str:
    return next(_SELECTORS)


@pytest.fixture
def keys(tmp_path: Path, internet: Internet, selector: str) -> Path:
    """An RSA key (`selector`, published with the tests' helper) and an Ed25519 key
    (`selector`-ed, published with pymail's own printed record line) for example.test."""
    key_dir = tmp_path / "dkim"
    rsa = generate_key(key_dir, "example.test", selector)
    internet.add_records("example.test", dkim_record(selector, rsa.public_b64))
    ed = generate_key(key_dir, "example.test", f"{selector}-ed", algorithm="ed25519")
    internet.add_records("example.test", dns_record(ed))  # absolute name, as printed
    return key_dir


def test_rspamd_verifies_rsa_and_ed25519_signatures(internet: Internet, keys: Path, selector: str) -> None:
    signature = DkimSigner(keys, selector=selector).sign(MESSAGE, None, "example.test")
    assert signature is not None and signature.count(b"DKIM-Signature:") == 2
    result = scan(internet, signature + MESSAGE)
    assert result.has("R_DKIM_ALLOW", "R_SPF_ALLOW", "DMARC_POLICY_ALLOW"), result
    assert sorted(result.symbols["R_DKIM_ALLOW"]["options"]) == \
        [f"example.test:s={selector}", f"example.test:s={selector}-ed"], result.symbols["R_DKIM_ALLOW"]
    assert not result.has("R_DKIM_REJECT") and not result.has("R_DKIM_PERMFAIL"), result


def test_rspamd_verifies_rsa_alone(internet: Internet, keys: Path, selector: str) -> None:
    (keys / "example.test" / f"{selector}-ed.ed25519.pem").unlink()
    signature = DkimSigner(keys, selector=selector).sign(MESSAGE, None, "example.test")
    assert signature is not None and signature.count(b"DKIM-Signature:") == 1
    result = scan(internet, signature + MESSAGE)
    assert result.symbols.get("R_DKIM_ALLOW", {}).get("options") == [f"example.test:s={selector}"], result


def test_rspamd_verifies_a_spooled_megabyte(internet: Internet, keys: Path, selector: str, tmp_path: Path) -> None:
    big = MESSAGE + b"".join(b"line %06d \t with trailing space  \r\n" % n for n in range(30_000))
    path = tmp_path / "spooled"
    path.write_bytes(big)
    signature = DkimSigner(keys, selector=selector).sign(None, path, "example.test")
    assert signature is not None
    result = scan(internet, signature + big)
    assert result.has("R_DKIM_ALLOW"), result


def test_rspamd_rejects_a_change_after_signing(internet: Internet, keys: Path, selector: str) -> None:
    signature = DkimSigner(keys, selector=selector).sign(MESSAGE, None, "example.test")
    assert signature is not None
    added = MESSAGE.replace(b"MIME-Version", b"Cc: eve@evil.test\r\nMIME-Version")
    result = scan(internet, signature + added)
    assert result.has("R_DKIM_REJECT") and not result.has("R_DKIM_ALLOW"), result
    changed = MESSAGE.replace(b"signed by pymail", b"signed by someone")
    result = scan(internet, signature + changed)
    assert result.has("R_DKIM_REJECT") and not result.has("R_DKIM_ALLOW"), result


def test_rspamd_verifies_a_signed_dsn(internet: Internet, tmp_path: Path, selector: str) -> None:
    """pymail's own bounce, signed for its host name (From MAILER-DAEMON@mail.example.test)
    as the pipeline signs it, with a UTF-8 original attached."""
    import datetime as dt

    from pymail.mail.dsn import DsnRecipient, build_dsn

    key_dir = tmp_path / "dkim"
    key = generate_key(key_dir, PYMAIL_HOSTNAME, selector)
    internet.add_records("example.test", dns_record(key))
    now = dt.datetime.now(dt.timezone.utc)
    original = "From: Jörg <alice@example.test>\r\nSubject: Grüße\r\n\r\nHallo\r\n".encode()
    dsn = build_dsn(reporting_mta=PYMAIL_HOSTNAME, original_sender="alice@example.test",
                    recipients=[DsnRecipient("nobody@remote.test", None, "failed", "5.1.1",
                                             "mx.remote.test", "550 5.1.1 <nobody@remote.test>: "
                                             "Recipient address rejected", now)],
                    original=original, ret="FULL", envid=None, arrival=now, now=now,
                    queue_id="ABCDEF0123", size_limit=50_000)
    signature = DkimSigner(key_dir, selector=selector).sign(dsn, None, PYMAIL_HOSTNAME)
    assert signature is not None
    result = internet.rspamd.check(signature + dsn, ip=PYMAIL_ADDRESS, helo=PYMAIL_HOSTNAME,
                                   hostname=PYMAIL_HOSTNAME, mail_from="", rcpt="alice@example.test")
    assert result.symbols.get("R_DKIM_ALLOW", {}).get("options") == \
        [f"{PYMAIL_HOSTNAME}:s={selector}"], result
