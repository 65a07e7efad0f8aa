"""Holds an MQTT 5 connection (paho-mqtt) over TLS with a device certificate, or in plain with a
token when CA is "-", publishing QoS 1 every 100 ms, until the server closes it; prints "connected", then "closed AFTER_S" (seconds
since the file named by --mark-file appeared) and exits 0. Exits 2 if never connected and 3 if
still connected after 30 s.

Usage: paho_tls_hold.py HOST PORT CA CERT KEY DEVICE MARK_FILE [TOKEN]
"""
import json
import os
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt

host, port, ca, cert, key, device, mark = sys.argv[1:8]
token = sys.argv[8] if len(sys.argv) > 8 else None
connected = threading.Event()
closed = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"hold-{device}", protocol=mqtt.MQTTv5)
if ca != "-":
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
if token:
    c.username_pw_set(device, token)
c.on_connect = lambda client, userdata, flags, rc, props: connected.set() if not rc.is_failure else None
c.on_disconnect = lambda client, userdata, flags, rc, props: closed.set()
c.connect(host, int(port), keepalive=30)
c.loop_start()
if not connected.wait(10):
    print("no connack", file=sys.stderr)
    sys.exit(2)
print("connected", flush=True)
n = 0
deadline = time.time() + 30
while not closed.is_set() and time.time() < deadline:
    c.publish(f"edgepipe/v1/{device}/telemetry", json.dumps({"ts": int(time.time() * 1000), "metrics": {"n": n}}), qos=1)
    n += 1
    time.sleep(0.1)
if not closed.is_set():
    print("still connected after 30 s", file=sys.stderr)
    sys.exit(3)
print(f"closed {time.time() - os.path.getmtime(mark):.3f}", flush=True)
c.loop_stop()
