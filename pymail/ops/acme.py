"""pymail's built-in ACME client (RFC 8555): a certificate for ``Config.acme_names``,
kept renewed.

Over certbot's ``acme`` library and josepy, which are synchronous (``requests``): every
exchange with the CA runs in a thread (`asyncio.to_thread`), never on the event loop.

Files under ``Config.acme_dir`` (0700):

=========================  ==========================================================
``account.key``            the account key (RSA 2048, PEM, 0600): made once, kept
``account.json``           the registration: directory URL, account URL, contact (0600),
                           so the same account is used for every order (RFC 8555 7.3)
``certs/<stamp>/``         one directory per issuance (0700): ``cert.pem`` (the full
                           chain, leaf first) and ``key.pem`` (a new key each time, 0600)
``live``                   a symlink to the newest ``certs/<stamp>``: what is served
                           (``live/cert.pem`` + ``live/key.pem``); replaced by one rename,
                           so a reader never sees the new chain with the old key
``challenges/``            pending challenges (pymail.net.challenges.ChallengeStore)
``lock``                   flock'd during an issuance (the server and ``pymail acme renew``)
=========================  ==========================================================

Invariants: a challenge is in the ChallengeStore only while the CA validates it, and is
removed whatever the outcome; a failure is an `AcmeError` whose message is one line
naming the CA's error (or why the CA could not be reached); `AcmeManager.run` never
raises: it logs one WARNING line per failed attempt and tries again with backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from acme import challenges  # certbot's ACME library; imported only when [acme] is used

if TYPE_CHECKING:
    from pymail.config import Config
    from pymail.net.challenges import ChallengeStore

__all__ = [
    "ACME_IDENTIFIER_OID",
    "AcmeError",
    "AcmeManager",
    "CertificateState",
    "certificate_state",
    "challenge_store",
    "renewal_reason",
    "tls_alpn_certificate",
]

log = logging.getLogger("pymail.acme")

#: id-pe-acmeIdentifier, the tls-alpn-01 validation certificate's extension (RFC 8737 6.1)
ACME_IDENTIFIER_OID = "1.3.6.1.5.5.7.1.31"
#: How often the renewal loop looks at the certificate (sooner when renewal is due sooner).
CHECK_INTERVAL = 6 * 3600.0
#: First wait after a failed attempt, doubled up to RETRY_MAX.  Let's Encrypt allows 5
#: failed validations per account and host name per hour: 5 min, 10, 20, ... stays under.
RETRY_FIRST = 300.0
RETRY_MAX = 6 * 3600.0
#: How long the CA gets to validate and to issue, per order.
ORDER_TIMEOUT = 90.0
#: Seconds per request to the CA.
NETWORK_TIMEOUT = 30
USER_AGENT = "pymail-acme"


class AcmeError(Exception):
    """Getting a certificate failed; the message is one line for the log."""


def challenge_store(config: "Config") -> "ChallengeStore":
    """The store every listener answers challenges from: ``<acme_dir>/challenges``."""
    from pymail.net.challenges import ChallengeStore

    return ChallengeStore(config.acme_dir / "challenges")


# ------------------------------------------------------------------- the served certificate


@dataclass(frozen=True)
class CertificateState:
    """What ``live/cert.pem`` holds (None: no usable certificate there)."""

    names: list[str]
    not_after: datetime.datetime
    serial: int


def certificate_state(acme_dir: Path) -> CertificateState | None:
    from cryptography import x509

    try:
        leaf = x509.load_pem_x509_certificate((acme_dir / "live" / "cert.pem").read_bytes())
        if not (acme_dir / "live" / "key.pem").is_file():
            return None
    except (OSError, ValueError):
        return None
    return CertificateState(_dns_names(leaf), leaf.not_valid_after_utc, leaf.serial_number)


def renewal_reason(config: "Config", now: datetime.datetime | None = None) -> str | None:
    """Why a new certificate is needed now, or None while the current one will do."""
    state = certificate_state(config.acme_dir)
    if state is None:
        return "no certificate yet"
    if sorted(state.names) != sorted(set(config.acme_names)):
        return f"names changed (the certificate has {', '.join(state.names)})"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if state.not_after - now <= datetime.timedelta(seconds=config.acme.renew_before):
        return f"it expires {state.not_after:%Y-%m-%d %H:%M}Z"
    return None


def _dns_names(cert) -> list[str]:
    from cryptography import x509

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [name.lower() for name in san.get_values_for_type(x509.DNSName)]


# ----------------------------------------------------------------------------- challenges


def tls_alpn_certificate(name: str, key_authorization: str) -> tuple[bytes, bytes]:
    """(cert PEM, key PEM): the self-signed tls-alpn-01 validation certificate for
    `name` (RFC 8737 section 3): subjectAltName `name` and the critical acmeIdentifier
    extension holding the SHA-256 of the key authorization as a DER OCTET STRING."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = x509.Name([])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(ACME_IDENTIFIER_OID),
                                                      b"\x04\x20" + digest), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


# ------------------------------------------------------------------------------- manager


class AcmeManager:
    """Gets and renews the certificate at ``acme_dir/live`` from ``[acme]``'s CA.

    `on_issued` is called (on the event loop) after each new certificate is in place:
    the server reloads its TLS contexts."""

    def __init__(self, config: "Config", challenges: "ChallengeStore", on_issued: Callable[[], None],
                 *, check_interval: float = CHECK_INTERVAL, retry_first: float = RETRY_FIRST,
                 retry_max: float = RETRY_MAX) -> None:
        self.config = config
        self.challenges = challenges
        self.on_issued = on_issued
        self.check_interval = check_interval
        self.retry_first = retry_first
        self.retry_max = retry_max
        #: consecutive failed attempts (0 after a success)
        self.failures = 0

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(self.config.acme_names))

    async def run(self) -> None:
        """Renew when due (at start, then every `check_interval` or when the renewal
        point comes, whichever is first); never raises except CancelledError."""
        delay = self.retry_first
        while True:
            try:
                reason = await asyncio.to_thread(renewal_reason, self.config)
                if reason is not None:
                    log.info("acme: requesting a certificate for %s from %s: %s",
                             ", ".join(self.names), self.config.acme.directory_url, reason)
                    await self.issue()
                delay = self.retry_first
                wait = await asyncio.to_thread(self._until_renewal)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # AcmeError, or a bug: one line, retried, never a crash
                self.failures += 1
                message = str(e) if isinstance(e, AcmeError) else f"{type(e).__name__}: {e}"
                log.warning("acme: cannot get a certificate for %s from %s: %s (retry in %s)",
                            ", ".join(self.names), self.config.acme.directory_url,
                            _one_line(message), _duration(delay))
                log.debug("acme: attempt failed", exc_info=not isinstance(e, AcmeError))
                wait, delay = delay, min(delay * 2, self.retry_max)
            await asyncio.sleep(wait)

    def _until_renewal(self) -> float:
        state = certificate_state(self.config.acme_dir)
        if state is None:
            return 0.0
        due = state.not_after - datetime.timedelta(seconds=self.config.acme.renew_before)
        left = (due - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        if left <= 0:  # due although just issued: renew_before >= the CA's lifetime
            log.warning("acme: the certificate lasts until %s, less than acme.renew_before: "
                        "renewing again in %s", state.not_after.strftime("%Y-%m-%d %H:%M:%SZ"),
                        _duration(self.check_interval))
            return self.check_interval
        return min(self.check_interval, left + 1.0)

    async def issue(self) -> CertificateState:
        """Order, validate, finalize and install a new certificate now; then on_issued()."""
        state = await asyncio.to_thread(self._issue)
        self.failures = 0
        log.info("acme: issued certificate for %s (expires %s)", ", ".join(state.names),
                 state.not_after.strftime("%Y-%m-%d %H:%M:%SZ"))
        try:
            self.on_issued()
        except Exception as e:  # the files are in place; a reload failure is its own event
            log.warning("acme: the new certificate is in %s but reloading failed: %s",
                        self.config.acme_dir / "live", _one_line(str(e)))
        return state

    # ------------------------------------------------------------- in the thread

    def _issue(self) -> CertificateState:
        import requests
        from acme import errors, messages

        acme_dir = self.config.acme_dir
        _private_dir(acme_dir)
        _private_dir(self.challenges.directory)  # (the store makes only its leaves 0700)
        with open(acme_dir / "lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._issue_locked()
            except AcmeError:
                raise
            except messages.Error as e:
                raise AcmeError(f"the CA says: {_problem(e)}") from None
            except errors.ValidationError as e:
                raise AcmeError(_validation_failures(e)) from None
            except errors.TimeoutError:
                raise AcmeError(f"the CA did not finish the order within {ORDER_TIMEOUT:.0f}s") from None
            except (errors.Error, ValueError) as e:
                response = next((a for a in getattr(e, "args", ()) if isinstance(a, requests.Response)), None)
                if response is not None:  # not a problem document: e.g. a wrong directory URL
                    raise AcmeError(f"HTTP {response.status_code} {response.reason} from {response.url} "
                                    "(is acme.directory_url right?)") from None
                raise AcmeError(f"unexpected answer from the CA: {e}") from None
            except requests.exceptions.SSLError as e:
                raise AcmeError(f"TLS to {self.config.acme.directory_url} failed: {_root_cause(e)}"
                                + ("" if self.config.acme.ca_file else
                                   " (a private CA needs [acme] ca_file)")) from None
            except requests.exceptions.RequestException as e:
                raise AcmeError(f"cannot reach {self.config.acme.directory_url}: {_root_cause(e)}") from None
            except OSError as e:
                raise AcmeError(f"{getattr(e, 'filename', None) or acme_dir}: {e.strerror or e}") from None

    def _issue_locked(self) -> CertificateState:
        from acme import client, crypto_util, messages

        acme = self.config.acme
        acme_dir = self.config.acme_dir
        account_key = _account_key(acme_dir / "account.key")
        verify: bool | str = True
        if acme.ca_file is not None:
            if not acme.ca_file.is_file():
                raise AcmeError(f"acme.ca_file: cannot read {acme.ca_file}")
            verify = str(acme.ca_file)
        net = client.ClientNetwork(account_key, verify_ssl=verify, user_agent=USER_AGENT,  # type: ignore[arg-type]
                                   timeout=NETWORK_TIMEOUT)
        assert acme.directory_url is not None
        directory = client.ClientV2.get_directory(acme.directory_url, net)
        ca = client.ClientV2(directory, net)
        self._account(ca, acme_dir / "account.json", fresh=False)

        key_pem = _certificate_key(acme.key_type)
        csr_pem = crypto_util.make_csr(key_pem, self.names)
        try:
            order = ca.new_order(csr_pem)
        except messages.Error as e:
            if e.code not in ("accountDoesNotExist", "unauthorized"):
                raise
            # The CA forgot the account (or it was deactivated): register the key again.
            self._account(ca, acme_dir / "account.json", fresh=True)
            order = ca.new_order(csr_pem)
        deadline = time.monotonic() + ORDER_TIMEOUT
        placed: list[Callable[[], None]] = []
        try:
            pending = [self._answer(ca, account_key, authz, placed) for authz in order.authorizations]
            order = order.update(authorizations=self._poll(ca, pending, deadline))
        finally:
            for remove in placed:  # RFC 8555 8.2: validation is over, whatever the outcome
                with contextlib.suppress(OSError, ValueError):
                    remove()
        finished = datetime.datetime.now() + datetime.timedelta(seconds=max(1.0, deadline - time.monotonic()))
        order = ca.finalize_order(order, finished)
        return _install(acme_dir, order.fullchain_pem.encode("ascii"), key_pem, self.names)

    def _account(self, ca, path: Path, *, fresh: bool) -> None:
        """Use the stored registration, or register the account key (RFC 8555 7.3)."""
        from acme import errors, messages

        acme = self.config.acme
        contact = [f"mailto:{acme.contact}"] if acme.contact else []
        stored: dict[str, Any] = {}
        if not fresh:
            with contextlib.suppress(OSError, ValueError):
                stored = json.loads(path.read_text("utf-8"))
        if stored.get("directory") == acme.directory_url and isinstance(stored.get("uri"), str):
            regr = messages.RegistrationResource(uri=stored["uri"], body=messages.Registration())
            ca.net.account = regr
            if stored.get("contact") != contact:  # contact changed in the config
                ca.update_registration(regr, messages.Registration.from_data(email=acme.contact)
                                       if acme.contact else messages.Registration(contact=()))
                _write_private(path, json.dumps({**stored, "contact": contact}).encode())
            return
        registration = messages.NewRegistration.from_data(email=acme.contact, terms_of_service_agreed=True)
        try:
            regr = ca.new_account(registration)
            uri = regr.uri
        except errors.ConflictError as e:  # this key already has an account: its URL
            uri = e.location
            ca.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
        _write_private(path, json.dumps({"directory": acme.directory_url, "uri": uri,
                                         "contact": contact}).encode())
        log.info("acme: account %s registered", uri)

    def _answer(self, ca, account_key, authz, placed: list[Callable[[], None]]):
        """Put the configured challenge of one authorization in the store and tell the
        CA it is ready (RFC 8555 7.5.1); an already valid authorization is left alone."""
        from acme import messages

        if authz.body.status == messages.STATUS_VALID:
            return authz
        name = authz.body.identifier.value
        wanted = self.config.acme.challenge
        offered = {}
        for challb in authz.body.challenges:
            data = challb.chall.to_partial_json()
            offered[data.get("type")] = (challb, data)
        if wanted not in offered:
            raise AcmeError(f"the CA offers no {wanted} challenge for {name} (it offers "
                            f"{', '.join(sorted(str(t) for t in offered)) or 'none'}): set [acme] challenge")
        challb, data = offered[wanted]
        token = str(data.get("token", ""))
        thumbprint = _b64url(account_key.thumbprint())
        key_authorization = f"{token}.{thumbprint}"  # RFC 8555 section 8.1
        if wanted == "http-01":
            self.challenges.put_http01(token, key_authorization)
            placed.append(lambda: self.challenges.remove_http01(token))
        else:
            cert_pem, key_pem = tls_alpn_certificate(name, key_authorization)
            self.challenges.put_tls_alpn(name, cert_pem, key_pem)
            placed.append(lambda: self.challenges.remove_tls_alpn(name))
        # Not ClientV2.answer_challenge: it insists on a Link rel="up" header that some
        # servers (pebble 2.4) leave out; the authorization is polled anyway.
        ca.net.post(challb.uri, _Ready())
        return authz

    @staticmethod
    def _poll(ca, authorizations, deadline: float):
        """Each authorization until it is no longer pending (RFC 8555 7.5.1), briefly
        at first (validation often takes well under a second), at most every 2 s."""
        from acme import errors, messages

        done, failed = [], []
        for authz in authorizations:
            pause = 0.2
            while authz.body.status in (messages.STATUS_PENDING, messages.STATUS_PROCESSING):
                if time.monotonic() > deadline:
                    raise errors.TimeoutError()
                time.sleep(pause)
                pause = min(pause * 2, 2.0)
                authz, _ = ca.poll(authz)
            (done if authz.body.status == messages.STATUS_VALID else failed).append(authz)
        if failed:
            raise errors.ValidationError(failed)
        return done


class _Ready(challenges.ChallengeResponse):
    """The empty object a client POSTs to a challenge URL to say it is ready (RFC 8555
    section 7.5.1), for any challenge type (acme 3+ knows no tls-alpn-01); not registered
    as a type of its own: its JSON is ``{}``."""

    typ = "ready"

    def __bool__(self) -> bool:
        # ClientNetwork sends an empty body (a POST-as-GET, RFC 8555 6.3) for a falsy
        # object, and a field-less josepy object is an empty mapping.
        return True


# ---------------------------------------------------------------------------- files


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def _write_private(path: Path, data: bytes) -> None:
    """`data` at `path`, atomically (temp file, fsync, rename), mode 0600."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _account_key(path: Path):
    """The account key at `path`, made (RSA 2048, 0600) the first time."""
    import josepy
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_private(path, pem)
        log.info("acme: new account key %s", path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except ValueError:
        raise AcmeError(f"{path}: not a PEM private key (move it away to make a new account)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise AcmeError(f"{path}: not an RSA key")
    return josepy.JWKRSA(key=key)


def _certificate_key(key_type: str) -> bytes:
    """A new certificate key, PEM (PKCS#8): RSA 2048 or ECDSA P-256."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = (ec.generate_private_key(ec.SECP256R1()) if key_type == "ecdsa"
           else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _install(acme_dir: Path, fullchain: bytes, key_pem: bytes, names: list[str]) -> CertificateState:
    """Check the chain against our key and names, write it as a new ``certs/<stamp>``
    and point ``live`` at it with one rename; older issuances but the previous go."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    chain = x509.load_pem_x509_certificates(fullchain)
    leaf = chain[0]
    key = serialization.load_pem_private_key(key_pem, password=None)
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if leaf.public_key().public_bytes(*public) != key.public_key().public_bytes(*public):
        raise AcmeError("the CA's certificate is not for the key we sent")
    got = _dns_names(leaf)
    if not set(names) <= set(got):
        raise AcmeError(f"the CA's certificate covers {', '.join(got)}, not {', '.join(names)}")
    certs = acme_dir / "certs"
    _private_dir(certs)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    release = certs / f"{stamp}-{leaf.serial_number:x}"[:48]
    release.mkdir(mode=0o700)
    _write_private(release / "key.pem", key_pem)
    _write_private(release / "cert.pem", fullchain)
    live = acme_dir / "live"
    if live.is_dir() and not live.is_symlink():  # a plain directory (made by hand): keep it aside
        live.rename(certs / f"{stamp}-previous")
    temp = acme_dir / f".live.{os.getpid()}.tmp"
    temp.unlink(missing_ok=True)
    os.symlink(Path("certs") / release.name, temp)
    os.replace(temp, live)
    dir_fd = os.open(acme_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in sorted(p for p in certs.iterdir() if p.is_dir())[:-2]:
        shutil.rmtree(old, ignore_errors=True)
    return CertificateState(got, leaf.not_valid_after_utc, leaf.serial_number)


# --------------------------------------------------------------------------- messages


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _problem(error) -> str:
    """An ACME problem document (RFC 8555 6.7) as ``detail (code)``."""
    detail = error.detail or error.title or error.description or "no detail"
    text = f"{detail} ({error.code or error.typ})"
    for sub in error.subproblems or ():
        ident = f"{sub.identifier.value}: " if sub.identifier else ""
        text += f"; {ident}{sub.detail}"
    return text


def _validation_failures(error) -> str:
    parts = []
    for authz in error.failed_authzrs:
        name = authz.body.identifier.value
        problems = [_problem(ch.error) for ch in authz.body.challenges if ch.error is not None]
        parts.append(f"{name}: {'; '.join(problems) or authz.body.status}")
    return "validation failed: " + "; ".join(parts)


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")


def _root_cause(error: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error ("Connection refused",
    "certificate verify failed: ...")."""
    seen, inner = {id(error)}, error
    while True:
        reason = getattr(inner, "reason", None)
        nxt = reason if isinstance(reason, BaseException) else next(
            (a for a in inner.args if isinstance(a, BaseException)), None)
        nxt = nxt or inner.__cause__ or inner.__context__
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        inner = nxt
    if isinstance(inner, ssl.SSLError) and inner.reason:
        return getattr(inner, "verify_message", None) and f"certificate verify failed: {inner.verify_message}" \
            or str(inner.reason).lower().replace("_", " ")
    text = str(inner)
    match = _ERRNO.search(text) or _ERRNO.search(str(error))
    if match:
        return match.group(1).strip().rstrip(".")
    return text.rsplit(": ", 1)[-1] if ": " in text else text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g}h"
    if seconds >= 60:
        return f"{seconds / 60:g}min"
    return f"{seconds:g}s"
