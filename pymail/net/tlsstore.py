"""The certificates pymail serves: one TLS context for every listener, reloaded in place.

`ServerCertificates` owns them.  Its `context` is one `ssl.SSLContext` made once and
kept for the life of the process: every listener (SMTP STARTTLS, submissions, IMAP(S),
POP3(S), the public HTTPS service) is given that object.  The certificates themselves
live in separate inner contexts, one per certificate/key pair, rebuilt on `reload()`.

How a new certificate reaches new handshakes without replacing the object the listeners
hold: the outer context has an ``sni_callback`` (OpenSSL's servername callback), which
OpenSSL calls for every ClientHello, with the requested name or with ``None`` when the
client sends no SNI (checked with OpenSSL 3.0 over TLS 1.2 and 1.3: an IP-literal or a
name-less client gets the callback too).  The callback sets ``ssl_object.context`` to
the inner context of the certificate chosen (OpenSSL ``SSL_set_SSL_CTX``), from the
snapshot current at that moment.  The other way, `load_cert_chain` on the shared
context, was rejected: it loads the chain and then the key in two steps, so a handshake
between them, or a key that fails to load, leaves the shared context with a new
certificate and a missing or mismatched key; here a new pair is complete and checked
before one reference assignment (atomic under the GIL) puts it in service, and a bad
file never touches what is served.  A connection keeps the inner context it started
with (its SSL object holds a reference), so open sessions keep their certificate.
Protocol settings (TLS 1.2 minimum, no compression, no renegotiation) are on the outer
context, which the SSL object takes them from, and on every inner one as well.

Choice per handshake (RFC 6066 section 3, SNI), in order:

1. with ``[acme]`` enabled, a pending tls-alpn-01 challenge for the name
   (pymail.net.challenges, RFC 8737; the callback cannot see the client's ALPN offer, so
   during the seconds a challenge is pending any client asking for that name gets the
   validation certificate);
2. a certificate whose subjectAltName has the name exactly (the main one first, then
   ``[tls] certificates`` in order), then one with a matching wildcard (``*.example.com``
   matches exactly one leftmost label, RFC 6125 section 6.4.3);
3. the main certificate (also for clients that send no SNI).

The main pair: ``[tls] cert``/``key``; else, with ``[acme]`` enabled and both files
present, ``<acme_dir>/live/cert.pem`` and ``key.pem``; else the embedded default
(pymail.net.certs).  The choice is made again at each reload.

Invariants:

* `load()` raises ``ValueError`` with one line for an unreadable, malformed, mismatched
  or expired pair; `reload()` never raises: a bad new file is logged as an error and the
  certificates in service stay.
* Reloads are serialised (a lock; they run in threads), and the signature of the files
  (stat of each path and of its symlink target: certbot renew replaces the symlinks in
  ``live/``) is taken before they are read, so a change during a reload is seen next time;
  a bad set of files is not read again until the signature changes.
* The callback does no file I/O except the one ``stat`` of a tls-alpn-01 challenge file
  with ``[acme]`` on; it never raises (a failure serves the main certificate).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

from pymail.net.certs import ensure_embedded_certificates, make_server_context
from pymail.net.challenges import ChallengeStore

if TYPE_CHECKING:
    from pymail.config import Config

__all__ = ["ServedCertificate", "ServerCertificates", "load_pair"]

log = logging.getLogger("pymail.tls")

#: How often the expiry warning is repeated while a certificate is close to expiry.
WARNING_REPEAT_SECONDS = 86400.0
#: The longest the poller sleeps (the expiry gauge is refreshed at least this often).
TICK_SECONDS = 60.0
PROMETHEUS_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # pymail.metrics.ENV
#: A change seen by the poller is loaded after the files stayed the same this long
#: (certbot replaces cert, chain, fullchain and privkey one after the other).
SETTLE_SECONDS = 1.0


@dataclass(frozen=True)
class ServedCertificate:
    """One certificate/key pair as loaded: its own context and what the log says of it."""

    cert: Path  #: the PEM chain file (leaf first)
    key: Path  #: its private key file
    context: ssl.SSLContext  #: a server context holding just this pair
    leaf: x509.Certificate  #: the first certificate of the chain
    names: tuple[str, ...]  #: DNS subjectAltNames, lower case (wildcards as "*.x.y")

    @property
    def name(self) -> str:
        """The first DNS subjectAltName, else the file (the metric's label)."""
        return self.names[0] if self.names else str(self.cert)

    @property
    def not_after(self) -> dt.datetime:
        return self.leaf.not_valid_after_utc

    def describe(self) -> str:
        """``CERT (serial HEX, expires ISO-TIME)`` for the log."""
        return (f"{self.cert} (serial {self.leaf.serial_number:X}, "
                f"expires {self.not_after.strftime('%Y-%m-%dT%H:%M:%SZ')})")


def load_pair(cert: Path, key: Path, *, now: dt.datetime | None = None) -> ServedCertificate:
    """Load and check one pair; ``ValueError`` (one line naming the file) when it is
    unreadable, not PEM, mismatched, or expired at `now` (aware UTC, default the time)."""
    context = make_server_context(cert, key)  # reads, parses and matches the two files
    try:
        leaf = x509.load_pem_x509_certificate(Path(cert).read_bytes())
    except (OSError, ValueError) as e:  # replaced between the two reads
        raise ValueError(f"TLS certificate {cert}: cannot read ({e})") from None
    now = now or dt.datetime.now(dt.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise ValueError(f"TLS certificate {cert} expired on "
                         f"{leaf.not_valid_after_utc.strftime('%Y-%m-%d %H:%M:%SZ')}")
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return ServedCertificate(Path(cert), Path(key), context, leaf, names)


@dataclass(frozen=True)
class _Snapshot:
    """What is served, replaced as a whole: the main pair, the SNI pairs, their names."""

    main: ServedCertificate
    extra: tuple[ServedCertificate, ...]
    exact: dict[str, ServedCertificate] = field(default_factory=dict)
    wildcard: dict[str, ServedCertificate] = field(default_factory=dict)  # "x.y" for *.x.y

    @classmethod
    def of(cls, main: ServedCertificate, extra: tuple[ServedCertificate, ...]) -> "_Snapshot":
        exact: dict[str, ServedCertificate] = {}
        wildcard: dict[str, ServedCertificate] = {}
        for served in (main, *extra):  # the first pair naming a name keeps it
            for name in served.names:
                if name.startswith("*."):
                    wildcard.setdefault(name[2:], served)
                else:
                    exact.setdefault(name, served)
        return cls(main, extra, exact, wildcard)

    @property
    def all(self) -> tuple[ServedCertificate, ...]:
        return (self.main, *self.extra)

    def choose(self, server_name: str | None) -> ServedCertificate:
        """The pair for a client asking for `server_name` (RFC 6066 section 3)."""
        if not server_name:
            return self.main
        name = server_name.lower().rstrip(".")
        if (served := self.exact.get(name)) is not None:
            return served
        _, dot, parent = name.partition(".")
        if dot and (served := self.wildcard.get(parent)) is not None:
            return served
        return self.main

    def describe(self) -> str:
        return "; ".join(s.describe() for s in self.all)


class ServerCertificates:
    """The served certificates of one process (see the module docstring).

    `clock` (aware UTC datetimes) is injectable for tests.  `warn_expiry` off: this
    process does not log expiry warnings (the other workers of a prefork server, so
    that the warning is logged once)."""

    def __init__(self, config: "Config", *, clock: Callable[[], dt.datetime] | None = None,
                 warn_expiry: bool = True) -> None:
        self.config = config
        self.clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
        self.warn_expiry = warn_expiry
        self.challenges = ChallengeStore(config.acme_dir / "challenges")
        self._acme = config.acme.enabled
        self._snapshot: _Snapshot | None = None
        self._signature: tuple | None = None  # of the files as last read (ok or not)
        self._lock = threading.Lock()
        self._labels: set[str] = set()
        #: the context every listener holds, for the life of the process
        self.context = _protocol_context()
        self.context.sni_callback = self._select

    # ---------------------------------------------------------------- loading

    @property
    def served(self) -> tuple[ServedCertificate, ...]:
        """The pairs in service, the main one first (empty before `load`)."""
        return self._snapshot.all if self._snapshot is not None else ()

    @property
    def main(self) -> ServedCertificate:
        assert self._snapshot is not None, "load() first"
        return self._snapshot.main

    def describe(self) -> str:
        """``CERT (serial ..., expires ...)`` of every pair in service, "; " between."""
        return self._snapshot.describe() if self._snapshot is not None else "(none)"

    def main_pair(self) -> tuple[Path, Path, bool]:
        """(cert, key, embedded) of the main pair, chosen as the module docstring says.
        The embedded default's files are made (or kept) here."""
        tls = self.config.tls
        if tls.cert is not None and tls.key is not None:
            return tls.cert, tls.key, False
        if self._acme:
            cert, key = self._acme_live()
            if cert.exists() and key.exists():
                return cert, key, False
        try:
            files = ensure_embedded_certificates(self.config.tls_dir, self.config.server.hostname)
        except OSError as e:
            raise ValueError(f"cannot create certificates in {self.config.tls_dir}: "
                             f"{e.strerror or e}") from None
        return files.cert, files.key, True

    def load(self) -> None:
        """Read every pair and put them in service; ``ValueError`` (one line) when one
        is unusable (then nothing changes).  Logs the expiry warnings."""
        with self._lock:
            self._load_locked()
        self.check_expiry()

    def reload(self) -> bool:
        """Re-read the files: new connections get the new certificates, open ones keep
        theirs.  False (an error logged, the old ones still served) when one is bad."""
        try:
            with self._lock:
                self._load_locked()
        except ValueError as e:
            log.error("tls: reload failed, still serving %s: %s", self.describe(), e)
            return False
        log.info("tls: reloaded: %s", self.describe())
        self.check_expiry()
        self.update_metrics()
        return True

    def _load_locked(self) -> None:
        now = self.clock()
        cert, key, _ = self.main_pair()  # (makes the embedded default's files if needed)
        # Before reading, and kept even when the files are bad: no retry until they change.
        self._signature = self._file_signature()
        main = load_pair(cert, key, now=now)
        extra = tuple(load_pair(p.cert, p.key, now=now) for p in self.config.tls.certificates)
        self._snapshot = _Snapshot.of(main, extra)

    def _acme_live(self) -> tuple[Path, Path]:
        live = self.config.acme_dir / "live"
        return live / "cert.pem", live / "key.pem"

    # ------------------------------------------------------------- watching

    def _watched(self) -> list[Path]:
        tls = self.config.tls
        paths: list[Path] = []
        if tls.cert is not None and tls.key is not None:
            paths += [tls.cert, tls.key]
        else:
            if self._acme:
                paths += list(self._acme_live())
            paths += [self.config.tls_dir / "cert.pem", self.config.tls_dir / "key.pem"]
        for pair in tls.certificates:
            paths += [pair.cert, pair.key]
        return paths

    def _file_signature(self) -> tuple:
        """For each watched path: the link itself (lstat) and what it resolves to (stat,
        through every symlink, and the resolved path)."""
        parts = []
        for path in self._watched():
            entry: list[object] = [str(path)]
            for look in (os.lstat, os.stat):
                try:
                    st = look(path)
                except OSError as e:
                    entry.append(e.errno)
                else:
                    entry.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
            entry.append(os.path.realpath(path))
            parts.append(tuple(entry))
        return tuple(parts)

    def changed(self) -> bool:
        """True when a watched file (or a symlink on its way) differs from the last read."""
        return self._file_signature() != self._signature

    def check_files(self) -> bool:
        """Reload when the files changed since they were last read; True if they had."""
        if not self.changed():
            return False
        self.reload()
        return True

    async def watch(self) -> None:
        """Run for the life of the worker: the file poll every ``[tls] check_interval``
        (0: never), the expiry gauge refreshed, the warning repeated once a day."""
        interval = self.config.tls.check_interval
        loop = asyncio.get_running_loop()
        last_check = last_warning = loop.time()
        self.update_metrics()
        while True:
            tick = min(TICK_SECONDS, interval) if interval > 0 else TICK_SECONDS
            await asyncio.sleep(tick)
            try:
                if interval > 0 and loop.time() - last_check >= interval - 1e-3:
                    last_check = loop.time()
                    if await asyncio.to_thread(self.changed):
                        await asyncio.sleep(SETTLE_SECONDS)
                        await asyncio.to_thread(self.check_files)
                if loop.time() - last_warning >= WARNING_REPEAT_SECONDS:
                    last_warning = loop.time()
                    self.check_expiry()
                self.update_metrics()
            except Exception:  # the poll must outlive any surprise; say what it was
                log.exception("tls: certificate check failed")

    # --------------------------------------------------------------- expiry

    def check_expiry(self) -> list[str]:
        """Log a warning for each pair expiring within ``[tls] expiry_warning``; the lines."""
        lines: list[str] = []
        limit = self.config.tls.expiry_warning
        now = self.clock()
        for served in self.served:
            left = (served.not_after - now).total_seconds()
            if left <= limit:
                lines.append(f"tls: certificate {served.name} ({served.cert}) expires in "
                             f"{left / 86400:.1f} days ({served.not_after:%Y-%m-%d %H:%M:%SZ}): "
                             "renew it")
        if self.warn_expiry:
            for line in lines:
                log.warning(line)
        return lines

    def update_metrics(self) -> None:
        """Set pymail_tls_certificate_expiry_seconds for every pair in service."""
        from pymail.metrics import TLS_CERTIFICATE_EXPIRY

        now = self.clock()
        labels = set()
        for served in self.served:
            labels.add(served.name)
            TLS_CERTIFICATE_EXPIRY.labels(served.name).set((served.not_after - now).total_seconds())
        # A name no longer served (its certificate's SAN changed) is dropped; in
        # multiprocess mode (pymail serve) prometheus_client cannot drop a label, so it
        # keeps its last value until the restart.
        if not os.environ.get(PROMETHEUS_MULTIPROC_ENV):
            for gone in self._labels - labels:
                try:
                    TLS_CERTIFICATE_EXPIRY.remove(gone)
                except KeyError:
                    pass
        self._labels = labels

    # ------------------------------------------------------------ handshake

    def _select(self, ssl_object: ssl.SSLObject, server_name: str | None,
                _outer: ssl.SSLContext) -> None:
        """OpenSSL's servername callback, for every handshake (see the module docstring)."""
        try:
            context = None
            if self._acme and server_name:
                context = self.challenges.tls_alpn_context(server_name)
            if context is None:
                snapshot = self._snapshot
                if snapshot is None:
                    return None  # nothing loaded: the handshake fails (no certificate)
                context = snapshot.choose(server_name).context
            ssl_object.context = context
        except Exception:  # never fail a handshake for a bug of ours: the main certificate
            log.exception("tls: choosing a certificate for %r failed", server_name)
            if self._snapshot is not None:
                ssl_object.context = self._snapshot.main.context
        return None


def _protocol_context() -> ssl.SSLContext:
    """The outer context: protocol settings only, certificates come from the callback.
    Same settings as pymail.net.certs.make_server_context."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # RFC 8996: TLS 1.0 and 1.1 are deprecated; RFC 9325 section 3.1.1: TLS 1.2 minimum.
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION  # CRIME; RFC 9325 section 3.3
    context.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return context
