//! Deterministic fleet model: N devices x M metrics with realistic signals and labelled
//! anomalies.
//!
//! Every value is a pure function of `(config, device, metric, t)`: there is no hidden state,
//! so [`Fleet::tick`] can be called for any device at any time, in any order, from any number
//! of tasks, and two fleets built from the same [`FleetConfig`] agree exactly. Randomness comes
//! from a counter-based hash (SplitMix64) of the seed and the coordinates, not from a stateful
//! generator, which keeps results identical across platforms and dependency versions.
//!
//! # The normal signal
//! Each device has two shared latent factors, so its metrics move together:
//! - *load*: a daily cycle (peaking mid-afternoon UTC, with a per-device phase) plus a smooth
//!   random component changing over tens of minutes; temp, power, vibration, current, rpm, flow
//!   and CO2 rise with it, humidity and voltage fall with it;
//! - *weather*: a slow smooth random component (hours), driving temp, humidity and pressure.
//!
//! A metric is `base + daily·cycle + load·gain + weather·gain + trend·days + noise`, with
//! per-device variation of the base and gains, a slow linear trend since `start_ms`, and
//! Gaussian noise, rounded to the metric's usual precision.
//!
//! # Anomalies
//! Time is cut into epochs (6 h, or 200 sample periods if longer) from `start_ms`. In each
//! epoch of each device, anomalies arrive as a Poisson process of rate
//! [`FleetConfig::anomaly_rate`] per hour, never overlapping on one device, each confined to its
//! epoch, aligned to the sample grid `start_ms + k·interval`, and lasting at least one sample
//! (spike) or several (the others), so each is visible in any run that samples on that grid (or
//! on a grid shifted by less than one interval). [`Fleet::labels`] lists them.

mod config;
mod labels;
#[cfg(test)]
mod tests;

pub use config::{FleetConfig, MAX_DEVICES, MAX_METRICS};
pub use labels::{
    AnomalyKind, LABELS_CSV_HEADER, Label, UnknownKind, save_labels_csv, write_labels_csv,
};

use crate::Result;

const MS_PER_HOUR: f64 = 3_600_000.0;
const MS_PER_DAY: f64 = 86_400_000.0;
const TAU: f64 = std::f64::consts::TAU;
/// Beyond ±2^60 ms (36 million years) no anomalies are scheduled.
const TIME_LIMIT_MS: u64 = 1 << 60;

/// Shape of one named metric; device-level variation is applied on top.
#[derive(Debug, Clone, Copy)]
struct MetricSpec {
    name: &'static str,
    base: f64,
    /// Amplitude of the direct daily cycle.
    daily: f64,
    /// Gain on the device's shared load factor.
    load: f64,
    /// Gain on the device's shared weather factor.
    weather: f64,
    /// Standard deviation of the white noise.
    noise: f64,
    /// Largest trend, in units per day.
    trend: f64,
    /// Decimal places a real sensor would report.
    decimals: i32,
    /// Physically non-negative (values are clamped at 0 and anomalies push upwards).
    nonneg: bool,
}

#[expect(
    clippy::too_many_arguments,
    reason = "positional form keeps the metric table below readable as a table"
)]
const fn spec(
    name: &'static str,
    base: f64,
    daily: f64,
    load: f64,
    weather: f64,
    noise: f64,
    trend: f64,
    decimals: i32,
    nonneg: bool,
) -> MetricSpec {
    MetricSpec {
        name,
        base,
        daily,
        load,
        weather,
        noise,
        trend,
        decimals,
        nonneg,
    }
}

const NAMED: [MetricSpec; 10] = [
    spec("temp", 22.0, 2.5, 3.0, 1.5, 0.1, 0.3, 2, false),
    spec("power", 450.0, 60.0, 180.0, 0.0, 8.0, 5.0, 1, true),
    spec("vibration", 2.5, 0.1, 0.9, 0.0, 0.05, 0.05, 3, true),
    spec("humidity", 45.0, -6.0, -4.0, 5.0, 0.4, 0.5, 2, true),
    spec("pressure", 1013.0, 0.8, 0.0, 6.0, 0.1, 0.3, 2, true),
    spec("current", 2.0, 0.25, 0.8, 0.0, 0.03, 0.02, 3, true),
    spec("voltage", 230.0, -0.5, -2.0, 0.0, 0.3, 0.1, 2, true),
    spec("rpm", 1450.0, 20.0, 150.0, 0.0, 5.0, 3.0, 1, true),
    spec("flow", 30.0, 3.0, 8.0, 0.0, 0.4, 0.3, 2, true),
    spec("co2", 600.0, 120.0, 80.0, 0.0, 10.0, 5.0, 1, true),
];

/// Spec of metric `k`: a named one, or a generic `metric_k` whose shape is drawn from the seed.
fn metric_spec(seed: u64, k: usize) -> MetricSpec {
    if let Some(s) = NAMED.get(k) {
        return *s;
    }
    let u = |i: u64| unit(hash(&[seed, TAG_GENERIC, k as u64, i]));
    MetricSpec {
        name: "",
        base: 50.0 + 100.0 * u(0),
        daily: 2.0 + 8.0 * u(1),
        load: (u(2) - 0.5) * 20.0,
        weather: 2.0 * u(3),
        noise: 0.2 + 0.6 * u(4),
        trend: 1.0,
        decimals: 3,
        nonneg: false,
    }
}

// Hash stream tags, so independent quantities never share random numbers.
const TAG_GENERIC: u64 = 1;
const TAG_DEVICE: u64 = 2;
const TAG_LOAD: u64 = 3;
const TAG_WEATHER: u64 = 4;
const TAG_NOISE: u64 = 5;
const TAG_ANOMALY: u64 = 6;
const TAG_BURST: u64 = 7;

/// Per-device, per-metric variation on top of a [`MetricSpec`].
#[derive(Debug, Clone, Copy)]
struct SeriesParams {
    spec: MetricSpec,
    base: f64,
    gain: f64,
    /// Trend slope in units per day.
    slope: f64,
    /// Typical size of normal variation, the unit anomaly magnitudes are expressed in.
    scale: f64,
}

/// Shared latent factors of one device at one instant.
#[derive(Debug, Clone, Copy)]
struct Factors {
    cycle: f64,
    load: f64,
    weather: f64,
    days: f64,
}

/// One injected anomaly (internal form of a [`Label`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Anomaly {
    kind: AnomalyKind,
    metric: usize,
    start: i64,
    end: i64,
    /// +1 or -1.
    sign: f64,
    /// Magnitude in units of the series' scale.
    mag: f64,
    salt: u64,
}

/// A deterministic simulated fleet. Cheap to share (`&self` everywhere, no interior state).
#[derive(Debug, Clone)]
pub struct Fleet {
    cfg: FleetConfig,
    device_ids: Vec<String>,
    metric_names: Vec<String>,
    interval_ms: i64,
    epoch_ms: i64,
}

impl Fleet {
    /// Builds the fleet after validating `cfg`.
    pub fn new(cfg: FleetConfig) -> Result<Self> {
        cfg.validate()?;
        let width = cfg.devices.to_string().len().max(4);
        let device_ids = (1..=cfg.devices)
            .map(|i| format!("{}-{i:0width$}", cfg.device_prefix))
            .collect();
        let metric_names = (0..cfg.metrics)
            .map(|k| match NAMED.get(k) {
                Some(s) => s.name.to_owned(),
                None => format!("metric_{k}"),
            })
            .collect();
        // validate() bounds the interval to 1ms..=24h, so these fit comfortably.
        let interval_ms = i64::try_from(cfg.interval.as_millis()).unwrap_or(1).max(1);
        let epoch_ms = (6 * 3_600_000).max(200 * interval_ms);
        Ok(Self {
            cfg,
            device_ids,
            metric_names,
            interval_ms,
            epoch_ms,
        })
    }

    /// The configuration the fleet was built from.
    pub fn config(&self) -> &FleetConfig {
        &self.cfg
    }

    /// Device ids, index `i` is the device `tick(i, ..)` simulates: `sim-0001`, `sim-0002`, ...
    pub fn device_ids(&self) -> Vec<String> {
        self.device_ids.clone()
    }

    /// Id of device `index`, if it exists.
    pub fn device_id(&self, index: usize) -> Option<&str> {
        self.device_ids.get(index).map(String::as_str)
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        self.device_ids.len()
    }

    /// Metric names, in the order `tick` returns them.
    pub fn metric_names(&self) -> &[String] {
        &self.metric_names
    }

    /// The readings device `device_index` emits at `t_ms`: one `(metric, value)` per metric,
    /// in [`metric_names`](Self::metric_names) order.
    ///
    /// `None` during an injected dropout, and for a device index outside the fleet.
    pub fn tick(&self, device_index: usize, t_ms: i64) -> Option<Vec<(String, f64)>> {
        if device_index >= self.device_ids.len() {
            return None;
        }
        let active = self.active_anomaly(device_index, t_ms);
        if matches!(active, Some(a) if a.kind == AnomalyKind::Dropout) {
            return None;
        }
        let f = self.factors(device_index, t_ms);
        let out = (0..self.cfg.metrics)
            .map(|k| {
                let p = self.series(device_index, k);
                let clean = self.clean_raw(device_index, k, t_ms, &p, &f);
                let v = match active {
                    Some(a) if a.metric == k => self.apply(device_index, &a, &p, t_ms, clean),
                    _ => clean,
                };
                (self.metric_names[k].clone(), finish(&p.spec, v))
            })
            .collect();
        Some(out)
    }

    /// Ground truth: every anomaly of any device that overlaps `[from_ms, to_ms)`, ordered by
    /// start time, then device, then metric. Dropouts give one label per metric.
    ///
    /// The work is proportional to `devices x (to_ms - from_ms)`; ask for the range you ran.
    pub fn labels(&self, from_ms: i64, to_ms: i64) -> Vec<Label> {
        let mut out = Vec::new();
        if to_ms <= from_ms {
            return out;
        }
        let limit = TIME_LIMIT_MS as i64;
        let (from_ms, to_ms) = (from_ms.clamp(-limit, limit), to_ms.clamp(-limit, limit));
        if to_ms <= from_ms {
            return out;
        }
        let (e0, e1) = (self.epoch_of(from_ms), self.epoch_of(to_ms - 1));
        for dev in 0..self.device_ids.len() {
            for e in e0..=e1 {
                for a in self.anomalies_in_epoch(dev, e) {
                    if a.end <= from_ms || a.start >= to_ms {
                        continue;
                    }
                    let metrics = if a.kind == AnomalyKind::Dropout {
                        0..self.cfg.metrics
                    } else {
                        a.metric..a.metric + 1
                    };
                    for k in metrics {
                        out.push(Label {
                            device: self.device_ids[dev].clone(),
                            metric: self.metric_names[k].clone(),
                            start_ms: a.start,
                            end_ms: a.end,
                            kind: a.kind,
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (a.start_ms, &a.device, &a.metric).cmp(&(b.start_ms, &b.device, &b.metric))
        });
        out
    }

    /// Writes [`labels`](Self::labels) for `[from_ms, to_ms)` as CSV to `out`.
    pub fn write_labels_csv<W: std::io::Write>(
        &self,
        out: W,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<()> {
        write_labels_csv(out, &self.labels(from_ms, to_ms))
    }

    // ---- normal signal ----

    fn series(&self, dev: usize, k: usize) -> SeriesParams {
        let seed = self.cfg.seed;
        let spec = metric_spec(seed, k);
        let h = |i: u64| hash(&[seed, TAG_DEVICE, dev as u64, k as u64, i]);
        let base = spec.base * (1.0 + 0.05 * (2.0 * unit(h(0)) - 1.0));
        let gain = 0.8 + 0.4 * unit(h(1));
        let slope = spec.trend * (2.0 * unit(h(2)) - 1.0);
        let scale =
            (spec.daily.abs() + spec.load.abs() + spec.weather.abs()).max(10.0 * spec.noise);
        SeriesParams {
            spec,
            base,
            gain,
            slope,
            scale,
        }
    }

    fn factors(&self, dev: usize, t: i64) -> Factors {
        let seed = self.cfg.seed;
        let phase = (unit(hash(&[seed, TAG_DEVICE, dev as u64, u64::MAX])) - 0.5) * 0.1;
        // Peaks around 15:00 UTC, shifted by up to ±1.2 h per device.
        let day_frac = t.rem_euclid(86_400_000) as f64 / MS_PER_DAY;
        let cycle = (TAU * (day_frac - 9.0 / 24.0 - phase)).sin();
        let load = 0.7 * cycle + 0.5 * smooth(seed, dev, TAG_LOAD, t, 20 * 60_000);
        let weather = smooth(seed, dev, TAG_WEATHER, t, 3 * 3_600_000);
        let days = t.saturating_sub(self.cfg.start_ms) as f64 / MS_PER_DAY;
        Factors {
            cycle,
            load,
            weather,
            days,
        }
    }

    /// The value without anomalies and before rounding.
    fn clean_raw(&self, dev: usize, k: usize, t: i64, p: &SeriesParams, f: &Factors) -> f64 {
        let s = &p.spec;
        let noise = gaussian(hash(&[
            self.cfg.seed,
            TAG_NOISE,
            dev as u64,
            k as u64,
            t as u64,
        ]));
        p.base
            + p.gain * (s.daily * f.cycle + s.load * f.load + s.weather * f.weather)
            + p.slope * f.days
            + s.noise * noise
    }

    // ---- anomalies ----

    fn apply(&self, dev: usize, a: &Anomaly, p: &SeriesParams, t: i64, clean: f64) -> f64 {
        let offset = a.sign * a.mag * p.scale;
        match a.kind {
            AnomalyKind::Spike | AnomalyKind::LevelShift => clean + offset,
            AnomalyKind::Drift => {
                let span = (a.end - a.start) as f64;
                let progress = (((t - a.start) + self.interval_ms) as f64 / span).clamp(0.0, 1.0);
                clean + offset * progress
            }
            AnomalyKind::Stuck => {
                let f = self.factors(dev, a.start);
                self.clean_raw(dev, a.metric, a.start, p, &f)
            }
            AnomalyKind::NoiseBurst => {
                let sd = (8.0 * p.spec.noise).max(0.5 * p.scale) * a.mag;
                clean + sd * gaussian(hash(&[a.salt, TAG_BURST, t as u64]))
            }
            AnomalyKind::Dropout => clean,
        }
    }

    fn epoch_of(&self, t: i64) -> i64 {
        t.saturating_sub(self.cfg.start_ms)
            .div_euclid(self.epoch_ms)
    }

    fn active_anomaly(&self, dev: usize, t: i64) -> Option<Anomaly> {
        self.anomalies_in_epoch(dev, self.epoch_of(t))
            .into_iter()
            .find(|a| a.start <= t && t < a.end)
    }

    /// The anomalies of one device in one epoch, non-overlapping and in time order.
    fn anomalies_in_epoch(&self, dev: usize, epoch: i64) -> Vec<Anomaly> {
        let mut out = Vec::new();
        let rate = self.cfg.anomaly_rate;
        if rate <= 0.0 {
            return out;
        }
        let iv = self.interval_ms;
        let start_ms = self.cfg.start_ms;
        let Some(epoch_start) = epoch
            .checked_mul(self.epoch_ms)
            .and_then(|o| o.checked_add(start_ms))
        else {
            return out;
        };
        // Far outside any plausible run the model is anomaly-free, which keeps all the
        // arithmetic below clear of overflow.
        if epoch_start.unsigned_abs() > TIME_LIMIT_MS {
            return out;
        }
        let epoch_end = epoch_start + self.epoch_ms;
        let mut rng = SplitMix(hash(&[
            self.cfg.seed,
            TAG_ANOMALY,
            dev as u64,
            epoch as u64,
        ]));
        let mean_gap = MS_PER_HOUR / rate;
        let min_gap = 3 * iv;
        let mut t = epoch_start as f64;
        let mut prev_end = epoch_start;
        // Each loop iteration moves past at least one anomaly of >= 1 sample plus the gap, so
        // this is bounded by the epoch length; the cap is belt and braces.
        for _ in 0..100_000 {
            t += rng.exp() * mean_gap;
            let candidate = (t as i64).max(prev_end + min_gap);
            // Align up to the sample grid.
            let k = (candidate - start_ms + iv - 1).div_euclid(iv);
            let start = start_ms + k * iv;
            if start >= epoch_end {
                break;
            }
            let kind = AnomalyKind::ALL[rng.below(AnomalyKind::ALL.len())];
            let (min_ms, max_ms, min_samples, mag_lo, mag_hi) = match kind {
                AnomalyKind::Spike => (0.0, 0.0, 1, 2.0, 4.0),
                AnomalyKind::LevelShift => (3.0, 15.0, 5, 1.0, 2.0),
                AnomalyKind::Drift => (5.0, 20.0, 10, 1.5, 3.0),
                AnomalyKind::Stuck => (2.0, 10.0, 5, 0.0, 0.0),
                AnomalyKind::NoiseBurst => (1.0, 5.0, 5, 1.0, 1.5),
                AnomalyKind::Dropout => (0.5, 5.0, 3, 0.0, 0.0),
            };
            let dur_ms = (min_ms + (max_ms - min_ms) * rng.unit()) * 60_000.0;
            let samples = ((dur_ms / iv as f64).round() as i64).max(min_samples);
            let samples = if kind == AnomalyKind::Spike {
                1
            } else {
                samples
            };
            let end = start + samples * iv;
            let metric = rng.below(self.cfg.metrics);
            let spec = metric_spec(self.cfg.seed, metric);
            let up = rng.unit() < 0.5;
            let sign = if up || spec.nonneg { 1.0 } else { -1.0 };
            let mag = mag_lo + (mag_hi - mag_lo) * rng.unit();
            let salt = rng.next();
            if end > epoch_end {
                break;
            }
            out.push(Anomaly {
                kind,
                metric,
                start,
                end,
                sign,
                mag,
                salt,
            });
            prev_end = end;
            t = end as f64;
        }
        out
    }
}

/// Clamps and rounds a raw value to what the sensor would report.
fn finish(spec: &MetricSpec, v: f64) -> f64 {
    let v = if spec.nonneg { v.max(0.0) } else { v };
    let p = 10f64.powi(spec.decimals);
    let r = (v * p).round() / p;
    if r.is_finite() { r } else { 0.0 }
}

// ---- counter-based randomness ----

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64 finaliser: a bijective, well-mixed hash of one u64.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hash(parts: &[u64]) -> u64 {
    parts.iter().fold(0x243F_6A88_85A3_08D3, |acc, &p| {
        mix(acc.wrapping_add(GOLDEN) ^ p)
    })
}

/// Uniform in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Standard normal from one hash (Box–Muller on two derived uniforms).
fn gaussian(x: u64) -> f64 {
    let u1 = unit(mix(x ^ 0x5555_5555_5555_5555));
    let u2 = unit(mix(x.wrapping_add(GOLDEN)));
    (-2.0 * (1.0 - u1).ln()).sqrt() * (TAU * u2).cos()
}

/// Smooth random signal (value noise with smoothstep between knots `knot_ms` apart), ~N(0, 1)
/// at the knots.
fn smooth(seed: u64, dev: usize, tag: u64, t: i64, knot_ms: i64) -> f64 {
    let i = t.div_euclid(knot_ms);
    let f = t.rem_euclid(knot_ms) as f64 / knot_ms as f64;
    let a = gaussian(hash(&[seed, tag, dev as u64, i as u64]));
    let b = gaussian(hash(&[seed, tag, dev as u64, i.wrapping_add(1) as u64]));
    let s = f * f * (3.0 - 2.0 * f);
    a + (b - a) * s
}

/// Small sequential generator for the per-epoch anomaly schedule.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }
    fn unit(&mut self) -> f64 {
        unit(self.next())
    }
    fn exp(&mut self) -> f64 {
        -(1.0 - self.unit()).ln()
    }
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}
