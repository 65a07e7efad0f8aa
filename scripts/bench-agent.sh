#!/usr/bin/env bash
# edgepipe-agent footprint: stripped release binary size, RSS at 5,000 readings/s with local
# detection on, CPU at 1,000 readings/s, each measured while the agent forwards everything to a
# running edgepipe server. Prints one line per run and the medians.
# Usage: scripts/bench-agent.sh [SECONDS_PER_RUN] [RUNS]   (default 40 3)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS="${1:-40}"
RUNS="${2:-3}"
T="${CARGO_TARGET_DIR:-target}"
AGENT="$T/release/edgepipe-agent"
SERVER="${EDGEPIPE_SERVER_BIN:-$T/debug/edgepipe}"
[ -x "$AGENT" ] || cargo build --release -p edgepipe-agent
[ -x "$SERVER" ] || cargo build -p edgepipe-server
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cp "$AGENT" "$WORK/agent-stripped"
strip "$WORK/agent-stripped"
echo "binary: release $(stat -c %s "$AGENT") bytes, stripped $(stat -c %s "$WORK/agent-stripped") bytes"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
TOKEN=$("$SERVER" devices --data-dir "$WORK/srv" add gw-bench | tail -1)
"$SERVER" serve --data-dir "$WORK/srv" --mqtt-addr "127.0.0.1:$PORT" --http-addr 127.0.0.1:0 \
  > "$WORK/srv.log" 2>&1 &
sleep 1
CLK=$(getconf CLK_TCK)

# run RATE DETECT -> prints "cpu_pct rss_median_kb rss_max_kb sent_per_s"
run() {
  local rate=$1 detect=$2 dir
  dir="$WORK/a-$rate-$detect-$RANDOM"
  cat > "$dir.toml" <<TOML
agent_id = "gw-bench"
data_dir = "$dir"
[uplink]
url = "mqtt://127.0.0.1:$PORT"
token = "$TOKEN"
[http]
listen = "127.0.0.1:0"
[detect]
enabled = $detect
metrics = ["gen.*"]
[[collectors]]
type = "generator"
name = "gen"
rate = $rate
series = 50
TOML
  "$WORK/agent-stripped" run -c "$dir.toml" > "$dir.out" 2> "$dir.err" &
  local pid=$!
  sleep 5 # warm-up: detector state for every series, first queue segment
  local t0 t1 rss=() sent0 sent1 http
  http=$(sed -n 's/.*http:\/\/\(.*\)/\1/p' "$dir.out")
  sent0=$(curl -s "http://$http/metrics" | awk '/^edgepipe_agent_readings_sent_total\{stream="telemetry"\}/{print $2}')
  t0=$(awk '{print $14+$15}' "/proc/$pid/stat")
  for _ in $(seq "$SECS"); do
    sleep 1
    rss+=("$(awk '/VmRSS/{print $2}' "/proc/$pid/status")")
  done
  t1=$(awk '{print $14+$15}' "/proc/$pid/stat")
  sent1=$(curl -s "http://$http/metrics" | awk '/^edgepipe_agent_readings_sent_total\{stream="telemetry"\}/{print $2}')
  kill -INT "$pid"
  wait "$pid" || true
  local med max
  med=$(printf '%s\n' "${rss[@]}" | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')
  max=$(printf '%s\n' "${rss[@]}" | sort -n | tail -1)
  echo "$(( (t1 - t0) * 100 / CLK / SECS )).$(( ((t1 - t0) * 1000 / CLK / SECS) % 10 )) $med $max $(( (sent1 - sent0) / SECS ))"
}

median() { sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}'; }

echo "| run | rate | detection | CPU % of one core | RSS median (MB) | RSS max (MB) | sent/s |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
declare -a R5 C1
for i in $(seq "$RUNS"); do
  read -r cpu med max sent < <(run 5000 true)
  echo "| $i | 5000/s | on | $cpu | $(awk "BEGIN{printf \"%.1f\", $med/1024}") | $(awk "BEGIN{printf \"%.1f\", $max/1024}") | $sent |"
  R5+=("$med")
  read -r cpu med max sent < <(run 1000 false)
  echo "| $i | 1000/s | off | $cpu | $(awk "BEGIN{printf \"%.1f\", $med/1024}") | $(awk "BEGIN{printf \"%.1f\", $max/1024}") | $sent |"
  C1+=("$cpu")
done
echo
echo "median RSS at 5000/s with detection: $(printf '%s\n' "${R5[@]}" | median | awk '{printf "%.1f MB", $1/1024}')"
echo "median CPU at 1000/s: $(printf '%s\n' "${C1[@]}" | median)% of one core"
