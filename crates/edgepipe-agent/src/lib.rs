//! `edgepipe-agent`: the edge runtime. It collects readings on a gateway (local MQTT broker,
//! files, stdin, HTTP pushes, simulators, the gateway's own metrics), transforms them per
//! stream, scores them with the same `edgepipe-detect` ensemble as the server (alerting locally
//! while offline), stores every batch durably in a per-stream queue (`edgepipe-wal`) before
//! anything else, and forwards the queue to the edgepipe server as compressed batch envelopes
//! over MQTT, deleting a batch only after the server's PUBACK.
//!
//! ```text
//! collectors ──bounded channel (block)──▶ pipeline: transforms → detect → batch → WAL append
//!                                                    └─ anomalies → alerts stream + local alert sink
//! queue (one WAL per stream) ──▶ uplink: live first, backlog at catch_up_rate, priority
//!                                 alerts > telemetry > bulk ──MQTT QoS 1──▶ edgepipe server
//!                                 PUBACK → acknowledged position → retention deletes segments
//! ```
//!
//! Shutdown is ordered: collectors stop, the pipeline appends what it holds, the uplink persists
//! its acknowledged positions, then the process exits.

pub mod clock;
pub mod collect;
pub mod config;
pub mod detect;
mod durations;
mod error;
pub mod http;
pub mod metrics;
pub mod pipeline;
mod problem;
pub mod queue;
pub mod transform;
pub mod uplink;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use edgepipe_types::{DeviceId, Metric, Reading, TsSource, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use error::{Error, Result};

use crate::clock::{SharedClock, SystemClock};
use crate::collect::{CollectorKind, Ctx};
use crate::config::AgentConfig;
use crate::detect::{AlertSink, LocalDetector};
use crate::metrics::Metrics;
use crate::pipeline::{HEALTH_STREAM, Input, Lane};
use crate::queue::{StreamQueue, StreamWriter, wal_config};
use crate::uplink::{StreamSender, Uplink};

/// What a started agent reports.
#[derive(Debug, Clone)]
pub struct Started {
    /// The local HTTP endpoint's bound address, if enabled.
    pub http: Option<SocketAddr>,
}

/// Runs the agent until `cancel`, then shuts down in order. `started` is called once everything
/// is running.
pub async fn run(
    cfg: AgentConfig,
    cancel: CancellationToken,
    started: impl FnOnce(Started),
) -> Result<()> {
    let clock: SharedClock = Arc::new(SystemClock);
    let metrics = Arc::new(Metrics::default());
    let root = cfg.data_dir.join("queue");
    std::fs::create_dir_all(&root).map_err(Error::io(&root))?;

    let mut problems = Vec::new();
    let mut lanes = HashMap::new();
    let mut senders = Vec::new();
    let mut positions: BTreeMap<String, u64> = BTreeMap::new();
    for (i, s) in cfg.streams.iter().enumerate() {
        let q = Arc::new(StreamQueue::open(
            &root,
            &s.name,
            s.priority,
            &wal_config(&cfg.queue, s.max_bytes),
        )?);
        let writer = StreamWriter::new(q.clone(), &cfg.queue)?;
        for c in &cfg.collectors {
            if c.stream == s.name {
                for what in ["counter", "base", "inode", "offset"] {
                    let key = format!("{}:{what}", c.name);
                    if let Some(p) = writer.position(&key) {
                        positions.insert(key, p);
                    }
                }
            }
        }
        let chain = transform::Chain::compile(
            &s.transforms,
            &format!("streams[{i}].transforms"),
            &mut problems,
        );
        senders.push(StreamSender::new(q, &metrics)?);
        lanes.insert(s.name.clone(), Lane { writer, chain });
    }
    let detector = if cfg.detect.enabled {
        let ens = cfg.detect.ensemble(&mut problems);
        Some(LocalDetector::new(&cfg.detect, ens))
    } else {
        None
    };
    if !problems.is_empty() {
        return Err(Error::Config(problems));
    }
    let alerts = (cfg.alerts.mqtt_addr.is_some() || !cfg.alerts.command.is_empty())
        .then(|| AlertSink::start(cfg.alerts.clone(), cfg.agent_id.clone(), metrics.clone()));

    let (tx, rx) = mpsc::channel::<Input>(pipeline::INPUT_CAPACITY);
    let collect_cancel = CancellationToken::new();
    let pipeline = tokio::spawn(pipeline::run(
        lanes,
        rx,
        detector,
        alerts,
        clock.clone(),
        metrics.clone(),
        collect_cancel.clone(),
    ));

    let uplink_cancel = CancellationToken::new();
    let uplink = tokio::spawn(
        Uplink {
            cfg: cfg.uplink.clone(),
            agent_id: cfg.agent_id.clone(),
            senders,
            pipeline: tx.clone(),
            metrics: metrics.clone(),
            clock: clock.clone(),
        }
        .run(uplink_cancel.clone()),
    );

    let ctx_for = |name: &str, stream: &str| Ctx {
        name: name.to_string(),
        stream: stream.to_string(),
        tx: tx.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        cancel: collect_cancel.clone(),
        positions: positions
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{name}:")))
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
    };
    let push_ctx = cfg
        .collectors
        .iter()
        .find(|c| matches!(c.kind, CollectorKind::Http(_)))
        .map(|c| ctx_for(&c.name, &c.stream));
    let device = DeviceId::new(
        cfg.uplink
            .device_id
            .clone()
            .unwrap_or_else(|| cfg.agent_id.clone()),
    )
    .map_err(|e| {
        Error::Config(vec![config::Problem::new(
            "uplink.device_id",
            e.to_string(),
        )])
    })?;
    let http = http::serve(
        &cfg.http,
        metrics.clone(),
        push_ctx,
        device,
        collect_cancel.clone(),
    )
    .await?;
    for c in &cfg.collectors {
        collect::spawn(c.kind.clone(), ctx_for(&c.name, &c.stream), &cfg.agent_id);
    }
    if !cfg.health.interval.is_zero() {
        tokio::spawn(health(
            cfg.health.interval,
            tx.clone(),
            metrics.clone(),
            clock.clone(),
            collect_cancel.clone(),
        ));
    }
    drop(tx);
    tracing::info!(agent = %cfg.agent_id, "agent running");
    started(Started { http });

    cancel.cancelled().await;
    tracing::info!("shutting down: stop collectors, flush the queue, persist positions");
    collect_cancel.cancel();
    let _ = pipeline.await;
    uplink_cancel.cancel();
    let _ = uplink.await;
    Ok(())
}

async fn health(
    every: std::time::Duration,
    tx: mpsc::Sender<Input>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let ts = clock.now_ms();
        let mut readings: Vec<Reading> = metrics
            .health_values()
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
        if let Some(rss) = collect::system::own_rss()
            && let Ok(metric) = Metric::new("agent.rss_bytes")
        {
            readings.push(Reading {
                metric,
                ts,
                value: Value::F64(rss),
                ts_source: TsSource::Device,
            });
        }
        let input = Input {
            stream: HEALTH_STREAM.to_string(),
            readings,
            positions: Vec::new(),
            ack: None,
            raw: true,
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
}
