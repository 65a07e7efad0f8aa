//! Ground-truth labels: which anomaly was injected where, and their CSV form.

use std::fmt;
use std::io::Write;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The kinds of injected anomaly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// One sample far off the normal signal.
    Spike,
    /// The signal jumps by a constant offset for the window.
    LevelShift,
    /// The signal ramps away from normal over the window (then snaps back).
    Drift,
    /// The sensor repeats the same value for the window.
    Stuck,
    /// The signal becomes much noisier for the window.
    NoiseBurst,
    /// The device emits nothing for the window (all its metrics are labelled).
    Dropout,
}

impl AnomalyKind {
    /// Every kind, in a fixed order.
    pub const ALL: [AnomalyKind; 6] = [
        AnomalyKind::Spike,
        AnomalyKind::LevelShift,
        AnomalyKind::Drift,
        AnomalyKind::Stuck,
        AnomalyKind::NoiseBurst,
        AnomalyKind::Dropout,
    ];

    /// The label text used in CSV and JSON (`level_shift`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Spike => "spike",
            AnomalyKind::LevelShift => "level_shift",
            AnomalyKind::Drift => "drift",
            AnomalyKind::Stuck => "stuck",
            AnomalyKind::NoiseBurst => "noise_burst",
            AnomalyKind::Dropout => "dropout",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error from parsing an [`AnomalyKind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown anomaly kind {0:?} (expected spike, level_shift, drift, stuck, noise_burst or dropout)"
)]
pub struct UnknownKind(pub String);

impl FromStr for AnomalyKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AnomalyKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownKind(s.chars().take(40).collect()))
    }
}

/// One injected anomaly on one series: readings of `device`/`metric` with
/// `start_ms <= ts < end_ms` are anomalous. A dropout silences the whole device and is
/// labelled once per metric, so every series' gap has its own row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Device id.
    pub device: String,
    /// Metric name.
    pub metric: String,
    /// First anomalous instant (inclusive), ms since the epoch.
    pub start_ms: i64,
    /// End of the anomaly (exclusive), ms since the epoch.
    pub end_ms: i64,
    /// What was injected.
    pub kind: AnomalyKind,
}

/// Header line of the labels CSV.
pub const LABELS_CSV_HEADER: &str = "device,metric,start_ms,end_ms,kind";

/// Writes `labels` as CSV with header `device,metric,start_ms,end_ms,kind`.
///
/// Device ids and metric names only hold `[A-Za-z0-9_.:-]`, so no field needs quoting.
pub fn write_labels_csv<W: Write>(mut out: W, labels: &[Label]) -> Result<()> {
    let io = |source| Error::WriteLabels {
        target: "writer".to_owned(),
        source,
    };
    writeln!(out, "{LABELS_CSV_HEADER}").map_err(io)?;
    for l in labels {
        writeln!(
            out,
            "{},{},{},{},{}",
            l.device, l.metric, l.start_ms, l.end_ms, l.kind
        )
        .map_err(io)?;
    }
    out.flush().map_err(io)
}

/// Writes `labels` as CSV to the file at `path` (created or truncated).
pub fn save_labels_csv(path: &Path, labels: &[Label]) -> Result<()> {
    let target = || path.display().to_string();
    let file = std::fs::File::create(path).map_err(|source| Error::WriteLabels {
        target: target(),
        source,
    })?;
    write_labels_csv(std::io::BufWriter::new(file), labels).map_err(|e| match e {
        Error::WriteLabels { source, .. } => Error::WriteLabels {
            target: target(),
            source,
        },
        other => other,
    })
}
