#!/usr/bin/env bash
# MQTT over TLS, side by side in one run: edgepipe (fsync before every PUBACK) vs Mosquitto 2 with
# a TLS listener and persistence on, same machine, same server certificate (from `edgepipe ca
# init`), same clients: `edgepipe bench ingest --tls-ca` for QoS 1 throughput and 10,000 idle
# connections, `openssl s_time -new` (4 in parallel) for full handshakes per second.
# Usage: scripts/bench-tls.sh [DURATION] [RUNS]   (default 10s, 3 runs; medians); prints markdown.
# PHASES="throughput handshakes idle" (the default) picks phases. The idle phase starts fresh
# servers: after the throughput phase edgepipe still holds its lake and detection backlog.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10s}"
RUNS="${2:-3}"
BIN="${CARGO_TARGET_DIR:-target}/release/edgepipe"
[ -x "$BIN" ] || cargo build --release -p edgepipe-server
ulimit -n 65536 2>/dev/null || true
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EP_PORT=$(free_port); EPS_PORT=$(free_port); HTTP_PORT=$(free_port); MQ_PORT=$(free_port)

mkdir -p "$WORK/ep" "$WORK/mq"
"$BIN" ca init --data-dir "$WORK/ep" > /dev/null
CA="$WORK/ep/ca/trust.pem"; CERT="$WORK/ep/ca/server.pem"; KEY="$WORK/ep/ca/server.key"
cp "$CERT" "$KEY" "$CA" "$WORK/mq/" && chmod 644 "$WORK/mq/server.key"
# The generator's 10,000 client ids, registered with password "bench" (registration is not
# part of the numbers).
python3 - "$WORK/ep/devices.json" <<'PY'
import hashlib, json, sys
h = hashlib.sha256(b"bench").hexdigest()
devs = {f"bench-{i:05}": {"id": f"bench-{i:05}", "token_sha256": h, "enabled": True,
        "created_at": 0, "rotated_at": 0, "auto_registered": False} for i in range(10000)}
json.dump({"version": 1, "devices": devs}, open(sys.argv[1], "w"))
PY
"$BIN" serve --data-dir "$WORK/ep" --mqtt-addr "127.0.0.1:$EP_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
  --mqtts-addr "127.0.0.1:$EPS_PORT" --tls-cert "$CERT" --tls-key "$KEY" --device-rate 0 > "$WORK/ep.log" 2>&1 &
EP_PID=$!
cat > "$WORK/mq/mosquitto.conf" <<CONF
user root
listener $MQ_PORT 127.0.0.1
cafile $WORK/mq/trust.pem
certfile $WORK/mq/server.pem
keyfile $WORK/mq/server.key
allow_anonymous true
persistence true
persistence_location $WORK/mq/
autosave_interval 1
set_tcp_nodelay true
max_connections -1
CONF
mosquitto -c "$WORK/mq/mosquitto.conf" > "$WORK/mq.log" 2>&1 &
MQ_PID=$!
sleep 2

bench() { # port extra-args... -> json
  local port=$1; shift
  "$BIN" bench ingest --target "127.0.0.1:$port" --tls-ca "$CA" --tls-name localhost \
    --password bench --duration "$DUR" --json "$@" 2>/dev/null
}
median() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.0f}")' "$@"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]] or 0)' "$1" "$2"; }

PHASES="${PHASES:-throughput handshakes idle}"
has() { case " $PHASES " in *" $1 "*) return 0;; *) return 1;; esac; }

if has throughput; then
echo "| scenario (TLS 1.3, QoS 1) | server | msgs/s acked (median of $RUNS) | readings/s | PUBACK p50 ms | p99 ms |"
echo "| --- | --- | ---: | ---: | ---: | ---: |"
for spec in "10 conn, batch 1|--connections 10" "10 conn, batch 100|--connections 10 --batch 100"; do
  name="${spec%%|*}"; args="${spec#*|}"
  for target in "edgepipe $EPS_PORT" "mosquitto $MQ_PORT"; do
    set -- $target
    msgs=(); reads=(); p50=(); p99=()
    for _ in $(seq "$RUNS"); do
      # shellcheck disable=SC2086
      j=$(bench "$2" $args)
      msgs+=("$(field "$j" msgs_per_s)"); reads+=("$(field "$j" readings_per_s)")
      p50+=("$(field "$j" latency_p50_us)"); p99+=("$(field "$j" latency_p99_us)")
    done
    printf '| %s | %s | %s | %s | %.2f | %.2f |\n' "$name" "$1" "$(median "${msgs[@]}")" "$(median "${reads[@]}")" \
      "$(python3 -c "print($(median "${p50[@]}")/1000)")" "$(python3 -c "print($(median "${p99[@]}")/1000)")"
  done
done

fi

if has handshakes; then
echo
echo "| full TLS handshakes (openssl s_time -new, 4 clients x 10 s) | server | handshakes/s (median of $RUNS) |"
echo "| --- | --- | ---: |"
for target in "edgepipe $EPS_PORT" "mosquitto $MQ_PORT"; do
  set -- $target
  rates=()
  for _ in $(seq "$RUNS"); do
    pids=()
    for c in 1 2 3 4; do
      openssl s_time -connect "127.0.0.1:$2" -new -time 10 -CAfile "$CA" > "$WORK/st.$c" 2>&1 &
      pids+=($!)
    done
    wait "${pids[@]}" || true
    total=0
    for c in 1 2 3 4; do
      n=$(awk '/connections in [0-9.]+ real seconds/ {print $1; exit}' "$WORK/st.$c")
      total=$((total + ${n:-0}))
    done
    rates+=("$(python3 -c "print($total / 10)")")
  done
  echo "| full handshakes | $1 | $(median "${rates[@]}") |"
done

fi

rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
anon_mb() { awk '/RssAnon/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }
if has idle; then
# Fresh servers (same certificate and registry), so nothing but the connections is measured.
kill "$EP_PID" "$MQ_PID"; wait "$EP_PID" "$MQ_PID" 2>/dev/null || true
rm -rf "$WORK/ep/wal" "$WORK/ep/lake" "$WORK/ep/detect" "$WORK/mq/mosquitto.db"
"$BIN" serve --data-dir "$WORK/ep" --mqtt-addr "127.0.0.1:$EP_PORT" --http-addr "127.0.0.1:$HTTP_PORT" \
  --mqtts-addr "127.0.0.1:$EPS_PORT" --tls-cert "$CERT" --tls-key "$KEY" --device-rate 0 > "$WORK/ep2.log" 2>&1 &
EP_PID=$!
mosquitto -c "$WORK/mq/mosquitto.conf" > "$WORK/mq2.log" 2>&1 &
MQ_PID=$!
sleep 3
echo
echo "| idle TLS connections (fresh servers) | server | RSS before (anonymous) | RSS with the connections held (anonymous) |"
echo "| --- | --- | ---: | ---: |"
for target in "edgepipe $EPS_PORT $EP_PID" "mosquitto $MQ_PORT $MQ_PID"; do
  set -- $target
  before="$(rss_mb "$3") MB ($(anon_mb "$3") MB)"
  "$BIN" bench ingest --target "127.0.0.1:$2" --tls-ca "$CA" --tls-name localhost --password bench \
    --connections 10000 --rate 10 --duration 45s --json > "$WORK/idle.json" 2>/dev/null &
  BPID=$!
  sleep 40
  during="$(rss_mb "$3") MB ($(anon_mb "$3") MB)"
  wait $BPID || true
  conns=$(python3 -c "import json;print(json.load(open('$WORK/idle.json'))['connections'])" 2>/dev/null || echo "?")
  echo "| $conns | $1 | ${before} | ${during} |"
done
fi
