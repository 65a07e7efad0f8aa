//! The lake's event tables, `anomalies`, `labels` and `deadletters`: one row type each, encoded
//! to Parquet here next to their schemas ([`crate::schema`]), and the one rule that puts an
//! event in an event-time hour partition ([`by_hour`]), as `readings` are partitioned.
//!
//! The server's stages build these rows from their own types (detection events, case labels,
//! dead letters) and store the files through [`crate::sink`]'s crash-safe flush protocol.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder,
};
use bytes::Bytes;

use crate::Result;
use crate::schema::{HOUR_US, anomalies_schema, deadletters_schema, labels_schema};

/// The hour partition (hours since the Unix epoch, as in `hour=` keys' [`crate::sink::part_key`])
/// of an event at `ts_ms` (ms since the epoch). Times before 1970 fall in negative hours.
pub fn hour_of_ms(ts_ms: i64) -> i64 {
    ts_ms.saturating_mul(1000).div_euclid(HOUR_US)
}

/// Groups `items` by the hour partition of their event time, in hour order; items keep their
/// order within an hour.
pub fn by_hour<T>(
    items: impl IntoIterator<Item = T>,
    ts_ms: impl Fn(&T) -> i64,
) -> BTreeMap<i64, Vec<T>> {
    let mut out: BTreeMap<i64, Vec<T>> = BTreeMap::new();
    for item in items {
        out.entry(hour_of_ms(ts_ms(&item))).or_default().push(item);
    }
    out
}

/// One row of `anomalies` (see [`anomalies_schema`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyRow<'a> {
    /// Stable event id (the same after a replay).
    pub event_id: &'a str,
    /// Device.
    pub device_id: &'a str,
    /// Metric; `None` for device-wide findings.
    pub metric: Option<&'a str>,
    /// Event time, ms since the epoch.
    pub ts_ms: i64,
    /// `anomaly`, `multivariate`, `silence`, `gap`.
    pub kind: &'a str,
    /// Score.
    pub score: f64,
    /// Threshold the score crossed.
    pub threshold: f64,
    /// The value scored, if one.
    pub value: Option<f64>,
    /// The expected range `(lo, hi)`, if known.
    pub expected: Option<(f64, f64)>,
    /// The detector's explanation, as JSON.
    pub explanation: String,
    /// Model version that scored it.
    pub model_version: &'a str,
    /// Raised by replayed (late) data.
    pub replayed: bool,
    /// The WAL record it came from.
    pub wal_seq: u64,
}

/// Encodes anomaly rows as one Parquet file of [`anomalies_schema`].
pub fn encode_anomalies(rows: &[AnomalyRow<'_>], row_group_rows: usize) -> Result<Bytes> {
    let mut id = StringBuilder::new();
    let mut dev = StringBuilder::new();
    let mut met = StringBuilder::new();
    let mut ts = TimestampMicrosecondBuilder::new();
    let mut kind = StringBuilder::new();
    let mut score = Float64Builder::new();
    let mut thr = Float64Builder::new();
    let mut value = Float64Builder::new();
    let mut lo = Float64Builder::new();
    let mut hi = Float64Builder::new();
    let mut expl = StringBuilder::new();
    let mut mv = StringBuilder::new();
    let mut rep = BooleanBuilder::new();
    let mut seq = Int64Builder::new();
    for r in rows {
        id.append_value(r.event_id);
        dev.append_value(r.device_id);
        met.append_option(r.metric);
        ts.append_value(r.ts_ms.saturating_mul(1000));
        kind.append_value(r.kind);
        score.append_value(r.score);
        thr.append_value(r.threshold);
        value.append_option(r.value);
        lo.append_option(r.expected.map(|x| x.0));
        hi.append_option(r.expected.map(|x| x.1));
        expl.append_value(&r.explanation);
        mv.append_value(r.model_version);
        rep.append_value(r.replayed);
        seq.append_value(i64::try_from(r.wal_seq).unwrap_or(i64::MAX));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(dev.finish()),
        Arc::new(met.finish()),
        Arc::new(ts.finish().with_timezone("UTC")),
        Arc::new(kind.finish()),
        Arc::new(score.finish()),
        Arc::new(thr.finish()),
        Arc::new(value.finish()),
        Arc::new(lo.finish()),
        Arc::new(hi.finish()),
        Arc::new(expl.finish()),
        Arc::new(mv.finish()),
        Arc::new(rep.finish()),
        Arc::new(seq.finish()),
    ];
    let schema = anomalies_schema();
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    crate::encode_parquet(&schema, &[batch], row_group_rows)
}

/// One row of `labels` (see [`labels_schema`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LabelRow<'a> {
    /// Label id (the state store's).
    pub label_id: i64,
    /// The case it is a verdict on.
    pub case_id: i64,
    /// Device.
    pub device_id: &'a str,
    /// Metric; `None` for the whole device.
    pub metric: Option<&'a str>,
    /// Interval start, ms since the epoch.
    pub start_ms: i64,
    /// Interval end, ms since the epoch.
    pub end_ms: i64,
    /// `confirmed` or `false_positive`.
    pub label: &'a str,
    /// Highest anomaly score in the interval.
    pub max_score: f64,
    /// Root cause, if given.
    pub root_cause: Option<&'a str>,
    /// Who decided.
    pub actor: &'a str,
    /// When, ms since the epoch.
    pub created_at_ms: i64,
    /// The case's category.
    pub category: &'a str,
}

/// Encodes label rows as one Parquet file of [`labels_schema`].
pub fn encode_labels(rows: &[LabelRow<'_>], row_group_rows: usize) -> Result<Bytes> {
    let mut id = Int64Builder::new();
    let mut case = Int64Builder::new();
    let mut dev = StringBuilder::new();
    let mut met = StringBuilder::new();
    let mut ts = TimestampMicrosecondBuilder::new();
    let mut end = TimestampMicrosecondBuilder::new();
    let mut label = StringBuilder::new();
    let mut score = Float64Builder::new();
    let mut cause = StringBuilder::new();
    let mut actor = StringBuilder::new();
    let mut created = TimestampMicrosecondBuilder::new();
    let mut category = StringBuilder::new();
    for l in rows {
        id.append_value(l.label_id);
        case.append_value(l.case_id);
        dev.append_value(l.device_id);
        met.append_option(l.metric);
        ts.append_value(l.start_ms.saturating_mul(1000));
        end.append_value(l.end_ms.saturating_mul(1000));
        label.append_value(l.label);
        score.append_value(l.max_score);
        cause.append_option(l.root_cause);
        actor.append_value(l.actor);
        created.append_value(l.created_at_ms.saturating_mul(1000));
        category.append_value(l.category);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(case.finish()),
        Arc::new(dev.finish()),
        Arc::new(met.finish()),
        Arc::new(ts.finish().with_timezone("UTC")),
        Arc::new(end.finish().with_timezone("UTC")),
        Arc::new(label.finish()),
        Arc::new(score.finish()),
        Arc::new(cause.finish()),
        Arc::new(actor.finish()),
        Arc::new(created.finish().with_timezone("UTC")),
        Arc::new(category.finish()),
    ];
    let schema = labels_schema();
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    crate::encode_parquet(&schema, &[batch], row_group_rows)
}

/// One row of `deadletters` (see [`deadletters_schema`]).
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetterRow<'a> {
    /// The dead-letter store's id.
    pub id: u64,
    /// When it was refused, ms since the epoch.
    pub time_ms: i64,
    /// Device, if authenticated.
    pub device: Option<&'a str>,
    /// Peer address.
    pub peer: Option<&'a str>,
    /// `mqtt:<topic>` or `http:<path>#line`.
    pub endpoint: &'a str,
    /// Machine-readable reason.
    pub reason: &'a str,
    /// Human-readable detail.
    pub detail: &'a str,
    /// The raw bytes (possibly truncated).
    pub raw: &'a [u8],
    /// `raw` was truncated.
    pub truncated: bool,
    /// The original length.
    pub original_len: u64,
}

/// Encodes dead-letter rows as one Parquet file of [`deadletters_schema`].
pub fn encode_deadletters(rows: &[DeadLetterRow<'_>], row_group_rows: usize) -> Result<Bytes> {
    let mut id = Int64Builder::new();
    let mut time = TimestampMicrosecondBuilder::new();
    let mut device = StringBuilder::new();
    let mut peer = StringBuilder::new();
    let mut endpoint = StringBuilder::new();
    let mut reason = StringBuilder::new();
    let mut detail = StringBuilder::new();
    let mut raw = BinaryBuilder::new();
    let mut truncated = BooleanBuilder::new();
    let mut original_len = Int64Builder::new();
    for e in rows {
        id.append_value(i64::try_from(e.id).unwrap_or(i64::MAX));
        time.append_value(e.time_ms.saturating_mul(1000));
        device.append_option(e.device);
        peer.append_option(e.peer);
        endpoint.append_value(e.endpoint);
        reason.append_value(e.reason);
        detail.append_value(e.detail);
        raw.append_value(e.raw);
        truncated.append_value(e.truncated);
        original_len.append_value(i64::try_from(e.original_len).unwrap_or(i64::MAX));
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(time.finish().with_timezone("UTC")),
        Arc::new(device.finish()),
        Arc::new(peer.finish()),
        Arc::new(endpoint.finish()),
        Arc::new(reason.finish()),
        Arc::new(detail.finish()),
        Arc::new(raw.finish()),
        Arc::new(truncated.finish()),
        Arc::new(original_len.finish()),
    ];
    let schema = deadletters_schema();
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    crate::encode_parquet(&schema, &[batch], row_group_rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_are_event_time_hours_and_times_before_1970_do_not_wrap() {
        assert_eq!(hour_of_ms(0), 0);
        assert_eq!(hour_of_ms(3_599_999), 0);
        assert_eq!(hour_of_ms(3_600_000), 1);
        assert_eq!(hour_of_ms(-1), -1);
        assert_eq!(hour_of_ms(i64::MAX), i64::MAX / HOUR_US);
        let groups = by_hour([7_200_000i64, 10, 3_600_001, 20], |t| *t);
        let v: Vec<(i64, Vec<i64>)> = groups.into_iter().collect();
        assert_eq!(
            v,
            vec![
                (0, vec![10, 20]),
                (1, vec![3_600_001]),
                (2, vec![7_200_000])
            ]
        );
    }

    #[test]
    fn every_table_round_trips_through_parquet_with_its_schema() -> Result<()> {
        let a = encode_anomalies(
            &[AnomalyRow {
                event_id: "e1",
                device_id: "d1",
                metric: None,
                ts_ms: 1_700_000_000_000,
                kind: "silence",
                score: 3.5,
                threshold: 1.0,
                value: None,
                expected: Some((1.0, 2.0)),
                explanation: "{}".into(),
                model_version: "m1",
                replayed: true,
                wal_seq: 9,
            }],
            1024,
        )?;
        let l = encode_labels(
            &[LabelRow {
                label_id: 1,
                case_id: 2,
                device_id: "d1",
                metric: Some("t"),
                start_ms: 1,
                end_ms: 2,
                label: "confirmed",
                max_score: 4.0,
                root_cause: None,
                actor: "ops",
                created_at_ms: 3,
                category: "anomaly",
            }],
            1024,
        )?;
        let d = encode_deadletters(
            &[DeadLetterRow {
                id: 5,
                time_ms: 6,
                device: Some("d1"),
                peer: None,
                endpoint: "mqtt:x",
                reason: "bad_payload",
                detail: "nan",
                raw: b"\xff",
                truncated: false,
                original_len: 1,
            }],
            1024,
        )?;
        for (bytes, schema) in [
            (a, anomalies_schema()),
            (l, labels_schema()),
            (d, deadletters_schema()),
        ] {
            let (got, batches) = crate::decode_parquet(bytes)?;
            assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
            assert_eq!(got.fields(), schema.fields());
        }
        Ok(())
    }
}
