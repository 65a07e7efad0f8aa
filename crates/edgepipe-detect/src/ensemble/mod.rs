//! The ensemble: every detector run on one series, combined into one raw surprise, calibrated by
//! the anomaly-likelihood stage into a score in [0, 1], with an explanation.
//!
//! Per-series state is [`SeriesState`] (a few hundred bytes, bounded by the configuration);
//! one [`EnsembleConfig`] is shared by all series. [`SeriesDetector`] bundles the two for a single
//! series.

mod config;
mod likelihood;
mod precedent;
mod rebase;
mod recurrence;
#[cfg(test)]
mod tests;

use edgepipe_types::TimestampMs;
use serde::{Deserialize, Serialize};

pub use config::{
    Calibration, EnsembleConfig, OnsetConfig, RebaseConfig, SmoothConfig, TailConfig,
    VolatilityConfig, Weights,
};
pub use likelihood::{Likelihood, LikelihoodConfig, MAX_SHORT_WINDOW};
pub use precedent::{MAX_EXCURSIONS, Precedent, PrecedentConfig};
pub use rebase::Rebase;
pub use recurrence::{MAX_EVENTS, Recurrence, RecurrenceConfig};

use crate::detectors::stats::learnable;
use crate::detectors::{
    Cusum, DetectorKind, Drift, DriftTrend, EwmaZ, Fired, Flatline, Limits, LogDrop, Pewma,
    RateOfChange, RobustMad, Seasonal, Signal,
};
use crate::{Error, PointScorer, Result};

/// The ensemble's verdict on one reading.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Assessment {
    /// Calibrated anomaly score in [0, 1].
    pub score: f64,
    /// Whether `score` reached the configured alarm level.
    pub alarm: bool,
    /// The strongest weighted detector surprise (1.0 = at its firing level).
    pub raw: f64,
    /// Detectors whose surprise reached their firing level on this reading (an unweighted
    /// median/MAD is only evaluated when `score` is positive, the only readings that can alarm).
    pub fired: Fired,
    /// The detector that contributed the raw score, if any.
    pub strongest: Option<DetectorKind>,
    /// The range the strongest modelling detector expected the value in.
    pub expected: Option<(f64, f64)>,
}

/// Version of the [`Snapshot`] layout.
pub const SNAPSHOT_VERSION: u32 = 7;

/// All the state of one series. Serialise it with any serde format; restore with
/// [`SeriesDetector::restore`] or [`SeriesState::check`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SeriesState {
    n: u64,
    last_ts: Option<TimestampMs>,
    ewma: EwmaZ,
    pewma: Pewma,
    mad: RobustMad,
    cusum: Cusum,
    flatline: Flatline,
    rate: RateOfChange,
    seasonal: Seasonal,
    /// Fast EWMA of the values and the z-score of it against its own slow baseline.
    smooth: Option<f64>,
    smooth_z: EwmaZ,
    /// Fast EWMA of the clipped squared baseline z-score (a change of spread or spike density).
    vol: f64,
    log_drop: LogDrop,
    drift: Drift,
    likelihood: Likelihood,
    recurrence: Recurrence,
    precedent: Precedent,
    rebase: Rebase,
    /// Running estimate of a high quantile of the raw surprise (0 = not started).
    tail: f64,
    /// Per-detector running high quantiles of the weighted surprise (0 = not started), used
    /// when `tail.per_detector` is on.
    tails: [f64; DetectorKind::ALL.len()],
    peak: f64,
    /// Readings left in the refractory period after an alarm.
    refractory: u32,
}

/// A versioned snapshot of one series' state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// [`SNAPSHOT_VERSION`] when it was taken.
    pub version: u32,
    /// The state.
    pub state: SeriesState,
}

impl SeriesState {
    /// Readings seen.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether no reading has been seen.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Bytes this state occupies, inline plus heap buffers (bounded by the configuration:
    /// `mad.window` and `likelihood.short_window` values).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.mad.heap_bytes()
            + self.seasonal.heap_bytes()
            + self.likelihood.heap_bytes()
    }

    /// The slow-drift detector's current excursion (rate per hour and duration), if any.
    pub fn drift_trend(&self) -> Option<DriftTrend> {
        self.drift.trend()
    }

    /// The seasonal period found, in blocks of `seasonal.block` readings.
    pub fn seasonal_period(&self) -> Option<usize> {
        self.seasonal.period()
    }

    /// Seeds a fresh state's level baseline with a fitted `mean` and `scale` (standard
    /// deviation), so it scores from the first reading. Does nothing once readings were seen
    /// or when `scale` is not positive.
    pub fn seed(&mut self, cfg: &EnsembleConfig, mean: f64, scale: f64) {
        if self.n > 0 {
            return;
        }
        let settled = (1.0 / cfg.ewma.alpha).ceil() as u64;
        self.ewma
            .seed(mean, scale, settled.max(u64::from(cfg.ewma.warmup)));
    }

    /// Checks that a deserialised state fits `cfg` (buffer sizes, finite numbers).
    pub fn check(&self, cfg: &EnsembleConfig) -> Result<()> {
        let ok = self.ewma.valid()
            && self.pewma.valid()
            && self.mad.valid(&cfg.mad)
            && self.cusum.valid()
            && self.flatline.valid()
            && self.rate.valid()
            && self.seasonal.valid(&cfg.seasonal)
            && self.smooth.is_none_or(f64::is_finite)
            && self.smooth_z.valid()
            && self.likelihood.valid(&cfg.likelihood)
            && self.recurrence.valid(&cfg.recurrence)
            && self.precedent.valid(&cfg.precedent)
            && self.peak.is_finite()
            && self.tail.is_finite()
            && self.vol.is_finite()
            && self.log_drop.valid()
            && self.drift.valid()
            && self.rebase.valid()
            && self.tails.iter().all(|v| v.is_finite());
        if ok {
            Ok(())
        } else {
            Err(Error::Snapshot(
                "state does not fit the configuration (buffer larger than configured, or a non-finite number)"
                    .into(),
            ))
        }
    }

    /// Scores one reading and learns it. Readings are expected in time order; the timestamp
    /// does not change the score (the drift detector uses it only to state a rate per hour).
    pub fn update(&mut self, cfg: &EnsembleConfig, ts: TimestampMs, x: f64) -> Assessment {
        self.n = self.n.saturating_add(1);
        self.last_ts = Some(ts);
        let w = &cfg.weights;
        let (mean, sd) = self.ewma.mean_std();
        let baseline_z = (self.ewma.peek(&cfg.ewma, x).expected.is_some() && learnable(x))
            .then(|| (x - mean) / sd.max(1e-9 * (1.0 + mean.abs())));

        let mut best = (0.0f64, None, None);
        let mut fired = Fired::default();
        let t = &cfg.tail;
        let per = t.per_detector && t.rate > 0.0;
        let mut tails = self.tails;
        // Every detector explains (it fired when its own level reached 1); the weights decide
        // how much each one counts in the score.
        let mut consider = |kind: DetectorKind, weight: f64, s: Signal| {
            if s.level >= 1.0 {
                fired.insert(kind);
            }
            let mut level = weight * s.level;
            if per && weight > 0.0 {
                let slot = &mut tails[kind as usize];
                if *slot <= 0.0 {
                    *slot = t.reference;
                }
                let q = *slot;
                let up = if level > q {
                    t.quantile
                } else {
                    t.quantile - 1.0
                };
                *slot = (q * (t.rate * up).exp())
                    .clamp(t.reference * 1e-3, crate::detectors::MAX_LEVEL);
                level /= (q / t.reference).max(t.min_factor);
            }
            if level > best.0 {
                best = (level, Some(kind), s.expected);
            }
        };
        // Once a series is known to be seasonal, the non-seasonal baselines see its cycle as
        // surprise; `seasonal.others` scales them down.
        let level_w = if w.seasonal > 0.0 && self.seasonal.period().is_some() {
            cfg.seasonal.others
        } else {
            1.0
        };
        consider(
            DetectorKind::EwmaZ,
            w.ewma_z * level_w,
            self.ewma.update(&cfg.ewma, x),
        );
        consider(
            DetectorKind::Pewma,
            w.pewma,
            self.pewma.update(&cfg.pewma, x),
        );
        // The median/MAD is the costliest detector (two selections per reading). Unweighted
        // (the default), it only explains, so it is computed below only for a reading that
        // could alarm; its window is kept up to date either way.
        if w.robust_mad > 0.0 {
            consider(
                DetectorKind::RobustMad,
                w.robust_mad,
                self.mad.update(&cfg.mad, x, sd),
            );
        }
        consider(
            DetectorKind::Cusum,
            w.cusum * level_w,
            self.cusum.update(&cfg.cusum, baseline_z),
        );
        consider(
            DetectorKind::Flatline,
            w.flatline,
            self.flatline.update(&cfg.flatline, x),
        );
        consider(
            DetectorKind::RateOfChange,
            w.rate_of_change,
            self.rate.update(&cfg.rate, x),
        );
        if w.smooth_z > 0.0 && learnable(x) {
            let a = cfg.smooth.alpha;
            let s = self.smooth.map_or(x, |s| s + a * (x - s));
            self.smooth = Some(s);
            consider(
                DetectorKind::SmoothZ,
                w.smooth_z,
                self.smooth_z.update(&cfg.smooth.z, s),
            );
        }
        if w.volatility > 0.0
            && let Some(z) = baseline_z.filter(|z| z.is_finite())
        {
            let v = &cfg.volatility;
            let z2 = z.clamp(-v.clip, v.clip).powi(2);
            let prev = self.vol;
            self.vol = if prev <= 0.0 {
                1.0
            } else {
                prev + v.alpha * (z2 - prev)
            };
            consider(
                DetectorKind::Volatility,
                w.volatility,
                Signal::new((self.vol - 1.0).max(0.0) / (v.threshold - 1.0), None),
            );
        }
        if w.log_drop > 0.0 {
            consider(
                DetectorKind::LogDrop,
                w.log_drop,
                self.log_drop.update(&cfg.log_drop, x),
            );
        }
        if w.drift > 0.0 {
            consider(
                DetectorKind::Drift,
                w.drift,
                self.drift.update(&cfg.drift, ts, x),
            );
        }
        if w.seasonal > 0.0 {
            consider(
                DetectorKind::Seasonal,
                w.seasonal,
                self.seasonal.update(&cfg.seasonal, x),
            );
        }
        consider(
            DetectorKind::Limits,
            w.limits,
            Limits::check(&cfg.limits, x),
        );
        self.tails = tails;
        let (mut raw, strongest, expected) = best;
        if t.rate > 0.0 && t.overall && raw.is_finite() {
            // Judge this reading against the series' own usual surprises: a series whose
            // surprises often run high (spiky, heavy-tailed) needs a bigger one to alarm.
            if self.tail <= 0.0 {
                self.tail = t.reference;
            }
            let q = self.tail;
            let up = if raw > q {
                t.quantile
            } else {
                t.quantile - 1.0
            };
            self.tail =
                (q * (t.rate * up).exp()).clamp(t.reference * 1e-3, crate::detectors::MAX_LEVEL);
            raw /= (q / t.reference).max(t.min_factor);
        }

        // The likelihood stage only runs when the score uses it.
        let likelihood = if cfg.calibration == Calibration::Raw {
            0.0
        } else {
            let learned = if cfg.log_raw { raw.ln_1p() } else { raw };
            self.likelihood.update(&cfg.likelihood, learned).0
        };
        // ln(1 + ln(1 + raw)) keeps resolution for huge surprises; any monotone squash ranks
        // the same.
        let squashed = {
            let l = raw.ln_1p();
            l / (1.0 + l)
        };
        let mut score = match cfg.calibration {
            Calibration::Raw => squashed,
            Calibration::Likelihood => likelihood,
            Calibration::Both => (squashed * likelihood).sqrt(),
        };
        if self.recurrence.update(&cfg.recurrence, self.n, raw) {
            score = 0.0;
        }
        // Distance from the baseline mean, once the baseline scores (not during its warm-up).
        let dev = if baseline_z.is_some() {
            x - mean
        } else {
            f64::NAN
        };
        // A sustained one-sided shift restarts the baseline (see `RebaseConfig`). Readings the
        // baseline does not score (warm-up, not learnable) neither extend nor break a run.
        if let Some(z) = baseline_z
            && let Some(spread) = self.rebase.update(&cfg.rebase, z, sd)
        {
            // The smoothed level, not the run's mean: after 8 readings it has covered about
            // three quarters of a step, and the rest left in the spread keeps the restart
            // conservative (restarting at the run's mean: NAB 74.2-75.5).
            let level = if cfg.weights.smooth_z > 0.0 {
                self.smooth.unwrap_or(x)
            } else {
                x
            };
            let n = self.ewma.count();
            self.ewma.seed(level, spread, n);
        }
        if self.precedent.update(&cfg.precedent, raw, dev, strongest) {
            score = 0.0;
        }
        let o = &cfg.onset;
        if self.refractory > 0 {
            self.refractory -= 1;
            score *= o.damping;
        }
        if o.decay > 0.0 {
            let rising = score > self.peak;
            self.peak = (self.peak * o.decay).max(score);
            if !rising {
                score *= o.damping;
            }
        }
        let score = if score.is_finite() {
            score.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let alarm = score >= o.alarm_score;
        if alarm {
            self.refractory = o.refractory;
        }
        // A change another detector reported (or would have, outside a refractory period) is
        // not a drift to report again later.
        if strongest != Some(DetectorKind::Drift) && (alarm || raw >= cfg.drift.mute_above) {
            self.drift.mute();
        }
        if w.robust_mad <= 0.0 {
            if score > 0.0 {
                if self.mad.update(&cfg.mad, x, sd).level >= 1.0 {
                    fired.insert(DetectorKind::RobustMad);
                }
            } else {
                self.mad.learn(&cfg.mad, x);
            }
        }
        Assessment {
            score,
            alarm,
            raw,
            fired,
            strongest,
            expected,
        }
    }
}

/// One series' ensemble: configuration plus state.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesDetector {
    config: EnsembleConfig,
    state: SeriesState,
}

impl SeriesDetector {
    /// A fresh detector, after validating `config`.
    pub fn new(config: EnsembleConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            state: SeriesState::default(),
        })
    }

    /// Scores one reading and learns it.
    pub fn update(&mut self, ts: TimestampMs, value: f64) -> Assessment {
        self.state.update(&self.config, ts, value)
    }

    /// The configuration.
    pub fn config(&self) -> &EnsembleConfig {
        &self.config
    }

    /// A snapshot of the state; restoring it continues bit-identically.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: SNAPSHOT_VERSION,
            state: self.state.clone(),
        }
    }

    /// A detector that continues from `snapshot` under `config`.
    pub fn restore(config: EnsembleConfig, snapshot: Snapshot) -> Result<Self> {
        config.validate()?;
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(Error::Snapshot(format!(
                "snapshot version {} is not {SNAPSHOT_VERSION}",
                snapshot.version
            )));
        }
        snapshot.state.check(&config)?;
        Ok(Self {
            config,
            state: snapshot.state,
        })
    }
}

impl PointScorer for SeriesDetector {
    fn score(&mut self, ts: TimestampMs, value: f64) -> f64 {
        self.update(ts, value).score
    }
}
