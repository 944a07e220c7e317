"""`pymail dkim keygen|list` as an admin runs them (a real subprocess): the key file and
its modes, the exact DNS record, refusals with one-line errors, and the key that
`pymail serve` would then sign with."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import dkim
import pytest

from tests.e2e.test_cli import one_line_error, run


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "pymail.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n\n[dkim]\nselector = "s1"\n')
    return path


def dkim_cli(conf: Path, *args: str):
    return run("--config", str(conf), "dkim", *args)


def record_value(line: str) -> str:
    """The TXT data of a printed record, its strings joined."""
    _, _, strings = line.partition(" TXT ")
    parts = re.findall(r'"([^"]*)"', strings)
    assert all(len(p) <= 255 for p in parts)
    return "".join(parts)


def test_keygen_writes_the_key_and_prints_the_record(conf: Path, tmp_path: Path) -> None:
    result = dkim_cli(conf, "keygen", "Example.Test")
    assert result.returncode == 0, result.stderr
    path = tmp_path / "data" / "dkim" / "example.test" / "s1.rsa.pem"
    assert f"wrote {path} (rsa, 2048 bits)" in result.stdout
    assert "it signs mail from example.test" in result.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.parent.stat().st_mode) == 0o700
    [line] = [x for x in result.stdout.splitlines() if " TXT " in x]
    assert line.startswith('s1._domainkey.example.test. TXT "v=DKIM1; k=rsa; p=')
    value = record_value(line)
    # the record is the key: a signature by the file verifies against the printed record
    message = b"From: a@example.test\r\nSubject: x\r\n\r\nbody\r\n"
    signed = dkim.sign(message, b"s1", b"example.test", path.read_bytes()) + message
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: value.encode())


def test_ed25519_bits_selector_and_list(conf: Path) -> None:
    assert dkim_cli(conf, "keygen", "example.test", "--algorithm", "ed25519").returncode == 0
    assert dkim_cli(conf, "keygen", "example.test").returncode == 0
    result = dkim_cli(conf, "keygen", "example.test", "--selector", "2027", "--bits", "1024")
    assert result.returncode == 0, result.stderr
    # newer, but the configured selector has a key: the new one waits for its record
    assert "does not sign mail from example.test yet: selector 's1' does" in result.stdout
    listing = dkim_cli(conf, "list")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert "example.test\tselector=2027\trsa\t1024 bits\tidle" in lines
    assert "example.test\tselector=s1\trsa\t2048 bits\tsigns" in lines
    assert "example.test\tselector=s1-ed25519\ted25519\t256 bits\tsigns" in lines
    ed = lines[lines.index("example.test\tselector=s1-ed25519\ted25519\t256 bits\tsigns") + 1]
    assert re.fullmatch(r'  s1-ed25519\._domainkey\.example\.test\. TXT "v=DKIM1; k=ed25519; '
                        r'p=[A-Za-z0-9+/]{43}="', ed)


def test_list_without_keys(conf: Path) -> None:
    result = dkim_cli(conf, "list")
    assert result.returncode == 0 and "no DKIM keys in" in result.stdout


def test_refusals_are_one_line(conf: Path) -> None:
    assert dkim_cli(conf, "keygen", "example.test").returncode == 0
    path = Path(conf.parent / "data" / "dkim" / "example.test" / "s1.rsa.pem")
    before = path.read_bytes()
    assert "exists (use --force to replace it)" in one_line_error(dkim_cli(conf, "keygen", "example.test"))
    assert path.read_bytes() == before
    assert dkim_cli(conf, "keygen", "example.test", "--force", "--bits", "1024").returncode == 0
    assert path.read_bytes() != before
    assert "one DNS record" in one_line_error(
        dkim_cli(conf, "keygen", "example.test", "--algorithm", "ed25519", "--selector", "s1"))
    assert "invalid domain name" in one_line_error(dkim_cli(conf, "keygen", "bad..example"))
    assert "--bits must be one of" in one_line_error(dkim_cli(conf, "keygen", "x.test", "--bits", "512"))
    assert "Ed25519 keys have one size" in one_line_error(
        dkim_cli(conf, "keygen", "x.test", "--algorithm", "ed25519", "--bits", "2048"))
    assert "invalid selector" in one_line_error(dkim_cli(conf, "keygen", "x.test", "--selector", "../x"))
    assert "usage error" in one_line_error(dkim_cli(conf, "keygen", "x.test", "--algorithm", "dsa"), 2)
    assert "usage error" in one_line_error(dkim_cli(conf), 2)
