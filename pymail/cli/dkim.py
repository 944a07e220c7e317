"""`pymail dkim keygen DOMAIN [--selector S] [--bits N] [--algorithm rsa|ed25519]
[--force]` and `pymail dkim list`: the DKIM keys under ``[dkim] key_dir`` and the DNS
records that publish them (pymail.delivery.dkimkeys holds the layout and the rules).

Output is for a mail admin: keygen prints the file it wrote and the exact zone-file
line to publish; list prints one block per key (domain, selector, algorithm, bits,
whether it signs, the record).  Bad input is one line on stderr (main's `UserError`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from pymail.config.schema import Config

__all__ = ["add_dkim_command", "cmd_dkim"]


def cmd_dkim(config: Config, args: argparse.Namespace) -> int:
    from pymail.cli.main import UserError, _domain_name
    from pymail.delivery.dkimkeys import (
        RSA_BITS,
        KeyExists,
        dns_record,
        domain_keys,
        generate_key,
        list_keys,
        signing_keys,
    )

    key_dir = config.dkim_key_dir
    if args.action == "keygen":
        domain = _domain_name(args.domain)
        if not domain.isascii():
            raise UserError(f"invalid domain name {args.domain!r}: use its A-label (xn--) form")
        algorithm = args.algorithm
        selector = args.selector or (config.dkim.selector if algorithm == "rsa"
                                     else f"{config.dkim.selector}-ed25519")
        if algorithm == "ed25519" and args.bits is not None:
            raise UserError("--bits is for RSA keys (Ed25519 keys have one size)")
        bits = args.bits or 2048
        if algorithm == "rsa" and bits not in RSA_BITS:
            raise UserError(f"--bits must be one of {', '.join(map(str, RSA_BITS))}")
        try:
            key = generate_key(key_dir, domain, selector, algorithm=algorithm, bits=bits,
                               force=args.force)
        except KeyExists as e:
            raise UserError(str(e)) from None
        except ValueError as e:
            raise UserError(str(e)) from None
        except OSError as e:
            raise UserError(f"cannot write the key under {key_dir}: {e.strerror or e}") from None
        signs = key in signing_keys(domain_keys(key_dir, domain), config.dkim.selector)
        print(f"wrote {key.path} ({algorithm}, {key.bits} bits)")
        print(f"it signs mail from {domain}" if signs else
              f"it does not sign mail from {domain} yet: selector {config.dkim.selector!r} "
              "does ([dkim] selector)")
        print("publish this DNS record:")
        print(dns_record(key))
        return 0
    keys = list_keys(key_dir)
    if not keys:
        print(f"no DKIM keys in {key_dir} (make one: pymail dkim keygen DOMAIN)")
        return 0
    for domain in sorted({k.domain for k in keys}):
        mine = [k for k in keys if k.domain == domain]
        signing = signing_keys(mine, config.dkim.selector)
        for k in mine:
            state = "signs" if k in signing else ("BROKEN: " + k.error if k.error else "idle")
            size = f"{k.bits} bits" if k.error is None else "-"
            print(f"{domain}\tselector={k.selector}\t{k.algorithm}\t{size}\t{state}")
            if k.error is None:
                print(f"  {dns_record(k)}")
    return 0


def add_dkim_command(command: Callable[..., argparse.ArgumentParser], parser_class: type) -> None:
    """Add `dkim keygen|list` through main's `command` helper."""
    p = command("dkim", "DKIM signing keys and the DNS records to publish", cmd_dkim)
    sub = p.add_subparsers(dest="action", metavar="ACTION", parser_class=parser_class,
                           required=True)
    gen = sub.add_parser("keygen", help="make a signing key for DOMAIN and print its DNS record")
    gen.add_argument("domain", metavar="DOMAIN")
    gen.add_argument("--selector", help="the selector (default [dkim] selector; for Ed25519 "
                     "SELECTOR-ed25519)")
    gen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa",
                     help="rsa (RSA-SHA256, the default) or ed25519 (a second signature, RFC 8463)")
    gen.add_argument("--bits", type=int, help="RSA key size (default 2048)")
    gen.add_argument("--force", action="store_true", help="replace an existing key file")
    sub.add_parser("list", help="every key: domain, selector, algorithm, bits, whether it "
                   "signs, its DNS record")
