#!/usr/bin/env python3
"""Host isolation, measured as a user runs hookrelay: release binaries as separate processes.

`hookrelay broker`, `hookrelay dispatch` with the shipped defaults (loopback and any port allowed), a Kafka
client (confluent-kafka) producing JSON sends, a fast receiver on 127.0.0.1 and slow or hanging receivers on
127.0.0.2 and up. Prints the fast host's latency (produce -> arrival at the receiver) and what the slow hosts
saw. Needs `pip install confluent-kafka`.

    python3 benches/isolation.py --scenario alone
    python3 benches/isolation.py --scenario slow      # 3,000 sends to one host answering after 3 s
    python3 benches/isolation.py --scenario eight     # 3,000 sends over eight 3 s hosts
    python3 benches/isolation.py --scenario hang      # 20,000 sends to one host that never answers
    python3 benches/isolation.py --scenario memory --partitions 96 --minutes 10

Pass --hookrelay to measure another binary (e.g. an earlier build), --config-extra for more TOML.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from confluent_kafka import Producer


class Receiver:
    """An HTTP endpoint that answers after `delay` seconds (or never, with `hang`), logging arrivals."""

    def __init__(self, ip, delay=0.0, hang=False):
        self.arrivals = {}  # webhook-id -> first arrival (UNIX s)
        self.count = 0
        self.concurrent = 0
        self.max_concurrent = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                now = time.time()
                length = int(self.headers.get("content-length", "0"))
                if length:
                    self.rfile.read(length)
                wid = self.headers.get("webhook-id", "")
                with lock:
                    outer.count += 1
                    outer.arrivals.setdefault(wid, now)
                    outer.concurrent += 1
                    outer.max_concurrent = max(outer.max_concurrent, outer.concurrent)
                try:
                    if hang:
                        time.sleep(3600)
                    elif delay:
                        time.sleep(delay)
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                finally:
                    with lock:
                        outer.concurrent -= 1

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.daemon_threads = True
        ThreadingHTTPServer.request_queue_size = 1024
        self.server = ThreadingHTTPServer((ip, 0), Handler)
        self.url = f"http://{ip}:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def start_broker(hookrelay, partitions):
    p = subprocess.Popen(
        [hookrelay, "broker", "--partitions", str(partitions)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HOOKRELAY_TELEMETRY__LOG_LEVEL": "warn"},
    )
    line = p.stdout.readline().strip()
    assert line.startswith("bootstrap.servers="), line
    return p, line.split("=", 1)[1]


def start_dispatcher(hookrelay, bootstrap, metrics_port, extra):
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(
        f"""[kafka]
bootstrap_servers = "{bootstrap}"
[telemetry]
listen = "127.0.0.1:{metrics_port}"
log_level = "warn"
[security]
allow_cidrs = ["127.0.0.0/8"]
any_port = true
{extra}
"""
    )
    cfg.close()
    return subprocess.Popen([hookrelay, "dispatch", "--config", cfg.name], stderr=sys.stderr)


def metric(port, name):
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def send(i, prefix, url, body="{}"):
    return json.dumps(
        {
            "id": f"{prefix}{i}",
            "workspace_id": f"ws{i % 7}",
            "webhook": {"url": url, "request_method": "POST", "body": body},
        }
    ).encode()


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def isolation(args, producer, fast, others):
    """Interleaves `others` (a list of (receiver, n)) with the fast sends and measures the fast host."""
    plans = [[("fast", i, fast.url) for i in range(args.fast)]]
    for k, (rx, n) in enumerate(others):
        plans.append([(f"slow{k}-", i, rx.url) for i in range(n)])
    order = []
    while any(plans):
        for p in plans:
            if p:
                order.append(p.pop(0))
    produced = {}
    start = time.time()
    for prefix, i, url in order:
        produced[f"{prefix}{i}"] = time.time()
        producer.produce("webhook-sends", send(i, prefix, url), key=f"ws{i % 7}")
        producer.poll(0)
    producer.flush()
    deadline = start + args.timeout
    while len([k for k in fast.arrivals if k.startswith("fast")]) < args.fast and time.time() < deadline:
        time.sleep(0.2)
    lat = [fast.arrivals[k] - produced[k] for k in fast.arrivals if k in produced]
    done = len(lat)
    last = max(fast.arrivals[k] for k in fast.arrivals if k in produced) - start if lat else float("nan")
    print(
        f"fast host: {done}/{args.fast} delivered, p50 {percentile(lat, 0.5):.3f} s, "
        f"p99 {percentile(lat, 0.99):.3f} s, last {last:.1f} s after the first produce"
    )
    for k, (rx, n) in enumerate(others):
        print(f"slow host {k}: {rx.count} requests of {n} sends, most at once {rx.max_concurrent}")


def memory(args, producer, proc, metrics_port, fast_url):
    """A producer outrunning a receiver that answers after 1 s; samples the dispatcher's RSS."""
    body = "x" * 512
    samples = []
    end = time.time() + args.minutes * 60
    i = 0
    done = 0
    while time.time() < end:
        t = time.time()
        # The embedded broker keeps about 5 MiB per partition and drops the oldest beyond that; a consumer
        # left behind the kept range is reset to its start again and again. So the producer outruns the
        # dispatcher only up to a backlog the broker keeps: the dispatcher always has more than it can do.
        if i - done <= args.backlog:
            for _ in range(args.rate // 10):
                producer.produce("webhook-sends", send(i, "m", fast_url, body), key=str(i))  # every partition
                i += 1
        else:
            done = metric(metrics_port, 'hookrelay_sends_total{result="delivered"}') or done
        producer.poll(0)
        if int(t) % 10 == 0 and (not samples or samples[-1][0] < int(t)):
            held = metric(metrics_port, "hookrelay_held_bytes") or 0
            done = metric(metrics_port, 'hookrelay_sends_total{result="delivered"}') or done
            samples.append((int(t), rss_mb(proc.pid), held / 2**20))
            in_flight = metric(metrics_port, "hookrelay_webhook_requests_in_flight") or 0
            parked = metric(metrics_port, "hookrelay_parked_retry_records") or 0
            queued = metric(metrics_port, "hookrelay_host_queued_sends") or 0
            print(
                f"t={int(t - end + args.minutes * 60):4d}s rss {samples[-1][1]:.0f} MB held {samples[-1][2]:.1f} MiB "
                f"in flight {in_flight:.0f} queued {queued:.0f} parked {parked:.0f} produced {i} delivered {done:.0f}",
                flush=True,
            )
        time.sleep(max(0, 0.1 - (time.time() - t)))
    producer.flush()
    half = [s[1] for s in samples if s[0] >= end - args.minutes * 30]
    mean = sum(half) / len(half)
    print(
        f"memory: peak RSS {max(s[1] for s in samples):.0f} MB, last half {min(half):.0f}..{max(half):.0f} MB "
        f"(mean {mean:.0f}, {100 * (max(half) - mean) / mean:+.1f} % / {100 * (min(half) - mean) / mean:+.1f} %), "
        f"peak held {max(s[2] for s in samples):.1f} MiB"
    )


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenario", choices=["alone", "slow", "eight", "hang", "memory"], required=True)
    ap.add_argument("--hookrelay", default="target/release/hookrelay")
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--fast", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate", type=int, default=15000, help="memory: sends produced per second")
    ap.add_argument("--in-flight", type=int, default=10000, help="memory: max_in_flight")
    ap.add_argument("--backlog", type=int, default=100000, help="memory: most sends produced and not yet delivered")
    ap.add_argument("--config-extra", default="")
    args = ap.parse_args()
    # A SIGTERM ends the run through the `finally` below, so no broker or dispatcher is left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    broker, bootstrap = start_broker(args.hookrelay, args.partitions)
    port = 19000 + os.getpid() % 1000
    extra = args.config_extra
    receiver_proc = None
    if args.scenario == "memory":
        # 10,000 connections held for 1 s each: hookrelay's own receiver (tokio), not a thread per request.
        rx_port = 18500 + os.getpid() % 400
        receiver_proc = subprocess.Popen(
            [args.hookrelay, "receiver", "--listen", f"127.0.0.1:{rx_port}", "--latency", "1s"],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "HOOKRELAY_TELEMETRY__LOG_LEVEL": "warn"},
        )
        fast = None
        fast_url = f"http://127.0.0.1:{rx_port}/slow"
    else:
        fast = Receiver("127.0.0.1")
    if args.scenario == "memory":
        extra += f"\n[dispatch]\nmax_in_flight = {args.in_flight}\nmax_in_flight_per_host = {args.in_flight}\n"
        extra += f"[http]\npool_max_idle_per_host = {args.in_flight}\n"
    proc = start_dispatcher(args.hookrelay, bootstrap, port, extra)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    try:
        while not (metric(port, "hookrelay_assigned_partitions") or 0) > 0:
            time.sleep(0.2)
        if args.scenario == "alone":
            isolation(args, producer, fast, [])
        elif args.scenario == "slow":
            isolation(args, producer, fast, [(Receiver("127.0.0.2", delay=3.0), 3000)])
        elif args.scenario == "eight":
            rxs = [Receiver(f"127.0.0.{2 + k}", delay=3.0) for k in range(8)]
            isolation(args, producer, fast, [(rx, 375) for rx in rxs])
        elif args.scenario == "hang":
            isolation(args, producer, fast, [(Receiver("127.0.0.2", hang=True), 20000)])
            for name in ["hookrelay_spilled_sends_total{reason=\"queue_full\"}", "hookrelay_spilled_sends_total{reason=\"queue_wait\"}", "hookrelay_paused_partitions", "hookrelay_saturated_hosts"]:
                print(f"{name} {metric(port, name)}")
        else:
            memory(args, producer, proc, port, fast_url)
    finally:
        if receiver_proc:
            receiver_proc.kill()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.send_signal(signal.SIGTERM)
        broker.wait(timeout=10)
        if receiver_proc:
            receiver_proc.wait(timeout=10)


if __name__ == "__main__":
    main()
