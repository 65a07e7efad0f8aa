"""MQTT 5 checks against an edgepipe server with paho-mqtt (a client we did not write).

Usage: paho_v5.py HOST PORT DEVICE TOKEN OTHER_DEVICE
Prints one JSON object with the reason codes observed.
"""
import json
import sys
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

host, port, device, token, other = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
result = {}


def connect(username, password, will=None):
    done = threading.Event()
    state = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"paho-{username}", protocol=mqtt.MQTTv5)
    c.username_pw_set(username, password)
    if will is not None:
        c.will_set(f"edgepipe/v1/{username}/telemetry", will, qos=1)

    def on_connect(client, userdata, flags, reason_code, properties):
        state["connack"] = reason_code.value
        done.set()

    acks = {}
    ack_events = {}

    def on_publish(client, userdata, mid, reason_code, properties):
        acks[mid] = reason_code.value
        ack_events.setdefault(mid, threading.Event()).set()

    c.on_connect = on_connect
    c.on_publish = on_publish
    c.connect(host, port, keepalive=30)
    c.loop_start()
    done.wait(10)
    return c, state, acks, ack_events


def publish(c, acks, ack_events, topic, payload):
    info = c.publish(topic, payload, qos=1)
    ev = ack_events.setdefault(info.mid, threading.Event())
    ev.wait(10)
    return acks.get(info.mid)


c, state, acks, evs = connect(device, token)
result["connack"] = state.get("connack")
topic = f"edgepipe/v1/{device}/telemetry"
result["good"] = publish(c, acks, evs, topic, json.dumps({"ts": 1764000000000, "metrics": {"temp": 21.5, "ok": True, "count": 7, "state": "run"}}))
result["bad_payload"] = publish(c, acks, evs, topic, b"{not json")
result["nan"] = publish(c, acks, evs, topic, b'{"metrics": {"temp": NaN}}')
result["other_device"] = publish(c, acks, evs, f"edgepipe/v1/{other}/telemetry", json.dumps({"metrics": {"temp": 1}}))
result["unknown_topic"] = publish(c, acks, evs, "somewhere/else", b"1")
c.disconnect()
c.loop_stop()

c2, state2, _, _ = connect(device, "wrong-token")
result["wrong_token_connack"] = state2.get("connack")
c2.loop_stop()

print(json.dumps(result))
