//! Evaluation of the live [`Detector`] against labelled incidents (the simulator's fleet):
//! [`run_fleet`] drives a detector over a fleet of devices sampled on a fixed grid, as the
//! server's detection stage would see it, and [`evaluate`] scores its events.
//!
//! Scoring rules (the same for every kind):
//! - An *incident* is one injected anomaly on one device: its kind, interval `[start, end)` and
//!   the metrics it touched (every metric for a dropout). [`incidents`] groups per-series labels
//!   into incidents.
//! - An event *detects* an incident when it is on the same device, names one of the incident's
//!   metrics or no metric (device-wide findings: multivariate, device silence), and its time is
//!   in `[start, end + grace)`, `grace` being [`EvalOptions::grace_samples`] sample intervals
//!   (a dropout is only noticed once the device has been quiet for a while; a level shift's
//!   return to normal is part of the incident).
//! - Recall: detected incidents / incidents. Precision: events that detect some incident /
//!   events. F1 is their harmonic mean. Detection delay of a detected incident: from its start to
//!   its first detecting event, in sample intervals.
//! - Only incidents that start in `[from, to)` count for recall and delay, and only events in
//!   `[from, to)` for precision (the first part of a run is the detectors' warm-up); an event
//!   may still detect an incident that began in the warm-up.
//!
//! [`score_on_labels`] evaluates a model version on operators' verdicts instead (confirmed
//! anomalies and false positives from cases), and [`raise_thresholds_for_false_positives`]
//! moves a series' fitted threshold above what its labelled false positives scored.

use std::collections::{BTreeMap, HashMap};

use edgepipe_types::{DeviceId, Metric, TimestampMs};
use serde::Serialize;

use crate::live::{Detector, DetectorConfig, Event, EventKind, SeriesKey};
use crate::model::ModelParams;

/// One injected anomaly on one device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Device id.
    pub device: String,
    /// Metrics it touched.
    pub metrics: Vec<String>,
    /// First anomalous instant, ms.
    pub start_ms: i64,
    /// End (exclusive), ms.
    pub end_ms: i64,
    /// Kind, as the label names it (`spike`, `level_shift`, ...).
    pub kind: String,
}

/// Groups per-series labels `(device, metric, start_ms, end_ms, kind)` into incidents (labels
/// of one device with the same interval and kind are one incident), ordered by start.
pub fn incidents<'a>(
    labels: impl IntoIterator<Item = (&'a str, &'a str, i64, i64, &'a str)>,
) -> Vec<Incident> {
    let mut by: BTreeMap<(i64, String, i64, String), Vec<String>> = BTreeMap::new();
    for (device, metric, start, end, kind) in labels {
        by.entry((start, device.to_owned(), end, kind.to_owned()))
            .or_default()
            .push(metric.to_owned());
    }
    by.into_iter()
        .map(|((start_ms, device, end_ms, kind), metrics)| Incident {
            device,
            metrics,
            start_ms,
            end_ms,
            kind,
        })
        .collect()
}

/// What counts, and how generously.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EvalOptions {
    /// The fleet's sample interval, ms (delays are reported in these units).
    pub interval_ms: i64,
    /// Sample intervals after an incident's end in which an event still detects it.
    pub grace_samples: i64,
    /// Start of the scored part of the run (after warm-up), ms.
    pub from_ms: i64,
    /// End of the run, ms.
    pub to_ms: i64,
}

/// Results for one kind of incident.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KindReport {
    /// Kind.
    pub kind: String,
    /// Incidents of this kind.
    pub incidents: usize,
    /// Of which detected.
    pub detected: usize,
    /// `detected / incidents`.
    pub recall: f64,
    /// Median detection delay, sample intervals.
    pub median_delay_samples: Option<f64>,
}

/// Events of one kind and how many detected nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventReport {
    /// `anomaly`, `multivariate`, `silence` or `gap`.
    pub kind: String,
    /// Events of this kind in the scored part.
    pub events: usize,
    /// Of which detected no incident.
    pub false_positives: usize,
    /// The false ones by the detector that led them (`strongest`; `-` when none is named).
    pub false_by_detector: BTreeMap<String, usize>,
}

/// The evaluation of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalReport {
    /// What counted.
    pub options: EvalOptions,
    /// Incidents in the scored part.
    pub incidents: usize,
    /// Of which detected.
    pub detected: usize,
    /// Events in the scored part.
    pub events: usize,
    /// Events that detected some incident.
    pub true_events: usize,
    /// `true_events / events` (1 when there were no events).
    pub precision: f64,
    /// `detected / incidents` (1 when there were no incidents).
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
    /// Median detection delay over detected incidents, sample intervals.
    pub median_delay_samples: Option<f64>,
    /// Per incident kind.
    pub by_kind: Vec<KindReport>,
    /// Per event kind.
    pub by_event: Vec<EventReport>,
    /// Incidents nobody detected (for inspection).
    pub missed: Vec<Incident>,
}

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn event_kind(k: EventKind) -> &'static str {
    match k {
        EventKind::Anomaly => "anomaly",
        EventKind::Multivariate => "multivariate",
        EventKind::Silence => "silence",
        EventKind::Gap => "gap",
    }
}

/// Scores `events` against `incidents` (see the module docs for the rules).
pub fn evaluate(incidents: &[Incident], events: &[Event], opts: EvalOptions) -> EvalReport {
    let grace = opts.grace_samples.max(0).saturating_mul(opts.interval_ms);
    let is_scored = |i: &Incident| i.start_ms >= opts.from_ms && i.start_ms < opts.to_ms;
    // Events match any incident (one that began in the warm-up and still runs is a true
    // detection, not a false positive); recall and delays count the scored ones only.
    let mut by_device: HashMap<&str, Vec<usize>> = HashMap::new();
    for (n, i) in incidents.iter().enumerate() {
        by_device.entry(i.device.as_str()).or_default().push(n);
    }
    let mut first_hit: Vec<Option<i64>> = vec![None; incidents.len()];
    let mut by_event: BTreeMap<&'static str, (usize, usize, BTreeMap<String, usize>)> =
        BTreeMap::new();
    let (mut n_events, mut n_true) = (0usize, 0usize);
    for e in events {
        if e.ts < opts.from_ms || e.ts >= opts.to_ms {
            continue;
        }
        n_events += 1;
        let mut hit = false;
        for &n in by_device
            .get(e.device.as_str())
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let i = &incidents[n];
            let metric_ok = e
                .metric
                .as_ref()
                .is_none_or(|m| i.metrics.iter().any(|x| x == m.as_str()));
            if metric_ok && e.ts >= i.start_ms && e.ts < i.end_ms.saturating_add(grace) {
                hit = true;
                let f = &mut first_hit[n];
                *f = Some(f.map_or(e.ts, |t| t.min(e.ts)));
            }
        }
        let entry = by_event.entry(event_kind(e.kind)).or_default();
        entry.0 += 1;
        if hit {
            n_true += 1;
        } else {
            entry.1 += 1;
            let by = e.explanation.strongest.map_or("-", |k| k.name());
            *entry.2.entry(by.to_owned()).or_default() += 1;
        }
    }
    let interval = opts.interval_ms.max(1) as f64;
    let mut kinds: BTreeMap<&str, (usize, usize, Vec<f64>)> = BTreeMap::new();
    let mut all_delays = Vec::new();
    let mut missed = Vec::new();
    let mut n_scored = 0usize;
    let mut detected = 0usize;
    for (n, i) in incidents.iter().enumerate().filter(|(_, i)| is_scored(i)) {
        n_scored += 1;
        let k = kinds.entry(i.kind.as_str()).or_default();
        k.0 += 1;
        match first_hit[n] {
            Some(t) => {
                k.1 += 1;
                detected += 1;
                let d = (t - i.start_ms) as f64 / interval;
                k.2.push(d);
                all_delays.push(d);
            }
            None => missed.push(i.clone()),
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let precision = ratio(n_true, n_events);
    let recall = ratio(detected, n_scored);
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    EvalReport {
        options: opts,
        incidents: n_scored,
        detected,
        events: n_events,
        true_events: n_true,
        precision,
        recall,
        f1,
        median_delay_samples: median(&mut all_delays),
        by_kind: kinds
            .into_iter()
            .map(|(kind, (n, d, mut delays))| KindReport {
                kind: kind.to_owned(),
                incidents: n,
                detected: d,
                recall: ratio(d, n),
                median_delay_samples: median(&mut delays),
            })
            .collect(),
        by_event: by_event
            .into_iter()
            .map(
                |(kind, (events, false_positives, false_by_detector))| EventReport {
                    kind: kind.to_owned(),
                    events,
                    false_positives,
                    false_by_detector,
                },
            )
            .collect(),
        missed,
    }
}

/// Drives `detector` over a fleet sampled every `interval_ms` in `[start_ms, end_ms)`, as the
/// detection stage sees it: `sample(device_index, t)` returns the device's readings at `t`
/// (`None` when it sends nothing), every reading is scored in time order, and the silence
/// clock ticks every `tick_ms` of fleet time. `progress(t)` is called once per tick. Returns
/// every event, in the order raised. Readings whose metric name is not a valid [`Metric`] are
/// skipped.
pub fn run_fleet<F, P>(
    detector: &mut Detector,
    devices: &[DeviceId],
    (start_ms, end_ms): (TimestampMs, TimestampMs),
    interval_ms: i64,
    tick_ms: i64,
    mut sample: F,
    mut progress: P,
) -> Vec<Event>
where
    F: FnMut(usize, TimestampMs) -> Option<Vec<(String, f64)>>,
    P: FnMut(TimestampMs),
{
    let mut events = Vec::new();
    let mut keys: HashMap<(usize, String), Option<SeriesKey>> = HashMap::new();
    let interval = interval_ms.max(1);
    let tick = tick_ms.max(interval);
    let mut next_tick = start_ms + tick;
    let mut t = start_ms;
    while t < end_ms {
        for (d, device) in devices.iter().enumerate() {
            let Some(values) = sample(d, t) else {
                continue;
            };
            for (name, v) in values {
                let key = keys
                    .entry((d, name))
                    .or_insert_with_key(|(_, name)| {
                        Metric::new(name.clone())
                            .ok()
                            .map(|m| SeriesKey::new(device.clone(), m))
                    })
                    .clone();
                let Some(key) = key else {
                    continue;
                };
                let s = detector.score(&key, t, v);
                events.extend(s.event.map(|e| *e));
                events.extend(s.device_event.map(|e| *e));
            }
        }
        t += interval;
        if t >= next_tick {
            events.extend(detector.tick(t));
            progress(t);
            next_tick += tick;
        }
    }
    events
}

/// An operator's verdict on one series over an interval (from a case): `confirmed` anomalies
/// are what a model should fire on, `false_positive` intervals what it should stay quiet on.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledInterval {
    /// The series.
    pub key: SeriesKey,
    /// Start, ms.
    pub start_ms: i64,
    /// End (inclusive), ms.
    pub end_ms: i64,
    /// `true` for a confirmed anomaly, `false` for a false positive.
    pub confirmed: bool,
}

/// How a model does on operators' labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    /// Confirmed intervals.
    pub confirmed: usize,
    /// Of which the model fired in (from the start to `grace` after the end).
    pub detected: usize,
    /// False-positive intervals.
    pub false_positive: usize,
    /// Of which the model still fired in.
    pub fired_on_false: usize,
    /// `detected / (detected + fired_on_false)` (1 when it never fired).
    pub precision: f64,
    /// `detected / confirmed` (1 when there are none).
    pub recall: f64,
    /// Harmonic mean.
    pub f1: f64,
    /// Median time from a confirmed interval's start to the first anomalous reading, ms.
    pub median_delay_ms: Option<f64>,
}

impl LabelScore {
    /// Whether `self` is better than `other`: a higher F1, or the same F1 with fewer firings on
    /// false positives.
    pub fn improves_on(&self, other: &LabelScore) -> bool {
        self.f1 > other.f1 + 1e-9
            || ((self.f1 - other.f1).abs() <= 1e-9 && self.fired_on_false < other.fired_on_false)
    }
}

/// One series replayed: every reading's `(ts, score, anomalous)`.
type Replayed = Vec<(i64, f64, bool)>;

/// Per labelled series, every reading's `(ts, score, anomalous)` under `params` (the series
/// replayed alone, in time order, without silence or multivariate findings).
fn replay(
    params: &ModelParams,
    histories: &BTreeMap<SeriesKey, Vec<(i64, f64)>>,
    labels: &[LabelledInterval],
) -> crate::Result<BTreeMap<SeriesKey, Replayed>> {
    let mut cfg = DetectorConfig::default();
    cfg.silence.enabled = false;
    cfg.multivariate.enabled = false;
    let mut det = Detector::new(cfg, params.clone())?;
    let mut out = BTreeMap::new();
    for l in labels {
        if out.contains_key(&l.key) {
            continue;
        }
        let Some(h) = histories.get(&l.key) else {
            continue;
        };
        let scored: Replayed = h
            .iter()
            .map(|&(ts, v)| {
                let s = det.score(&l.key, ts, v);
                (ts, s.score, s.anomalous)
            })
            .collect();
        out.insert(l.key.clone(), scored);
    }
    Ok(out)
}

fn in_interval(l: &LabelledInterval, grace_ms: i64, ts: i64) -> bool {
    ts >= l.start_ms && ts <= l.end_ms.saturating_add(grace_ms)
}

/// Scores `params` on operators' labels: each labelled series' history is replayed through a
/// detector with these parameters, and each interval counts as fired when a reading from its
/// start to `grace_ms` after its end was anomalous.
pub fn score_on_labels(
    params: &ModelParams,
    histories: &BTreeMap<SeriesKey, Vec<(i64, f64)>>,
    labels: &[LabelledInterval],
    grace_ms: i64,
) -> crate::Result<LabelScore> {
    let runs = replay(params, histories, labels)?;
    let (mut confirmed, mut detected, mut negatives, mut fired_neg) = (0, 0, 0, 0);
    let mut delays = Vec::new();
    for l in labels {
        let first = runs.get(&l.key).and_then(|r| {
            r.iter()
                .find(|(ts, _, a)| *a && in_interval(l, grace_ms, *ts))
                .map(|(ts, _, _)| *ts)
        });
        if l.confirmed {
            confirmed += 1;
            if let Some(t) = first {
                detected += 1;
                delays.push((t - l.start_ms).max(0) as f64);
            }
        } else {
            negatives += 1;
            fired_neg += usize::from(first.is_some());
        }
    }
    let ratio = |a: usize, b: usize| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    let precision = ratio(detected, detected + fired_neg);
    let recall = ratio(detected, confirmed);
    let f1 = if precision + recall > 0.0 {
        2.0 * precision * recall / (precision + recall)
    } else {
        0.0
    };
    Ok(LabelScore {
        confirmed,
        detected,
        false_positive: negatives,
        fired_on_false: fired_neg,
        precision,
        recall,
        f1,
        median_delay_ms: median(&mut delays),
    })
}

/// Raises the threshold of each series with a false-positive label above the highest score its
/// history reaches inside those intervals (to `grace_ms` after their end, plus `margin`), unless
/// that would silence one of the series' confirmed intervals. Returns the series changed and their new thresholds.
pub fn raise_thresholds_for_false_positives(
    params: &mut ModelParams,
    histories: &BTreeMap<SeriesKey, Vec<(i64, f64)>>,
    labels: &[LabelledInterval],
    margin: f64,
    grace_ms: i64,
) -> crate::Result<Vec<(SeriesKey, f64)>> {
    let runs = replay(params, histories, labels)?;
    // Peaks over the same span [`score_on_labels`] looks at.
    let peak = |l: &LabelledInterval| {
        runs.get(&l.key).map_or(0.0, |r| {
            r.iter()
                .filter(|(ts, _, _)| in_interval(l, grace_ms, *ts))
                .map(|(_, s, _)| *s)
                .fold(0.0, f64::max)
        })
    };
    let mut raised = Vec::new();
    let keys: std::collections::BTreeSet<&SeriesKey> = labels
        .iter()
        .filter(|l| !l.confirmed)
        .map(|l| &l.key)
        .collect();
    for key in keys {
        let current = params
            .series
            .get(key)
            .and_then(|p| p.alarm_score)
            .unwrap_or(params.ensemble.onset.alarm_score);
        let of_key = || labels.iter().filter(move |l| &l.key == key);
        let worst_false = of_key()
            .filter(|l| !l.confirmed)
            .map(peak)
            .fold(0.0, f64::max);
        let wanted = (worst_false + margin).min(1.0);
        if wanted <= current {
            continue;
        }
        // A confirmed interval that fires today must keep firing.
        let keeps_confirmed = of_key()
            .filter(|l| l.confirmed)
            .map(peak)
            .all(|p| p < current || p >= wanted);
        if !keeps_confirmed || wanted >= 1.0 {
            continue;
        }
        params.series.entry(key.clone()).or_default().alarm_score = Some(wanted);
        raised.push((key.clone(), wanted));
    }
    Ok(raised)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::Explanation;

    fn ev(device: &str, metric: Option<&str>, ts: i64, kind: EventKind) -> Event {
        Event {
            kind,
            device: DeviceId::new(device).expect("device"),
            metric: metric.map(|m| Metric::new(m).expect("metric")),
            ts,
            score: 0.9,
            threshold: 0.5,
            explanation: Explanation::default(),
        }
    }

    #[test]
    fn scores_recall_precision_and_delay_by_the_rules() {
        let labels = [
            ("d1", "temp", 1_000, 5_000, "spike"),
            ("d1", "temp", 20_000, 30_000, "level_shift"),
            ("d2", "temp", 10_000, 40_000, "dropout"),
            ("d2", "power", 10_000, 40_000, "dropout"),
            ("d3", "power", 50_000, 51_000, "spike"),
            // Starts in the warm-up: not scored.
            ("d3", "temp", 0, 900, "spike"),
        ];
        let inc = incidents(labels);
        assert_eq!(inc.len(), 5, "the dropout's two labels are one incident");
        let events = vec![
            ev("d1", Some("temp"), 3_000, EventKind::Anomaly), // spike, delay 2 samples
            ev("d1", Some("temp"), 31_000, EventKind::Anomaly), // level shift within grace
            ev("d1", Some("power"), 25_000, EventKind::Anomaly), // other metric: FP
            ev("d2", None, 20_000, EventKind::Silence),        // device-wide: dropout
            ev("d3", Some("temp"), 60_000, EventKind::Anomaly), // nothing there: FP
            ev("d3", Some("temp"), 500, EventKind::Anomaly),   // warm-up: ignored
        ];
        let r = evaluate(
            &inc,
            &events,
            EvalOptions {
                interval_ms: 1_000,
                grace_samples: 2,
                from_ms: 1_000,
                to_ms: 100_000,
            },
        );
        assert_eq!((r.incidents, r.detected), (4, 3));
        assert_eq!((r.events, r.true_events), (5, 3));
        assert!((r.precision - 0.6).abs() < 1e-12);
        assert!((r.recall - 0.75).abs() < 1e-12);
        assert!((r.f1 - 2.0 * 0.6 * 0.75 / 1.35).abs() < 1e-12);
        // Delays 2 (spike), 11 (level shift), 10 (dropout): median 10.
        assert_eq!(r.median_delay_samples, Some(10.0));
        assert_eq!(r.missed.len(), 1);
        assert_eq!(r.missed[0].device, "d3");
        let anomaly = r
            .by_event
            .iter()
            .find(|e| e.kind == "anomaly")
            .expect("anomaly");
        assert_eq!((anomaly.events, anomaly.false_positives), (4, 2));
        let spike = r.by_kind.iter().find(|k| k.kind == "spike").expect("spike");
        assert_eq!((spike.incidents, spike.detected), (2, 1));
    }

    #[test]
    fn a_run_without_incidents_or_events_is_perfect_not_nan() {
        let r = evaluate(
            &[],
            &[],
            EvalOptions {
                interval_ms: 1_000,
                grace_samples: 0,
                from_ms: 0,
                to_ms: 1,
            },
        );
        assert_eq!((r.precision, r.recall, r.f1), (1.0, 1.0, 1.0));
        assert_eq!(r.median_delay_samples, None);
    }

    /// A labelled false positive raises its series' threshold above what it scored, the
    /// confirmed anomaly on the same series still fires, and the score on the labels improves.
    #[test]
    fn false_positive_labels_raise_the_threshold_and_the_score_improves() {
        let key = SeriesKey::new(
            DeviceId::new("d1").expect("device"),
            Metric::new("temp").expect("metric"),
        );
        let mut x: u64 = 7;
        let mut noise = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.2
        };
        let mut h: Vec<(i64, f64)> = (0..3000)
            .map(|i| (i as i64 * 1000, 20.0 + (i as f64 / 300.0).sin() + noise()))
            .collect();
        for p in &mut h[1200..1204] {
            p.1 += 4.0; // a bump operators called a false positive
        }
        h[2500].1 += 40.0; // a real spike
        let histories: BTreeMap<SeriesKey, Vec<(i64, f64)>> = [(key.clone(), h)].into();
        let labels = vec![
            LabelledInterval {
                key: key.clone(),
                start_ms: 1_200_000,
                end_ms: 1_203_000,
                confirmed: false,
            },
            LabelledInterval {
                key: key.clone(),
                start_ms: 2_500_000,
                end_ms: 2_500_000,
                confirmed: true,
            },
        ];
        let mut params = ModelParams::default();
        let before = score_on_labels(&params, &histories, &labels, 5_000).expect("score");
        assert_eq!(
            (before.detected, before.fired_on_false),
            (1, 1),
            "{before:?}"
        );
        let raised =
            raise_thresholds_for_false_positives(&mut params, &histories, &labels, 0.01, 5_000)
                .expect("raise");
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert!(raised[0].1 > params.ensemble.onset.alarm_score);
        let after = score_on_labels(&params, &histories, &labels, 5_000).expect("score");
        assert_eq!((after.detected, after.fired_on_false), (1, 0), "{after:?}");
        assert!(after.improves_on(&before) && !before.improves_on(&after));
        assert_eq!(after.median_delay_ms, Some(0.0));
    }
}
