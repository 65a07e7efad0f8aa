//! A series' identity ([`SeriesKey`]: one metric of one device), shared by the live detector
//! and the model parameters. A leaf: it uses neither.

use std::fmt;

use edgepipe_types::{DeviceId, Metric};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A series' identity: one metric of one device. Serialised as `"device/metric"` (neither
/// identifier may contain `/`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SeriesKey {
    /// The device.
    pub device: DeviceId,
    /// The metric.
    pub metric: Metric,
}

impl SeriesKey {
    /// The key of `metric` of `device`.
    pub fn new(device: DeviceId, metric: Metric) -> Self {
        Self { device, metric }
    }

    /// Parses `"device/metric"`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |reason: String| Error::Params(format!("series key {s:?}: {reason}"));
        let (d, m) = s
            .split_once('/')
            .ok_or_else(|| bad("expected device/metric".into()))?;
        Ok(Self {
            device: DeviceId::new(d).map_err(|e| bad(e.to_string()))?,
            metric: Metric::new(m).map_err(|e| bad(e.to_string()))?,
        })
    }
}

impl TryFrom<String> for SeriesKey {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<SeriesKey> for String {
    fn from(k: SeriesKey) -> String {
        k.to_string()
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.device, self.metric)
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}
