//! Model parameters as a versioned artifact: what a trainer fits from history ([`fit`]) and a
//! live [`Detector`](crate::Detector) hot-swaps ([`Detector::set_params`](crate::Detector::set_params)).
//!
//! One [`EnsembleConfig`] serves every series; per series the artifact carries what history
//! tells about it: its level and spread (seed the baselines, so a new series needs no
//! warm-up), its period, its reporting interval (silence detection from the first reading) and
//! its alarm threshold (raised when the history would have alarmed too often, and by operator
//! feedback).

use std::collections::BTreeMap;

use edgepipe_types::TimestampMs;
use serde::{Deserialize, Serialize};

use crate::detectors::stats::{learnable, median_in_place};
use crate::series_key::SeriesKey;
use crate::{EnsembleConfig, Error, Result, SeriesState};

/// Version of the [`ModelParams`] layout.
pub const MODEL_PARAMS_VERSION: u32 = 1;

/// Everything a live detector needs besides its state: the global ensemble configuration and
/// fitted per-series parameters. Serialise with any serde format (JSON for people, postcard
/// inside snapshots).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelParams {
    /// [`MODEL_PARAMS_VERSION`] when it was written.
    pub version: u32,
    /// The ensemble configuration every series uses.
    pub ensemble: EnsembleConfig,
    /// Fitted parameters per series (a series without an entry uses the defaults).
    #[serde(default)]
    pub series: BTreeMap<SeriesKey, SeriesParams>,
}

impl Default for ModelParams {
    fn default() -> Self {
        Self::new(EnsembleConfig::default())
    }
}

/// What history tells about one series.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SeriesParams {
    /// Level (median) of the history.
    pub mean: f64,
    /// Spread (1.4826 × median absolute deviation, or the standard deviation when that is 0)
    /// of the history; 0 = unknown, the baselines are not seeded.
    pub scale: f64,
    /// Seasonal period in readings, when the history has one.
    pub period: Option<u32>,
    /// Typical (median) interval between readings, in ms.
    pub interval_ms: Option<i64>,
    /// Score at or above which this series is anomalous; `None` = the ensemble's
    /// `onset.alarm_score`.
    pub alarm_score: Option<f64>,
}

/// Options of [`fit`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitOptions {
    /// Largest share of the history's readings that may be anomalous at the fitted threshold
    /// (the history is taken as mostly normal); the threshold is raised until it holds.
    pub max_alarm_rate: f64,
    /// How far above the highest tolerated history score the raised threshold sits.
    pub margin: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            max_alarm_rate: 0.001,
            margin: 0.01,
        }
    }
}

impl ModelParams {
    /// Parameters with `ensemble` and no per-series entries.
    pub fn new(ensemble: EnsembleConfig) -> Self {
        Self {
            version: MODEL_PARAMS_VERSION,
            ensemble,
            series: BTreeMap::new(),
        }
    }

    /// Checks the version, the ensemble configuration and every series entry.
    pub fn validate(&self) -> Result<()> {
        if self.version != MODEL_PARAMS_VERSION {
            return Err(Error::Params(format!(
                "version {} is not {MODEL_PARAMS_VERSION}",
                self.version
            )));
        }
        self.ensemble.validate()?;
        for (key, p) in &self.series {
            let ok = p.mean.is_finite()
                && p.scale.is_finite()
                && p.scale >= 0.0
                && p.interval_ms.is_none_or(|i| i > 0)
                && p.alarm_score.is_none_or(|a| a > 0.0 && a <= 1.0);
            if !ok {
                return Err(Error::Params(format!(
                    "series {key}: {p:?} is out of range"
                )));
            }
        }
        Ok(())
    }

    /// The alarm threshold of `key`.
    pub fn alarm_score(&self, key: &SeriesKey) -> f64 {
        self.series
            .get(key)
            .and_then(|p| p.alarm_score)
            .unwrap_or(self.ensemble.onset.alarm_score)
    }

    /// Parses and validates a JSON artifact.
    pub fn from_json(text: &str) -> Result<Self> {
        let p: Self = serde_json::from_str(text).map_err(|e| Error::Params(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// The artifact as pretty JSON.
    pub fn to_json(&self) -> String {
        // Only map keys that are not strings make serde_json fail; ours are strings.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Fits every series of `histories` (readings in time order) with [`fit`].
    pub fn fit<'a>(
        ensemble: EnsembleConfig,
        histories: impl IntoIterator<Item = (SeriesKey, &'a [(TimestampMs, f64)])>,
        options: &FitOptions,
    ) -> Result<Self> {
        let mut params = Self::new(ensemble);
        for (key, history) in histories {
            let p = fit(&params.ensemble, history, options)?;
            params.series.insert(key, p);
        }
        Ok(params)
    }
}

/// Fits one series' parameters from its history (readings in time order; non-finite values
/// and out-of-order timestamps are skipped): robust level and spread, the seasonal period the
/// ensemble finds, the median reporting interval, and the alarm threshold at which at most
/// `max_alarm_rate` of the history (after the ensemble's warm-up) would have been anomalous.
pub fn fit(
    ensemble: &EnsembleConfig,
    history: &[(TimestampMs, f64)],
    options: &FitOptions,
) -> Result<SeriesParams> {
    ensemble.validate()?;
    if !(0.0..=1.0).contains(&options.max_alarm_rate) || !options.margin.is_finite() {
        return Err(Error::Params(format!(
            "fit options {options:?} are out of range"
        )));
    }
    let mut values = Vec::with_capacity(history.len());
    let mut gaps = Vec::with_capacity(history.len());
    let mut scores = Vec::with_capacity(history.len());
    let mut state = SeriesState::default();
    let mut last: Option<TimestampMs> = None;
    for &(ts, x) in history {
        if last.is_some_and(|l| ts <= l) || !learnable(x) {
            continue;
        }
        if let Some(l) = last {
            gaps.push(ts.saturating_sub(l));
        }
        last = Some(ts);
        values.push(x);
        scores.push(state.update(ensemble, ts, x).score);
    }
    let mut p = SeriesParams::default();
    if values.is_empty() {
        return Ok(p);
    }
    let mut v = values.clone();
    p.mean = median_in_place(&mut v);
    let mut dev: Vec<f64> = values.iter().map(|x| (x - p.mean).abs()).collect();
    p.scale = 1.4826 * median_in_place(&mut dev);
    if p.scale <= 0.0 {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        p.scale = (values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
    }
    if !p.scale.is_finite() {
        p.scale = 0.0;
    }
    p.period = state
        .seasonal_period()
        .map(|blocks| (blocks as u64 * u64::from(ensemble.seasonal.block)) as u32);
    if !gaps.is_empty() {
        let mut g: Vec<f64> = gaps.iter().map(|&g| g as f64).collect();
        p.interval_ms = Some((median_in_place(&mut g) as i64).max(1));
    }
    // Judge the threshold on the readings after the warm-up of the slowest baseline.
    let skip = (scores.len() * 15 / 100).max(ensemble.ewma.warmup as usize);
    let judged = scores.get(skip..).unwrap_or_default();
    let allowed = (options.max_alarm_rate * judged.len() as f64).floor() as usize;
    let default = ensemble.onset.alarm_score;
    let mut high: Vec<f64> = judged.iter().copied().filter(|s| *s >= default).collect();
    if high.len() > allowed {
        high.sort_by(|a, b| b.total_cmp(a));
        let tolerated_above = high.get(allowed).copied().unwrap_or(default);
        p.alarm_score = Some((tolerated_above + options.margin).min(0.999));
    }
    Ok(p)
}
