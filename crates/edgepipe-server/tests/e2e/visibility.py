"""Measures how long after its PUBACK a reading is visible to SQL.

Usage: visibility.py MQTT_HOST MQTT_PORT HTTP_ADDR DEVICE TOKEN N
For i in 0..N: publish {"metrics": {"seq": i}} at QoS 1, wait for the PUBACK, then poll
POST /api/v1/query until the reading is counted. Prints {"latencies_ms": [...], "timeouts": k}.
"""
import json
import os
import sys
import time
import urllib.request

import paho.mqtt.client as mqtt

host, port, http, device, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6])
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vis-{device}", protocol=mqtt.MQTTv5)
c.username_pw_set(device, token)
c.connect(host, port, keepalive=30)
c.loop_start()


def visible(i):
    sql = f"SELECT count(*) AS c FROM readings WHERE device_id = '{device}' AND metric = 'seq' AND value_int = {i}"
    req = urllib.request.Request(f"http://{http}/api/v1/query", data=json.dumps({"sql": sql}).encode(), headers={"Content-Type": "application/json", "Authorization": "Bearer " + os.environ["EDGEPIPE_API_TOKEN"]})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["rows"][0]["c"] == 1


lat = []
timeouts = 0
base = int(time.time() * 1000)
for i in range(n):
    info = c.publish(f"edgepipe/v1/{device}/telemetry", json.dumps({"ts": base + i, "metrics": {"seq": i}}), qos=1)
    info.wait_for_publish(10)
    t0 = time.monotonic()
    while not visible(i):
        if time.monotonic() - t0 > 10:
            timeouts += 1
            break
        time.sleep(0.002)
    else:
        lat.append((time.monotonic() - t0) * 1000)
c.disconnect()
c.loop_stop()
print(json.dumps({"latencies_ms": lat, "timeouts": timeouts}))
