//! Robust z-score from the median and median absolute deviation of a recent window: immune to
//! the outliers it is looking for.

use serde::{Deserialize, Serialize};

use super::Signal;
use super::ewma::check_positive;
use super::stats::{Ring, learnable, median_in_place};
use crate::Error;

/// Longest window [`RobustMad`] accepts (bounds its state at 1 KiB).
pub const MAX_MAD_WINDOW: usize = 128;

/// Configuration of [`RobustMad`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RobustMadConfig {
    /// Values in the window (3..=128).
    pub window: usize,
    /// Robust |z| at which the detector fires.
    pub threshold: f64,
    /// Lower bound of the scale, as a fraction of the long-run standard deviation supplied by
    /// the caller, so a window of identical values does not make every change infinite.
    pub min_scale_fraction: f64,
}

impl Default for RobustMadConfig {
    fn default() -> Self {
        Self {
            window: 32,
            threshold: 6.0,
            min_scale_fraction: 0.1,
        }
    }
}

impl RobustMadConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        if !(3..=MAX_MAD_WINDOW).contains(&self.window) {
            errs.push(Error::InvalidConfig {
                field: "mad.window",
                reason: format!("{} is not in 3..={MAX_MAD_WINDOW}", self.window),
            });
        }
        check_positive(errs, "mad.threshold", self.threshold);
        if !(self.min_scale_fraction >= 0.0 && self.min_scale_fraction.is_finite()) {
            errs.push(Error::InvalidConfig {
                field: "mad.min_scale_fraction",
                reason: format!("{} is not >= 0", self.min_scale_fraction),
            });
        }
    }
}

/// Streaming median/MAD over the last `window` values.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RobustMad {
    ring: Ring,
}

impl RobustMad {
    /// Scores `x` against the window's median and MAD, then adds it to the window.
    /// `long_std` is a long-run spread estimate used as a floor for the scale.
    pub fn update(&mut self, cfg: &RobustMadConfig, x: f64, long_std: f64) -> Signal {
        let w = cfg.window.clamp(3, MAX_MAD_WINDOW);
        let sig = if self.ring.len() < w {
            Signal::quiet()
        } else {
            let mut scratch = [0.0f64; MAX_MAD_WINDOW];
            let n = self.ring.len().min(MAX_MAD_WINDOW);
            let vals = &mut scratch[..n];
            vals.copy_from_slice(&self.ring.buf[..n]);
            let med = median_in_place(vals);
            for v in vals.iter_mut() {
                *v = (*v - med).abs();
            }
            let mad = median_in_place(vals);
            let scale = (1.4826 * mad)
                .max(cfg.min_scale_fraction * long_std)
                .max(1e-9 * (1.0 + med.abs()));
            let z = (x - med).abs() / scale;
            let half = cfg.threshold * scale;
            Signal::new(z / cfg.threshold, Some((med - half, med + half)))
        };
        self.learn(cfg, x);
        sig
    }

    /// Adds `x` to the window without scoring it (what [`update`](Self::update) learns).
    pub fn learn(&mut self, cfg: &RobustMadConfig, x: f64) {
        if learnable(x) {
            self.ring.push(x, cfg.window.clamp(3, MAX_MAD_WINDOW));
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.ring.heap_bytes()
    }

    pub(crate) fn valid(&self, cfg: &RobustMadConfig) -> bool {
        self.ring.valid(cfg.window.clamp(3, MAX_MAD_WINDOW))
    }
}
