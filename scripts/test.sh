#!/usr/bin/env bash
# The README's "test" command (and all that .ci/run does): install what the tests need,
# start the helper services they use, run the whole suite, stop what was started.
# Extra arguments go to pytest (e.g. -k smtp, -x).
source "$(dirname "$0")/lib.sh"
# swaks: a real SMTP client the end-to-end tests drive; openssl: certificate checks;
# curl, isync (mbsync): real IMAP clients tests/e2e/test_imap_clients.py drives;
# postgresql: the tests run a private throw-away cluster on a free loopback port
# (tests/services/postgres.py), never the system one.
apt_need swaks openssl postgresql curl isync
venv_need test
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
