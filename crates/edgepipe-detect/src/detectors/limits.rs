//! Configured physical limits: a value outside `[min, max]` is always anomalous.

use serde::{Deserialize, Serialize};

use super::Signal;
use crate::Error;

/// Configuration of [`Limits`]. Both bounds are optional.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Smallest physically possible value.
    pub min: Option<f64>,
    /// Largest physically possible value.
    pub max: Option<f64>,
}

impl LimitsConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        if let (Some(a), Some(b)) = (self.min, self.max)
            && a > b
        {
            errs.push(Error::InvalidConfig {
                field: "limits.min",
                reason: format!("min {a} is above max {b}"),
            });
        }
    }
}

/// Stateless limit check.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Limits;

impl Limits {
    /// Level 2 (fires) outside the limits or for a non-finite value when limits are set,
    /// 0 otherwise.
    pub fn check(cfg: &LimitsConfig, x: f64) -> Signal {
        if cfg.min.is_none() && cfg.max.is_none() {
            return Signal::quiet();
        }
        let below = cfg.min.is_some_and(|m| x.is_nan() || x < m);
        let above = cfg.max.is_some_and(|m| x.is_nan() || x > m);
        let lo = cfg.min.unwrap_or(f64::NEG_INFINITY);
        let hi = cfg.max.unwrap_or(f64::INFINITY);
        Signal::new(if below || above { 2.0 } else { 0.0 }, Some((lo, hi)))
    }
}
