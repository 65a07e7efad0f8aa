//! Local detection and local alerts: the same `edgepipe-detect` ensemble the server runs, on
//! the agent's readings before they are queued, so anomalies are found while offline.
//!
//! An anomaly becomes (1) readings `anomaly.<metric>` (score) in the `alerts` stream, which the
//! uplink sends before any telemetry, and (2) a local alert: a JSON message on a local MQTT topic
//! and/or a command hook, delivered by [`AlertSink`] without the server. The alert channel is
//! bounded (256); when it is full new alerts are dropped and counted in `alert_failures` (the
//! upstream copy in the queue is never dropped).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use edgepipe_detect::{EnsembleConfig, SeriesDetector};
use edgepipe_types::{Metric, Reading, TsSource, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::problem::Problem;
use crate::transform::glob;

/// `[detect]`: local anomaly detection.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Run detection. Default false.
    pub enabled: bool,
    /// Metric globs to score. Default `["*"]` (when empty).
    pub metrics: Vec<String>,
    /// Model artifact: an `EnsembleConfig` JSON file, the same the server uses. Default: none
    /// (the inline `ensemble` table, or the built-in defaults).
    pub model_file: Option<PathBuf>,
    /// Inline ensemble settings (ignored when `model_file` is set). Default: built-in.
    pub ensemble: Option<EnsembleConfig>,
    /// Most series tracked at once (bounded memory). Default 10000 (when 0).
    pub max_series: usize,
}

/// `[alerts]`: where local alerts go, independently of the uplink.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Local broker for alerts, `host:port`. Default: none.
    pub mqtt_addr: Option<String>,
    /// Topic for alerts. Default `edgepipe/agent/alerts` (when empty).
    pub mqtt_topic: String,
    /// Command run per alert (argv), with `EDGEPIPE_ALERT` set to the alert JSON. Default: none.
    pub command: Vec<String>,
}

impl DetectConfig {
    /// Loads the ensemble configuration, reporting problems under `detect`.
    pub fn ensemble(&self, problems: &mut Vec<Problem>) -> EnsembleConfig {
        let cfg = match &self.model_file {
            Some(p) => match std::fs::read(p) {
                Ok(bytes) => match serde_json::from_slice::<EnsembleConfig>(&bytes) {
                    Ok(c) => c,
                    Err(e) => {
                        problems.push(Problem::new(
                            "detect.model_file",
                            format!("{}: {e}", p.display()),
                        ));
                        EnsembleConfig::default()
                    }
                },
                Err(e) => {
                    problems.push(Problem::new(
                        "detect.model_file",
                        format!("{}: {e}", p.display()),
                    ));
                    EnsembleConfig::default()
                }
            },
            None => self.ensemble.unwrap_or_default(),
        };
        for e in cfg.problems() {
            problems.push(Problem::new("detect.ensemble", e.to_string()));
        }
        cfg
    }
}

/// One anomaly found locally.
#[derive(Debug, Clone, Serialize)]
pub struct Anomaly {
    /// The metric.
    pub metric: String,
    /// Event time.
    pub ts: i64,
    /// The value.
    pub value: f64,
    /// Calibrated score in [0, 1].
    pub score: f64,
}

/// Per-series detectors for one agent.
#[derive(Debug)]
pub struct LocalDetector {
    cfg: EnsembleConfig,
    globs: Vec<String>,
    series: HashMap<String, SeriesDetector>,
    max_series: usize,
}

impl LocalDetector {
    /// A detector set scoring metrics that match `cfg.metrics`.
    pub fn new(cfg: &DetectConfig, ensemble: EnsembleConfig) -> Self {
        Self {
            cfg: ensemble,
            globs: if cfg.metrics.is_empty() {
                vec!["*".into()]
            } else {
                cfg.metrics.clone()
            },
            series: HashMap::new(),
            max_series: if cfg.max_series == 0 {
                10_000
            } else {
                cfg.max_series
            },
        }
    }

    /// Scores `readings`; returns the anomalies (alarms) among them.
    pub fn observe(&mut self, readings: &[Reading]) -> Vec<Anomaly> {
        let mut out = Vec::new();
        for r in readings {
            let Some(x) = r.value.as_f64() else { continue };
            let m = r.metric.as_str();
            if !self.globs.iter().any(|g| glob(g, m)) {
                continue;
            }
            if !self.series.contains_key(m) {
                if self.series.len() >= self.max_series {
                    continue;
                }
                match SeriesDetector::new(self.cfg) {
                    Ok(d) => {
                        self.series.insert(m.to_string(), d);
                    }
                    Err(_) => continue,
                }
            }
            if let Some(d) = self.series.get_mut(m) {
                let a = d.update(r.ts, x);
                if a.alarm {
                    out.push(Anomaly {
                        metric: m.to_string(),
                        ts: r.ts,
                        value: x,
                        score: a.score,
                    });
                }
            }
        }
        out
    }
}

impl Anomaly {
    /// The reading that carries this anomaly upstream (`anomaly.<metric>` = score).
    pub fn reading(&self) -> Option<Reading> {
        Some(Reading {
            metric: Metric::new(format!("anomaly.{}", self.metric)).ok()?,
            ts: self.ts,
            value: Value::F64(self.score),
            ts_source: TsSource::Device,
        })
    }
}

/// Delivers local alerts (MQTT topic, command hook) from a bounded channel.
#[derive(Debug, Clone)]
pub struct AlertSink {
    tx: mpsc::Sender<Anomaly>,
    metrics: Arc<Metrics>,
}

impl AlertSink {
    /// Starts the delivery task.
    pub fn start(cfg: AlertsConfig, agent_id: String, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(deliver(cfg, agent_id, rx, metrics.clone()));
        Self { tx, metrics }
    }

    /// Queues an alert; when the channel is full the alert is dropped and counted.
    pub fn send(&self, a: Anomaly) {
        if self.tx.try_send(a).is_err() {
            self.metrics.alert_failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn deliver(
    cfg: AlertsConfig,
    agent_id: String,
    mut rx: mpsc::Receiver<Anomaly>,
    metrics: Arc<Metrics>,
) {
    let topic = if cfg.mqtt_topic.is_empty() {
        "edgepipe/agent/alerts".to_string()
    } else {
        cfg.mqtt_topic.clone()
    };
    let client = cfg.mqtt_addr.as_deref().and_then(|addr| {
        let (host, port) = addr.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        let mut opts =
            rumqttc::MqttOptions::new(format!("{agent_id}-alerts"), host.to_string(), port);
        opts.set_keep_alive(std::time::Duration::from_secs(30));
        let (client, mut el) = rumqttc::AsyncClient::new(opts, 64);
        tokio::spawn(async move {
            loop {
                if el.poll().await.is_err() {
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        });
        Some(client)
    });
    while let Some(a) = rx.recv().await {
        let json = serde_json::json!({"agent": agent_id, "anomaly": a}).to_string();
        if let Some(c) = &client
            && c.try_publish(&topic, rumqttc::QoS::AtLeastOnce, false, json.clone())
                .is_err()
        {
            metrics.alert_failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((prog, args)) = cfg.command.split_first() {
            let st = tokio::process::Command::new(prog)
                .args(args)
                .env("EDGEPIPE_ALERT", &json)
                .status()
                .await;
            if !st.is_ok_and(|s| s.success()) {
                metrics.alert_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A steady, slightly noisy series then one large spike: the default ensemble (the server's)
    /// raises exactly the spike, and the anomaly reading names the metric.
    pub(crate) fn series_with_spike() -> Vec<Reading> {
        (0..3000i64)
            .map(|i| {
                let noise = ((i * 7919) % 13) as f64 / 13.0 - 0.5;
                let v = if i == 2500 { 500.0 } else { 20.0 + noise };
                Reading {
                    metric: Metric::new("temp").unwrap_or_else(|e| panic!("{e}")),
                    ts: 1_700_000_000_000 + i * 1000,
                    value: Value::F64(v),
                    ts_source: TsSource::Device,
                }
            })
            .collect()
    }

    #[test]
    fn default_ensemble_flags_the_spike() {
        let mut d = LocalDetector::new(&DetectConfig::default(), EnsembleConfig::default());
        let found = d.observe(&series_with_spike());
        assert!(
            found
                .iter()
                .any(|a| a.ts == 1_700_000_000_000 + 2500 * 1000),
            "{found:?}"
        );
        assert!(found.len() <= 5, "too many alarms: {found:?}");
        let r = found[0].reading();
        assert_eq!(
            r.map(|r| r.metric.as_str().to_string()),
            Some("anomaly.temp".into())
        );
    }
}
