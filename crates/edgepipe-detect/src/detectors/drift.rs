//! Slow drift: a long-horizon level-change detector for gradual degradation (a bearing heating
//! up over a day, a filter clogging, a pressure slowly falling before a failure).
//!
//! The fast baselines adapt within a few hundred readings, so a rise spread over hours to days
//! never looks unusual to them: each reading is close to the last. This detector compares a
//! smoothed level (an EWMA of the values with a time constant of `fast_hours`, 4 h) with a long
//! reference level (an EWMA of the smoothed level, `reference_hours`, 83 h: three and a half
//! days), scaled by the usual spread of that difference (its EWMA variance, learned with each
//! difference clipped at `clip` spreads, so a drift in progress cannot teach the detector that
//! drifts are normal). The daily cycle and ordinary set-point changes are part of that spread.
//! It fires when the smoothed level is `threshold` usual spreads away from the reference.
//!
//! The horizons are in time and in readings, whichever is longer: a slow degradation is slow in
//! hours whatever the sampling rate, and an average needs enough readings to mean anything
//! (each reading's weight is the smaller of `1 - exp(-gap / horizon)` and `1 / readings`; with
//! 5-minute readings both give about 0.02 and 0.001, a reading every second follows the hours,
//! an hourly one the reading counts). A series is judged once it has `warmup` readings
//! spanning half the reference horizon; before that the reference is the plain mean of what
//! was seen.
//!
//! A drift lasts for hours, and a score that stays high for hours would hold the ensemble's
//! onset memory up and silence every other detector meanwhile. So the detector speaks in steps:
//! it reports its level when it reaches its firing level and again each time the same excursion
//! grows by another `step` (a factor), and is silent in between.
//!
//! An abrupt change (a failure, a restart) is news for the fast detectors, and the level stays
//! away from the reference for days afterwards. So when the ensemble alarms on another
//! detector (or another detector's surprise passes `mute_above`), the drift detector is muted
//! ([`Drift::mute`]) until its level has stayed near the reference for as long as its smoothing
//! takes (a fall through the reference is not a return to it): what it would say about that
//! change has been said.
//!
//! It also tracks when the current one-sided excursion began (the difference crossing one
//! spread on one side), so an event can say "drifting up 0.4 per hour for 9 h".

use serde::{Deserialize, Serialize};

use super::Signal;
use super::ewma::check_positive;
use super::stats::learnable;
use crate::Error;
use edgepipe_types::TimestampMs;

/// Configuration of [`Drift`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Time constant of the smoothed level, hours.
    pub fast_hours: f64,
    /// Time constant of the reference level and of the usual spread, hours.
    pub reference_hours: f64,
    /// Fewest readings the smoothed level averages over (its weight is at most `1 / this`).
    pub fast_readings: f64,
    /// Fewest readings the reference level averages over.
    pub reference_readings: f64,
    /// Readings learned (spanning at least half of `reference_hours`) before it fires.
    pub warmup: u32,
    /// Distance from the reference, in usual spreads, at which the detector fires.
    pub threshold: f64,
    /// Clip (in usual spreads) of each difference before it is learned into the spread.
    pub clip: f64,
    /// Growth factor (> 1) of an excursion's level before it is reported again.
    pub step: f64,
    /// Another detector's surprise (in units of its firing level) that mutes this one even
    /// without an alarm (an abrupt change inside an alarm's refractory period).
    pub mute_above: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            fast_hours: 4.0,
            reference_hours: 83.0,
            fast_readings: 50.0,
            reference_readings: 1000.0,
            warmup: 500,
            threshold: 3.0,
            clip: 2.0,
            step: 1.5,
            mute_above: 2.0,
        }
    }
}

impl DriftConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        check_positive(errs, "drift.fast_hours", self.fast_hours);
        check_positive(errs, "drift.reference_hours", self.reference_hours);
        for (field, v) in [
            ("drift.fast_readings", self.fast_readings),
            ("drift.reference_readings", self.reference_readings),
        ] {
            if !(v >= 1.0 && v.is_finite()) {
                errs.push(Error::InvalidConfig {
                    field,
                    reason: format!("{v} is not a finite number >= 1"),
                });
            }
        }
        check_positive(errs, "drift.threshold", self.threshold);
        check_positive(errs, "drift.clip", self.clip);
        check_positive(errs, "drift.mute_above", self.mute_above);
        if !(self.step > 1.0 && self.step.is_finite()) {
            errs.push(Error::InvalidConfig {
                field: "drift.step",
                reason: format!("{} is not a finite number > 1", self.step),
            });
        }
    }
}

/// The current excursion: where and when it began.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Run {
    ts: TimestampMs,
    level: f64,
    up: bool,
    /// Level last reported for this excursion (0 = none yet).
    reported: f64,
}

/// Streaming slow-drift detector (about 100 bytes of state).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Drift {
    n: u32,
    fast: f64,
    reference: f64,
    var: f64,
    run: Option<Run>,
    /// The previous reading's time (its smoothed level is `fast`).
    last_ts: Option<TimestampMs>,
    /// Another detector alarmed on this excursion: silent until the level is back near the
    /// reference.
    muted: bool,
    /// Since when the smoothed level has been near the reference.
    near_since: Option<TimestampMs>,
    /// The first reading's time.
    first_ts: Option<TimestampMs>,
}

/// A drift in words: its rate of change per hour and how long it has lasted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DriftTrend {
    /// Change of the smoothed level per hour since the excursion began (signed).
    pub per_hour: f64,
    /// Hours since the excursion began.
    pub hours: f64,
}

impl Drift {
    /// Scores `x` (at `ts`) against the long reference level, then learns it.
    pub fn update(&mut self, cfg: &DriftConfig, ts: TimestampMs, x: f64) -> Signal {
        if !learnable(x) {
            return Signal::quiet();
        }
        const HOUR_MS: f64 = 3_600_000.0;
        // Hours since the previous reading (0 for the first, or one out of order).
        let gap_h = self
            .last_ts
            .map_or(0.0, |t| ts.saturating_sub(t).max(0) as f64 / HOUR_MS);
        let weight =
            |hours: f64, readings: f64| one_minus_exp_neg(gap_h / hours).min(1.0 / readings);
        if self.n == 0 {
            self.fast = x;
            self.reference = x;
            self.var = 0.0;
            self.first_ts = Some(ts);
        } else {
            self.fast += weight(cfg.fast_hours, cfg.fast_readings) * (x - self.fast);
        }
        self.n = self.n.saturating_add(1);
        let dev = self.fast - self.reference;
        let sd = self.var.sqrt();
        let span_h = self
            .first_ts
            .map_or(0.0, |t| ts.saturating_sub(t).max(0) as f64 / HOUR_MS);
        let warm = self.n > cfg.warmup
            && span_h >= cfg.reference_hours / 2.0
            && sd > 1e-12 * (1.0 + self.reference.abs());
        let z = if warm { dev / sd } else { 0.0 };
        // Learn: the reference is a plain mean (weight 1/n) until that weight falls below the
        // horizon's, then an EWMA; the spread learns clipped differences once judged.
        let a = (1.0 / f64::from(self.n)).max(weight(cfg.reference_hours, cfg.reference_readings));
        let clipped = if warm {
            dev.clamp(-cfg.clip * sd, cfg.clip * sd)
        } else {
            dev
        };
        self.var += a * (clipped * clipped - self.var);
        self.reference += a * dev;
        // The excursion's start: the smoothed level crossing one spread on one side.
        let up = z > 0.0;
        match self.run {
            Some(r) if z.abs() >= 0.5 && r.up == up => {}
            _ if z.abs() >= 1.0 => {
                self.run = Some(Run {
                    ts,
                    level: self.fast,
                    up,
                    reported: 0.0,
                });
            }
            _ if z.abs() < 0.5 => self.run = None,
            _ => {}
        }
        if z.abs() < 0.5 {
            let since = *self.near_since.get_or_insert(ts);
            if ts.saturating_sub(since) as f64 >= cfg.fast_hours * HOUR_MS {
                self.muted = false;
            }
        } else {
            self.near_since = None;
        }
        self.last_ts = Some(ts);
        if !warm {
            return Signal::quiet();
        }
        let half = cfg.threshold * sd;
        let expected = Some((self.reference - half, self.reference + half));
        let level = z.abs() / cfg.threshold;
        match self.run.as_mut() {
            Some(r) if !self.muted && level >= 1.0 && level >= r.reported * cfg.step => {
                r.reported = level;
                Signal::new(level, expected)
            }
            _ => Signal::new(0.0, expected),
        }
    }

    /// Silences the detector until its smoothed level is back near the reference (the ensemble
    /// calls it when another detector alarms).
    pub fn mute(&mut self) {
        self.muted = true;
    }

    /// The current excursion's rate and duration, once it has lasted a while.
    pub fn trend(&self) -> Option<DriftTrend> {
        let (r, ts, level) = (self.run?, self.last_ts?, self.fast);
        let hours = (ts.saturating_sub(r.ts)) as f64 / 3_600_000.0;
        (hours > 0.0).then(|| DriftTrend {
            per_hour: (level - r.level) / hours,
            hours,
        })
    }

    pub(crate) fn valid(&self) -> bool {
        self.fast.is_finite()
            && self.reference.is_finite()
            && self.var.is_finite()
            && self.var >= 0.0
            && self
                .run
                .is_none_or(|r| r.level.is_finite() && r.reported.is_finite())
    }
}

/// `1 - exp(-x)` for `x >= 0`, without calling `exp` for the small `x` of regular sampling
/// (a reading every few minutes against a horizon of hours): the series to `x^5` is exact to
/// 2e-8 relative below 0.1, and this runs twice per reading of every series.
fn one_minus_exp_neg(x: f64) -> f64 {
    if x < 0.1 {
        x * (1.0 - x / 2.0 * (1.0 - x / 3.0 * (1.0 - x / 4.0 * (1.0 - x / 5.0))))
    } else {
        1.0 - (-x).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: TimestampMs = 3_600_000;

    /// A noisy level with a daily cycle; from `onset` on it rises by `slope` per reading.
    fn series(n: usize, onset: usize, slope: f64) -> Vec<f64> {
        let mut state = 12345u64;
        (0..n)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                let cycle = (i as f64 / 288.0 * std::f64::consts::TAU).sin();
                let drift = if i >= onset {
                    slope * (i - onset) as f64
                } else {
                    0.0
                };
                70.0 + cycle + u + drift
            })
            .collect()
    }

    #[test]
    fn a_slow_rise_fires_and_is_explained_as_a_rate() {
        let cfg = DriftConfig::default();
        let mut d = Drift::default();
        // 5-minute readings: 10 days flat, then +0.05 per reading (0.6 per hour).
        let xs = series(4000, 2880, 0.05);
        let mut first = None;
        let mut reports = 0;
        for (i, x) in xs.iter().enumerate() {
            let s = d.update(&cfg, i as TimestampMs * HOUR / 12, *x);
            if i < 2880 {
                assert!(s.level < 1.0, "fired before the drift at {i}: {}", s.level);
            } else if s.level >= 1.0 {
                reports += 1;
            }
            if i >= 2880 && s.level >= 1.0 && first.is_none() {
                first = Some(i);
                let t = d.trend().expect("trend");
                assert!(t.per_hour > 0.2 && t.per_hour < 1.5, "{t:?}");
                assert!(t.hours > 0.5, "{t:?}");
            }
        }
        let first = first.expect("the drift fired");
        // Found within 6 hours of onset (a rise of 3.6 over a noise of about 1).
        assert!(
            first - 2880 <= 72,
            "fired {} readings after onset",
            first - 2880
        );
        // It speaks in steps (x1.5 growth), not on every reading of a drift.
        assert!((2..=10).contains(&reports), "{reports} reports");
    }

    #[test]
    fn the_cheap_weight_matches_exp() {
        for x in [
            0.0f64, 1e-9, 1e-4, 0.001, 0.0208, 0.05, 0.0999, 0.1, 0.5, 3.0, 50.0,
        ] {
            let want = 1.0 - (-x).exp();
            let got = one_minus_exp_neg(x);
            assert!(
                (got - want).abs() <= 1e-7 * want.max(1e-300),
                "{x}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn junk_is_ignored_and_state_stays_valid() {
        let cfg = DriftConfig::default();
        let mut d = Drift::default();
        for (i, x) in [1.0, f64::NAN, f64::INFINITY, 1e300, -1e300, 2.0]
            .iter()
            .enumerate()
        {
            let s = d.update(&cfg, i as TimestampMs, *x);
            assert!(s.level.is_finite());
        }
        assert!(d.valid());
        // Every field's problem is named.
        let bad = DriftConfig {
            fast_hours: 0.0,
            reference_hours: f64::NAN,
            fast_readings: 0.5,
            reference_readings: f64::INFINITY,
            warmup: 0,
            threshold: 0.0,
            clip: -1.0,
            step: 1.0,
            mute_above: 0.0,
        }
        .validate_vec();
        let text: Vec<String> = bad.iter().map(ToString::to_string).collect();
        for field in [
            "drift.fast_hours",
            "drift.reference_hours",
            "drift.fast_readings",
            "drift.reference_readings",
            "drift.threshold",
            "drift.clip",
            "drift.step",
            "drift.mute_above",
        ] {
            assert!(text.iter().any(|t| t.contains(field)), "{field}: {text:?}");
        }
        assert!(DriftConfig::default().validate_vec().is_empty());
    }

    impl DriftConfig {
        fn validate_vec(&self) -> Vec<Error> {
            let mut v = Vec::new();
            self.validate(&mut v);
            v
        }
    }
}
