//! Recurring-event suppression: a surprise that recurs at a regular interval (a daily batch job,
//! a spike every 100 readings) is part of the series' normal behaviour, not an anomaly.
//!
//! The stage remembers where the last few *surprise events* started (the raw surprise crossing
//! `level` from below). When a new event starts at reading `t` and two earlier events sit at
//! about `t - P` and `t - 2P` for some interval `P`, the event is the third (or later) beat of a
//! regular rhythm and its score is suppressed until the surprise falls back below `level`.
//! State: a fixed array of event positions, so it is bounded and snapshot-able.

use serde::{Deserialize, Serialize};

use crate::Error;

/// Most event onsets remembered.
pub const MAX_EVENTS: usize = 16;

/// Configuration of the recurrence stage.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecurrenceConfig {
    /// Raw surprise at which an event starts (0 = stage off).
    pub level: f64,
    /// Event onsets remembered (1..=16).
    pub events: usize,
    /// Allowed timing error as a fraction of the interval.
    pub tolerance: f64,
    /// Allowed timing error in readings, added to the relative one.
    pub slack: u32,
    /// Shortest interval, in readings, that counts as a rhythm.
    pub min_period: u32,
    /// Earlier beats of the rhythm that must have been seen (at `t - P`, ..., `t - beats·P`).
    pub beats: u32,
}

impl Default for RecurrenceConfig {
    fn default() -> Self {
        Self {
            level: 1.2,
            events: MAX_EVENTS,
            tolerance: 0.03,
            slack: 2,
            min_period: 12,
            beats: 3,
        }
    }
}

impl RecurrenceConfig {
    pub(crate) fn validate(&self, errs: &mut Vec<Error>) {
        crate::detectors::check_non_negative(errs, "recurrence.level", self.level);
        if !(1..=MAX_EVENTS).contains(&self.events) {
            errs.push(Error::InvalidConfig {
                field: "recurrence.events",
                reason: format!("{} is not in 1..={MAX_EVENTS}", self.events),
            });
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            errs.push(Error::InvalidConfig {
                field: "recurrence.tolerance",
                reason: format!("{} is not in [0, 1)", self.tolerance),
            });
        }
    }
}

/// State of the recurrence stage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Recurrence {
    /// Onsets (reading numbers) of the most recent events, oldest overwritten first.
    onsets: [u64; MAX_EVENTS],
    /// Onsets stored (saturates at the configured count).
    len: u8,
    /// Slot the next onset goes to.
    next: u8,
    /// Whether the surprise is currently above the level.
    active: bool,
    /// Whether the current event is a recurrence (its score is suppressed).
    expected: bool,
}

impl Recurrence {
    /// Records the raw surprise of reading `n` (1-based, increasing) and tells whether this
    /// reading belongs to an expected, recurring event.
    pub fn update(&mut self, cfg: &RecurrenceConfig, n: u64, raw: f64) -> bool {
        if cfg.level <= 0.0 {
            return false;
        }
        let above = raw >= cfg.level;
        if !above {
            self.active = false;
            self.expected = false;
            return false;
        }
        if self.active {
            return self.expected;
        }
        self.active = true;
        let cap = cfg.events.clamp(1, MAX_EVENTS);
        let len = usize::from(self.len).min(cap);
        let past = &self.onsets[..len];
        let min_p = u64::from(cfg.min_period.max(1));
        let beats = u64::from(cfg.beats.max(1));
        self.expected = past.iter().any(|&a| {
            let p = n.saturating_sub(a);
            if p < min_p {
                return false;
            }
            // Every earlier beat k = 2..=beats must have an onset near n - kP.
            (2..=beats).all(|k| {
                let Some(want) = n.checked_sub(k * p) else {
                    return false;
                };
                let tol = (cfg.tolerance * (k * p) as f64) as u64 + u64::from(cfg.slack);
                past.iter().any(|&b| b.abs_diff(want) <= tol)
            })
        });
        let slot = usize::from(self.next) % cap;
        if let Some(s) = self.onsets.get_mut(slot) {
            *s = n;
        }
        self.next = ((slot + 1) % cap) as u8;
        self.len = (len + 1).min(cap) as u8;
        self.expected
    }

    pub(crate) fn valid(&self, cfg: &RecurrenceConfig) -> bool {
        let cap = cfg.events.clamp(1, MAX_EVENTS);
        usize::from(self.len) <= cap && usize::from(self.next) < cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_beats_of_a_rhythm_are_expected() {
        let cfg = RecurrenceConfig::default();
        let mut r = Recurrence::default();
        let mut expected = Vec::new();
        for n in 1..=1000u64 {
            // A two-reading spike every 100 readings, one reading late every other time.
            let start = (n / 100) * 100 + (n / 100) % 2;
            let spike = n >= 100 && (start..start + 2).contains(&n);
            if r.update(&cfg, n, if spike { 5.0 } else { 0.1 }) {
                assert!(spike);
                expected.push(n);
            }
        }
        // The first `beats` spikes are news; later ones are expected.
        assert!(!expected.is_empty());
        assert!(expected.iter().all(|&n| n >= 400), "{expected:?}");
        assert!(expected.len() >= 5, "{expected:?}");
        // An off-beat spike is not expected.
        r.update(&cfg, 1040, 0.1);
        assert!(!r.update(&cfg, 1050, 5.0));
    }
}
