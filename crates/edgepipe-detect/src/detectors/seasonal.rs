//! Seasonal baseline with automatic period detection: during a bounded warm-up the detector
//! keeps block means of the series, finds the dominant period by autocorrelation, and from then
//! on scores each value by its distance from a per-phase profile (the value expected at this
//! point of the cycle), in standard deviations of the residual.
//!
//! State is bounded: the warm-up buffer (`buffer` block means, `f32`) is freed once the period
//! is decided and replaced by a profile of at most `buffer / 2` block means.

use serde::{Deserialize, Serialize};

use super::Signal;
use super::ewma::{check_positive, check_unit};
use super::stats::{Ewm, learnable};
use crate::Error;

/// Largest warm-up buffer, in blocks (bounds the state at 1 KiB during warm-up).
pub const MAX_SEASONAL_BUFFER: usize = 256;

/// Configuration of [`Seasonal`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeasonalConfig {
    /// Readings averaged into one block (the profile's resolution), 1..=64.
    pub block: u32,
    /// Blocks collected before the period is decided (8..=256); periods up to half of it are
    /// found.
    pub buffer: usize,
    /// Shortest period, in blocks.
    pub min_period: usize,
    /// Autocorrelation a period needs.
    pub min_acf: f64,
    /// How far the autocorrelation must have dipped below its value at the period, at a
    /// shorter lag (a peak, not the slow decay of a trend).
    pub prominence: f64,
    /// Weight of each new block in the profile.
    pub profile_alpha: f64,
    /// Weight of each new residual in the residual mean and variance.
    pub residual_alpha: f64,
    /// Residuals learned before the detector may fire.
    pub warmup: u32,
    /// |z| of the residual at which the detector fires.
    pub threshold: f64,
    /// Floor of the residual's standard deviation, as a fraction of the warm-up blocks'
    /// standard deviation (a noise-free cycle does not make every small deviation infinite).
    pub min_scale_fraction: f64,
    /// Factor on the EWMA z-score's and CUSUM's weights once the series is found seasonal
    /// (1 = unchanged): their baselines do not follow the cycle.
    pub others: f64,
}

impl Default for SeasonalConfig {
    fn default() -> Self {
        Self {
            block: 4,
            buffer: 192,
            min_period: 6,
            min_acf: 0.6,
            prominence: 0.3,
            profile_alpha: 0.2,
            residual_alpha: 0.005,
            warmup: 100,
            threshold: 4.0,
            others: 1.0,
            min_scale_fraction: 0.05,
        }
    }
}

impl SeasonalConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        if !(1..=64).contains(&self.block) {
            errs.push(Error::InvalidConfig {
                field: "seasonal.block",
                reason: format!("{} is not in 1..=64", self.block),
            });
        }
        if !(8..=MAX_SEASONAL_BUFFER).contains(&self.buffer) {
            errs.push(Error::InvalidConfig {
                field: "seasonal.buffer",
                reason: format!("{} is not in 8..={MAX_SEASONAL_BUFFER}", self.buffer),
            });
        }
        if !(2..=self.buffer / 2).contains(&self.min_period) {
            errs.push(Error::InvalidConfig {
                field: "seasonal.min_period",
                reason: format!("{} is not in 2..=buffer/2", self.min_period),
            });
        }
        check_unit(errs, "seasonal.min_acf", self.min_acf);
        check_positive(errs, "seasonal.prominence", self.prominence);
        check_unit(errs, "seasonal.profile_alpha", self.profile_alpha);
        check_unit(errs, "seasonal.residual_alpha", self.residual_alpha);
        check_positive(errs, "seasonal.threshold", self.threshold);
        if !(self.min_scale_fraction >= 0.0 && self.min_scale_fraction.is_finite()) {
            errs.push(Error::InvalidConfig {
                field: "seasonal.min_scale_fraction",
                reason: format!("{} is not >= 0", self.min_scale_fraction),
            });
        }
        if !(0.0..=1.0).contains(&self.others) {
            errs.push(Error::InvalidConfig {
                field: "seasonal.others",
                reason: format!("{} is not in [0, 1]", self.others),
            });
        }
    }
}

/// Streaming seasonal-baseline state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Seasonal {
    /// Sum and count of the current block.
    acc: f64,
    acc_n: u32,
    /// Warm-up block means (empty once the period is decided).
    buf: Vec<f32>,
    /// Whether the period has been decided (seasonal or not).
    decided: bool,
    /// Per-phase block means; empty when the series is not seasonal.
    profile: Vec<f32>,
    /// Phase (block index in the cycle) of the current block.
    phase: usize,
    /// Residual statistics.
    resid: Ewm,
    /// Standard deviation of the warm-up block means.
    spread: f64,
}

impl Seasonal {
    /// The detected period in blocks of `block` readings, when the series is seasonal.
    pub fn period(&self) -> Option<usize> {
        (!self.profile.is_empty()).then_some(self.profile.len())
    }

    /// Scores `x` against the profile, then learns it.
    pub fn update(&mut self, cfg: &SeasonalConfig, x: f64) -> Signal {
        if !learnable(x) {
            return Signal::quiet();
        }
        let sig = match self.profile.get(self.phase) {
            Some(&p) => {
                let r = x - f64::from(p);
                let sig = if self.resid.n >= u64::from(cfg.warmup.max(2)) {
                    let sd = self.resid.std();
                    let floor = (cfg.min_scale_fraction * self.spread)
                        .max(1e-9 * (1.0 + f64::from(p).abs()));
                    let z = (r - self.resid.mean).abs() / sd.max(floor);
                    let half = cfg.threshold * sd;
                    let centre = f64::from(p) + self.resid.mean;
                    Signal::new(z / cfg.threshold, Some((centre - half, centre + half)))
                } else {
                    Signal::quiet()
                };
                self.resid.update(r, cfg.residual_alpha);
                sig
            }
            None => Signal::quiet(),
        };
        self.acc += x;
        self.acc_n += 1;
        if self.acc_n >= cfg.block.max(1) {
            let mean = self.acc / f64::from(self.acc_n);
            self.acc = 0.0;
            self.acc_n = 0;
            self.end_block(cfg, mean);
        }
        sig
    }

    fn end_block(&mut self, cfg: &SeasonalConfig, mean: f64) {
        let len = self.profile.len();
        if len > 0 {
            if let Some(p) = self.profile.get_mut(self.phase) {
                let a = cfg.profile_alpha;
                *p = ((1.0 - a) * f64::from(*p) + a * mean) as f32;
            }
            self.phase = (self.phase + 1) % len;
            return;
        }
        if self.decided {
            return;
        }
        let cap = cfg.buffer.clamp(8, MAX_SEASONAL_BUFFER);
        if self.buf.len() < cap {
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(cap);
            }
            self.buf.push(mean as f32);
        }
        if self.buf.len() >= cap {
            self.decide(cfg);
        }
    }

    /// Picks the period from the warm-up buffer, builds the profile and frees the buffer.
    fn decide(&mut self, cfg: &SeasonalConfig) {
        self.decided = true;
        let buf = std::mem::take(&mut self.buf);
        let n = buf.len();
        let mean = buf.iter().map(|&v| f64::from(v)).sum::<f64>() / n.max(1) as f64;
        let dev: Vec<f64> = buf.iter().map(|&v| f64::from(v) - mean).collect();
        let var: f64 = dev.iter().map(|d| d * d).sum();
        if !(var > 0.0 && var.is_finite()) {
            return;
        }
        let acf = |lag: usize| -> f64 {
            let s: f64 = dev.iter().zip(&dev[lag..]).map(|(a, b)| a * b).sum();
            s / var * n as f64 / (n - lag) as f64
        };
        let max_lag = n / 2;
        let lo = cfg.min_period.max(2);
        if lo + 1 >= max_lag {
            return;
        }
        let values: Vec<f64> = (lo - 1..=max_lag).map(acf).collect();
        let mut best: Option<(usize, f64)> = None;
        let mut dip = f64::INFINITY;
        for i in 1..values.len().saturating_sub(1) {
            let (prev, cur, next) = (values[i - 1], values[i], values[i + 1]);
            dip = dip.min(prev);
            let is_peak = cur >= prev && cur >= next;
            if is_peak
                && cur >= cfg.min_acf
                && dip <= cur - cfg.prominence
                && best.is_none_or(|(_, b)| cur > b)
            {
                best = Some((lo - 1 + i, cur));
            }
        }
        let Some((period, _)) = best else {
            return;
        };
        self.spread = (var / n as f64).sqrt();
        let mut sums = vec![0.0f64; period];
        let mut counts = vec![0u32; period];
        for (i, &v) in buf.iter().enumerate() {
            sums[i % period] += f64::from(v);
            counts[i % period] += 1;
        }
        self.profile = sums
            .iter()
            .zip(&counts)
            .map(|(&s, &c)| (s / f64::from(c.max(1))) as f32)
            .collect();
        self.phase = n % period;
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.buf.capacity() + self.profile.capacity()) * std::mem::size_of::<f32>()
    }

    pub(crate) fn valid(&self, cfg: &SeasonalConfig) -> bool {
        let cap = cfg.buffer.clamp(8, MAX_SEASONAL_BUFFER);
        self.buf.len() <= cap
            && self.profile.len() <= cap / 2
            && (self.profile.is_empty() || self.phase < self.profile.len())
            && self.acc.is_finite()
            && self.buf.iter().chain(&self.profile).all(|v| v.is_finite())
            && self.resid.mean.is_finite()
            && self.resid.var.is_finite()
            && self.spread.is_finite()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_period_and_flags_a_break_in_the_cycle() {
        let cfg = SeasonalConfig::default();
        let mut s = Seasonal::default();
        let wave = |i: usize| 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 96.0).sin();
        let mut max_level: f64 = 0.0;
        for i in 0..2000 {
            let sig = s.update(&cfg, wave(i) + 0.3 * ((i * 7919) % 13) as f64 / 13.0);
            if i > 1200 {
                max_level = max_level.max(sig.level);
            }
        }
        assert_eq!(s.period(), Some(96 / 4));
        assert!(max_level < 1.0, "{max_level}");
        // Half a cycle out of phase: ordinary values at the wrong time.
        let sig = s.update(&cfg, wave(2000 + 48));
        assert!(sig.level >= 1.0, "{sig:?}");
    }

    #[test]
    fn noise_has_no_period() {
        let cfg = SeasonalConfig::default();
        let mut s = Seasonal::default();
        let mut seed: u64 = 3;
        for _ in 0..1000 {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            s.update(&cfg, (seed >> 11) as f64 / (1u64 << 53) as f64);
        }
        assert_eq!(s.period(), None);
        assert_eq!(s.heap_bytes(), 0);
    }
}
