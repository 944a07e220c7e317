"""The tests' small internet: DNS, a remote Postfix, a validating resolver and Rspamd.

Everything runs on loopback inside the private network namespace scripts/test.sh makes
(``PYMAIL_TEST_NETNS=1``): every 127.0.0.0/8 address and port 25 belong to the tests, and
nothing outside can be reached.  Pieces (tests/services/):

=====================  ==============================================================
NSD (`nsd`)            127.0.0.1:<port>, zones `default_zones()`: ``example.test`` (our
                       domain: MX mail.example.test = 127.0.0.1, SPF ``mx -all``, DMARC
                       ``p=reject`` strict), ``remote.test`` (MX mx.remote.test =
                       127.0.0.2), ``dane.test`` (DNSSEC-signed: MX mx.dane.test =
                       127.0.0.2 and its TLSA 3 1 1 for Postfix's certificate), the
                       reverse zone 127.in-addr.arpa (FCrDNS for both hosts)
Postfix (`postfix`)    the remote MX for remote.test and dane.test on 127.0.0.2:25,
                       users bob and carol, STARTTLS with a private CA
unbound (`unbound`)    validating resolver in front of NSD, trusting dane.test's key
                       (started on first use)
Rspamd (`rspamd`)      DKIM/SPF/DMARC verifier asking NSD (started on first use; ~1 s
                       warm, ~22 s the first time on a machine)
=====================  ==============================================================

Use: the fixtures are imported once, for every end-to-end test, by tests/e2e/conftest.py
(a session fixture imported into two conftest files would be two Internets at once), then

    def test_x(internet, tmp_path):
        server = PymailServer(tmp_path, hostname=PYMAIL_HOSTNAME,
                              extra_config=internet.dns_config())
        ...
        [raw] = internet.postfix.wait_for_messages("bob")
        result = internet.verify_delivered(raw)      # Rspamd's verdict
        assert result.has("R_DKIM_ALLOW", "R_SPF_ALLOW", "DMARC_POLICY_ALLOW")

Addresses: 127.0.0.1 is pymail (and NSD, unbound, Rspamd on free ports), 127.0.0.2 the
Postfix, 127.0.0.3 smtp-sink's default (`tests.services.postfix.SmtpSink`); 127.0.0.4 and
up are free for a test's own servers (e.g. scriptable aiosmtpd MXes on port 25), published
with ``internet.set_zone("faulty.test", "@ MX 10 mx\nmx A 127.0.0.4")``.

`internet` is the session's `Internet`, put back after each test: zones, Postfix's
settings and users, mailboxes and log, a stopped Postfix started again.
``internet.dns_config(validating=True)`` points pymail at unbound instead of NSD (DANE).
A test needing port 25 without the namespace skips with "run through scripts/test.sh"
(fails under PYMAIL_TEST_STRICT=1), see `require_test_network`.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.pymail_harness import STRICT
from tests.services.dnssec import ZoneSigner, tlsa_data
from tests.services.nsd import NsdService
from tests.services.postfix import PostfixService

__all__ = [
    "DANE_DOMAIN",
    "Internet",
    "LOCAL_DOMAIN",
    "POSTFIX_ADDRESS",
    "PYMAIL_ADDRESS",
    "PYMAIL_HOSTNAME",
    "REMOTE_DOMAIN",
    "default_zones",
    "dkim_record",
    "internet",
    "internet_session",
    "make_dkim_key",
    "require_test_network",
]

LOCAL_DOMAIN = "example.test"
REMOTE_DOMAIN = "remote.test"
DANE_DOMAIN = "dane.test"
#: pymail's host: A/PTR in the zones, the address its outbound connections come from
#: (the kernel's source address for 127.0.0.N is 127.0.0.1).
PYMAIL_HOSTNAME = "mail.example.test"
PYMAIL_ADDRESS = "127.0.0.1"
POSTFIX_ADDRESS = "127.0.0.2"
POSTFIX_USERS = ("bob", "carol")


def require_test_network() -> None:
    """Skip (fail under PYMAIL_TEST_STRICT=1) unless the tests run in their own network
    namespace, where 127.0.0.N:25 is theirs."""
    if os.environ.get("PYMAIL_TEST_NETNS") == "1":
        return
    message = ("needs port 25 on 127.0.0.N in a private network namespace: "
               "run through scripts/test.sh")
    if STRICT:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def dkim_record(selector: str, public_key_b64: str, *, key_type: str = "rsa") -> str:
    """A zone-file line publishing a DKIM key (RFC 6376 section 3.6.1), the key split
    into character-strings of at most 255 bytes."""
    value = f"v=DKIM1; k={key_type}; p={public_key_b64}"
    chunks = " ".join(f'"{value[i:i + 255]}"' for i in range(0, len(value), 255))
    return f"{selector}._domainkey TXT {chunks}"


def make_dkim_key(bits: int = 2048) -> tuple[bytes, str]:
    """A new RSA key: (the private key PEM for a signer, its public key in base64 for
    `dkim_record`)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(public).decode()


def default_zones(postfix_tlsa: str | None = None) -> dict[str, str]:
    """The zones every test starts from (records relative to each origin; NSD adds SOA/NS).

    `postfix_tlsa`: the TLSA data of Postfix's certificate (``"3 1 1 <hex>"``) for
    ``_25._tcp.mx.dane.test``."""
    zones = {
        LOCAL_DOMAIN: f"""
@ MX 10 mail
@ A {PYMAIL_ADDRESS}
mail A {PYMAIL_ADDRESS}
@ TXT "v=spf1 mx -all"
_dmarc TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
""",
        REMOTE_DOMAIN: f"""
@ MX 10 mx
mx A {POSTFIX_ADDRESS}
@ TXT "v=spf1 mx -all"
_dmarc TXT "v=DMARC1; p=none"
""",
        DANE_DOMAIN: f"""
@ MX 10 mx
mx A {POSTFIX_ADDRESS}
@ TXT "v=spf1 mx -all"
""",
        "127.in-addr.arpa": f"""
1.0.0 PTR {PYMAIL_HOSTNAME}.
2.0.0 PTR mx.{REMOTE_DOMAIN}.
""",
    }
    if postfix_tlsa:
        zones[DANE_DOMAIN] += f"_25._tcp.mx TLSA {postfix_tlsa}\n"
    return zones


@dataclass
class ReceivedFacts:
    """What the receiving Postfix saw of a delivered message's SMTP session."""

    ip: str
    rdns: str  #: the client's name as Postfix resolved it ("localhost": /etc/hosts)
    helo: str
    mail_from: str
    rcpt: str
    tls: bool


_POSTFIX_RECEIVED = re.compile(
    rb"^Received: from (?P<helo>\S+) \((?P<rdns>\S+) \[(?P<ip>[0-9a-fA-F.:]+)\]\)(?P<rest>.*?)"
    rb"\n\tby (?P<by>\S+) \(Postfix\) with (?P<proto>\S+)", re.MULTILINE | re.DOTALL)


def received_facts(raw: bytes) -> ReceivedFacts:
    """The envelope and client of a message as Postfix delivered it (its Return-Path,
    Delivered-To and the Received header it added on top)."""
    head = raw.split(b"\n\n", 1)[0].replace(b"\r\n", b"\n")
    ret = re.search(rb"^Return-Path: <([^>]*)>", head, re.MULTILINE)
    to = re.search(rb"^Delivered-To: (\S+)", head, re.MULTILINE)
    received = _POSTFIX_RECEIVED.search(head)
    if ret is None or to is None or received is None:
        raise AssertionError(f"not a message as Postfix delivers it:\n{head.decode(errors='replace')}")
    return ReceivedFacts(ip=received["ip"].decode(), rdns=received["rdns"].decode(), helo=received["helo"].decode(),
                         mail_from=ret[1].decode(), rcpt=to[1].decode(),
                         tls=received["proto"].upper().startswith(b"ESMTPS"))


def as_sent(raw: bytes) -> bytes:
    """`raw` without the headers Postfix adds at final delivery (Return-Path,
    X-Original-To, Delivered-To): the message as it crossed the wire, plus Postfix's
    Received header, as a filter on the receiving MTA would see it."""
    head, sep, body = raw.partition(b"\n\n")
    kept = [line for line in head.split(b"\n")
            if not re.match(rb"(?i)(Return-Path|X-Original-To|Delivered-To):", line)]
    return b"\n".join(kept) + sep + body


class Internet:
    """The running pieces (see the module docstring); made by `internet_session`."""

    def __init__(self) -> None:
        self.postfix = PostfixService(domains=(REMOTE_DOMAIN, DANE_DOMAIN), users=POSTFIX_USERS,
                                      address=POSTFIX_ADDRESS)
        self.dane_signer = ZoneSigner(DANE_DOMAIN)
        self.nsd: NsdService | None = None
        self._unbound = None
        self._rspamd = None
        self._defaults: dict[str, str] = {}

    def start(self) -> "Internet":
        try:
            self.postfix.start()
            self._defaults = default_zones(tlsa_data(self.postfix.cert_file))
            self.nsd = NsdService(dict(self._defaults), signers={DANE_DOMAIN: self.dane_signer})
            self.nsd.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for service in (self._rspamd, self._unbound, self.nsd, self.postfix):
            if service is not None:
                service.stop()
        self._rspamd = self._unbound = None

    # -- DNS -------------------------------------------------------------------------------

    def dns_config(self, *, validating: bool = False) -> str:
        """The ``[dns]`` section for a PymailServer's `extra_config`: NSD, or with
        `validating` the unbound in front of it (AD bits for dane.test, for DANE)."""
        assert self.nsd is not None
        port = self.unbound.port if validating else self.nsd.port
        return f'[dns]\nnameservers = ["127.0.0.1"]\nport = {port}\ntimeout = "3s"\n'

    def zone(self, origin: str) -> str:
        assert self.nsd is not None
        return self.nsd.zones[origin]

    def set_zone(self, origin: str, records: str, *, signed: bool = False) -> None:
        """Replace (or add) a zone (records relative to `origin`; NSD restarts, 0.3-0.5 s).
        `signed`: serve it DNSSEC-signed with a new key that unbound trusts (unbound
        restarts to learn the anchor)."""
        assert self.nsd is not None
        origin = origin.rstrip(".").lower()
        new_anchor = signed and origin not in self.nsd.signers
        if new_anchor:
            self.nsd.signers[origin] = ZoneSigner(origin)
        self.nsd.set_zone(origin, records)
        if self._unbound is not None:
            if new_anchor or origin not in self._defaults:
                self._unbound.restart()  # a new stub zone or trust anchor

    def add_records(self, origin: str, records: str) -> None:
        """Append records (zone-file lines, e.g. `dkim_record` output) to a zone."""
        self.set_zone(origin, self.zone(origin) + "\n" + records + "\n")

    # -- lazily started ------------------------------------------------------------------------

    @property
    def unbound(self):
        """The validating resolver (started on first use, kept for the session)."""
        if self._unbound is None:
            from tests.services.unbound import UnboundService

            assert self.nsd is not None
            self._unbound = UnboundService(self.nsd).start()
        return self._unbound

    @property
    def rspamd(self):
        """Rspamd asking NSD (started on first use, kept for the session)."""
        if self._rspamd is None:
            from tests.services.rspamd import RspamdService

            assert self.nsd is not None
            self._rspamd = RspamdService(self.nsd.port).start()
        return self._rspamd

    def verify_delivered(self, raw: bytes):
        """Rspamd's verdict (`RspamdResult`) on a message Postfix delivered, scanned with
        the client address, HELO and envelope Postfix saw."""
        facts = received_facts(raw)
        return self.rspamd.check(as_sent(raw), ip=facts.ip, helo=facts.helo, hostname=facts.rdns,
                                 mail_from=facts.mail_from, rcpt=facts.rcpt)

    # -- between tests ---------------------------------------------------------------------------

    def reset(self) -> None:
        """Put everything back as a new test expects it."""
        assert self.nsd is not None
        zones_changed = (self.nsd.zones != self._defaults or set(self.nsd.signers) != {DANE_DOMAIN}
                         or bool(self.dane_signer.broken))
        if zones_changed or self.nsd.proc is None or self.nsd.proc.poll() is not None:
            self.nsd.zones = dict(self._defaults)
            self.nsd.signers = {DANE_DOMAIN: self.dane_signer}
            self.dane_signer.broken.clear()
            self.nsd.stop_server()
            self.nsd.start()
            if self._unbound is not None:
                self._unbound.restart()
        else:
            self.nsd.resume()
        postfix = self.postfix
        if (postfix.settings or list(postfix.users) != list(POSTFIX_USERS)
                or postfix.proc is None or postfix.proc.poll() is not None):
            postfix.settings = {}
            postfix.users = list(POSTFIX_USERS)
            postfix.restart()
        else:
            postfix.resume()
        postfix.clear()
        with contextlib.suppress(FileNotFoundError), open(postfix.log_path, "r+b") as log:
            log.truncate(0)  # postlogd appends (O_APPEND): it goes on at the new end


@pytest.fixture(scope="session")
def internet_session() -> Iterator[Internet]:
    """The session's `Internet` (prefer `internet`, which resets it after each test)."""
    require_test_network()
    world = Internet().start()
    try:
        yield world
    finally:
        world.stop()


@pytest.fixture
def internet(internet_session: Internet) -> Iterator[Internet]:
    """The test internet, as `default_zones` and a fresh Postfix describe it."""
    try:
        yield internet_session
    finally:
        internet_session.reset()
