"""The `pymail` command (docs/INTERFACE.md, "The `pymail` command").

Exit codes: 0 success; 1 a user error (bad config, unknown user, storage unreachable),
reported as one line on stderr without a traceback; 2 bad usage (unknown command or
option), also one line.  Passwords are read from a terminal without echo or, with
`--password-stdin`, from the first line of standard input; they are never logged,
printed or put in an error message.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import getpass
import os
import shutil
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

from pymail.cli.acme import add_acme_command
from pymail.cli.dkim import add_dkim_command
from pymail.cli.dns import add_dns_command
from pymail.cli.doctor import add_doctor_command
from pymail.cli.firewall import add_firewall_command
from pymail.config import ConfigError, config_as_toml, load_config
from pymail.config.schema import Config, parse_size
from pymail.mail.address import AddressError, parse_mailbox
from pymail.store import AlreadyExists, NotFound, StorageError, Store

PROG = "pymail"


class UserError(Exception):
    """A problem the user can fix; printed as one line, exit 1."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: usage error: {message} (see {PROG} --help)\n")


# --------------------------------------------------------------------------- helpers


def _domain_name(text: str) -> str:
    """A domain name as the directory stores it (lower case, A-labels)."""
    try:
        mailbox = parse_mailbox(f"postmaster@{text}")
    except AddressError as e:
        raise UserError(f"invalid domain name {text!r}: {e}") from None
    if mailbox.is_literal:
        raise UserError(f"invalid domain name {text!r}: an address literal is not a domain")
    return mailbox.domain


def _address(text: str, what: str = "address") -> str:
    try:
        mailbox = parse_mailbox(text)
    except AddressError as e:
        raise UserError(f"invalid {what} {text!r}: {e}") from None
    if mailbox.is_literal:
        raise UserError(f"invalid {what} {text!r}: the domain must be a name")
    return mailbox.address


def _alias_source(text: str) -> str:
    """`user@domain`, or `@domain` for a catch-all."""
    if text.startswith("@"):
        return "@" + _domain_name(text[1:])
    return _address(text, "alias source")


def _alias_destination(text: str) -> str:
    if text.startswith("@"):  # domain alias: keep the local part
        return "@" + _domain_name(text[1:])
    return _address(text, "alias destination")


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise UserError("the passwords do not match")
    else:
        raise UserError("no terminal to ask for the password: use --password-stdin")
    if not password:
        raise UserError("the password is empty")
    return password


def _hash(config: Config, password: str) -> str:
    """A new hash of `password` at ``[auth]``'s Argon2id cost."""
    from pymail.auth.passwords import hash_password

    return hash_password(password, config.auth.argon2_cost)


async def _with_store(
    config: Config, action: Callable[[Store], Awaitable[int]], *, blobs: bool = False
) -> int:
    """Run `action` on the migrated store; `blobs=True` if it needs the blob backend."""
    from pymail.app import StartupError, prepare_storage

    try:
        store = await prepare_storage(config, check_blobs=blobs)
    except StartupError as e:
        raise UserError(str(e)) from None
    try:
        return await action(store)
    finally:
        await store.close()


def _yes_no(flag: bool) -> str:
    return "active" if flag else "disabled"


# --------------------------------------------------------------------------- commands


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    if config.server.workers > 1:
        # Workers add up their metrics through files (prometheus_client's multiprocess
        # mode), which it chooses when first imported: set the directory before that.
        metrics_dir = config.server.data_dir / "metrics"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True, exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    from pymail.process import serve

    return serve(config)


def cmd_check_config(config: Config, args: argparse.Namespace) -> int:
    sys.stdout.write(config_as_toml(config))
    return 0


def cmd_db_migrate(config: Config, args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        print(f"schema is up to date ({config.index_url})")
        return 0

    return asyncio.run(_with_store(config, action))


def cmd_domain(config: Config, args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        directory = store.directory
        if args.action == "add":
            name = _domain_name(args.name)
            if args.auth == "ldap" and not args.ldap_base_dn:
                raise UserError("--auth ldap needs --ldap-base-dn")
            domain = await directory.add_domain(
                name, transport=args.transport, auth_type=args.auth, ldap_base_dn=args.ldap_base_dn
            )
            print(f"domain {domain.name} added")
        elif args.action == "list":
            for d in await directory.list_domains():
                extra = f" ldap_base_dn={d.ldap_base_dn}" if d.ldap_base_dn else ""
                print(f"{d.name}\t{_yes_no(d.is_active)}\tauth={d.auth_type}\ttransport={d.transport}{extra}")
        elif args.action == "remove":
            await directory.remove_domain(_domain_name(args.name))
            print(f"domain {args.name.lower()} removed")
        elif args.action in ("disable", "enable"):
            await directory.set_domain_active(_domain_name(args.name), args.action == "enable")
            print(f"domain {args.name.lower()} {args.action}d")
        return 0

    return asyncio.run(_with_store(config, action))


def cmd_user(config: Config, args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        directory = store.directory
        if args.action == "add":
            address = _address(args.address)
            quota = _quota(args.quota)
            domain = await directory.get_domain(address.rpartition("@")[2])
            if domain is None:
                raise UserError(f"domain {address.rpartition('@')[2]} does not exist: add it first with '{PROG} domain add'")
            if domain.auth_type == "ldap":
                # The password lives in LDAP (pymail.auth.service): the row only owns the
                # mailboxes, with a value no password matches.
                from pymail.auth.service import LDAP_PASSWORD

                if args.password_stdin:
                    raise UserError(f"domain {domain.name} authenticates through LDAP: pymail stores "
                                    "no password for its users (leave out --password-stdin)")
                password_hash = LDAP_PASSWORD
            else:
                password_hash = _hash(config, _read_password(args))
            user = await directory.add_user(address, password_hash, quota=quota)
            await store.index.ensure_default_mailboxes(user.id)
            print(f"user {user.address} added")
        elif args.action == "passwd":
            address = _address(args.address)
            if await directory.get_user(address) is None:
                raise NotFound(f"user {address} does not exist")
            domain = await directory.get_domain(address.rpartition("@")[2])
            if domain is not None and domain.auth_type == "ldap":
                raise UserError(f"domain {domain.name} authenticates through LDAP: change the "
                                "password in the LDAP directory")
            await directory.set_password(address, _hash(config, _read_password(args)))
            print(f"password of {address} changed")
        elif args.action == "list":
            domain = _domain_name(args.domain) if args.domain else None
            for u in await directory.list_users(domain):
                quota = f"{u.quota}" if u.quota else "unlimited"
                print(f"{u.address}\t{_yes_no(u.is_active)}\tquota={quota}")
        elif args.action == "remove":
            await directory.remove_user(_address(args.address))
            print(f"user {args.address.lower()} removed")
        elif args.action in ("disable", "enable"):
            await directory.set_user_active(_address(args.address), args.action == "enable")
            print(f"user {args.address.lower()} {args.action}d")
        return 0

    return asyncio.run(_with_store(config, action))


def _quota(text: str | None) -> int:
    if text is None:
        return 0
    try:
        return parse_size(int(text) if text.isdigit() else text)
    except ValueError as e:
        raise UserError(f"--quota: {e}") from None


def cmd_alias(config: Config, args: argparse.Namespace) -> int:
    async def action(store: Store) -> int:
        directory = store.directory
        if args.action == "add":
            source = _alias_source(args.source)
            destinations = [_alias_destination(d) for d in args.destinations]
            await directory.add_alias(source, destinations)
            print(f"alias {source} -> {', '.join(destinations)}")
        elif args.action == "list":
            for a in await directory.list_aliases(_domain_name(args.domain) if args.domain else None):
                print(f"{a.source}\t{a.destination}\t{_yes_no(a.is_active)}")
        elif args.action == "remove":
            source = _alias_source(args.source)
            destination = _alias_destination(args.destination) if args.destination else None
            count = await directory.remove_alias(source, destination)
            print(f"removed {count} alias row(s) for {source}")
        return 0

    return asyncio.run(_with_store(config, action))


def cmd_ban(config: Config, args: argparse.Namespace) -> int:
    """`pymail ban list | remove IP`: the bans every worker and node shares (the index)."""
    from pymail.auth.ban import Jail
    from pymail.auth.service import ban_policy_from_config

    async def action(store: Store) -> int:
        if store.bans is None:
            raise UserError(f"the index {config.index_url} keeps no bans")
        jail = Jail(store.bans, ban_policy_from_config(config.auth))
        if args.action == "list":
            for ban in await jail.list_bans():
                until = ban.until.strftime("%Y-%m-%dT%H:%M:%SZ")
                print(f"{ban.ip}\tuntil={until}\tfailures={ban.failures}\treason={ban.reason}")
        elif args.action == "remove":
            try:
                removed = await jail.unban(args.ip)
            except ValueError as e:
                raise UserError(str(e)) from None
            if not removed:
                raise NotFound(f"{args.ip} is not banned")
            print(f"ban of {args.ip} removed (other processes notice within a few seconds)")
        return 0

    return asyncio.run(_with_store(config, action))


def cmd_store(config: Config, args: argparse.Namespace) -> int:
    from pymail.store.gc import sweep_orphans

    grace = config.storage.orphan_grace if args.grace is None else args.grace
    if grace < 60:
        raise UserError("--grace must be at least 60 seconds (deliveries in progress need it)")

    async def action(store: Store) -> int:
        r = await sweep_orphans(store.blobs, store.index, grace_seconds=grace)
        print(
            f"{r.blobs} blobs: {r.deleted} orphans deleted ({r.deleted_bytes} bytes), "
            f"{r.referenced} in use, {r.young} younger than {grace:g}s kept, "
            f"{r.temp_files} leftover temp files removed"
        )
        return 0

    return asyncio.run(_with_store(config, action, blobs=True))


# --------------------------------------------------------------------------- queue
# `pymail queue ...` (the outbound queue, pymail.store.queue).  Its own block: the DKIM
# commands live in theirs.


def _age(delta: "datetime.timedelta") -> str:
    """A duration as a mail admin reads it: 45s, 12m, 3h05m, 2d04h."""
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def _first_line(text: str | None) -> str:
    return " ".join((text or "").splitlines()[:1])[:120]


def _reply(state) -> str:  # noqa: ANN001 - a RecipientState
    if state.reply_code is None and not state.reply_text:
        return ""
    code = f"{state.reply_code} " if state.reply_code is not None else ""
    text = state.reply_text or ""
    if state.enhanced_code and not text.startswith(state.enhanced_code):
        code += f"{state.enhanced_code} "
    return code + text


def _queue_line(entry, now) -> str:  # noqa: ANN001 - a QueueEntry, a datetime
    m = entry.message
    parts = []
    for r in entry.recipients:
        detail = [r.status.value]
        if r.attempts:
            detail.append(f"{r.attempts} attempt{'s' if r.attempts != 1 else ''}")
        if not r.status.final:
            if r.lease_owner and r.lease_until and r.lease_until > now:
                detail.append("being delivered")
            elif r.next_attempt > now:
                detail.append(f"next in {_age(r.next_attempt - now)}")
            else:
                detail.append("due now")
        reply = _first_line(_reply(r))
        parts.append(f"<{r.recipient.address}> ({', '.join(detail)}{': ' + reply if reply else ''})")
    return (f"{m.queue_id}\t{_age(now - m.created_at)}\t<{m.sender}>\t{m.size}\t"
            + ", ".join(parts))


def cmd_queue(config: Config, args: argparse.Namespace) -> int:
    """`pymail queue list | show ID | retry [ID] | delete ID | flush`."""
    from pymail.delivery.pipeline import now_utc

    async def action(store: Store) -> int:
        queue = store.queue
        if queue is None:
            raise UserError(f"the index {config.index_url} keeps no outbound queue")
        now = now_utc()
        if args.action == "list":
            entries = await queue.list_entries(include_final=True, limit=args.limit)
            if not entries:
                print("the queue is empty")
                return 0
            print("QUEUE ID\tAGE\tSENDER\tSIZE\tRECIPIENTS (status: last reply)")
            for entry in entries:
                print(_queue_line(entry, now))
            stats = await queue.stats()
            oldest = f", oldest {_age(now - stats.oldest)}" if stats.oldest else ""
            print(f"-- {stats.messages} message(s), {stats.recipients_queued} recipient(s) "
                  f"waiting{oldest}")
        elif args.action == "show":
            entry = await queue.get(args.id)
            if entry is None:
                raise NotFound(f"no queued message {args.id}")
            m = entry.message
            print(f"queue id:   {m.queue_id}")
            print(f"sender:     <{m.sender}>")
            print(f"origin:     {m.origin}" + (f" (user {m.auth_user})" if m.auth_user else ""))
            print(f"queued:     {m.created_at:%Y-%m-%dT%H:%M:%SZ} ({_age(now - m.created_at)} ago)")
            print(f"expires:    {m.expires_at:%Y-%m-%dT%H:%M:%SZ}")
            print(f"size:       {m.size} (blob {m.blob_key})")
            print(f"envelope:   BODY={m.body} SMTPUTF8={'yes' if m.smtputf8 else 'no'} "
                  f"REQUIRETLS={'yes' if m.requiretls else 'no'} RET={m.ret or '-'} "
                  f"ENVID={m.envid or '-'}")
            for r in entry.recipients:
                q = r.recipient
                print(f"recipient:  <{q.address}>")
                print(f"  status:       {r.status.value}, {r.attempts} attempt(s)")
                print(f"  route:        {q.route} (domain {q.domain})")
                print(f"  dsn:          NOTIFY={','.join(sorted(q.notify)) or 'default'} "
                      f"ORCPT={q.orcpt or '-'}")
                if not r.status.final:
                    print(f"  next attempt: {r.next_attempt:%Y-%m-%dT%H:%M:%SZ}")
                if r.last_attempt:
                    print(f"  last attempt: {r.last_attempt:%Y-%m-%dT%H:%M:%SZ}")
                if r.lease_owner:
                    print(f"  leased to:    {r.lease_owner} until {r.lease_until:%Y-%m-%dT%H:%M:%SZ}")
                if r.remote_host:
                    print(f"  remote host:  {r.remote_host}")
                reply = _reply(r)
                if reply:
                    lines = reply.splitlines() or [""]
                    print(f"  last reply:   {lines[0]}")
                    for line in lines[1:]:
                        print(f"                {line}")
        elif args.action in ("retry", "flush"):
            queue_id = getattr(args, "id", None)
            if queue_id is not None and await queue.get(queue_id) is None:
                raise NotFound(f"no queued message {queue_id}")
            count = await queue.retry(queue_id, now)
            print(f"{count} recipient(s) due now (delivered at the queue's next run)")
        elif args.action == "delete":
            if not await queue.delete(args.id):
                raise NotFound(f"no queued message {args.id}")
            print(f"message {args.id} deleted from the queue (no bounce is sent)")
        return 0

    return asyncio.run(_with_store(config, action))


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="pymail: one asyncio mail server.")
    parser.add_argument(
        "--config", metavar="FILE", help="the TOML config (default: $PYMAIL_CONFIG, else the embedded default)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def command(name: str, help_text: str, handler: Callable[..., int]) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="the TOML config")
        p.set_defaults(handler=handler)
        return p

    command("serve", "run the daemon in the foreground", cmd_serve)
    command("check-config", "validate the config and print the effective settings", cmd_check_config)

    db = command("db", "index schema", cmd_db_migrate)
    db_sub = db.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    db_sub.add_parser("migrate", help="create or upgrade the index schema (idempotent)")

    domain = command("domain", "manage domains", cmd_domain)
    d_sub = domain.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    d_add = d_sub.add_parser("add", help="add a domain")
    d_add.add_argument("name")
    d_add.add_argument("--transport", default="virtual:", help="domains.transport (default virtual:)")
    d_add.add_argument("--auth", choices=("local", "ldap"), default="local", help="domains.auth_type")
    d_add.add_argument("--ldap-base-dn", metavar="DN", help="domains.ldap_base_dn (with --auth ldap)")
    d_sub.add_parser("list", help="list domains")
    for verb in ("remove", "disable", "enable"):
        d_sub.add_parser(verb, help=f"{verb} a domain").add_argument("name")

    user = command("user", "manage users (mailbox owners)", cmd_user)
    u_sub = user.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    u_add = u_sub.add_parser("add", help="add a user; the password is asked for, or read with --password-stdin "
                            "(none for a domain that authenticates through LDAP)")
    u_add.add_argument("address")
    u_add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    u_add.add_argument("--quota", metavar="SIZE", help="mailbox quota, e.g. 2GB (default unlimited)")
    u_pw = u_sub.add_parser("passwd", help="change a user's password")
    u_pw.add_argument("address")
    u_pw.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    u_sub.add_parser("list", help="list users").add_argument("domain", nargs="?")
    for verb in ("remove", "disable", "enable"):
        u_sub.add_parser(verb, help=f"{verb} a user").add_argument("address")

    alias = command("alias", "manage aliases (virtual_aliases)", cmd_alias)
    a_sub = alias.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    a_add = a_sub.add_parser("add", help="mail for SOURCE (user@domain or @domain) goes to each DEST")
    a_add.add_argument("source")
    a_add.add_argument("destinations", nargs="+", metavar="DEST")
    a_sub.add_parser("list", help="list aliases").add_argument("domain", nargs="?")
    a_rm = a_sub.add_parser("remove", help="remove an alias (all its destinations, or one)")
    a_rm.add_argument("source")
    a_rm.add_argument("destination", nargs="?")
    ban = command("ban", "client addresses banned after failed logins ([auth.ban])", cmd_ban)
    b_sub = ban.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    b_sub.add_parser("list", help="list active bans")
    b_sub.add_parser("remove", help="lift the ban of an address (and forget its failures)").add_argument("ip")
    queue = command("queue", "the outbound queue: mail waiting for other servers", cmd_queue)
    q_sub = queue.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    q_list = q_sub.add_parser("list", help="one line per queued message: id, age, sender, size, "
                              "recipients with their status and last reply")
    q_list.add_argument("--limit", type=int, default=1000, help="at most this many (oldest first)")
    q_sub.add_parser("show", help="one message: every recipient's state and the remote "
                     "server's full reply").add_argument("id", metavar="ID")
    q_sub.add_parser("retry", help="make the waiting recipients of one message (or of all) due "
                     "now").add_argument("id", metavar="ID", nargs="?")
    q_sub.add_parser("delete", help="remove a message from the queue without a bounce"
                     ).add_argument("id", metavar="ID")
    q_sub.add_parser("flush", help="make every waiting recipient due now (Postfix's postqueue -f)")
    add_dkim_command(command, _Parser)
    add_dns_command(command, _Parser)
    add_acme_command(command, _Parser)
    add_firewall_command(command, _Parser)
    add_doctor_command(command, _Parser)
    store = command("store", "message storage maintenance", cmd_store)
    s_sub = store.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser, required=True)
    s_gc = s_sub.add_parser("gc", help="delete blobs no message refers to (orphans)")
    s_gc.add_argument("--grace", type=float, metavar="SECONDS",
                      help="keep orphans younger than this (default storage.orphan_grace)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        return args.handler(config, args)
    except ConfigError as e:
        print(f"{PROG}: config error: {e}", file=sys.stderr)
    except UserError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
    except NotFound as e:
        print(f"{PROG}: error: not found: {e}", file=sys.stderr)
    except AlreadyExists as e:
        print(f"{PROG}: error: already exists: {e}", file=sys.stderr)
    except StorageError as e:
        print(f"{PROG}: error: storage: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
    except BrokenPipeError:  # `pymail dns check ... | head`: the reader left, not an error of ours
        # Python's advice (signal module docs, "Note on SIGPIPE"): point stdout at
        # /dev/null so that the flush at exit does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 1


if __name__ == "__main__":
    sys.exit(main())
