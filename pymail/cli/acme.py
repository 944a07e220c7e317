"""`pymail acme status` and `pymail acme renew [--force]`: the certificate pymail's ACME
client keeps (``[acme]``, pymail.ops.acme) -- what is in ``<data_dir>/acme/live`` and
whether it is due, and an issuance now.

`renew` works beside a running server: the challenges go through the same files every
listener answers from, the issuance lock keeps it from racing the server's own renewal,
and running servers load the new files as they do any certificate change.  Errors are
one line on stderr (main's `UserError`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable

from pymail.config.schema import Config

__all__ = ["add_acme_command", "cmd_acme"]


def cmd_acme(config: Config, args: argparse.Namespace) -> int:
    from pymail.cli.main import UserError
    from pymail.ops.acme import AcmeError, AcmeManager, certificate_state, challenge_store, renewal_reason

    if not config.acme.enabled:
        raise UserError("[acme] directory_url is not set: pymail's ACME client is off")
    acme_dir = config.acme_dir
    if args.action == "status":
        state = certificate_state(acme_dir)
        print(f"CA:          {config.acme.directory_url}")
        print(f"names:       {', '.join(config.acme_names)} ({config.acme.challenge})")
        try:
            account = json.loads((acme_dir / "account.json").read_text("utf-8")).get("uri")
        except (OSError, ValueError):
            account = None
        print(f"account:     {account or 'none yet'}")
        if state is None:
            print(f"certificate: none yet in {acme_dir / 'live'}")
        else:
            print(f"certificate: {acme_dir / 'live' / 'cert.pem'} for {', '.join(state.names)}, "
                  f"serial {state.serial:x}, expires {state.not_after:%Y-%m-%d %H:%M}Z")
        reason = renewal_reason(config)
        print(f"renewal:     {'due: ' + reason if reason else 'not due'}")
        return 0
    reason = renewal_reason(config)
    if reason is None and not args.force:
        print("not due: the certificate is current (--force renews anyway)")
        return 0
    manager = AcmeManager(config, challenge_store(config), lambda: None)
    try:
        state = asyncio.run(manager.issue())
    except AcmeError as e:
        raise UserError(f"acme: {e}") from None
    print(f"issued {acme_dir / 'live' / 'cert.pem'} for {', '.join(state.names)}, "
          f"expires {state.not_after:%Y-%m-%d %H:%M}Z")
    return 0


def add_acme_command(command: Callable[..., argparse.ArgumentParser], parser_class: type) -> None:
    """Add `acme status|renew` through main's `command` helper."""
    p = command("acme", "the certificate from the ACME CA ([acme])", cmd_acme)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class, required=True)
    sub.add_parser("status", help="the CA, names, account, certificate and whether renewal is due")
    renew = sub.add_parser("renew", help="get a new certificate now if renewal is due")
    renew.add_argument("--force", action="store_true", help="even if it is not due")
