//! Streaming anomaly detection for edgepipe: per-series detectors that score each reading as it
//! arrives, their bounded state and snapshots, and NAB evaluation.
//!
//! It sits on the detection stage of the data path (architecture: "WAL consumers → detector →
//! anomalies") and in the edge agent alike, so the same code finds anomalies offline at the edge.
//! The core is pure and synchronous: a detector takes `(timestamp, value)` and returns a score;
//! it never reads a clock or a file. Only `nab` and `csv_eval` perform I/O, to read the benchmark
//! or a labelled CSV and write results.
//!
//! - [`Detector`] (module [`live`]): the many-series detector a WAL consumer drives —
//!   `score(key, ts, value)`, `tick(now)` for silence, `snapshot()`/`restore()`, `set_params`,
//!   `apply_feedback`.
//! - [`ModelParams`] (module [`model`]): the versioned, fitted, hot-swappable parameters.
//! - [`ensemble`] and [`detectors`]: the univariate ensemble and its parts; [`multivariate`]:
//!   the per-device streaming PCA.
//! - `eval`: drives a [`Detector`] over a labelled fleet and scores its events (precision,
//!   recall, F1, detection delay per incident kind); `nab`: the NAB benchmark; `csv_eval`: any
//!   labelled CSV through a [`Detector`] (`edgepipe eval csv`). All three are behind the `eval`
//!   feature (off by default: the edge agent does not compile them).

#[cfg(feature = "eval")]
pub mod csv_eval;
pub mod detectors;
pub mod ensemble;
mod error;
#[cfg(feature = "eval")]
pub mod eval;
pub mod live;
pub mod model;
pub mod multivariate;
#[cfg(feature = "eval")]
pub mod nab;
mod series_key;

pub use ensemble::{Assessment, EnsembleConfig, SeriesDetector, SeriesState, Snapshot};
pub use error::{Error, Result};
pub use live::{
    Contribution, DETECTOR_SNAPSHOT_VERSION, Detector, DetectorConfig, Event, EventKind,
    Explanation, Feedback, Score, ScoreStatus, SeriesKey, SilenceConfig,
};
pub use model::{FitOptions, MODEL_PARAMS_VERSION, ModelParams, SeriesParams, fit};
pub use multivariate::MultivariateConfig;

use edgepipe_types::TimestampMs;

/// Anything that scores one series' readings, in arrival order, with an anomaly score in
/// `[0, 1]` (higher is more anomalous).
pub trait PointScorer {
    /// Scores the reading at `ts` with `value` and updates the state. Never panics on any input,
    /// including NaN and infinities.
    fn score(&mut self, ts: TimestampMs, value: f64) -> f64;
}

/// Any closure `(ts, value) -> score` is a scorer (handy for evaluation runs).
impl<F: FnMut(TimestampMs, f64) -> f64> PointScorer for F {
    fn score(&mut self, ts: TimestampMs, value: f64) -> f64 {
        self(ts, value)
    }
}
