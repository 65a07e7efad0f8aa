"""A silent MQTT 3.1.1 client written from the spec: CONNECT with keep-alive 1 s and a will,
then nothing. The server must drop it after 1.5 x keep-alive and publish the will.

Usage: raw_keepalive.py HOST PORT DEVICE TOKEN; prints the CONNACK return code and how long the
server took to close the connection.
"""
import json
import socket
import struct
import sys
import time

host, port, device, token = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]


def s(x):
    b = x.encode() if isinstance(x, str) else x
    return struct.pack("!H", len(b)) + b


def varint(n):
    out = b""
    while True:
        d = n % 128
        n //= 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


will = json.dumps({"ts": 1764000000555, "metrics": {"online": False}})
var = s("MQTT") + bytes([4, 0xCE]) + struct.pack("!H", 1)
payload = s(f"raw-{device}") + s(f"edgepipe/v1/{device}/telemetry") + s(will) + s(device) + s(token)
pkt = bytes([0x10]) + varint(len(var) + len(payload)) + var + payload
sock = socket.create_connection((host, port), timeout=10)
sock.sendall(pkt)
connack = sock.recv(4)
t0 = time.time()
sock.settimeout(10)
try:
    closed = sock.recv(1) == b""
except (ConnectionResetError, socket.timeout):
    closed = True
print(json.dumps({"connack_rc": connack[3] if len(connack) == 4 else None, "closed": closed, "after_s": round(time.time() - t0, 2)}))
