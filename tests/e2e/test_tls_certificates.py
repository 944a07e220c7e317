"""Certificates from files (certbot's layout): reload on SIGHUP and on file change, SNI,
refusal at start, expiry warning and metric (pymail.net.tlsstore through pymail serve).

Every certificate is made here with `cryptography`, signed by a test CA the clients
trust; what a client sees is read from the handshake (the served certificate's serial,
``getpeercert(binary_form=True)``), over real IMAPS, SMTP STARTTLS and TLS sockets.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e.wire import Wire, login
from tests.tls_ca import CA, Pair
from tests.pymail_harness import REPO, PymailServer, ServerExited

HOST = "mx.test.example"
ALICE = "alice@test.example"


class Lineage:
    """certbot's layout: live/NAME/{fullchain,privkey}.pem are symlinks into
    archive/NAME/{fullchain,privkey}N.pem; a renewal writes N+1 and swaps the links."""

    def __init__(self, root: Path, name: str, pair: Pair) -> None:
        self.live = root / "live" / name
        self.archive = root / "archive" / name
        self.live.mkdir(parents=True)
        self.archive.mkdir(parents=True)
        self.version = 0
        self.renew(pair)

    @property
    def cert(self) -> Path:
        return self.live / "fullchain.pem"

    @property
    def key(self) -> Path:
        return self.live / "privkey.pem"

    def renew(self, pair: Pair) -> None:
        self.version += 1
        for stem, data in (("fullchain", pair.cert_pem), ("privkey", pair.key_pem)):
            target = self.archive / f"{stem}{self.version}.pem"
            target.write_bytes(data)
            link = self.live / f"{stem}.pem"
            temp = self.live / f".{stem}.tmp"
            os.symlink(os.path.relpath(target, self.live), temp)
            os.replace(temp, link)  # certbot replaces the link, never the file it names


def tls_config(main: Lineage, *extra: Lineage, check_interval: str = "0") -> str:
    pairs = ", ".join(f'{{cert = "{e.cert}", key = "{e.key}"}}' for e in extra)
    return (f'[tls]\ncert = "{main.cert}"\nkey = "{main.key}"\ncertificates = [{pairs}]\n'
            f'check_interval = "{check_interval}"\nexpiry_warning = "14d"\n')


# --- clients ---------------------------------------------------------------------------

def client_context(ca: CA) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.pem.decode())
    return context


def served_serial(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


def tls_serial(ca: CA, port: int, server_name: str | None) -> int:
    """The serial of what a plain TLS handshake (implicit TLS: IMAPS) gets for SNI
    `server_name` (None: no SNI), verified against the CA (the name: by the serial)."""
    context = client_context(ca)
    context.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as sock:
            return served_serial(sock)


def imaps_serial(ca: CA, server: PymailServer) -> int:
    return tls_serial(ca, server.imaps_port, HOST)


def starttls_serial(ca: CA, server: PymailServer) -> int:
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        smtp.starttls(context=client_context(ca))  # 127.0.0.1: verified by the IP SAN
        serial = served_serial(smtp.sock)
        assert smtp.noop()[0] == 250
        return serial


def wait_for_log(server: PymailServer, since: int, pattern: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(server.log_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        if m := re.search(pattern, text):
            return m.group(0)
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the log:\n{server.log()[-3000:]}")


class IdleSession:
    """An IMAPS session in IDLE (RFC 2177), opened before a reload."""

    def __init__(self, ca: CA, server: PymailServer) -> None:
        self.wire = Wire(server.imaps_port, context=client_context(ca))
        login(self.wire, ALICE)
        assert self.wire.command("S1", "SELECT INBOX").tagged.startswith(b"OK")
        self.serial = served_serial(self.wire.sock)
        self.wire.send(b"I1 IDLE\r\n")
        assert self.wire.readline().startswith(b"+ ")

    def done(self) -> None:
        """DONE -> OK, and the session still answers a command."""
        self.wire.send(b"DONE\r\n")
        assert self.wire.response("I1").tagged.startswith(b"OK")
        assert self.wire.command("N1", "NOOP").tagged.startswith(b"OK")
        self.wire.close()


# --- fixtures ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@dataclass
class Served:
    server: PymailServer
    main: Lineage
    sts: Lineage
    wild: Lineage


@pytest.fixture(scope="module")
def served(ca: CA, tmp_path_factory: pytest.TempPathFactory):
    """One server on certbot-style files: the main pair for mx, an SNI pair for
    mta-sts, a wildcard pair expiring in 5 days; reloads only on SIGHUP."""
    root = tmp_path_factory.mktemp("letsencrypt")
    main = Lineage(root, HOST, ca.issue([HOST]))
    sts = Lineage(root, "mta-sts", ca.issue(["mta-sts.test.example"]))
    wild = Lineage(root, "wild", ca.issue(["*.wild.test.example"], days=5))
    server = PymailServer(tmp_path_factory.mktemp("pymail"), hostname=HOST, imaps=True, http=True,
                          extra_config=tls_config(main, sts, wild))
    server.add_user(ALICE)
    server.start()
    yield Served(server, main, sts, wild)
    assert server.stop() == 0


def sighup(server: PymailServer) -> str:
    """SIGHUP, then the reload's log line (reloaded, or the failure)."""
    mark = server.log_mark()
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    return wait_for_log(server, mark, r"tls: (reloaded|reload failed).*")


# --- tests ------------------------------------------------------------------------------

def test_sighup_serves_the_new_certificate_and_open_sessions_stay(ca: CA, served: Served) -> None:
    server = served.server
    before = imaps_serial(ca, server)
    assert starttls_serial(ca, server) == before
    idle = IdleSession(ca, server)
    renewed = ca.issue([HOST])
    served.main.renew(renewed)
    line = sighup(server)
    assert line.startswith(f"tls: reloaded: {served.main.cert} (serial {renewed.serial:X}, expires ")
    assert imaps_serial(ca, server) == renewed.serial
    assert starttls_serial(ca, server) == renewed.serial
    assert idle.serial == before
    idle.done()


def test_sni_chooses_the_pair_by_subject_alt_name(ca: CA, served: Served) -> None:
    server = served.server
    main, sts, wild = (imaps_serial(ca, server), ca.issue(["mta-sts.test.example"]),
                       ca.issue(["*.wild.test.example"], days=5))
    served.sts.renew(sts)
    served.wild.renew(wild)
    assert sighup(server).startswith("tls: reloaded: ")
    port = server.imaps_port
    assert tls_serial(ca, port, "mta-sts.test.example") == sts.serial
    assert tls_serial(ca, port, "MTA-STS.test.example.") == sts.serial  # case, root dot
    assert tls_serial(ca, port, "a.wild.test.example") == wild.serial
    assert tls_serial(ca, port, HOST) == main
    for name in ("b.a.wild.test.example", "other.test.example"):  # one label only; unknown
        assert tls_serial(ca, port, name) == main
    assert tls_serial(ca, port, None) == main  # no SNI at all
    assert starttls_serial(ca, server) == main


def test_a_bad_replacement_keeps_the_old_certificate(ca: CA, served: Served) -> None:
    server = served.server
    before = imaps_serial(ca, server)
    good = ca.issue([HOST])
    mismatched = Pair(good.cert_pem, ca.issue([HOST]).key_pem, good.serial)
    served.main.renew(mismatched)
    line = sighup(server)
    assert line.startswith(f"tls: reload failed, still serving {served.main.cert} (serial {before:X}")
    assert "does not match the certificate" in line
    assert re.search(r"ERROR pymail\.tls\[\d+\]: tls: reload failed", server.log())
    assert imaps_serial(ca, server) == before
    assert starttls_serial(ca, server) == before
    served.main.renew(Pair(b"not a certificate\n", good.key_pem, 0))
    assert "no PEM certificate" in sighup(server)
    assert imaps_serial(ca, server) == before
    served.main.renew(good)  # and a good one after the bad ones is taken
    assert sighup(server).startswith("tls: reloaded: ")
    assert imaps_serial(ca, server) == good.serial


def test_certbot_deploy_hook_lets_the_group_read_the_key_and_reloads(
        ca: CA, served: Served) -> None:
    """contrib/certbot/pymail-reload as certbot runs it (RENEWED_LINEAGE), without systemd:
    the renewed key becomes group-readable for the given group, and pymail reloads."""
    server = served.server
    renewed = ca.issue([HOST])
    served.main.renew(renewed)
    key = served.main.key.resolve()
    key.chmod(0o600)
    served.main.live.parent.chmod(0o700)  # live/ as older certbot makes it
    group = grp.getgrgid(os.getgid()).gr_name
    mark = server.log_mark()
    assert server.proc is not None
    env = {"PATH": os.environ["PATH"], "RENEWED_LINEAGE": str(served.main.live),
           "PYMAIL_CONFIG": str(server.config_path), "PYMAIL_GROUP": group,
           "PYMAIL_PID": str(server.proc.pid)}
    hook = REPO / "contrib" / "certbot" / "pymail-reload"
    subprocess.run([str(hook)], env=env, check=True, timeout=30)
    wait_for_log(server, mark, rf"tls: reloaded: \S+ \(serial {renewed.serial:X},")
    assert imaps_serial(ca, server) == renewed.serial
    assert stat.S_IMODE(key.stat().st_mode) == 0o640 and key.stat().st_gid == os.getgid()
    assert served.main.live.parent.stat().st_mode & 0o011 == 0o011
    # A lineage the config does not name: nothing is touched, nothing is signalled.
    other = Lineage(served.main.live.parents[1], "www.example", ca.issue(["www.example"]))
    other.key.resolve().chmod(0o600)
    mark = server.log_mark()
    subprocess.run([str(hook)], env={**env, "RENEWED_LINEAGE": str(other.live)}, check=True,
                   timeout=30)
    assert stat.S_IMODE(other.key.resolve().stat().st_mode) == 0o600
    time.sleep(0.3)
    assert "tls: reloaded" not in server.log()[mark:]


def test_expiry_warning_and_metric(served: Served) -> None:
    server = served.server
    log = server.log()
    warning = re.search(r"WARNING pymail\.tls\[\d+\]: tls: certificate \*\.wild\.test\.example "
                        r"\(\S+\) expires in 4\.9\d* days|expires in 5\.0 days", log)
    assert warning, log[-3000:]
    assert not re.search(rf"WARNING .*certificate {re.escape(HOST)} ", log)  # 60 days: no warning
    status, body = server.http_get("/metrics")
    assert status == 200
    values = dict(re.findall(r'^pymail_tls_certificate_expiry_seconds\{name="([^"]+)"\} (\S+)$',
                             body, re.M))
    assert set(values) == {HOST, "mta-sts.test.example", "*.wild.test.example"}, values
    assert 4.9 * 86400 < float(values["*.wild.test.example"]) <= 5 * 86400
    assert 59 * 86400 < float(values[HOST]) <= 60 * 86400


def test_certbot_renewal_is_picked_up_without_a_signal(ca: CA, tmp_path: Path) -> None:
    """The symlink swap of `certbot renew`, seen by the file poller (check_interval)."""
    main = Lineage(tmp_path / "letsencrypt", HOST, ca.issue([HOST]))
    server = PymailServer(tmp_path, hostname=HOST, imaps=True,
                          extra_config=tls_config(main, check_interval="200ms"))
    server.add_user(ALICE)
    server.start()
    try:
        before = imaps_serial(ca, server)
        idle = IdleSession(ca, server)
        mark = server.log_mark()
        renewed = ca.issue([HOST])
        main.renew(renewed)
        wait_for_log(server, mark, rf"tls: reloaded: \S+ \(serial {renewed.serial:X},")
        assert imaps_serial(ca, server) == renewed.serial
        assert starttls_serial(ca, server) == renewed.serial
        assert idle.serial == before
        idle.done()
        time.sleep(0.5)  # unchanged files: no second reload
        assert server.log().count("tls: reloaded:") == 1
    finally:
        assert server.stop() == 0


def test_prefork_parent_forwards_sighup_to_every_worker(
        ca: CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker reloads; systemd hears RELOADING=1 then READY=1 once (first worker)."""
    main = Lineage(tmp_path / "letsencrypt", HOST, ca.issue([HOST]))
    notify_dir = Path(tempfile.mkdtemp(prefix="pymail-notify-", dir="/tmp"))  # AF_UNIX: short
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_dir / "notify"))
    notify.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_dir / "notify"))
    server = PymailServer(tmp_path, hostname=HOST, workers=2, extra_config=tls_config(main))
    server.start()
    try:
        assert notify.recv(4096) == b"READY=1"
        renewed = ca.issue([HOST])
        main.renew(renewed)
        mark = server.log_mark()
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while server.log()[mark:].count("tls: reloaded:") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(set(re.findall(r"pymail\.tls\[(\d+)\]: tls: reloaded:", server.log()))) == 2
        assert {starttls_serial(ca, server) for _ in range(8)} == {renewed.serial}
        reloading = notify.recv(4096)
        assert reloading.startswith(b"RELOADING=1\nMONOTONIC_USEC="), reloading
        assert notify.recv(4096) == b"READY=1"
        notify.settimeout(0.3)
        with pytest.raises(TimeoutError):  # once, not once per worker
            notify.recv(4096)
    finally:
        assert server.stop() == 0
        notify.close()
        shutil.rmtree(notify_dir)


@pytest.mark.parametrize("case", ["expired", "mismatched key", "missing file", "directory"])
def test_start_is_refused_with_one_line(ca: CA, tmp_path: Path, case: str) -> None:
    pair = ca.issue([HOST], expired=case == "expired")
    if case == "mismatched key":
        pair = Pair(pair.cert_pem, ca.issue([HOST]).key_pem, pair.serial)
    main = Lineage(tmp_path / "letsencrypt", HOST, pair)
    expected = {
        "expired": rf"tls: TLS certificate {main.cert} expired on \d{{4}}-\d\d-\d\d",
        "mismatched key": rf"tls: TLS key {main.key} does not match the certificate in {main.cert}",
        "missing file": rf"tls: TLS key {main.key}: no such file",
        "directory": rf"tls: TLS key {main.key}: is a directory",
    }[case]
    if case in ("missing file", "directory"):
        main.key.unlink()
        if case == "directory":
            main.key.mkdir()
    server = PymailServer(tmp_path, hostname=HOST, extra_config=tls_config(main))
    with pytest.raises(ServerExited) as exited:
        server.start()
    server.log_file.close()
    assert "pymail exited with 1:" in str(exited.value)
    log = server.log()
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and re.search(r"cannot start: " + expected, errors[0]), log
