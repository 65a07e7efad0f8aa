//! `GET /api/v1/series`: min/max/avg per time bucket of one series, for charts. The bucket
//! width is at least `(to - from) / points`, so a chart never gets more points than it has
//! pixels, whatever range it asks for.
//!
//! Buckets of a minute or more read the rollups where they are complete: an hour whose
//! `readings` partition holds only compacted files and whose rollup file exists is read from
//! `rollup_1m` (or `rollup_1h` for whole-hour buckets), 60 (or 3,600) times fewer rows than
//! the raw readings; every other hour (not compacted yet, or a flush landed after compaction)
//! is read raw, and unflushed rows of the fresh buffer that fall in a rolled-up hour (late
//! data) are added on top. The listing, the fresh snapshot and the query run under the
//! compaction swap lock, so a reading is counted once: either its hour's rollup has it, or the
//! raw files or the fresh buffer do. Buckets then start at whole minutes (hours), so the range
//! is widened to whole minutes (hours) at both ends.

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
use edgepipe_lake::schema::{hour_of_key, partition_of_hour};
use edgepipe_lake::{FreshSnapshot, tables};
use edgepipe_types::{DeviceId, Metric};
use serde::{Deserialize, Serialize};

use crate::{Error, QueryEngine, Result};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
/// Buckets wider than this use whole hours (and `rollup_1h`).
const HOURLY_ABOVE_MS: i64 = 3 * HOUR_MS;
/// More alternating rolled-up / raw ranges than this (one SQL branch each) and the request
/// reads everything raw. Raw hours are the recent, not yet compacted ones, so this takes a lake
/// whose compaction has been failing for weeks.
const MAX_RANGES: usize = 512;

/// Most points one series request returns.
pub const MAX_POINTS: u32 = 10_000;

/// A chart's request.
#[derive(Debug, Clone, Deserialize)]
pub struct SeriesRequest {
    /// Device id.
    pub device: String,
    /// Metric name.
    pub metric: String,
    /// Start, inclusive, ms since the epoch.
    pub from: i64,
    /// End, exclusive, ms since the epoch.
    pub to: i64,
    /// Requested bucket width in ms (widened to honour `points`).
    #[serde(default)]
    pub step: Option<i64>,
    /// Most points wanted (the chart's width in pixels); default 1000, at most 10,000.
    #[serde(default)]
    pub points: Option<u32>,
}

/// One bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesPoint {
    /// Bucket start, ms since the epoch.
    pub t: i64,
    /// Smallest value.
    pub min: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
    /// Mean value.
    pub avg: Option<f64>,
    /// Readings in the bucket.
    pub count: i64,
}

/// The buckets of one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesResponse {
    /// Device id.
    pub device: String,
    /// Metric.
    pub metric: String,
    /// Bucket width used, ms.
    pub step: i64,
    /// Buckets with data, in time order.
    pub points: Vec<SeriesPoint>,
}

fn rfc3339_us(ms: i64) -> Result<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .ok_or_else(|| Error::BadRequest(format!("time {ms} ms is out of range")))
}

/// Sums of one bucket while it is being merged.
#[derive(Debug, Clone, Copy)]
struct Acc {
    min: f64,
    max: f64,
    sum: f64,
    numeric: i64,
    count: i64,
}

impl Default for Acc {
    fn default() -> Self {
        Self {
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            sum: 0.0,
            numeric: 0,
            count: 0,
        }
    }
}

impl Acc {
    fn add(&mut self, min: Option<f64>, max: Option<f64>, sum: Option<f64>, n: i64, c: i64) {
        if let Some(v) = min {
            self.min = self.min.min(v);
        }
        if let Some(v) = max {
            self.max = self.max.max(v);
        }
        self.sum += sum.unwrap_or(0.0);
        self.numeric += n;
        self.count += c;
    }

    fn point(&self, t: i64) -> SeriesPoint {
        let num = self.numeric > 0;
        SeriesPoint {
            t,
            min: num.then_some(self.min),
            max: num.then_some(self.max),
            avg: num.then(|| self.sum / self.numeric as f64),
            count: self.count,
        }
    }
}

/// Hour ranges `[from, to)` in ms, split into those read from a rollup and those read raw.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Ranges {
    pub(crate) rolled: Vec<(i64, i64)>,
    pub(crate) raw: Vec<(i64, i64)>,
}

/// Splits `[from, to)` into ranges read raw (the hours in `raw`, hour numbers since the
/// epoch) and ranges read from the rollup (every other hour).
pub(crate) fn split_ranges(from: i64, to: i64, raw: &BTreeSet<i64>) -> Ranges {
    let mut out = Ranges::default();
    let mut t = from;
    while t < to {
        let hour = t.div_euclid(HOUR_MS);
        let end = ((hour + 1) * HOUR_MS).min(to);
        let list = if raw.contains(&hour) {
            &mut out.raw
        } else {
            &mut out.rolled
        };
        match list.last_mut() {
            Some(last) if last.1 == t => last.1 = end,
            _ => list.push((t, end)),
        }
        t = end;
    }
    out
}

fn ceil_to(x: i64, unit: i64) -> i64 {
    x.div_euclid(unit) * unit + if x.rem_euclid(unit) == 0 { 0 } else { unit }
}

impl QueryEngine {
    /// Buckets of one series between `from` and `to`.
    pub async fn series(&self, req: &SeriesRequest) -> Result<SeriesResponse> {
        let timeout = self.config.timeout;
        match tokio::time::timeout(timeout, self.series_inner(req)).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    async fn series_inner(&self, req: &SeriesRequest) -> Result<SeriesResponse> {
        let device = DeviceId::new(req.device.clone())
            .map_err(|e| Error::BadRequest(format!("device: {e}")))?;
        let metric = Metric::new(req.metric.clone())
            .map_err(|e| Error::BadRequest(format!("metric: {e}")))?;
        if req.to <= req.from {
            return Err(Error::BadRequest(format!(
                "to ({}) must be after from ({})",
                req.to, req.from
            )));
        }
        let points = req.points.unwrap_or(1000);
        if points == 0 || points > MAX_POINTS {
            return Err(Error::BadRequest(format!(
                "points must be between 1 and {MAX_POINTS}, got {points}"
            )));
        }
        let span = req.to - req.from;
        let min_step = (span + i64::from(points) - 1) / i64::from(points);
        let mut step = req.step.unwrap_or(1).max(min_step).max(1);
        // Whole minutes (hours) from a minute up, so rollup buckets nest in chart buckets.
        let rollup = if step > HOURLY_ABOVE_MS {
            step = ceil_to(step, HOUR_MS);
            Some((tables::ROLLUP_1H, HOUR_MS))
        } else if step >= MINUTE_MS {
            step = ceil_to(step, MINUTE_MS);
            Some((tables::ROLLUP_1M, MINUTE_MS))
        } else {
            None
        };
        let (from, to) = match rollup {
            Some((_, unit)) => (req.from.div_euclid(unit) * unit, ceil_to(req.to, unit)),
            None => (req.from, req.to),
        };
        // Ids are validated to [A-Za-z0-9_.:-], so they are safe inside SQL quotes.
        let (d, m) = (device.as_str(), metric.as_str());

        // Held from the listing to the end of the query: compaction cannot swap files (and so
        // cannot turn a raw hour into a rolled-up one) in between.
        let _guard = self.swap.read().await;
        let fresh = match &self.fresh {
            Some(f) => f.snapshot(),
            None => FreshSnapshot {
                committed: u64::MAX,
                batches: Vec::new(),
            },
        };
        let ranges = match rollup {
            Some((table, _)) => {
                let raw = self.raw_hours(table, from, to).await?;
                let r = split_ranges(from, to, &raw);
                if r.rolled.len() + r.raw.len() > MAX_RANGES {
                    Ranges {
                        rolled: Vec::new(),
                        raw: vec![(from, to)],
                    }
                } else {
                    r
                }
            }
            None => Ranges {
                rolled: Vec::new(),
                raw: vec![(from, to)],
            },
        };

        let mut branches = Vec::new();
        for &(a, b) in &ranges.rolled {
            let table = rollup.map(|r| r.0).unwrap_or(tables::ROLLUP_1M);
            branches.push(format!(
                "SELECT bucket AS t, min AS mn, max AS mx, sum AS s, \
                 coalesce(count_numeric, CASE WHEN sum IS NULL THEN 0 \
                 WHEN avg <> 0 THEN CAST(round(sum / avg) AS BIGINT) ELSE count END) AS nn, \
                 count AS c FROM {table} WHERE device_id = '{d}' AND metric = '{m}' \
                 AND bucket >= '{a}' AND bucket < '{b}'",
                a = rfc3339_us(a)?,
                b = rfc3339_us(b)?,
            ));
        }
        for &(a, b) in &ranges.raw {
            branches.push(format!(
                "SELECT ts AS t, value AS mn, value AS mx, value AS s, \
                 CAST(CASE WHEN value IS NULL THEN 0 ELSE 1 END AS BIGINT) AS nn, \
                 CAST(1 AS BIGINT) AS c FROM readings WHERE device_id = '{d}' AND metric = '{m}' \
                 AND ts >= '{a}' AND ts < '{b}'",
                a = rfc3339_us(a)?,
                b = rfc3339_us(b)?,
            ));
        }
        let sql = format!(
            "SELECT date_bin(INTERVAL '{step} milliseconds', t, TIMESTAMP '{origin}') AS t, \
             min(mn), max(mx), sum(s), CAST(sum(nn) AS BIGINT), CAST(sum(c) AS BIGINT) \
             FROM ({union}) GROUP BY 1",
            origin = rfc3339_us(from)?,
            union = branches.join(" UNION ALL "),
        );
        let out = self.query_unlocked(&sql).await?;
        let mut buckets: BTreeMap<i64, Acc> = BTreeMap::new();
        for b in &out.batches {
            // date_bin keeps its origin's unit; normalise to µs.
            let t = arrow::compute::cast(
                b.column(0),
                &arrow::datatypes::DataType::Timestamp(
                    arrow::datatypes::TimeUnit::Microsecond,
                    None,
                ),
            )
            .map_err(|e| Error::Execution(format!("series: bucket: {e}")))?;
            let t = t
                .as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .ok_or_else(|| Error::Execution("series: bucket is not a timestamp".into()))?;
            let f = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| Error::Execution("series: aggregate is not float64".into()))
            };
            let int = |i: usize| {
                b.column(i)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .ok_or_else(|| Error::Execution("series: count is not int64".into()))
            };
            let (mn, mx, sm, nn, c) = (f(1)?, f(2)?, f(3)?, int(4)?, int(5)?);
            let opt = |a: &Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
            for i in 0..b.num_rows() {
                buckets.entry(t.value(i).div_euclid(1000)).or_default().add(
                    opt(mn, i),
                    opt(mx, i),
                    opt(sm, i),
                    nn.value(i),
                    c.value(i),
                );
            }
        }
        // Unflushed late rows in rolled-up hours: neither the rollup nor the raw branches
        // (which only cover raw hours) have them.
        if !ranges.rolled.is_empty() {
            add_fresh(&mut buckets, &fresh, d, m, &ranges.rolled, from, step)?;
        }
        Ok(SeriesResponse {
            device: d.to_owned(),
            metric: m.to_owned(),
            step,
            points: buckets.iter().map(|(t, a)| a.point(*t)).collect(),
        })
    }

    /// Hours in `[from, to)` that must be read raw: their `readings` partition has a flush
    /// file not compacted yet, or compacted files but no `table` rollup (rollups were off).
    /// Every other hour is read from the rollup: it has one, or it has no readings at all
    /// (quiet, or raw files already past retention while the rollup is kept longer).
    pub(crate) async fn raw_hours(&self, table: &str, from: i64, to: i64) -> Result<BTreeSet<i64>> {
        let first = from.div_euclid(HOUR_MS);
        let last = (to - 1).div_euclid(HOUR_MS);
        // One listing per day in range, or of the whole table for long ranges.
        let mut prefixes = BTreeSet::new();
        if last - first > 24 * 62 {
            prefixes.insert(String::new());
        } else {
            for h in first..=last {
                prefixes.insert(format!("date={}/", partition_of_hour(h).0));
            }
        }
        let hour_of = |key: &str| hour_of_key(key).filter(|h| (first..=last).contains(h));
        let mut rolled = BTreeSet::new();
        let mut compacted = BTreeSet::new();
        let mut raw = BTreeSet::new();
        for p in &prefixes {
            let err = |e: edgepipe_lake::Error| Error::Execution(format!("series: listing: {e}"));
            for (key, _) in self
                .store
                .list(&format!("{table}/{p}"))
                .await
                .map_err(err)?
            {
                rolled.extend(hour_of(&key));
            }
            for (key, _) in self
                .store
                .list(&format!("{}/{p}", tables::READINGS))
                .await
                .map_err(err)?
            {
                let name = key.rsplit('/').next().unwrap_or_default();
                if name.starts_with("compacted-") {
                    compacted.extend(hour_of(&key));
                } else if name.ends_with(".parquet") {
                    raw.extend(hour_of(&key));
                }
            }
        }
        raw.extend(compacted.difference(&rolled));
        Ok(raw)
    }
}

/// Column `name` of a fresh-buffer batch as its Arrow array type.
fn col<'a, T: 'static>(b: &'a arrow::array::RecordBatch, name: &str) -> Result<&'a T> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .ok_or_else(|| {
            Error::Execution(format!(
                "series: fresh rows: column {name} has another type"
            ))
        })
}

/// Adds the fresh buffer's rows of `device`/`metric` with `ts` inside `ranges` to `buckets`.
fn add_fresh(
    buckets: &mut BTreeMap<i64, Acc>,
    fresh: &FreshSnapshot,
    device: &str,
    metric: &str,
    ranges: &[(i64, i64)],
    origin: i64,
    step: i64,
) -> Result<()> {
    for b in &fresh.batches {
        let (dev, met) = (
            col::<StringArray>(b, "device_id")?,
            col::<StringArray>(b, "metric")?,
        );
        let ts = col::<TimestampMicrosecondArray>(b, "ts")?;
        let val = col::<Float64Array>(b, "value")?;
        for i in 0..b.num_rows() {
            let t = ts.value(i).div_euclid(1000);
            if !ranges.iter().any(|&(a, z)| a <= t && t < z)
                || dev.value(i) != device
                || met.value(i) != metric
            {
                continue;
            }
            let bucket = origin + (t - origin).div_euclid(step) * step;
            let v = val.is_valid(i).then(|| val.value(i));
            buckets
                .entry(bucket)
                .or_default()
                .add(v, v, v, i64::from(v.is_some()), 1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_at_rolled_up_hours() {
        let h = HOUR_MS;
        let raw: BTreeSet<i64> = [12, 14].into_iter().collect();
        let r = split_ranges(10 * h, 15 * h, &raw);
        assert_eq!(r.rolled, vec![(10 * h, 12 * h), (13 * h, 14 * h)]);
        assert_eq!(r.raw, vec![(12 * h, 13 * h), (14 * h, 15 * h)]);
        // Ranges that do not start on the hour keep their ends.
        let r = split_ranges(10 * h + MINUTE_MS, 12 * h + 5 * MINUTE_MS, &raw);
        assert_eq!(r.rolled, vec![(10 * h + MINUTE_MS, 12 * h)]);
        assert_eq!(r.raw, vec![(12 * h, 12 * h + 5 * MINUTE_MS)]);
        assert_eq!(ceil_to(61, 60), 120);
        assert_eq!(ceil_to(120, 60), 120);
        assert_eq!(ceil_to(-61, 60), -60);
    }
}
