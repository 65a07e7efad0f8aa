//! Configuration of the live, many-series [`Detector`](super::Detector).

use serde::{Deserialize, Serialize};

use crate::multivariate::MultivariateConfig;
use crate::{Error, Result};

/// Silence detection: a series (or a whole device) that stops reporting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SilenceConfig {
    /// Whether [`Detector::tick`](super::Detector::tick) reports silences.
    pub enabled: bool,
    /// A series is silent when nothing arrived for `factor` times its usual interval.
    pub factor: f64,
    /// ... and for at least this long (ms), so a fast series is not silent after a hiccup.
    pub min_gap_ms: i64,
    /// Intervals observed before the usual interval is trusted (unless the model parameters
    /// supply it).
    pub min_intervals: u32,
    /// Weight of each new interval in the usual interval's running average.
    pub interval_alpha: f64,
}

impl Default for SilenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            factor: 5.0,
            min_gap_ms: 10_000,
            min_intervals: 10,
            interval_alpha: 0.05,
        }
    }
}

/// The live detector's configuration. The ensemble configuration lives in
/// [`ModelParams`](crate::ModelParams), so it can be fitted and hot-swapped.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Silence detection.
    pub silence: SilenceConfig,
    /// The per-device multivariate model.
    pub multivariate: MultivariateConfig,
    /// Readings below the threshold after which a series leaves its anomalous state (a new
    /// crossing then raises a new event).
    pub clear_after: u32,
    /// Most series tracked; readings of further new series are answered
    /// [`ScoreStatus::Overflow`](super::ScoreStatus::Overflow) and not learned.
    pub max_series: usize,
    /// How far above an operator-labelled false positive's score the series' threshold is
    /// raised.
    pub feedback_margin: f64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            silence: SilenceConfig::default(),
            multivariate: MultivariateConfig::default(),
            clear_after: 20,
            max_series: 1_000_000,
            feedback_margin: 0.02,
        }
    }
}

impl DetectorConfig {
    /// Every problem with the configuration, with its key path.
    pub fn problems(&self) -> Vec<Error> {
        let mut errs = Vec::new();
        let s = &self.silence;
        crate::detectors::check_positive(&mut errs, "silence.factor", s.factor);
        crate::detectors::check_unit(&mut errs, "silence.interval_alpha", s.interval_alpha);
        if s.min_gap_ms < 0 {
            errs.push(Error::InvalidConfig {
                field: "silence.min_gap_ms",
                reason: format!("{} is negative", s.min_gap_ms),
            });
        }
        self.multivariate.validate(&mut errs);
        if !(self.feedback_margin >= 0.0 && self.feedback_margin < 1.0) {
            errs.push(Error::InvalidConfig {
                field: "feedback_margin",
                reason: format!("{} is not in [0, 1)", self.feedback_margin),
            });
        }
        errs
    }

    /// `Ok` when [`problems`](Self::problems) is empty, else the first problem.
    pub fn validate(&self) -> Result<()> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// A configuration with small sizes for tests: short silence gaps and multivariate
    /// warm-up.
    pub fn test_config() -> Self {
        let mut c = Self::default();
        c.silence.min_gap_ms = 1_000;
        c.silence.min_intervals = 3;
        c.multivariate.warmup = 50;
        c
    }
}
