"""One IMAP connection's state and its command handlers (RFC 3501, plus the extensions
listed in `CAPABILITIES`).

The connection loop (`server.py`) reads `Command`s with the sans-IO `CommandReader` and
calls `ImapSession.run_command`; this module turns each command into store calls and
response bytes (encoded by `pymail.proto.imap.responses`/`bodystructure`).  Command
groups live in their own modules, mixed into `ImapSession`: `mailboxes` (CREATE,
DELETE, RENAME, SUBSCRIBE, LIST, LSUB, within the mailbox limits), `fetch` (FETCH,
streamed in bounded memory), `append` (APPEND, a large literal from the spool,
stored through the delivery `Pipeline` the MX and submission use) and `search` (SEARCH,
message text streamed in bounded memory).

Invariants:

* Which commands run in which state is data (`pymail.proto.imap.states`); a command in
  the wrong state is answered ``BAD`` before any handler runs.  Handlers are looked up
  in `ImapSession.HANDLERS`, a table of command name -> method.
* Every command ends with exactly one tagged response.  A `StorageError` becomes ``NO
  [UNAVAILABLE]``; any other exception is logged and becomes ``NO [SERVERBUG]``: never a
  traceback to the client.  A client that went away or missed a deadline
  (`pymail.net.listen.CLIENT_GONE`, `ClientTimeout`) is no error of the command: the
  exception goes to the connection loop, which logs one INFO line and closes.
* In the selected state the session holds the mailbox's UIDs in ascending order: the
  message sequence number of ``uids[i]`` is ``i + 1`` (RFC 3501 section 2.3.1.2).  The
  list changes only when the session reports the change to the client (EXISTS for new
  messages, EXPUNGE for removed ones), in `_report_changes`, which runs before each
  tagged OK in the selected state and during IDLE.  While FETCH, STORE or SEARCH (not
  UID) run, EXPUNGEs are held back (RFC 3501 section 7.4.1): a removed message stays in
  the list as a ghost (in ``gone``) until the next report that may send them.
* Per message the session keeps only its UID and the flags last reported (flag sets
  are shared between messages), so an idle session on a large mailbox stays small; the
  rows a command needs (size, date, blob, MODSEQ) are read from the index per command.
  A message that vanished from the index meanwhile is treated as a ghost.
* IDLE waits on the `MailboxWatcher`, woken by the index's change feed from every
  process and node sharing the index.
* A COPY or MOVE that went through is told to the session's `CopyObserver` (spam
  training), if there is one and it `wants` the pair of mailboxes: after the index
  commit, never instead of it, and a failure there does not change the command's OK.
* \\Recent (RFC 3501 section 2.3.2) comes from the mailbox's ``first_recent_uid``
  watermark: a SELECT takes the messages from there as its \\Recent ones (``recent``)
  and moves it to UIDNEXT, as does a read-write session for new mail it reports; an
  EXAMINE sees them without taking them.  Under IMAP4rev2 \\Recent is not shown (RFC
  9051 removed it).  Client-facing texts are generic; details go to the log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from pymail.auth.service import Authenticator
from pymail.delivery.pipeline import Pipeline
from pymail.delivery.spool import MessageContent
from pymail.mail.mime import MessageStructure
from pymail.net.imap.append import AppendCommand
from pymail.net.imap.fetch import FetchCommand
from pymail.net.imap.mailboxes import MailboxCommands
from pymail.net.imap.refusals import NO_REPLY as _NoReply, Logout, Refusal as _No, bad as _bad
from pymail.net.imap.search import SearchCommand
from pymail.net.imap.sort import SortCommands
from pymail.net.imap.watch import MailboxWatcher
from pymail.net.listen import CLIENT_GONE
from pymail.proto.imap import responses as r
from pymail.proto.imap import errors
from pymail.proto.imap.errors import BadCommand
from pymail.proto.imap.flags import SYSTEM_FLAGS, keep_keyword_spelling, new_keywords
from pymail.proto.imap.names import DELIMITER, MailboxLimits
from pymail.proto.imap.reader import ContinuationLine, IdleDone
from pymail.proto.imap.states import ConnectionState, command_allowed
from pymail.proto.imap.types import (
    Authenticate, Command, Copy, Enable, Expunge, GetQuota, Id, Login, MailboxName,
    Select, SequenceSet, Status, Store,
)
from pymail.store import (
    Mailbox, MessageRecord, StorageError,
    Store as MailStore, User,
)
from pymail.store.interfaces import is_no_space

log = logging.getLogger("pymail.imap")

MAX_AUTH_FAILURES = 3

# Capabilities (RFC 3501 section 6.1.1) -- only what this module implements.
BASE_CAPABILITIES = (
    "IMAP4rev1", "IMAP4rev2", "LITERAL+", "ENABLE", "IDLE", "NAMESPACE", "ID", "UIDPLUS",
    "MOVE", "UNSELECT", "SPECIAL-USE", "CHILDREN", "LIST-EXTENDED", "LIST-STATUS",
    "ESEARCH", "SEARCHRES", "CONDSTORE", "BINARY", "STATUS=SIZE", "QUOTA",
    "QUOTA=RES-STORAGE", "WITHIN",
    "SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "ESORT",  # RFC 5256
    "MULTIAPPEND",  # RFC 3502 (net/imap/append.py)
)
AUTH_CAPABILITIES = ("SASL-IR", "AUTH=PLAIN", "AUTH=LOGIN")
#: What ENABLE turns on (RFC 5161): CONDSTORE (RFC 7162 section 3.1) and IMAP4rev2
#: (RFC 9051 section 6.3.1).  QRESYNC is not offered (expunged UIDs are not remembered).
ENABLEABLE = ("CONDSTORE", "IMAP4REV2")
DEFAULT_APPEND_LIMIT = 50 * 1024 * 1024
DEFAULT_FETCH_SECTIONS = 100

# Reply texts (STYLE.md item 5).
TEXT_WRONG_STATE = errors.TEXT_WRONG_STATE  # the reader refuses literals with it too
TEXT_AUTH_FAILED = "Authentication failed"
TEXT_UNAVAILABLE = "Temporary failure, try again later"
TEXT_NO_SPACE = "Not enough disk space"
TEXT_SERVERBUG = "Internal error"
TEXT_NO_MAILBOX = "No such mailbox"
TEXT_BAD_SEQUENCE = "Invalid message sequence number"
TEXT_NOT_SUPPORTED = "Not supported"
TEXT_READ_ONLY = "Mailbox is read-only"


class CopyObserver(Protocol):
    """Told of the messages a COPY or MOVE put into another mailbox (spam training:
    `pymail.checks.training.JunkLearning`).  `wants` is asked first, so that copies
    nobody listens to cost no index read; `copied` gets the copies' blob keys and must
    return at once and not block (queue the work); an exception from it is logged and
    does not change the command's OK."""

    def wants(self, source: Mailbox, target: Mailbox) -> bool: ...

    def copied(self, user: User, source: Mailbox, target: Mailbox, blob_keys: list[str]) -> None: ...


class Channel(Protocol):
    """What the session needs from its connection (implemented in `server.py`)."""

    tls: bool  #: the connection is encrypted (implicit TLS or after STARTTLS)
    client_ip: str

    async def send(self, data: bytes) -> None: ...

    def peer_gone(self, error: BaseException) -> bool:
        """Whether `error` is the client's hang-up (`StreamConnection.peer_gone`)."""
        ...

    async def next_event(self, timeout: float | None = None) -> object:
        """The next reader event (None when `timeout` passed first); may raise the
        reader's BadCommand/FatalProtocolError."""
        ...

    async def start_tls(self) -> None: ...

    def expect_continuation_line(self) -> None: ...

    def expect_idle_done(self) -> None: ...

    def logged_in(self) -> None:
        """The client authenticated: the pre-login limits end."""
        ...

    async def streamed_literal(self) -> MessageContent:
        """The next streamed literal of the APPEND being run (``Append.streamed``; in
        order, MULTIAPPEND may stream several), complete;
        the session owns it from now on (``discard`` it when done)."""
        ...


@dataclass
class SelectedMailbox:
    """The selected mailbox as this session has reported it to the client."""

    mailbox: Mailbox
    read_only: bool
    uids: list[int]  #: reported UIDs, ascending; sequence number = index + 1
    flags: dict[int, frozenset[str]]  #: flags as last reported, by UID (ghosts too)
    uidnext: int
    highestmodseq: int
    keywords: set[str] = field(default_factory=set)
    saved: list[int] = field(default_factory=list)  #: SEARCH RETURN (SAVE) UIDs (RFC 5182)
    gone: set[int] = field(default_factory=set)  #: expunged, EXPUNGE not sent yet (ghosts)
    recent: set[int] = field(default_factory=set)  #: UIDs \\Recent in this session

    @property
    def id(self) -> int:
        return self.mailbox.id


def _decode_name(name: str, *, utf8: bool = False) -> str:
    """A mailbox name from the client: modified UTF-7 decoded (RFC 3501 section 5.1.3)
    unless the client uses UTF-8 names (IMAP4rev2, RFC 9051 section 5.1), trailing
    delimiter dropped, INBOX in upper case."""
    if not utf8:
        try:
            name = r.decode_modified_utf7(name)
        except ValueError:
            raise _No("Invalid mailbox name") from None
    if len(name) > 1 and name.endswith(DELIMITER):
        name = name.rstrip(DELIMITER)
    if name.upper() == "INBOX":
        name = "INBOX"
    if not name or "\x00" in name or any(not part for part in name.split(DELIMITER)):
        raise _No("Invalid mailbox name")
    return name


class ImapSession(MailboxCommands, FetchCommand, AppendCommand, SearchCommand,
                  SortCommands):
    """One client's IMAP state.  Fields: ``state`` (RFC 3501 section 3), ``user`` once
    authenticated, ``selected`` in the selected state, ``auth_failures`` this connection."""

    def __init__(self, store: MailStore, authenticator: Authenticator, channel: Channel, *,
                 starttls_available: bool, append_limit: int = DEFAULT_APPEND_LIMIT,
                 watcher: MailboxWatcher | None = None,
                 mailbox_limits: MailboxLimits = MailboxLimits(),
                 fetch_sections: int = DEFAULT_FETCH_SECTIONS,
                 pipeline: Pipeline, on_copied: CopyObserver | None = None) -> None:
        self.store = store
        #: told of every COPY/MOVE (spam training); None: nobody listens
        self.on_copied = on_copied
        #: APPEND delivers through it, as the MX and submission do
        self.pipeline = pipeline
        self.authenticator = authenticator
        self.channel = channel
        self.starttls_available = starttls_available
        self.append_limit = append_limit
        self.watcher = watcher if watcher is not None else MailboxWatcher(store)
        #: limits.mailboxes_per_user, mailbox_name_length, mailbox_depth (CREATE, RENAME)
        self.mailbox_limits = mailbox_limits
        #: limits.fetch_sections: body sections one FETCH may ask for
        self.fetch_sections = fetch_sections
        self.state = ConnectionState.NOT_AUTHENTICATED
        self.user: User | None = None
        self.selected: SelectedMailbox | None = None
        self.auth_failures = 0
        #: RFC 7162 section 3.1: a CONDSTORE enabling command was seen; every FETCH
        #: with FLAGS then carries MODSEQ.
        self.condstore = False
        #: RFC 9051 section 6.3.1: the client enabled IMAP4rev2 -- UTF-8 mailbox names,
        #: ESEARCH answers to SEARCH, no RECENT.
        self.rev2 = False
        self._structures: dict[str, MessageStructure] = {}

    # -- capabilities and greeting --------------------------------------------------------

    def capabilities(self) -> list[str]:
        caps = [*BASE_CAPABILITIES, f"APPENDLIMIT={self.append_limit}"]
        if self.state is ConnectionState.NOT_AUTHENTICATED:
            if self.channel.tls:
                caps += AUTH_CAPABILITIES
            else:  # RFC 3501 section 6.2.3 / RFC 8314: no plaintext passwords
                caps += ["STARTTLS", "LOGINDISABLED"]
        return caps

    def greeting(self) -> bytes:
        return r.untagged_status(r.STATUS_OK, "pymail ready", r.code_capability(self.capabilities()))

    # -- dispatch -------------------------------------------------------------------------

    async def run_command(self, command: Command) -> None:
        """Answer one command (untagged responses, then its tagged one).  Raises `Logout`
        when the connection must close afterwards."""
        if not command_allowed(self.state, command.name):
            await self.send(r.tagged_status(command.tag, r.STATUS_BAD, TEXT_WRONG_STATE))
            return
        handler = self.HANDLERS.get(command.name)
        if handler is None:
            await self.send(r.tagged_status(command.tag, r.STATUS_BAD, TEXT_NOT_SUPPORTED))
            return
        try:
            result = await handler(self, command)
        except Logout:
            raise
        except _No as refusal:
            await self.send(r.tagged_status(command.tag, refusal.status, refusal.text, refusal.code))
            return
        except StorageError as exc:
            log.warning("imap %s failed: storage: %s", command.name, exc)
            if is_no_space(exc):  # as Dovecot answers a full disk
                await self.send(r.tagged_status(command.tag, r.STATUS_NO, TEXT_NO_SPACE, r.OVERQUOTA))
            else:
                await self.send(r.tagged_status(command.tag, r.STATUS_NO, TEXT_UNAVAILABLE, r.UNAVAILABLE))
            return
        except BadCommand:
            raise  # the reader's own error during a continuation: the loop answers it
        except asyncio.TimeoutError:
            raise  # the client missed a deadline (ClientTimeout): the loop says BYE
        except CLIENT_GONE:
            raise  # the client hung up or stopped reading: the loop logs one line
        except Exception as exc:
            if self.channel.peer_gone(exc):  # an odd error from a transport already lost
                raise ConnectionResetError(f"connection lost ({type(exc).__name__})") from None
            log.exception("imap %s failed", command.name)
            await self.send(r.tagged_status(command.tag, r.STATUS_NO, TEXT_SERVERBUG, r.SERVERBUG))
            return
        if result is _NoReply:
            return
        text, code = result if isinstance(result, tuple) else (result or "Completed", None)
        if self.selected is not None:
            # RFC 3501 section 7.4.1: no EXPUNGE during FETCH, STORE, SEARCH (UID forms may);
            # SORT and THREAD are searches too (RFC 5256 section 3)
            await self._report_changes_safely(
                allow_expunge=command.uid
                or command.name not in ("FETCH", "STORE", "SEARCH", "SORT", "THREAD"))
        await self.send(r.tagged_status(command.tag, r.STATUS_OK, text, code))

    async def send(self, data: bytes) -> None:
        await self.channel.send(data)

    # -- any state (RFC 3501 section 6.1) ---------------------------------------------------

    async def cmd_capability(self, command: Command):
        await self.send(r.capability_response(self.capabilities()))

    async def cmd_noop(self, command: Command):
        return "NOOP completed"

    async def cmd_logout(self, command: Command):
        await self.send(r.untagged_status(r.STATUS_BYE, "Logging out"))
        await self.send(r.tagged_status(command.tag, r.STATUS_OK, "LOGOUT completed"))
        self.state = ConnectionState.LOGOUT
        raise Logout()

    async def cmd_id(self, command: Command):
        # RFC 2971 section 3.1; the client's parameters are not needed.
        assert isinstance(command.arguments, Id)
        await self.send(r.id_response([("name", "pymail")]))
        return "ID completed"

    # -- not authenticated (RFC 3501 section 6.2) -------------------------------------------

    async def cmd_starttls(self, command: Command):
        if self.channel.tls or not self.starttls_available:
            raise _bad("TLS already active")
        await self.send(r.tagged_status(command.tag, r.STATUS_OK, "Begin TLS negotiation now"))
        await self.channel.start_tls()  # discards anything the client pipelined (RFC 2595 3.1)
        return _NoReply

    async def cmd_login(self, command: Command):
        args = command.arguments
        assert isinstance(args, Login)
        if not self.channel.tls:
            raise _No("Use STARTTLS first", r.PRIVACYREQUIRED)
        return await self._authenticate(args.userid, args.password)

    async def cmd_authenticate(self, command: Command):
        # RFC 3501 section 6.2.2, RFC 4959 (SASL-IR), RFC 4616 (PLAIN).
        args = command.arguments
        assert isinstance(args, Authenticate)
        if not self.channel.tls:
            raise _No("Use STARTTLS first", r.PRIVACYREQUIRED)
        mechanism = args.mechanism.upper()
        if mechanism == "PLAIN":
            response = args.initial_response
            if response is None:
                response = await self._sasl_step(b"")
            message = self._b64(response)
            parts = message.split(b"\x00")
            if len(parts) != 3:
                raise _bad("Malformed SASL PLAIN response")
            authzid, authcid, password = (p.decode("utf-8", "surrogateescape") for p in parts)
            # no proxy authorization: the Authenticator refuses an authzid != authcid
            return await self._authenticate(authcid, password, authzid)
        if mechanism == "LOGIN":  # draft-murchison-sasl-login
            if args.initial_response is not None:
                username = self._b64(args.initial_response)
            else:
                username = self._b64(await self._sasl_step(base64.b64encode(b"Username:")))
            password = self._b64(await self._sasl_step(base64.b64encode(b"Password:")))
            return await self._authenticate(username.decode("utf-8", "surrogateescape"),
                                            password.decode("utf-8", "surrogateescape"))
        raise _No("Unsupported authentication mechanism")

    async def _sasl_step(self, challenge: bytes) -> str:
        await self.send(r.continuation_data(challenge))
        event = await self._continuation_line()
        line = event.line.decode("ascii", "replace").strip()
        if line == "*":
            raise _bad("Authentication cancelled")
        return line

    async def _continuation_line(self) -> ContinuationLine:
        self.channel.expect_continuation_line()
        try:
            event = await self.channel.next_event()
        except BadCommand:
            raise _bad("Invalid SASL response") from None
        if not isinstance(event, ContinuationLine):
            raise Logout()  # the client went away
        return event

    @staticmethod
    def _b64(text: str) -> bytes:
        if text in ("", "="):
            return b""
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise _bad("Invalid base64") from None

    async def _authenticate(self, username: str, password: str, authzid: str | None = None):
        # A directory or LDAP outage raises StorageError (AuthUnavailable): NO [UNAVAILABLE]
        user = await self.authenticator.authenticate(
            username, password, client_ip=self.channel.client_ip, service="imap",
            authzid=authzid)
        if user is None:
            return await self._fail_auth(username)
        if await self.store.index.get_mailbox(user.id, "INBOX") is None:
            await self.store.index.ensure_default_mailboxes(user.id)
        self.user = user
        self.state = ConnectionState.AUTHENTICATED
        self.channel.logged_in()  # literals up to APPENDLIMIT from now on
        return "Logged in", r.code_capability(self.capabilities())

    async def _fail_auth(self, username: str):
        self.auth_failures += 1
        if self.auth_failures >= MAX_AUTH_FAILURES:
            await self.send(r.untagged_status(r.STATUS_BYE, "Too many authentication failures"))
            raise Logout()
        raise _No(TEXT_AUTH_FAILED, r.AUTHENTICATIONFAILED)

    # -- authenticated (RFC 3501 section 6.3) -----------------------------------------------

    @property
    def user_id(self) -> int:
        assert self.user is not None
        return self.user.id

    def _name(self, raw: str) -> str:
        return _decode_name(raw, utf8=self.rev2)

    async def cmd_namespace(self, command: Command):
        # RFC 2342: one personal namespace, no others.
        await self.send(r.namespace_response([("", DELIMITER)], None, None))
        return "NAMESPACE completed"

    async def cmd_enable(self, command: Command):
        # RFC 5161 section 3.1: answer with what was newly enabled; unknown names are
        # ignored.  CONDSTORE (RFC 7162 section 3.1), IMAP4rev2 (RFC 9051 section 6.3.1).
        args = command.arguments
        assert isinstance(args, Enable)
        enabled = []
        for name in args.capabilities:
            wanted = name.upper()
            if wanted == "CONDSTORE" and not self.condstore:
                await self._enable_condstore()
                enabled.append("CONDSTORE")
            elif wanted == "IMAP4REV2" and not self.rev2:
                self.rev2 = True
                enabled.append("IMAP4rev2")
        await self.send(r.enabled_response(enabled))
        return "ENABLE completed"

    async def _enable_condstore(self) -> None:
        """A CONDSTORE enabling command (RFC 7162 section 3.1).  The first one in the
        selected state is told with an untagged OK [HIGHESTMODSEQ] (sections 3.1.2 and
        3.1.4: the client now tracks mod-sequences and needs the mailbox's), as
        Dovecot does; SELECT (CONDSTORE) says it in the SELECT responses."""
        if self.condstore:
            return
        self.condstore = True
        if self.selected is not None:
            await self.send(r.untagged_status(
                r.STATUS_OK, "Highest", r.code_highestmodseq(self.selected.highestmodseq)))

    async def _mailbox(self, raw_name: str) -> Mailbox:
        box = await self.store.index.get_mailbox(self.user_id, self._name(raw_name))
        if box is None:
            raise _No(TEXT_NO_MAILBOX, r.NONEXISTENT)
        return box

    async def cmd_select(self, command: Command):
        # RFC 3501 sections 6.3.1 and 6.3.2.
        args = command.arguments
        assert isinstance(args, Select)
        if args.qresync is not None:  # RFC 7162 section 3.2.5: only once QRESYNC is enabled
            raise _bad("QRESYNC is not enabled")
        if args.condstore:
            self.condstore = True
        if self.selected is not None:
            # RFC 9051 section 6.3.2 / RFC 7162 section 3.2.11: the old mailbox is closed
            # (without expunge) before the new one's responses.
            await self.send(r.untagged_status(r.STATUS_OK, "Previous mailbox is now closed", r.CLOSED))
        self.selected = None
        self.state = ConnectionState.AUTHENTICATED
        box = await self._mailbox(args.mailbox)
        read_only = command.name == "EXAMINE"
        rows = await self.store.index.list_messages(box.id)
        sel = SelectedMailbox(
            mailbox=box, read_only=read_only, uids=[m.uid for m in rows],
            flags={m.uid: _shared_flags(m.flags) for m in rows},
            uidnext=box.uidnext, highestmodseq=box.highestmodseq,
        )
        sel.keywords = {f for m in rows for f in m.flags if not f.startswith("\\")}
        # RFC 3501 section 2.3.2: the first session to select takes the new messages as
        # \\Recent (EXAMINE only looks); up to the newest UID it lists, or UIDNEXT
        upto = max(box.uidnext, rows[-1].uid + 1 if rows else 1)
        first_recent = await self.store.index.first_recent_uid(box.id, None if read_only else upto)
        sel.recent = {m.uid for m in rows if m.uid >= first_recent}
        first_unseen = next((i + 1 for i, m in enumerate(rows) if "\\Seen" not in m.flags), None)
        out = [r.flags_response(self._flag_list(sel)), r.exists_response(len(rows))]
        if self.rev2:  # RFC 9051 section 6.3.2: LIST instead of RECENT and UNSEEN
            attrs = [box.special_use] if box.special_use else []
            out.append(r.list_response(attrs, DELIMITER, box.name, utf8=True))
        else:
            out.append(r.recent_response(len(sel.recent)))
            if first_unseen is not None:
                out.append(r.untagged_status(r.STATUS_OK, "First unseen", r.code_unseen(first_unseen)))
        permanent = [] if read_only else [*self._flag_list(sel), "\\*"]
        out += [
            r.untagged_status(r.STATUS_OK, "Flags permitted", r.code_permanentflags(permanent)),
            r.untagged_status(r.STATUS_OK, "UIDs valid", r.code_uidvalidity(box.uidvalidity)),
            r.untagged_status(r.STATUS_OK, "Predicted next UID", r.code_uidnext(box.uidnext)),
            r.untagged_status(r.STATUS_OK, "Highest", r.code_highestmodseq(box.highestmodseq)),
        ]
        await self.send(b"".join(out))
        self.selected = sel
        self.state = ConnectionState.SELECTED
        return f"{command.name} completed", r.READ_ONLY if read_only else r.READ_WRITE

    cmd_examine = cmd_select

    @staticmethod
    def _flag_list(sel: SelectedMailbox) -> list[str]:
        return [*SYSTEM_FLAGS, *sorted(sel.keywords)]

    def _announce_keywords(self, flag_sets) -> bytes:
        """Untagged FLAGS and PERMANENTFLAGS naming the keywords of `flag_sets` the
        client has not been told of, to send before a FETCH shows them (RFC 3501
        section 7.2.6); b"" when there are none."""
        sel = self.sel
        new = new_keywords(flag_sets, sel.keywords)
        if not new:
            return b""
        sel.keywords |= new
        out = r.flags_response(self._flag_list(sel))
        if not sel.read_only:
            permanent = [*self._flag_list(sel), "\\*"]
            out += r.untagged_status(r.STATUS_OK, "Flags permitted", r.code_permanentflags(permanent))
        return out

    async def cmd_status(self, command: Command):
        # RFC 3501 section 6.3.10, RFC 8438 SIZE, RFC 7162 HIGHESTMODSEQ, RFC 7889
        # APPENDLIMIT.
        args = command.arguments
        assert isinstance(args, Status)
        box = await self._mailbox(args.mailbox)
        values = await self._status_values(box, args.items)
        await self.send(r.status_response(box.name, values, utf8=self.rev2))
        return "STATUS completed"

    async def _status_values(self, box: Mailbox, items: tuple[str, ...]) -> list[tuple[str, int]]:
        if "HIGHESTMODSEQ" in items:
            await self._enable_condstore()  # RFC 7162 section 3.1: a CONDSTORE enabling command
        status = await self.store.index.mailbox_status(box.id)
        recent = 0
        if "RECENT" in items:  # the messages no SELECT has taken yet (RFC 3501 2.3.2)
            first_recent = await self.store.index.first_recent_uid(box.id)
            recent = len(await self.store.index.list_messages(box.id, first_recent))
            if self.selected is not None and self.selected.id == box.id:
                recent = max(recent, len(self.selected.recent))
        values = {
            "MESSAGES": status.messages, "RECENT": recent, "UIDNEXT": status.mailbox.uidnext,
            "UIDVALIDITY": status.mailbox.uidvalidity, "UNSEEN": status.unseen,
            "DELETED": status.deleted, "SIZE": status.size,
            "HIGHESTMODSEQ": status.mailbox.highestmodseq, "APPENDLIMIT": self.append_limit,
        }
        return [(item, values[item]) for item in items]

    # -- QUOTA (RFC 9208): one root "" per user, STORAGE in units of 1024 octets ----------

    async def _storage_used(self) -> int:
        """Octets in all the user's mailboxes (the sum of RFC822.SIZE)."""
        return await self.store.index.storage_used(self.user_id)

    async def _quota_response(self) -> bytes:
        assert self.user is not None
        used = await self._storage_used()
        return r.quota_response("", [("STORAGE", (used + 1023) // 1024, self.user.quota // 1024)])

    async def cmd_getquotaroot(self, command: Command):
        # RFC 9208 section 4.3.2: every mailbox of a user with a quota has the root "".
        args = command.arguments
        assert isinstance(args, MailboxName)
        box = await self._mailbox(args.mailbox)
        assert self.user is not None
        if not self.user.quota:
            await self.send(r.quotaroot_response(box.name, [], utf8=self.rev2))
        else:
            await self.send(r.quotaroot_response(box.name, [""], utf8=self.rev2) + await self._quota_response())
        return "GETQUOTAROOT completed"

    async def cmd_getquota(self, command: Command):
        # RFC 9208 section 4.3.1.
        args = command.arguments
        assert isinstance(args, GetQuota)
        assert self.user is not None
        if args.root != "" or not self.user.quota:
            raise _No("No such quota root", r.NONEXISTENT)
        await self.send(await self._quota_response())
        return "GETQUOTA completed"

    async def cmd_idle(self, command: Command):
        # RFC 2177: updates while idling; DONE ends it.
        # While selected, the mailbox watcher wakes the session on every committed change
        # from any process or node (the index's change feed); the session then compares
        # and reports.  A slow poll stays as the safety net (`MailboxWatcher`).
        await self.send(r.continuation("idling"))
        self.channel.expect_idle_done()
        watcher, mailbox_id = self.watcher, self.selected.id if self.selected else None
        changed = watcher.register(mailbox_id) if mailbox_id is not None else None
        try:
            if changed is not None:
                watcher.poll_interval()  # starts the feed
                await watcher.listening(timeout=2.0)
                await self._report_changes_safely(allow_expunge=True)  # since the command
            reading = asyncio.ensure_future(self.channel.next_event())
            try:
                while True:
                    waits: set[asyncio.Future] = {reading}
                    waiting = None
                    if changed is not None:
                        waiting = asyncio.ensure_future(changed.wait())
                        waits.add(waiting)
                    timeout = watcher.poll_interval() if changed is not None else None
                    done, _ = await asyncio.wait(waits, timeout=timeout,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if waiting is not None and not waiting.done():
                        waiting.cancel()
                    if reading in done:
                        break
                    if changed is not None:
                        changed.clear()
                        await self._report_changes_safely(allow_expunge=True)
                try:
                    event = reading.result()
                except BadCommand:
                    raise _bad("Expected DONE") from None
            finally:
                if not reading.done():
                    reading.cancel()
                    with contextlib.suppress(BaseException):
                        await reading
        finally:
            if changed is not None and mailbox_id is not None:
                watcher.unregister(mailbox_id, changed)
        if isinstance(event, IdleDone):
            return "IDLE terminated"
        raise Logout()  # the connection closed: nothing else can come before DONE

    # -- selected (RFC 3501 section 6.4) ----------------------------------------------------

    @property
    def sel(self) -> SelectedMailbox:
        assert self.selected is not None
        return self.selected

    async def cmd_check(self, command: Command):
        return "CHECK completed"

    async def cmd_close(self, command: Command):
        # RFC 3501 section 6.4.2: expunge silently when read-write.
        sel = self.sel
        self.selected = None
        self.state = ConnectionState.AUTHENTICATED
        if not sel.read_only:
            await self.store.index.expunge(sel.id)
        return "CLOSE completed"

    async def cmd_unselect(self, command: Command):
        # RFC 3691.
        self.selected = None
        self.state = ConnectionState.AUTHENTICATED
        return "UNSELECT completed"

    def _resolve(self, sequence_set: SequenceSet, uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) of the messages a set names, ascending.  ``$`` is the
        saved search result (RFC 5182 section 2.1), whatever the UID prefix."""
        uids = self.sel.uids
        if sequence_set.saved_result:
            saved = set(self.sel.saved)
            return [(i + 1, u) for i, u in enumerate(uids) if u in saved]
        if uid:
            if not uids:
                return []
            # each range located by binary search in the sorted UIDs: a single-message
            # UID FETCH costs O(log n), not a walk over the mailbox
            positions: set[int] = set()
            for low, high in sequence_set.iter_ranges(uids[-1]):
                positions.update(range(bisect.bisect_left(uids, low), bisect.bisect_right(uids, high)))
            return [(i + 1, uids[i]) for i in sorted(positions)]
        for first, last in sequence_set.ranges:
            if any(n is not None and n > len(uids) for n in (first, last)):
                raise _bad(TEXT_BAD_SEQUENCE)
        return [(n, uids[n - 1]) for n in sequence_set.expand(len(uids))]

    async def _records(self, uids: list[int]) -> dict[int, MessageRecord]:
        """The index rows of these UIDs of the selected mailbox (one range query);
        ghosts and messages expunged meanwhile are missing."""
        sel = self.sel
        wanted = {u for u in uids if u not in sel.gone}
        if not wanted:
            return {}
        rows = await self.store.index.list_messages(sel.id, min(wanted), max(wanted))
        return {m.uid: m for m in rows if m.uid in wanted}

    async def _structure(self, record: MessageRecord) -> MessageStructure:
        structure = self._structures.get(record.blob_key)
        if structure is None:
            text = await self.store.index.get_structure(record.blob_key)
            if text is None:
                raise StorageError(f"no structure stored for blob {record.blob_key}")
            structure = MessageStructure.from_json(text)
            if len(self._structures) > 256:
                self._structures.clear()
            self._structures[record.blob_key] = structure
        return structure

    def _shown_flags(self, uid: int, flags: frozenset[str]) -> bytes:
        """FETCH FLAGS of `uid`: the stored flags, and \\Recent if this session has it
        as recent (RFC 3501 section 2.3.2; not under IMAP4rev2, RFC 9051)."""
        if uid in self.sel.recent and not self.rev2:
            return r.encode_flag_list(sorted(flags | {"\\Recent"}))
        return r.encode_flag_list(sorted(flags))

    def _remember_flags(self, uid: int, flags: frozenset[str]) -> None:
        """The flags of `uid` as just reported to the client."""
        self.sel.flags[uid] = _shared_flags(flags)

    async def cmd_store(self, command: Command):
        # RFC 3501 section 6.4.6; UNCHANGEDSINCE and the MODIFIED code (RFC 7162 3.1.3).
        args = command.arguments
        assert isinstance(args, Store)
        sel = self.sel
        if sel.read_only:
            raise _No(TEXT_READ_ONLY)
        if args.unchanged_since is not None:
            await self._enable_condstore()
        resolved = self._resolve(args.sequence_set, command.uid)
        records = await self._records([u for _, u in resolved])
        targets = [(seq, u) for seq, u in resolved if u in records]
        # system flags arrive canonical (the parser); a keyword takes the spelling the
        # mailbox already uses (flags are case-insensitive, RFC 3501 section 2.3.2)
        flags = keep_keyword_spelling((f for f in args.flags if f != "\\Recent"), sel.keywords)
        mode = {"": "replace", "+": "add", "-": "remove"}[args.mode]
        changed: set[int] = set()
        failed: list[int] = []
        if targets:
            update = await self.store.index.store_flags(
                sel.id, [u for _, u in targets], flags, mode, unchanged_since=args.unchanged_since)
            for record in update.changed:
                records[record.uid] = record
                changed.add(record.uid)
            failed = list(update.failed)
        refused = set(failed)
        out = [self._announce_keywords(records[u].flags for _, u in targets if u not in refused)]
        for seq, u in targets:
            if u in refused:
                continue
            record = records[u]
            items = []
            if not args.silent:
                items.append(("FLAGS", self._shown_flags(u, record.flags)))
            if self.condstore and (not args.silent or (args.unchanged_since is not None and u in changed)):
                # RFC 7162 section 3.1.3: with UNCHANGEDSINCE, FETCH MODSEQ even if .SILENT
                items.append(("MODSEQ", r.encode_modseq(record.modseq)))
            if items:
                if command.uid:
                    items.insert(0, ("UID", r.encode_number(u)))
                out.append(r.fetch_response(seq, items))
            sel.flags[u] = _shared_flags(record.flags)
        await self.send(b"".join(out))
        if failed:
            numbers = sorted(failed) if command.uid else [seq for seq, u in targets if u in refused]
            return "Conditional STORE failed", r.code_modified(numbers)
        return "STORE completed"

    async def cmd_expunge(self, command: Command):
        # RFC 3501 section 6.4.3; UID EXPUNGE (RFC 4315 section 2.1).  The EXPUNGE
        # responses come from _report_changes before the tagged OK.
        sel = self.sel
        if sel.read_only:
            raise _No(TEXT_READ_ONLY)
        uids = None
        if command.uid:
            args = command.arguments
            assert isinstance(args, Expunge)
            uids = [u for _, u in self._resolve(args.sequence_set, True)]
            if not uids:
                return "EXPUNGE completed"
        await self.store.index.expunge(sel.id, uids)
        return "EXPUNGE completed"

    async def cmd_copy(self, command: Command):
        # RFC 3501 section 6.4.7, RFC 6851 MOVE, RFC 4315 COPYUID.
        args = command.arguments
        assert isinstance(args, Copy)
        sel = self.sel
        if command.name == "MOVE" and sel.read_only:
            raise _No(TEXT_READ_ONLY)
        target = await self.store.index.get_mailbox(self.user_id, self._name(args.mailbox))
        if target is None:
            raise _No(TEXT_NO_MAILBOX, r.TRYCREATE)
        uids = [u for _, u in self._resolve(args.sequence_set, command.uid) if u not in sel.gone]
        if not uids:
            return f"{command.name} completed"
        if command.name == "MOVE":
            pairs = await self.store.index.move_messages(sel.id, uids, target.id)
        else:
            pairs = await self.store.index.copy_messages(sel.id, uids, target.id)
        if not pairs:
            return f"{command.name} completed"
        code = r.code_copyuid(target.uidvalidity, [p[0] for p in pairs], [p[1] for p in pairs])
        if self.on_copied is not None:
            await self._tell_copied(sel.mailbox, target, [p[1] for p in pairs])
        if command.name == "MOVE":  # RFC 6851 section 4.3: COPYUID before the EXPUNGEs
            await self.send(r.untagged_status(r.STATUS_OK, "Moved", code))
            return "MOVE completed"
        return "COPY completed", code

    cmd_move = cmd_copy

    async def _tell_copied(self, source: Mailbox, target: Mailbox, new_uids: list[int]) -> None:
        """Give `on_copied` the blob keys of the copies (read back from the target: one
        UID range, the new UIDs of one transaction).  The copy is done whatever happens
        here: a failure is a log line, not the command's answer."""
        observer, user = self.on_copied, self.user
        assert observer is not None and user is not None
        try:
            if not observer.wants(source, target):
                return
            wanted = set(new_uids)
            records = await self.store.index.list_messages(target.id, min(wanted), max(wanted))
            observer.copied(user, source, target, [m.blob_key for m in records if m.uid in wanted])
        except Exception:
            log.warning("imap: copy from %s to %s not reported to the copy observer",
                        source.name, target.name, exc_info=True)

    # -- untagged updates -------------------------------------------------------------------

    async def _report_changes_safely(self, *, allow_expunge: bool) -> None:
        """`_report_changes`, where a storage failure only postpones the report: the
        command itself has succeeded."""
        try:
            await self._report_changes(allow_expunge=allow_expunge)
        except StorageError as exc:
            log.warning("imap: cannot report mailbox changes now: %s", exc)

    async def _report_changes(self, *, allow_expunge: bool) -> None:
        """Tell the client what changed in the selected mailbox since it was last told
        (RFC 3501 section 7: EXPUNGE, EXISTS, FETCH FLAGS), by comparing a fresh listing
        with the reported one when UIDNEXT or HIGHESTMODSEQ moved."""
        sel = self.selected
        if sel is None:
            return
        box = await self.store.index.get_mailbox_by_id(sel.id)
        if box is None:
            # Deleted by another session (a rename keeps the id): the reported state cannot be
            # kept up, so say so and end the connection (RFC 3501 section 7.1.5 allows a
            # BYE at any time); the client reconnects and lists the mailboxes anew.
            await self.send(r.untagged_status(r.STATUS_BYE, "The selected mailbox was deleted"))
            raise Logout()
        if (box.highestmodseq == sel.highestmodseq and box.uidnext == sel.uidnext
                and not (sel.gone and allow_expunge)):
            return
        rows = await self.store.index.list_messages(sel.id)
        fresh = {m.uid: m for m in rows}
        out = []
        kept = []
        for position, u in reversed(list(enumerate(sel.uids))):
            if u in fresh:
                kept.append(u)
            elif not allow_expunge:  # a ghost until EXPUNGE may be sent
                kept.append(u)
                sel.gone.add(u)
            else:  # descending order keeps the lower sequence numbers valid
                out.append(r.expunge_response(position + 1))
                sel.flags.pop(u, None)
                sel.recent.discard(u)
                sel.gone.discard(u)
        kept.reverse()
        newest = kept[-1] if kept else 0
        new = [m.uid for m in rows if m.uid > newest]
        sel.uids = kept + new
        out.append(self._announce_keywords(m.flags for m in rows))
        if new:
            # new mail: \\Recent here if no other session took it first (RFC 3501 2.3.2)
            first_recent = await self.store.index.first_recent_uid(
                sel.id, None if sel.read_only else new[-1] + 1)
            recent_before = len(sel.recent)
            sel.recent.update(u for u in new if u >= first_recent)
            out.append(r.exists_response(len(sel.uids)))
            if len(sel.recent) != recent_before and not self.rev2:  # RFC 3501 section 7.3.2
                out.append(r.recent_response(len(sel.recent)))
            for u in new:
                sel.flags[u] = _shared_flags(fresh[u].flags)
        for position, u in enumerate(sel.uids):
            record = fresh.get(u)
            if record is not None and sel.flags.get(u) != record.flags:
                sel.flags[u] = _shared_flags(record.flags)
                items = [("UID", r.encode_number(u)), ("FLAGS", self._shown_flags(u, record.flags))]
                if self.condstore:  # RFC 7162 section 3.1.4.1
                    items.append(("MODSEQ", r.encode_modseq(record.modseq)))
                out.append(r.fetch_response(position + 1, items))
        sel.highestmodseq, sel.uidnext = box.highestmodseq, box.uidnext
        data = b"".join(out)
        if data:
            await self.send(data)

    HANDLERS: dict[str, Callable[["ImapSession", Command], Awaitable[object]]] = {}


_FLAG_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared_flags(flags: frozenset[str]) -> frozenset[str]:
    """One frozenset object per distinct flag set in the process (most messages share a
    handful), so a selected mailbox costs a UID and a reference per message."""
    shared = _FLAG_SETS.get(flags)
    if shared is None:
        if len(_FLAG_SETS) >= 4096:  # keyword soup: stop sharing rather than grow
            return flags
        shared = _FLAG_SETS.setdefault(flags, flags)
    return shared


ImapSession.HANDLERS.update({
    "CAPABILITY": ImapSession.cmd_capability, "NOOP": ImapSession.cmd_noop,
    "LOGOUT": ImapSession.cmd_logout, "ID": ImapSession.cmd_id,
    "STARTTLS": ImapSession.cmd_starttls, "LOGIN": ImapSession.cmd_login,
    "AUTHENTICATE": ImapSession.cmd_authenticate,
    "NAMESPACE": ImapSession.cmd_namespace, "ENABLE": ImapSession.cmd_enable,
    "SELECT": ImapSession.cmd_select, "EXAMINE": ImapSession.cmd_examine,
    "CREATE": ImapSession.cmd_create, "DELETE": ImapSession.cmd_delete,
    "RENAME": ImapSession.cmd_rename, "SUBSCRIBE": ImapSession.cmd_subscribe,
    "UNSUBSCRIBE": ImapSession.cmd_unsubscribe, "LIST": ImapSession.cmd_list,
    "LSUB": ImapSession.cmd_lsub, "STATUS": ImapSession.cmd_status,
    "APPEND": ImapSession.cmd_append, "IDLE": ImapSession.cmd_idle,
    "CHECK": ImapSession.cmd_check, "CLOSE": ImapSession.cmd_close,
    "UNSELECT": ImapSession.cmd_unselect, "EXPUNGE": ImapSession.cmd_expunge,
    "FETCH": ImapSession.cmd_fetch, "STORE": ImapSession.cmd_store,
    "COPY": ImapSession.cmd_copy, "MOVE": ImapSession.cmd_move,
    "SEARCH": ImapSession.cmd_search, "GETQUOTA": ImapSession.cmd_getquota,
    "GETQUOTAROOT": ImapSession.cmd_getquotaroot,
    "SORT": ImapSession.cmd_sort, "THREAD": ImapSession.cmd_thread,  # RFC 5256
})
