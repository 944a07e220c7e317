#!/usr/bin/env bash
# Run a benchmark (benchmarks/README.md): install what it needs, start pymail on the
# embedded default in a temporary data directory (or aim at --target), drive it and print
# the table.  The first argument may name the benchmark; without one it is the delivery
# benchmark, and every argument goes to it:
#   scripts/bench.sh --concurrency 1,10,50 --size 4k --count 2000          # benchmarks/delivery.py
#   scripts/bench.sh delivery --concurrency 1,10,50 --size 4k --count 2000 # the same
#   scripts/bench.sh imap --count 2000 --size 4k --concurrency 1,4,16      # benchmarks/imap.py
#   scripts/bench.sh append --count 1000 --size 4k --concurrency 1,4        # benchmarks/append.py
#   scripts/bench.sh outbound --count 1000 --domains 1,100 --dkim off,on   # benchmarks/outbound.py
#   scripts/bench.sh logins --logins 50 --concurrency 1,4                  # benchmarks/logins.py
# The outbound benchmark's remote MX is smtp-sink on 127.0.0.3 port 25: it runs in a
# private network namespace (unshare --net, loopback only), as scripts/test.sh runs the tests.
source "$(dirname "$0")/lib.sh"
module=delivery
case "${1:-}" in
    delivery|imap|append|outbound|logins) module=$1; shift ;;
esac
venv_need bench
cd "$ROOT"
if [ "$module" = outbound ]; then
    # smtp-sink (Postfix) and NSD: the remote MX and the DNS of the outbound benchmark;
    # scripts/test.sh installs both (postfix unconfigured, its debconf question preseeded)
    for tool in /usr/sbin/smtp-sink /usr/sbin/nsd; do
        [ -x "$tool" ] || { say "$tool is missing: run scripts/test.sh once (it installs postfix and nsd)"; exit 1; }
    done
    export PYMAIL_BENCH_NETNS=1
    exec unshare --net -- sh -c 'ip link set lo up && exec "$0" -m benchmarks.outbound "$@"' "$VENV/bin/python" "$@"
fi
if printf '%s\n' "$@" | grep -qx -- --checks; then
    # the delivery benchmark with inbound checks: Rspamd, clamd and NSD on loopback, in a
    # network namespace of their own like the tests' (no lookup can leave the machine)
    for tool in /usr/sbin/nsd /usr/bin/rspamd /usr/sbin/clamd; do
        [ -x "$tool" ] || { say "$tool is missing: run scripts/test.sh once (it installs nsd, rspamd, clamav-daemon)"; exit 1; }
    done
    exec unshare --net -- sh -c 'ip link set lo up && m=$1 && shift && exec "$0" -m "benchmarks.$m" "$@"' "$VENV/bin/python" "$module" "$@"
fi
exec "$VENV/bin/python" -m "benchmarks.$module" "$@"
