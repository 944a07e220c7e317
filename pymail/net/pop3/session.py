"""One POP3 connection's state and its command handlers (RFC 1939, RFC 2449 CAPA and
response codes, RFC 2595 STLS, RFC 5034 AUTH PLAIN/LOGIN with initial response).

The connection loop (`server.py`) reads `Command`s with the sans-IO `CommandReader`
and calls `Pop3Session.run_command`; this module turns each command into store calls
and response bytes (encoded by `pymail.proto.pop3.responses`).

Invariants:

* Which commands run in which state is data (`pymail.proto.pop3.states`); a command
  in the wrong state is answered ``-ERR`` before any handler runs.  Handlers are looked
  up in `Pop3Session.HANDLERS`, a table of command name -> method.
* Every command gets exactly one response.  A refusal is ``-ERR`` with a response
  code where one applies (RFC 2449 section 8, RFC 3206): ``[AUTH]`` for credentials
  and for passwords before TLS, ``[IN-USE]`` for a locked maildrop, ``[SYS/TEMP]`` for
  a storage failure (never a silent success) and for a bug (logged): never a
  traceback to the client.  Once the ``+OK`` of a multi-line response is sent, a
  failure closes the connection instead: the client never sees the terminating ``.``,
  so it cannot take a truncated message for a whole one.
* The maildrop is the user's INBOX.  Its messages are listed once, at login, into a
  `Maildrop` whose numbers are fixed for the session; DELE only marks.  QUIT in the
  TRANSACTION state (RFC 1939 section 6, UPDATE) removes the marked messages from the
  index (flag ``\\Deleted`` then expunge exactly those UIDs, the changes IMAP sessions
  on the same INBOX report as EXPUNGE) and answers ``+OK`` only once that is
  committed; ``-ERR [SYS/TEMP]`` if not.  A connection that ends any other way
  (dropped, timed out, shut down) removes nothing.
* UIDL is ``<UIDVALIDITY>.<UID>``: the same in every session, and the same message
  IMAP names by that UID.
* Passwords are taken only over TLS (RFC 2595 section 4, RFC 8314): on the STLS port
  before STLS, USER, PASS and AUTH answer ``-ERR [AUTH]`` and CAPA offers STLS, not
  USER or SASL.  Every password check goes through `Authenticator` (logged with
  ``rip=``); the `MAX_AUTH_FAILURES`-th failure on one connection closes it.
* The maildrop lock (RFC 1939 section 8 says a server should lock the maildrop): an
  in-process lock per user, `MaildropLocks`, shared by the ``pop3`` and ``pop3s``
  services of one worker process.  A second POP3 login of the same user while the
  first session lives gets ``-ERR [IN-USE]``.  Sessions in other worker processes or
  on other nodes are not locked out; that is safe, because a session only ever removes
  the UIDs it listed and marked, removing an already removed UID is a no-op, and
  message numbers are per session.  IMAP sessions are never locked out.
* RETR and TOP stream the blob in `CHUNK` pieces through the `DotStuffer`, each piece
  sent and drained (within ``limits.send_timeout``) before the next is read: memory per
  connection is about one chunk plus the write buffer, whatever the message size and
  whether the client reads.  POP3 sets no flags (RETR does
  not set ``\\Seen``): the only change a POP3 session makes is the removal at QUIT.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from pymail.auth.service import Authenticator
from pymail.mail.mime import MessageStructure
from pymail.proto.pop3 import responses as r
from pymail.proto.pop3.errors import CommandError
from pymail.proto.pop3.maildrop import Maildrop, MaildropEntry
from pymail.proto.pop3.reader import Command, SaslResponse
from pymail.proto.pop3.responses import DotStuffer, LineLimit
from pymail.proto.pop3.states import Pop3State, command_allowed
from pymail.store import NotFound, StorageError, Store as MailStore, User

log = logging.getLogger("pymail.pop3")

MAX_AUTH_FAILURES = 3
CHUNK = 256 * 1024  # bytes read from the blob store per call during RETR/TOP
SASL_MECHANISMS = ("PLAIN", "LOGIN")
IMPLEMENTATION = "pymail"

# Reply texts (STYLE.md item 5): generic, no client input echoed.
TEXT_GREETING = "pymail POP3 server ready"
TEXT_WRONG_STATE = "Command not valid in this state"
TEXT_PLAINTEXT = "Plaintext authentication disallowed on non-secure connections; use STLS"
TEXT_AUTH_FAILED = "Authentication failed"
TEXT_TOO_MANY_FAILURES = "Too many authentication failures"
TEXT_NO_USERNAME = "No username given"
TEXT_IN_USE = "Maildrop is locked by another POP3 session"
TEXT_UNAVAILABLE = "Temporary failure, try again later"
TEXT_SERVERBUG = "Internal error, try again later"
TEXT_NOT_REMOVED = "Some deleted messages not removed, try again later"
TEXT_GONE = "Message no longer available"
TEXT_TLS_ACTIVE = "Command not permitted when TLS active"
TEXT_UNSUPPORTED_MECHANISM = "Unsupported authentication mechanism"


class Channel(Protocol):
    """What the session needs from its connection (implemented in `server.py`)."""

    tls: bool  #: the connection is encrypted (implicit TLS or after STLS)
    client_ip: str

    async def send(self, data: bytes) -> None: ...

    def peer_gone(self, error: BaseException) -> bool:
        """Whether `error` is the client's hang-up (`StreamConnection.peer_gone`)."""
        ...

    async def next_event(self) -> object:
        """The next reader event; may raise the reader's `CommandError`."""
        ...

    async def start_tls(self) -> None:
        """Start TLS, discarding anything the client sent after STLS."""
        ...

    def expect_sasl_response(self) -> None: ...


class Logout(Exception):
    """The connection ends after the current command's response."""


class MaildropLocks:
    """In-process maildrop locks: which users have a POP3 session in the TRANSACTION
    state in this process (see the module docstring for what it does and does not
    cover).  Shared by every POP3 service of one worker."""

    def __init__(self) -> None:
        self._held: set[int] = set()

    def acquire(self, user_id: int) -> bool:
        """Take the user's lock; False if another session holds it."""
        if user_id in self._held:
            return False
        self._held.add(user_id)
        return True

    def release(self, user_id: int) -> None:
        self._held.discard(user_id)

    def held(self, user_id: int) -> bool:
        return user_id in self._held


class Pop3Session:
    """One client's POP3 state.

    Fields: ``state`` (RFC 1939 section 3); ``username`` given by USER, waiting for
    PASS; ``user`` once logged in; ``inbox_id`` and ``maildrop`` in the TRANSACTION
    state; ``auth_failures`` on this connection; ``multiline_open`` while a multi-line
    response is being sent (a failure then closes the connection)."""

    HANDLERS: dict[str, Callable[["Pop3Session", Command], Awaitable[None]]] = {}

    def __init__(self, store: MailStore, authenticator: Authenticator, channel: Channel,
                 locks: MaildropLocks, *, starttls_available: bool) -> None:
        self.store = store
        self.authenticator = authenticator
        self.channel = channel
        self.locks = locks
        self.starttls_available = starttls_available
        self.state = Pop3State.AUTHORIZATION
        self.username: str | None = None
        self.user: User | None = None
        self.inbox_id: int | None = None
        self.maildrop: Maildrop | None = None
        self.auth_failures = 0
        self.multiline_open = False

    # -- greeting, capabilities, dispatch ---------------------------------------------------

    def greeting(self) -> bytes:
        # No APOP timestamp: APOP is not offered (RFC 1939 section 7).
        return r.ok(TEXT_GREETING)

    def capabilities(self) -> list[str]:
        """RFC 2449 section 6; USER and SASL only where a password may be sent."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "EXPIRE NEVER",
                f"IMPLEMENTATION {IMPLEMENTATION}"]
        if self.state is Pop3State.AUTHORIZATION:
            if self.channel.tls:
                caps += ["USER", "SASL " + " ".join(SASL_MECHANISMS)]
            elif self.starttls_available:
                caps.append("STLS")
        return caps

    async def send(self, data: bytes) -> None:
        await self.channel.send(data)

    async def run_command(self, command: Command) -> None:
        """Answer one command.  Raises `Logout` when the connection must close."""
        if not command_allowed(self.state, command.name):
            await self.send(r.err(TEXT_WRONG_STATE))
            return
        handler = self.HANDLERS[command.name]
        try:
            await handler(self, command)
        except (Logout, OSError, EOFError):
            raise  # the connection ends (OSError: the client's socket, TLS, or a timeout)
        except CommandError as refusal:
            await self._refuse(command, refusal.reply)
        except StorageError as exc:
            log.warning("pop3 %s failed: storage: %s", command.name, exc)
            await self._refuse(command, r.err(TEXT_UNAVAILABLE, r.CODE_SYS_TEMP))
        except Exception as exc:
            if self.channel.peer_gone(exc):  # an odd error from a transport already lost
                raise ConnectionResetError(f"connection lost ({type(exc).__name__})") from None
            log.exception("pop3 %s failed", command.name)
            await self._refuse(command, r.err(TEXT_SERVERBUG, r.CODE_SYS_TEMP))

    async def _refuse(self, command: Command, reply: bytes) -> None:
        if self.multiline_open:  # the +OK is out: only closing tells the client
            log.warning("pop3 %s failed during its multi-line response: closing", command.name)
            raise Logout()
        await self.send(reply)

    def close(self) -> None:
        """The connection ended: release the maildrop lock (nothing is removed)."""
        if self.user is not None and self.maildrop is not None:
            self.locks.release(self.user.id)
        self.maildrop = None

    # -- AUTHORIZATION state (RFC 1939 section 4, RFC 2449, RFC 2595, RFC 5034) -------------

    async def cmd_capa(self, command: Command) -> None:
        await self.send(r.multiline("Capability list follows", self.capabilities()))

    async def cmd_stls(self, command: Command) -> None:
        # RFC 2595 section 4.
        if self.channel.tls or not self.starttls_available:
            raise CommandError(TEXT_TLS_ACTIVE)
        await self.send(r.ok("Begin TLS negotiation now"))
        await self.channel.start_tls()  # discards anything pipelined behind STLS
        self.username = None  # forget what was said in plaintext

    def _require_tls(self) -> None:
        if not self.channel.tls:
            raise CommandError(TEXT_PLAINTEXT, r.CODE_AUTH)

    async def cmd_user(self, command: Command) -> None:
        # RFC 1939 section 7: always +OK, so USER does not tell which names exist.
        self._require_tls()
        self.username = str(command.arguments[0])
        await self.send(r.ok("Send your password"))

    async def cmd_pass(self, command: Command) -> None:
        self._require_tls()
        username, self.username = self.username, None  # a failed PASS needs a new USER
        if username is None:
            raise CommandError(TEXT_NO_USERNAME)
        await self._login(username, str(command.arguments[0]))

    async def cmd_auth(self, command: Command) -> None:
        # RFC 5034 section 4; PLAIN (RFC 4616); LOGIN (draft-murchison-sasl-login).
        self._require_tls()
        self.username = None
        if not command.arguments:  # the RFC 1734-era listing
            await self.send(r.multiline("Methods supported", SASL_MECHANISMS))
            return
        mechanism = str(command.arguments[0]).upper()
        initial = str(command.arguments[1]) if len(command.arguments) > 1 else None
        if mechanism == "PLAIN":
            message = self._b64(initial) if initial is not None else await self._sasl_step(b"")
            parts = message.split(b"\x00")
            if len(parts) != 3:
                raise CommandError("Malformed SASL PLAIN response")
            authzid, authcid, password = (p.decode("utf-8", "surrogateescape") for p in parts)
            await self._login(authcid, password, authzid=authzid)
        elif mechanism == "LOGIN":
            username = self._b64(initial) if initial is not None else await self._sasl_step(b"Username:")
            password = await self._sasl_step(b"Password:")
            await self._login(username.decode("utf-8", "surrogateescape"),
                              password.decode("utf-8", "surrogateescape"))
        else:
            raise CommandError(TEXT_UNSUPPORTED_MECHANISM)

    async def _sasl_step(self, challenge: bytes) -> bytes:
        """Send a challenge, return the decoded response (RFC 5034 section 4)."""
        await self.send(r.sasl_challenge(challenge))
        self.channel.expect_sasl_response()
        try:
            event = await self.channel.next_event()
        except CommandError:
            raise CommandError("Invalid SASL response") from None
        if not isinstance(event, SaslResponse):
            raise Logout()  # the client went away
        if event.line == "*":
            raise CommandError("Authentication cancelled")
        return self._b64(event.line)

    @staticmethod
    def _b64(text: str) -> bytes:
        if text == "=":  # RFC 5034 section 4: an empty initial response
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise CommandError("Invalid base64") from None

    async def _login(self, username: str, password: str, *, authzid: str = "") -> None:
        """Check the password, lock and open the maildrop, enter TRANSACTION."""
        # No proxy authorization (RFC 4616 authzid): the Authenticator refuses an authzid
        # other than the authcid as a failed login (logged and counted toward a ban).  An
        # LDAP or directory outage raises StorageError: -ERR [SYS/TEMP].
        user = await self.authenticator.authenticate(
            username, password, client_ip=self.channel.client_ip, service="pop3",
            authzid=authzid or None)
        if user is None:
            await self._fail_auth()
            return
        if not self.locks.acquire(user.id):
            raise CommandError(TEXT_IN_USE, r.CODE_IN_USE)
        try:
            maildrop, inbox_id = await self._open_maildrop(user)
        except BaseException:
            self.locks.release(user.id)
            raise
        self.user, self.maildrop, self.inbox_id = user, maildrop, inbox_id
        self.state = Pop3State.TRANSACTION
        log.info("pop3 login: rip=%s user=<%s> messages=%d", self.channel.client_ip,
                 user.address, len(maildrop.entries))
        await self.send(r.ok(f"Logged in, {maildrop.count} messages ({maildrop.size} octets)"))

    async def _open_maildrop(self, user: User) -> tuple[Maildrop, int]:
        index = self.store.index
        inbox = await index.get_mailbox(user.id, "INBOX")
        if inbox is None:
            await index.ensure_default_mailboxes(user.id)
            inbox = await index.get_mailbox(user.id, "INBOX")
            if inbox is None:
                raise StorageError(f"user {user.id} has no INBOX")
        records = await index.list_messages(inbox.id)
        entries = [MaildropEntry(m.uid, m.size, m.blob_key) for m in records]
        return Maildrop(inbox.uidvalidity, entries), inbox.id

    async def _fail_auth(self) -> None:
        self.auth_failures += 1
        if self.auth_failures >= MAX_AUTH_FAILURES:
            await self.send(r.err(TEXT_TOO_MANY_FAILURES, r.CODE_AUTH))
            raise Logout()
        raise CommandError(TEXT_AUTH_FAILED, r.CODE_AUTH)

    async def cmd_quit(self, command: Command) -> None:
        # RFC 1939 sections 4 and 6.
        if self.state is Pop3State.TRANSACTION:
            self.state = Pop3State.UPDATE
            try:
                await self._remove_deleted()
            except (StorageError, NotFound) as exc:
                log.warning("pop3 QUIT: deleted messages not removed: %s", exc)
                await self.send(r.err(TEXT_NOT_REMOVED, r.CODE_SYS_TEMP))
                raise Logout() from None
        await self.send(r.ok("Bye"))
        raise Logout()

    async def _remove_deleted(self) -> None:
        """The UPDATE state: remove the marked messages, durably, before the +OK.

        The index removes only ``\\Deleted`` messages, so the marked UIDs get the flag
        first, then exactly those UIDs are expunged.  If the expunge fails, the flags
        this call added are taken off again (best effort) so the mailbox looks as if
        the session had never been."""
        assert self.maildrop is not None and self.inbox_id is not None
        uids = self.maildrop.deleted_uids()
        if not uids:
            return
        index = self.store.index
        update = await index.store_flags(self.inbox_id, uids, frozenset({"\\Deleted"}), "add")
        try:
            removed = await index.expunge(self.inbox_id, uids)
        except (StorageError, NotFound):
            added = [m.uid for m in update.changed]
            if added:
                try:
                    await index.store_flags(self.inbox_id, added, frozenset({"\\Deleted"}), "remove")
                except (StorageError, NotFound) as exc:
                    log.warning("pop3 QUIT: cannot take back \\Deleted flags: %s", exc)
            raise
        assert self.user is not None
        log.info("pop3 update: rip=%s user=<%s> deleted=%d", self.channel.client_ip,
                 self.user.address, len(removed))

    # -- TRANSACTION state (RFC 1939 sections 5 and 7) --------------------------------------

    @property
    def drop(self) -> Maildrop:
        assert self.maildrop is not None
        return self.maildrop

    async def cmd_stat(self, command: Command) -> None:
        await self.send(r.ok(f"{self.drop.count} {self.drop.size}"))

    async def cmd_list(self, command: Command) -> None:
        drop = self.drop
        if command.arguments:
            number = int(command.arguments[0])  # type: ignore[call-overload]
            await self.send(r.ok(f"{number} {drop.message(number).size}"))
            return
        await self.send(r.multiline(f"{drop.count} messages ({drop.size} octets)",
                                    [f"{n} {e.size}" for n, e in drop.listing()]))

    async def cmd_uidl(self, command: Command) -> None:
        drop = self.drop
        if command.arguments:
            number = int(command.arguments[0])  # type: ignore[call-overload]
            await self.send(r.ok(f"{number} {drop.unique_id(number)}"))
            return
        await self.send(r.multiline("Unique-ID listing follows", [
            f"{n} {r.unique_id(drop.uidvalidity, e.uid)}" for n, e in drop.listing()]))

    async def cmd_dele(self, command: Command) -> None:
        number = int(command.arguments[0])  # type: ignore[call-overload]
        self.drop.delete(number)
        await self.send(r.ok(f"Message {number} deleted"))

    async def cmd_rset(self, command: Command) -> None:
        self.drop.reset()
        await self.send(r.ok(f"Maildrop has {self.drop.count} messages ({self.drop.size} octets)"))

    async def cmd_noop(self, command: Command) -> None:
        await self.send(r.ok())

    async def cmd_retr(self, command: Command) -> None:
        entry = self.drop.message(int(command.arguments[0]))  # type: ignore[call-overload]
        await self._stream(entry, f"{entry.size} octets", header_end=0, limit=None)

    async def cmd_top(self, command: Command) -> None:
        number, lines = (int(a) for a in command.arguments)  # type: ignore[call-overload]
        entry = self.drop.message(number)
        structure = await self._structure(entry)
        await self._stream(entry, "Top of message follows", header_end=structure.body.body_start,
                           limit=LineLimit(lines))

    async def _structure(self, entry: MaildropEntry) -> MessageStructure:
        text = await self.store.index.get_structure(entry.key)
        if text is None:
            raise StorageError(f"no structure stored for blob {entry.key}")
        return MessageStructure.from_json(text)

    async def _read(self, entry: MaildropEntry, offset: int) -> bytes:
        try:
            return await self.store.blobs.get_range(entry.key, offset, CHUNK)
        except NotFound:
            raise CommandError(TEXT_GONE) from None

    async def _stream(self, entry: MaildropEntry, text: str, *, header_end: int,
                      limit: LineLimit | None) -> None:
        """Send ``+OK text``, the message dot-stuffed (RETR: ``limit`` None), or (TOP)
        its bytes up to ``header_end`` and then the body lines ``limit`` lets through,
        and the terminating line.  The first
        chunk is read before the ``+OK`` so that a missing or unreachable blob is a
        plain ``-ERR``."""
        chunk = await self._read(entry, 0)
        await self.send(r.ok(text))
        self.multiline_open = True
        stuffer = DotStuffer()
        offset = 0
        while True:
            if limit is None:
                out = chunk
            else:  # the header whole, then what the line limit lets through
                head = chunk[:max(0, header_end - offset)]
                body = chunk[len(head):]
                out = head + limit.take(body) if body else head
            if out:
                await self.send(stuffer.feed(out))
            offset += len(chunk)
            if len(chunk) < CHUNK or offset >= entry.size:
                break
            if limit is not None and offset >= header_end and limit.done:
                break
            chunk = await self._read(entry, offset)
        await self.send(stuffer.finish())
        self.multiline_open = False


Pop3Session.HANDLERS.update({
    "CAPA": Pop3Session.cmd_capa, "STLS": Pop3Session.cmd_stls, "USER": Pop3Session.cmd_user,
    "PASS": Pop3Session.cmd_pass, "AUTH": Pop3Session.cmd_auth, "QUIT": Pop3Session.cmd_quit,
    "STAT": Pop3Session.cmd_stat, "LIST": Pop3Session.cmd_list, "UIDL": Pop3Session.cmd_uidl,
    "DELE": Pop3Session.cmd_dele, "RSET": Pop3Session.cmd_rset, "NOOP": Pop3Session.cmd_noop,
    "RETR": Pop3Session.cmd_retr, "TOP": Pop3Session.cmd_top,
})
