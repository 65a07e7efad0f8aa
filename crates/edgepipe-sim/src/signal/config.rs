//! [`FleetConfig`]: the knobs of the simulated fleet.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Largest fleet accepted (device ids and per-tick work stay bounded).
pub const MAX_DEVICES: usize = 1_000_000;
/// Most metrics per device accepted.
pub const MAX_METRICS: usize = 1_000;

/// What the simulated fleet looks like. Everything it produces is a pure function of this
/// configuration, a device index and a timestamp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    /// Number of devices (ids `{device_prefix}-0001` ...).
    pub devices: usize,
    /// Metrics per device; the first ten have physical names (temp, power, vibration, ...),
    /// the rest are `metric_{k}`.
    pub metrics: usize,
    /// Seed: the same seed gives the same readings and the same labels.
    pub seed: u64,
    /// Per-device sample period, e.g. `"1s"`.
    #[serde(with = "edgepipe_types::duration_serde")]
    pub interval: Duration,
    /// Expected injected anomalies per device-hour (0 disables them).
    pub anomaly_rate: f64,
    /// Simulated time (ms since the epoch) at which the fleet starts; sample times are
    /// `start_ms + k * interval`. Live runs usually set this to the wall clock (`edgepipe_types::SystemClock`).
    pub start_ms: i64,
    /// Device id prefix.
    pub device_prefix: String,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 50,
            metrics: 5,
            seed: 42,
            interval: Duration::from_secs(1),
            anomaly_rate: 2.0,
            // 2023-11-14T22:13:20Z: a fixed default keeps runs reproducible.
            start_ms: 1_700_000_000_000,
            device_prefix: "sim".to_owned(),
        }
    }
}

impl FleetConfig {
    /// Small fleet for tests.
    pub fn test_config() -> Self {
        Self {
            devices: 3,
            metrics: 4,
            interval: Duration::from_millis(200),
            ..Self::default()
        }
    }

    /// Checks every field, reporting all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.devices > MAX_DEVICES {
            problems.push(format!("devices: {} is above {MAX_DEVICES}", self.devices));
        }
        if self.metrics == 0 || self.metrics > MAX_METRICS {
            problems.push(format!(
                "metrics: {} is outside 1..={MAX_METRICS}",
                self.metrics
            ));
        }
        let ms = self.interval.as_millis();
        if ms == 0 || ms > 86_400_000 {
            problems.push(format!(
                "interval: {:?} is outside 1ms..=24h",
                self.interval
            ));
        }
        if !self.anomaly_rate.is_finite() || self.anomaly_rate < 0.0 || self.anomaly_rate > 3600.0 {
            problems.push(format!(
                "anomaly_rate: {} is outside 0..=3600 per device-hour",
                self.anomaly_rate
            ));
        }
        // Keep the simulated clock far from overflow for any realistic run.
        if self.start_ms.unsigned_abs() > 100_000_000_000_000 {
            problems.push(format!("start_ms: {} is out of range", self.start_ms));
        }
        let probe = format!("{}-{}", self.device_prefix, self.devices.max(1));
        if let Err(e) = edgepipe_types::DeviceId::new(probe) {
            problems.push(format!("device_prefix: {e}"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig {
                what: "fleet",
                problems,
            })
        }
    }
}
