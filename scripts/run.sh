#!/usr/bin/env bash
# The README's "run" command: install what pymail needs, then run `pymail serve` on the
# embedded default (data in ./pymail-data or $PYMAIL_DATA, listening on 127.0.0.1).
# Extra arguments go to `pymail serve` (e.g. --config /etc/pymail/pymail.toml).
source "$(dirname "$0")/lib.sh"
venv_need
cd "$ROOT"
exec "$VENV/bin/pymail" serve "$@"
