//! `type = "generator"` (a deterministic counter sensor, for tests and benchmarks) and
//! `type = "simulator"` (sine waves with injected anomalies, for demos).
//!
//! The generator's reading `i` is `<prefix>.s<i % series>` = `i` at `base + i * 1000 / rate` ms.
//! Its counter and base time are positions stored with the readings, so after a crash it resumes
//! at the first reading that is not on disk: every reading it ever produced exists exactly once,
//! which is what the kill -9 tests count.

use std::time::{Duration, Instant};

use edgepipe_types::{Metric, Reading, TsSource, Value};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::file::sleep_or_cancel;
use super::{Ctx, Error};
use crate::durations::dur;

/// `type = "generator"` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Readings per second. Default 1000.
    #[serde(default = "rate")]
    pub rate: u32,
    /// Number of series (metrics) the readings rotate over; at least `rate / 1000` so that
    /// timestamps stay unique per series. Default 10.
    #[serde(default = "series")]
    pub series: u32,
    /// Metric prefix. Default "gen".
    #[serde(default = "prefix")]
    pub prefix: String,
    /// Stop after this many readings in total. Default: never.
    #[serde(default)]
    pub limit: Option<u64>,
    /// How often a batch is produced. Default "20ms".
    #[serde(default = "tick", with = "dur")]
    pub tick: Duration,
}

fn rate() -> u32 {
    1000
}
fn series() -> u32 {
    10
}
fn prefix() -> String {
    "gen".into()
}
fn tick() -> Duration {
    Duration::from_millis(20)
}

/// Most readings the generator hands over at once.
const MAX_BATCH: u64 = 1000;

/// The generator's reading number `i`.
pub fn generated(prefix: &str, series: u32, rate: u32, base: i64, i: u64) -> Option<Reading> {
    let s = i % u64::from(series.max(1));
    Some(Reading {
        metric: Metric::new(format!("{prefix}.s{s}")).ok()?,
        ts: base
            .saturating_add(i64::try_from(i.saturating_mul(1000) / u64::from(rate.max(1))).ok()?),
        value: Value::I64(i64::try_from(i).ok()?),
        ts_source: TsSource::Device,
    })
}

/// Runs the generator until cancelled or `limit` is reached.
pub async fn run_generator(cfg: GeneratorConfig, ctx: Ctx) -> Result<(), Error> {
    let (k_count, k_base) = (ctx.key("counter"), ctx.key("base"));
    let mut next = ctx.positions.get(&k_count).copied().unwrap_or(0);
    let base = ctx
        .positions
        .get(&k_base)
        .and_then(|b| i64::try_from(*b).ok())
        .unwrap_or_else(|| ctx.clock.now_ms());
    let base_pos = u64::try_from(base).unwrap_or(0);
    let (start, first) = (Instant::now(), next);
    tracing::info!(collector = %ctx.name, next, "generator resuming");
    loop {
        if ctx.cancel.is_cancelled() {
            return Ok(());
        }
        let elapsed = start.elapsed().as_secs_f64();
        let mut target = first + (elapsed * f64::from(cfg.rate)) as u64;
        if let Some(limit) = cfg.limit {
            target = target.min(limit);
            if next >= limit {
                sleep_or_cancel(&ctx, Duration::from_secs(3600)).await;
                continue;
            }
        }
        if target > next {
            // Bound one batch so a long pause (or a full queue with the reject policy) does not
            // build one huge append that could never fit the disk budget.
            let end = target.min(next + MAX_BATCH);
            let readings: Vec<Reading> = (next..end)
                .filter_map(|i| generated(&cfg.prefix, cfg.series, cfg.rate, base, i))
                .collect();
            match ctx
                .send_durable(
                    readings,
                    vec![(k_count.clone(), end), (k_base.clone(), base_pos)],
                )
                .await
            {
                Ok(()) => next = end,
                Err(e) => {
                    // Refused (disk budget with reject): produce the same readings again later.
                    tracing::warn!(collector = %ctx.name, error = %e, "append refused; retrying");
                    sleep_or_cancel(&ctx, Duration::from_millis(200)).await;
                }
            }
        }
        sleep_or_cancel(&ctx, cfg.tick).await;
    }
}

/// `type = "simulator"` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Simulated devices. Default 5.
    #[serde(default = "devices")]
    pub devices: u32,
    /// Interval between readings of one device. Default "1s".
    #[serde(default = "second", with = "dur")]
    pub interval: Duration,
    /// Probability that a reading is a spike (an anomaly for the detector). Default 0.002.
    #[serde(default = "spike")]
    pub spike_probability: f64,
    /// Random seed. Default 1.
    #[serde(default = "seed")]
    pub seed: u64,
}

fn devices() -> u32 {
    5
}
fn second() -> Duration {
    Duration::from_secs(1)
}
fn spike() -> f64 {
    0.002
}
fn seed() -> u64 {
    1
}

/// Runs the simulator until cancelled.
pub async fn run_simulator(cfg: SimulatorConfig, ctx: Ctx) -> Result<(), Error> {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(cfg.seed);
    let mut tick = tokio::time::interval(cfg.interval.max(Duration::from_millis(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.cancel.cancelled() => return Ok(()),
        }
        let ts = ctx.clock.now_ms();
        let phase = ts as f64 / 60_000.0 * std::f64::consts::TAU;
        let mut readings = Vec::new();
        for d in 0..cfg.devices {
            let mut temp = 20.0 + 5.0 * (phase + f64::from(d)).sin() + rng.random_range(-0.2..0.2);
            if rng.random_bool(cfg.spike_probability.clamp(0.0, 1.0)) {
                temp += 40.0;
            }
            let pressure = 1.0 + 0.05 * (phase / 3.0).cos() + rng.random_range(-0.01..0.01);
            for (m, v) in [("temp", temp), ("pressure", pressure)] {
                if let Ok(metric) = Metric::new(format!("sim-{d}.{m}")) {
                    readings.push(Reading {
                        metric,
                        ts,
                        value: Value::F64(v),
                        ts_source: TsSource::Device,
                    });
                }
            }
        }
        ctx.send(readings).await?;
    }
}
