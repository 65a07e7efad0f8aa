//! The anomaly-likelihood stage: how unusual the recent raw scores are compared with this
//! series' own history of raw scores. A series that is always noisy stops alarming on its
//! noise; a quiet series alarms on a small but sustained rise.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::detectors::stats::{Ewm, Ring, ln_normal_tail};

/// Longest short-term window of the likelihood stage.
pub const MAX_SHORT_WINDOW: usize = 32;

/// Configuration of the likelihood stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LikelihoodConfig {
    /// Raw scores averaged for the short-term view (1..=32).
    pub short_window: usize,
    /// Weight of each new raw score in the long-term mean and variance.
    pub long_alpha: f64,
    /// Raw scores learned before the stage produces a likelihood.
    pub warmup: u32,
    /// Floor of the long-term standard deviation of raw scores.
    pub min_std: f64,
    /// Scale of the final score: `score = 1 - exp(-(-ln Q(z)) / scale)`.
    pub scale: f64,
}

impl Default for LikelihoodConfig {
    fn default() -> Self {
        Self {
            short_window: 4,
            long_alpha: 0.002,
            warmup: 200,
            min_std: 0.01,
            scale: 20.0,
        }
    }
}

impl LikelihoodConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        if !(1..=MAX_SHORT_WINDOW).contains(&self.short_window) {
            errs.push(Error::InvalidConfig {
                field: "likelihood.short_window",
                reason: format!("{} is not in 1..={MAX_SHORT_WINDOW}", self.short_window),
            });
        }
        crate::detectors::check_unit(errs, "likelihood.long_alpha", self.long_alpha);
        crate::detectors::check_positive(errs, "likelihood.min_std", self.min_std);
        crate::detectors::check_positive(errs, "likelihood.scale", self.scale);
    }
}

/// State of the likelihood stage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Likelihood {
    short: Ring,
    long: Ewm,
}

impl Likelihood {
    /// Adds a raw score and returns the calibrated score in [0, 1] and the short-term z.
    pub fn update(&mut self, cfg: &LikelihoodConfig, raw: f64) -> (f64, f64) {
        let raw = if raw.is_nan() {
            0.0
        } else {
            raw.clamp(0.0, crate::detectors::MAX_LEVEL)
        };
        let w = cfg.short_window.clamp(1, MAX_SHORT_WINDOW);
        self.short.push(raw, w);
        let n = self.short.len().max(1) as f64;
        let short = self.short.buf.iter().sum::<f64>() / n;
        let out = if self.long.n < u64::from(cfg.warmup) {
            (0.0, 0.0)
        } else {
            let z = (short - self.long.mean) / self.long.std().max(cfg.min_std);
            let nlq = -ln_normal_tail(z);
            let s = 1.0 - (-nlq / cfg.scale).exp();
            (
                if s.is_finite() {
                    s.clamp(0.0, 1.0)
                } else {
                    0.0
                },
                z,
            )
        };
        self.long.update(raw, cfg.long_alpha);
        out
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.short.heap_bytes()
    }

    pub(crate) fn valid(&self, cfg: &LikelihoodConfig) -> bool {
        self.short
            .valid(cfg.short_window.clamp(1, MAX_SHORT_WINDOW))
            && self.long.mean.is_finite()
            && self.long.var.is_finite()
    }
}
