#!/usr/bin/env bash
# The README's "test" command (and all that .ci/run does): install what the tests need,
# start the helper services they use, run the whole suite, stop what was started.
# Extra arguments go to pytest (e.g. -k smtp, -x).
source "$(dirname "$0")/lib.sh"
# swaks: a real SMTP client the end-to-end tests drive; openssl: certificate checks;
# curl, isync (mbsync): real IMAP clients tests/e2e/test_imap_clients.py drives;
# fetchmail, getmail6 (and curl): real POP3 clients tests/e2e/test_pop3_clients.py drives;
# postgresql: the tests run a private throw-away cluster on a free loopback port
# (tests/services/postgres.py), never the system one.
# slapd, ldap-utils: a private OpenLDAP server on a free loopback port for the LDAP
# domains (tests/services/slapd.py); fail2ban: fail2ban-regex checks contrib/fail2ban
# against pymail's own log (tests/e2e/test_fail2ban.py).
apt_need swaks openssl postgresql curl isync fetchmail getmail6 slapd ldap-utils fail2ban
venv_need test
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
