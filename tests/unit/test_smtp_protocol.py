"""What aiosmtpd makes of pymail's protocol and handler classes, checked on the real
objects: the SASL mechanisms it will advertise (it takes any attribute named ``auth_*``
of either for one), and the hooks it will call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pymail.delivery.spool import Spool
from pymail.net.mx import MxHandler
from pymail.net.smtp import PymailSMTP
from pymail.net.submission import SubmissionHandler, SubmissionSMTP


def _handler(cls: type[MxHandler]) -> MxHandler:
    return cls(pipeline=None, hostname="mx.example", max_recipients=10,  # type: ignore[arg-type]
               postmaster="postmaster@example.com")


def _protocol(cls: type[PymailSMTP], handler: MxHandler, tmp_path: Path, **extra: Any) -> PymailSMTP:
    async def make() -> PymailSMTP:
        return cls(handler, connections=set(), spool=Spool(tmp_path, 1 << 20),
                   loop=asyncio.get_running_loop(), **extra)

    return asyncio.run(make())


def test_submission_offers_exactly_plain_and_login(tmp_path: Path) -> None:
    """Issue 10 item 7: ``auth_failures`` made aiosmtpd advertise "AUTH LOGIN PLAIN failures"."""
    smtp = _protocol(SubmissionSMTP, _handler(SubmissionHandler), tmp_path,
                     authenticator=object(), service="submission")
    assert sorted(smtp._auth_methods) == ["LOGIN", "PLAIN"]
    assert all(m.is_builtin for m in smtp._auth_methods.values())  # pymail's, on the protocol
    assert "AUTH" in smtp._handle_hooks  # the documented hook that marks the session


def test_the_mx_offers_no_sasl(tmp_path: Path) -> None:
    smtp = _protocol(PymailSMTP, _handler(MxHandler), tmp_path)
    assert smtp._auth_methods == {}
    assert "AUTH" not in smtp._handle_hooks


def test_no_stray_auth_attributes() -> None:
    for cls in (PymailSMTP, SubmissionSMTP, MxHandler, SubmissionHandler):
        names = {n for n in dir(cls) if n.startswith("auth_")}
        assert names <= {"auth_LOGIN", "auth_PLAIN"}, (cls, names)
