//! Rate of change: a step between consecutive values far larger than the series' usual step.

use serde::{Deserialize, Serialize};

use super::Signal;
use super::ewma::{check_positive, check_unit};
use super::stats::{Ewm, learnable};
use crate::Error;

/// Configuration of [`RateOfChange`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateOfChangeConfig {
    /// Weight of each new step in the mean absolute step.
    pub alpha: f64,
    /// Steps learned before the detector may fire.
    pub warmup: u32,
    /// Ratio of a step to the mean absolute step at which the detector fires.
    pub threshold: f64,
}

impl Default for RateOfChangeConfig {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            warmup: 50,
            threshold: 8.0,
        }
    }
}

impl RateOfChangeConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        check_unit(errs, "rate.alpha", self.alpha);
        check_positive(errs, "rate.threshold", self.threshold);
    }
}

/// Streaming step-size state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RateOfChange {
    last: Option<f64>,
    steps: Ewm,
}

impl RateOfChange {
    /// Scores the step from the previous value to `x`, then learns it.
    pub fn update(&mut self, cfg: &RateOfChangeConfig, x: f64) -> Signal {
        if !learnable(x) {
            return Signal::quiet();
        }
        let Some(prev) = self.last.replace(x) else {
            return Signal::quiet();
        };
        let step = (x - prev).abs();
        let sig = if self.steps.n < u64::from(cfg.warmup.max(2)) {
            Signal::quiet()
        } else {
            let m = self.steps.mean.max(1e-9 * (1.0 + prev.abs()));
            let half = cfg.threshold * m;
            Signal::new(step / m / cfg.threshold, Some((prev - half, prev + half)))
        };
        self.steps.update(step, cfg.alpha);
        sig
    }

    pub(crate) fn valid(&self) -> bool {
        self.last.is_none_or(f64::is_finite) && self.steps.mean.is_finite()
    }
}
