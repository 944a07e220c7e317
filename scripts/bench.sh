#!/usr/bin/env bash
# Run a benchmark (benchmarks/README.md): install what it needs, start pymail on the
# embedded default in a temporary data directory (or aim at --target), drive it and print
# the table.  The first argument may name the benchmark; without one it is the delivery
# benchmark, and every argument goes to it:
#   scripts/bench.sh --concurrency 1,10,50 --size 4k --count 2000          # benchmarks/delivery.py
#   scripts/bench.sh delivery --concurrency 1,10,50 --size 4k --count 2000 # the same
#   scripts/bench.sh imap --count 2000 --size 4k --concurrency 1,4,16      # benchmarks/imap.py
#   scripts/bench.sh append --count 1000 --size 4k --concurrency 1,4        # benchmarks/append.py
source "$(dirname "$0")/lib.sh"
module=delivery
case "${1:-}" in
    delivery|imap|append) module=$1; shift ;;
esac
venv_need bench
cd "$ROOT"
exec "$VENV/bin/python" -m "benchmarks.$module" "$@"
