#!/usr/bin/env bash
# Before/after MQTT ingest on one machine: two `edgepipe` builds, each on a fresh server per
# run, alternating (A, B, A, B...) so drift of the machine hits both alike; one load generator
# (A's `edgepipe bench ingest`) for both. Prints every run and the medians per build.
# Usage: scripts/bench-ingest-ab.sh A_BIN B_BIN [ROUNDS=4] [DURATION=5s] [CONNECTIONS="1 10"]
set -euo pipefail
A="$1"; B="$2"; ROUNDS="${3:-4}"; DUR="${4:-5s}"; CONNS="${5:-1 10}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
one() { # bin connections -> msgs/s
  local bin=$1 conns=$2 dir="$WORK/run" mq http
  rm -rf "$dir"; mkdir -p "$dir"
  python3 - "$dir/devices.json" <<'PY'
import hashlib, json, sys
h = hashlib.sha256(b"bench").hexdigest()
devs = {f"bench-{i:05}": {"id": f"bench-{i:05}", "token_sha256": h, "enabled": True,
        "created_at": 0, "rotated_at": 0, "auto_registered": False} for i in range(1000)}
json.dump({"version": 1, "devices": devs}, open(sys.argv[1], "w"))
PY
  mq=$(free_port); http=$(free_port)
  "$bin" serve --data-dir "$dir" --mqtt-addr "127.0.0.1:$mq" --http-addr "127.0.0.1:$http" \
    --device-rate 0 > "$WORK/server.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$mq") 2>/dev/null && break; sleep 0.1; done
  "$A" bench ingest --target "127.0.0.1:$mq" --password bench --duration "$DUR" \
    --connections "$conns" --json 2>/dev/null \
    | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["msgs_per_s"]))'
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
}
declare -A runs
for round in $(seq "$ROUNDS"); do
  for c in $CONNS; do
    for side in A B; do
      bin=$A; [ "$side" = B ] && bin=$B
      r=$(one "$bin" "$c")
      runs[$side.$c]+="$r "
      echo "round $round, $c connection(s), $side: $r msgs/s"
    done
  done
done
echo
echo "| connections | A median msgs/s (runs) | B median msgs/s (runs) | B/A |"
echo "| ---: | ---: | ---: | ---: |"
for c in $CONNS; do
  python3 - "$c" "${runs[A.$c]}" "${runs[B.$c]}" <<'PY'
import statistics, sys
c, a, b = sys.argv[1], [int(x) for x in sys.argv[2].split()], [int(x) for x in sys.argv[3].split()]
ma, mb = statistics.median(a), statistics.median(b)
print(f"| {c} | {ma:,.0f} ({', '.join(f'{x:,}' for x in a)}) | {mb:,.0f} ({', '.join(f'{x:,}' for x in b)}) | {mb/ma:.2f}x |")
PY
done
