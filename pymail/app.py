"""Composition root: config → storage → services of one worker, started and stopped.

`Worker` is one process's services over one storage connection set.  Start order:
certificates (embedded default), storage opened and migrated, then each listener bound,
then the outbound queue's runner started (pymail.delivery.runner, one per worker
process); only then is readiness reported (by pymail.process: log lines naming every
address, and `READY=1` to systemd).  Stop order (`Worker.stop`): stop accepting and stop
claiming queued mail, let deliveries in progress (inbound, and outbound within
`QUEUE_GRACE_SECONDS`; the rest go back to the queue) finish within the grace period,
say 421 to idle sessions, close storage.

The preparation every process model shares lives here too: `prepare_storage`,
`prepare_spool`, `prepare_tls`, `open_configured_store`, and `StartupError`, the one-line
reason pymail cannot start.  How processes run these -- one process or a prefork parent
and its workers, signals, systemd notifications -- is pymail.process; `serve` is
re-exported here for the callers that import it from pymail.app.

Certificates (pymail.net.tlsstore): loaded once before the workers start (a bad pair
stops the start with one line); every listener holds the one `ServerCertificates.context`.
SIGHUP (`Worker.reload_certificates`) re-reads the certificate files in each worker, and
so does each worker's poller when the files change; new connections get the new
certificates, open ones keep theirs, a bad file leaves the old ones served.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pymail.auth.service import Authenticator
from pymail.config import Config
from pymail.config.schema import split_hostport
from pymail.checks.session import Checks
from pymail.delivery.dkim import signer_from_config
from pymail.dns import DnsResolver, resolver_from_config
from pymail.delivery.pipeline import Pipeline
from pymail.delivery.router import Router
from pymail.delivery.spool import Spool
from pymail.net import sdnotify
from pymail.net.http import HttpService
from pymail.net.imap import ImapService
from pymail.net.imap.watch import MailboxWatcher
from pymail.net.listen import ClientTimeouts
from pymail.net.limits import ConnectionLimiter
from pymail.net.pop3 import MaildropLocks, Pop3Service
from pymail.net.proxy import TrustedProxies
from pymail.net.mx import MxHandler
from pymail.net.smtp import SmtpService
from pymail.net.submission import SubmissionHandler, SubmissionSMTP
from pymail.net.tlsstore import ServerCertificates
from pymail.net.web import ClientAutoconfig, PublicWebService
from pymail.proto.imap.names import MailboxLimits
from pymail.store import PostgresSettings, S3Settings, StorageError, Store, open_store
from pymail.store.space import FreeSpace

if TYPE_CHECKING:
    from pymail.delivery.runner import QueueRunner
    from pymail.checks.training import SpamTrainer
    from pymail.net.imap.session import CopyObserver

log = logging.getLogger("pymail")

SHUTDOWN_GRACE_SECONDS = 30.0
#: Seconds the queue runner's deliveries in progress get at a stop; the rest are cancelled
#: and their recipients handed back to the queue (delivered again by the next run).
QUEUE_GRACE_SECONDS = 10.0
#: Orphan sweeps while the disk is below storage.min_free_space, at most this often.
LOW_SPACE_SWEEP_SECONDS = 300.0


class StartupError(Exception):
    """pymail cannot start; the message is one line for the operator."""


def open_configured_store(config: Config) -> Store:
    """The `Store` the config names (cheap: nothing is contacted yet).

    The S3 secret comes from `storage.s3.secret_access_key_file`, else
    `$PYMAIL_S3_SECRET_ACCESS_KEY`, else botocore's usual sources; it is never logged."""
    s3 = config.storage.s3
    secret = os.environ.get("PYMAIL_S3_SECRET_ACCESS_KEY") or None
    if s3.secret_access_key_file is not None:
        try:
            secret = s3.secret_access_key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise StartupError(
                f"storage.s3.secret_access_key_file: cannot read {s3.secret_access_key_file}: "
                f"{getattr(e, 'strerror', None) or e}"
            ) from None
    pg = config.storage.postgres
    try:
        store = open_store(
            config.index_url,
            config.blobs_url,
            s3=S3Settings(
                endpoint_url=s3.endpoint_url,
                region=s3.region,
                access_key_id=s3.access_key_id,
                secret_access_key=secret,
                addressing_style=s3.addressing_style,
                max_connections=s3.max_connections,
            ),
            postgres=PostgresSettings(
                pool_min=pg.pool_min, pool_max=pg.pool_max, connect_timeout=pg.connect_timeout
            ),
        )
    except (ValueError, StorageError, OSError) as e:
        raise StartupError(f"storage: {e}") from None
    store.space = FreeSpace(local_write_paths(config), config.min_free_space,
                            getattr(store.database, "reserve", None))
    return store


def local_write_paths(config: Config) -> list[Path]:
    """The local directories pymail writes to: data_dir (spool, certificates), the
    SQLite index's directory and the file blobs' root (not S3 or PostgreSQL)."""
    paths = [config.server.data_dir]
    for url, scheme in ((config.index_url, "sqlite://"), (config.blobs_url, "file://")):
        if url.startswith(scheme):
            path = Path(url[len(scheme):])
            paths.append(path.parent if scheme == "sqlite://" else path)
    return paths


async def prepare_storage(config: Config, *, check_blobs: bool = True) -> Store:
    """Open, check and migrate the configured storage, with errors as one line.

    `check_blobs=False` skips reaching the blob backend (the directory commands of the
    CLI need only the database, and must work while S3 is down)."""
    store = open_configured_store(config)
    try:
        if check_blobs:
            await store.check()
        else:
            await store.database.check()
        await store.migrate()
    except Exception as e:  # any backend error at start is fatal, named in one line
        await store.close()
        raise StartupError(f"storage: {e}") from None
    return store


def prepare_spool(config: Config) -> None:
    """Make the spool directory (0700: SMTP DATA and IMAP APPEND) and remove the files a
    previous run left there (nobody acknowledged them: a 250 or an APPEND OK comes only
    after the blob is durable)."""
    try:
        removed = Spool(config.spool_dir, config.limits.spool_threshold).prepare()
    except OSError as e:
        raise StartupError(f"spool: cannot prepare {config.spool_dir}: {e.strerror or e}") from None
    if removed:
        log.info("spool: removed %d unfinished message file(s) from %s", removed, config.spool_dir)


def prepare_tls(config: Config) -> ServerCertificates:
    """Load the served certificates (the configured files, [acme]'s, or the embedded
    default's, made here on first start): a `StartupError` (``tls: ...``, one line) for
    an unreadable, malformed, mismatched or expired pair.  Logs what is served and the
    expiry warnings."""
    certificates = ServerCertificates(config)
    try:
        certificates.load()
    except ValueError as e:
        raise StartupError(f"tls: {e}") from None
    log.info("tls: serving %s", certificates.describe())
    if certificates.main.cert == config.tls_dir / "cert.pem":
        log.info("TLS certificate %s (clients trust the CA %s)", certificates.main.cert,
                 config.tls_dir / "ca.pem")
    return certificates


@dataclass
class Worker:
    """One process's services over one storage connection set."""

    config: Config
    reuse_port: bool = False
    store: Store | None = None
    services: list[SmtpService | HttpService | ImapService | Pop3Service | PublicWebService] = field(default_factory=list)
    sweeper: asyncio.Future[None] | None = None
    authenticator: Authenticator | None = None
    #: the served certificates; its `context` goes to every TLS listener (made and loaded
    #: by `_tls_context` when not given)
    certificates: ServerCertificates | None = None
    #: the first (or only) worker: logs expiry warnings and tells systemd of reloads
    announce: bool = True
    #: the certificate files' poller (`ServerCertificates.watch`)
    certificate_watcher: asyncio.Future[None] | None = None
    #: connections per client address (held at once, and opened per minute), shared by
    #: every mail listener of this process (None: both limits are 0)
    limiter: ConnectionLimiter | None = None
    #: the delivery pipeline every message goes through (made at start)
    pipeline: Pipeline | None = None
    #: drains the outbound queue to remote servers (started with the listeners)
    runner: "QueueRunner | None" = None
    #: the inbound checks and the resolver they share with outbound delivery
    checks: Checks | None = None
    resolver: DnsResolver | None = None
    #: told of every IMAP COPY/MOVE (spam training: pymail.checks.training.JunkLearning);
    #: made at start when [checks] names Rspamd's controller (None: nobody listens)
    copy_observer: "CopyObserver | None" = None
    #: teaches Rspamd what users move into and out of Junk (with copy_observer)
    trainer: "SpamTrainer | None" = None
    #: tasks started on the side (a certificate reload after an ACME issuance)
    _background: set[asyncio.Future] = field(default_factory=set)
    #: closed at stop, after the services (clients of helper services)
    _closing: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def start(self) -> list[str]:
        cfg = self.config
        self.store = await prepare_storage(cfg)
        if self.store.space is not None:  # read now, then every few seconds
            await self.store.space.refresh()
            self.store.space.start()
        mail_listeners = ("smtp", "submission", "submissions", "imaps", "imap", "pop3s", "pop3")
        if any(getattr(cfg.listen, name) for name in (*mail_listeners, "https")):
            # Loading (or making) the certificate and key reads files, may wait for the
            # other workers' lock and costs CPU: a thread's work, not the loop's.
            await asyncio.to_thread(self._tls_context)
        # Every mail listener: PROXY headers from the configured load balancers, and one
        # per-address connection count for all protocols of this process.
        trusted = TrustedProxies(cfg.server.proxy_protocol_from)
        limiter = ConnectionLimiter(cfg.limits.connections_per_ip,
                                    rate_per_minute=cfg.limits.connection_rate_per_ip)
        self.limiter = limiter if limiter.enabled else None
        # One pipeline for every way mail arrives (MX, submission, IMAP APPEND, pymail's
        # bounces); outbound copies are DKIM-signed with the keys of [dkim] key_dir.
        self.pipeline = Pipeline(store=self.store, router=Router(self.store.directory),
                                 signer=signer_from_config(cfg), config=cfg)
        # One spool for all: message content over limits.spool_threshold (DATA, an APPEND
        # literal) waits in files there while it arrives (made 0700 and emptied of a
        # previous run's files by `serve`, before any worker starts).
        spool = Spool(cfg.spool_dir, cfg.limits.spool_threshold)
        # One resolver (and its cache) for the inbound checks and outbound delivery.
        self.resolver = resolver_from_config(cfg.dns)
        self.checks = Checks.from_config(cfg, self.resolver)
        if self.copy_observer is None and cfg.checks.rspamd_controller_url:
            await self._start_spam_training()
        handler = MxHandler(
            pipeline=self.pipeline,
            hostname=cfg.server.hostname,
            max_recipients=cfg.limits.recipients,
            postmaster=cfg.server.postmaster_address,
            space=self.store.space,
            checks=self.checks,
        )
        lines = [self.checks.describe()]
        submission_handler = SubmissionHandler(
            pipeline=self.pipeline,
            hostname=cfg.server.hostname,
            max_recipients=cfg.limits.recipients,
            postmaster=cfg.server.postmaster_address,
            service="submission",
            space=self.store.space,
            checks=self.checks,
        )
        # (name, handler, implicit TLS, authenticated submission): the MX offers STARTTLS
        # to whoever wants it (RFC 3207); submission insists on TLS, then AUTH.
        smtp_services = (
            ("smtp", handler, False, False),
            ("submission", submission_handler, False, True),
            ("submissions", submission_handler, True, True),
        )
        for name, smtp_handler, implicit_tls, authenticated in smtp_services:
            addresses = getattr(cfg.listen, name)
            if not addresses:
                continue
            options = {}
            if authenticated:
                options = {"authenticator": self._authenticator(), "service": name,
                           "login_timeout": cfg.limits.login_timeout}
            smtp = SmtpService(
                name,
                [split_hostport(a) for a in addresses],
                smtp_handler,
                hostname=cfg.server.hostname,
                message_size=cfg.limits.message_size,
                timeout=cfg.limits.smtp_timeout,
                spool=spool,
                command_timeout=cfg.limits.command_timeout,
                min_data_rate=cfg.limits.min_data_rate,
                reuse_port=self.reuse_port,
                tls_context=self._tls_context(),
                implicit_tls=implicit_tls,
                require_starttls=authenticated,
                gate=self._connection_gate,
                protocol_class=SubmissionSMTP if authenticated else None,
                protocol_options=options,
                trusted_proxies=trusted,
                limiter=self.limiter,
            )
            lines += await self._bind(name, smtp, addresses, "implicit TLS" if implicit_tls else "STARTTLS")
        watcher = MailboxWatcher(self.store)  # one change feed for both IMAP services
        for name, implicit_tls in (("imaps", True), ("imap", False)):
            addresses = getattr(cfg.listen, name)
            if not addresses:
                continue
            imap = ImapService(
                name,
                [split_hostport(a) for a in addresses],
                self.store,
                self._authenticator(),
                self._tls_context(),
                implicit_tls=implicit_tls,
                reuse_port=self.reuse_port,
                append_limit=cfg.limits.message_size,
                watcher=watcher,
                trusted_proxies=trusted,
                limiter=self.limiter,
                timeouts=ClientTimeouts.from_limits(cfg.limits),
                prelogin_literal=cfg.limits.prelogin_literal,
                mailbox_limits=MailboxLimits(cfg.limits.mailboxes_per_user,
                                             cfg.limits.mailbox_name_length,
                                             cfg.limits.mailbox_depth),
                fetch_sections=cfg.limits.fetch_sections,
                spool=spool,
                pipeline=self.pipeline,
                on_copied=self.copy_observer,
            )
            lines += await self._bind(name, imap, addresses, "implicit TLS" if implicit_tls else "STARTTLS")
        pop3_locks = MaildropLocks()  # one maildrop lock table for pop3 and pop3s
        for name, implicit_tls in (("pop3s", True), ("pop3", False)):
            addresses = getattr(cfg.listen, name)
            if not addresses:
                continue
            pop3 = Pop3Service(
                name,
                [split_hostport(a) for a in addresses],
                self.store,
                self._authenticator(),
                self._tls_context(),
                implicit_tls=implicit_tls,
                locks=pop3_locks,
                reuse_port=self.reuse_port,
                trusted_proxies=trusted,
                limiter=self.limiter,
                timeouts=ClientTimeouts.from_limits(cfg.limits),
            )
            lines += await self._bind(name, pop3, addresses, "implicit TLS" if implicit_tls else "STLS")
        if cfg.listen.http:
            http = HttpService(
                [split_hostport(a) for a in cfg.listen.http], self.store, reuse_port=self.reuse_port,
                checks=self.checks, autoconfig=ClientAutoconfig(cfg, self.store.directory),
            )
            try:
                bound = await http.start()
            except OSError as e:
                await http.stop()
                raise StartupError(f"listen.http: cannot listen on {cfg.listen.http}: {e.strerror or e}") from None
            self.services.append(http)
            lines += [f"http (/healthz, /metrics, autoconfig) listening on {a}" for a in bound]
        # The public web: port 80 (ACME http-01, Thunderbird's file, the rest redirected)
        # and 443 (autoconfig, Autodiscover, .mobileconfig, MTA-STS) - pymail.net.web.
        for name, what in (("web", "HTTP: acme-challenge, autoconfig"),
                           ("https", "TLS: autoconfig, autodiscover, mobileconfig, mta-sts")):
            addresses = getattr(cfg.listen, name)
            if not addresses:
                continue
            site = PublicWebService(name, [split_hostport(a) for a in addresses], cfg, self.store.directory,
                                    tls_context=self._tls_context() if name == "https" else None,
                                    reuse_port=self.reuse_port)
            lines += await self._bind(name, site, addresses, what)
        self._start_queue_runner()
        if self.certificates is not None:
            self.certificate_watcher = asyncio.ensure_future(self.certificates.watch())
        return lines

    async def reload_certificates(self) -> bool:
        """SIGHUP: re-read the certificate files (in a thread); the announcing worker
        tells systemd (RELOADING=1, then READY=1).  False when a file was bad (logged)."""
        if self.certificates is None:
            return False
        if self.announce:
            sdnotify.reloading()
        try:
            return await asyncio.to_thread(self.certificates.reload)
        finally:
            if self.announce:
                sdnotify.ready()

    async def _start_spam_training(self) -> None:
        """Rspamd learns what users move into Junk (spam) and out of it (ham) over IMAP,
        off the command's path (pymail.checks.training)."""
        from pymail.checks.rspamd import RspamdClient
        from pymail.checks.training import JunkLearning, SpamTrainer

        assert self.store is not None
        checks = self.config.checks
        password = None
        if checks.rspamd_password_file is not None:
            try:
                password = (await asyncio.to_thread(checks.rspamd_password_file.read_text)).strip()
            except OSError as e:
                raise StartupError(f"checks.rspamd_password_file: cannot read "
                                   f"{checks.rspamd_password_file}: {e.strerror or e}") from None
        learner = RspamdClient(checks.rspamd_url or checks.rspamd_controller_url,
                               timeout=checks.rspamd_timeout,
                               controller_url=checks.rspamd_controller_url, password=password)
        self.trainer = SpamTrainer(learner, self.store.blobs.get)
        self._closing.append(learner.close)
        self.trainer.start()
        self.copy_observer = JunkLearning(self.trainer)

    def _start_queue_runner(self) -> None:
        """The outbound queue's runner for this process: remote delivery over the
        configured resolver, woken by every message the pipeline queues."""
        from pymail.delivery.runner import QueueRunner

        assert self.store is not None and self.pipeline is not None
        if self.store.queue is None:
            return
        from pymail.delivery.pipeline import now_utc
        from pymail.delivery.remote import RemoteDelivery

        sender = RemoteDelivery(config=self.config, resolver=self.resolver, clock=now_utc)
        self.runner = QueueRunner(queue=self.store.queue, blobs=self.store.blobs, sender=sender,
                                  pipeline=self.pipeline, config=self.config, clock=now_utc)
        self.pipeline.on_queued(self.runner.wake)
        self.runner.start()

    def _authenticator(self) -> Authenticator:
        """The one `Authenticator` of this process ([auth]: LDAP domains, bans kept in
        the index so that every worker and node shares them)."""
        from pymail.auth.service import authenticator_from_config

        assert self.store is not None
        if self.authenticator is None:
            try:
                self.authenticator = authenticator_from_config(
                    self.config.auth, self.store.directory, self.store.bans
                )
            except ValueError as e:
                raise StartupError(str(e)) from None
        return self.authenticator

    async def _bind(self, name: str, service: SmtpService | ImapService | Pop3Service | PublicWebService,
                    addresses: list[str], tls: str) -> list[str]:
        """Start `service` on its addresses; the start-up log lines.  A port that cannot
        be bound stops the start with one line naming the setting."""
        try:
            bound = await service.start()
        except OSError as e:
            await service.stop(0)
            raise StartupError(f"listen.{name}: cannot listen on {addresses}: {e.strerror or e}") from None
        self.services.append(service)
        return [f"{name} ({tls}) listening on {a}" for a in bound]

    async def _connection_gate(self, client_ip: str) -> str | None:
        """What SMTP says to a client before the greeting: ``421 4.7.0`` to a banned
        address (the ban is shared through the index), nothing otherwise."""
        if await self._authenticator().is_banned(client_ip):
            return "421 4.7.0 Your address is temporarily blocked, try again later"
        return None

    def _tls_context(self) -> ssl.SSLContext:
        """The server TLS context every listener shares, for the life of the process
        (`ServerCertificates.context`: the certificate is chosen per handshake)."""
        if self.certificates is None:
            certificates = ServerCertificates(self.config, warn_expiry=self.announce)
            try:
                certificates.load()
            except ValueError as e:
                raise StartupError(f"tls: {e}") from None
            self.certificates = certificates
        return self.certificates.context

    def acme_manager(self):
        """The ACME client for [acme] (pymail.ops.acme), answering challenges through the
        store every listener reads; a new certificate is reloaded into the listeners."""
        from pymail.ops.acme import AcmeManager, challenge_store

        return AcmeManager(self.config, challenge_store(self.config), self._acme_issued)

    def _acme_issued(self) -> None:
        """A new ACME certificate is in acme_dir/live: this worker loads it now (the
        files are read in a thread); the other workers notice it by polling
        (``tls.check_interval``)."""
        if self.certificates is None:
            return
        task = asyncio.ensure_future(asyncio.to_thread(self.certificates.reload))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def start_sweeper(self) -> None:
        """Sweep orphan blobs every `storage.orphan_sweep_interval` seconds."""
        interval = self.config.storage.orphan_sweep_interval
        if interval > 0 and self.store is not None:
            self.sweeper = asyncio.ensure_future(self._sweep_forever(interval))

    async def _sweep_forever(self, interval: float) -> None:
        """Every `interval` seconds; every `LOW_SPACE_SWEEP_SECONDS` while the disk is
        low, so that the blobs of expunged mail give their space back sooner."""
        from pymail.store.gc import sweep_orphans

        assert self.store is not None
        loop = asyncio.get_running_loop()
        space = self.store.space
        while True:
            started = loop.time()
            while (elapsed := loop.time() - started) < interval:
                if space is not None and space.low and elapsed >= LOW_SPACE_SWEEP_SECONDS:
                    break
                await asyncio.sleep(min(60.0, interval - elapsed))
            try:
                await sweep_orphans(
                    self.store.blobs, self.store.index, grace_seconds=self.config.storage.orphan_grace
                )
            except StorageError as e:
                log.warning("orphan sweep failed, will retry: %s", e)

    async def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
        if self.certificate_watcher is not None:
            self.certificate_watcher.cancel()
        if self.store is not None and self.store.space is not None:
            self.store.space.stop()
        # The queue runner stops claiming and finishes (or hands back) what it holds while
        # the listeners finish their sessions; the store closes after both.
        stopping = [s.stop(SHUTDOWN_GRACE_SECONDS) for s in self.services]
        if self.runner is not None:
            stopping.append(self.runner.stop(QUEUE_GRACE_SECONDS))
        await asyncio.gather(*stopping)
        if self.trainer is not None:
            await self.trainer.stop()
        for close in self._closing:
            await close()
        if self.checks is not None:
            await self.checks.close()
        if self.store is not None:
            await self.store.close()


def serve(config: Config) -> int:
    """Run the daemon in the foreground until SIGTERM/SIGINT; the exit code
    (pymail.process.serve, imported late: that module imports this one)."""
    from pymail.process import serve as serve_processes

    return serve_processes(config)
