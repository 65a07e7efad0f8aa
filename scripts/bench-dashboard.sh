#!/usr/bin/env bash
# Device page benchmark (issue 7): 7 days of 1 Hz data for 5 metrics of one device, the last
# 2 hours raw (as a live lake has them), the rest compacted with rollups; a release server on
# that data; headless Chromium times the device page's "7d" view from navigation start until
# every chart has drawn (data + render), RUNS times. Also times the series API alone.
# Usage: scripts/bench-dashboard.sh [RUNS]   (default 15)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS="${1:-15}"
BIN="${CARGO_TARGET_DIR:-target}/release/edgepipe"
[ -x "$BIN" ] || cargo build --release -p edgepipe-server
[ -d tests/browser/node_modules ] || (cd tests/browser && npm ci --no-audit --no-fund)
WORK="$(mktemp -d)"
cleanup() { [ -n "${PID:-}" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "generating 7 days x 5 metrics at 1 Hz (3,024,000 readings) ..." >&2
"$BIN" bench lake --devices 1 --metrics 5 --hours 168 --end-now --raw-hours 2 --runs 1 \
  --out "$WORK" > "$WORK/lake.json"
python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print('lake:', d['rows'], 'rows,', d['files_after_compaction'], 'files,', d['bytes_after_compaction'], 'bytes', file=sys.stderr)" "$WORK/lake.json"

HTTP="$(free_port)"; MQTT="$(free_port)"
"$BIN" serve --data-dir "$WORK" --http-addr "127.0.0.1:$HTTP" --mqtt-addr "127.0.0.1:$MQTT" \
  > "$WORK/server.log" 2>&1 &
PID=$!
URL="http://127.0.0.1:$HTTP"
for _ in $(seq 1 300); do
  curl -fsS "$URL/readyz" >/dev/null 2>&1 && [ -s "$WORK/cli.token" ] && break
  sleep 0.2
done
TOKEN="$(cat "$WORK/cli.token")"
# Detection scores the 7 days from the WAL first; wait until it has caught up so it does not
# compete with the page for the 2 cores.
for _ in $(seq 1 600); do
  LAG="$(curl -fsS -H "Authorization: Bearer $TOKEN" "$URL/api/v1/status" |
    python3 -c 'import json,sys; print(max(c["lag_records"] for c in json.load(sys.stdin)["consumers"]))')"
  [ "$LAG" = 0 ] && break
  sleep 1
done
echo "server ready, consumers caught up (lag $LAG)" >&2

# The series API alone (what each chart asks for at 1,366 px: ~1,100 points).
python3 - "$URL" "$TOKEN" <<'PY' >&2
import json, statistics, sys, time, urllib.request
url, tok = sys.argv[1], sys.argv[2]
now = int(time.time() * 1000)
for label, span in (("7 days", 7 * 86400e3), ("1 hour", 3600e3)):
    times = []
    for _ in range(15):
        q = f"{url}/api/v1/series?device=dev-0000&metric=m0&from={int(now - span)}&to={now}&points=1100"
        req = urllib.request.Request(q, headers={"Authorization": f"Bearer {tok}"})
        t = time.perf_counter()
        body = json.load(urllib.request.urlopen(req))
        times.append((time.perf_counter() - t) * 1000)
    print(f"series API, {label}: {len(body['points'])} buckets of {body['step']} ms; "
          f"median {statistics.median(times):.1f} ms, max {max(times):.1f} ms")
# The same 7-day buckets from the raw readings (what /series ran before it read rollups).
sql = ("SELECT date_bin(INTERVAL '600000 milliseconds', ts, to_timestamp_millis({f})) AS t, "
       "min(value), max(value), avg(value), count(*) FROM readings WHERE device_id = 'dev-0000' "
       "AND metric = 'm0' AND ts >= to_timestamp_millis({f}) AND ts < to_timestamp_millis({t}) "
       "GROUP BY 1").format(f=int(now - 7 * 86400e3), t=now)
times = []
for _ in range(5):
    req = urllib.request.Request(f"{url}/api/v1/query", data=json.dumps({"sql": sql}).encode(),
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"})
    t = time.perf_counter()
    body = json.load(urllib.request.urlopen(req))
    times.append((time.perf_counter() - t) * 1000)
print(f"same buckets from raw readings (SQL API): {len(body.get('rows', []))} rows; "
      f"median {statistics.median(times):.1f} ms")
PY

(cd tests/browser && EDGEPIPE_URL="$URL" ADMIN_TOKEN="$TOKEN" DEVICE=dev-0000 METRICS=5 \
  RUNS="$RUNS" RANGE=7d node bench-device-page.mjs)
