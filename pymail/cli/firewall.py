"""`pymail firewall [--ufw|--nftables]`: the firewall rules for the configured listeners
(pymail.ops.firewall), printed for the admin to review and apply; nothing is changed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from pymail.config.schema import Config
from pymail.ops.firewall import openings, render_nftables, render_ufw

__all__ = ["add_firewall_command", "cmd_firewall"]


def cmd_firewall(config: Config, args: argparse.Namespace) -> int:
    found, warnings = openings(config)
    render = render_nftables if args.format == "nftables" else render_ufw
    sys.stdout.write(render(found, warnings))
    for warning in warnings:
        print(f"pymail: warning: {warning}", file=sys.stderr)
    return 0


def add_firewall_command(command: Callable[..., argparse.ArgumentParser], parser_class: type) -> None:
    """Add `firewall` through main's `command` helper."""
    p = command("firewall", "print firewall rules opening exactly the ports pymail serves", cmd_firewall)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--ufw", dest="format", action="store_const", const="ufw",
                       help="ufw commands (the default)")
    group.add_argument("--nftables", dest="format", action="store_const", const="nftables",
                       help="an nftables 'table inet pymail' for nft -f")
    p.set_defaults(format="ufw")
