#!/usr/bin/env bash
# Side-by-side lake benchmark, one run, same rows and files: edgepipe's lake writer vs pyarrow
# writing the same rows with zstd, and three standard queries in edgepipe vs DuckDB.
# Usage: scripts/bench-lake.sh [HOURS] [DEVICES] [METRICS]   (defaults 6 20 5: 2.16M readings)
set -euo pipefail
cd "$(dirname "$0")/.."
HOURS="${1:-6}"; DEVICES="${2:-20}"; METRICS="${3:-5}"
BIN="${CARGO_TARGET_DIR:-target}/release/edgepipe"
[ -x "$BIN" ] || cargo build --release -p edgepipe-server
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
"$BIN" bench lake --hours "$HOURS" --devices "$DEVICES" --metrics "$METRICS" --out "$WORK" > "$WORK/ours.json"
python3 scripts/bench_lake_peers.py "$WORK/lake" 5 > "$WORK/peers.json"
python3 - "$WORK/ours.json" "$WORK/peers.json" <<'PY'
import json, sys
o = json.load(open(sys.argv[1])); p = json.load(open(sys.argv[2]))
print(f"rows: {o['rows']:,} ({o['series']} series at 1 Hz)")
print("| measure | edgepipe | peer | ratio |")
print("| --- | ---: | ---: | ---: |")
r = o["write_rows_per_sec"] / p["pyarrow_write_rows_per_sec"]
print(f"| lake write, rows/s (edgepipe: WAL records → sorted Parquet; pyarrow: Table → zstd Parquet) | {o['write_rows_per_sec']:,.0f} | {p['pyarrow_write_rows_per_sec']:,.0f} | {r:.2f}x |")
r2 = o["encode_only_rows_per_sec"] / p["pyarrow_write_rows_per_sec"]
print(f"| Parquet encode only, rows/s (both: Arrow rows in memory → one zstd Parquet file) | {o['encode_only_rows_per_sec']:,.0f} | {p['pyarrow_write_rows_per_sec']:,.0f} | {r2:.2f}x |")
for q, d in zip(o["queries"], p["duckdb_queries"]):
    assert q["rows"] == d["rows"], (q, d)
    print(f"| {q['name']} ({q['rows']} rows), median ms vs DuckDB | {q['median_ms']:.1f} | {d['median_ms']:.1f} | {q['median_ms']/d['median_ms']:.2f}x |")
print(f"| bytes per reading after compaction | {o['bytes_per_reading']:.2f} | | |")
ph = o["write_phases_seconds"]
cpu = o.get("write_cpu_seconds")
print(f"write phases (s): read {ph['read_wal_to_arrow']:.3f}, sort+encode {ph['sort_and_encode']:.3f}, "
      f"store {ph['store_and_checkpoint']:.3f}; wall {o['write_seconds']:.3f}"
      + (f", CPU {cpu:.2f} s (all threads)" if cpu is not None else ""))
print(f"files: {o['files_before_compaction']} before compaction (flushes of up to {o.get('flush_max_rows', 0):,} rows), {o['files_after_compaction']} after; "
      f"{o['bytes_before_compaction']:,} -> {o['bytes_after_compaction']:,} bytes; compaction {o['compaction_seconds']:.1f} s; "
      f"DuckDB threads {p['duckdb_threads']}")
PY
