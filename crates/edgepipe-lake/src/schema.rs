//! The lake's table schemas (versioned) and the conversion of WAL records into Arrow rows.
//!
//! # `readings`, schema version 1
//!
//! | column | type | meaning |
//! | --- | --- | --- |
//! | `device_id` | utf8 | authenticated device (dictionary-encoded in Parquet) |
//! | `metric` | utf8 | metric name (dictionary-encoded) |
//! | `ts` | timestamp(µs, UTC) | event time |
//! | `value` | float64, null | numeric value; integers as float, booleans as 0/1, strings null |
//! | `value_int` | int64, null | the exact value when the reading was an integer |
//! | `value_bool` | boolean, null | the value when the reading was a boolean |
//! | `value_str` | utf8, null | the value when the reading was a string |
//! | `quality` | utf8 | `good`, or `server_time` when the device sent no timestamp |
//! | `received_at` | timestamp(µs, UTC) | server receive time |
//! | `replayed` | boolean | late or backfilled: received more than `late_after` after `ts`, or sent as a replay |
//! | `source` | utf8 | `mqtt311`, `mqtt5`, `http`, `replay`, or `agent:<source>/<stream>` |
//! | `tags` | utf8, null | JSON object of topic-mapping labels, null when none |
//! | `wal_seq` | int64 | the server WAL record the reading came from (provenance; last write wins on it) |
//!
//! Hive partition columns `date` (`YYYY-MM-DD`) and `hour` (`HH`) come from the directory names
//! and are derived from `ts` (event time). Schema evolution only appends nullable columns; a
//! reader of version N reads files of every version ≤ N (missing columns read as null).
//!
//! # `rollup_1m` and `rollup_1h`, schema version 2
//!
//! One row per series and bucket (1 minute or 1 hour, aligned to the epoch), written when a
//! partition is compacted, in the same `date`/`hour` partitions: `device_id`, `metric`, `bucket`
//! (timestamp(µs, UTC), the bucket's start), `count` (every reading), `min`, `max`, `avg`, `sum`
//! (numeric readings; null when there were none) and, since version 2, `count_numeric` (the
//! numeric readings: `avg = sum / count_numeric`; null in version 1 files).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder, new_null_array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use edgepipe_types::{
    BatchOriginView, IngestRecord, IngestRecordView, ReadingView, Transport, TsSource, Value,
    ValueView,
};

use crate::{Error, Result};

/// Version of the `readings` schema this build writes.
pub const READINGS_SCHEMA_VERSION: u32 = 1;

/// Version of the rollup schema this build writes.
pub const ROLLUP_SCHEMA_VERSION: u32 = 2;

/// Microseconds in one hour.
pub const HOUR_US: i64 = 3_600_000_000;

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

static READINGS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("ts", ts_type(), false),
        Field::new("value", DataType::Float64, true),
        Field::new("value_int", DataType::Int64, true),
        Field::new("value_bool", DataType::Boolean, true),
        Field::new("value_str", DataType::Utf8, true),
        Field::new("quality", DataType::Utf8, false),
        Field::new("received_at", ts_type(), false),
        Field::new("replayed", DataType::Boolean, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("tags", DataType::Utf8, true),
        Field::new("wal_seq", DataType::Int64, false),
    ]))
});

static ROLLUP: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("device_id", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, false),
        Field::new("bucket", ts_type(), false),
        Field::new("count", DataType::Int64, false),
        Field::new("min", DataType::Float64, true),
        Field::new("max", DataType::Float64, true),
        Field::new("avg", DataType::Float64, true),
        Field::new("sum", DataType::Float64, true),
        // Added in lake schema v2 (files written before it read it as null: every reading
        // in those rows counted as numeric when `sum` is set).
        Field::new("count_numeric", DataType::Int64, true),
    ]))
});

static DEADLETTERS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("time", ts_type(), false),
        Field::new("device_id", DataType::Utf8, true),
        Field::new("peer", DataType::Utf8, true),
        Field::new("endpoint", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("raw", DataType::Binary, false),
        Field::new("truncated", DataType::Boolean, false),
        Field::new("original_len", DataType::Int64, false),
    ]))
});

/// The `deadletters` file schema, partitioned by `time` (when the message was refused): the
/// dead-letter store's id, the device if authenticated, peer address, endpoint
/// (`mqtt:<topic>` / `http:<path>#line`), machine-readable reason, human-readable detail, the
/// raw bytes (truncated to `deadletters.max_raw_bytes`, flagged) and the original length.
pub fn deadletters_schema() -> SchemaRef {
    DEADLETTERS.clone()
}

static ANOMALIES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, true),
        Field::new("ts", ts_type(), false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("threshold", DataType::Float64, false),
        Field::new("value", DataType::Float64, true),
        Field::new("expected_lo", DataType::Float64, true),
        Field::new("expected_hi", DataType::Float64, true),
        Field::new("explanation", DataType::Utf8, false),
        Field::new("model_version", DataType::Utf8, false),
        Field::new("replayed", DataType::Boolean, false),
        Field::new("wal_seq", DataType::Int64, false),
    ]))
});

/// The `anomalies` file schema, partitioned by the event's `ts`: a stable `event_id`, the
/// device and metric (null for device-wide findings), kind (`anomaly`, `multivariate`,
/// `silence`), score and threshold, the value and the expected range, the detector's
/// explanation as JSON, the model version, whether replayed data raised it, and its WAL record.
pub fn anomalies_schema() -> SchemaRef {
    ANOMALIES.clone()
}

static LABELS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("label_id", DataType::Int64, false),
        Field::new("case_id", DataType::Int64, false),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("metric", DataType::Utf8, true),
        Field::new("ts", ts_type(), false),
        Field::new("end_ts", ts_type(), false),
        Field::new("label", DataType::Utf8, false),
        Field::new("max_score", DataType::Float64, false),
        Field::new("root_cause", DataType::Utf8, true),
        Field::new("actor", DataType::Utf8, false),
        Field::new("created_at", ts_type(), false),
        Field::new("category", DataType::Utf8, false),
    ]))
});

/// The `labels` file schema, partitioned by `ts` (the interval's start): one row per series
/// and resolved case with a verdict (`confirmed` / `false_positive`), the interval
/// `[ts, end_ts]`, the highest anomaly score in it, root cause, who decided and the case's
/// category. A case resolved again after a reopen adds rows; the latest per case and metric is
/// the verdict.
pub fn labels_schema() -> SchemaRef {
    LABELS.clone()
}

/// The `readings` file schema (without the partition columns).
pub fn readings_schema() -> SchemaRef {
    READINGS.clone()
}

/// The schema of `rollup_1m` and `rollup_1h` files: one row per series and bucket, over the
/// numeric readings (`count` counts every reading, `min/max/avg/sum` and `count_numeric` the
/// numeric ones).
pub fn rollup_schema() -> SchemaRef {
    ROLLUP.clone()
}

/// Column index of `ts` in [`readings_schema`].
pub const COL_TS: usize = 2;
/// Column index of `wal_seq` in [`readings_schema`].
pub const COL_WAL_SEQ: usize = 12;

/// A column that is usually all null (the value kinds a fleet does not send): nulls are only
/// counted until the first value arrives, and an all-null column is made in one step.
#[derive(Debug)]
struct MostlyNull<B> {
    builder: B,
    leading_nulls: usize,
}

/// Builders that append `n` nulls at once.
trait AppendNulls: ArrayBuilder {
    fn nulls(&mut self, n: usize);
}

impl AppendNulls for Int64Builder {
    fn nulls(&mut self, n: usize) {
        self.append_nulls(n);
    }
}

impl AppendNulls for BooleanBuilder {
    fn nulls(&mut self, n: usize) {
        self.append_nulls(n);
    }
}

impl AppendNulls for StringBuilder {
    fn nulls(&mut self, n: usize) {
        self.append_nulls(n);
    }
}

impl<B: AppendNulls> MostlyNull<B> {
    fn new(builder: B) -> Self {
        Self {
            builder,
            leading_nulls: 0,
        }
    }

    fn null(&mut self) {
        if self.builder.is_empty() {
            self.leading_nulls += 1;
        } else {
            self.append_nulls(1);
        }
    }

    fn value(&mut self, append: impl FnOnce(&mut B)) {
        let pending = std::mem::take(&mut self.leading_nulls);
        self.append_nulls(pending);
        append(&mut self.builder);
    }

    fn append_nulls(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.builder.nulls(n);
    }

    fn finish(&mut self) -> ArrayRef {
        let nulls = std::mem::take(&mut self.leading_nulls);
        if self.builder.is_empty() {
            let data_type = self.builder.finish().data_type().clone();
            new_null_array(&data_type, nulls)
        } else {
            self.builder.finish()
        }
    }
}

/// Finishes `b` and leaves in its place the empty builder `next` makes from it (sized for the
/// next batch).
fn finish_into<B: ArrayBuilder>(b: &mut B, next: impl FnOnce(&B) -> B) -> ArrayRef {
    let empty = next(b);
    std::mem::replace(b, empty).finish()
}

/// A string builder with room for `rows` rows of `b`'s bytes of values.
fn strings_like(b: &StringBuilder, rows: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, b.values_slice().len())
}

/// A `timestamp(µs, UTC)` builder with room for `rows` rows.
fn utc_micros(rows: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC")
}

/// Builds `readings` rows from decoded WAL records.
#[derive(Debug)]
pub struct RowsBuilder {
    late_after_us: i64,
    device_id: StringBuilder,
    metric: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    value: Float64Builder,
    value_int: MostlyNull<Int64Builder>,
    value_bool: MostlyNull<BooleanBuilder>,
    value_str: MostlyNull<StringBuilder>,
    quality: StringBuilder,
    received_at: TimestampMicrosecondBuilder,
    replayed: BooleanBuilder,
    source: StringBuilder,
    tags: StringBuilder,
    wal_seq: Int64Builder,
    rows: usize,
    source_buf: String,
}

impl RowsBuilder {
    /// A builder marking readings received more than `late_after_us` after their event time as
    /// replayed.
    pub fn new(late_after_us: i64) -> Self {
        Self {
            late_after_us,
            device_id: StringBuilder::new(),
            metric: StringBuilder::new(),
            ts: utc_micros(0),
            value: Float64Builder::new(),
            value_int: MostlyNull::new(Int64Builder::new()),
            value_bool: MostlyNull::new(BooleanBuilder::new()),
            value_str: MostlyNull::new(StringBuilder::new()),
            quality: StringBuilder::new(),
            received_at: utc_micros(0),
            replayed: BooleanBuilder::new(),
            source: StringBuilder::new(),
            tags: StringBuilder::new(),
            wal_seq: Int64Builder::new(),
            rows: 0,
            source_buf: String::new(),
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    /// Whether no row is pending.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends every reading of one WAL record.
    pub fn push_record(&mut self, wal_seq: u64, rec: &IngestRecord) {
        let view = IngestRecordView {
            device_id: rec.device_id.as_str(),
            received_at: rec.received_at,
            transport: rec.transport,
            origin: rec.origin.as_ref().map(|o| BatchOriginView {
                source: &o.source,
                stream: &o.stream,
                seq: o.seq,
            }),
            tags: rec
                .tags
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            readings: rec
                .readings
                .iter()
                .map(|r| ReadingView {
                    metric: r.metric.as_str(),
                    ts: r.ts,
                    value: match &r.value {
                        Value::F64(v) => ValueView::F64(*v),
                        Value::I64(v) => ValueView::I64(*v),
                        Value::Bool(v) => ValueView::Bool(*v),
                        Value::Str(v) => ValueView::Str(v),
                    },
                    ts_source: r.ts_source,
                })
                .collect(),
        };
        self.push_view(wal_seq, &view);
    }

    /// Appends every reading of one WAL record, decoded as a borrowed view (the lake writer's
    /// path: no allocation per reading).
    pub fn push_view(&mut self, wal_seq: u64, rec: &IngestRecordView<'_>) {
        let source: &str = match (&rec.origin, rec.transport) {
            (Some(o), _) => {
                self.source_buf.clear();
                self.source_buf.push_str("agent:");
                self.source_buf.push_str(o.source);
                self.source_buf.push('/');
                self.source_buf.push_str(o.stream);
                &self.source_buf
            }
            (None, Transport::Mqtt311) => "mqtt311",
            (None, Transport::Mqtt5) => "mqtt5",
            (None, Transport::Http) => "http",
            (None, Transport::Replay) => "replay",
        };
        let tags = if rec.tags.is_empty() {
            None
        } else {
            let map: serde_json::Map<String, serde_json::Value> = rec
                .tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String((*v).to_owned())))
                .collect();
            Some(serde_json::Value::Object(map).to_string())
        };
        let received_us = rec.received_at.saturating_mul(1000);
        let seq = i64::try_from(wal_seq).unwrap_or(i64::MAX);
        let replay = rec.transport == Transport::Replay;
        let n = rec.readings.len();
        // What is the same for the whole record goes in as one run.
        self.device_id.append_value_n(rec.device_id, n);
        self.received_at.append_value_n(received_us, n);
        self.source.append_value_n(source, n);
        match &tags {
            Some(t) => self.tags.append_value_n(t, n),
            None => self.tags.append_nulls(n),
        }
        self.wal_seq.append_value_n(seq, n);
        for r in &rec.readings {
            let ts_us = r.ts.saturating_mul(1000);
            self.metric.append_value(r.metric);
            self.ts.append_value(ts_us);
            match r.value {
                ValueView::F64(v) => {
                    self.value.append_value(v);
                    self.value_int.null();
                    self.value_bool.null();
                    self.value_str.null();
                }
                ValueView::I64(v) => {
                    self.value.append_value(v as f64);
                    self.value_int.value(|b| b.append_value(v));
                    self.value_bool.null();
                    self.value_str.null();
                }
                ValueView::Bool(b) => {
                    self.value.append_value(if b { 1.0 } else { 0.0 });
                    self.value_int.null();
                    self.value_bool.value(|x| x.append_value(b));
                    self.value_str.null();
                }
                ValueView::Str(s) => {
                    self.value.append_null();
                    self.value_int.null();
                    self.value_bool.null();
                    self.value_str.value(|x| x.append_value(s));
                }
            }
            self.quality.append_value(match r.ts_source {
                TsSource::Device => "good",
                TsSource::Server => "server_time",
            });
            let late = received_us.saturating_sub(ts_us) > self.late_after_us;
            self.replayed.append_value(late || replay);
        }
        self.rows += n;
    }

    /// The rows appended so far as one batch; the builder starts empty again, with room for
    /// as many rows as this batch held (a reader's batches are alike in size, so the next one
    /// fills its buffers without growing them: no reallocation and copy on the way).
    pub fn finish(&mut self) -> Result<RecordBatch> {
        let rows = self.rows;
        let cols: Vec<ArrayRef> = vec![
            finish_into(&mut self.device_id, |b| strings_like(b, rows)),
            finish_into(&mut self.metric, |b| strings_like(b, rows)),
            finish_into(&mut self.ts, |_| utc_micros(rows)),
            finish_into(&mut self.value, |_| Float64Builder::with_capacity(rows)),
            self.value_int.finish(),
            self.value_bool.finish(),
            self.value_str.finish(),
            finish_into(&mut self.quality, |b| strings_like(b, rows)),
            finish_into(&mut self.received_at, |_| utc_micros(rows)),
            finish_into(&mut self.replayed, |_| BooleanBuilder::with_capacity(rows)),
            finish_into(&mut self.source, |b| strings_like(b, rows)),
            finish_into(&mut self.tags, |b| strings_like(b, rows)),
            finish_into(&mut self.wal_seq, |_| Int64Builder::with_capacity(rows)),
        ];
        self.rows = 0;
        RecordBatch::try_new(readings_schema(), cols).map_err(Error::from)
    }
}

/// `(date, hour)` partition values for an event time in µs since the epoch.
pub fn partition_of(ts_us: i64) -> (String, String) {
    let hour_bucket = ts_us.div_euclid(HOUR_US);
    partition_of_hour(hour_bucket)
}

/// `(date, hour)` partition values for an hour bucket (hours since the epoch).
pub fn partition_of_hour(hour_bucket: i64) -> (String, String) {
    let secs = hour_bucket.saturating_mul(3600);
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => (t.format("%Y-%m-%d").to_string(), t.format("%H").to_string()),
        // Out of chrono's range (beyond ±262,000 years): the protocol's clock-skew checks
        // refuse such readings, so only a replayed record from a foreign tool could get here.
        None => ("0000-01-01".to_owned(), "00".to_owned()),
    }
}

/// The hour bucket (hours since the epoch) of a partition's `date` and `hour` values.
pub fn hour_of_partition(date: &str, hour: &str) -> Option<i64> {
    let d = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let h: u32 = hour.parse().ok()?;
    let t = d.and_hms_opt(h, 0, 0)?;
    Some(t.and_utc().timestamp().div_euclid(3600))
}

/// The event-time hour (hours since the epoch) of a key or directory with Hive partition
/// segments `date=YYYY-MM-DD/hour=HH` anywhere in it.
pub fn hour_of_key(key: &str) -> Option<i64> {
    let mut date = None;
    let mut hour = None;
    for seg in key.split('/') {
        if let Some(d) = seg.strip_prefix("date=") {
            date = Some(d);
        } else if let Some(h) = seg.strip_prefix("hour=") {
            hour = Some(h);
        }
    }
    hour_of_partition(date?, hour?)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The partition a reading lands in names the hour its timestamp is in, and reading the
        /// partition's name back gives that hour (years 1970..9999).
        #[test]
        fn partition_names_round_trip(ts_us in 0i64..253_402_300_799_000_000) {
            let (date, hour) = partition_of(ts_us);
            let h = hour_of_partition(&date, &hour);
            prop_assert!(h.is_some(), "partition {} {} does not parse", date, hour);
            let h = h.unwrap_or_default();
            prop_assert_eq!(h, ts_us.div_euclid(HOUR_US));
            prop_assert_eq!(date.len(), 10);
            prop_assert_eq!(hour.len(), 2);
        }
    }

    #[test]
    fn rows_keep_every_value_kind_without_loss() -> Result<()> {
        use arrow::array::{Array, BooleanArray, Int64Array, StringArray};
        use edgepipe_types::{BatchOrigin, DeviceId, Metric, Reading};
        let m = |s: &str| Metric::new(s).map_err(|e| Error::Config(e.to_string()));
        let rec = IngestRecord {
            device_id: DeviceId::new("d1").map_err(|e| Error::Config(e.to_string()))?,
            received_at: 1_000_000,
            transport: Transport::Mqtt5,
            origin: Some(BatchOrigin {
                source: "gw".into(),
                stream: "s".into(),
                seq: 7,
            }),
            tags: vec![("line".into(), "3".into())],
            readings: vec![
                Reading {
                    metric: m("big")?,
                    ts: 1_000_000,
                    value: Value::I64(i64::MAX),
                    ts_source: TsSource::Device,
                },
                Reading {
                    metric: m("on")?,
                    ts: 1_000_000,
                    value: Value::Bool(true),
                    ts_source: TsSource::Device,
                },
                Reading {
                    metric: m("state")?,
                    ts: 1,
                    value: Value::Str("idle".into()),
                    ts_source: TsSource::Server,
                },
            ],
        };
        let mut b = RowsBuilder::new(300_000_000);
        b.push_record(42, &rec);
        let batch = b.finish()?;
        assert_eq!(batch.num_rows(), 3);
        let ints = batch
            .column(4)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or(Error::Config("int".into()))?;
        assert_eq!(ints.value(0), i64::MAX);
        let bools = batch
            .column(5)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or(Error::Config("bool".into()))?;
        assert!(bools.value(1));
        let strs = batch
            .column(6)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or(Error::Config("str".into()))?;
        assert_eq!(strs.value(2), "idle");
        let quality = batch
            .column(7)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or(Error::Config("q".into()))?;
        assert_eq!(quality.value(2), "server_time");
        let replayed = batch
            .column(9)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or(Error::Config("r".into()))?;
        assert!(!replayed.value(0), "on time");
        assert!(replayed.value(2), "received ~17 minutes after its ts");
        let source = batch
            .column(10)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or(Error::Config("s".into()))?;
        assert_eq!(source.value(0), "agent:gw/s");
        let tags = batch
            .column(11)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or(Error::Config("t".into()))?;
        assert_eq!(tags.value(0), r#"{"line":"3"}"#);
        assert!(!batch.column(3).is_null(1), "booleans also count as 0/1");
        Ok(())
    }

    /// A builder used batch after batch (sized from the last one, larger or smaller batches
    /// next) gives each batch exactly what a new builder would.
    #[test]
    fn a_reused_builder_gives_what_a_new_one_gives() -> Result<()> {
        use edgepipe_types::{DeviceId, Metric, Reading};
        let record = |i: usize| -> Result<IngestRecord> {
            let e = |e: edgepipe_types::Error| Error::Config(e.to_string());
            Ok(IngestRecord {
                device_id: DeviceId::new(format!("device-{}", "x".repeat(i % 7))).map_err(e)?,
                received_at: 1_000_000 + i as i64,
                transport: if i.is_multiple_of(3) {
                    Transport::Http
                } else {
                    Transport::Mqtt5
                },
                origin: None,
                tags: Vec::new(),
                readings: (0..(i % 4))
                    .map(|m| {
                        Ok(Reading {
                            metric: Metric::new(format!("m{m}{}", "y".repeat(i % 5))).map_err(e)?,
                            ts: 1_000_000,
                            value: if m == 2 {
                                Value::Str("s".repeat(i % 9))
                            } else {
                                Value::F64(i as f64)
                            },
                            ts_source: TsSource::Device,
                        })
                    })
                    .collect::<Result<_>>()?,
            })
        };
        let mut reused = RowsBuilder::new(300_000_000);
        let mut at = 0;
        for records in [3, 100, 1, 0, 250, 2] {
            let mut fresh = RowsBuilder::new(300_000_000);
            for i in at..at + records {
                let rec = record(i)?;
                reused.push_record(i as u64, &rec);
                fresh.push_record(i as u64, &rec);
            }
            at += records;
            assert_eq!(
                reused.finish()?,
                fresh.finish()?,
                "batch of {records} records"
            );
        }
        Ok(())
    }
}
