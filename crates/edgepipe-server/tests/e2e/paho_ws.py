"""Publishes N QoS 1 readings with paho-mqtt's WebSocket transport (MQTT 3.1.1), over TLS when a
CA file is given, waiting for every PUBACK; prints "acked N".

Usage: paho_ws.py HOST PORT DEVICE TOKEN N [CA_FILE]
"""
import json
import ssl
import sys
import time

import paho.mqtt.client as mqtt

host, port, device, token, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
ca = sys.argv[6] if len(sys.argv) > 6 else None
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ws-{device}", transport="websockets",
                protocol=mqtt.MQTTv311)
c.ws_set_options(path="/mqtt")
if ca:
    c.tls_set(ca_certs=ca, tls_version=ssl.PROTOCOL_TLS_CLIENT)
c.username_pw_set(device, token)
rc = c.connect(host, port, keepalive=30)
c.loop_start()
base = int(time.time() * 1000) - 5000
infos = [c.publish(f"edgepipe/v1/{device}/telemetry",
                   json.dumps({"ts": base + i, "metrics": {"n": i}}), qos=1) for i in range(n)]
for info in infos:
    info.wait_for_publish(timeout=10)
acked = sum(1 for i in infos if i.is_published())
c.disconnect()
c.loop_stop()
print(f"acked {acked}", flush=True)
sys.exit(0 if acked == n else 1)
