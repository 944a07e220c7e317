"""Remote delivery (pymail.delivery.remote.RemoteDelivery) against the test internet, no
queue in between: the real Postfix as remote.test's MX, and scripted SMTP servers on
127.0.0.4+ port 25 for the faults, all found through the tests' NSD.

What must hold: mail reaches Postfix over STARTTLS and an unknown user there is a
permanent failure quoting Postfix's text; null MX, NXDOMAIN are permanent, a dead DNS
temporary; a 421 greeting passes to the next MX; per-recipient results of a partly
accepted message; 5xx at DATA; SMTPUTF8 to a server without it is 5.6.7; DSN
parameters are passed on only to a server that advertises DSN; two messages share one
connection; a broken STARTTLS handshake without any policy falls back to plaintext."""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
from pathlib import Path

import pytest

from pymail.config import load_config
from pymail.delivery.remote import RemoteDelivery
from pymail.dns import resolver_from_config
from pymail.store.queue import QueuedMessage, QueuedRecipient, RecipientState, RecipientStatus
from tests.internet import PYMAIL_HOSTNAME, Internet
from tests.services.nsd import free_dns_port
from tests.services.postfix import UNKNOWN_USER_REPLY

NOW = _dt.datetime(2026, 12, 2, 12, 0, tzinfo=_dt.timezone.utc)
CONTENT = (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@remote.test>\r\n"
           b"Subject: remote delivery\r\nDate: Wed, 02 Dec 2026 07:00:00 +0000\r\n"
           b"Message-ID: <remote-1@example.test>\r\n\r\nHello Bob.\r\n.leading dot\r\n")


def config(tmp_path: Path, dns: str, extra: str = ""):
    path = tmp_path / "pymail.toml"
    path.write_text(f'[server]\nhostname = "{PYMAIL_HOSTNAME}"\ndata_dir = "{tmp_path}"\n'
                    + dns + extra)
    return load_config(path)


def message(*addresses: str, smtputf8: bool = False, envid: str | None = None,
            ret: str | None = None, notify: frozenset[str] = frozenset(),
            queue_id: str = "ABCDE12345") -> tuple[QueuedMessage, list[RecipientState]]:
    recipients = tuple(QueuedRecipient(a, a.rpartition("@")[2], notify=notify,
                                       orcpt=f"rfc822;{a}" if notify else None)
                       for a in addresses)
    msg = QueuedMessage(queue_id, "blob", len(CONTENT), "alice@example.test", recipients, NOW,
                        NOW + _dt.timedelta(days=5), envid=envid, ret=ret, smtputf8=smtputf8)
    states = [RecipientState(i + 1, r, RecipientStatus.QUEUED, 0, NOW) for i, r in enumerate(recipients)]
    return msg, states


def send(cfg, *batches, between=None):
    """Send each (message, states) with one RemoteDelivery; the attempts of each."""

    async def run():
        delivery = RemoteDelivery(config=cfg, resolver=resolver_from_config(cfg.dns))
        out = []
        try:
            for msg, states in batches:
                out.append(await delivery.send(msg, states, CONTENT))
        finally:
            await delivery.close()
        return out

    return asyncio.run(run())


class ScriptedMX:
    """A scriptable SMTP server on (address, 25), run in the test's own event loop
    (`serve_during`).  `rcpt` maps an address to its reply; STARTTLS, when `broken_tls`,
    answers 220 and then sends bytes no TLS client accepts."""

    def __init__(self, address: str, *, greeting: str = "220 mx.faulty.test ESMTP",
                 extensions: tuple[str, ...] = ("PIPELINING", "SIZE 10240000", "8BITMIME", "DSN"),
                 rcpt: dict[str, str] | None = None, data_reply: str = "250 2.0.0 Ok: queued",
                 broken_tls: bool = False) -> None:
        self.address, self.greeting, self.extensions = address, greeting, extensions
        self.rcpt, self.data_reply, self.broken_tls = rcpt or {}, data_reply, broken_tls
        self.connections = 0
        self.commands: list[str] = []
        self.messages: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(self.greeting.encode() + b"\r\n")
        if not self.greeting.startswith("220"):
            await writer.drain()
            writer.close()
            return
        extensions = self.extensions + (("STARTTLS",) if self.broken_tls else ())
        try:
            while line := await reader.readline():
                command = line.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(command)
                verb = command.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    lines = ["mx.faulty.test", *extensions]
                    writer.write("".join(f"250{'-' if i < len(lines) - 1 else ' '}{text}\r\n"
                                         for i, text in enumerate(lines)).encode())
                elif verb == "STARTTLS":
                    writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                    await writer.drain()
                    await reader.read(1)
                    writer.write(b"this is not TLS\r\n" * 4)
                    await writer.drain()
                    writer.close()
                    return
                elif verb == "RCPT":
                    address = command.split("<", 1)[1].split(">", 1)[0]
                    writer.write(self.rcpt.get(address, "250 2.1.5 Ok").encode() + b"\r\n")
                elif verb == "DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    await writer.drain()
                    data = b""
                    while (chunk := await reader.readline()) != b".\r\n":
                        data += chunk
                    self.messages.append(data)
                    writer.write(self.data_reply.encode() + b"\r\n")
                elif verb == "QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    break
                else:
                    writer.write(b"250 2.0.0 Ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def serve(cfg, servers: list[ScriptedMX], *batches):
    """Run the scripted servers and send the batches in one event loop."""

    async def run():
        listening = [await asyncio.start_server(s.handle, s.address, 25) for s in servers]
        delivery = RemoteDelivery(config=cfg, resolver=resolver_from_config(cfg.dns))
        try:
            return [await delivery.send(msg, states, CONTENT) for msg, states in batches]
        finally:
            await delivery.close()
            for server in listening:
                server.close()

    return asyncio.run(run())


@pytest.fixture
def faulty(internet: Internet):
    """faulty.test: MX 10 mx1 (127.0.0.5), MX 20 mx2 (127.0.0.4)."""
    internet.set_zone("faulty.test", "@ MX 10 mx1\n@ MX 20 mx2\nmx1 A 127.0.0.5\nmx2 A 127.0.0.4\n")
    return internet


def test_postfix_takes_bob_and_refuses_an_unknown_user_permanently(
        internet: Internet, tmp_path: Path) -> None:
    cfg = config(tmp_path, internet.dns_config())
    [attempts] = send(cfg, message("bob@remote.test", "nobody@remote.test"))
    bob, nobody = attempts
    assert bob.delivered and not bob.permanent, bob
    assert bob.remote_host == "mx.remote.test[127.0.0.2]"
    assert bob.tls is not None and bob.tls.startswith("TLSv1"), bob.tls
    assert (nobody.code, nobody.enhanced, nobody.permanent) == (550, "5.1.1", True)
    assert f"{nobody.code} {nobody.text}" == UNKNOWN_USER_REPLY.format(address="nobody@remote.test")
    [raw] = internet.postfix.wait_for_messages("bob")
    assert b"Subject: remote delivery" in raw and b"\n.leading dot" in raw


def test_null_mx_and_nxdomain_are_permanent_and_dead_dns_temporary(
        internet: Internet, tmp_path: Path) -> None:
    internet.set_zone("nomail.test", "@ MX 0 .\n")
    cfg = config(tmp_path, internet.dns_config())
    [[null], [missing]] = send(cfg, message("x@nomail.test"), message("x@no-such-host.remote.test"))
    assert (null.code, null.enhanced, null.permanent) == (556, "5.1.10", True), null
    assert missing.permanent and missing.enhanced == "5.1.2", missing
    dead = config(tmp_path, f'[dns]\nnameservers = ["127.0.0.1"]\nport = {free_dns_port()}\n'
                            'timeout = "1s"\n')
    [[attempt]] = send(dead, message("bob@remote.test"))
    assert not attempt.permanent and not attempt.delivered and attempt.enhanced == "4.4.3", attempt


def test_a_421_greeting_passes_to_the_next_mx(faulty: Internet, tmp_path: Path) -> None:
    busy = ScriptedMX("127.0.0.5", greeting="421 4.3.2 mx1 busy, try later")
    good = ScriptedMX("127.0.0.4")
    [[attempt]] = serve(config(tmp_path, faulty.dns_config()), [busy, good],
                        message("bob@faulty.test"))
    assert attempt.delivered and attempt.remote_host == "mx2.faulty.test[127.0.0.4]", attempt
    assert busy.connections == 1 and len(good.messages) == 1


def test_partial_acceptance_and_5xx_at_data(faulty: Internet, tmp_path: Path) -> None:
    faulty.set_zone("faulty.test", "@ MX 10 mx2\nmx2 A 127.0.0.4\n")
    server = ScriptedMX("127.0.0.4", rcpt={
        "later@faulty.test": "450 4.2.0 <later@faulty.test>: greylisted, come back later",
        "gone@faulty.test": "550 5.1.1 <gone@faulty.test>: no such user"})
    cfg = config(tmp_path, faulty.dns_config())
    [[ok, later, gone]] = serve(cfg, [server],
                                message("ok@faulty.test", "later@faulty.test", "gone@faulty.test"))
    assert ok.delivered and (later.code, later.permanent) == (450, False)
    assert later.text == "4.2.0 <later@faulty.test>: greylisted, come back later"
    assert (gone.code, gone.enhanced, gone.permanent) == (550, "5.1.1", True)
    refusing = ScriptedMX("127.0.0.4", data_reply="554 5.6.0 Message content rejected")
    [[a, b]] = serve(cfg, [refusing], message("a@faulty.test", "b@faulty.test"))
    assert all((x.code, x.permanent, x.enhanced) == (554, True, "5.6.0") for x in (a, b))


def test_smtputf8_dsn_parameters_and_one_connection_for_two_messages(
        faulty: Internet, tmp_path: Path) -> None:
    faulty.set_zone("faulty.test", "@ MX 10 mx2\nmx2 A 127.0.0.4\n")
    server = ScriptedMX("127.0.0.4")
    cfg = config(tmp_path, faulty.dns_config())
    first = message("a@faulty.test", envid="env 1", ret="HDRS",
                    notify=frozenset({"SUCCESS", "FAILURE"}))
    second = message("b@faulty.test", queue_id="FEDCBA9876")
    utf8 = message("c@faulty.test", smtputf8=True)
    [[a], [b], [c]] = serve(cfg, [server], first, second, utf8)
    assert a.delivered and a.dsn_passed and b.delivered
    assert server.connections == 1, server.commands
    assert "MAIL FROM:<alice@example.test> SIZE=%d RET=HDRS ENVID=env+201" % len(CONTENT) in server.commands
    assert "RCPT TO:<a@faulty.test> NOTIFY=FAILURE,SUCCESS ORCPT=rfc822;a@faulty.test" in server.commands
    assert (c.code, c.enhanced, c.permanent) == (553, "5.6.7", True)
    assert server.commands.count("RSET") >= 1


def test_a_broken_handshake_without_a_policy_delivers_in_plaintext(
        faulty: Internet, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    faulty.set_zone("faulty.test", "@ MX 10 mx2\nmx2 A 127.0.0.4\n")
    server = ScriptedMX("127.0.0.4", broken_tls=True)
    caplog.set_level(logging.INFO, logger="pymail.delivery")
    [[attempt]] = serve(config(tmp_path, faulty.dns_config()), [server], message("a@faulty.test"))
    assert attempt.delivered and attempt.tls == "none", attempt
    assert server.connections == 2 and len(server.messages) == 1
    assert "retrying without TLS" in caplog.text
    assert "to=<a@faulty.test>, relay=mx2.faulty.test[127.0.0.4], tls=none" in caplog.text
