"""SRS (pymail.delivery.srs): round trips, SRS1 for an SRS0 of another forwarder, and
refusals of forged and expired addresses; the secret file made once, mode 0600."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from pymail.delivery.srs import (
    VALIDITY_DAYS,
    SenderRewriter,
    SrsError,
    is_srs_address,
    load_srs_secrets,
)

DAY = 86400.0
NOW = 1_770_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_round_trip_srs0() -> None:
    srs = SenderRewriter([b"secret-one"], clock=Clock())
    rewritten = srs.forward("Carol@Gmail.Example", "example.test")
    assert rewritten is not None
    local, _, domain = rewritten.rpartition("@")
    assert domain == "example.test"
    assert local.startswith("SRS0=") and local.endswith("=Gmail.Example=Carol")
    assert is_srs_address(rewritten) and not is_srs_address("carol@gmail.example")
    assert srs.reverse(rewritten) == "Carol@Gmail.Example"
    # an MTA on the way may lower-case the address: the hash still matches
    assert srs.reverse(rewritten.lower()).lower() == "carol@gmail.example"


def test_srs1_for_another_forwarders_srs0() -> None:
    first = SenderRewriter([b"theirs"], clock=Clock())
    ours = SenderRewriter([b"ours"], clock=Clock())
    srs0 = first.forward("dave@orig.example", "first.example")
    assert srs0 is not None
    srs1 = ours.forward(srs0, "example.test")
    assert srs1 is not None and srs1.startswith("SRS1=")
    # a bounce to our SRS1 goes back to the first forwarder's SRS0 address
    assert ours.reverse(srs1) == srs0
    assert first.reverse(ours.reverse(srs1)) == "dave@orig.example"


def test_forged_and_foreign_hashes_are_refused() -> None:
    srs = SenderRewriter([b"ours"], clock=Clock())
    good = srs.forward("carol@gmail.example", "example.test")
    assert good is not None
    hash_ = good.split("=")[1]
    forged = good.replace(f"SRS0={hash_}=", "SRS0=AAAA=", 1)
    with pytest.raises(SrsError):
        srs.reverse(forged)
    # the right hash for another sender: still refused (the hash covers the address)
    with pytest.raises(SrsError):
        srs.reverse(good.replace("=carol@", "=mallory@"))
    other = SenderRewriter([b"not ours"], clock=Clock())
    with pytest.raises(SrsError):
        other.reverse(good)
    with pytest.raises(SrsError):
        srs.reverse("carol@example.test")


def test_expired_addresses_are_refused_and_old_secrets_still_work() -> None:
    clock = Clock()
    srs = SenderRewriter([b"current"], clock=clock)
    made = srs.forward("carol@gmail.example", "example.test")
    assert made is not None
    clock.now += (VALIDITY_DAYS - 1) * DAY
    assert srs.reverse(made) == "carol@gmail.example"
    clock.now += 2 * DAY
    with pytest.raises(SrsError):
        srs.reverse(made)
    # rotation: an address made with the previous secret is still reversed
    clock.now = NOW
    rotated = SenderRewriter([b"next", b"current"], clock=clock)
    assert rotated.reverse(made) == "carol@gmail.example"
    assert SenderRewriter([b"next"], clock=clock).forward("c@g.example", "e.test") != made


def test_null_sender_and_overlong_local_parts_are_not_rewritten() -> None:
    srs = SenderRewriter([b"s"], clock=Clock())
    assert srs.forward("", "example.test") is None
    assert srs.forward("x" * 50 + "@gmail.example", "example.test") is None  # > 64 octets


def test_secret_file_made_once_with_mode_0600(tmp_path: Path) -> None:
    first = load_srs_secrets(None, tmp_path)
    path = tmp_path / "srs.secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_srs_secrets(None, tmp_path) == first and len(first) == 1
    configured = tmp_path / "conf.secret"
    configured.write_text("# rotated on 2026-03-01\nnew-secret\nold-secret\n")
    assert load_srs_secrets(configured, tmp_path) == [b"new-secret", b"old-secret"]
    configured.write_text("\n# nothing\n")
    with pytest.raises(ValueError):
        load_srs_secrets(configured, tmp_path)
    with pytest.raises(OSError):
        load_srs_secrets(tmp_path / "missing", tmp_path)
