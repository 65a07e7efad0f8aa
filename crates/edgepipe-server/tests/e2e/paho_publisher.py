"""QoS 1 publisher for the kill -9 test: publishes numbered readings through server restarts,
reconnecting, and appends the number of every PUBACKed message to ACKED_FILE.

Usage: paho_publisher.py HOST PORT DEVICE TOKEN ACKED_FILE STOP_FILE
Stops publishing when STOP_FILE exists, waits for outstanding acks (bounded), exits.
"""
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, device, token, acked_path, stop_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
base_ts = 1764000000000
lock = threading.Lock()
mid_to_n = {}
early_acks = set()  # PUBACKs that arrived before publish() returned the mid
acked = open(acked_path, "a", buffering=1)
connected = threading.Event()

c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"kill9-{device}", protocol=mqtt.MQTTv311, clean_session=False)
c.username_pw_set(device, token)
c.max_inflight_messages_set(50)
c.reconnect_delay_set(min_delay=0.05, max_delay=0.5)


def on_connect(client, userdata, flags, reason_code, properties):
    if not reason_code.is_failure:
        connected.set()


def on_disconnect(client, userdata, flags, reason_code, properties):
    connected.clear()


def on_publish(client, userdata, mid, reason_code, properties):
    # Never call into paho while holding `lock`: paho holds its own mutex while calling us.
    with lock:
        n = mid_to_n.pop(mid, None)
        if n is None:
            early_acks.add(mid)
            return
        acked.write(f"{n}\n")


c.on_connect = on_connect
c.on_disconnect = on_disconnect
c.on_publish = on_publish
c.connect_async(host, port, keepalive=5)
c.loop_start()
connected.wait(20)

n = 0
while not os.path.exists(stop_path):
    if not connected.is_set() or len(c._out_messages) > 200:
        time.sleep(0.002)
        continue
    payload = json.dumps({"ts": base_ts + n, "metrics": {"n": n}})
    info = c.publish(f"edgepipe/v1/{device}/telemetry", payload, qos=1)
    with lock:
        if info.mid in early_acks:
            early_acks.discard(info.mid)
            acked.write(f"{n}\n")
        else:
            mid_to_n[info.mid] = n
    n += 1

deadline = time.time() + 20
while time.time() < deadline:
    with lock:
        if not mid_to_n:
            break
    time.sleep(0.05)
c.disconnect()
c.loop_stop()
print(json.dumps({"published": n, "unacked": len(mid_to_n)}))
