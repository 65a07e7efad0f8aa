"""Peers for `edgepipe bench lake`, on the same rows and files, in the same run:
pyarrow writing the lake's rows as one zstd Parquet file (rows/s), and DuckDB running the three
standard queries over the lake's files (median ms). Prints JSON.

Usage: bench_lake_peers.py LAKE_DIR RUNS
"""
import json
import statistics
import sys
import tempfile
import time

import duckdb
import pyarrow.dataset as ds
import pyarrow.parquet as pq

lake, runs = sys.argv[1], int(sys.argv[2])
table = ds.dataset(lake + "/readings", format="parquet", partitioning=None).to_table()
times = []
with tempfile.TemporaryDirectory() as tmp:
    for i in range(3):
        t = time.perf_counter()
        pq.write_table(table, f"{tmp}/w{i}.parquet", compression="zstd")
        times.append(time.perf_counter() - t)
write_s = statistics.median(times)

src = f"read_parquet('{lake}/readings/*/*/*.parquet', hive_partitioning = true)"
queries = [
    ("last value per series", f"SELECT device_id, metric, arg_max(value, ts) AS v FROM {src} GROUP BY 1, 2"),
    ("hourly avg/min/max per device for a day",
     f"SELECT device_id, date_trunc('hour', ts) AS h, avg(value), min(value), max(value) FROM {src} "
     "WHERE ts >= TIMESTAMPTZ '2026-01-01 00:00:00+00' AND ts < TIMESTAMPTZ '2026-01-02 00:00:00+00' GROUP BY 1, 2"),
    ("one series' raw points for an hour",
     f"SELECT ts, value FROM {src} WHERE device_id = 'dev-0003' AND metric = 'm2' "
     "AND ts >= TIMESTAMPTZ '2026-01-01 02:00:00+00' AND ts < TIMESTAMPTZ '2026-01-01 03:00:00+00' ORDER BY ts"),
]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
out_q = []
for name, sql in queries:
    ts = []
    rows = 0
    for _ in range(runs):
        t = time.perf_counter()
        rows = con.execute(sql).fetch_arrow_table().num_rows
        ts.append((time.perf_counter() - t) * 1000)
    out_q.append({"name": name, "rows": rows, "median_ms": statistics.median(ts), "runs_ms": ts})
print(json.dumps({
    "pyarrow_rows": table.num_rows,
    "pyarrow_write_seconds": write_s,
    "pyarrow_write_rows_per_sec": table.num_rows / write_s,
    "duckdb_threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
    "duckdb_queries": out_q,
}))
