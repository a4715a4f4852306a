#!/usr/bin/env bash
# 3,000 sends to a host that accepts connections and never answers (127.0.0.1:18099), produced first; then a
# dispatcher, and hookrelay_host_queued_sends sampled every second. BIN= another binary to compare.
set -u
BIN=${BIN:-target/release/hookrelay}
BIN=$(realpath "$BIN")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
cd "$work"
python3 "$here/never_answers.py" & HANG=$!
$BIN broker --partitions 4 > broker2.txt 2>/dev/null & BROKER=$!
for i in $(seq 1 100); do grep -q '^bootstrap.servers=' broker2.txt 2>/dev/null && break; sleep 0.1; done
export HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS=$(sed -n 's/^bootstrap.servers=//p' broker2.txt)
export HOOKRELAY_TELEMETRY__LISTEN=127.0.0.1:19090 HOOKRELAY_SECURITY__SSRF_GUARD=false HOOKRELAY_SECURITY__ANY_PORT=true
$BIN produce --url http://127.0.0.1:18099/hook --rate 100000 --count 3000 > produce.log 2>&1
$BIN dispatch > dispatch.log 2>&1 & D=$!
max=0
for t in $(seq 1 40); do
  sleep 1
  q=$(curl -s 127.0.0.1:19090/metrics | sed -n 's/^hookrelay_host_queued_sends //p')
  [ -n "$q" ] && [ "${q%.*}" -gt "$max" ] && max=${q%.*}
  case $t in 1|2|5|10|20|30|40) echo "t=${t}s queued=$q";; esac
done
echo "max queued: $max"
curl -s 127.0.0.1:19090/metrics | grep -E '^hookrelay_(spilled_sends_total|webhook_requests_in_flight)' | grep -v ' 0$'
kill $D; wait $D 2>/dev/null; kill $BROKER $HANG
