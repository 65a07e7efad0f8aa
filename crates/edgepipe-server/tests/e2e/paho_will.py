"""Connects with a will message, then dies without DISCONNECT (the server must ingest the will).

Usage: paho_will.py HOST PORT DEVICE TOKEN
"""
import json
import os
import sys
import threading

import paho.mqtt.client as mqtt

host, port, device, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
done = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"will-{device}", protocol=mqtt.MQTTv311)
c.username_pw_set(device, token)
c.will_set(f"edgepipe/v1/{device}/telemetry", json.dumps({"ts": 1764000000999, "metrics": {"online": False}}), qos=1)
c.on_connect = lambda client, userdata, flags, rc, props: done.set()
c.connect(host, port, keepalive=30)
c.loop_start()
if not done.wait(10):
    print("no connack", file=sys.stderr)
    sys.exit(2)
print("connected", flush=True)
os._exit(0)
