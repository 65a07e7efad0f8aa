#!/usr/bin/env bash
# Stops a loaded server N times (issue 34 item 10: the intermittent ntex "Pipeline is shutding
# down" panic at shutdown). Each round starts `edgepipe serve`, drives it with `edgepipe bench
# ingest` (100 connections, QoS 1) and sends SIGTERM 1.5 s into the load; the round passes if
# the server exits 0 with "shutdown complete" and no "panicked" in its log.
# Usage: scripts/stop-under-load.sh [ROUNDS]   (default 50); prints a summary line, exits 1 on
# any failed round (its log is kept and named).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-50}"
BIN="${CARGO_TARGET_DIR:-target}/release/edgepipe"
[ -x "$BIN" ] || cargo build --release -p edgepipe-server
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

passed=0; panics=0; failed=0; took=()
for r in $(seq "$ROUNDS"); do
  d="$WORK/r$r"; mkdir -p "$d"
  port=$(free_port); http=$(free_port)
  "$BIN" serve --data-dir "$d/data" --mqtt-addr "127.0.0.1:$port" --http-addr "127.0.0.1:$http" \
    --auto-register --device-rate 0 > "$d/out" 2> "$d/log" &
  srv=$!
  for _ in $(seq 100); do grep -q "edgepipe serving" "$d/out" 2>/dev/null && break; sleep 0.05; done
  "$BIN" bench ingest --target "127.0.0.1:$port" --password bench --connections 100 \
    --duration 5s --json > /dev/null 2>&1 &
  load=$!
  sleep 1.5
  t0=$(date +%s.%N)
  kill -TERM "$srv"
  status=0; wait "$srv" || status=$?
  took+=("$(python3 -c "print($(date +%s.%N) - $t0)")")
  kill "$load" 2>/dev/null || true; wait "$load" 2>/dev/null || true
  if grep -q "panicked" "$d/log"; then
    panics=$((panics + 1)); failed=$((failed + 1)); echo "round $r: PANIC (log kept: $d/log)"
  elif [ "$status" -ne 0 ] || ! grep -q "shutdown complete" "$d/log"; then
    failed=$((failed + 1)); echo "round $r: exit $status without a clean shutdown (log kept: $d/log)"
  else
    passed=$((passed + 1)); rm -rf "$d"
  fi
done
median=$(python3 -c 'import statistics,sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.2f}")' "${took[@]}")
echo "stop under load: $ROUNDS rounds, $passed clean, $panics panics, $failed failed; SIGTERM to exit median ${median} s"
[ "$failed" -eq 0 ]
