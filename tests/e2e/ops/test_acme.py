"""The built-in ACME client (pymail.ops.acme) against a real pebble, every challenge
really validated (RFC 8555 http-01, RFC 8737 tls-alpn-01).

Pebble (tests/services/pebble.py) resolves names through the tests' NSD, where
mail.example.test is 127.0.0.1, and validates on its own ports.  What answers there is
this module's *stand-in for pymail's public web listener* for the client-level tests: a
tiny aiohttp app serving ``GET /.well-known/acme-challenge/{token}``
from the same `ChallengeStore` the client writes to, and an SSL server whose SNI callback
switches to `ChallengeStore.tls_alpn_context` -- exactly what pymail's listeners do.  One
pebble and one stand-in serve the whole module; each test has its own data_dir.  The
`pymail serve` tests use pymail's own [listen] web and https instead, with a pebble of
their own validating on those ports.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.x509 import verification

from pymail.config import Config
from pymail.ops.acme import ACME_IDENTIFIER_OID, AcmeManager, challenge_store, renewal_reason
from tests.internet import PYMAIL_HOSTNAME
from tests.services.pebble import PebbleService
from tests.services.process import free_loopback_port



class Responder:
    """The stand-in listener: http-01 on `http_port`, tls-alpn-01 on `tls_port`, both
    answering from whichever data_dir's ChallengeStore the current test names."""

    def __init__(self, http_port: int, tls_port: int) -> None:
        self.http_port, self.tls_port = http_port, tls_port
        self.store = None  # the current test's ChallengeStore
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: web.AppRunner | None = None
        self.server: asyncio.AbstractServer | None = None
        self.alpn_answered: list[str] = []

    def start(self, default_cert: Path, default_key: Path) -> "Responder":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(default_cert, default_key), self.loop).result(10)
        return self

    async def _start(self, default_cert: Path, default_key: Path) -> None:
        async def challenge(request: web.Request) -> web.Response:
            answer = self.store.http01(request.match_info["token"]) if self.store else None
            if answer is None:
                raise web.HTTPNotFound()
            return web.Response(text=answer, content_type="application/octet-stream")

        app = web.Application()
        app.router.add_get("/.well-known/acme-challenge/{token}", challenge)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.http_port).start()

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(default_cert, default_key)

        def sni(sslobj: ssl.SSLObject, server_name: str | None, _context) -> None:
            alpn = self.store.tls_alpn_context(server_name) if self.store else None
            if alpn is not None:
                sslobj.context = alpn
                self.alpn_answered.append(server_name or "")

        context.sni_callback = sni

        async def handshake_only(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()  # RFC 8737 section 3: the CA closes after the handshake anyway

        self.server = await asyncio.start_server(handshake_only, "127.0.0.1", self.tls_port, ssl=context)

    def stop(self) -> None:
        async def _stop() -> None:
            if self.server is not None:
                self.server.close()
            if self.runner is not None:
                await self.runner.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def pebble(internet_session, tmp_path_factory):
    assert internet_session.nsd is not None
    service = PebbleService(internet_session.nsd.port).start()
    # Any certificate will do for connections that are not challenges.
    from pymail.net.certs import ensure_embedded_certificates

    files = ensure_embedded_certificates(tmp_path_factory.mktemp("responder"), "localhost")
    responder = Responder(service.http_port, service.tls_port).start(files.cert, files.key)
    service.responder = responder
    try:
        yield service
    finally:
        responder.stop()
        service.stop()


def acme_config(tmp_path: Path, pebble: PebbleService, **acme) -> Config:
    settings = {"directory_url": pebble.directory_url, "ca_file": str(pebble.ca_file),
                "contact": "hostmaster@example.test", **acme}
    return Config.model_validate({"server": {"hostname": PYMAIL_HOSTNAME, "data_dir": str(tmp_path)},
                                  "acme": settings})


def manager_for(config: Config, pebble: PebbleService, **options) -> tuple[AcmeManager, list[int]]:
    store = challenge_store(config)
    pebble.responder.store = store
    issued: list[int] = []
    return AcmeManager(config, store, lambda: issued.append(1), **options), issued


def verify_chain(acme_dir: Path, pebble: PebbleService, name: str) -> x509.Certificate:
    """The live chain verifies for `name` up to this pebble's root (RFC 5280)."""
    chain = x509.load_pem_x509_certificates((acme_dir / "live" / "cert.pem").read_bytes())
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    verifier = (verification.PolicyBuilder().store(verification.Store([root]))
                .build_server_verifier(x509.DNSName(name)))
    verifier.verify(chain[0], chain[1:])
    return chain[0]


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_http01_issues_a_certificate_the_pebble_root_verifies(pebble, tmp_path):
    config = acme_config(tmp_path, pebble)
    manager, issued = manager_for(config, pebble)
    assert renewal_reason(config) == "no certificate yet"

    state = asyncio.run(manager.issue())

    acme_dir = config.acme_dir
    leaf = verify_chain(acme_dir, pebble, PYMAIL_HOSTNAME)
    assert state.names == [PYMAIL_HOSTNAME] and state.serial == leaf.serial_number
    assert issued == [1]
    assert renewal_reason(config) is None  # 30 days before a 5-year certificate's end
    # Keys 0600, directories 0700; the challenge is gone again.
    for key in ("account.key", "account.json", "live/key.pem"):
        assert mode(acme_dir / key) == 0o600, key
    for directory in ("", "live", "certs", "challenges"):
        assert mode(acme_dir / directory) == 0o700, directory
    assert list((acme_dir / "challenges" / "http-01").iterdir()) == []
    from cryptography.hazmat.primitives.asymmetric import rsa
    assert isinstance(leaf.public_key(), rsa.RSAPublicKey)


def test_tls_alpn01_for_two_names_with_an_ecdsa_key(pebble, tmp_path, internet):
    internet.add_records("example.test", "mta-sts A 127.0.0.1")
    names = [PYMAIL_HOSTNAME, "mta-sts.example.test"]
    config = acme_config(tmp_path, pebble, challenge="tls-alpn-01", key_type="ecdsa", names=names)
    manager, issued = manager_for(config, pebble)
    pebble.responder.alpn_answered.clear()

    state = asyncio.run(manager.issue())

    assert sorted(state.names) == sorted(names) and issued == [1]
    for name in names:
        leaf = verify_chain(config.acme_dir, pebble, name)
    from cryptography.hazmat.primitives.asymmetric import ec
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    # pebble really connected with ALPN acme-tls/1 for each name, and both are gone again.
    assert set(pebble.responder.alpn_answered) >= set(names)
    assert list((config.acme_dir / "challenges" / "tls-alpn-01").iterdir()) == []


def test_tls_alpn_certificate_carries_the_acme_identifier():
    import hashlib

    from pymail.ops.acme import tls_alpn_certificate

    cert_pem, _ = tls_alpn_certificate("mail.example.test", "token.thumb")
    cert = x509.load_pem_x509_certificate(cert_pem)
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(ACME_IDENTIFIER_OID))
    assert ext.critical
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"token.thumb").digest()


def test_renewal_within_renew_before_keeps_the_account(pebble, tmp_path):
    config = acme_config(tmp_path, pebble)
    manager, issued = manager_for(config, pebble)
    first = asyncio.run(manager.issue())
    account_key = (config.acme_dir / "account.key").read_bytes()
    account = (config.acme_dir / "account.json").read_text()
    first_key = (config.acme_dir / "live" / "key.pem").read_bytes()

    # renew_before longer than pebble's 5-year validity: renewal is due at once.
    renewing = acme_config(tmp_path, pebble, renew_before="10000d")
    assert renewal_reason(renewing).startswith("it expires")
    manager, issued = manager_for(renewing, pebble, check_interval=3600)

    async def run_until_issued() -> None:
        task = asyncio.create_task(manager.run())
        try:
            while not issued:
                assert not task.done(), task
                await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(run_until_issued(), 60))
    second = verify_chain(config.acme_dir, pebble, PYMAIL_HOSTNAME)
    assert second.serial_number != first.serial
    assert (config.acme_dir / "live" / "key.pem").read_bytes() != first_key  # a new key each time
    assert (config.acme_dir / "account.key").read_bytes() == account_key
    assert (config.acme_dir / "account.json").read_text() == account  # the same account URL
    assert len(list((config.acme_dir / "certs").iterdir())) == 2


def failed_attempts(manager: AcmeManager, count: int) -> None:
    async def go() -> None:
        task = asyncio.create_task(manager.run())
        try:
            while manager.failures < count:
                assert not task.done(), task
                await asyncio.sleep(0.02)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(asyncio.wait_for(go(), 60))


def acme_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pymail.acme" and r.levelno == logging.WARNING]


def test_unreachable_ca_is_one_warning_line_per_attempt_and_retried(pebble, tmp_path, caplog):
    nowhere = f"https://127.0.0.1:{free_loopback_port()}/dir"
    config = acme_config(tmp_path, pebble, directory_url=nowhere)
    manager, issued = manager_for(config, pebble, retry_first=0.05, retry_max=0.1)
    caplog.set_level(logging.INFO, logger="pymail.acme")

    failed_attempts(manager, 3)

    lines = acme_warnings(caplog)
    assert len(lines) >= 3 and not issued
    for line in lines:
        assert "\n" not in line
        assert line.startswith(f"acme: cannot get a certificate for {PYMAIL_HOSTNAME} from {nowhere}: ")
        assert "Connection refused" in line and "retry in" in line, line


def test_failed_validation_names_the_ca_error_and_removes_the_challenge(pebble, tmp_path, caplog):
    config = acme_config(tmp_path, pebble, names=["nowhere.example.test"])  # no such name in DNS
    manager, issued = manager_for(config, pebble, retry_first=30)
    caplog.set_level(logging.INFO, logger="pymail.acme")

    failed_attempts(manager, 1)

    [line] = acme_warnings(caplog)
    assert "validation failed: nowhere.example.test: " in line, line
    assert "(dns)" in line or "(connection)" in line or "(unknownHost)" in line, line
    assert list((config.acme_dir / "challenges" / "http-01").iterdir()) == []
    assert not issued and not (config.acme_dir / "live").exists()


def wait_for_log(server, text: str, timeout: float = 30.0) -> str:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log()
        if text in log:
            return log
        assert server.proc.poll() is None, f"pymail exited:\n{log}"
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} in the log:\n{server.log()}")


def served_certificate(port: int, cadata: str) -> x509.Certificate:
    """The certificate IMAPS serves for mail.example.test, verified against `cadata`."""
    import socket

    context = ssl.create_default_context(cadata=cadata)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=PYMAIL_HOSTNAME) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


@pytest.mark.parametrize("challenge", ["http-01", "tls-alpn-01"])
def test_pymail_serve_gets_and_serves_its_acme_certificate(challenge, tmp_path, internet):
    """A real `pymail serve` with [acme], end to end through its own listeners: a pebble
    of its own validates on pymail's [listen] web (http-01) or [listen] https
    (tls-alpn-01, RFC 8737: the validation certificate chosen by SNI with ALPN
    acme-tls/1); until then the embedded default's certificate is served, then the ACME
    one is on IMAPS and HTTPS at once (reloaded, no restart), and a restart does not
    order again."""
    import time

    from tests.pymail_harness import PymailServer

    acme = "\n[acme]\ncontact = \"hostmaster@example.test\"\n"
    server = PymailServer(tmp_path, hostname=PYMAIL_HOSTNAME, imaps=True, web=True, https=True,
                          extra_config=internet.dns_config() + acme)
    own = PebbleService(internet.nsd.port, http_port=server.web_port,
                        tls_port=server.https_port).start()
    try:
        contact = 'contact = "hostmaster@example.test"\n'  # pebble's URL, now that it runs
        server.config_path.write_text(server.config_path.read_text().replace(contact, contact + (
            f'directory_url = "{own.directory_url}"\nca_file = "{own.ca_file}"\n'
            f'challenge = "{challenge}"\n')))
        server.start()
        log = wait_for_log(server, f"acme: issued certificate for {PYMAIL_HOSTNAME} (expires ")
        assert "Traceback" not in log
        root = own.root_pem().decode()
        live = x509.load_pem_x509_certificate((server.data_dir / "acme" / "live" / "cert.pem").read_bytes())
        deadline = time.monotonic() + 10
        while True:  # the worker reloads in a thread right after the log line
            try:
                leaf = served_certificate(server.imaps_port, root)
                break
            except ssl.SSLCertVerificationError:
                assert time.monotonic() < deadline, "the ACME certificate is not served"
                time.sleep(0.1)
        assert leaf.serial_number == live.serial_number
        assert served_certificate(server.https_port, root).serial_number == live.serial_number
        assert server.stop() == 0
        server.start()
        assert served_certificate(server.imaps_port, root).serial_number == live.serial_number
        time.sleep(1.0)  # the renewal loop's first look, at start: nothing to do
        assert server.log().count("acme: issued certificate") == 1
    finally:
        server.stop()
        own.stop()


def test_cli_status_and_renew(pebble, tmp_path, internet):
    """`pymail acme status|renew` (no server running: the stand-in answers http-01)."""
    from pymail.net.challenges import ChallengeStore
    from tests.pymail_harness import PymailServer

    acme = (f'\n[acme]\ndirectory_url = "{pebble.directory_url}"\nca_file = "{pebble.ca_file}"\n')
    server = PymailServer(tmp_path, hostname=PYMAIL_HOSTNAME, extra_config=internet.dns_config() + acme)
    pebble.responder.store = ChallengeStore(server.data_dir / "acme" / "challenges")

    status = server.cli("acme", "status").stdout
    assert "certificate: none yet" in status and "renewal:     due: no certificate yet" in status
    renewed = server.cli("acme", "renew").stdout
    assert renewed.startswith(f"issued {server.data_dir / 'acme' / 'live' / 'cert.pem'} for {PYMAIL_HOSTNAME}")
    verify_chain(server.data_dir / "acme", pebble, PYMAIL_HOSTNAME)
    status = server.cli("acme", "status").stdout
    assert "renewal:     not due" in status and "account:     https://127.0.0.1:" in status
    assert server.cli("acme", "renew").stdout.startswith("not due")

    # The CA gone: one line on stderr, exit 1.
    config = server.config_path.read_text().replace(pebble.directory_url,
                                                    f"https://127.0.0.1:{free_loopback_port()}/dir")
    server.config_path.write_text(config)
    failed = server.cli("acme", "renew", "--force", check=False)
    assert failed.returncode == 1 and failed.stdout == ""
    assert failed.stderr.count("\n") == 1 and "Connection refused" in failed.stderr, failed.stderr


@pytest.mark.parametrize(("acme", "expected"), [
    ({"ca_file": None}, "certificate verify failed: unable to get local issuer certificate "
                        "(a private CA needs [acme] ca_file)"),
    ({"directory_url": "/nothing"}, "HTTP 404 Not Found from "),
])
def test_wrong_ca_settings_are_one_clear_line(pebble, tmp_path, acme, expected):
    from pymail.ops.acme import AcmeError

    if "directory_url" in acme:
        acme = {"directory_url": pebble.directory_url.replace("/dir", acme["directory_url"])}
    config = acme_config(tmp_path, pebble, **acme)
    manager, issued = manager_for(config, pebble)
    with pytest.raises(AcmeError) as failure:
        asyncio.run(manager.issue())
    assert expected in str(failure.value) and "\n" not in str(failure.value)
    assert not issued
