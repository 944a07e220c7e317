"""pymail.net.tlsstore in one process, over real TLS handshakes on loopback: the main
pair's sources (embedded default, then [acme]'s live files), an ACME tls-alpn-01
challenge answered before SNI, the expiry warning repeated from the clock.

(The served files, SIGHUP, the poller and SNI through `pymail serve`:
tests/e2e/test_tls_certificates.py.)"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
from pathlib import Path

from cryptography import x509

from pymail.config import Config
from pymail.net.challenges import ACME_TLS_ALPN
from pymail.net.tlsstore import ServerCertificates
from tests.tls_ca import CA

HOST = "mx.test.example"


def handshake(context: ssl.SSLContext, server_name: str | None,
              alpn: list[str] | None = None) -> tuple[int, str | None]:
    """(served serial, ALPN chosen) of one handshake of a real client with `context`."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve)
        thread.start()
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
        if alpn:
            client.set_alpn_protocols(alpn)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client.wrap_socket(raw, server_hostname=server_name) as sock:
                der = sock.getpeercert(binary_form=True)
                chosen = sock.selected_alpn_protocol()
        thread.join(10)
    return x509.load_der_x509_certificate(der).serial_number, chosen


def config(tmp_path: Path, **sections) -> Config:
    return Config.model_validate({"server": {"hostname": HOST, "data_dir": str(tmp_path)},
                                  **sections})


def test_acme_live_files_replace_the_embedded_default_at_reload(tmp_path: Path) -> None:
    cfg = config(tmp_path, acme={"directory_url": "https://acme.test.example/directory"})
    certificates = ServerCertificates(cfg)
    certificates.load()
    embedded = certificates.main
    assert embedded.cert == cfg.tls_dir / "cert.pem"
    assert handshake(certificates.context, None)[0] == embedded.leaf.serial_number
    assert not certificates.changed()
    pair = CA().issue([HOST])
    live = cfg.acme_dir / "live"
    live.mkdir(parents=True)
    (live / "key.pem").write_bytes(pair.key_pem)
    (live / "cert.pem").write_bytes(pair.cert_pem)
    assert certificates.check_files()  # what the poller does; the ACME client calls reload()
    assert certificates.main.cert == live / "cert.pem"
    assert handshake(certificates.context, HOST)[0] == pair.serial
    assert not certificates.check_files()


def test_tls_alpn_01_challenge_comes_before_sni(tmp_path: Path) -> None:
    cfg = config(tmp_path, acme={"directory_url": "https://acme.test.example/directory",
                                 "challenge": "tls-alpn-01"})
    certificates = ServerCertificates(cfg)
    certificates.load()
    main = certificates.main.leaf.serial_number
    ca = CA()
    validation = ca.issue([HOST])  # stands in for the RFC 8737 validation certificate
    certificates.challenges.put_tls_alpn(HOST, validation.cert_pem, validation.key_pem)
    assert handshake(certificates.context, HOST, [ACME_TLS_ALPN]) == (validation.serial, ACME_TLS_ALPN)
    assert handshake(certificates.context, None)[0] == main  # no name: no challenge
    assert handshake(certificates.context, "other.test.example")[0] == main
    certificates.challenges.remove_tls_alpn(HOST)
    assert handshake(certificates.context, HOST)[0] == main


def test_expiry_warning_from_the_clock(tmp_path: Path, caplog) -> None:
    ca = CA()
    pair = ca.issue([HOST], days=20)
    (tmp_path / "cert.pem").write_bytes(pair.cert_pem)
    (tmp_path / "key.pem").write_bytes(pair.key_pem)
    now = [dt.datetime.now(dt.timezone.utc)]
    cfg = config(tmp_path, tls={"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem"),
                                "expiry_warning": "14d"})
    certificates = ServerCertificates(cfg, clock=lambda: now[0])
    certificates.load()
    assert certificates.check_expiry() == []
    now[0] += dt.timedelta(days=7)
    with caplog.at_level("WARNING", logger="pymail.tls"):
        lines = certificates.check_expiry()
    assert len(lines) == 1 and lines[0].startswith(f"tls: certificate {HOST} ({tmp_path / 'cert.pem'}) "
                                                   "expires in 13.0 days")
    assert [r.getMessage() for r in caplog.records] == lines
    certificates.warn_expiry = False  # another worker of a prefork server: lines, no log
    caplog.clear()
    assert certificates.check_expiry() == lines and not caplog.records
