//! The run of readings behind a baseline restart (configured by [`RebaseConfig`]): how many
//! scored readings in a row lay beyond `rebase.z` on one side, and the baseline's variance
//! before the run began, which the restarted baseline keeps.

use serde::{Deserialize, Serialize};

use super::config::RebaseConfig;

/// State of the restart rule: the current one-sided run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Rebase {
    /// Readings in the run (0 = none).
    run: u32,
    /// Its side.
    up: bool,
    /// The baseline variance when it began.
    var: f64,
}

impl Rebase {
    /// Records a scored reading's baseline `z` (the baseline's standard deviation being `sd`)
    /// and returns the spread to restart the baseline with when the run is long enough. A flat
    /// series (no spread before the run) is never restarted.
    pub fn update(&mut self, cfg: &RebaseConfig, z: f64, sd: f64) -> Option<f64> {
        if cfg.z <= 0.0 || !z.is_finite() {
            return None;
        }
        if z.abs() < cfg.z {
            self.run = 0;
            return None;
        }
        let up = z > 0.0;
        if self.run == 0 || up != self.up {
            *self = Self {
                run: 1,
                up,
                var: sd * sd,
            };
        } else {
            self.run = self.run.saturating_add(1);
        }
        if self.run >= cfg.run && self.var > 0.0 {
            self.run = 0;
            return Some(self.var.sqrt());
        }
        None
    }

    pub(crate) fn valid(&self) -> bool {
        self.var.is_finite() && self.var >= 0.0
    }

    /// Whether a run is under way (for tests that cut a series inside one).
    #[cfg(test)]
    pub(crate) fn in_run(&self) -> bool {
        self.run > 0
    }
}
