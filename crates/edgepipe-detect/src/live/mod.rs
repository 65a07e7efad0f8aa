//! The live detector: many series, keyed by `(device, metric)`, as a WAL consumer sees them.
//!
//! [`Detector::score`] scores one reading and returns an [`Event`] when the series crosses into
//! anomaly (one per episode) or the device's multivariate model finds a row anomalous;
//! [`Detector::tick`] reports series and devices that stopped reporting, against an injected
//! "now" (the detector never reads a clock); [`Detector::snapshot`] and [`Detector::restore`]
//! continue bit-identically; [`Detector::set_params`] hot-swaps a fitted
//! [`ModelParams`] artifact and [`Detector::apply_feedback`] raises a series' threshold after
//! an operator labelled a false positive.
//!
//! Ordering: readings of one series are expected in event-time order. A reading at or before
//! the series' newest timestamp (a duplicate or a late backfill) is answered
//! [`ScoreStatus::Late`] and neither scored nor learned, so replays never re-open an alarm.

mod config;
#[cfg(test)]
mod tests;

use foldhash::quality::RandomState;
use std::collections::HashMap;

use hashbrown::Equivalent;

use edgepipe_types::{DeviceId, Metric, TimestampMs};
use serde::{Deserialize, Serialize};

pub use config::{DetectorConfig, SilenceConfig};

pub use crate::series_key::SeriesKey;

use crate::detectors::DetectorKind;
use crate::model::{ModelParams, SeriesParams};
use crate::multivariate::Pca;
use crate::{Error, Result, SeriesState};

/// Version of the [`Detector::snapshot`] layout.
pub const DETECTOR_SNAPSHOT_VERSION: u32 = 6;

/// A borrowed series key: looks up a [`SeriesKey`] without building one (hashes exactly as the
/// owned key does: the device's text, then the metric's).
#[derive(Hash)]
struct SeriesRef<'a> {
    device: &'a str,
    metric: &'a str,
}

impl Equivalent<SeriesKey> for SeriesRef<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        self.device == key.device.as_str() && self.metric == key.metric.as_str()
    }
}

/// What happened to a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreStatus {
    /// Scored and learned.
    Scored,
    /// At or before the series' newest timestamp (duplicate or late): not scored or learned.
    Late,
    /// A new series beyond `max_series`: not tracked.
    Overflow,
}

/// The verdict on one reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// Anomaly score in [0, 1] (0 unless `status` is `Scored`).
    pub score: f64,
    /// Whether `score` reached this series' threshold.
    pub anomalous: bool,
    /// What happened to the reading.
    pub status: ScoreStatus,
    /// Set when the series crossed into anomaly with this reading (once per episode). Boxed:
    /// events are rare, and a small `Score` is cheap to return for every reading.
    pub event: Option<Box<Event>>,
    /// Set when this reading completed (or closed) a row of the device's metrics that the
    /// multivariate model found anomalous.
    pub device_event: Option<Box<Event>>,
}

impl Score {
    fn unscored(status: ScoreStatus) -> Self {
        Self {
            score: 0.0,
            anomalous: false,
            status,
            event: None,
            device_event: None,
        }
    }
}

/// What kind of finding an [`Event`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// One series' value is anomalous.
    Anomaly,
    /// A device's metrics together are anomalous (streaming PCA: T² or Q).
    Multivariate,
    /// A series (metric set) or a whole device (metric unset) stopped reporting.
    Silence,
    /// An edge agent reported a gap in its data (readings shed or lost before upload). Not
    /// raised by the detector: the server's stage raises it from the agent's gap readings.
    Gap,
}

/// A finding, with its explanation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// What was found.
    pub kind: EventKind,
    /// The device.
    pub device: DeviceId,
    /// The metric, for single-series findings; unset for device-wide ones.
    pub metric: Option<Metric>,
    /// Event time of the reading (or row) that raised it; for silence, the "now" of the tick.
    pub ts: TimestampMs,
    /// Score in [0, 1].
    pub score: f64,
    /// The threshold the score was held against.
    pub threshold: f64,
    /// Why.
    pub explanation: Explanation,
}

/// One metric's part in a multivariate finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contribution {
    /// The metric.
    pub metric: Metric,
    /// Its share of the statistic (0..1; shares of all metrics add up to 1).
    pub share: f64,
    /// Its standardised deviation from its own running mean.
    pub z: f64,
}

/// Why an event was raised.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Explanation {
    /// Detectors that reached their own firing level on the reading.
    pub fired: Vec<DetectorKind>,
    /// The detector whose surprise set the score.
    pub strongest: Option<DetectorKind>,
    /// The value (single-series findings).
    pub value: Option<f64>,
    /// The range the strongest modelling detector expected the value in.
    pub expected: Option<(f64, f64)>,
    /// Metrics contributing to a multivariate finding, largest share first (shares below 5 %
    /// left out).
    pub contributing: Vec<Contribution>,
    /// Multivariate statistics: Hotelling's T² and the squared prediction error Q.
    pub t2_q: Option<(f64, f64)>,
    /// For silence: how long nothing arrived (ms) and the usual interval (ms).
    pub silent_for_ms: Option<(i64, i64)>,
    /// For a slow drift (strongest detector `drift`): its rate per hour and how long it has
    /// lasted ("drifting up 0.4 per hour for 9 h").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::detectors::DriftTrend>,
}

/// Operator feedback on an event of one series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "label")]
pub enum Feedback {
    /// The event at `score` was not an anomaly: raise the series' threshold above it.
    FalsePositive {
        /// The event's score.
        score: f64,
    },
    /// The event at `score` was a real anomaly: if feedback had raised the threshold above
    /// it, lower it back to `score` (never below the ensemble's default).
    TruePositive {
        /// The event's score.
        score: f64,
    },
}

/// A series' place in its device's multivariate model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Slot {
    /// Not considered yet (the first reading decides).
    Unassigned,
    /// Not in the model (the device has `max_metrics` already, or the model was past warm-up).
    Excluded,
    /// Column of the device's model.
    In(u8),
}

/// Per-series live state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SeriesEntry {
    state: SeriesState,
    last_ts: Option<TimestampMs>,
    /// Running average of the interval between readings (ms) and how many were seen.
    interval: f64,
    intervals: u32,
    /// Consecutive readings below the threshold while anomalous.
    quiet: u32,
    in_anomaly: bool,
    silent: bool,
    /// Index of the device in the detector's device list.
    device: u32,
    slot: Slot,
    /// From the model parameters (kept here so a reading needs no parameter lookup): the
    /// series' alarm threshold and fitted reporting interval.
    threshold: f64,
    fitted_interval: Option<i64>,
}

impl SeriesEntry {
    fn new(params: Option<&SeriesParams>, ensemble: &crate::EnsembleConfig, device: u32) -> Self {
        let mut state = SeriesState::default();
        if let Some(p) = params {
            state.seed(ensemble, p.mean, p.scale);
        }
        let (threshold, fitted_interval) = cached(params, ensemble);
        Self {
            state,
            last_ts: None,
            interval: 0.0,
            intervals: 0,
            quiet: 0,
            in_anomaly: false,
            silent: false,
            device,
            slot: Slot::Unassigned,
            threshold,
            fitted_interval,
        }
    }
}

/// The per-series values a reading or a tick needs from the parameters.
fn cached(params: Option<&SeriesParams>, ensemble: &crate::EnsembleConfig) -> (f64, Option<i64>) {
    (
        params
            .and_then(|p| p.alarm_score)
            .unwrap_or(ensemble.onset.alarm_score),
        params.and_then(|p| p.interval_ms),
    )
}

/// Per-device live state: the multivariate model and row assembly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct DeviceEntry {
    /// The metrics in the model, in arrival order.
    metrics: Vec<Metric>,
    pca: Option<Pca>,
    /// Timestamp of the row being assembled.
    row_ts: Option<TimestampMs>,
    /// Latest value of each model metric (carried forward into rows that lack it).
    row: Vec<f64>,
    /// Which model metrics have ever had a value, and which arrived for `row_ts`.
    have: u16,
    seen: u16,
    silent: bool,
}

impl DeviceEntry {
    fn new() -> Self {
        Self {
            metrics: Vec::new(),
            pca: None,
            row_ts: None,
            row: Vec::new(),
            have: 0,
            seen: 0,
            silent: false,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct DetectorSnapshot {
    version: u32,
    params: ModelParams,
    series: Vec<(SeriesKey, SeriesEntry)>,
    devices: Vec<(DeviceId, DeviceEntry)>,
}

/// Streaming anomaly detection over many series: one [`ModelParams`] (shared ensemble
/// configuration, fitted per-series parameters), per-series state, per-device multivariate
/// models. Pure and synchronous: the caller supplies every timestamp, including "now".
#[derive(Debug, Clone, PartialEq)]
pub struct Detector {
    config: DetectorConfig,
    params: ModelParams,
    /// Series in creation order, found through `index` (one hash per reading).
    series: Vec<(SeriesKey, SeriesEntry)>,
    index: hashbrown::HashMap<SeriesKey, u32, RandomState>,
    /// Devices in creation order; series refer to them by position.
    devices: Vec<(DeviceId, DeviceEntry)>,
    device_index: HashMap<DeviceId, u32>,
}

impl Detector {
    /// A detector with no series yet, after validating `config` and `params`.
    pub fn new(config: DetectorConfig, params: ModelParams) -> Result<Self> {
        config.validate()?;
        params.validate()?;
        Ok(Self {
            config,
            params,
            series: Vec::new(),
            index: hashbrown::HashMap::default(),
            devices: Vec::new(),
            device_index: HashMap::new(),
        })
    }

    /// The live configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// The model parameters in use (including thresholds raised by feedback).
    pub fn params(&self) -> &ModelParams {
        &self.params
    }

    /// Series tracked.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Approximate bytes of state: series (with their keys and index entries) and device
    /// models.
    pub fn memory_bytes(&self) -> usize {
        let s: usize = self
            .series
            .iter()
            .map(|(k, e)| {
                std::mem::size_of::<SeriesEntry>() - std::mem::size_of::<SeriesState>()
                    + e.state.memory_bytes()
                    // The key is held twice (list and index), plus the index's slot.
                    + 2 * (std::mem::size_of::<SeriesKey>()
                        + k.device.as_str().len()
                        + k.metric.as_str().len())
                    + 4
            })
            .sum();
        let d: usize = self
            .devices
            .iter()
            .map(|(id, d)| {
                std::mem::size_of::<DeviceEntry>()
                    + 2 * (24 + id.as_str().len())
                    + 4
                    + d.pca.as_ref().map_or(0, Pca::heap_bytes)
                    + d.row.capacity() * 8
                    + d.metrics
                        .iter()
                        .map(|m| 24 + m.as_str().len())
                        .sum::<usize>()
            })
            .sum();
        s + d
    }

    /// The position of `key`'s series, created (with its device) if new and there is room.
    fn series_slot(&mut self, key: &SeriesKey) -> Option<usize> {
        if let Some(&i) = self.index.get(key) {
            return Some(i as usize);
        }
        if self.series.len() >= self.config.max_series || self.series.len() >= u32::MAX as usize {
            return None;
        }
        let device = match self.device_index.get(&key.device) {
            Some(&d) => d,
            None => {
                let d = self.devices.len() as u32;
                self.devices.push((key.device.clone(), DeviceEntry::new()));
                self.device_index.insert(key.device.clone(), d);
                d
            }
        };
        let entry = SeriesEntry::new(self.params.series.get(key), &self.params.ensemble, device);
        let i = self.series.len();
        self.series.push((key.clone(), entry));
        self.index.insert(key.clone(), i as u32);
        Some(i)
    }

    /// Scores the reading `value` of series `key` at event time `ts`, learns it, and reports
    /// an event when the series crosses into anomaly or the device's metrics together are
    /// anomalous. Never panics, whatever the value (NaN, infinities) or timestamp.
    pub fn score(&mut self, key: &SeriesKey, ts: TimestampMs, value: f64) -> Score {
        let Some(i) = self.series_slot(key) else {
            return Score::unscored(ScoreStatus::Overflow);
        };
        self.score_at(i, ts, value)
    }

    /// [`score`](Self::score) for a series named by borrowed text (a WAL reader's path: no
    /// key is built for a series already tracked). A new series' ids are validated first.
    pub fn score_ids(
        &mut self,
        device: &str,
        metric: &str,
        ts: TimestampMs,
        value: f64,
    ) -> Result<Score> {
        let found = self.index.get(&SeriesRef { device, metric }).copied();
        let i = match found {
            Some(i) => i as usize,
            None => {
                let key = SeriesKey::new(
                    DeviceId::new(device).map_err(|e| Error::Params(e.to_string()))?,
                    Metric::new(metric).map_err(|e| Error::Params(e.to_string()))?,
                );
                match self.series_slot(&key) {
                    Some(i) => i,
                    None => return Ok(Score::unscored(ScoreStatus::Overflow)),
                }
            }
        };
        Ok(self.score_at(i, ts, value))
    }

    /// Scores a reading of the series at position `i`.
    fn score_at(&mut self, i: usize, ts: TimestampMs, value: f64) -> Score {
        let ensemble = &self.params.ensemble;
        let Some((key, entry)) = self.series.get_mut(i) else {
            return Score::unscored(ScoreStatus::Overflow);
        };
        if entry.last_ts.is_some_and(|l| ts <= l) {
            return Score::unscored(ScoreStatus::Late);
        }
        if let Some(l) = entry.last_ts {
            let gap = ts.saturating_sub(l) as f64;
            let a = self
                .config
                .silence
                .interval_alpha
                .max(1.0 / f64::from(entry.intervals.saturating_add(1)));
            entry.interval += a * (gap - entry.interval);
            entry.intervals = entry.intervals.saturating_add(1);
        }
        entry.last_ts = Some(ts);
        entry.silent = false;
        if let Some((_, dev)) = self.devices.get_mut(entry.device as usize) {
            dev.silent = false;
        }
        let a = entry.state.update(ensemble, ts, value);
        let threshold = entry.threshold;
        let anomalous = a.score >= threshold;
        let mut event = None;
        if anomalous {
            entry.quiet = 0;
            if !entry.in_anomaly {
                entry.in_anomaly = true;
                event = Some(Box::new(Event {
                    kind: EventKind::Anomaly,
                    device: key.device.clone(),
                    metric: Some(key.metric.clone()),
                    ts,
                    score: a.score,
                    threshold,
                    explanation: Explanation {
                        fired: a.fired.iter().collect(),
                        strongest: a.strongest,
                        value: Some(value),
                        expected: a.expected,
                        drift: (a.strongest == Some(DetectorKind::Drift))
                            .then(|| entry.state.drift_trend())
                            .flatten(),
                        ..Explanation::default()
                    },
                }));
            }
        } else if entry.in_anomaly {
            entry.quiet = entry.quiet.saturating_add(1);
            if entry.quiet >= self.config.clear_after {
                entry.in_anomaly = false;
                entry.quiet = 0;
            }
        }
        let device_event = self.multivariate(i, ts, value);
        Score {
            score: a.score,
            anomalous,
            status: ScoreStatus::Scored,
            event,
            device_event,
        }
    }

    /// Feeds series `i`'s reading into its device's row assembly; returns an event when a row
    /// is closed and anomalous.
    fn multivariate(&mut self, i: usize, ts: TimestampMs, value: f64) -> Option<Box<Event>> {
        let cfg = &self.config.multivariate;
        if !cfg.enabled {
            return None;
        }
        let (key, entry) = self.series.get_mut(i)?;
        let (device_id, dev) = self.devices.get_mut(entry.device as usize)?;
        let idx = match entry.slot {
            Slot::In(s) => usize::from(s),
            Slot::Excluded => return None,
            Slot::Unassigned if let Some(s) = dev.metrics.iter().position(|m| *m == key.metric) => {
                // A series re-created after `remove_series` takes its old column back.
                entry.slot = Slot::In(s as u8);
                s
            }
            Slot::Unassigned => {
                // Metrics join the model until it has learned its warm-up; a join restarts
                // the (still young) model with the new dimension.
                let young = dev
                    .pca
                    .as_ref()
                    .is_none_or(|p| p.rows() < u64::from(cfg.warmup));
                if dev.metrics.len() >= cfg.max_metrics || !young {
                    entry.slot = Slot::Excluded;
                    return None;
                }
                dev.metrics.push(key.metric.clone());
                dev.row.push(0.0);
                dev.seen = 0;
                dev.have = 0;
                dev.row_ts = None;
                dev.pca = (dev.metrics.len() >= 2).then(|| Pca::new(dev.metrics.len()));
                let s = dev.metrics.len() - 1;
                entry.slot = Slot::In(s as u8);
                s
            }
        };
        let bit = 1u16 << idx;
        let full = (1u16 << dev.metrics.len()) - 1;
        let mut verdict = None;
        match dev.row_ts {
            Some(rt) if ts < rt => return None,
            Some(rt) if ts > rt => {
                // A newer row starts: close the previous one if it was not complete yet.
                if dev.seen != full && dev.have == full {
                    verdict = dev
                        .pca
                        .as_mut()
                        .and_then(|p| p.update(cfg, &dev.row))
                        .map(|v| (rt, v));
                }
                dev.row_ts = Some(ts);
                dev.seen = 0;
            }
            Some(_) => {}
            None => dev.row_ts = Some(ts),
        }
        if let Some(slot) = dev.row.get_mut(idx)
            && value.is_finite()
        {
            *slot = value;
            dev.have |= bit;
        }
        let was_complete = dev.seen == full;
        dev.seen |= bit;
        if dev.seen == full && !was_complete && dev.have == full {
            verdict = dev
                .pca
                .as_mut()
                .and_then(|p| p.update(cfg, &dev.row))
                .map(|v| (ts, v));
        }
        let (row_ts, v) = verdict?;
        if !v.alarm {
            return None;
        }
        let mut contributing: Vec<Contribution> = dev
            .metrics
            .iter()
            .zip(&v.contributions)
            .filter(|(_, (share, _))| *share >= 0.05)
            .map(|(m, &(share, z))| Contribution {
                metric: m.clone(),
                share,
                z,
            })
            .collect();
        contributing.sort_by(|a, b| b.share.total_cmp(&a.share));
        let squash = |x: f64| {
            let l = x.ln_1p();
            l / (1.0 + l)
        };
        Some(Box::new(Event {
            kind: EventKind::Multivariate,
            device: device_id.clone(),
            metric: None,
            ts: row_ts,
            score: squash(v.level),
            threshold: squash(cfg.threshold),
            explanation: Explanation {
                contributing,
                t2_q: Some((v.t2, v.q)),
                ..Explanation::default()
            },
        }))
    }

    /// Forgets series `key` (a deleted device or metric); returns whether it was tracked. Its
    /// column stays in the device's multivariate model, which then closes rows with the last
    /// value carried forward.
    pub fn remove_series(&mut self, key: &SeriesKey) -> bool {
        let Some(i) = self.index.remove(key) else {
            return false;
        };
        let i = i as usize;
        if i >= self.series.len() {
            return false;
        }
        self.series.swap_remove(i);
        if let Some((moved, _)) = self.series.get(i)
            && let Some(slot) = self.index.get_mut(moved)
        {
            *slot = i as u32;
        }
        self.params.series.remove(key);
        true
    }

    /// Reports, as of `now` (the caller's clock, in the readings' time base), every series
    /// that has gone silent since the last tick: nothing arrived for `silence.factor` times its
    /// usual interval (learned, or the fitted `interval_ms`) and at least `silence.min_gap_ms`.
    /// When every series of a device is silent, one device-wide event replaces the
    /// per-series ones. A silent series raises no new event until it reports again. Events
    /// come sorted by device and metric.
    pub fn tick(&mut self, now: TimestampMs) -> Vec<Event> {
        let cfg = self.config.silence;
        if !cfg.enabled {
            return Vec::new();
        }
        let mut overdue: Vec<(usize, i64, i64)> = Vec::new();
        let mut reporting = vec![false; self.devices.len()];
        for (i, (_, e)) in self.series.iter().enumerate() {
            let Some(last) = e.last_ts else { continue };
            let usual = match e.fitted_interval {
                Some(i) => Some(i as f64),
                None => (e.intervals >= cfg.min_intervals).then_some(e.interval),
            };
            let gap = now.saturating_sub(last);
            let late = usual.is_some_and(|u| {
                let limit = (cfg.factor * u).max(cfg.min_gap_ms as f64);
                gap as f64 > limit
            });
            if late {
                if !e.silent {
                    overdue.push((i, gap, usual.unwrap_or(0.0) as i64));
                }
            } else if !e.silent
                && let Some(r) = reporting.get_mut(e.device as usize)
            {
                *r = true;
            }
        }
        overdue.sort_by(|a, b| self.series[a.0].0.cmp(&self.series[b.0].0));
        let mut events = Vec::new();
        for (i, gap, usual) in overdue {
            let Some((key, e)) = self.series.get_mut(i) else {
                continue;
            };
            e.silent = true;
            let d = e.device as usize;
            let whole = !reporting.get(d).copied().unwrap_or(true);
            if whole {
                let Some((_, dev)) = self.devices.get_mut(d) else {
                    continue;
                };
                if dev.silent {
                    continue;
                }
                dev.silent = true;
            }
            events.push(Event {
                kind: EventKind::Silence,
                device: key.device.clone(),
                metric: (!whole).then(|| key.metric.clone()),
                ts: now,
                score: 1.0,
                threshold: 1.0,
                explanation: Explanation {
                    silent_for_ms: Some((gap, usual)),
                    ..Explanation::default()
                },
            });
        }
        events
    }

    /// Replaces the model parameters (a newly fitted artifact) without losing state. A
    /// series whose state does not fit the new ensemble configuration (a buffer size changed)
    /// restarts; the count of such series is returned. Thresholds raised by feedback are kept
    /// where the new artifact does not set one.
    pub fn set_params(&mut self, mut params: ModelParams) -> Result<usize> {
        params.validate()?;
        for (key, old) in &self.params.series {
            if let Some(raised) = old.alarm_score
                && raised > self.params.ensemble.onset.alarm_score
            {
                let p = params.series.entry(key.clone()).or_default();
                if p.alarm_score.is_none() {
                    p.alarm_score = Some(raised);
                }
            }
        }
        let mut reset = 0;
        for (key, e) in &mut self.series {
            let p = params.series.get(key);
            if e.state.check(&params.ensemble).is_err() {
                *e = SeriesEntry {
                    last_ts: e.last_ts,
                    slot: e.slot,
                    ..SeriesEntry::new(p, &params.ensemble, e.device)
                };
                reset += 1;
            }
            (e.threshold, e.fitted_interval) = cached(p, &params.ensemble);
        }
        self.params = params;
        Ok(reset)
    }

    /// Applies operator feedback on an event of `key` and returns the series' threshold
    /// after it.
    pub fn apply_feedback(&mut self, key: &SeriesKey, feedback: Feedback) -> f64 {
        let default = self.params.ensemble.onset.alarm_score;
        let current = self.params.alarm_score(key);
        let next = match feedback {
            Feedback::FalsePositive { score } if score.is_finite() => {
                current.max(score + self.config.feedback_margin).min(0.999)
            }
            Feedback::TruePositive { score } if score.is_finite() && score < current => {
                score.max(default)
            }
            _ => current,
        };
        if next != current {
            let p = self.params.series.entry(key.clone()).or_default();
            p.alarm_score = Some(next);
            if let Some(&i) = self.index.get(key)
                && let Some((_, e)) = self.series.get_mut(i as usize)
            {
                e.threshold = next;
            }
        }
        next
    }

    /// The whole state (parameters, every series and device model) as bytes (postcard).
    /// [`restore`](Self::restore) continues from it bit-identically.
    pub fn snapshot(&self) -> Result<Vec<u8>> {
        #[derive(Serialize)]
        struct View<'a> {
            version: u32,
            params: &'a ModelParams,
            series: &'a [(SeriesKey, SeriesEntry)],
            devices: &'a [(DeviceId, DeviceEntry)],
        }
        // Same layout as `DetectorSnapshot`, serialised without copying the state.
        let view = View {
            version: DETECTOR_SNAPSHOT_VERSION,
            params: &self.params,
            series: &self.series,
            devices: &self.devices,
        };
        postcard::to_allocvec(&view).map_err(|e| Error::Snapshot(e.to_string()))
    }

    /// The layout version a [`snapshot`](Self::snapshot) was written with, if `bytes` start
    /// like one (so a caller can tell an older layout from a damaged snapshot).
    pub fn snapshot_version(bytes: &[u8]) -> Option<u32> {
        postcard::take_from_bytes::<u32>(bytes).ok().map(|(v, _)| v)
    }

    /// A detector that continues from `bytes` (a [`snapshot`](Self::snapshot)) under
    /// `config`. Refuses a snapshot of another version, one that does not decode, or one
    /// whose state does not fit the configuration.
    pub fn restore(config: DetectorConfig, bytes: &[u8]) -> Result<Self> {
        config.validate()?;
        // The version first: another layout would only fail to decode, which hides why.
        if let Some(v) = Self::snapshot_version(bytes)
            && v != DETECTOR_SNAPSHOT_VERSION
        {
            return Err(Error::Snapshot(format!(
                "snapshot version {v} is not {DETECTOR_SNAPSHOT_VERSION}"
            )));
        }
        let snap: DetectorSnapshot =
            postcard::from_bytes(bytes).map_err(|e| Error::Snapshot(e.to_string()))?;
        if snap.version != DETECTOR_SNAPSHOT_VERSION {
            return Err(Error::Snapshot(format!(
                "snapshot version {} is not {DETECTOR_SNAPSHOT_VERSION}",
                snap.version
            )));
        }
        snap.params.validate()?;
        let bad = |what: String| Error::Snapshot(what);
        let mut device_index = HashMap::with_capacity(snap.devices.len());
        for (i, (dev, d)) in snap.devices.iter().enumerate() {
            let m = d.metrics.len();
            let ok = m <= config.multivariate.max_metrics
                && d.row.len() == m
                && d.pca
                    .as_ref()
                    .is_none_or(|p| p.metrics() == m && p.valid(&config.multivariate))
                && u32::from(d.have | d.seen) < (1u32 << m);
            if !ok || device_index.insert(dev.clone(), i as u32).is_some() {
                return Err(bad(format!(
                    "device {dev}: model does not fit the configuration, or listed twice"
                )));
            }
        }
        let mut index =
            hashbrown::HashMap::with_capacity_and_hasher(snap.series.len(), RandomState::default());
        let mut series = snap.series;
        for (key, e) in &mut series {
            // Derived from the parameters: recomputed, not trusted.
            (e.threshold, e.fitted_interval) =
                cached(snap.params.series.get(key), &snap.params.ensemble);
        }
        for (i, (key, e)) in series.iter().enumerate() {
            e.state
                .check(&snap.params.ensemble)
                .map_err(|err| bad(format!("series {key}: {err}")))?;
            let dev = snap.devices.get(e.device as usize);
            let ok = e.interval.is_finite()
                && dev.is_some_and(|(id, d)| {
                    *id == key.device
                        && match e.slot {
                            Slot::In(s) => d.metrics.get(usize::from(s)) == Some(&key.metric),
                            Slot::Unassigned | Slot::Excluded => true,
                        }
                });
            if !ok || index.insert(key.clone(), i as u32).is_some() {
                return Err(bad(format!(
                    "series {key}: inconsistent with its device, or listed twice"
                )));
            }
        }
        Ok(Self {
            config,
            params: snap.params,
            series,
            index,
            devices: snap.devices,
            device_index,
        })
    }
}
