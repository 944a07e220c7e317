"""`pymail doctor [DOMAIN ...] [--login ADDRESS] [--cafile FILE] [--source ADDRESS]
[--from ADDRESS] [--json]`: the seed's checkpoints as one checklist with a score out of
10 (pymail.ops.doctor).  Exit 0 when every required check passed, 1 when one failed.

The test account's password is never an argument (``ps`` would show it): it comes from
``$PYMAIL_DOCTOR_PASSWORD``, else ``--password-file``, else a prompt on a terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pymail.config.schema import Config

__all__ = ["add_doctor_command", "cmd_doctor"]


def _password(args: argparse.Namespace) -> str:
    from pymail.cli.main import UserError

    if os.environ.get("PYMAIL_DOCTOR_PASSWORD"):
        return os.environ["PYMAIL_DOCTOR_PASSWORD"]
    if args.password_file:
        try:
            return Path(args.password_file).read_text(encoding="utf-8").splitlines()[0]
        except (OSError, UnicodeError, IndexError) as e:
            raise UserError(f"cannot read the password from {args.password_file}: "
                            f"{getattr(e, 'strerror', None) or e or 'empty file'}") from None
    if sys.stdin.isatty():
        return getpass.getpass(f"password of {args.login}: ")
    raise UserError("--login needs a password: set PYMAIL_DOCTOR_PASSWORD or give --password-file")


def cmd_doctor(config: Config, args: argparse.Namespace) -> int:
    from pymail.cli.main import UserError, _domain_name
    from pymail.ops.doctor import Account, Options, run_doctor

    if args.cafile and not Path(args.cafile).is_file():
        raise UserError(f"--cafile {args.cafile}: no such file")
    for value in (args.login, args.sender):
        if value is not None and "@" not in value:
            raise UserError(f"{value!r} is not a mail address")
    account = Account(args.login, _password(args)) if args.login else None
    options = Options(domains=[_domain_name(d) for d in args.domains],
                      cafile=Path(args.cafile) if args.cafile else None, account=account,
                      source=args.source, sender=args.sender, timeout=args.timeout)
    report = asyncio.run(run_doctor(config, options))
    sys.stdout.write(report.json() if args.json else report.text())
    return 1 if report.failed else 0


def add_doctor_command(command: Callable[..., argparse.ArgumentParser], parser_class: type) -> None:
    """Add `doctor` through main's `command` helper."""
    p = command("doctor", "check DNS, TLS, listeners, relaying, DKIM and deliverability; "
                "a checklist and a score out of 10", cmd_doctor)
    p.add_argument("domains", metavar="DOMAIN", nargs="*",
                   help="the domains to check (default: every local domain in the directory)")
    p.add_argument("--login", metavar="ADDRESS",
                   help="a test account: IMAP, POP3 and submission log in with it (the password "
                   "from $PYMAIL_DOCTOR_PASSWORD, --password-file or a prompt)")
    p.add_argument("--password-file", metavar="FILE", help="the test account's password (first line)")
    p.add_argument("--cafile", metavar="FILE",
                   help="trust these CA certificates for the TLS checks (default: the system's)")
    p.add_argument("--source", metavar="ADDRESS",
                   help="connect the open-relay probe from this local address")
    p.add_argument("--from", dest="sender", metavar="ADDRESS",
                   help="the From of the deliverability test message (default: --login, else "
                   "postmaster@ the first domain)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                   help="per network step (default 10)")
    p.add_argument("--json", action="store_true", help="the checklist as JSON, for monitoring")
