//! Lake writer + query engine together: exactly-once across the flush boundary, crash
//! recovery of a half-done flush, compaction dedup and rollups, partition pruning, limits.

use std::sync::Arc;

use arrow::array::{Array, Float64Array, Int64Array};
use datafusion::prelude::{col, lit};
use edgepipe_lake::{LakeConfig, LakeMetrics, LakeStore, LakeWriter, SwapLock, compact};
use edgepipe_types::{DeviceId, IngestRecord, Metric, Reading, Transport, TsSource, Value};
use edgepipe_wal::{Wal, WalConfig};

use crate::pruning::{partition_filters, ts_bounds};
use crate::{Error, QueryConfig, QueryEngine};

const T0: i64 = 1_764_000_000_000; // 2025-11-24T16:00:00Z, ms

fn record(device: &str, ts: i64, values: &[(&str, Value)]) -> IngestRecord {
    IngestRecord {
        device_id: DeviceId::new(device).expect("device"),
        received_at: ts + 5,
        transport: Transport::Mqtt311,
        origin: None,
        tags: Vec::new(),
        readings: values
            .iter()
            .map(|(m, v)| Reading {
                metric: Metric::new(*m).expect("metric"),
                ts,
                value: v.clone(),
                ts_source: TsSource::Device,
            })
            .collect(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    wal: Arc<Wal>,
    store: LakeStore,
    swap: SwapLock,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal = Arc::new(Wal::open(dir.path().join("wal"), WalConfig::test_config()).expect("wal"));
    let store = LakeStore::local(dir.path().join("lake")).expect("lake");
    Fixture {
        _dir: dir,
        wal,
        store,
        swap: SwapLock::default(),
    }
}

async fn writer(f: &Fixture) -> LakeWriter {
    LakeWriter::open(
        f.store.clone(),
        f.wal.clone(),
        LakeConfig::test_config(),
        Arc::default(),
    )
    .await
    .expect("writer")
}

/// An engine over the fixture's lake; `fresh` adds the writer's unflushed rows.
fn engine_over(f: &Fixture, fresh: Option<edgepipe_lake::FreshBuffer>) -> QueryEngine {
    QueryEngine::new(
        f.store.clone(),
        fresh,
        f.swap.clone(),
        QueryConfig::default(),
    )
}

async fn append(wal: &Wal, recs: &[IngestRecord]) {
    for r in recs {
        wal.append(r.encode()).await.expect("append");
    }
}

async fn count(engine: &QueryEngine, sql: &str) -> i64 {
    let out = engine.query(sql).await.expect("query");
    let b = &out.batches[0];
    b.column(0)
        .as_any()
        .downcast_ref::<Int64Array>()
        .expect("int64")
        .value(0)
}

#[tokio::test]
async fn fresh_and_flushed_rows_are_seen_exactly_once() {
    let f = fixture();
    let mut w = writer(&f).await;
    let engine = engine_over(&f, Some(w.fresh()));
    // 3 hours of data, 2 devices, 2 metrics.
    let mut recs = Vec::new();
    for i in 0..300 {
        let ts = T0 + i * 36_000;
        recs.push(record(
            &format!("dev-{}", i % 2),
            ts,
            &[
                ("temp", Value::F64(20.0 + i as f64)),
                ("on", Value::Bool(i % 3 == 0)),
            ],
        ));
    }
    append(&f.wal, &recs[..200]).await;
    w.read_available().expect("read");
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 400);
    w.flush().await.expect("flush");
    append(&f.wal, &recs[200..]).await;
    w.read_available().expect("read");
    // 400 rows from files, 200 from the buffer.
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 600);
    assert_eq!(
        count(
            &engine,
            "SELECT count(DISTINCT (device_id, metric, ts)) FROM readings"
        )
        .await,
        600
    );
    let parts = count(&engine, "SELECT count(DISTINCT hour) FROM readings").await;
    assert_eq!(parts, 3);
    // Lossless booleans.
    assert_eq!(
        count(&engine, "SELECT count(*) FROM readings WHERE value_bool").await,
        100
    );
    // Lake rows (scanned as Utf8View) and fresh rows together: results keep Utf8 strings,
    // as API and CLI clients have always received them.
    let out = engine
        .query("SELECT device_id, metric, quality, source FROM readings")
        .await
        .expect("query");
    assert_eq!(out.rows, 600);
    for f in out.schema.fields() {
        assert_eq!(
            f.data_type(),
            &arrow::datatypes::DataType::Utf8,
            "{}",
            f.name()
        );
    }
    for b in &out.batches {
        assert_eq!(b.schema(), out.schema);
    }
    w.flush().await.expect("flush");
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 600);
}

#[tokio::test]
async fn a_flush_interrupted_by_a_crash_is_rewritten_not_duplicated() {
    let f = fixture();
    let metrics: Arc<LakeMetrics> = Arc::default();
    let recs: Vec<_> = (0..50)
        .map(|i| record("dev-a", T0 + i * 1000, &[("temp", Value::I64(i))]))
        .collect();
    append(&f.wal, &recs).await;
    {
        let mut w = LakeWriter::open(
            f.store.clone(),
            f.wal.clone(),
            LakeConfig::test_config(),
            metrics.clone(),
        )
        .await
        .expect("writer");
        w.read_available().expect("read");
        w.flush().await.expect("flush");
    }
    // Simulate a crash after a flush stored its files but before the checkpoint moved: take
    // the flushed file, rewind the checkpoint, and leave the marker as a crash would.
    let files = f.store.list("readings/").await.expect("list");
    assert_eq!(files.len(), 1);
    let marker = serde_json::json!({"first": 0, "last": 49, "files": [files[0].0]});
    f.store
        .put(
            "_edgepipe/pending/readings-00000000000000000000.json",
            marker.to_string().into(),
        )
        .await
        .expect("marker");
    // The checkpoint is at 50, so the marker describes a committed flush: keep the files.
    let mut w = LakeWriter::open(
        f.store.clone(),
        f.wal.clone(),
        LakeConfig::test_config(),
        metrics.clone(),
    )
    .await
    .expect("writer");
    let engine = engine_over(&f, Some(w.fresh()));
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 50);
    // Now a flush whose checkpoint did not move: stored file plus marker, then "crash".
    let more: Vec<_> = (50..80)
        .map(|i| record("dev-a", T0 + i * 1000, &[("temp", Value::I64(i))]))
        .collect();
    append(&f.wal, &more).await;
    w.read_available().expect("read");
    let stray =
        "readings/date=2025-11-24/hour=16/part-00000000000000000050-00000000000000000079.parquet";
    let all = f.store.get(&files[0].0).await.expect("get");
    f.store.put(stray, all).await.expect("stray");
    let marker = serde_json::json!({"first": 50, "last": 79, "files": [stray]});
    f.store
        .put(
            "_edgepipe/pending/readings-00000000000000000050.json",
            marker.to_string().into(),
        )
        .await
        .expect("marker");
    drop(w);
    let mut w = LakeWriter::open(
        f.store.clone(),
        f.wal.clone(),
        LakeConfig::test_config(),
        metrics.clone(),
    )
    .await
    .expect("writer");
    assert!(!f.store.exists(stray).await.expect("exists"));
    assert_eq!(
        metrics
            .flushes_recovered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    w.read_available().expect("read");
    w.flush().await.expect("flush");
    let engine = engine_over(&f, None);
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 80);
    assert_eq!(
        count(&engine, "SELECT sum(value_int) FROM readings").await,
        (0..80).sum::<i64>()
    );
}

#[tokio::test]
async fn compaction_dedups_last_write_wins_and_writes_rollups() {
    let f = fixture();
    let mut w = writer(&f).await;
    // Three flushes in one hour; the last rewrites ts T0 with another value.
    for round in 0..3 {
        let recs: Vec<_> = (0..120)
            .map(|i| {
                record(
                    "dev-a",
                    T0 + (round * 120 + i) * 1000,
                    &[("temp", Value::F64(i as f64))],
                )
            })
            .collect();
        append(&f.wal, &recs).await;
        w.read_available().expect("read");
        w.flush().await.expect("flush");
    }
    append(
        &f.wal,
        &[record("dev-a", T0, &[("temp", Value::F64(99.0))])],
    )
    .await;
    w.read_available().expect("read");
    w.flush().await.expect("flush");
    let engine = engine_over(&f, Some(w.fresh()));
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 361);
    let report = compact(
        &f.store,
        &LakeConfig::test_config(),
        &f.swap,
        w.fresh().committed(),
        T0,
        true,
    )
    .await
    .expect("compact");
    assert_eq!(report.files_in, 4);
    assert_eq!(report.files_out, 1);
    assert_eq!(report.duplicates_removed, 1);
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 360);
    let out = engine
        .query("SELECT value FROM readings WHERE ts = '2025-11-24T16:00:00Z'")
        .await
        .expect("query");
    let v = out.batches[0]
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64")
        .value(0);
    assert_eq!(v, 99.0, "the later write wins");
    assert_eq!(count(&engine, "SELECT count(*) FROM rollup_1m").await, 6);
    assert_eq!(
        count(&engine, "SELECT CAST(sum(count) AS BIGINT) FROM rollup_1h").await,
        360
    );
    let (problems, checked) = edgepipe_lake::verify(&f.store).await.expect("verify");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(checked, 3);
}

#[test]
fn time_filters_become_partition_filters() {
    let lo = lit(datafusion::common::ScalarValue::TimestampMicrosecond(
        Some(T0 * 1000),
        Some("UTC".into()),
    ));
    let hi = lit(datafusion::common::ScalarValue::TimestampMicrosecond(
        Some(T0 * 1000 + 2 * 3_600_000_000),
        Some("UTC".into()),
    ));
    let filters = vec![col("ts").gt_eq(lo.clone()).and(col("ts").lt(hi.clone()))];
    let b = ts_bounds(&filters);
    assert_eq!(b.lo, Some(T0 * 1000));
    assert_eq!(b.hi, Some(T0 * 1000 + 2 * 3_600_000_000));
    let p = partition_filters(&filters);
    assert_eq!(p.len(), 2);
    let s = format!("{} {}", p[0], p[1]);
    assert!(
        s.contains("2025-11-24") && s.contains("16") && s.contains("18"),
        "{s}"
    );
    // Reversed operands and BETWEEN.
    let rev = vec![hi.clone().gt(col("ts")), col("ts").between(lo.clone(), hi)];
    let b = ts_bounds(&rev);
    assert_eq!(b.lo, Some(T0 * 1000));
    // OR is not a bound.
    let or = vec![col("ts").gt(lo.clone()).or(col("value").gt(lit(1.0)))];
    assert_eq!(ts_bounds(&or).lo, None);
}

#[tokio::test]
async fn pruning_reads_only_partitions_in_range() {
    let f = fixture();
    let mut w = writer(&f).await;
    let recs: Vec<_> = (0..48)
        .map(|h| {
            record(
                "dev-a",
                T0 + h * 3_600_000,
                &[("temp", Value::F64(h as f64))],
            )
        })
        .collect();
    append(&f.wal, &recs).await;
    w.read_available().expect("read");
    w.flush().await.expect("flush");
    let engine = engine_over(&f, None);
    let out = engine
        .query(
            "EXPLAIN ANALYZE SELECT count(*) FROM readings \
             WHERE ts >= '2025-11-25T00:00:00Z' AND ts < '2025-11-25T03:00:00Z'",
        )
        .await
        .expect("explain");
    let text = format!(
        "{}",
        arrow::util::pretty::pretty_format_batches(&out.batches).expect("fmt")
    );
    // Hours 00..=03 of 2025-11-25 (the upper bound is checked at hour granularity) out of 48.
    assert_eq!(text.matches(".parquet").count(), 4, "{text}");
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM readings WHERE ts >= '2025-11-25T00:00:00Z' AND ts < '2025-11-25T03:00:00Z'"
        )
        .await,
        3
    );
}

#[tokio::test]
async fn limits_and_bad_sql_fail_with_clear_errors() {
    let f = fixture();
    let engine = QueryEngine::new(
        f.store.clone(),
        None,
        f.swap.clone(),
        QueryConfig {
            max_rows: 10,
            max_memory_bytes: 1024 * 1024,
            ..QueryConfig::default()
        },
    );
    let e = engine.query("SELEC 1").await.expect_err("bad sql");
    assert!(matches!(e, Error::Sql(_)), "{e}");
    let e = engine
        .query("SELECT * FROM no_such_table")
        .await
        .expect_err("unknown table");
    assert!(e.to_string().contains("no_such_table"), "{e}");
    let e = engine
        .query("SELECT * FROM generate_series(1, 100)")
        .await
        .expect_err("row limit");
    assert!(matches!(e, Error::RowLimit { limit: 10 }), "{e}");
    let e = engine.query("DROP TABLE readings").await.expect_err("ddl");
    assert!(matches!(e, Error::Sql(_)), "{e}");
    let e = engine
        .query("SELECT v, count(*) FROM generate_series(1, 5000000) t(v) GROUP BY v ORDER BY v LIMIT 1")
        .await
        .expect_err("memory");
    assert!(matches!(e, Error::MemoryLimit { .. }), "{e}");
    let empty = engine
        .query("SELECT count(*) FROM readings")
        .await
        .expect("empty lake");
    assert_eq!(empty.rows, 1);
}

#[tokio::test]
async fn files_of_an_older_schema_version_read_with_nulls_and_compact() {
    use arrow::array::{ArrayRef, RecordBatch};
    use arrow::datatypes::Schema;
    let f = fixture();
    let mut w = writer(&f).await;
    append(&f.wal, &[record("dev-a", T0, &[("temp", Value::F64(1.0))])]).await;
    w.read_available().expect("read");
    w.flush().await.expect("flush");
    // An "older" file: the same columns without the nullable `tags` (as if written before it
    // was added; schema evolution only ever adds nullable columns), in the same partition.
    let full = edgepipe_lake::schema::readings_schema();
    let mut b = edgepipe_lake::schema::RowsBuilder::new(300_000_000);
    b.push_record(0, &record("dev-b", T0 + 1000, &[("temp", Value::F64(2.0))]));
    let batch = b.finish().expect("rows");
    let keep: Vec<usize> = (0..full.fields().len())
        .filter(|i| full.field(*i).name() != "tags")
        .collect();
    let old_schema = Arc::new(Schema::new(
        keep.iter()
            .map(|i| full.field(*i).clone())
            .collect::<Vec<_>>(),
    ));
    let cols: Vec<ArrayRef> = keep.iter().map(|i| batch.column(*i).clone()).collect();
    let old = RecordBatch::try_new(old_schema.clone(), cols).expect("old batch");
    let data = edgepipe_lake::encode_parquet(&old_schema, &[old], 1024).expect("encode");
    f.store
        .put(
            "readings/date=2025-11-24/hour=16/compacted-00000000000000000000-00000000000000000000-000.parquet",
            data,
        )
        .await
        .expect("put");
    let engine = engine_over(&f, None);
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 2);
    assert_eq!(
        count(
            &engine,
            "SELECT count(*) FROM readings WHERE tags IS NULL AND source = 'mqtt311'"
        )
        .await,
        2
    );
    let r = compact(
        &f.store,
        &LakeConfig::test_config(),
        &f.swap,
        w.fresh().committed(),
        T0,
        true,
    )
    .await
    .expect("compact");
    assert_eq!(r.rows_out, 2);
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 2);
    let (problems, _) = edgepipe_lake::verify(&f.store).await.expect("verify");
    assert!(problems.is_empty(), "{problems:?}");
}

#[tokio::test]
async fn retention_deletes_partitions_past_each_tables_age() {
    let f = fixture();
    let mut w = writer(&f).await;
    // Four days, one reading per day.
    let recs: Vec<_> = (0..4)
        .map(|d| {
            record(
                "dev-a",
                T0 + d * 86_400_000,
                &[("temp", Value::F64(d as f64))],
            )
        })
        .collect();
    append(&f.wal, &recs).await;
    w.read_available().expect("read");
    w.flush().await.expect("flush");
    let mut cfg = LakeConfig::test_config();
    compact(
        &f.store,
        &cfg,
        &f.swap,
        w.fresh().committed(),
        T0 + 10 * 86_400_000,
        true,
    )
    .await
    .expect("compact");
    cfg.retention.readings_days = 2;
    cfg.retention.rollup_1h_days = 0;
    // "Now" is the last reading's day: readings older than 2 days go, rollups stay.
    let deleted = edgepipe_lake::retention::apply(&f.store, &cfg, &f.swap, T0 + 3 * 86_400_000)
        .await
        .expect("retention");
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    let engine = engine_over(&f, None);
    assert_eq!(count(&engine, "SELECT count(*) FROM readings").await, 3);
    assert_eq!(count(&engine, "SELECT count(*) FROM rollup_1h").await, 4);
}

/// `series` over rolled-up hours, a raw hour and unflushed late rows equals the buckets
/// computed from the readings themselves, and agrees with the raw-only path.
#[tokio::test]
async fn series_reads_rollups_raw_hours_and_late_fresh_rows_once() {
    use std::collections::BTreeMap;

    use crate::SeriesRequest;

    let f = fixture();
    let mut w = writer(&f).await;
    let mut recs = Vec::new();
    // (ts, numeric value or None for a string reading) of dev-a/temp.
    let mut truth: Vec<(i64, Option<f64>)> = Vec::new();
    for i in 0..1080 {
        let ts = T0 + i * 10_000;
        let v = if i % 50 == 7 {
            Value::Str("err".into())
        } else {
            Value::F64((i % 97) as f64 * 0.5)
        };
        truth.push((ts, v.as_f64()));
        recs.push(record("dev-a", ts, &[("temp", v)]));
        recs.push(record("dev-b", ts, &[("temp", Value::F64(-1.0))]));
    }
    append(&f.wal, &recs).await;
    w.read_available().expect("read");
    w.flush().await.expect("flush");
    // Hours 0 and 1 are closed (and compacted with rollups), hour 2 is not.
    let report = compact(
        &f.store,
        &LakeConfig::test_config(),
        &f.swap,
        w.fresh().committed(),
        T0 + 2 * 3_600_000 + 600_000,
        false,
    )
    .await
    .expect("compact");
    assert_eq!(report.partitions, 2);
    // A late reading for rolled-up hour 0 and a live one for hour 2, both unflushed.
    for (ts, v) in [(T0 + 1_805_000, 1000.0), (T0 + 3 * 3_600_000 - 1, -5.0)] {
        truth.push((ts, Some(v)));
        append(&f.wal, &[record("dev-a", ts, &[("temp", Value::F64(v))])]).await;
    }
    w.read_available().expect("read");
    let engine = engine_over(&f, Some(w.fresh()));
    let h0 = T0 / 3_600_000;
    // Hour 2 has its flush file; hour 3 (no readings at all) reads from the rollup side too.
    let raw = engine
        .raw_hours("rollup_1m", T0, T0 + 4 * 3_600_000)
        .await
        .expect("list");
    assert_eq!(raw.into_iter().collect::<Vec<_>>(), vec![h0 + 2]);

    let expect = |from: i64, step: i64| {
        let mut b: BTreeMap<i64, (f64, f64, f64, i64, i64)> = BTreeMap::new();
        for &(ts, v) in &truth {
            let t = from + (ts - from).div_euclid(step) * step;
            let e = b
                .entry(t)
                .or_insert((f64::INFINITY, f64::NEG_INFINITY, 0.0, 0, 0));
            e.4 += 1;
            if let Some(v) = v {
                e.0 = e.0.min(v);
                e.1 = e.1.max(v);
                e.2 += v;
                e.3 += 1;
            }
        }
        b
    };
    for (step, from_req, origin) in [
        (300_000, T0 + 7_000, T0), // 5-minute buckets: rollup_1m, range widened
        (4 * 3_600_000, T0, T0),   // whole hours: rollup_1h
        (20_000, T0, T0),          // under a minute: raw only
    ] {
        let res = engine
            .series(&SeriesRequest {
                device: "dev-a".into(),
                metric: "temp".into(),
                from: from_req,
                to: T0 + 3 * 3_600_000,
                step: Some(step),
                points: Some(10_000),
            })
            .await
            .expect("series");
        assert_eq!(res.step, step);
        let want = expect(origin, step);
        assert_eq!(res.points.len(), want.len(), "step {step}");
        for p in &res.points {
            let w = want
                .get(&p.t)
                .unwrap_or_else(|| panic!("bucket {} (step {step})", p.t));
            assert_eq!(p.count, w.4, "count at {} (step {step})", p.t);
            assert_eq!(p.min, Some(w.0), "min at {} (step {step})", p.t);
            assert_eq!(p.max, Some(w.1), "max at {} (step {step})", p.t);
            let avg = p.avg.expect("avg");
            assert!(
                (avg - w.2 / w.3 as f64).abs() < 1e-9,
                "avg at {} (step {step})",
                p.t
            );
        }
    }
}

/// A lake written from one WAL refuses a writer over another (new, empty) WAL instead of
/// hiding the lake's rows behind the new WAL's checkpoint and overwriting its files.
#[tokio::test]
async fn a_replaced_wal_is_refused_not_written_over_the_lake() {
    let f = fixture();
    let mut w = writer(&f).await;
    append(&f.wal, &[record("dev-a", T0, &[("temp", Value::F64(1.0))])]).await;
    w.read_available().expect("read");
    w.flush().await.expect("flush");
    drop(w);
    let other = tempfile::tempdir().expect("tempdir");
    let new_wal =
        Arc::new(Wal::open(other.path().join("wal"), WalConfig::test_config()).expect("wal"));
    let err = LakeWriter::open(
        f.store.clone(),
        new_wal,
        LakeConfig::test_config(),
        Arc::default(),
    )
    .await
    .expect_err("a foreign WAL must be refused");
    assert!(
        matches!(
            err,
            edgepipe_lake::Error::ForeignWal {
                lake_last: 0,
                wal_end: 0
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("not the WAL the lake was written from")
    );
    // The lake's own WAL still opens it.
    writer(&f).await;
}

/// Reading stops at a full buffer (`flush_max_rows`) instead of draining a WAL that keeps
/// growing; reading and flushing in turns still brings every row to the lake once.
#[tokio::test]
async fn the_fresh_buffer_is_bounded_by_flush_max_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wal_cfg = WalConfig {
        max_bytes: 64 << 20,
        ..WalConfig::test_config()
    };
    let f = Fixture {
        wal: Arc::new(Wal::open(dir.path().join("wal"), wal_cfg).expect("wal")),
        store: LakeStore::local(dir.path().join("lake")).expect("lake"),
        swap: SwapLock::default(),
        _dir: dir,
    };
    let mut w = writer(&f).await;
    let max = LakeConfig::test_config().flush_max_rows;
    // One reading per record: more records than one read pass (4,096) takes.
    let total = 3 * max + 123;
    let recs: Vec<Vec<u8>> = (0..total)
        .map(|i| record("dev-a", T0 + i as i64, &[("temp", Value::F64(1.0))]).encode())
        .collect();
    f.wal.append_batch(recs).await.expect("append");
    assert!(w.read_available().expect("read"));
    let buffered: usize = w
        .fresh()
        .snapshot()
        .batches
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(
        buffered >= max && buffered < total,
        "{buffered} rows buffered"
    );
    while w.fresh().committed() < total as u64 {
        w.read_available().expect("read");
        w.flush().await.expect("flush");
    }
    let engine = engine_over(&f, Some(w.fresh()));
    assert_eq!(
        count(&engine, "SELECT count(*) FROM readings").await,
        total as i64
    );
}
