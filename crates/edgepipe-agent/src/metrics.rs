//! Every counter and gauge the agent exposes, named in one place: on the local `/metrics`
//! (Prometheus text) and as the agent's own telemetry upstream (`agent.*` readings in the
//! `health` stream). Stream names label queue gauges; device ids never label anything.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Per-stream gauges and counters.
#[derive(Debug, Default)]
pub struct StreamMetrics {
    /// Records in the queue not yet acknowledged.
    pub queue_depth: AtomicU64,
    /// Bytes of the stream's queue on disk.
    pub queue_bytes: AtomicU64,
    /// Age in ms of the oldest unacknowledged record (0 when empty).
    pub oldest_unsent_age_ms: AtomicI64,
    /// Readings acknowledged by the server.
    pub sent_readings: AtomicU64,
    /// Batches acknowledged by the server.
    pub sent_batches: AtomicU64,
    /// Readings shed by the disk budget (recorded in gaps).
    pub shed_readings: AtomicU64,
    /// Gaps recorded.
    pub gaps: AtomicU64,
    /// Batches the server refused (MQTT 5 reason code); kept in the server's dead letters.
    pub refused_batches: AtomicU64,
}

/// The agent's metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Readings handed to the pipeline by collectors.
    pub received: AtomicU64,
    /// Readings appended to a queue (after transforms).
    pub written: AtomicU64,
    /// Readings or messages a collector could not parse, by reason.
    pub rejected: Mutex<BTreeMap<String, u64>>,
    /// Readings removed on purpose by transforms (filter, deadband, drop, aggregation input).
    pub transformed_away: AtomicU64,
    /// Readings lost because an append was refused (reject policy, fsync failure).
    pub dropped: AtomicU64,
    /// Anomaly events raised by local detection.
    pub anomalies: AtomicU64,
    /// Local alert deliveries that failed (MQTT publish or hook).
    pub alert_failures: AtomicU64,
    /// Uplink connection attempts that failed.
    pub connect_failures: AtomicU64,
    /// 1 while the uplink is connected.
    pub connected: AtomicU64,
    /// 0 normal, 1 catch-up, 2 offline.
    pub send_state: AtomicU64,
    /// Readings per second acknowledged over the last health interval.
    pub sent_per_sec: AtomicU64,
    /// Per-stream metrics.
    pub streams: Mutex<BTreeMap<String, std::sync::Arc<StreamMetrics>>>,
}

impl Metrics {
    /// The metrics of `stream`, created on first use.
    pub fn stream(&self, stream: &str) -> std::sync::Arc<StreamMetrics> {
        let mut m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(stream.to_string()).or_default().clone()
    }

    /// Counts one rejection for `reason`.
    pub fn reject(&self, reason: &str, n: u64) {
        let mut m = self.rejected.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(reason.to_string()).or_default() += n;
    }

    fn streams(&self) -> Vec<(String, std::sync::Arc<StreamMetrics>)> {
        let m = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Total readings acknowledged by the server, all streams.
    pub fn sent_total(&self) -> u64 {
        self.streams()
            .iter()
            .map(|(_, s)| s.sent_readings.load(Ordering::Relaxed))
            .sum()
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut line = |name: &str, help: &str, kind: &str, samples: Vec<(String, String)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        let one = |v: u64| vec![(String::new(), v.to_string())];
        line(
            "edgepipe_agent_readings_received_total",
            "Readings handed to the pipeline by collectors (a batch resubmitted after a refused append counts again).",
            "counter",
            one(ld(&self.received)),
        );
        line(
            "edgepipe_agent_readings_written_total",
            "Readings durably appended to the queue.",
            "counter",
            one(ld(&self.written)),
        );
        let rejected = self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), v.to_string()))
            .collect();
        line(
            "edgepipe_agent_readings_rejected_total",
            "Input a collector could not parse.",
            "counter",
            rejected,
        );
        line(
            "edgepipe_agent_readings_transformed_away_total",
            "Readings removed by filter, deadband, drop or aggregation.",
            "counter",
            one(ld(&self.transformed_away)),
        );
        line(
            "edgepipe_agent_readings_dropped_total",
            "Readings lost because an append was refused.",
            "counter",
            one(ld(&self.dropped)),
        );
        line(
            "edgepipe_agent_anomalies_total",
            "Anomaly events raised by local detection.",
            "counter",
            one(ld(&self.anomalies)),
        );
        line(
            "edgepipe_agent_alert_failures_total",
            "Local alert deliveries that failed.",
            "counter",
            one(ld(&self.alert_failures)),
        );
        line(
            "edgepipe_agent_uplink_connect_failures_total",
            "Failed uplink connection attempts.",
            "counter",
            one(ld(&self.connect_failures)),
        );
        line(
            "edgepipe_agent_uplink_connected",
            "1 while connected to the server.",
            "gauge",
            one(ld(&self.connected)),
        );
        line(
            "edgepipe_agent_uplink_state",
            "Send state: 0 normal, 1 catch-up, 2 offline.",
            "gauge",
            one(ld(&self.send_state)),
        );
        line(
            "edgepipe_agent_sent_per_second",
            "Readings acknowledged per second over the last health interval.",
            "gauge",
            one(ld(&self.sent_per_sec)),
        );
        let streams = self.streams();
        let per = |f: &dyn Fn(&StreamMetrics) -> String| -> Vec<(String, String)> {
            streams
                .iter()
                .map(|(n, s)| (format!("{{stream=\"{n}\"}}"), f(s)))
                .collect()
        };
        line(
            "edgepipe_agent_queue_depth",
            "Unacknowledged batches in the queue.",
            "gauge",
            per(&|s| ld(&s.queue_depth).to_string()),
        );
        line(
            "edgepipe_agent_queue_bytes",
            "Bytes of the queue on disk.",
            "gauge",
            per(&|s| ld(&s.queue_bytes).to_string()),
        );
        line(
            "edgepipe_agent_oldest_unsent_age_seconds",
            "Age of the oldest unacknowledged batch.",
            "gauge",
            per(&|s| {
                format!(
                    "{:.3}",
                    s.oldest_unsent_age_ms.load(Ordering::Relaxed) as f64 / 1000.0
                )
            }),
        );
        line(
            "edgepipe_agent_readings_sent_total",
            "Readings acknowledged by the server.",
            "counter",
            per(&|s| ld(&s.sent_readings).to_string()),
        );
        line(
            "edgepipe_agent_batches_sent_total",
            "Batches acknowledged by the server.",
            "counter",
            per(&|s| ld(&s.sent_batches).to_string()),
        );
        line(
            "edgepipe_agent_readings_shed_total",
            "Readings shed by the disk budget and recorded in gaps.",
            "counter",
            per(&|s| ld(&s.shed_readings).to_string()),
        );
        line(
            "edgepipe_agent_gaps_total",
            "Gaps recorded.",
            "counter",
            per(&|s| ld(&s.gaps).to_string()),
        );
        line(
            "edgepipe_agent_batches_refused_total",
            "Batches the server refused with an MQTT 5 reason code.",
            "counter",
            per(&|s| ld(&s.refused_batches).to_string()),
        );
        out
    }

    /// The health readings sent upstream: `(metric, value)`.
    pub fn health_values(&self) -> Vec<(String, f64)> {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        let mut v = vec![
            ("agent.readings_received".to_string(), ld(&self.received)),
            ("agent.readings_written".to_string(), ld(&self.written)),
            ("agent.readings_dropped".to_string(), ld(&self.dropped)),
            ("agent.sent_per_sec".to_string(), ld(&self.sent_per_sec)),
            ("agent.anomalies".to_string(), ld(&self.anomalies)),
            ("agent.uplink_state".to_string(), ld(&self.send_state)),
        ];
        for (n, s) in self.streams() {
            v.push((format!("agent.{n}.queue_depth"), ld(&s.queue_depth)));
            v.push((
                format!("agent.{n}.oldest_unsent_age_s"),
                s.oldest_unsent_age_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            ));
            v.push((format!("agent.{n}.readings_sent"), ld(&s.sent_readings)));
            v.push((format!("agent.{n}.readings_shed"), ld(&s.shed_readings)));
            v.push((format!("agent.{n}.gaps"), ld(&s.gaps)));
        }
        v
    }
}
