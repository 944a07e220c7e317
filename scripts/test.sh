#!/usr/bin/env bash
# The README's "test" command (and all that .ci/run does): install what the tests need,
# start the helper services they use, run the whole suite, stop what was started.
# Extra arguments go to pytest (e.g. -k smtp, -x).
#
# Every client the tests drive is installed here, so under this command a missing one
# fails its test with the package to install instead of skipping it
# (PYMAIL_TEST_STRICT=1, tests/pymail_harness.py `client_tool`).
source "$(dirname "$0")/lib.sh"

# postfix asks debconf for a mailer type when installed; "No configuration" leaves the
# system instance unconfigured (the tests run their own, tests/services/postfix.py).
postfix_preseed() {
    dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q "install ok installed" && return 0
    printf 'postfix postfix/main_mailer_type select No configuration\n' | as_root debconf-set-selections
}
# Packages are installed without their Recommends (scripts/lib.sh), so a feature a test
# uses that Debian ships in a Recommends or a separate package is named here on its own.
# Audited for Debian 12 (apt-cache show NAME: Depends / Recommends):
# - swaks: a real SMTP client the end-to-end tests drive.  Its TLS (--tls, --tlsc) needs
#   Net::SSLeay, a Recommends: libnet-ssleay-perl.  (Its other Recommends are not used:
#   libnet-dns-perl for MX routing, we always give --server; libio-socket-inet6-perl for
#   IPv6, we use 127.0.0.1.  AUTH PLAIN/LOGIN/CRAM-MD5 need only perl's own modules.)
# - openssl: certificate checks (tests/unit/test_certs.py); Depends is enough.
# - curl, isync (mbsync): real IMAP clients (tests/e2e/test_imap_clients.py); curl's TLS,
#   IMAP, POP3 and SASL are built in (libcurl4 Depends); mbsync logs in with LOGIN when
#   Cyrus SASL's PLAIN module (libsasl2-modules, a Recommends) is absent.
# - fetchmail, getmail6 (and curl): real POP3 clients (tests/e2e/test_pop3_clients.py);
#   both verify against the CA file the test names (no ca-certificates needed).
# - postgresql: the tests run a private throw-away cluster on a free loopback port
#   (tests/services/postgres.py), never the system one; its locale C.UTF-8 is glibc's own.
# - slapd, ldap-utils (a Recommends of slapd): a private OpenLDAP server on a free
#   loopback port for the LDAP domains (tests/services/slapd.py); back_mdb is in slapd.
# - fail2ban: fail2ban-regex and fail2ban-client -d check contrib/fail2ban against
#   pymail's own log (tests/e2e/test_fail2ban.py); neither needs the Recommends
#   (python3-systemd, an nftables|iptables firewall), which only a running jail uses.
# - nsd: the tests' own authoritative DNS server on a loopback port (tests/services/nsd.py),
#   the only DNS any test asks; nsd-checkzone comes with it, no Recommends used.
# - iproute2 (ip), util-linux (unshare, essential): the private network namespace below.
# - postfix: the real remote MX for remote.test (tests/services/postfix.py), a private
#   instance from its own config directory, and smtp-sink for the outbound benchmark.
#   Its Recommends (python3: only for postfix's own helper scripts; ca-certificates: only
#   for verifying the certificates of servers it sends to) are not used: the instance
#   only receives, its TLS certificate comes from the tests' private CA.  Its debconf
#   question (the mailer type) is preseeded "No configuration", so installing it writes
#   no /etc/postfix/main.cf and starts nothing (policy-rc.d, scripts/lib.sh).
# - unbound: the validating resolver in front of NSD for the DANE tests
#   (tests/services/unbound.py).  Its Recommends dns-root-data (root hints and the root
#   trust anchor) is not used: our unbound knows no root and trusts only the test
#   zones' own keys.  The zones are signed in Python (dnspython's dns.dnssec, already a
#   dependency; tests/services/dnssec.py), so no signing package is needed.
# - rspamd: the independent DKIM/SPF/DMARC verifier (tests/services/rspamd.py) and the
#   scanner pymail.checks.rspamd asks.  Its Recommends redis-server is named on its own
#   (below); the greylist and ratelimit modules stay off even with it, as deterministic
#   tests want.
# - redis-server: a private instance on a free loopback port holding Rspamd's Bayes
#   statistics for the spam-training tests (tests/services/redis.py); no persistence,
#   nothing in /etc read, the system instance never started (policy-rc.d).  Depends:
#   redis-tools (installed with it, not used); no Recommends.
# - clamav-daemon: clamd, the virus scanner the ClamAV check speaks INSTREAM to; the tests
#   run a private one with a one-signature EICAR database (tests/services/clamd.py).  Its
#   Depends "clamav-freshclam | clamav-data" installs freshclam, the database updater: it
#   is never run (no test may reach the internet), and policy-rc.d keeps its daemon from
#   starting at install.  Its Recommends clamdscan is not used: pymail and the tests
#   speak the socket protocol themselves.
# - pebble: Let's Encrypt's ACME test server, a private one on loopback ports
#   (tests/services/pebble.py) that the built-in ACME client gets certificates from;
#   Depends libc6 only.
# - spamassassin: `spamassassin -t`, the second spam score of `pymail doctor`'s
#   deliverability self-test (tests/e2e/ops/); its rules ship in the package.  Its
#   Recommends (spamc, sa-compile, libmail-spf-perl, libmail-dmarc-perl, ...) are not
#   used: pymail checks SPF/DKIM/DMARC itself and runs spamassassin without network tests.
# - systemd: systemd-analyze verify/security on systemd/pymail.service (no running
#   systemd needed); not in a minimal Debian root.  Its Recommends (dbus, timesyncd) are
#   not used.
# - thunderbird: Mozilla's mail client, pymail's first client, driven headless through
#   Marionette (tests/e2e/thunderbird.py, tests/e2e/test_thunderbird.py: IMAP, SMTP
#   submission, POP3); --headless needs no X server or Xvfb.  Its Recommends (a spelling
#   dictionary, myspell-en-us | hunspell-dictionary) is not used: the test composes no
#   message in an editor.  Its Depends "x11-utils | kdialog | zenity" (xmessage, for the
#   profile-migration dialogs of /usr/bin/thunderbird, a wrapper script) installs
#   x11-utils, unused: the test runs /usr/lib/thunderbird/thunderbird itself.
postfix_preseed
apt_need swaks libnet-ssleay-perl openssl postgresql curl isync fetchmail getmail6 slapd ldap-utils fail2ban nsd iproute2 postfix unbound rspamd redis-server clamav-daemon pebble spamassassin systemd thunderbird
venv_need test
cd "$ROOT"
export PYMAIL_TEST_STRICT=1
# The suite runs in a network namespace of its own (loopback only, brought up here):
# every 127.0.0.0/8 address and port -- 25 included, where the tests' remote mail
# servers listen as real ones do -- belongs to the tests, and nothing outside the
# machine can be reached at all, so no test can leak a lookup or a connection.
export PYMAIL_TEST_NETNS=1
exec unshare --net -- sh -c 'ip link set lo up && exec "$0" -m pytest "$@"' "$VENV/bin/python" "$@"
