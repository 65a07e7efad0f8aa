//! Log-scale drop: a downward EWMA z-score of `ln(x + c)` for series that never go negative.
//!
//! Counts, rates and loads (requests/s, CPU %, queue lengths, traffic) vary multiplicatively:
//! their spread grows with their level, so on a linear scale a fall to a small fraction of the
//! usual value is hidden inside the noise of the busy hours. On a log scale the same fall is
//! many standard deviations (an outage, a stalled producer, a lost feed). The offset `c` is a
//! fraction of the series' mean magnitude learned during warm-up, so a zero reading maps to a
//! finite, strongly negative log and near-zero noise is not magnified.
//!
//! Only drops count: rises are already what the linear baselines see best. A series that shows
//! a negative value is not a magnitude (a temperature in °C crossing zero would look like a
//! collapse on a log scale), and the detector stays silent for it from then on; the linear
//! baselines judge that reading.

use serde::{Deserialize, Serialize};

use super::Signal;
use super::ewma::{check_positive, check_unit};
use super::stats::{Ewm, learnable};
use crate::Error;

/// Configuration of [`LogDrop`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogDropConfig {
    /// Offset added before the log, as a fraction of the mean |value| seen in warm-up.
    pub offset: f64,
    /// Readings used to learn the offset, then log values learned, before the detector fires.
    pub warmup: u32,
    /// Weight of each new log value in the mean and variance (0 < alpha < 1).
    pub alpha: f64,
    /// Downward z (in log units) at which the detector fires.
    pub threshold: f64,
}

impl Default for LogDropConfig {
    fn default() -> Self {
        Self {
            offset: 0.05,
            warmup: 50,
            alpha: 0.005,
            threshold: 4.0,
        }
    }
}

impl LogDropConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        if !(self.offset > 0.0 && self.offset <= 1.0) {
            errs.push(Error::InvalidConfig {
                field: "log_drop.offset",
                reason: format!("{} is not in (0, 1]", self.offset),
            });
        }
        check_unit(errs, "log_drop.alpha", self.alpha);
        check_positive(errs, "log_drop.threshold", self.threshold);
    }
}

/// Streaming log-scale drop detector (about 48 bytes of state).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LogDrop {
    /// Warm-up readings counted towards the offset.
    n_offset: u32,
    /// Sum of |value| over those readings.
    sum_abs: f64,
    /// The offset (0 = still learning it).
    c: f64,
    /// A negative value was seen: not a magnitude, never fires again.
    disabled: bool,
    /// Mean and variance of `ln(x + c)`.
    stats: Ewm,
}

impl LogDrop {
    /// Scores `x` against the log-scale baseline, then learns it.
    pub fn update(&mut self, cfg: &LogDropConfig, x: f64) -> Signal {
        if self.disabled || !x.is_finite() {
            return Signal::quiet();
        }
        if x < 0.0 {
            self.disabled = true;
            return Signal::quiet();
        }
        if self.c <= 0.0 {
            if !learnable(x) {
                return Signal::quiet();
            }
            self.sum_abs += x;
            self.n_offset = self.n_offset.saturating_add(1);
            if self.n_offset < cfg.warmup.max(1) || self.sum_abs <= 0.0 {
                // All zeros so far: no scale to take the offset from yet.
                return Signal::quiet();
            }
            self.c = (cfg.offset * self.sum_abs / f64::from(self.n_offset)).max(1e-12);
        }
        let y = (x + self.c).ln();
        let sig = self.peek(cfg, y);
        // Like the other detectors, a value too large to learn safely is scored, not learned.
        if learnable(x) {
            self.stats.update(y, cfg.alpha);
        }
        sig
    }

    fn peek(&self, cfg: &LogDropConfig, y: f64) -> Signal {
        if self.stats.n < u64::from(cfg.warmup.max(2)) {
            return Signal::quiet();
        }
        let (mean, sd) = (self.stats.mean, self.stats.std());
        let floor = 1e-9 * (1.0 + mean.abs());
        let z = (mean - y).max(0.0) / sd.max(floor);
        let half = cfg.threshold * sd;
        let lo = ((mean - half).exp() - self.c).max(0.0);
        let hi = ((mean + half).exp() - self.c).min(f64::MAX);
        Signal::new(z / cfg.threshold, Some((lo, hi)))
    }

    pub(crate) fn valid(&self) -> bool {
        self.sum_abs.is_finite()
            && self.sum_abs >= 0.0
            && self.c.is_finite()
            && self.c >= 0.0
            && self.stats.mean.is_finite()
            && self.stats.var.is_finite()
            && self.stats.var >= 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warm(d: &mut LogDrop, cfg: &LogDropConfig, n: usize, f: impl Fn(usize) -> f64) {
        for i in 0..n {
            let s = d.update(cfg, f(i));
            assert!(s.level < 1.0, "reading {i} fired during normal traffic");
        }
    }

    /// A fall to a tenth of the usual level fires, and so does zero.
    #[test]
    fn a_fall_to_a_fraction_of_the_level_fires() {
        let cfg = LogDropConfig::default();
        let mut d = LogDrop::default();
        let level = |i: usize| 1000.0 * (1.0 + 0.2 * ((i * 7919) % 13) as f64 / 13.0);
        warm(&mut d, &cfg, 400, level);
        assert!(d.update(&cfg, 100.0).level >= 1.0);
        assert!(
            d.update(&cfg, 0.0).level >= 1.0,
            "zero is finite on the log scale"
        );
    }

    /// Rises never fire, however large.
    #[test]
    fn rises_are_left_to_the_linear_baselines() {
        let cfg = LogDropConfig::default();
        let mut d = LogDrop::default();
        warm(&mut d, &cfg, 200, |i| 10.0 + (i % 3) as f64);
        assert_eq!(d.update(&cfg, 1e9).level, 0.0);
    }

    /// A series with negative values is not a magnitude, whenever the first one comes; one
    /// all zeros waits for a scale.
    #[test]
    fn negative_or_all_zero_series_stay_silent() {
        let cfg = LogDropConfig::default();
        let mut neg = LogDrop::default();
        neg.update(&cfg, -1.0);
        warm(&mut neg, &cfg, 200, |_| 50.0);
        assert_eq!(neg.update(&cfg, 0.0).level, 0.0);

        // A temperature in °C that warms up positive and later crosses zero.
        let mut celsius = LogDrop::default();
        warm(&mut celsius, &cfg, 300, |i| 5.0 + (i % 5) as f64 * 0.1);
        assert_eq!(celsius.update(&cfg, -0.5).level, 0.0);
        assert_eq!(celsius.update(&cfg, 0.0).level, 0.0, "silent from then on");

        let mut zeros = LogDrop::default();
        warm(&mut zeros, &cfg, 200, |_| 0.0);
        assert_eq!(zeros.c, 0.0, "no offset from zeros alone");
        assert_eq!(zeros.update(&cfg, 5.0).level, 0.0);
    }

    /// Non-finite and huge readings neither panic nor enter the state: after them the
    /// detector is exactly where the ordinary readings alone put it.
    #[test]
    fn bad_values_are_not_learned() {
        let cfg = LogDropConfig::default();
        let mut d = LogDrop::default();
        let mut clean = LogDrop::default();
        for x in [f64::NAN, f64::INFINITY, 1e300, f64::MAX] {
            d.update(&cfg, x);
        }
        warm(&mut d, &cfg, 100, |i| 3.0 + (i % 3) as f64);
        warm(&mut clean, &cfg, 100, |i| 3.0 + (i % 3) as f64);
        for x in [f64::NAN, f64::INFINITY, 1e300, f64::MAX] {
            let s = d.update(&cfg, x);
            assert!(
                s.expected
                    .is_none_or(|(lo, hi)| lo.is_finite() && hi.is_finite())
            );
        }
        assert_eq!(d, clean);
        assert!(d.valid());
    }

    /// The offset must be a fraction of the level: a huge one would overflow the state.
    #[test]
    fn the_offset_is_a_fraction() {
        for offset in [0.0, -0.1, 1.5, f64::NAN, 1e300] {
            let mut errs = Vec::new();
            LogDropConfig {
                offset,
                ..LogDropConfig::default()
            }
            .validate(&mut errs);
            assert_eq!(errs.len(), 1, "offset {offset} accepted");
        }
    }
}
