#!/usr/bin/env python3
"""Reading acknowledged -> anomaly event, measured in a running server (issue 4's "reading ack
-> anomaly event p99 <= 1 s").

Starts a release `edgepipe serve` (default configuration, ephemeral ports, a temporary data
dir), warms up one series on each of N devices over HTTP (300 ordinary readings each), then,
one device at a time (silence detection off, so no other event interleaves), publishes one
spiking reading at QoS 1 with paho-mqtt (a client no one
here wrote) and takes the time its PUBACK arrives; it then polls the server's `/metrics` every
2 ms until `edgepipe_cases_events_received_total` has grown: the detection stage scored the
reading, raised the event and the case manager committed it to the case store. So the figure is
an upper bound of ack -> event (it includes the case store's transaction).

With LOAD=N in the environment, `edgepipe bench ingest` publishes N messages/s (10 connections,
QoS 1, one reading each, devices of their own) to the same server while the spikes are timed.

Usage: [LOAD=N] scripts/bench-detect-latency.py [BIN] [DEVICES]   (BIN defaults to the release build)
"""

import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt

TOKEN = "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(http, name):
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise RuntimeError(f"{name} not exported")


def main():
    target = os.environ.get("CARGO_TARGET_DIR", "target")
    binary = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else f"{target}/release/edgepipe"
    devices = int(sys.argv[2]) if len(sys.argv) > 2 else 30
    work = tempfile.mkdtemp()
    data = os.path.join(work, "data")
    os.makedirs(data)
    h = hashlib.sha256(TOKEN.encode()).hexdigest()
    ids = [f"lat-{i:03}" for i in range(devices)]
    load = int(os.environ.get("LOAD", "0"))
    # The load generator's devices (`bench-00000` ...), same token.
    everyone = ids + [f"bench-{i:05}" for i in range(10)]
    with open(os.path.join(data, "devices.json"), "w") as f:
        json.dump(
            {
                "version": 1,
                "devices": {
                    d: {"id": d, "token_sha256": h, "enabled": True, "created_at": 0,
                        "rotated_at": 0, "auto_registered": False}
                    for d in everyone
                },
            },
            f,
        )
    # Silence detection off: the devices go quiet one after another while the spikes are
    # timed, and a silence event of another device would be counted as the spike's event.
    config = os.path.join(work, "edgepipe.toml")
    with open(config, "w") as f:
        f.write("[detect.detector.silence]\nenabled = false\n")
    mqtt_port, http_port = free_port(), free_port()
    http = f"127.0.0.1:{http_port}"
    log = open(os.path.join(work, "server.log"), "w")
    gen = None
    srv = subprocess.Popen(
        [binary, "serve", "--config", config, "--data-dir", data,
         "--mqtt-addr", f"127.0.0.1:{mqtt_port}",
         "--http-addr", http, "--device-rate", "0"],
        stdout=log, stderr=log,
    )
    try:
        for _ in range(100):
            try:
                metric(http, "edgepipe_cases_events_received_total")
                break
            except Exception:
                time.sleep(0.1)
        rng = random.Random(7)
        now = int(time.time() * 1000)
        # Warm-up: 300 readings a series, one a second up to now (live, not backfill).
        for d in ids:
            lines = "\n".join(
                json.dumps({"ts": now - (300 - i) * 1000,
                            "metrics": {"temp": 20.0 + rng.gauss(0, 0.5)}})
                for i in range(300)
            )
            req = urllib.request.Request(
                f"http://{http}/api/v1/ingest", data=lines.encode(), method="POST",
                headers={"Authorization": f"Bearer {TOKEN}", "X-Device-Id": d,
                         "Content-Type": "application/x-ndjson"},
            )
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 200, r.read()
        time.sleep(2.0)
        if load > 0:
            gen = subprocess.Popen(
                [binary, "bench", "ingest", "--target", f"127.0.0.1:{mqtt_port}",
                 "--password", TOKEN, "--connections", "10", "--rate", str(load),
                 "--duration", "600s"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            time.sleep(3.0)
        t_start = time.monotonic()
        scored0 = metric(http, "edgepipe_detect_readings_scored_total")
        base = metric(http, "edgepipe_cases_events_received_total")
        events0 = base
        opened0 = metric(http, "edgepipe_cases_opened_total")
        latencies = []
        for d in ids:
            acked = threading.Event()
            t_ack = [0.0]
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=d, protocol=mqtt.MQTTv311)
            c.username_pw_set(d, TOKEN)

            def on_publish(client, userdata, mid, reason_code, properties, t=t_ack, e=acked):
                t[0] = time.monotonic()
                e.set()

            c.on_publish = on_publish
            c.connect("127.0.0.1", mqtt_port)
            c.loop_start()
            time.sleep(0.05)
            payload = json.dumps({"ts": int(time.time() * 1000), "metrics": {"temp": 95.0}})
            c.publish(f"edgepipe/v1/{d}/telemetry", payload, qos=1)
            if not acked.wait(10):
                raise RuntimeError(f"{d}: no PUBACK")
            while True:
                seen = metric(http, "edgepipe_cases_events_received_total")
                if seen > base:
                    latencies.append((time.monotonic() - t_ack[0]) * 1000.0)
                    base = seen
                    break
                if time.monotonic() - t_ack[0] > 10:
                    raise RuntimeError(f"{d}: no anomaly event within 10 s of the PUBACK")
                time.sleep(0.002)
            c.loop_stop()
            c.disconnect()
        # One event and one new case per device: the spikes, nothing else. Any other event
        # (the load generator's devices, silence) could have been timed as a spike's: refuse
        # the figures then.
        time.sleep(1.0)
        events = metric(http, "edgepipe_cases_events_received_total") - events0
        opened = metric(http, "edgepipe_cases_opened_total") - opened0
        scored = metric(http, "edgepipe_detect_readings_scored_total") - scored0
        elapsed = time.monotonic() - t_start
        if events != len(ids) or opened != len(ids):
            raise RuntimeError(
                f"{int(events)} events and {int(opened)} cases for {len(ids)} spikes: "
                "other events interleaved, the latencies are not the spikes' alone"
            )
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(round(0.99 * (len(latencies) - 1))))]
        print(json.dumps({
            "load_msgs_per_s": load,
            "readings_scored_per_s_meanwhile": round(scored / elapsed),
            "events": len(latencies),
            "cases_opened": int(opened),
            "p50_ms": round(statistics.median(latencies), 1),
            "p99_ms": round(p99, 1),
            "max_ms": round(latencies[-1], 1),
            "all_ms": [round(x, 1) for x in latencies],
        }))
    finally:
        if gen is not None:
            gen.terminate()
            gen.wait(timeout=30)
        srv.terminate()
        srv.wait(timeout=30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
