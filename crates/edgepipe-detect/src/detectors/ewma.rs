//! EWMA z-score: distance of a value from an exponentially weighted mean, in standard deviations.

use serde::{Deserialize, Serialize};

use super::Signal;
use super::stats::{Ewm, learnable};
use crate::Error;

/// Configuration of [`EwmaZ`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EwmaZConfig {
    /// Weight of each new value in the mean and variance (0 < alpha < 1).
    pub alpha: f64,
    /// Values learned before the detector may fire.
    pub warmup: u32,
    /// |z| at which the detector fires.
    pub threshold: f64,
    /// Winsorising: after warm-up a value is learned clipped to `mean ± clip·std`, so an
    /// outlier does not inflate the spread it is judged by (0 = off).
    pub clip: f64,
}

impl Default for EwmaZConfig {
    fn default() -> Self {
        Self {
            alpha: 0.005,
            warmup: 50,
            threshold: 4.0,
            clip: 0.0,
        }
    }
}

impl EwmaZConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        check_unit(errs, "ewma.alpha", self.alpha);
        check_positive(errs, "ewma.threshold", self.threshold);
    }
}

pub(crate) fn check_unit(errs: &mut Vec<Error>, field: &'static str, v: f64) {
    if !(v > 0.0 && v < 1.0) {
        errs.push(Error::InvalidConfig {
            field,
            reason: format!("{v} is not in (0, 1)"),
        });
    }
}

pub(crate) fn check_positive(errs: &mut Vec<Error>, field: &'static str, v: f64) {
    if !(v > 0.0 && v.is_finite()) {
        errs.push(Error::InvalidConfig {
            field,
            reason: format!("{v} is not a positive number"),
        });
    }
}

pub(crate) fn check_non_negative(errs: &mut Vec<Error>, field: &'static str, v: f64) {
    if !(v >= 0.0 && v.is_finite()) {
        errs.push(Error::InvalidConfig {
            field,
            reason: format!("{v} is not a finite number >= 0"),
        });
    }
}

/// Streaming EWMA z-score with warm-up.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EwmaZ {
    stats: Ewm,
}

impl EwmaZ {
    /// Scores `x` against the current mean and spread, then learns it.
    pub fn update(&mut self, cfg: &EwmaZConfig, x: f64) -> Signal {
        let sig = self.peek(cfg, x);
        if learnable(x) {
            let learned = if cfg.clip > 0.0 && self.stats.n >= u64::from(cfg.warmup.max(2)) {
                let half = cfg.clip * self.stats.std();
                x.clamp(self.stats.mean - half, self.stats.mean + half)
            } else {
                x
            };
            self.stats.update(learned, cfg.alpha);
        }
        sig
    }

    /// Scores `x` without learning it.
    pub fn peek(&self, cfg: &EwmaZConfig, x: f64) -> Signal {
        if self.stats.n < u64::from(cfg.warmup.max(2)) {
            return Signal::quiet();
        }
        let sd = self.stats.std();
        let floor = 1e-9 * (1.0 + self.stats.mean.abs());
        let z = (x - self.stats.mean).abs() / sd.max(floor);
        let half = cfg.threshold * sd;
        Signal::new(
            z / cfg.threshold,
            Some((self.stats.mean - half, self.stats.mean + half)),
        )
    }

    /// Starts the baseline at `mean` and `std` as if `n` values had been learned (a fitted
    /// series needs no warm-up).
    pub(crate) fn seed(&mut self, mean: f64, std: f64, n: u64) {
        if mean.is_finite() && std.is_finite() && std > 0.0 {
            self.stats = Ewm {
                n,
                mean,
                var: std * std,
            };
        }
    }

    /// Values learned.
    pub(crate) fn count(&self) -> u64 {
        self.stats.n
    }

    /// Current mean and standard deviation.
    pub fn mean_std(&self) -> (f64, f64) {
        (self.stats.mean, self.stats.std())
    }

    pub(crate) fn valid(&self) -> bool {
        self.stats.mean.is_finite() && self.stats.var.is_finite() && self.stats.var >= 0.0
    }
}
