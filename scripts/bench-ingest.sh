#!/usr/bin/env bash
# Side-by-side MQTT ingest benchmark: edgepipe (fsync before every PUBACK) vs Mosquitto 2 with
# persistence on, same machine, same load generator (`edgepipe bench ingest --target`), one run.
# Usage: scripts/bench-ingest.sh [DURATION]   (default 10s); prints a markdown table.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10s}"
BIN="${CARGO_TARGET_DIR:-target}/release/edgepipe"
[ -x "$BIN" ] || cargo build --release -p edgepipe-server
ulimit -n 65536 2>/dev/null || true
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EP_PORT=$(free_port); HTTP_PORT=$(free_port); MQ_PORT=$(free_port)

# Pre-register the generator's 10,000 client ids (password "bench") so registration cost is not
# part of the ingest numbers.
mkdir -p "$WORK/ep"
python3 - "$WORK/ep/devices.json" <<'PY'
import hashlib, json, sys
h = hashlib.sha256(b"bench").hexdigest()
devs = {f"bench-{i:05}": {"id": f"bench-{i:05}", "token_sha256": h, "enabled": True,
        "created_at": 0, "rotated_at": 0, "auto_registered": False} for i in range(10000)}
json.dump({"version": 1, "devices": devs}, open(sys.argv[1], "w"))
PY
"$BIN" serve --data-dir "$WORK/ep" --mqtt-addr "127.0.0.1:$EP_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
  --device-rate 0 > "$WORK/ep.log" 2>&1 &
EP_PID=$!
mkdir -p "$WORK/mq"
cat > "$WORK/mq/mosquitto.conf" <<CONF
listener $MQ_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $WORK/mq/
autosave_interval 1
set_tcp_nodelay true
max_connections -1
CONF
mosquitto -c "$WORK/mq/mosquitto.conf" > "$WORK/mq.log" 2>&1 &
MQ_PID=$!
sleep 1

run() { # name port extra-args...
  local name=$1 port=$2; shift 2
  "$BIN" bench ingest --target "127.0.0.1:$port" --password bench --duration "$DUR" --json "$@" 2>/dev/null
}
written() { curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk '/^edgepipe_ingest_messages_written_total /{print $2}'; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
# Anonymous memory only (heap and stacks): VmRSS also counts the executable's resident pages,
# which for a 190 MB binary with DataFusion in it is tens of MB after the load phases touched the
# lake, query and detection code.
anon_mb() { awk '/RssAnon/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

echo "| scenario | server | msgs/s acked | readings/s acked | PUBACK p50 ms | p99 ms | max ms |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
row() { # scenario server json
  python3 - "$1" "$2" "$3" <<'PY'
import json, sys
s, srv, j = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
f = lambda us: "-" if us is None else f"{us/1000:.2f}"
print(f"| {s} | {srv} | {j['msgs_per_s']:.0f} | {j['readings_per_s']:.0f} | {f(j['latency_p50_us'])} | {f(j['latency_p99_us'])} | {f(j['latency_max_us'])} |")
PY
}
for spec in "1 conn, batch 1|--connections 1" "10 conn, batch 1|--connections 10" "100 conn, batch 1|--connections 100" \
            "10 conn, batch 100|--connections 10 --batch 100" "100 conn, batch 100|--connections 100 --batch 100" \
            "10k msg/s fixed, 10 conn|--connections 10 --rate 10000"; do
  name="${spec%%|*}"; args="${spec#*|}"
  w0=$(written)
  # shellcheck disable=SC2086
  row "$name" edgepipe "$(run edgepipe "$EP_PORT" $args)"
  echo "|  | (edgepipe WAL: $(( $(written) - w0 )) messages written during this row) | | | | | |"
  # shellcheck disable=SC2086
  row "$name" mosquitto "$(run mosquitto "$MQ_PORT" $args)"
done

# The idle phase measures connections held by an idle server: first let the lake writer and
# the detection stage finish the load phases' backlog (their WAL lag gauges, records not yet
# checkpointed into the lake or scored, reach 0; at most 300 s), so their buffers are not
# counted as the connections' memory.
lag() { curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk '/^edgepipe_(lake|detect)_wal_lag_records /{s+=$2} END{print s+0}'; }
waited=0
while [ "$(lag)" -gt 0 ] && [ "$waited" -lt 300 ]; do sleep 1; waited=$((waited + 1)); done
# Then let the server settle: a compaction pass must have started after the backlog was done
# and finished (the load's partitions compacted: a pass holds a partition's files and an output
# file of up to 128 MB in memory), and jemalloc must have returned the freed pages (10 s decay):
# RSS within 3 MB over three samples 5 s apart (at most 240 s in all).
metric() { { curl -s "127.0.0.1:$HTTP_PORT/metrics" || true; } | awk -v m="$1" '$1 == m {v = $2} END {print v + 0}'; }
curl -s "127.0.0.1:$HTTP_PORT/metrics" | grep -q '^edgepipe_lake_compaction_runs_total ' \
  || { echo "the server at $BIN exports no compaction gauges: rebuild it (cargo build --release -p edgepipe-server)"; exit 1; }
runs0=$(metric edgepipe_lake_compaction_runs_total)
settled=0; prev=0; calm=0
while [ "$settled" -lt 240 ] && { [ "$(metric edgepipe_lake_compaction_runs_total)" -lt $((runs0 + 2)) ] || [ "$calm" -lt 2 ]; }; do
  sleep 5; settled=$((settled + 5)); now=$(rss_mb "$EP_PID")
  if [ $((now > prev ? now - prev : prev - now)) -le 3 ]; then calm=$((calm + 1)); else calm=0; fi
  prev=$now
done
settle_note="RSS settled at ${prev} MB ${settled} s later"
[ "$calm" -ge 2 ] || settle_note="RSS NOT settled after ${settled} s (last ${prev} MB)"
echo
echo "(edgepipe: the lake writer and detection stage caught up with the load phases after ${waited} s; WAL records not yet in the lake or not yet scored: $(lag); ${settle_note}, after $(( $(metric edgepipe_lake_compaction_runs_total) - runs0 )) compaction passes; partitions compacted in all: $(metric edgepipe_lake_partitions_compacted_total))"
echo
echo "| idle connections | server | server RSS before (anonymous) | RSS with connections held (anonymous) |"
echo "| --- | --- | ---: | ---: |"
for target in "edgepipe $EP_PORT $EP_PID" "mosquitto $MQ_PORT $MQ_PID"; do
  set -- $target
  before="$(rss_mb "$3") MB ($(anon_mb "$3") MB)"
  "$BIN" bench ingest --target "127.0.0.1:$2" --password bench --connections 10000 --rate 10 --duration 45s --json > "$WORK/idle.json" 2>/dev/null &
  BPID=$!
  sleep 40
  during="$(rss_mb "$3") MB ($(anon_mb "$3") MB)"
  wait $BPID || true
  conns=$(python3 -c "import json;print(json.load(open('$WORK/idle.json'))['connections'])" 2>/dev/null || echo "?")
  echo "| $conns | $1 | ${before} | ${during} |"
done
echo
echo "edgepipe fsyncs: $(curl -s "127.0.0.1:$HTTP_PORT/metrics" | awk '/^edgepipe_wal_fsyncs /{print $2}')"
