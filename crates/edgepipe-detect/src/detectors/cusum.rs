//! Two-sided CUSUM on standardised residuals: accumulates small persistent deviations, so it
//! finds level shifts that no single value reveals.

use serde::{Deserialize, Serialize};

use super::Signal;
use super::ewma::check_positive;
use crate::Error;

/// Configuration of [`Cusum`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CusumConfig {
    /// Allowance `k` in standard deviations: deviations below it do not accumulate.
    pub drift: f64,
    /// Decision interval `h`: the detector fires when a sum reaches it, then restarts.
    pub threshold: f64,
    /// Largest standardised residual one value may add, so one spike is not a level shift.
    pub clip: f64,
}

impl Default for CusumConfig {
    fn default() -> Self {
        Self {
            drift: 1.0,
            threshold: 12.0,
            clip: 4.0,
        }
    }
}

impl CusumConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        check_positive(errs, "cusum.drift", self.drift);
        check_positive(errs, "cusum.threshold", self.threshold);
        check_positive(errs, "cusum.clip", self.clip);
    }
}

/// Streaming two-sided CUSUM state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Cusum {
    up: f64,
    down: f64,
}

impl Cusum {
    /// Accumulates the standardised residual `z = (x - mean) / std` supplied by the caller
    /// (from a slow baseline); `None` while that baseline is warming up.
    pub fn update(&mut self, cfg: &CusumConfig, z: Option<f64>) -> Signal {
        let Some(z) = z.filter(|z| z.is_finite()) else {
            return Signal::quiet();
        };
        let z = z.clamp(-cfg.clip, cfg.clip);
        self.up = (self.up + z - cfg.drift).max(0.0);
        self.down = (self.down - z - cfg.drift).max(0.0);
        let level = self.up.max(self.down) / cfg.threshold;
        if level >= 1.0 {
            self.up = 0.0;
            self.down = 0.0;
        }
        Signal::new(level, None)
    }

    pub(crate) fn valid(&self) -> bool {
        self.up.is_finite() && self.down.is_finite() && self.up >= 0.0 && self.down >= 0.0
    }
}
