//! The ensemble's one configuration.

use serde::{Deserialize, Serialize};

use super::likelihood::LikelihoodConfig;
use super::precedent::PrecedentConfig;
use super::recurrence::RecurrenceConfig;
use crate::detectors::{
    CusumConfig, DriftConfig, EwmaZConfig, FlatlineConfig, LimitsConfig, LogDropConfig,
    PewmaConfig, RateOfChangeConfig, RobustMadConfig, SeasonalConfig, check_non_negative,
    check_positive,
};
use crate::{Error, Result};

/// How much each detector counts in the raw score (0 turns a detector off).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// Weight of the EWMA z-score.
    pub ewma_z: f64,
    /// Weight of PEWMA.
    pub pewma: f64,
    /// Weight of the robust median/MAD z-score.
    pub robust_mad: f64,
    /// Weight of CUSUM.
    pub cusum: f64,
    /// Weight of the flatline detector.
    pub flatline: f64,
    /// Weight of the rate-of-change detector.
    pub rate_of_change: f64,
    /// Weight of the physical limits.
    pub limits: f64,
    /// Weight of the seasonal baseline (0 also skips its work and state).
    pub seasonal: f64,
    /// Weight of the smoothed-series z-score (0 also skips its work).
    pub smooth_z: f64,
    /// Weight of the volatility detector (0 also skips its work).
    pub volatility: f64,
    /// Weight of the log-scale drop detector (0 also skips its work).
    pub log_drop: f64,
    /// Weight of the slow-drift detector (0 also skips its work).
    pub drift: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Self {
            ewma_z: 1.0,
            pewma: 0.0,
            robust_mad: 0.0,
            cusum: 1.0,
            flatline: 2.0,
            rate_of_change: 0.0,
            limits: 1.0,
            seasonal: 1.0,
            smooth_z: 0.75,
            volatility: 0.0,
            log_drop: 1.0,
            drift: 1.5,
        }
    }
}

/// Onset emphasis: a score only counts in full when it rises above the recent peak, so one
/// event raises one alarm instead of a stream of them (each extra alarm on a known event is a
/// likely false positive). The recent peak decays geometrically, so bounded state suffices.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnsetConfig {
    /// Per-reading decay of the remembered peak (0 = off, 0.99 = about 100 readings).
    pub decay: f64,
    /// Factor applied to a score that does not rise above the remembered peak (0..=1).
    pub damping: f64,
    /// Score at or above which the ensemble reports an alarm.
    pub alarm_score: f64,
    /// Readings after an alarm whose scores are damped like non-rising ones (0 = off).
    pub refractory: u32,
}

impl Default for OnsetConfig {
    fn default() -> Self {
        Self {
            decay: 0.999,
            damping: 0.0,
            alarm_score: 0.44,
            refractory: 20,
        }
    }
}

/// The smoothed-series z-score: a fast EWMA of the values (weight `alpha`) scored by an EWMA
/// z-score against its own slow mean and spread, so a sustained moderate shift that no single
/// reading reveals stands out (smoothing removes most of the point noise from the spread).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmoothConfig {
    /// Weight of each new value in the fast EWMA.
    pub alpha: f64,
    /// The z-score of the smoothed series.
    pub z: EwmaZConfig,
}

impl Default for SmoothConfig {
    fn default() -> Self {
        Self {
            alpha: 0.15,
            z: EwmaZConfig {
                warmup: 100,
                ..EwmaZConfig::default()
            },
        }
    }
}

/// The volatility detector: a fast EWMA of the squared baseline z-score (clipped, so one spike
/// counts little). It is 1 for a series that behaves as its baseline expects and rises when the
/// spread or the density of spikes grows for a while.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VolatilityConfig {
    /// Weight of each new squared z in the fast average.
    pub alpha: f64,
    /// |z| clip before squaring.
    pub clip: f64,
    /// Average squared z at which the detector fires (> 1).
    pub threshold: f64,
}

impl Default for VolatilityConfig {
    fn default() -> Self {
        Self {
            alpha: 0.05,
            clip: 3.0,
            threshold: 4.0,
        }
    }
}

/// Per-series tail normalisation: a running estimate `q` of the `quantile` of the raw surprise
/// (multiplicative stochastic-approximation updates of step `rate`); the raw surprise is divided
/// by `max(1, q / reference)`, so only series whose ordinary surprises exceed what a well-modelled
/// series shows (`reference`) are scaled down.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TailConfig {
    /// Quantile tracked (0..1).
    pub quantile: f64,
    /// Step of the log-quantile update (0 = stage off).
    pub rate: f64,
    /// Quantile of a well-modelled series' raw surprise.
    pub reference: f64,
    /// Smallest divisor: below 1, a series quieter than `reference` has its surprises scaled
    /// up (at most by `1 / min_factor`).
    pub min_factor: f64,
    /// Scale each detector's surprise by its own running quantile before the strongest is
    /// taken (so a detector that is often surprised on this series counts less).
    pub per_detector: bool,
    /// Scale the strongest surprise by the running quantile of the strongest surprise.
    pub overall: bool,
}

impl Default for TailConfig {
    fn default() -> Self {
        Self {
            quantile: 0.995,
            rate: 0.02,
            reference: 1.0,
            min_factor: 1.0,
            per_detector: false,
            overall: true,
        }
    }
}

/// Restart of the level baseline (the EWMA mean and spread behind the z-score, CUSUM and the
/// precedent stage) after a sustained one-sided shift.
///
/// After a level shift the EWMA mean creeps towards the new level (alpha 0.005: hundreds of
/// readings) while the shift itself inflates the variance, so for a long time nothing in the
/// new regime looks unusual. When `run` consecutive scored readings lie beyond `z` baseline
/// standard deviations on the same side, the baseline restarts at the fast-smoothed level (the
/// smoothed z-score's EWMA, weight `smooth.alpha`; the reading itself when that detector is off)
/// with the spread it had before the run began, so the new regime is judged mostly by the noise
/// the series had: after 8 readings the smoothed level has covered about three quarters of a
/// step, and what is left of it in the spread keeps the restart conservative (a large step may
/// take two or three restarts). Readings the baseline does not score (its warm-up, values that
/// are not learnable) neither extend nor break a run; a flat series (no spread) is not restarted.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebaseConfig {
    /// |z| beyond which a reading extends a one-sided run (0 = off).
    pub z: f64,
    /// Readings in a run that restart the baseline (>= 2).
    pub run: u32,
}

impl Default for RebaseConfig {
    fn default() -> Self {
        Self { z: 3.5, run: 8 }
    }
}

/// Which stage produces the final score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calibration {
    /// The raw surprise, squashed monotonically into [0, 1].
    #[default]
    Raw,
    /// The anomaly likelihood of recent raw surprises against the series' history.
    Likelihood,
    /// The product of both: a value must be surprising and unusual for this series.
    Both,
}

/// The whole ensemble's configuration: one for every series (no per-series tuning needed).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnsembleConfig {
    /// EWMA z-score (also the baseline CUSUM standardises against).
    pub ewma: EwmaZConfig,
    /// Probabilistic EWMA.
    pub pewma: PewmaConfig,
    /// Robust median/MAD.
    pub mad: RobustMadConfig,
    /// CUSUM level shift.
    pub cusum: CusumConfig,
    /// Stuck sensor / flatline.
    pub flatline: FlatlineConfig,
    /// Rate of change.
    pub rate: RateOfChangeConfig,
    /// Physical limits.
    pub limits: LimitsConfig,
    /// Seasonal baseline.
    pub seasonal: SeasonalConfig,
    /// Smoothed-series z-score.
    pub smooth: SmoothConfig,
    /// Volatility (spread or spike-density change).
    pub volatility: VolatilityConfig,
    /// Log-scale drop (non-negative series falling to a fraction of their level).
    pub log_drop: LogDropConfig,
    /// Slow drift (long-horizon level change).
    pub drift: DriftConfig,
    /// Detector weights in the raw score.
    pub weights: Weights,
    /// Learn `ln(1 + raw)` rather than `raw` in the likelihood stage (tames heavy tails).
    pub log_raw: bool,
    /// Anomaly-likelihood stage.
    pub likelihood: LikelihoodConfig,
    /// Which stage produces the final score.
    pub calibration: Calibration,
    /// Per-series scaling of the raw surprise by its own high quantile.
    pub tail: TailConfig,
    /// Recurring-event suppression.
    pub recurrence: RecurrenceConfig,
    /// Precedent suppression (an excursion no larger than earlier ones is not news).
    pub precedent: PrecedentConfig,
    /// Restart of the level baseline after a sustained one-sided shift.
    pub rebase: RebaseConfig,
    /// Onset emphasis and alarm level.
    pub onset: OnsetConfig,
}

impl EnsembleConfig {
    /// Every problem with the configuration, with its key path.
    pub fn problems(&self) -> Vec<Error> {
        let mut errs = Vec::new();
        self.ewma.validate(&mut errs);
        self.pewma.validate(&mut errs);
        self.mad.validate(&mut errs);
        self.cusum.validate(&mut errs);
        self.flatline.validate(&mut errs);
        self.rate.validate(&mut errs);
        self.limits.validate(&mut errs);
        self.seasonal.validate(&mut errs);
        crate::detectors::check_unit(&mut errs, "smooth.alpha", self.smooth.alpha);
        crate::detectors::check_unit(&mut errs, "volatility.alpha", self.volatility.alpha);
        check_positive(&mut errs, "volatility.clip", self.volatility.clip);
        if !(self.volatility.threshold > 1.0 && self.volatility.threshold.is_finite()) {
            errs.push(Error::InvalidConfig {
                field: "volatility.threshold",
                reason: format!("{} is not a finite number > 1", self.volatility.threshold),
            });
        }
        self.smooth.z.validate(&mut errs);
        check_non_negative(&mut errs, "rebase.z", self.rebase.z);
        if self.rebase.run < 2 {
            errs.push(Error::InvalidConfig {
                field: "rebase.run",
                reason: format!("{} is not at least 2", self.rebase.run),
            });
        }
        self.log_drop.validate(&mut errs);
        self.drift.validate(&mut errs);
        self.likelihood.validate(&mut errs);
        self.recurrence.validate(&mut errs);
        self.precedent.validate(&mut errs);
        crate::detectors::check_unit(&mut errs, "tail.quantile", self.tail.quantile);
        check_positive(&mut errs, "tail.reference", self.tail.reference);
        check_positive(&mut errs, "tail.min_factor", self.tail.min_factor);
        if !(0.0..=1.0).contains(&self.tail.rate) {
            errs.push(Error::InvalidConfig {
                field: "tail.rate",
                reason: format!("{} is not in [0, 1]", self.tail.rate),
            });
        }
        let w = &self.weights;
        for (field, v) in [
            ("weights.ewma_z", w.ewma_z),
            ("weights.pewma", w.pewma),
            ("weights.robust_mad", w.robust_mad),
            ("weights.cusum", w.cusum),
            ("weights.flatline", w.flatline),
            ("weights.rate_of_change", w.rate_of_change),
            ("weights.limits", w.limits),
            ("weights.seasonal", w.seasonal),
            ("weights.smooth_z", w.smooth_z),
            ("weights.volatility", w.volatility),
            ("weights.log_drop", w.log_drop),
            ("weights.drift", w.drift),
        ] {
            check_non_negative(&mut errs, field, v);
        }
        check_positive(&mut errs, "onset.alarm_score", self.onset.alarm_score);
        for (field, v) in [
            ("onset.damping", self.onset.damping),
            ("onset.decay", self.onset.decay),
        ] {
            if !(0.0..=1.0).contains(&v) {
                errs.push(Error::InvalidConfig {
                    field,
                    reason: format!("{v} is not in [0, 1]"),
                });
            }
        }
        errs
    }

    /// `Ok` when [`problems`](Self::problems) is empty, else the first problem.
    pub fn validate(&self) -> Result<()> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
