"""Reads an edgepipe lake with tools we did not write and prints, per tool, the same aggregates
that the e2e test asks `edgepipe query` for, as one JSON object.

Usage: lake_readers.py LAKE [--spark] [--s3-endpoint URL]
LAKE is a directory, or s3://bucket/prefix with --s3-endpoint (pyarrow only; credentials from
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).
"""
import json
import sys

lake = sys.argv[1]
spark_too = "--spark" in sys.argv
endpoint = None
if "--s3-endpoint" in sys.argv:
    endpoint = sys.argv[sys.argv.index("--s3-endpoint") + 1]

out = {}
# What every reader reports; `sources` and `good` read the string columns that flush files
# keep PLAIN (`source`, `quality`).
KEYS = ["count", "devices", "sum_value", "sum_int", "min_ts", "max_ts", "sources", "good"]

import pyarrow.compute as pc
import pyarrow.dataset as ds

if lake.startswith("s3://"):
    from pyarrow import fs

    s3 = fs.S3FileSystem(endpoint_override=endpoint, region="us-east-1", scheme="http")
    d = ds.dataset(lake[len("s3://"):] + "/readings", filesystem=s3, format="parquet", partitioning="hive")
else:
    d = ds.dataset(lake + "/readings", format="parquet", partitioning="hive")
t = d.to_table(columns=["device_id", "metric", "ts", "value", "value_int", "quality", "source", "hour"])
ts = pc.cast(t["ts"], "int64")
out["pyarrow"] = {
    "count": t.num_rows,
    "devices": len(pc.unique(t["device_id"])),
    "sum_value": pc.sum(t["value"]).as_py() or 0.0,
    "sum_int": pc.sum(t["value_int"]).as_py() or 0,
    "min_ts": pc.min(ts).as_py(),
    "max_ts": pc.max(ts).as_py(),
    "sources": len(pc.unique(t["source"])),
    "good": pc.sum(pc.cast(pc.equal(t["quality"], "good"), "int64")).as_py() or 0,
}

if not lake.startswith("s3://"):
    import duckdb

    con = duckdb.connect()
    row = con.execute(
        f"""SELECT count(*), count(DISTINCT device_id), coalesce(sum(value), 0), coalesce(sum(value_int), 0),
                   epoch_us(min(ts)), epoch_us(max(ts)), count(DISTINCT source),
                   coalesce(sum(CASE WHEN quality = 'good' THEN 1 ELSE 0 END), 0)
            FROM read_parquet('{lake}/readings/*/*/*.parquet', hive_partitioning = true)"""
    ).fetchone()
    out["duckdb"] = dict(zip(KEYS, [row[0], row[1], float(row[2]), int(row[3]), row[4], row[5], row[6], int(row[7])]))

if spark_too:
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    spark = (
        SparkSession.builder.master("local[1]")
        .appName("edgepipe-lake-check")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(lake + "/readings")
    r = df.agg(
        F.count(F.lit(1)),
        F.countDistinct("device_id"),
        F.coalesce(F.sum("value"), F.lit(0.0)),
        F.coalesce(F.sum("value_int"), F.lit(0)),
        F.unix_micros(F.min("ts")),
        F.unix_micros(F.max("ts")),
        F.countDistinct("source"),
        F.coalesce(F.sum(F.when(F.col("quality") == "good", 1).otherwise(0)), F.lit(0)),
    ).collect()[0]
    out["spark"] = dict(zip(KEYS, [r[0], r[1], float(r[2]), int(r[3]), r[4], r[5], r[6], int(r[7])]))
    spark.stop()

print(json.dumps(out))
