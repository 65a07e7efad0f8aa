//! `type = "system"`: the gateway's own health from `/proc` (CPU busy %, memory, load, uptime)
//! and the agent process's RSS.

use std::time::Duration;

use edgepipe_types::{Metric, Reading, TsSource, Value};
use serde::{Deserialize, Serialize};

use super::{Ctx, Error};
use crate::durations::dur;

/// `type = "system"` settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// Sampling interval. Default "10s".
    #[serde(default = "ten", with = "dur")]
    pub interval: Duration,
}

fn ten() -> Duration {
    Duration::from_secs(10)
}

fn cpu_times() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((v.iter().sum(), idle))
}

fn meminfo(key: &str) -> Option<f64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// The agent process's resident set size in bytes.
pub fn own_rss() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024.0)
}

/// Samples until cancelled.
pub async fn run(cfg: SystemConfig, ctx: Ctx) -> Result<(), Error> {
    let mut tick = tokio::time::interval(cfg.interval.max(Duration::from_millis(100)));
    let mut prev = cpu_times();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.cancel.cancelled() => return Ok(()),
        }
        let ts = ctx.clock.now_ms();
        let mut values: Vec<(&str, f64)> = Vec::new();
        let cur = cpu_times();
        if let (Some((t0, i0)), Some((t1, i1))) = (prev, cur)
            && t1 > t0
        {
            let busy = 1.0 - (i1.saturating_sub(i0)) as f64 / (t1 - t0) as f64;
            values.push(("system.cpu_busy_pct", busy * 100.0));
        }
        prev = cur;
        if let Some(v) = meminfo("MemTotal:") {
            values.push(("system.mem_total_bytes", v));
        }
        if let Some(v) = meminfo("MemAvailable:") {
            values.push(("system.mem_available_bytes", v));
        }
        if let Some(load) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        {
            values.push(("system.load1", load));
        }
        if let Some(up) = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        {
            values.push(("system.uptime_s", up));
        }
        if let Some(rss) = own_rss() {
            values.push(("agent.rss_bytes", rss));
        }
        let readings = values
            .into_iter()
            .filter_map(|(m, v)| {
                Some(Reading {
                    metric: Metric::new(m).ok()?,
                    ts,
                    value: Value::F64(v),
                    ts_source: TsSource::Device,
                })
            })
            .collect();
        ctx.send(readings).await?;
    }
}
