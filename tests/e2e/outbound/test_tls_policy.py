"""The outbound TLS policy against real servers in the test internet: DANE with the
validating unbound in front of the signed dane.test zone and the real Postfix, and
MTA-STS with the policy served over HTTPS (aiohttp on 127.0.0.5:443 as
mta-sts.remote.test, its certificate from a test CA the process trusts through
SSL_CERT_FILE).

What must hold: a matching TLSA record → delivered, "verified (dane)"; a wrong one →
stays queued (temporary), nothing reaches Postfix, no plaintext; MTA-STS enforce with a
certificate the CA store accepts → delivered verified; with Postfix's certificate not
trusted (the "bad certificate") → stays queued, never plaintext; an MX outside the
policy's list is not used; a policy that cannot be fetched is no policy."""

from __future__ import annotations

import asyncio
import datetime as _dt
from pathlib import Path

import pytest
from aiohttp import web

from pymail.delivery.remote import RemoteDelivery
from pymail.delivery.remote.policy import pkix_context
from pymail.dns import resolver_from_config
from pymail.net.certs import ensure_embedded_certificates, make_server_context
from tests.e2e.outbound.test_remote_delivery import CONTENT, config, message
from tests.internet import Internet

STS_ADDRESS = "127.0.0.5"


@pytest.fixture
def trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """SSL_CERT_FILE for this test; returns a function that sets the bundle."""

    def trust(*pem_files: Path) -> None:
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(b"".join(p.read_bytes() for p in pem_files))
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        pkix_context.cache_clear()

    yield trust
    pkix_context.cache_clear()


def run(cfg, batches, policy_text: str | None, sts_files=None):
    """Serve `policy_text` as mta-sts.remote.test's policy (if given) and send."""

    async def go():
        runner = None
        if policy_text is not None:
            app = web.Application()

            async def policy(_request: web.Request) -> web.Response:
                return web.Response(text=policy_text, content_type="text/plain")

            app.router.add_get("/.well-known/mta-sts.txt", policy)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, STS_ADDRESS, 443,
                              ssl_context=make_server_context(sts_files.cert, sts_files.key)).start()
        delivery = RemoteDelivery(config=cfg, resolver=resolver_from_config(cfg.dns))
        try:
            return [await delivery.send(m, s, CONTENT) for m, s in batches]
        finally:
            await delivery.close()
            if runner is not None:
                await runner.cleanup()

    return asyncio.run(go())


def test_dane_match_delivers_verified_and_a_mismatch_stays_queued(
        internet: Internet, tmp_path: Path) -> None:
    cfg = config(tmp_path, internet.dns_config(validating=True))
    [[ok]] = run(cfg, [message("bob@dane.test")], None)
    assert ok.delivered, ok
    assert ok.tls is not None and ok.tls.endswith("verified (dane)"), ok.tls
    assert internet.postfix.wait_for_messages("bob@dane.test")
    internet.postfix.clear()
    zone = internet.zone("dane.test")
    wrong = "\n".join(line if "TLSA" not in line else "_25._tcp.mx TLSA 3 1 1 " + "ab" * 32
                      for line in zone.splitlines())
    internet.set_zone("dane.test", wrong, signed=True)
    internet.unbound.restart()  # forget the cached TLSA
    [[refused]] = run(cfg, [message("bob@dane.test")], None)
    assert not refused.delivered and not refused.permanent, refused
    assert "matches no TLSA record" in refused.text, refused
    assert internet.postfix.messages("bob@dane.test") == []


def test_without_validation_dane_does_not_apply(internet: Internet, tmp_path: Path) -> None:
    cfg = config(tmp_path, internet.dns_config())  # NSD itself: no AD bit
    [[attempt]] = run(cfg, [message("bob@dane.test")], None)
    assert attempt.delivered and attempt.tls is not None and "(opportunistic)" in attempt.tls


@pytest.fixture
def sts(internet: Internet, tmp_path: Path):
    """remote.test publishes MTA-STS (id 1); the HTTPS certificate for mta-sts.remote.test."""
    internet.add_records("remote.test", f'mta-sts A {STS_ADDRESS}\n_mta-sts TXT "v=STSv1; id=1"')
    return ensure_embedded_certificates(tmp_path / "sts-tls", "mta-sts.remote.test")


ENFORCE = "version: STSv1\nmode: enforce\nmx: mx.remote.test\nmax_age: 86400\n"


def test_mta_sts_enforce_delivers_with_a_valid_certificate(
        internet: Internet, tmp_path: Path, sts, trusted) -> None:
    trusted(sts.ca, internet.postfix.ca_file)
    [[attempt]] = run(config(tmp_path, internet.dns_config()), [message("bob@remote.test")],
                      ENFORCE, sts)
    assert attempt.delivered, attempt
    assert attempt.tls is not None and attempt.tls.endswith("verified (mta-sts enforce)"), attempt.tls


def test_mta_sts_enforce_with_a_bad_certificate_never_falls_back(
        internet: Internet, tmp_path: Path, sts, trusted) -> None:
    trusted(sts.ca)  # the policy is fetched, but Postfix's certificate is not trusted
    [[attempt]] = run(config(tmp_path, internet.dns_config()), [message("bob@remote.test")],
                      ENFORCE, sts)
    assert not attempt.delivered and not attempt.permanent, attempt
    assert "TLS handshake with mx.remote.test[127.0.0.2] failed" in attempt.text, attempt
    assert "CERTIFICATE_VERIFY_FAILED" in attempt.text
    assert internet.postfix.messages("bob") == []


def test_mta_sts_enforce_skips_an_mx_outside_the_policy(
        internet: Internet, tmp_path: Path, sts, trusted) -> None:
    trusted(sts.ca, internet.postfix.ca_file)
    other = ENFORCE.replace("mx: mx.remote.test", "mx: *.elsewhere.test")
    [[attempt]] = run(config(tmp_path, internet.dns_config()), [message("bob@remote.test")],
                      other, sts)
    assert not attempt.delivered and not attempt.permanent, attempt
    assert "not in the MTA-STS policy" in attempt.text
    assert internet.postfix.messages("bob") == []


def test_a_policy_behind_an_untrusted_certificate_is_no_policy(
        internet: Internet, tmp_path: Path, sts, trusted) -> None:
    trusted(internet.postfix.ca_file)  # the HTTPS certificate's CA is not trusted
    [[attempt]] = run(config(tmp_path, internet.dns_config()), [message("bob@remote.test")],
                      ENFORCE, sts)
    assert attempt.delivered and attempt.tls is not None and "(opportunistic)" in attempt.tls
