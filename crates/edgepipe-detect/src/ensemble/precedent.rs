//! Precedent suppression: an excursion no larger than ones this series has already shown is
//! not news, however long ago (in time) the last of them was.
//!
//! Spiky series (disk writes, network bursts, load-balancer spikes) show their spikes in bursts
//! with quiet stretches between. Over a quiet stretch the baselines' spread shrinks, so the first
//! spike of the next burst is many standard deviations again and would alarm, although the series
//! has shown spikes of that size many times. This stage remembers the sizes of the series' last
//! `events` *excursions*, counted in excursions rather than in time, so a quiet stretch does not
//! erase them:
//! - an excursion is a run of readings whose raw surprise is at least `record`; its size is the
//!   value's largest distance from the baseline (EWMA) mean during the run, with its sign;
//! - a reading whose raw surprise reaches `level`, led by the EWMA z-score, is *precedented* when
//!   at least `need` remembered excursions on the same side were at least `1 / factor` of its
//!   own distance from the mean; its score is then 0.
//!
//! Only excursions led by the EWMA z-score are judged: a stuck sensor, a collapse on a log
//! scale, a level shift (CUSUM), a sustained moderate shift (smoothed z-score), a seasonal
//! deviation or a physical limit always counts. `level` keeps the judging to large surprises:
//! judged at the alarm level, an anomaly of moderate size in Gaussian noise would too often find
//! two noise excursions of two thirds its size (NAB: 70.2 at level 1.2, 74.96 at 1.7).
//! Sizes are kept as `f32`: on a series whose deviations are below about 1e-38 or above 3.4e38
//! (no physical quantity in its own unit) the stage suppresses nothing.
//! State: a fixed array, so it is bounded and snapshot-able.

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::detectors::{DetectorKind, check_non_negative};

/// Most excursions remembered.
pub const MAX_EXCURSIONS: usize = 16;

/// Configuration of the precedent stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrecedentConfig {
    /// Raw surprise from which a reading is judged against precedents (0 = stage off).
    pub level: f64,
    /// Raw surprise from which a run of readings is an excursion that is remembered.
    pub record: f64,
    /// Excursions remembered (1..=16).
    pub events: usize,
    /// A remembered excursion is a precedent when its size times `factor` reaches the judged
    /// reading's distance from the mean.
    pub factor: f64,
    /// Precedents needed to suppress (1..=16).
    pub need: u32,
    /// A long memory beside the last `events` excursions (0 = off): per side, the two largest
    /// excursions ever seen, each shrunk by this factor at every new excursion (0.999, the
    /// default: a size loses half its weight over about 700 excursions). A reading is also precedented when its
    /// distance is within `factor` of the second largest: two earlier excursions at least that
    /// large, however many smaller ones came between (the burst sizes of a bursty count series
    /// are heavy-tailed, so its largest bursts are rarer than 16 excursions).
    pub long_decay: f64,
}

impl Default for PrecedentConfig {
    fn default() -> Self {
        Self {
            level: 1.4,
            record: 0.6,
            events: MAX_EXCURSIONS,
            factor: 1.5,
            need: 2,
            long_decay: 0.999,
        }
    }
}

impl PrecedentConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        check_non_negative(errs, "precedent.level", self.level);
        check_non_negative(errs, "precedent.record", self.record);
        if !(0.0..1.0).contains(&self.long_decay) {
            errs.push(Error::InvalidConfig {
                field: "precedent.long_decay",
                reason: format!("{} is not in [0, 1)", self.long_decay),
            });
        }
        if self.level > 0.0 && !(self.record > 0.0 && self.record <= self.level) {
            errs.push(Error::InvalidConfig {
                field: "precedent.record",
                reason: format!(
                    "{} is not in (0, precedent.level = {}]: an excursion must be remembered \
                     from a surprise no larger than the one that is judged",
                    self.record, self.level
                ),
            });
        }
        if !(1..=MAX_EXCURSIONS).contains(&self.events) {
            errs.push(Error::InvalidConfig {
                field: "precedent.events",
                reason: format!("{} is not in 1..={MAX_EXCURSIONS}", self.events),
            });
        }
        if !(self.factor > 0.0 && self.factor.is_finite()) {
            errs.push(Error::InvalidConfig {
                field: "precedent.factor",
                reason: format!("{} is not a positive finite number", self.factor),
            });
        }
        if !(1..=MAX_EXCURSIONS as u32).contains(&self.need) {
            errs.push(Error::InvalidConfig {
                field: "precedent.need",
                reason: format!("{} is not in 1..={MAX_EXCURSIONS}", self.need),
            });
        } else if self.need as usize > self.events {
            errs.push(Error::InvalidConfig {
                field: "precedent.need",
                reason: format!(
                    "{} is more than precedent.events = {}: nothing could ever be suppressed",
                    self.need, self.events
                ),
            });
        }
    }
}

/// State of the precedent stage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Precedent {
    /// Signed sizes of the most recent excursions, oldest overwritten first (`f32`: they are
    /// only compared within a factor; 64 bytes a series saved).
    sizes: [f32; MAX_EXCURSIONS],
    /// Sizes stored (saturates at the configured count).
    len: u8,
    /// Slot the next size goes to.
    next: u8,
    /// Whether an excursion is under way.
    active: bool,
    /// Signed size of the excursion under way.
    size: f64,
    /// Long memory (`long_decay`): the two largest decayed sizes above and below the mean
    /// (`[up largest, up second, down largest, down second]`, magnitudes).
    long: [f32; 4],
}

impl Precedent {
    /// Records a reading's raw surprise, its signed distance `dev` from the baseline mean (NaN
    /// while the baseline does not score it) and the detector that led, and tells whether the
    /// reading is precedented: its own distance is no news (its score is to be suppressed).
    pub fn update(
        &mut self,
        cfg: &PrecedentConfig,
        raw: f64,
        dev: f64,
        strongest: Option<DetectorKind>,
    ) -> bool {
        if cfg.level <= 0.0 {
            return false;
        }
        let cap = cfg.events.clamp(1, MAX_EXCURSIONS);
        if !(raw >= cfg.record && dev.is_finite()) {
            if self.active {
                self.active = false;
                let slot = usize::from(self.next) % cap;
                if let Some(s) = self.sizes.get_mut(slot) {
                    *s = self.size.clamp(f64::from(f32::MIN), f64::from(f32::MAX)) as f32;
                }
                self.next = ((slot + 1) % cap) as u8;
                self.len = (usize::from(self.len) + 1).min(cap) as u8;
                if cfg.long_decay > 0.0 {
                    self.remember_long(cfg.long_decay, self.size);
                }
            }
            return false;
        }
        if !self.active || dev.abs() > self.size.abs() {
            self.size = dev;
        }
        self.active = true;
        if strongest != Some(DetectorKind::EwmaZ) || raw < cfg.level {
            return false;
        }
        // The reading itself is judged: an excursion that grows past its precedents, or turns
        // to the other side, is news again.
        let len = usize::from(self.len).min(cap);
        let up = dev >= 0.0;
        let precedents = self.sizes[..len]
            .iter()
            .filter(|&&s| (s >= 0.0) == up && f64::from(s).abs() * cfg.factor >= dev.abs())
            .count();
        if precedents >= cfg.need.max(1) as usize {
            return true;
        }
        // The long memory: the second largest excursion on this side, decayed.
        let second = if up { self.long[1] } else { self.long[3] };
        cfg.long_decay > 0.0 && f64::from(second) * cfg.factor >= dev.abs()
    }

    /// Decays the long memory by one excursion and records `size` (signed).
    fn remember_long(&mut self, decay: f64, size: f64) {
        let decay = decay as f32;
        for v in &mut self.long {
            *v *= decay;
        }
        let m = size.abs().min(f64::from(f32::MAX)) as f32;
        let (a, b) = if size >= 0.0 { (0, 1) } else { (2, 3) };
        if m > self.long[a] {
            self.long[b] = self.long[a];
            self.long[a] = m;
        } else if m > self.long[b] {
            self.long[b] = m;
        }
    }

    pub(crate) fn valid(&self, cfg: &PrecedentConfig) -> bool {
        let cap = cfg.events.clamp(1, MAX_EXCURSIONS);
        usize::from(self.len) <= cap
            && usize::from(self.next) < cap
            && self.sizes.iter().all(|s| s.is_finite())
            && self.long.iter().all(|s| s.is_finite() && *s >= 0.0)
            && self.size.is_finite()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Z: Option<DetectorKind> = Some(DetectorKind::EwmaZ);

    /// Feeds one excursion (`raw` for `len` readings at distance `dev`) and a quiet reading
    /// after it; returns whether any reading of it was suppressed.
    fn excursion(p: &mut Precedent, cfg: &PrecedentConfig, raw: f64, dev: f64, len: usize) -> bool {
        let mut any = false;
        for _ in 0..len {
            any |= p.update(cfg, raw, dev, Z);
        }
        p.update(cfg, 0.1, 0.0, Z);
        any
    }

    #[test]
    fn a_spike_no_larger_than_two_earlier_ones_is_suppressed() {
        let cfg = PrecedentConfig::default();
        let mut p = Precedent::default();
        // The first two spikes of a size are news.
        assert!(!excursion(&mut p, &cfg, 5.0, 100.0, 2));
        assert!(!excursion(&mut p, &cfg, 5.0, 90.0, 1));
        // A third, within 1.5x of both, is not: however quiet the series was meanwhile.
        for _ in 0..10_000 {
            p.update(&cfg, 0.0, 0.0, Z);
        }
        assert!(excursion(&mut p, &cfg, 30.0, 120.0, 1));
        // A spike twice the size is news, and so is a dip of any size.
        assert!(!excursion(&mut p, &cfg, 30.0, 250.0, 1));
        assert!(!excursion(&mut p, &cfg, 30.0, -100.0, 1));
        // An excursion that grows past its precedents stops being suppressed.
        let mut grew = Vec::new();
        for dev in [100.0, 150.0, 600.0] {
            grew.push(p.update(&cfg, 9.0, dev, Z));
        }
        assert_eq!(grew, [true, true, false]);
        p.update(&cfg, 0.1, 0.0, Z);
        // An excursion that turns to the other side, far past anything seen there, is news
        // (a reading of -500 among small rises: it is not sized by the rises before it).
        assert!(p.update(&cfg, 2.0, 100.0, Z));
        assert!(!p.update(&cfg, 16.0, -500.0, Z));
    }

    #[test]
    fn the_long_memory_keeps_two_large_bursts_beyond_sixteen_small_ones() {
        let cfg = PrecedentConfig {
            long_decay: 0.98,
            ..PrecedentConfig::default()
        };
        let off = PrecedentConfig {
            long_decay: 0.0,
            ..PrecedentConfig::default()
        };
        let (mut p, mut q) = (Precedent::default(), Precedent::default());
        for (pp, c) in [(&mut p, &cfg), (&mut q, &off)] {
            // Two big bursts, then twenty small ones: the big ones leave the last 16.
            excursion(pp, c, 5.0, 200.0, 1);
            excursion(pp, c, 5.0, 180.0, 1);
            for _ in 0..20 {
                excursion(pp, c, 5.0, 30.0, 1);
            }
        }
        // A burst like the big ones (they have decayed to about 131 and 120 by now, and 1.5
        // times 120 is 180): precedented by the long memory only.
        assert!(excursion(&mut p, &cfg, 5.0, 160.0, 1));
        assert!(!excursion(&mut q, &off, 5.0, 160.0, 1));
        // Far beyond them, or on the other side: news.
        assert!(!excursion(&mut p, &cfg, 5.0, 900.0, 1));
        assert!(!excursion(&mut p, &cfg, 5.0, -190.0, 1));
        assert!(p.valid(&cfg));
    }

    #[test]
    fn only_large_surprises_led_by_the_ewma_z_score_are_judged() {
        let cfg = PrecedentConfig::default();
        let mut p = Precedent::default();
        for _ in 0..4 {
            excursion(&mut p, &cfg, 5.0, 100.0, 1);
        }
        // Below the judging level: remembered, never suppressed.
        assert!(!excursion(&mut p, &cfg, 1.0, 100.0, 1));
        // A stuck sensor or a level shift always counts.
        for kind in [
            DetectorKind::Flatline,
            DetectorKind::Cusum,
            DetectorKind::LogDrop,
        ] {
            assert!(!p.update(&cfg, 9.0, 50.0, Some(kind)));
            p.update(&cfg, 0.0, 0.0, Z);
        }
        assert!(excursion(&mut p, &cfg, 5.0, 100.0, 1));
        // Off: nothing is suppressed.
        let off = PrecedentConfig { level: 0.0, ..cfg };
        assert!(!excursion(&mut p, &off, 5.0, 100.0, 1));
    }

    #[test]
    fn the_memory_holds_the_last_excursions_only() {
        // The short memory alone (the long one would keep the two large excursions).
        let cfg = PrecedentConfig {
            events: 3,
            long_decay: 0.0,
            ..PrecedentConfig::default()
        };
        let mut p = Precedent::default();
        excursion(&mut p, &cfg, 5.0, 100.0, 1);
        excursion(&mut p, &cfg, 5.0, 100.0, 1);
        // Three small excursions push both large ones out.
        for _ in 0..3 {
            excursion(&mut p, &cfg, 0.7, 1.0, 1);
        }
        assert!(!excursion(&mut p, &cfg, 5.0, 100.0, 1));
        assert!(p.valid(&cfg));
        // Sizes beyond f32 are kept at its largest, still finite (a snapshot stays valid).
        excursion(&mut p, &cfg, 5.0, 1e300, 1);
        excursion(&mut p, &cfg, 5.0, -1e300, 1);
        assert!(p.valid(&cfg));
    }

    #[test]
    fn config_problems_are_named() {
        let bad = PrecedentConfig {
            level: 1.0,
            record: 2.0,
            events: 0,
            factor: f64::NAN,
            need: 0,
            long_decay: 1.0,
        };
        let mut errs = Vec::new();
        bad.validate(&mut errs);
        let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
        for field in [
            "precedent.record",
            "precedent.events",
            "precedent.factor",
            "precedent.need",
            "precedent.long_decay",
        ] {
            assert!(text.iter().any(|t| t.contains(field)), "{field}: {text:?}");
        }
        let mut ok = Vec::new();
        PrecedentConfig::default().validate(&mut ok);
        assert!(ok.is_empty());
        // More precedents needed than remembered: refused.
        let mut never = Vec::new();
        PrecedentConfig {
            events: 3,
            need: 5,
            ..PrecedentConfig::default()
        }
        .validate(&mut never);
        assert!(
            never
                .iter()
                .any(|e| e.to_string().contains("precedent.need"))
        );
    }
}
