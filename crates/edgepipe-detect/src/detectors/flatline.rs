//! Stuck sensor / flatline: a run of repeated values much longer than the series has shown.

use serde::{Deserialize, Serialize};

use super::Signal;
use super::ewma::check_positive;
use crate::Error;

/// Configuration of [`Flatline`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FlatlineConfig {
    /// Shortest run of repeats that can ever fire.
    pub min_run: u32,
    /// The detector fires when the current run exceeds `factor` times the longest run seen
    /// in the series before.
    pub factor: f64,
    /// Values learned before the detector may fire.
    pub warmup: u32,
    /// Relative tolerance under which two consecutive values count as equal.
    pub tolerance: f64,
}

impl Default for FlatlineConfig {
    fn default() -> Self {
        Self {
            min_run: 12,
            factor: 1.5,
            warmup: 200,
            tolerance: 1e-9,
        }
    }
}

impl FlatlineConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        check_positive(errs, "flatline.factor", self.factor);
        if !(self.tolerance >= 0.0 && self.tolerance.is_finite()) {
            errs.push(Error::InvalidConfig {
                field: "flatline.tolerance",
                reason: format!("{} is not >= 0", self.tolerance),
            });
        }
    }
}

/// Streaming run-length state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Flatline {
    n: u64,
    last: Option<f64>,
    run: u32,
    longest: u32,
    alerted: bool,
}

impl Flatline {
    /// Extends or ends the current run with `x` and scores its length.
    pub fn update(&mut self, cfg: &FlatlineConfig, x: f64) -> Signal {
        if !x.is_finite() {
            return Signal::quiet();
        }
        self.n = self.n.saturating_add(1);
        let same = self
            .last
            .is_some_and(|p| (x - p).abs() <= cfg.tolerance * p.abs().max(x.abs()).max(1e-12));
        if same {
            self.run = self.run.saturating_add(1);
        } else {
            self.longest = self.longest.max(self.run);
            self.run = 0;
            self.alerted = false;
        }
        self.last = Some(x);
        if self.n <= u64::from(cfg.warmup) {
            return Signal::quiet();
        }
        let limit = (f64::from(self.longest) * cfg.factor).max(f64::from(cfg.min_run.max(1)));
        if !self.alerted && f64::from(self.run) >= limit {
            // Fire once per run: a run length is a count, not a graded surprise, so the level
            // is all or nothing. The run's final length is learned when it ends.
            self.alerted = true;
            Signal::new(1.0, Some((x, x)))
        } else {
            Signal::quiet()
        }
    }

    pub(crate) fn valid(&self) -> bool {
        self.last.is_none_or(f64::is_finite)
    }
}
