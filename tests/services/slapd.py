"""A private, throw-away OpenLDAP server for the tests, on free loopback ports.

Recipe and gotchas: ../shared/docs/TEST-SERVICES.md ("OpenLDAP slapd").  Nothing in /etc
is read or written: a generated ``slapd.conf`` (the core, cosine, nis and inetorgperson
schemas from /etc/ldap/schema, ``moduleload back_mdb``, one mdb database for
``dc=example,dc=test``), the entries loaded offline with ``slapadd``, then
``slapd -f slapd.conf -h "ldap://127.0.0.1:P/ ldaps://127.0.0.1:Q/" -d stats`` (``-d``:
foreground), stopped by its own PID.

* Data: `PEOPLE` under ``ou=people,dc=example,dc=test`` (``uid=<name>``, password
  ``<name>-ldap-pw``), among them ``dave+x`` (a DN that needs RFC 4514 escaping) and
  ``carol``, whose entry is ``cn=Carol Example,ou=staff,ou=people,...`` (found only by a
  search); a service account `SERVICE_DN` / `SERVICE_PASSWORD` for searches; two
  entries with ``uid=twin`` (an ambiguous search).  ACL: ``userPassword`` readable by
  nobody (``by anonymous auth``), the rest readable by all.
* TLS: a private CA and a certificate for 127.0.0.1 (made with pymail's own
  `ensure_embedded_certificates`), served on ``ldaps://`` and for StartTLS; `ca_file`
  is the CA clients trust.
* `stop_server()` / `start_server()`: an outage (same data, same ports);
  `pause()` / `resume()`: SIGSTOP / SIGCONT, a server that accepts connections and never
  answers.
* Ready = an anonymous bind succeeds (ldap3).

Needs the Debian packages ``slapd`` (slapd, slapadd) and ``ldap-utils``; without them
`SlapdServiceError` says what to install.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = [
    "BASE_DN",
    "PEOPLE",
    "PEOPLE_DN",
    "SERVICE_DN",
    "SERVICE_PASSWORD",
    "SlapdService",
    "SlapdServiceError",
    "password_of",
    "start_slapd_service",
]

HOST = "127.0.0.1"
DEBIAN_PACKAGES = "slapd ldap-utils"
BASE_DN = "dc=example,dc=test"
PEOPLE_DN = f"ou=people,{BASE_DN}"
SERVICE_DN = f"cn=pymail,ou=services,{BASE_DN}"
SERVICE_PASSWORD = "service-ldap-pw"
ADMIN_DN = f"cn=admin,{BASE_DN}"
ADMIN_PASSWORD = "admin-ldap-pw"
#: uid -> the DN of the entry (all under PEOPLE_DN); password: `password_of(uid)`.
PEOPLE = {
    "alice": f"uid=alice,{PEOPLE_DN}",
    "bob": f"uid=bob,{PEOPLE_DN}",
    "dave+x": f"uid=dave\\+x,{PEOPLE_DN}",
    "carol": f"cn=Carol Example,ou=staff,{PEOPLE_DN}",
}
#: Seconds to wait for slapd to answer (allow for a busy machine).
READY_TIMEOUT = 30.0
_SCHEMAS = ("core", "cosine", "nis", "inetorgperson")


class SlapdServiceError(RuntimeError):
    """The test LDAP server could not be made or started (the message says why)."""


def password_of(uid: str) -> str:
    return f"{uid}-ldap-pw"


def _ssha(password: str) -> str:
    """``{SSHA}`` as slappasswd writes it: base64(sha1(password + salt) + salt)."""
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode() + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode()


def _die_with_parent() -> None:
    """(In the child, Linux) SIGTERM when the test process dies, even by SIGKILL, so no
    slapd outlives its tests."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _person(uid: str, dn: str) -> str:
    cn = dn.split(",", 1)[0].split("=", 1)[1] if dn.startswith("cn=") else uid.title()
    return (
        f"dn: {dn}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {cn}\nsn: {uid.title()}\n"
        f"mail: {uid}@ldap.test\nuserPassword: {_ssha(password_of(uid))}\n"
    )


def _ldif() -> str:
    entries = [
        f"dn: {BASE_DN}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        f"dn: {PEOPLE_DN}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=staff,{PEOPLE_DN}\nobjectClass: organizationalUnit\nou: staff\n",
        f"dn: ou=services,{BASE_DN}\nobjectClass: organizationalUnit\nou: services\n",
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: pymail\nuserPassword: {_ssha(SERVICE_PASSWORD)}\n",
    ]
    entries += [_person(uid, dn) for uid, dn in PEOPLE.items()]
    # two entries with the same uid: a search for it is ambiguous
    for n in (1, 2):
        entries.append(
            f"dn: cn=Twin {n},{PEOPLE_DN}\nobjectClass: inetOrgPerson\nuid: twin\n"
            f"cn: Twin {n}\nsn: Twin\nuserPassword: {_ssha(password_of('twin'))}\n"
        )
    return "\n".join(entries)


class SlapdService:
    """One slapd process (see the module docstring)."""

    def __init__(self) -> None:
        for tool in ("slapd", "slapadd"):
            if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
                raise SlapdServiceError(
                    f"{tool} not found: install the Debian packages '{DEBIAN_PACKAGES}'"
                )
        self.port = _free_port()
        self.tls_port = _free_port()
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = None

    # -- addresses ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"ldap://{HOST}:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://{HOST}:{self.tls_port}"

    @property
    def ca_file(self) -> Path:
        assert self.root is not None
        return self.root / "tls" / "ca.pem"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "slapd.log"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> SlapdService:
        from pymail.net.certs import ensure_embedded_certificates

        self.root = Path(tempfile.mkdtemp(prefix="pymail-slapd-"))
        atexit.register(self.stop)
        (self.root / "db").mkdir()
        tls = ensure_embedded_certificates(self.root / "tls", "localhost")
        schemas = "\n".join(f"include /etc/ldap/schema/{name}.schema" for name in _SCHEMAS)
        (self.root / "slapd.conf").write_text(
            f"""{schemas}
pidfile {self.root}/slapd.pid
argsfile {self.root}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {tls.ca}
TLSCertificateFile {tls.cert}
TLSCertificateKeyFile {tls.key}

database mdb
maxsize 104857600
suffix "{BASE_DN}"
rootdn "{ADMIN_DN}"
rootpw {_ssha(ADMIN_PASSWORD)}
directory {self.root}/db
access to attrs=userPassword
    by self read
    by anonymous auth
    by * none
access to *
    by * read
"""
        )
        (self.root / "data.ldif").write_text(_ldif())
        result = subprocess.run(
            ["slapadd", "-q", "-f", str(self.root / "slapd.conf"), "-l", str(self.root / "data.ldif")],
            capture_output=True, text=True, timeout=60,
        )
        if result.returncode != 0:
            self.stop()
            raise SlapdServiceError(f"slapadd failed ({result.returncode}): {result.stderr.strip()[-2000:]}")
        for attempt in range(3):
            try:
                self.start_server()
                return self
            except SlapdServiceError:
                if attempt == 2:
                    self.stop()
                    raise
                self.port, self.tls_port = _free_port(), _free_port()
        raise AssertionError("unreachable")

    def start_server(self) -> None:
        """Start slapd on the data directory and ports (again after `stop_server`)."""
        assert self.root is not None
        if self.proc is not None and self.proc.poll() is None:
            raise SlapdServiceError("slapd runs already")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["slapd", "-f", str(self.root / "slapd.conf"),
             "-h", f"{self.url}/ {self.ldaps_url}/", "-d", "stats"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SlapdServiceError(f"slapd exited with {self.proc.returncode}: {self._tail()}")
            if self._answers():
                return
            time.sleep(0.05)
        raise SlapdServiceError(f"slapd does not answer on {self.url}: {self._tail()}")

    def _answers(self) -> bool:
        import ldap3

        try:
            server = ldap3.Server(HOST, port=self.port, get_info=ldap3.NONE, connect_timeout=1)
            conn = ldap3.Connection(server, receive_timeout=1, raise_exceptions=False)
            try:
                return bool(conn.bind())
            finally:
                conn.unbind()
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def stop_server(self) -> None:
        """Stop slapd (SIGTERM by its PID, then SIGKILL); the data and ports stay."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # in case it was paused
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def pause(self) -> None:
        """SIGSTOP: connections are accepted by the kernel, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop slapd for good and remove its directory.  Idempotent."""
        self.stop_server()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
            atexit.unregister(self.stop)

    def _tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except (OSError, AssertionError):
            return ""

    def __repr__(self) -> str:
        state = "running" if self.proc is not None and self.proc.poll() is None else "stopped"
        return f"SlapdService({self.url}, {state})"


def start_slapd_service() -> SlapdService:
    """A started slapd on free loopback ports (call `.stop()` when done)."""
    return SlapdService().start()
