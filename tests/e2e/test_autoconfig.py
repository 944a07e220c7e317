"""Client autoconfiguration, MTA-STS and ACME http-01 over real HTTP(S) from a running
pymail (one server for the module): [listen] web (plain), [listen] https (verified
against the server's CA) and the monitoring [listen] http.

The Thunderbird file is read back by `read_like_thunderbird`, which applies the rules of
Thunderbird's account wizard (readFromXML in comm-central's accountcreation: the
emailProvider id and a domain are required; each server needs a known type, a host
name, a port in 1..65535, a socketType of plain/SSL/STARTTLS, a user name and a known
authentication; the first valid server is the one set up, the rest are alternatives).
"""

from __future__ import annotations

import asyncio
import http.client
import plistlib
import re
import socket
import ssl
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pymail.net.challenges import ChallengeStore
from tests.pymail_harness import PymailServer, ServerExited

DOMAIN = "example.test"
HOST = "mx.test.example"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = PymailServer(tmp_path_factory.mktemp("autoconfig"), hostname=HOST, http=True, web=True,
                       https=True, imaps=True, imap=True, pop3s=True, pop3=True, submission=True,
                       submissions=True)
    srv.add_user(f"alice@{DOMAIN}")

    async def inactive_domain() -> None:
        store = srv.store()
        try:
            await store.directory.add_domain("retired.test")
            await store.directory.set_domain_active("retired.test", False)
        finally:
            await store.close()

    asyncio.run(inactive_domain())
    srv.start()
    yield srv
    srv.stop()


def request(server: PymailServer, listener: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
    """(status, headers, body) of one request to `listener` ("web", "https", "http"),
    redirects not followed; HTTPS verified against the server's CA."""
    port = {"web": server.web_port, "https": server.https_port, "http": server.http_port}[listener]
    assert port is not None
    if listener == "https":
        context = ssl.create_default_context(cafile=str(server.ca_file))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                                                       timeout=30)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


# ------------------------------------------------------------------ Thunderbird


_SOCKET_TYPES = {"plain", "SSL", "STARTTLS"}
_AUTH = {"password-cleartext", "plain", "password-encrypted", "secure", "GSSAPI", "NTLM", "OAuth2"}
_HOSTNAME = re.compile(r"^[a-z0-9\-.%]+$")  # Thunderbird's Sanitizer.hostname


def read_like_thunderbird(body: bytes) -> dict:
    """The account the wizard would set up: {"id", "domains", "incoming": [servers],
    "outgoing": [servers]}, each server a dict, the first the one used.  Raises
    AssertionError where the wizard would refuse the file."""
    root = ET.fromstring(body)
    assert root.tag == "clientConfig" and root.get("version") == "1.1"
    provider = root.find("emailProvider")
    assert provider is not None, "no emailProvider"
    provider_id = provider.get("id", "").lower()
    assert _HOSTNAME.match(provider_id), f"bad emailProvider id {provider_id!r}"
    domains = [d.text.lower() for d in provider.findall("domain") if d.text and _HOSTNAME.match(d.text.lower())]
    assert domains, "need proper <domain>"

    def server(element: ET.Element, types: set[str]) -> dict:
        kind = element.get("type")
        assert kind in types, f"type {kind!r}"
        hostname = (element.findtext("hostname") or "").lower()
        assert _HOSTNAME.match(hostname), f"hostname {hostname!r}"
        port = int(element.findtext("port") or "0")
        assert 1 <= port <= 65535
        socket_type = next((s.text for s in element.findall("socketType") if s.text in _SOCKET_TYPES), None)
        assert socket_type is not None, "need proper <socketType>"
        auth = next((a.text for a in element.findall("authentication") if a.text in _AUTH), None)
        assert auth is not None, "need proper <authentication>"
        username = element.findtext("username")
        assert username, "need a username"
        return {"type": kind, "hostname": hostname, "port": port, "socketType": socket_type,
                "auth": auth, "username": username}

    incoming = [server(e, {"imap", "pop3", "nntp", "exchange"}) for e in provider.findall("incomingServer")]
    outgoing = [server(e, {"smtp"}) for e in provider.findall("outgoingServer")]
    assert incoming and outgoing
    return {"id": provider_id, "domains": domains, "incoming": incoming, "outgoing": outgoing}


def expected_incoming(server: PymailServer) -> list[tuple[str, int, str]]:
    return [("imap", server.imaps_port, "SSL"), ("imap", server.imap_port, "STARTTLS"),
            ("pop3", server.pop3s_port, "SSL"), ("pop3", server.pop3_port, "STARTTLS")]


@pytest.mark.parametrize("listener", ["https", "web", "http"])
@pytest.mark.parametrize("path", ["/mail/config-v1.1.xml", "/.well-known/autoconfig/mail/config-v1.1.xml"])
def test_thunderbird_autoconfig(server: PymailServer, listener: str, path: str) -> None:
    status, headers, body = request(server, listener, "GET", f"{path}?emailaddress=alice%40{DOMAIN}")
    assert status == 200, body
    assert headers["Content-Type"].startswith("application/xml")
    account = read_like_thunderbird(body)
    assert account["id"] == DOMAIN and account["domains"] == [DOMAIN]
    assert [(s["type"], s["port"], s["socketType"]) for s in account["incoming"]] == expected_incoming(server)
    assert [(s["port"], s["socketType"]) for s in account["outgoing"]] == [
        (server.submissions_port, "SSL"), (server.submission_port, "STARTTLS")]
    for s in account["incoming"] + account["outgoing"]:
        assert s["hostname"] == HOST and s["username"] == "%EMAILADDRESS%"
        assert s["auth"] == "password-cleartext"


def test_thunderbird_domain_from_host_and_refusals(server: PymailServer) -> None:
    # Without ?emailaddress=: the domain of the autoconfig.DOMAIN name asked for.
    status, _, body = request(server, "https", "GET", "/mail/config-v1.1.xml",
                              headers={"Host": f"autoconfig.{DOMAIN}"})
    assert status == 200 and read_like_thunderbird(body)["id"] == DOMAIN
    for query, want in (("?emailaddress=bob%40elsewhere.test", 404),  # not our domain
                        ("?emailaddress=bob%40retired.test", 404),  # inactive
                        ("?emailaddress=not-an-address", 400),
                        ("?emailaddress=a%40%5B127.0.0.1%5D", 400),
                        ("", 400)):
        status, _, body = request(server, "https", "GET", f"/mail/config-v1.1.xml{query}")
        assert status == want, (query, body)
        assert b"Traceback" not in body


# ------------------------------------------------------------------ Outlook


def autodiscover_request(address: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\r\n<Autodiscover xmlns="{REQUEST_NS}"><Request>'
            f"<EMailAddress>{address}</EMailAddress>"
            f"<AcceptableResponseSchema>{OUTLOOK_NS}</AcceptableResponseSchema>"
            "</Request></Autodiscover>").encode()


def test_autodiscover(server: PymailServer) -> None:
    # A quoted local part with XML's special characters: escaped on the way out.
    address = '"a<b&c"@' + DOMAIN
    escaped = address.replace("&", "&amp;").replace("<", "&lt;")
    for path in ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml"):
        status, headers, body = request(server, "https", "POST", path, autodiscover_request(escaped),
                                        {"Content-Type": "text/xml"})
        assert status == 200, body
        assert headers["Content-Type"].startswith("application/xml")
        root = ET.fromstring(body)
        assert root.tag == f"{{{RESPONSE_NS}}}Autodiscover"
        account = root.find(f"{{{OUTLOOK_NS}}}Response/{{{OUTLOOK_NS}}}Account")
        assert account is not None and account.findtext(f"{{{OUTLOOK_NS}}}Action") == "settings"
        protocols = {}
        for p in account.findall(f"{{{OUTLOOK_NS}}}Protocol"):
            fields = {child.tag.rpartition("}")[2]: child.text for child in p}
            protocols[fields["Type"]] = fields
        assert set(protocols) == {"IMAP", "POP3", "SMTP"}
        assert (protocols["IMAP"]["Port"], protocols["IMAP"]["Encryption"]) == (str(server.imaps_port), "SSL")
        assert (protocols["POP3"]["Port"], protocols["POP3"]["Encryption"]) == (str(server.pop3s_port), "SSL")
        assert (protocols["SMTP"]["Port"], protocols["SMTP"]["Encryption"]) == (str(server.submissions_port), "SSL")
        for fields in protocols.values():
            assert fields["Server"] == HOST and fields["LoginName"] == address
            assert fields["AuthRequired"] == "on" and fields["SPA"] == "off"


def test_autodiscover_bad_requests(server: PymailServer) -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "xxxxxxxxxx"><!ENTITY y "&x;&x;&x;&x;">]>'
            b'<Autodiscover xmlns="' + REQUEST_NS.encode() + b'"><Request><EMailAddress>&y;</EMailAddress>'
            b"</Request></Autodiscover>")
    mobilesync = autodiscover_request(f"alice@{DOMAIN}").replace(
        OUTLOOK_NS.encode(), b"http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006")
    for body in (b"", b"not xml at all", b"<Autodiscover><Request>", bomb, mobilesync,
                 b"<Other><EMailAddress>alice@example.test</EMailAddress></Other>",
                 autodiscover_request("no-at-sign"), autodiscover_request(""),
                 autodiscover_request("a" * 20000 + "@" + DOMAIN)):
        status, _, answer = request(server, "https", "POST", "/autodiscover/autodiscover.xml", body)
        assert status == 400, (body[:80], answer)
        assert b"Traceback" not in answer and len(answer) < 200
    assert request(server, "https", "POST", "/autodiscover/autodiscover.xml",
                   autodiscover_request("bob@elsewhere.test"))[0] == 404
    assert request(server, "https", "GET", "/autodiscover/autodiscover.xml")[0] == 405


# ------------------------------------------------------------------ Apple


def test_mobileconfig(server: PymailServer) -> None:
    status, headers, body = request(server, "https", "GET", f"/apple/mail.mobileconfig?email=alice%40{DOMAIN}")
    assert status == 200
    assert headers["Content-Type"] == "application/x-apple-aspen-config"
    assert "attachment" in headers["Content-Disposition"]
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration" and profile["PayloadVersion"] == 1
    [payload] = profile["PayloadContent"]
    assert payload["PayloadType"] == "com.apple.mail.managed"
    assert payload["EmailAddress"] == f"alice@{DOMAIN}"
    assert payload["EmailAccountType"] == "EmailTypeIMAP"
    assert (payload["IncomingMailServerHostName"], payload["IncomingMailServerPortNumber"],
            payload["IncomingMailServerUseSSL"]) == (HOST, server.imaps_port, True)
    assert (payload["OutgoingMailServerHostName"], payload["OutgoingMailServerPortNumber"],
            payload["OutgoingMailServerUseSSL"]) == (HOST, server.submissions_port, True)
    assert payload["IncomingMailServerUsername"] == f"alice@{DOMAIN}"
    # The same address gives the same profile (installing it again replaces the account).
    assert request(server, "https", "GET", f"/apple/mail.mobileconfig?email=alice%40{DOMAIN}")[2] == body
    for query, want in (("", 400), ("?email=%3Cscript%3E", 400), ("?email=bob%40elsewhere.test", 404)):
        assert request(server, "https", "GET", f"/apple/mail.mobileconfig{query}")[0] == want


# ------------------------------------------------------------------ MTA-STS


def test_mta_sts_policy(server: PymailServer) -> None:
    status, headers, body = request(server, "https", "GET", "/.well-known/mta-sts.txt",
                                    headers={"Host": f"mta-sts.{DOMAIN}"})
    assert status == 200
    assert headers["Content-Type"].split(";")[0] == "text/plain"
    assert body == f"version: STSv1\r\nmode: testing\r\nmx: {HOST}\r\nmax_age: 604800\r\n".encode()
    # RFC 8461 section 3.3: HTTPS only; port 80 sends the client there.
    status, headers, _ = request(server, "web", "GET", "/.well-known/mta-sts.txt")
    assert status == 301
    assert headers["Location"] == f"https://127.0.0.1:{server.https_port}/.well-known/mta-sts.txt"


# ------------------------------------------------------------------ port 80


def test_acme_http01_challenge(server: PymailServer) -> None:
    store = ChallengeStore(server.data_dir / "acme" / "challenges")
    token = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
    store.put_http01(token, f"{token}.thumbprint-of-the-account-key")
    try:
        status, headers, body = request(server, "web", "GET", f"/.well-known/acme-challenge/{token}")
        assert status == 200 and body == f"{token}.thumbprint-of-the-account-key".encode()
        assert headers["Content-Type"].startswith("text/plain")
        assert request(server, "web", "GET", "/.well-known/acme-challenge/" + "A" * 43)[0] == 404
        (store.directory / "secret").write_text("not a challenge")
        for traversal in ("..%2Fsecret", "..%2F..%2Fchallenges%2Fsecret", "%2E%2E%2Fsecret", "secret"):
            status, _, body = request(server, "web", "GET", f"/.well-known/acme-challenge/{traversal}")
            assert status == 404 and b"not a challenge" not in body, traversal
    finally:
        store.remove_http01(token)
    assert request(server, "web", "GET", f"/.well-known/acme-challenge/{token}")[0] == 404


def test_web_redirects_to_https(server: PymailServer) -> None:
    status, headers, _ = request(server, "web", "GET", "/some/page?x=1&y=%20", headers={"Host": "mail.example.test"})
    assert status == 301
    assert headers["Location"] == f"https://mail.example.test:{server.https_port}/some/page?x=1&y=%20"
    # A Host header that is no host name: our own name instead.
    status, headers, _ = request(server, "web", "GET", "/", headers={"Host": "evil/\\x"})
    assert (status, headers["Location"]) == (301, f"https://{HOST}:{server.https_port}/")
    # POST keeps its method (308): Autodiscover over plain HTTP goes to HTTPS.
    status, headers, _ = request(server, "web", "POST", "/autodiscover/autodiscover.xml",
                                 autodiscover_request(f"alice@{DOMAIN}"))
    assert status == 308 and headers["Location"].endswith("/autodiscover/autodiscover.xml")


def test_no_monitoring_on_public_listeners(server: PymailServer) -> None:
    for path in ("/metrics", "/healthz"):
        assert request(server, "https", "GET", path)[0] == 404
        status, headers, body = request(server, "web", "GET", path)
        assert status == 301 and b"pymail_" not in body and body != b"ok\n"
        assert request(server, "http", "GET", path)[0] == 200  # the monitoring listener keeps them
    assert request(server, "https", "GET", "/")[0] == 404


# ------------------------------------------------------------------ start-up


def test_public_listeners_with_workers_and_bind_errors(tmp_path: Path) -> None:
    # Two workers share the public ports (SO_REUSEPORT) and both answer a challenge
    # whichever worker's ACME client wrote it (the store is a directory).
    (tmp_path / "two").mkdir()
    (tmp_path / "taken").mkdir()
    srv = PymailServer(tmp_path / "two", web=True, https=True, imaps=True, workers=2)
    srv.add_user(f"alice@{DOMAIN}")
    srv.start()
    try:
        deadline = time.monotonic() + 10  # the first worker logs once every port is bound
        while "https (TLS" not in srv.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert re.search(rf"web \(HTTP: [^)]*\) listening on 127\.0\.0\.1:{srv.web_port}", srv.log())
        assert re.search(rf"https \(TLS: [^)]*\) listening on 127\.0\.0\.1:{srv.https_port}", srv.log())
        store = ChallengeStore(srv.data_dir / "acme" / "challenges")
        token = "B" * 43
        store.put_http01(token, "key-authorization")
        for _ in range(8):  # new connections: spread over both workers
            assert request(srv, "web", "GET", f"/.well-known/acme-challenge/{token}")[2] == b"key-authorization"
            assert request(srv, "https", "GET", f"/mail/config-v1.1.xml?emailaddress=a%40{DOMAIN}")[0] == 200
    finally:
        srv.stop()
    # A port that is taken: the start stops with one line naming the setting.
    srv = PymailServer(tmp_path / "taken", web=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", srv.web_port))
        taken.listen()
        with pytest.raises(ServerExited):
            srv.start()
    srv.log_file.close()
    assert f"cannot start: listen.web: cannot listen on ['127.0.0.1:{srv.web_port}']" in srv.log()
    assert "Traceback" not in srv.log()
