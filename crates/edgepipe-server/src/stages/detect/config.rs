//! `[detect]`: the detection stage's settings.

use std::time::Duration;

use edgepipe_detect::DetectorConfig;
use serde::{Deserialize, Serialize};

use crate::stages::models::RetrainConfig;

/// `[detect]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Run the detection stage.
    pub enabled: bool,
    /// Checkpoint detector state (and store events) at least this often.
    #[serde(with = "edgepipe_lake::duration_serde")]
    pub checkpoint_interval: Duration,
    /// Read newly durable WAL records at most this often (under load: fewer, larger reads
    /// instead of one per group commit). Events are raised at most this much later.
    #[serde(with = "edgepipe_lake::duration_serde")]
    pub read_interval: Duration,
    /// Readings received more than this after their event time are replayed: scored, but their
    /// events are not handed to the case manager.
    #[serde(with = "edgepipe_lake::duration_serde")]
    pub late_after: Duration,
    /// The live detector's settings.
    pub detector: DetectorConfig,
    /// Scheduled retraining of the model artifact.
    pub retrain: RetrainConfig,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            checkpoint_interval: Duration::from_secs(10),
            read_interval: Duration::from_millis(20),
            late_after: Duration::from_secs(300),
            detector: DetectorConfig::default(),
            retrain: RetrainConfig::default(),
        }
    }
}
