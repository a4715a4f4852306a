#!/usr/bin/env bash
# One `hookrelay bench --separate` run on a fresh embedded broker, as BENCHMARKS.md's before/after tables use:
#   benches/separate_run.sh path/to/hookrelay [more HOOKRELAY_* in the environment]
# Needs a receiver at $U (default http://127.0.0.1:18081: nginx `return 200` on /, `return 503` on /fail).
# Prints the bench's summary.
set -u
BIN=$(realpath "$1")
U=${U:-http://127.0.0.1:18081}
work=$(mktemp -d)
"$BIN" broker --partitions 16 > "$work/broker.txt" 2> "$work/broker.err" &
BROKER=$!
for _ in $(seq 1 100); do grep -q '^bootstrap.servers=' "$work/broker.txt" 2>/dev/null && break; sleep 0.1; done
export HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS=$(sed -n 's/^bootstrap.servers=//p' "$work/broker.txt")
HOOKRELAY_RETRY__MAX_RETRIES=0 timeout 600 "$BIN" bench --separate --sends 150000 \
  --url $U/a --url $U/b --url $U/c --url $U/d --url $U/e --url $U/f --url $U/g --url $U/h --url $U/i --url $U/fail 2>&1 | tail -25
kill $BROKER; wait $BROKER 2>/dev/null
rm -rf "$work"
