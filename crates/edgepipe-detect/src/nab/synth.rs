//! Generated look-alike families for the tuning protocol (`nab_eval --families`): labelled
//! series of two kinds that NAB's public split lacks and that unseen data is known to hold,
//! written in NAB's layout so the same loader and scorer read them.
//!
//! - `synthCountBursty`: 5-minute event counts (social-media volume, request counts). A
//!   negative-binomial process (gamma-mixed Poisson) around a rate with a daily cycle and a
//!   weekend dip, with *ordinary* bursts (several a day, 1.5–5x for a few readings, decaying) that
//!   are not anomalies. Anomalies: a surge far beyond any ordinary burst (8–20x for 2–8 hours),
//!   a sustained level change (x2.5–4 or x0.2–0.35 for 1–2 days) or an outage (no events for
//!   3–12 hours on a busy series).
//! - `synthSlowDrift`: a machine temperature every 5 minutes: a level with a daily cycle, AR(1)
//!   noise and ordinary set-point changes of 1–2 noise standard deviations that come and go.
//!   Anomaly: a slow degradation that takes the temperature out of its operating band (a drift
//!   of 3–6 times the series' whole spread, cycle and set-points included, over 6–36 hours, up
//!   or down) and ends in a failure (the machine falls to ambient for 3–12 hours, then
//!   restarts).
//!
//! - [`correlated_sensors`]: one machine's four sensors every minute for a week (load, and a
//!   temperature, current and vibration that follow it), with labelled *broken correlations*:
//!   a metric stops following the load while staying inside its own usual range (the case the
//!   per-device multivariate model exists for). Written as a CSV with a `label` column for
//!   `edgepipe eval csv`.
//!
//! Everything here is generated from these descriptions with a seeded generator; nothing is
//! fitted to or copied from held-out data. Windows follow NAB's rule (10 % of the file's length
//! shared among its anomalies, centred on each onset) for counts. A degradation's window runs
//! from the drift's onset to half an hour after the failure, so NAB's scoring rewards flagging
//! the drift early and gives almost nothing for noticing the failure itself (a detection at the
//! window's end earns about zero); `labels/synth_failures.json` records each drift's onset and
//! failure rows, so "detected before the step" can be checked.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Gamma, Normal, Poisson};

use crate::{Error, Result};

/// The generated families, in the order they are written.
pub const FAMILIES: [&str; 2] = ["synthCountBursty", "synthSlowDrift"];

/// Readings per file: 28 days at 5 minutes.
pub const ROWS: usize = 8064;

/// Reading interval in milliseconds (5 minutes).
const STEP_MS: i64 = 300_000;
/// Readings per day.
const DAY: f64 = 288.0;
/// First timestamp: Monday 2026-01-05 00:00 UTC.
const START_MS: i64 = 1_767_571_200_000;

/// A slow degradation's onset and failure rows in a `synthSlowDrift` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    /// First row of the drift.
    pub onset: usize,
    /// Row at which the machine fails (the step).
    pub step: usize,
}

/// One generated file.
#[derive(Debug, Clone)]
pub struct SynthFile {
    /// Family (category folder).
    pub family: &'static str,
    /// File name without `.csv`.
    pub name: String,
    /// One value per row.
    pub values: Vec<f64>,
    /// Anomaly windows as row ranges (inclusive).
    pub windows: Vec<(usize, usize)>,
    /// Degradations (slow-drift family only).
    pub failures: Vec<Failure>,
}

/// Generates `per_family` files of every family from `seed` (deterministic).
pub fn generate(seed: u64, per_family: usize) -> Vec<SynthFile> {
    let mut out = Vec::with_capacity(2 * per_family);
    for i in 0..per_family {
        let mut rng =
            StdRng::seed_from_u64(seed ^ (0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(i as u64 + 1)));
        out.push(count_file(&mut rng, i));
    }
    for i in 0..per_family {
        let mut rng = StdRng::seed_from_u64(
            seed ^ 0x5151 ^ (0xc2b2_ae3d_27d4_eb4f_u64.wrapping_mul(i as u64 + 1)),
        );
        out.push(drift_file(&mut rng, i));
    }
    out
}

/// Writes `files` under `dir` in NAB's layout (`data/<family>/<name>.csv`,
/// `labels/combined_windows.json`) plus `labels/synth_failures.json`.
pub fn write(dir: &Path, files: &[SynthFile]) -> Result<()> {
    let mut windows: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut failures: BTreeMap<String, Vec<Failure>> = BTreeMap::new();
    for f in files {
        let cat = dir.join("data").join(f.family);
        fs::create_dir_all(&cat).map_err(|e| Error::io("create", &cat, e))?;
        let mut text = String::with_capacity(f.values.len() * 32);
        text.push_str("timestamp,value\n");
        for (i, v) in f.values.iter().enumerate() {
            text.push_str(&timestamp(i));
            text.push(',');
            text.push_str(&format_value(*v));
            text.push('\n');
        }
        let path = cat.join(format!("{}.csv", f.name));
        fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
        let key = format!("{}/{}.csv", f.family, f.name);
        windows.insert(
            key.clone(),
            f.windows
                .iter()
                .map(|&(a, b)| (label_timestamp(a), label_timestamp(b)))
                .collect(),
        );
        if !f.failures.is_empty() {
            failures.insert(key, f.failures.clone());
        }
    }
    let labels = dir.join("labels");
    fs::create_dir_all(&labels).map_err(|e| Error::io("create", &labels, e))?;
    for (name, json) in [
        (
            "combined_windows.json",
            serde_json::to_string_pretty(&windows),
        ),
        (
            "synth_failures.json",
            serde_json::to_string_pretty(&failures),
        ),
    ] {
        let path = labels.join(name);
        let json = json.map_err(|e| Error::Labels {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fs::write(&path, json).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}

/// Reads `labels/synth_failures.json` of a directory [`write`] produced.
pub fn read_failures(dir: &Path) -> Result<BTreeMap<String, Vec<Failure>>> {
    let path = dir.join("labels").join("synth_failures.json");
    let text = fs::read_to_string(&path).map_err(|e| Error::io("read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Labels {
        path,
        reason: e.to_string(),
    })
}

fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

fn timestamp(row: usize) -> String {
    format_ms(START_MS + row as i64 * STEP_MS)
}

fn format_ms(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

fn label_timestamp(row: usize) -> String {
    format!("{}.000000", timestamp(row))
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn log_uniform(rng: &mut StdRng, lo: f64, hi: f64) -> f64 {
    rng.random_range(lo.ln()..hi.ln()).exp()
}

/// Onsets of `n` anomalies after the probationary part, at least `gap` rows apart.
fn onsets(rng: &mut StdRng, n: usize, lo: usize, hi: usize, gap: usize) -> Vec<usize> {
    loop {
        let mut v: Vec<usize> = (0..n).map(|_| rng.random_range(lo..hi)).collect();
        v.sort_unstable();
        if v.windows(2).all(|w| w[1] - w[0] >= gap) {
            return v;
        }
    }
}

/// NAB's window rule: 10 % of the file shared among its anomalies, centred on each onset.
fn nab_windows(onsets: &[usize], rows: usize) -> Vec<(usize, usize)> {
    let half = rows / 10 / onsets.len().max(1) / 2;
    onsets
        .iter()
        .map(|&o| (o.saturating_sub(half), (o + half).min(rows - 1)))
        .collect()
}

#[derive(Clone, Copy)]
enum CountAnomaly {
    Surge { mult: f64, len: usize },
    Shift { factor: f64, len: usize },
    Outage { len: usize },
}

fn count_file(rng: &mut StdRng, i: usize) -> SynthFile {
    let base = log_uniform(rng, 2.0, 400.0);
    let daily = rng.random_range(0.2..0.8);
    let phase = rng.random_range(0.0..std::f64::consts::TAU);
    let weekend = rng.random_range(0.5..1.0);
    let shape = log_uniform(rng, 3.0, 30.0);
    let bursts_per_day = rng.random_range(1.0..4.0);
    let n = if rng.random_bool(0.5) { 1 } else { 2 };
    let at = onsets(rng, n, ROWS / 5, ROWS * 19 / 20, ROWS / 5);
    let quietest = base * (1.0 - daily) * weekend;
    let kinds: Vec<CountAnomaly> = at
        .iter()
        .map(|_| match rng.random_range(0..3) {
            0 => CountAnomaly::Surge {
                mult: rng.random_range(8.0..20.0),
                len: rng.random_range(24..96),
            },
            2 if quietest >= 8.0 => CountAnomaly::Outage {
                len: rng.random_range(36..144),
            },
            _ => CountAnomaly::Shift {
                factor: if rng.random_bool(0.6) {
                    rng.random_range(2.5..4.0)
                } else {
                    rng.random_range(0.2..0.35)
                },
                len: rng.random_range(288..576),
            },
        })
        .collect();
    let mut values = Vec::with_capacity(ROWS);
    let mut excess = 0.0f64;
    let mut decay = 0.8f64;
    for t in 0..ROWS {
        let day_of_week = (t as f64 / DAY) as usize % 7;
        let season = (1.0 + daily * (std::f64::consts::TAU * t as f64 / DAY + phase).sin())
            * if day_of_week >= 5 { weekend } else { 1.0 };
        if rng.random_bool((bursts_per_day / DAY).min(1.0)) {
            excess += log_uniform(rng, 1.5, 5.0) - 1.0;
            decay = (-1.0 / rng.random_range(3.0f64..12.0)).exp();
        }
        let mut rate = base * season * (1.0 + excess);
        excess *= decay;
        for (&o, k) in at.iter().zip(&kinds) {
            match *k {
                CountAnomaly::Surge { mult, len } if t >= o && t < o + len => rate *= mult,
                CountAnomaly::Surge { mult, len } if t >= o + len && t < o + 2 * len => {
                    let f = (t - o - len) as f64 / len as f64;
                    rate *= mult.powf(1.0 - f);
                }
                CountAnomaly::Shift { factor, len } if t >= o && t < o + len => rate *= factor,
                CountAnomaly::Outage { len } if t >= o && t < o + len => rate = 0.0,
                _ => {}
            }
        }
        values.push(negative_binomial(rng, rate, shape));
    }
    SynthFile {
        family: FAMILIES[0],
        name: format!("counts_{i:02}"),
        values,
        windows: nab_windows(&at, ROWS),
        failures: Vec::new(),
    }
}

/// A gamma-mixed Poisson count with mean `mean` and shape `shape` (variance
/// `mean + mean² / shape`).
fn negative_binomial(rng: &mut StdRng, mean: f64, shape: f64) -> f64 {
    if mean.is_nan() || mean <= 0.0 {
        return 0.0;
    }
    let lambda = Gamma::new(shape, mean / shape).map_or(mean, |g| g.sample(rng));
    if lambda.is_nan() || lambda <= 0.0 {
        return 0.0;
    }
    Poisson::new(lambda).map_or(lambda.round(), |p| p.sample(rng))
}

fn drift_file(rng: &mut StdRng, i: usize) -> SynthFile {
    let level = rng.random_range(50.0..90.0);
    let daily = rng.random_range(0.5..3.0);
    let phase = rng.random_range(0.0..std::f64::consts::TAU);
    let phi: f64 = rng.random_range(0.8..0.97);
    let sd = rng.random_range(0.5..2.0);
    let innovation = Normal::new(0.0, sd * (1.0 - phi * phi).sqrt()).ok();
    let onset = rng.random_range(ROWS * 3 / 10..ROWS * 7 / 10);
    let drift_len = rng.random_range(72..432);
    // The whole spread of normal operation: noise, cycle (a sine's sd is amplitude / √2) and
    // the set-point changes (about a quarter of the time at ±1.5 sd).
    let spread = (sd * sd * (1.0 + 0.25 * 2.25) + daily * daily / 2.0).sqrt();
    let rise = rng.random_range(3.0..6.0) * spread * if rng.random_bool(0.7) { 1.0 } else { -1.0 };
    let step = onset + drift_len;
    let down_len = rng.random_range(36..144);
    let ambient = level - rng.random_range(20.0..40.0);
    let restart = step + down_len;
    let restart_len = 12;
    let mut values = Vec::with_capacity(ROWS);
    let mut noise = 0.0f64;
    // Ordinary set-point changes: (start, length, size), ramped over 6 readings each way.
    let mut setpoint: Option<(usize, usize, f64)> = None;
    for t in 0..ROWS {
        noise = phi * noise + innovation.map_or(0.0, |n| n.sample(rng));
        if setpoint.is_none_or(|(s, l, _)| t >= s + l)
            && !(onset.saturating_sub(144)..restart + restart_len).contains(&t)
            && rng.random_bool(1.0 / (2.0 * DAY))
        {
            let size =
                rng.random_range(1.0..2.0) * sd * if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            setpoint = Some((t, rng.random_range(24..144), size));
        }
        let sp = setpoint.map_or(0.0, |(s, l, size)| {
            let into = t.saturating_sub(s) as f64;
            let left = (s + l).saturating_sub(t) as f64;
            size * (into / 6.0).min(1.0) * (left / 6.0).min(1.0)
        });
        let cycle = daily * (std::f64::consts::TAU * t as f64 / DAY + phase).sin();
        let running = level + cycle + sp + noise;
        let v = if t < onset {
            running
        } else if t < step {
            running + rise * (t - onset) as f64 / drift_len as f64
        } else if t < restart {
            ambient + 0.2 * noise
        } else if t < restart + restart_len {
            let f = (t - restart) as f64 / restart_len as f64;
            ambient + f * (running - ambient)
        } else {
            running
        };
        values.push((v * 1000.0).round() / 1000.0);
    }
    SynthFile {
        family: FAMILIES[1],
        name: format!("machine_{i:02}"),
        values,
        windows: vec![(onset, (step + 6).min(ROWS - 1))],
        failures: vec![Failure { onset, step }],
    }
}

/// A multivariate labelled series: one device's metrics on a shared clock.
#[derive(Debug, Clone)]
pub struct MultiFile {
    /// File name without `.csv`.
    pub name: String,
    /// Milliseconds since the epoch, one per row.
    pub timestamps: Vec<i64>,
    /// `(metric, values)`, one per column.
    pub columns: Vec<(String, Vec<f64>)>,
    /// Whether each row lies in an anomaly.
    pub labels: Vec<bool>,
}

/// Rows of a [`correlated_sensors`] file: a week of 1-minute readings.
pub const MULTI_ROWS: usize = 10_080;

/// One machine's load, temperature, current and vibration every minute for a week, with three
/// labelled broken correlations (1–4 hours each, after the first two days): the temperature
/// stops following the load, the current falls to 80 % of what the load draws, or the
/// vibration behaves as if the load were 30 points off. Each metric stays inside its own
/// usual range; only the relation to the load is wrong. The load changes at each onset, so the
/// broken relation shows.
pub fn correlated_sensors(seed: u64, i: usize) -> MultiFile {
    let mut rng =
        StdRng::seed_from_u64(seed ^ 0xa076_1d64_78bd_642f_u64.wrapping_mul(i as u64 + 1));
    let minute = 60_000i64;
    let day = 1440.0;
    let at = onsets(&mut rng, 3, 2 * 1440, MULTI_ROWS - 300, 600);
    let spans: Vec<(usize, usize, u8)> = at
        .iter()
        .enumerate()
        .map(|(k, &o)| (o, o + rng.random_range(60..240), ((k + i) % 3) as u8))
        .collect();
    let noise = |rng: &mut StdRng, sd: f64| Normal::new(0.0, sd).map_or(0.0, |n| n.sample(rng));
    let phase = rng.random_range(0.0..std::f64::consts::TAU);
    let mut setpoint = 0.0f64;
    let mut target = 0.0f64;
    let (mut temp_lag, mut temp_ar) = (0.0f64, 0.0f64);
    let mut frozen_temp = 0.0;
    let mut cols: [Vec<f64>; 4] = Default::default();
    let mut labels = Vec::with_capacity(MULTI_ROWS);
    for t in 0..MULTI_ROWS {
        // Production changes: a new set-point every few hours, and one at each onset.
        if rng.random_bool(1.0 / 180.0) || spans.iter().any(|s| s.0 == t) {
            let step = rng.random_range(10.0..20.0);
            target = if target + step > 20.0 {
                target - step
            } else {
                target + step
            };
        }
        setpoint += (target - setpoint) / 15.0;
        let cycle = 15.0 * (std::f64::consts::TAU * t as f64 / day + phase).sin();
        let load = (55.0 + cycle + setpoint + noise(&mut rng, 2.0)).clamp(0.0, 100.0);
        let span = spans.iter().find(|s| s.0 <= t && t < s.1);
        temp_lag += (load - temp_lag) / 20.0;
        temp_ar = 0.9 * temp_ar + noise(&mut rng, 0.25);
        let mut temp = 40.0 + 0.3 * temp_lag + temp_ar;
        let mut current = 5.0 + 0.1 * load + noise(&mut rng, 0.3);
        let mut vibration = 1.0 + 0.02 * load + noise(&mut rng, 0.05);
        match span.map(|s| (s.0, s.2)) {
            Some((o, 0)) => {
                if t == o {
                    frozen_temp = temp - temp_ar;
                }
                temp = frozen_temp + temp_ar;
            }
            Some((_, 1)) => current = 5.0 + 0.08 * load + noise(&mut rng, 0.3),
            Some(_) => {
                // As if the load were 30 points off, the way that stays in the usual range.
                let shifted = if load + 30.0 <= 85.0 {
                    load + 30.0
                } else {
                    load - 30.0
                };
                vibration = 1.0 + 0.02 * shifted + noise(&mut rng, 0.05);
            }
            None => {}
        }
        for (c, v) in cols.iter_mut().zip([load, temp, current, vibration]) {
            c.push((v * 1000.0).round() / 1000.0);
        }
        labels.push(span.is_some());
    }
    let [load, temp, current, vibration] = cols;
    MultiFile {
        name: format!("machine_sensors_{i:02}"),
        timestamps: (0..MULTI_ROWS as i64)
            .map(|r| START_MS + r * minute)
            .collect(),
        columns: vec![
            ("load".into(), load),
            ("temp".into(), temp),
            ("current".into(), current),
            ("vibration".into(), vibration),
        ],
        labels,
    }
}

/// Writes `file` as `DIR/<name>.csv`: `timestamp,<metrics...>,label`.
pub fn write_multi(dir: &Path, file: &MultiFile) -> Result<std::path::PathBuf> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create", dir, e))?;
    let mut text = String::from("timestamp");
    for (name, _) in &file.columns {
        text.push(',');
        text.push_str(name);
    }
    text.push_str(",label\n");
    for (r, ts) in file.timestamps.iter().enumerate() {
        text.push_str(&format_ms(*ts));
        for (_, v) in &file.columns {
            text.push(',');
            text.push_str(&format_value(v[r]));
        }
        text.push_str(if file.labels[r] { ",1\n" } else { ",0\n" });
    }
    let path = dir.join(format!("{}.csv", file.name));
    fs::write(&path, text).map_err(|e| Error::io("write", &path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nab::{NabCorpus, parse_timestamp};

    #[test]
    fn correlated_sensors_break_only_the_relation() {
        let f = correlated_sensors(3, 0);
        assert_eq!(f.columns.len(), 4);
        assert!(f.columns.iter().all(|(_, v)| v.len() == MULTI_ROWS));
        let labelled = f.labels.iter().filter(|l| **l).count();
        assert!((180..=720).contains(&labelled), "{labelled}");
        // Inside the anomalies every metric that follows the load stays within its own normal
        // range (give or take a tenth of it); the load itself is the cause, not a symptom.
        for (name, v) in f.columns.iter().skip(1) {
            let normal: Vec<f64> = v
                .iter()
                .zip(&f.labels)
                .filter(|(_, l)| !**l)
                .map(|(x, _)| *x)
                .collect();
            let lo = normal.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = normal.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let slack = 0.1 * (hi - lo);
            for (x, _) in v.iter().zip(&f.labels).filter(|(_, l)| **l) {
                assert!(
                    *x >= lo - slack && *x <= hi + slack,
                    "{name}: {x} outside [{lo}, {hi}]"
                );
            }
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = write_multi(dir.path(), &f).expect("write");
        let text = fs::read_to_string(path).expect("read");
        assert!(text.starts_with("timestamp,load,temp,current,vibration,label\n"));
        assert_eq!(text.lines().count(), MULTI_ROWS + 1);
    }

    #[test]
    fn timestamps_round_trip_through_the_nab_parser() {
        for row in [0, 1, 287, 288, 8063] {
            let ms = parse_timestamp(&timestamp(row));
            assert_eq!(ms, Some(START_MS + row as i64 * STEP_MS), "row {row}");
        }
        assert_eq!(timestamp(0), "2026-01-05 00:00:00");
    }

    #[test]
    fn generated_families_load_as_a_nab_corpus_and_are_deterministic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = generate(7, 2);
        write(dir.path(), &files).expect("write");
        let corpus = NabCorpus::load(dir.path()).expect("load");
        assert_eq!(corpus.files.len(), 4);
        assert_eq!(corpus.categories(), FAMILIES.to_vec());
        assert!(corpus.window_count >= 4);
        let again = generate(7, 2);
        assert!(files.iter().zip(&again).all(|(a, b)| a.values == b.values));
        let failures = read_failures(dir.path()).expect("failures");
        assert_eq!(failures.len(), 2);
        for f in failures.values().flatten() {
            assert!(f.onset < f.step && f.step < ROWS);
        }
        // Counts are non-negative integers; the drift file fails to ambient at its step.
        for f in files.iter().filter(|f| f.family == FAMILIES[0]) {
            assert!(f.values.iter().all(|v| *v >= 0.0 && v.fract() == 0.0));
        }
        for f in files.iter().filter(|f| f.family == FAMILIES[1]) {
            let fail = f.failures[0];
            let before = f.values[fail.step - 1];
            let after = f.values[fail.step + 1];
            assert!(before - after > 10.0, "{before} -> {after}");
        }
    }
}
