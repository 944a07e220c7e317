"""Drive Debian's real Thunderbird, headless, through Marionette: the client of
tests/e2e/test_thunderbird.py.

`Thunderbird.start()` runs ``/usr/lib/thunderbird/thunderbird --headless --marionette
-remote-allow-system-access -no-remote -profile DIR`` with ``HOME`` in the work directory
and a ``user.js`` (`PREFS`) that turns off everything that would reach the network by
itself, and sets ``marionette.port`` to a free loopback port.  No X server is needed.
The methods run chrome-context JavaScript (``execute_async_script``) calling the same
XPCOM services Thunderbird's own UI calls (../shared/docs/THUNDERBIRD.md has the proven
facts): account set-up, folder discovery, folder update, message streaming, sending
with the Sent copy, POP3 download.  ``MOZ_LOG`` writes Thunderbird's IMAP protocol lines
to `protocol_log_path`, its console (SMTP and POP3 are JavaScript clients) writes theirs
to `output_path`; `protocol_log()` has both, and a failure shows them.

Invariants:

* Only loopback: every server it is told about is 127.0.0.1 (the suite also runs in a
  network namespace of its own, scripts/test.sh), and `PREFS` leaves Thunderbird
  nothing to look up by itself (updates, telemetry, safe browsing, remote settings,
  captive-portal and connectivity checks, autoconfig/ISPDB, the start page, in-app
  notifications).
* One process per `Thunderbird`, in a process group of its own that dies with the test
  run; `stop()` sends ``Marionette:Quit`` and then ends the group by its pid, so nothing
  is left behind even when Thunderbird hangs.
* A script either resolves with its value or raises `ThunderbirdError` with what it
  threw (or, when Marionette gives back nothing, the usual cause: a modal prompt, i.e. a
  failed login or an untrusted certificate) and the tail of the protocol log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.services.process import free_loopback_port, own_group_and_die_with_parent

THUNDERBIRD = "/usr/lib/thunderbird/thunderbird"

#: user.js: nothing that would reach the network by itself, no first-run pages.
PREFS: dict[str, bool | int | str] = {
    # updates: the application, add-ons, system add-ons, themes, plugins (GMP)
    "app.update.auto": False,
    "app.update.staging.enabled": False,
    "app.update.checkInstallTime": False,
    "app.update.disabledForTesting": True,
    "extensions.update.enabled": False,
    "extensions.update.autoUpdateDefault": False,
    "extensions.systemAddon.update.enabled": False,
    "extensions.getAddons.cache.enabled": False,
    "extensions.blocklist.enabled": False,
    "lightweightThemes.update.enabled": False,
    "media.gmp-manager.updateEnabled": False,
    "app.normandy.enabled": False,
    "app.normandy.api_url": "",
    # telemetry and health reports
    "datareporting.healthreport.uploadEnabled": False,
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.policy.dataSubmissionPolicyBypassNotification": True,
    "toolkit.telemetry.enabled": False,
    "toolkit.telemetry.unified": False,
    "toolkit.telemetry.archive.enabled": False,
    "toolkit.telemetry.server": "",
    "toolkit.telemetry.shutdownPingSender.enabled": False,
    "toolkit.telemetry.firstShutdownPing.enabled": False,
    "toolkit.telemetry.newProfilePing.enabled": False,
    "toolkit.telemetry.updatePing.enabled": False,
    "toolkit.telemetry.bhrPing.enabled": False,
    "telemetry.fog.test.localhost_port": -1,
    # safe browsing and phishing lookups
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.safebrowsing.blockedURIs.enabled": False,
    "browser.safebrowsing.update.enabled": False,
    "mail.phishing.detection.enabled": False,
    # remote settings (and what is fetched through them: CRLite, intermediates)
    "services.settings.server": "data:,#remote-settings-off",
    "security.remote_settings.crlite_filters.enabled": False,
    "security.remote_settings.intermediates.enabled": False,
    "security.OCSP.enabled": 0,
    # captive portal and connectivity checks, DNS over HTTPS, prefetching, geolocation
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
    "network.trr.mode": 5,
    "network.dns.disablePrefetch": True,
    "network.prefetch-next": False,
    "network.http.speculative-parallel-limit": 0,
    "network.sntp.pools": "",
    "geo.enabled": False,
    "geo.provider.network.url": "",
    "browser.region.network.url": "",
    "browser.region.update.enabled": False,
    "dom.push.connection.enabled": False,
    # account autoconfig: the ISPDB, the ISP's own autoconfig host, Exchange, guessing
    "mailnews.auto_config_url": "",
    "mailnews.auto_config.addons_url": "",
    "mailnews.auto_config.fetchFromISP.enabled": False,
    "mailnews.auto_config.fetchFromExchange.enabled": False,
    "mailnews.auto_config.guess.enabled": False,
    "mailnews.mx_service_url": "",
    "mail.provider.enabled": False,
    "mail.provider.suppress_dialog_on_startup": True,
    "mail.accounthub.thundermail.enabled": False,
    # first-run and start pages, in-app notifications, the default-client question
    "mailnews.start_page.enabled": False,
    "mailnews.start_page.url": "",
    "mailnews.start_page.override_url": "",
    "mailnews.start_page_override.mstone": "ignore",
    "mail.inappnotifications.enabled": False,
    "mail.inappnotifications.url": "",
    "app.donation.eoy.version.viewed": 999,
    "mail.rights.version": 1,
    "mail.shell.checkDefaultClient": False,
    "mail.spotlight.firstRunDone": True,
    "mailnews.database.global.indexer.enabled": False,
    "toolkit.startup.max_resumed_crashes": -1,
    # SMTP and POP3 are JavaScript clients that log through the console, not MOZ_LOG:
    # their protocol lines go to stdout (`output_path`)
    "mailnews.smtp.loglevel": "All",
    "mailnews.pop3.loglevel": "All",
    "devtools.console.stdout.chrome": True,
    "browser.dom.window.dump.enabled": True,
    # new mail arrives by IDLE, and the test sees it without the UI's biff timer
    "mail.server.default.check_new_mail": False,
    # no new-mail alert or sound (headless, the alert service fails with an error)
    "mail.biff.show_alert": False,
    "mail.biff.play_sound": False,
}

#: Thunderbird's IMAP protocol logging (MOZ_LOG); it shows the lines even over TLS.
LOG_MODULES = "IMAP:5,timestamp"

#: Prepended to every script: the services, a msgWindow, and promise helpers.
_PRELUDE = r"""
const { MailServices } = ChromeUtils.importESModule("resource:///modules/MailServices.sys.mjs");
const msgWindow = Cc["@mozilla.org/messenger/msgwindow;1"].createInstance(Ci.nsIMsgWindow);
// An nsIUrlListener and the promise of its OnStopRunningUrl status (0: success).
function urlListener() {
  let done;
  const promise = new Promise(resolve => { done = resolve; });
  return {
    promise,
    listener: {
      OnStartRunningUrl() {},
      OnStopRunningUrl(url, status) { done(status); },
      QueryInterface: ChromeUtils.generateQI(["nsIUrlListener"]),
    },
  };
}
async function urlDone(start, what) {
  const { promise, listener } = urlListener();
  start(listener);
  const status = await promise;
  if (status != 0) throw new Error(`${what} failed: status 0x${(status >>> 0).toString(16)}`);
}
function serverByKey(key) { return MailServices.accounts.getIncomingServer(key); }
function folderByPath(key, path) {
  const root = serverByKey(key).rootFolder;
  if (path.toUpperCase() == "INBOX") return root.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
  return root.getChildNamed(path);
}
function headers(folder) {
  const out = [];
  for (const hdr of folder.msgDatabase.enumerateMessages()) {
    out.push({ key: hdr.messageKey, subject: hdr.mime2DecodedSubject, author: hdr.mime2DecodedAuthor,
               messageId: hdr.messageId, uri: folder.getUriForMsg(hdr) });
  }
  return out;
}
"""


class ThunderbirdError(AssertionError):
    """A script failed in Thunderbird, or Thunderbird could not be started."""


class Thunderbird:
    """One headless Thunderbird process with a fresh profile in `workdir`."""

    def __init__(self, workdir: Path, *, binary: str = THUNDERBIRD) -> None:
        self.workdir = workdir
        self.binary = binary
        self.home = workdir / "home"  #: HOME of the process: nothing of the real one is read
        self.profile = workdir / "profile"  #: the profile directory, user.js in it
        self.output_path = workdir / "thunderbird.out"  #: its stdout and stderr
        self.protocol_log_path = workdir / "protocol.log"  #: MOZ_LOG's IMAP lines
        self.marionette_port = free_loopback_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.marionette: Any = None  #: the marionette_driver.Marionette client

    # -- process ----------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> "Thunderbird":
        """Start Thunderbird and open a chrome-context Marionette session (a busy 2-core
        machine needs tens of seconds for a first start)."""
        from marionette_driver.marionette import Marionette

        self.home.mkdir(parents=True, exist_ok=True)
        self.profile.mkdir(parents=True, exist_ok=True)
        prefs = {**PREFS, "marionette.port": self.marionette_port}
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items()))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MOZ_", "DISPLAY", "WAYLAND"))}
        env.update(HOME=str(self.home), TMPDIR=str(self.workdir), MOZ_HEADLESS="1",
                   MOZ_CRASHREPORTER_DISABLE="1", MOZ_LOG=LOG_MODULES,
                   MOZ_LOG_FILE=str(self.protocol_log_path), XDG_CONFIG_HOME=str(self.home / ".config"),
                   XDG_CACHE_HOME=str(self.home / ".cache"))
        with open(self.output_path, "wb") as out:
            self.proc = subprocess.Popen(
                [self.binary, "--headless", "--marionette", "-remote-allow-system-access", "-no-remote",
                 "-profile", str(self.profile)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.workdir, preexec_fn=own_group_and_die_with_parent)
        self.marionette = Marionette(host="127.0.0.1", port=self.marionette_port,
                                     socket_timeout=timeout, startup_timeout=int(timeout))
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ThunderbirdError(f"thunderbird exited with {self.proc.returncode}:\n{self.output()}")
            try:
                self.marionette.raise_for_port(timeout=2)
                break
            except OSError:  # socket.timeout
                if time.monotonic() > deadline:
                    self.stop()
                    raise ThunderbirdError(f"no Marionette on port {self.marionette_port} after "
                                           f"{timeout:.0f}s:\n{self.output()}") from None
        self.marionette.start_session(timeout=int(timeout))
        self.marionette.set_context("chrome")
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """``Marionette:Quit`` (then up to `timeout` seconds for the exit), then SIGTERM
        and SIGKILL to the process group by its pid: its content processes too."""
        if self.proc is None:
            return
        if self.marionette is not None and self.marionette.session is not None:
            with contextlib.suppress(Exception):
                self.marionette.is_shutting_down = True
                self.marionette._send_message("Marionette:Quit", {"flags": ["eForceQuit"]})
            with contextlib.suppress(Exception):
                self.marionette.client.close()
            self.marionette.session = None
            self.marionette.cleanup_ran = True  # its __del__ must not talk to a dead process
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def output(self, last: int = 4000) -> str:
        text = self.output_path.read_text(errors="replace") if self.output_path.exists() else ""
        return text[-last:]

    def protocol_log(self, last: int | None = None) -> str:
        """The IMAP lines of MOZ_LOG (every file it wrote: a child process gets its own
        suffix), then the SMTP and POP3 lines of the console (in `output_path`)."""
        text = "".join(p.read_text(errors="replace")
                       for p in sorted(self.workdir.glob(self.protocol_log_path.name + "*")))
        if self.output_path.exists():
            text += "".join(line for line in self.output_path.read_text(errors="replace").splitlines(True)
                            if "smtp" in line.lower() or "pop3" in line.lower())
        return text if last is None else text[-last:]

    # -- scripts ----------------------------------------------------------------------

    def run(self, body: str, *args: Any, timeout: float = 60.0) -> Any:
        """Run `body` as an async chrome-context JavaScript function of `args` (a JSON
        list, ``args[0]``...) and return what it returns."""
        script = _PRELUDE + (
            "const resolve = arguments[arguments.length - 1];\n"
            "const args = Array.from(arguments).slice(0, -1);\n"
            "(async () => {\n" + body + "\n})().then(\n"
            "  value => resolve({ ok: value === undefined ? null : value }),\n"
            "  e => resolve({ error: String(e) + '\\n' + (e && e.stack || '') }));\n")
        result = self.marionette.execute_async_script(script, script_args=list(args),
                                                      script_timeout=int(timeout * 1000))
        if result is None:
            raise ThunderbirdError("the script was aborted, usually by a modal prompt (a failed login or "
                                   f"an untrusted certificate); protocol log:\n{self.protocol_log(3000)}")
        if "error" in result:
            raise ThunderbirdError(f"{result['error']}\nprotocol log:\n{self.protocol_log(3000)}")
        return result["ok"]

    def wait_for(self, body: str, *args: Any, timeout: float = 30.0, interval: float = 0.5) -> Any:
        """Run `body` until it returns something truthy (and return that), at most
        `timeout` seconds; a `ThunderbirdError` after that."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.run(body, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise ThunderbirdError(f"not so after {timeout:.0f}s: {body.strip()[:200]}\n"
                                       f"protocol log:\n{self.protocol_log(3000)}")
            time.sleep(interval)

    # -- what a user does -------------------------------------------------------------

    def trust_ca(self, pem: str) -> None:
        """Trust the CA certificate `pem` for TLS servers (as the user's "trust this CA")."""
        b64 = "".join(line for line in pem.splitlines() if line and not line.startswith("-----"))
        self.run("""
            Cc["@mozilla.org/security/x509certdb;1"].getService(Ci.nsIX509CertDB)
              .addCertFromBase64(args[0], "C,C,C");
        """, b64)

    def add_account(self, *, kind: str, user: str, password: str, host: str, port: int,
                    socket_type: int, email: str, name: str = "Test User",
                    smtp_port: int | None = None, smtp_socket_type: int = 2,
                    settings: dict[str, Any] | None = None) -> dict[str, str]:
        """An account as the account set-up writes it: the incoming server (`kind`
        "imap" or "pop3", `socket_type` 0 plain, 2 STARTTLS, 3 TLS, password
        authentication), the password saved, an identity whose Sent folder is the
        server's "Sent", and with `smtp_port` an outgoing server with `smtp_socket_type`.
        `settings`: more attributes of the incoming server (e.g. ``leave_on_server``).
        Returns the keys: ``{"account", "server", "identity", "smtp"}``."""
        assert host in ("127.0.0.1", "localhost"), "loopback only"
        return self.run("""
            const [kind, user, password, host, port, socketType, email, name, smtpPort,
                   smtpSocketType, settings] = args;
            const server = MailServices.accounts.createIncomingServer(user, host, kind);
            server.port = port;
            server.socketType = socketType;
            server.authMethod = Ci.nsMsgAuthMethod.passwordCleartext;
            server.password = password;
            for (const [k, v] of Object.entries(settings)) {
              if (typeof v == "boolean") server.setBoolValue(k, v);
              else if (typeof v == "number") server.setIntValue(k, v);
              else server.setStringValue(k, v);
            }
            if (kind == "pop3") server.QueryInterface(Ci.nsIPop3IncomingServer).leaveMessagesOnServer =
              !!settings.leave_on_server;
            const logins = [[`${kind == "pop3" ? "mailbox" : "imap"}://${host}`, user]];
            const identity = MailServices.accounts.createIdentity();
            identity.fullName = name;
            identity.email = email;
            identity.fccFolderURI = server.serverURI + "/Sent";
            identity.doFcc = true;
            let smtpKey = "";
            if (smtpPort) {
              const smtp = MailServices.outgoingServer.createServer("smtp");
              const smtpServer = smtp.QueryInterface(Ci.nsISmtpServer);
              smtpServer.hostname = host;
              smtpServer.port = smtpPort;
              smtp.socketType = smtpSocketType;
              smtp.authMethod = Ci.nsMsgAuthMethod.passwordCleartext;
              smtp.username = user;
              smtp.password = password;
              identity.smtpServerKey = smtp.key;
              smtpKey = smtp.key;
              logins.push([`smtp://${host}`, user]);
            }
            for (const [origin, username] of logins) {
              const login = Cc["@mozilla.org/login-manager/loginInfo;1"].createInstance(Ci.nsILoginInfo);
              login.init(origin, null, origin, username, password, "", "");
              await Services.logins.addLoginAsync(login);
            }
            const account = MailServices.accounts.createAccount();
            account.addIdentity(identity);
            account.incomingServer = server;
            MailServices.accounts.saveAccountInfo();
            return { account: account.key, server: server.key, identity: identity.key, smtp: smtpKey };
        """, kind, user, password, host, port, socket_type, email, name, smtp_port or 0,
            smtp_socket_type, settings or {})

    def discover_folders(self, server: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Folder discovery (LIST/LSUB) of an IMAP account: every folder below its root,
        ``{"name", "path", "flags"}`` (flags: nsMsgFolderFlags)."""
        return self.run("""
            const server = serverByKey(args[0]);
            await urlDone(l => MailServices.imap.discoverAllFolders(server.rootFolder, l, msgWindow),
                          "folder discovery");
            return server.rootFolder.descendants.map(f => ({
              name: f.name, flags: f.flags,
              path: f instanceof Ci.nsIMsgImapMailFolder ? f.onlineName : f.name }));
        """, server, timeout=timeout)

    def update_folder(self, server: str, folder: str = "INBOX", timeout: float = 60.0) -> list[dict[str, Any]]:
        """Select and synchronise an IMAP folder (what clicking it does); its messages'
        headers ``{"key", "subject", "author", "messageId", "uri"}``."""
        return self.run("""
            const folder = folderByPath(args[0], args[1]);
            await urlDone(l => folder.QueryInterface(Ci.nsIMsgImapMailFolder)
                                     .updateFolderWithListener(msgWindow, l), "folder update");
            return headers(folder);
        """, server, folder, timeout=timeout)

    def headers(self, server: str, folder: str = "INBOX") -> list[dict[str, Any]]:
        """The folder's messages as Thunderbird's database has them now (no refresh)."""
        return self.run("return headers(folderByPath(args[0], args[1]));", server, folder)

    def message_source(self, uri: str, timeout: float = 60.0) -> str:
        """The whole message `uri`, streamed as the message pane would get it (from the
        server, or from the offline store once downloaded)."""
        return self.run("""
            const uri = args[0];
            return await new Promise((resolve, reject) => {
              const chunks = [];
              let stream = null;
              const listener = {
                onStartRequest() {},
                onDataAvailable(request, input, offset, count) {
                  if (!stream) {
                    stream = Cc["@mozilla.org/scriptableinputstream;1"]
                      .createInstance(Ci.nsIScriptableInputStream);
                    stream.init(input);
                  }
                  chunks.push(stream.read(count));
                },
                onStopRequest(request, status) {
                  if (Components.isSuccessCode(status)) resolve(chunks.join(""));
                  else reject(new Error(`streaming ${uri}: status 0x${(status >>> 0).toString(16)}`));
                },
                QueryInterface: ChromeUtils.generateQI(["nsIStreamListener", "nsIRequestObserver"]),
              };
              MailServices.messageServiceFromURI(uri).streamMessage(uri, listener, null, null, false, "");
            });
        """, uri, timeout=timeout)

    def send(self, identity: str, *, to: str, subject: str, body: str, timeout: float = 90.0) -> dict[str, Any]:
        """Send a plain-text message now from `identity`, as the compose window's Send
        does: over the identity's SMTP server, then the copy to its Sent folder (FCC,
        an IMAP APPEND).  Returns once the copy is done: ``{"messageId", "copyStatus"}``."""
        return self.run("""
            const [identityKey, to, subject, body] = args;
            const identity = MailServices.accounts.getIdentity(identityKey);
            const fields = Cc["@mozilla.org/messengercompose/composefields;1"]
              .createInstance(Ci.nsIMsgCompFields);
            fields.from = MailServices.headerParser.makeMimeAddress(identity.fullName, identity.email);
            fields.to = to;
            fields.subject = subject;
            return await new Promise((resolve, reject) => {
              let messageId = null;
              const listener = {
                onStartSending() {}, onSendProgress() {}, onProgress() {}, onStatus() {},
                onStartCopy() {}, onGetDraftFolderURI() {}, onSendNotPerformed() {},
                onTransportSecurityError(msgId, status) {
                  reject(new Error(`TLS error sending: status 0x${(status >>> 0).toString(16)}`));
                },
                onStopSending(msgId, status) {
                  messageId = msgId;
                  if (!Components.isSuccessCode(status))
                    reject(new Error(`sending failed: status 0x${(status >>> 0).toString(16)}`));
                },
                onStopCopy(status) { resolve({ messageId, copyStatus: status }); },
                QueryInterface: ChromeUtils.generateQI(["nsIMsgSendListener", "nsIMsgCopyServiceListener"]),
              };
              const send = Cc["@mozilla.org/messengercompose/send;1"].createInstance(Ci.nsIMsgSend);
              send.createAndSendMessage(null, identity, null, fields, false, false,
                Ci.nsIMsgSend.nsMsgDeliverNow, null, "text/plain", body, null, null, listener,
                null, null, Ci.nsIMsgCompType.New);
            });
        """, identity, to, subject, body, timeout=timeout)

    def pop3_get_new_mail(self, server: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """"Get Messages" of a POP3 account: download into its local Inbox; the Inbox's
        headers after."""
        return self.run("""
            const server = serverByKey(args[0]).QueryInterface(Ci.nsIPop3IncomingServer);
            const inbox = server.rootFolder.getFolderWithFlags(Ci.nsMsgFolderFlags.Inbox);
            await urlDone(l => MailServices.pop3.GetNewMail(msgWindow, l, inbox, server), "POP3 download");
            return headers(inbox);
        """, server, timeout=timeout)
