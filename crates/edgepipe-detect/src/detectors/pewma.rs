//! Probabilistic EWMA (Carter & Streilein, 2012): an EWMA whose weight on a new value shrinks
//! when the value is improbable, so outliers barely move the baseline while level changes are
//! still followed.

use serde::{Deserialize, Serialize};

use super::Signal;
use super::ewma::{check_positive, check_unit};
use super::stats::learnable;
use crate::Error;

/// Configuration of [`Pewma`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PewmaConfig {
    /// Weight kept on the past (the paper's α, 0 < alpha < 1).
    pub alpha: f64,
    /// How strongly an improbable value's weight is reduced (the paper's β, 0..=1).
    pub beta: f64,
    /// Training length: a running average is used for the first `warmup` values and the
    /// detector does not fire meanwhile.
    pub warmup: u32,
    /// |z| at which the detector fires.
    pub threshold: f64,
}

impl Default for PewmaConfig {
    fn default() -> Self {
        Self {
            alpha: 0.98,
            beta: 1.0,
            warmup: 50,
            threshold: 4.0,
        }
    }
}

impl PewmaConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        check_unit(errs, "pewma.alpha", self.alpha);
        if !(0.0..=1.0).contains(&self.beta) {
            errs.push(Error::InvalidConfig {
                field: "pewma.beta",
                reason: format!("{} is not in [0, 1]", self.beta),
            });
        }
        check_positive(errs, "pewma.threshold", self.threshold);
    }
}

/// Streaming PEWMA state: first and second moments.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Pewma {
    n: u64,
    s1: f64,
    s2: f64,
}

impl Pewma {
    /// Scores `x` against the current moments, then learns it.
    pub fn update(&mut self, cfg: &PewmaConfig, x: f64) -> Signal {
        let sd = (self.s2 - self.s1 * self.s1).max(0.0).sqrt();
        let floor = 1e-9 * (1.0 + self.s1.abs());
        let z = (x - self.s1) / sd.max(floor);
        let sig = if self.n < u64::from(cfg.warmup.max(2)) {
            Signal::quiet()
        } else {
            let half = cfg.threshold * sd;
            Signal::new(
                z.abs() / cfg.threshold,
                Some((self.s1 - half, self.s1 + half)),
            )
        };
        if learnable(x) {
            self.n = self.n.saturating_add(1);
            let keep = if self.n <= u64::from(cfg.warmup) {
                1.0 - 1.0 / self.n as f64
            } else {
                let p = (-0.5 * z * z).exp() * (1.0 / (2.0 * std::f64::consts::PI).sqrt());
                let p = if p.is_finite() { p } else { 0.0 };
                cfg.alpha * (1.0 - cfg.beta * p)
            };
            self.s1 = keep * self.s1 + (1.0 - keep) * x;
            self.s2 = keep * self.s2 + (1.0 - keep) * x * x;
        }
        sig
    }

    pub(crate) fn valid(&self) -> bool {
        self.s1.is_finite() && self.s2.is_finite()
    }
}
