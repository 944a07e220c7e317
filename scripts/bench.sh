#!/usr/bin/env bash
# Run the delivery benchmark (benchmarks/README.md): install what it needs, start pymail
# on the embedded default in a temporary data directory (or aim at --target), drive it
# with an asyncio SMTP load generator and print the table.  Arguments go to
# benchmarks/delivery.py, e.g.:
#   scripts/bench.sh --concurrency 1,10,50 --size 4k --count 2000
source "$(dirname "$0")/lib.sh"
venv_need bench
cd "$ROOT"
exec "$VENV/bin/python" -m benchmarks.delivery "$@"
