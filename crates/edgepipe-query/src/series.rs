//! `GET /api/v1/series`: min/max/avg per time bucket of one series, for charts. The bucket
//! width is at least `(to - from) / points`, so a chart never gets more points than it has
//! pixels, whatever range it asks for.

use arrow::array::{Array, Float64Array, Int64Array, TimestampMicrosecondArray};
use edgepipe_types::{DeviceId, Metric};
use serde::{Deserialize, Serialize};

use crate::{Error, QueryEngine, Result};

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

impl QueryEngine {
    /// Buckets of one series between `from` and `to`.
    pub async fn series(&self, req: &SeriesRequest) -> Result<SeriesResponse> {
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
        let step = req.step.unwrap_or(1).max(min_step).max(1);
        // Ids are validated to [A-Za-z0-9_.:-], so they are safe inside SQL quotes.
        let sql = format!(
            "SELECT date_bin(INTERVAL '{step} milliseconds', ts, TIMESTAMP '{from}') AS t, \
             min(value) AS min, max(value) AS max, avg(value) AS avg, count(*) AS count \
             FROM readings WHERE device_id = '{d}' AND metric = '{m}' \
             AND ts >= '{from}' AND ts < '{to}' GROUP BY 1 ORDER BY 1",
            d = device.as_str(),
            m = metric.as_str(),
            from = rfc3339_us(req.from)?,
            to = rfc3339_us(req.to)?,
        );
        let out = self.query(&sql).await?;
        let mut pts = Vec::new();
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
            let (mn, mx, av) = (f(1)?, f(2)?, f(3)?);
            let c = b
                .column(4)
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| Error::Execution("series: count is not int64".into()))?;
            let opt = |a: &Float64Array, i: usize| a.is_valid(i).then(|| a.value(i));
            for i in 0..b.num_rows() {
                pts.push(SeriesPoint {
                    t: t.value(i).div_euclid(1000),
                    min: opt(mn, i),
                    max: opt(mx, i),
                    avg: opt(av, i),
                    count: c.value(i),
                });
            }
        }
        Ok(SeriesResponse {
            device: device.as_str().to_owned(),
            metric: metric.as_str().to_owned(),
            step,
            points: pts,
        })
    }
}
