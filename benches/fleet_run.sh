#!/usr/bin/env bash
# Fleet runs from outside, with release binaries as separate processes: three `hookrelay dispatch` in one
# group, a `hookrelay receiver`, `hookrelay produce` producing. The figures in README ("Many dispatchers") come from here.
#
#   benches/fleet_run.sh rate BINARY        # [rate_limits] 50/s for the receiver's host, a backlog on every
#                                           # partition: 1, 2, 3 dispatchers for 60 s each, then one SIGTERMed
#   benches/fleet_run.sh rebalance BINARY   # 30,000 sends at a 500/s limit; a dispatcher joins, one is
#                                           # SIGTERMed, one SIGKILLed mid-run: every id must reach the receiver
#   benches/fleet_run.sh unhealthy BINARY   # a host answering 503 to everything, 60 sends a second (3,600
#                                           # errors a minute from three dispatchers, 1,200 each): when
#                                           # does each answer 598?
#
# BROKER=tansu runs against tansu ($HOOKRELAY_TEST_TANSU, installed by .ci/install-tansu) instead of the
# embedded broker. Prints per-second rates, the time partitions took to move, and the verdicts.
set -u
MODE=$1
BIN=$(realpath "$2")
BROKER=${BROKER:-embedded}
work=$(mktemp -d)
declare -A D
pids=()
cleanup() {
  for p in "${pids[@]}" "${D[@]}"; do kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null
  [ -n "${KEEP:-}" ] && echo "kept: $work" || rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ "$BROKER" = tansu ]; then
  T=${HOOKRELAY_TEST_TANSU:?set HOOKRELAY_TEST_TANSU to the tansu binary}
  BS=127.0.0.1:$(port)
  "$T" broker --listener-url tcp://$BS --advertised-listener-url tcp://$BS --storage-engine memory://tansu/ \
    > "$work/tansu.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/${BS%:*}/${BS#*:}) 2>/dev/null && break; sleep 0.1; done
  for t in webhook-sends webhook-retries-10s webhook-retries-1m webhook-retries-5m webhook-retries-30m \
    webhook-retries-2h webhook-failures webhook-dead-letters webhook-alerts webhook-aggregate-state \
    webhook-host-state webhook-send-events; do
    case $t in webhook-sends|webhook-retries-*) n=12 ;; *) n=3 ;; esac
    "$T" topic create --broker tcp://$BS --partitions $n $t > /dev/null
  done
else
  "$BIN" broker --partitions 12 > "$work/broker.txt" 2> "$work/broker.err" &
  pids+=($!)
  for _ in $(seq 1 100); do grep -q '^bootstrap.servers=' "$work/broker.txt" 2>/dev/null && break; sleep 0.1; done
  BS=$(sed -n 's/^bootstrap.servers=//p' "$work/broker.txt")
fi

RECV=127.0.0.1:$(port)
MIX=200; KEY=workspace; WORKSPACES=48
case $MODE in
  rate) LIMIT=50; N=24000 ;;
  rebalance) LIMIT=500; N=30000 ;;
  # One workspace (one host-and-workspace window), sends keyed by id over every partition, produced at
  # 60/s while the dispatchers run, no retries: each dispatcher gets about 20 a second, 1,200 a minute.
  unhealthy) LIMIT=; N=6600; MIX=503; KEY=id; WORKSPACES=1 ;;
esac
"$BIN" receiver --listen "$RECV" --mix $MIX > /dev/null 2>&1 &
pids+=($!)
cat > "$work/d.toml" <<EOF
[kafka]
bootstrap_servers = "$BS"
[security]
allow_cidrs = ["127.0.0.0/8"]
any_port = true
[retry]
initial_backoff = "1s"
max_retries = $([ "$MODE" = unhealthy ] && echo 0 || echo 10)
[dispatch]
max_hold = "${MAX_HOLD:-10s}"
[rate_limits]
$([ -n "$LIMIT" ] && echo "\"127.0.0.1\" = $LIMIT.0")
EOF

# A backlog on every partition (48 workspaces: records are keyed by workspace; or by id), through
# hookrelay's own producer (kcat's librdkafka may be too old for tansu).
produce() { # produce [RATE]
"$BIN" produce --config "$work/d.toml" --url "http://$RECV/hook" --rate ${1:-100000} --count "$N" --workspaces $WORKSPACES --key-by $KEY \
  > "$work/produce.txt" 2>&1 || { echo "producing failed:"; cat "$work/produce.txt"; exit 1; }
echo "produced $N sends to $BROKER at $BS; the receiver's host is limited to ${LIMIT:-(no limit)}/s ($(tail -1 "$work/produce.txt"))"
}
# The unhealthy-host run produces once all three dispatchers own partitions, so each gets a third.
[ "$MODE" = unhealthy ] || produce

start() { # start NAME
  local m=127.0.0.1:$(port)
  HOOKRELAY_TELEMETRY__LISTEN=$m "$BIN" dispatch --config "$work/d.toml" 2> "$work/$1.log" &
  D[$1]=$!
  echo "$m" > "$work/$1.metrics"
}
owned() { # owned NAME: partitions it owns now
  curl -s "$(cat "$work/$1.metrics")/metrics" 2>/dev/null | awk '/^hookrelay_assigned_partitions /{print $2+0}'
}
received() { curl -s "$RECV/_stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["total"], s["delivered_ids"], s["redelivered"])'; }

t0=$(date +%s.%N)
now() { python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')"; }
attempts() { # attempts NAME: requests it has made
  curl -s "$(cat "$work/$1.metrics")/metrics" 2>/dev/null |
    awk '/^hookrelay_webhook_attempts_total/{s+=$2} END{print s+0}'
}
sampler() { # about one line a second: elapsed, requests so far, distinct ids delivered, redelivered
  while true; do echo "$(now) $(received)"; sleep 1; done > "$work/samples.txt"
}
per_instance() { # about every 5 s: elapsed, then each dispatcher's requests so far
  while true; do
    line="$(now)"
    for n in a b c; do [ -f "$work/$n.metrics" ] && line="$line $n=$(attempts $n)"; done
    echo "$line"
    sleep 5
  done > "$work/instances.txt"
}
event() { echo "$(now) $*" | tee -a "$work/events.txt"; }
# Waits until the live dispatchers own TOTAL partitions together (and NAME some, if given); prints seconds.
settle() { # settle TOTAL [NAME]
  local from; from=$(date +%s.%N)
  for _ in $(seq 1 600); do
    local sum=0 ok=1
    for n in "${!D[@]}"; do o=$(owned "$n"); sum=$((sum + ${o:-0})); done
    [ -n "${2:-}" ] && [ "$(owned "$2")" = "" -o "$(owned "$2")" = "0" ] && ok=0
    [ "$sum" = "$1" ] && [ $ok = 1 ] && { python3 -c "print(f'{$(date +%s.%N) - $from:.1f}')"; return; }
    sleep 0.5
  done
  echo "never"
}
TOTAL=$((12 * 6))  # the send topic and five retry tiers, 12 partitions each

sampler & pids+=($!)
per_instance & pids+=($!)
if [ "$MODE" = rate ]; then
  start a; event "a started"; echo "  owned by a in $(settle $TOTAL a) s"
  sleep 60; start b; event "b started"; echo "  shared with b in $(settle $TOTAL b) s"
  sleep 60; start c; event "c started"; echo "  shared with c in $(settle $TOTAL c) s"
  # The phase starts at the signal: b drains its in-flight sends (up to dispatch.shutdown_grace) first.
  sleep 60; kill -TERM "${D[b]}"; event "b SIGTERMed"; from=$(date +%s.%N); wait "${D[b]}"; unset 'D[b]'
  echo "  b stopped $(python3 -c "print(f'{$(date +%s.%N) - $from:.1f}')") s after the signal; back with a and c in $(settle $TOTAL) s more"
  sleep 60; event "end"
elif [ "$MODE" = unhealthy ]; then
  start a; start b; start c; event "a, b and c started"
  for n in a b c; do echo "  $n owns partitions after $(settle $TOTAL $n) s"; done
  produce 60 & pids+=($!); event "producing 60 a second"
  count() { # count NAME CLASS
    curl -s "$(cat "$work/$1.metrics")/metrics" 2>/dev/null |
      awk -v c="hookrelay_webhook_attempts_total{class=\"$2\"}" '$1==c{print $2+0; f=1} END{if(!f) print 0}'
  }
  for _ in $(seq 1 200); do
    line="$(now)"
    for n in a b c; do line="$line $(count $n 5xx) $(count $n 598)"; done
    echo "$line"
    sleep 0.5
  done > "$work/health.txt"
  event "end"
  python3 - "$work/health.txt" <<'PY'
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if len(l.split()) == 7]
cross = next((r[0] for r in rows if r[1] + r[3] + r[5] > 3000), None)
print(f"the fleet's 503s passed 3,000 at {cross} s (each dispatcher's own: "
      + ", ".join(f"{n} {int(rows[-1][1 + 2 * i])}" for i, n in enumerate("abc")) + " 503s in all)")
for i, n in enumerate("abc"):
    first = next((r[0] for r in rows if r[2 + 2 * i] > 0), None)
    own = next((r[1 + 2 * i] for r in rows if r[0] == first), None)
    print(f"  {n}: first 598 at {first} s"
          + (f", {first - cross:+.1f} s from the crossing, with {int(own)} 503s of its own" if first and cross else ""))
PY
  exit 0
else
  start a; start b; event "a and b started"; echo "  owned in $(settle $TOTAL) s"
  sleep 10; start c; event "c started"; echo "  shared with c in $(settle $TOTAL c) s"
  sleep 10; kill -TERM "${D[a]}"; wait "${D[a]}"; unset 'D[a]'; event "a stopped (SIGTERM)"
  echo "  taken over in $(settle $TOTAL) s"
  sleep 10; kill -9 "${D[b]}"; wait "${D[b]}" 2>/dev/null; unset 'D[b]'; event "b killed (SIGKILL)"
  echo "  taken over in $(settle $TOTAL) s"
  for _ in $(seq 1 600); do set -- $(received); [ "$2" -ge "$N" ] && break; sleep 1; done
  event "end"
fi
sleep 1
echo "each dispatcher's requests so far, every 5 s:"; cat "$work/instances.txt"
python3 - "$MODE" "$N" "$LIMIT" "$work/samples.txt" "$work/events.txt" <<'EOF'
import sys
mode, n, limit, samples, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
rows = [l.split() for l in open(samples) if len(l.split()) == 4]
t = [float(r[0]) for r in rows]; total = [int(r[1]) for r in rows]; ids = [int(r[2]) for r in rows]
ev = [(float(l.split()[0]), " ".join(l.split()[1:])) for l in open(events)]
# Samples come about every 1.2 s (a sleep and a request): each is divided by its own interval.
rate = [(total[i] - total[i - 1]) / (t[i] - t[i - 1]) for i in range(1, len(total))]
print("requests per second at the receiver, by sample:", " ".join(f"{r:.0f}" for r in rate))
lo, hi = 0.9 * limit, 1.1 * limit
for (at, what), (end, _) in zip(ev, ev[1:]):
    xs = [r for ti, r in zip(t[1:], rate) if at <= ti < end]
    if not xs:
        continue
    mean = sum(xs) / len(xs)
    back = None
    if mode == "rate":
        # The first sample from which every mean over 5 samples (about 6 s) up to the next event is within
        # ±10 %: seconds after the event.
        ts = [ti for ti in t[1:] if at <= ti < end]
        for k in range(len(xs) - 4):
            if all(lo <= sum(xs[j:j + 5]) / 5 <= hi for j in range(k, len(xs) - 4)):
                back = ts[k] - at
                break
    tail = [r for ti, r in zip(t[1:], rate) if at + 15 <= ti < end]
    tail_mean = sum(tail) / len(tail) if tail else float("nan")
    within = "never" if back is None else f"{back:.1f} s after it"
    print(f"{what:>22}: {end - at:.0f} s, mean {mean:.1f}/s, after its first 15 s {tail_mean:.1f}/s"
          + (f"; within ±10 % for good from {within}" if mode == "rate" else ""))
print(f"distinct ids delivered: {ids[-1]} of {n}; requests {total[-1]}; redelivered {int(rows[-1][3])}")
EOF
