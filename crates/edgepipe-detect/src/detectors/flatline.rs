//! Stuck sensor / flatline: a run of repeated values that the series' own history makes
//! improbable, or much longer than any run it has shown.
//!
//! Two learned limits, the larger wins: `factor` times the longest run seen so far, and the
//! run length whose chance under the series' repeat rate falls below `probability`. The
//! repeat rate counts exact repeats among the recent consecutive readings (Laplace smoothed;
//! integer counts halved as they reach twice `memory`), so a noisy analogue sensor that never repeats a value is stuck after a few
//! repeats, while a quantised or idle series (counters, an idle disk's zeros) needs long runs.

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
    /// Chance below which a run of repeats counts as stuck, under the series' learned
    /// repeat rate `p` (a run of `k` repeats has chance `p^k`); 0 turns this limit off.
    pub probability: f64,
    /// Readings the repeat rate is counted over: its counts halve when they reach twice this
    /// (at least 100; 0 = never forget).
    pub memory: u32,
}

impl Default for FlatlineConfig {
    fn default() -> Self {
        Self {
            min_run: 3,
            factor: 1.5,
            warmup: 200,
            tolerance: 1e-9,
            probability: 1e-6,
            memory: 10_000,
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
        if !(0.0..1.0).contains(&self.probability) {
            errs.push(Error::InvalidConfig {
                field: "flatline.probability",
                reason: format!("{} is not in [0, 1)", self.probability),
            });
        }
        if (1..100).contains(&self.memory) {
            errs.push(Error::InvalidConfig {
                field: "flatline.memory",
                reason: format!("{} is below 100 (0 = never forget)", self.memory),
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
    /// Length of the current run when it fired (0 = it has not fired).
    fired_at: u32,
    /// Recent consecutive pairs seen and how many of them repeated.
    steps: u32,
    repeats: u32,
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
        // A run that fired is anomalous: its repeats past the firing point are not learned as
        // the series' repeat rate.
        if self.last.is_some() && !(same && self.fired_at > 0) {
            self.steps = self.steps.saturating_add(1);
            self.repeats = self.repeats.saturating_add(u32::from(same));
            if cfg.memory > 0 && self.steps >= cfg.memory.saturating_mul(2) {
                self.steps /= 2;
                self.repeats /= 2;
            }
        }
        if same {
            self.run = self.run.saturating_add(1);
        } else {
            // A run that fired counts only up to where it fired, so the next stuck period is
            // found after `factor` times that (habituation to series that hold values
            // legitimately), not after `factor` times the whole anomaly.
            let learned = if self.fired_at > 0 {
                self.run.min(self.fired_at)
            } else {
                self.run
            };
            self.longest = self.longest.max(learned);
            self.run = 0;
            self.fired_at = 0;
        }
        self.last = Some(x);
        // The limit is never below `min_run`: most readings (no run, or a short one) stop here
        // without computing it.
        if self.n <= u64::from(cfg.warmup) || self.fired_at > 0 || self.run < cfg.min_run.max(1) {
            return Signal::quiet();
        }
        let limit = (f64::from(self.longest) * cfg.factor)
            .max(f64::from(cfg.min_run.max(1)))
            .max(self.improbable_run(cfg));
        if f64::from(self.run) >= limit {
            // Fire once per run: a run length is a count, not a graded surprise, so the level
            // is all or nothing.
            self.fired_at = self.run;
            Signal::new(1.0, Some((x, x)))
        } else {
            Signal::quiet()
        }
    }

    /// The shortest run whose chance under the learned repeat rate is below
    /// `cfg.probability` (0 when that limit is off).
    fn improbable_run(&self, cfg: &FlatlineConfig) -> f64 {
        if cfg.probability <= 0.0 {
            return 0.0;
        }
        let p = (f64::from(self.repeats) + 1.0) / (f64::from(self.steps) + 2.0);
        (cfg.probability.ln() / p.ln()).ceil()
    }

    pub(crate) fn valid(&self) -> bool {
        self.last.is_none_or(f64::is_finite) && self.repeats <= self.steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `values` and returns the indexes where the detector fired.
    fn fires(cfg: &FlatlineConfig, values: impl IntoIterator<Item = f64>) -> Vec<usize> {
        let mut d = Flatline::default();
        values
            .into_iter()
            .enumerate()
            .filter(|(_, x)| d.update(cfg, *x).level >= 1.0)
            .map(|(i, _)| i)
            .collect()
    }

    /// A noisy analogue signal: no two consecutive values equal.
    fn noisy(i: usize) -> f64 {
        20.0 + (i as f64 * 0.37).sin() + 0.01 * ((i * 7919) % 101) as f64
    }

    #[test]
    fn a_sensor_that_never_repeats_is_stuck_after_three_repeats() {
        let cfg = FlatlineConfig::default();
        let stuck_from = 1_000;
        let values = (0..1_100).map(|i| noisy(i.min(stuck_from)));
        // Reading `stuck_from` is the last fresh value; three repeats follow it.
        assert_eq!(fires(&cfg, values), vec![stuck_from + 3]);
    }

    #[test]
    fn a_quantised_series_needs_a_run_its_repeat_rate_makes_improbable() {
        let cfg = FlatlineConfig::default();
        // Values on a 1.0 grid repeat about half the time, in runs of up to a few.
        let quantised = |i: usize| ((i as f64 * 0.05).sin() * 3.0).round();
        let normal: Vec<f64> = (0..3_000).map(quantised).collect();
        assert!(fires(&cfg, normal.iter().copied()).is_empty());
        let repeat_rate = normal.windows(2).filter(|w| w[0] == w[1]).count() as f64 / 2_999.0;
        assert!(repeat_rate > 0.5, "{repeat_rate}");
        // The same series stuck: the chance of a run falls below 1e-6 only after
        // ln(1e-6) / ln(rate) repeats, and the longest ordinary run times 1.5 must pass too.
        let mut stuck = normal.clone();
        stuck.extend(std::iter::repeat_n(7.0, 200));
        let fired = fires(&cfg, stuck);
        assert_eq!(fired.len(), 1);
        let run = fired[0] - 3_000;
        let needed = (1e-6f64.ln() / repeat_rate.ln()).ceil() as usize;
        assert!(
            run >= needed.min(200) - 1,
            "fired after {run}, needed {needed}"
        );
    }

    #[test]
    fn a_long_stuck_period_does_not_hide_the_next_one() {
        let cfg = FlatlineConfig::default();
        // Stuck for 300 readings at 1_000, again at 2_000: the first period is learned only
        // up to where it fired (3 repeats), so the second fires after 1.5 x 3 = 5.
        let stuck = |i: usize| match i {
            1_000..1_300 => noisy(1_000),
            2_000..2_300 => noisy(2_000),
            _ => noisy(i),
        };
        assert_eq!(fires(&cfg, (0..2_500).map(stuck)), vec![1_003, 2_005]);
    }

    #[test]
    fn the_probability_limit_can_be_turned_off() {
        let cfg = FlatlineConfig {
            probability: 0.0,
            min_run: 12,
            ..FlatlineConfig::default()
        };
        let values = (0..1_100).map(|i| noisy(i.min(1_000)));
        assert_eq!(fires(&cfg, values), vec![1_012]);
    }

    #[test]
    fn repeat_counts_stay_consistent_and_bad_settings_are_refused() {
        let cfg = FlatlineConfig::default();
        let mut d = Flatline::default();
        for i in 0..5_000 {
            d.update(&cfg, if i % 3 == 0 { 1.0 } else { noisy(i) });
            assert!(d.valid());
        }
        for (probability, memory) in [(1.0, 10_000), (-0.1, 10_000), (1e-6, 99), (f64::NAN, 0)] {
            let mut errs = Vec::new();
            FlatlineConfig {
                probability,
                memory,
                ..cfg
            }
            .validate(&mut errs);
            assert_eq!(errs.len(), 1, "{probability} {memory}");
        }
    }
}
