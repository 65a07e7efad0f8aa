//! The pipeline task: the one place readings go from collectors into the queue.
//!
//! Collectors send [`Input`]s on one bounded channel (capacity [`INPUT_CAPACITY`]; full policy
//! `block`: a collector waits, which back-pressures its source: MQTT messages stay unacknowledged
//! at the broker, HTTP pushes wait, generators pause). For each input the pipeline runs the
//! stream's transforms, scores the result with local detection (anomalies go to the `alerts`
//! stream and the local alert sink), adds it to the stream's open batch, and appends the batch
//! to the stream's WAL when it is full or `batch_max_wait` old. A source is answered only after
//! the append is fdatasynced, so "acknowledged to the source" always means "on disk".

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgepipe_types::Reading;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::detect::{AlertSink, LocalDetector};
use crate::metrics::Metrics;
use crate::queue::{Ack, StreamWriter};
use crate::transform::Chain;

/// Capacity of the collectors → pipeline channel (messages, each a batch of readings).
pub const INPUT_CAPACITY: usize = 1024;

/// Name of the built-in stream for anomaly events and gaps.
pub const ALERTS_STREAM: &str = "alerts";
/// Name of the built-in stream for the agent's own health telemetry.
pub const HEALTH_STREAM: &str = "health";

/// Readings handed to the pipeline.
#[derive(Debug)]
pub struct Input {
    /// Target stream.
    pub stream: String,
    /// The readings.
    pub readings: Vec<Reading>,
    /// Source positions reached after these readings (stored atomically with them).
    pub positions: Vec<(String, u64)>,
    /// Answered once the readings are durable (or refused).
    pub ack: Option<Ack>,
    /// Skip transforms and detection (the agent's own events: gaps, health).
    pub raw: bool,
}

/// Sender side of the pipeline's input channel.
pub type InputTx = mpsc::Sender<Input>;

/// Per-stream pipeline state.
#[derive(Debug)]
pub struct Lane {
    /// The queue writer.
    pub writer: StreamWriter,
    /// The stream's transforms.
    pub chain: Chain,
}

/// Runs until the input channel closes (every collector has stopped) or `cancel` fires and the
/// channel is drained; flushes every open batch before returning.
pub async fn run(
    mut lanes: HashMap<String, Lane>,
    mut rx: mpsc::Receiver<Input>,
    mut detector: Option<LocalDetector>,
    alerts: Option<AlertSink>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        let deadline = lanes
            .values()
            .filter_map(|l| l.writer.deadline())
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(input) => handle(&mut lanes, input, &mut detector, alerts.as_ref(), &clock, &metrics),
                None => break,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
            _ = tick.tick() => {
                let now = clock.now_ms();
                for lane in lanes.values_mut() {
                    let out = lane.chain.tick(now);
                    if !out.is_empty() {
                        lane.writer.push(out, Vec::new(), None, true);
                    }
                }
            }
            _ = cancel.cancelled(), if !closing => {
                // Stop accepting: collectors see the cancel too; drain what they already sent.
                closing = true;
                rx.close();
            }
        }
        flush_due(&mut lanes, &clock, &metrics, false).await;
    }
    flush_due(&mut lanes, &clock, &metrics, true).await;
}

fn handle(
    lanes: &mut HashMap<String, Lane>,
    input: Input,
    detector: &mut Option<LocalDetector>,
    alerts: Option<&AlertSink>,
    clock: &SharedClock,
    metrics: &Metrics,
) {
    let now = clock.now_ms();
    let n_in = input.readings.len() as u64;
    let Some(lane) = lanes.get_mut(&input.stream) else {
        metrics.reject("unknown_stream", n_in);
        if let Some(a) = input.ack {
            let _ = a.send(Err(format!("unknown stream {:?}", input.stream)));
        }
        return;
    };
    let readings = if input.raw {
        input.readings
    } else {
        metrics.received.fetch_add(n_in, Ordering::Relaxed);
        let out = if lane.chain.is_empty() {
            input.readings
        } else {
            lane.chain.apply(input.readings, now)
        };
        metrics
            .transformed_away
            .fetch_add(n_in.saturating_sub(out.len() as u64), Ordering::Relaxed);
        out
    };
    let anomalies = match (input.raw, detector.as_mut()) {
        (false, Some(d)) => d.observe(&readings),
        _ => Vec::new(),
    };
    let dup = lane
        .writer
        .push(readings, input.positions, input.ack, input.raw);
    if dup > 0 {
        metrics.reject("duplicate_identity", dup as u64);
    }
    if !anomalies.is_empty() {
        metrics
            .anomalies
            .fetch_add(anomalies.len() as u64, Ordering::Relaxed);
        let events: Vec<Reading> = anomalies.iter().filter_map(|a| a.reading()).collect();
        if let Some(lane) = lanes.get_mut(ALERTS_STREAM) {
            lane.writer.push(events, Vec::new(), None, true);
        }
        if let Some(sink) = alerts {
            for a in anomalies {
                sink.send(a);
            }
        }
    }
}

async fn flush_due(
    lanes: &mut HashMap<String, Lane>,
    clock: &SharedClock,
    metrics: &Metrics,
    all: bool,
) {
    let now = Instant::now();
    // Alerts first: an anomaly is on disk before the telemetry that caused it is acknowledged.
    let mut names: Vec<String> = lanes
        .iter()
        .filter(|(_, l)| all || l.writer.due(now))
        .map(|(n, _)| n.clone())
        .collect();
    names.sort_by_key(|n| (n != ALERTS_STREAM, n.clone()));
    if names.iter().any(|n| n != ALERTS_STREAM)
        && !names.iter().any(|n| n == ALERTS_STREAM)
        && lanes.contains_key(ALERTS_STREAM)
    {
        names.insert(0, ALERTS_STREAM.to_string());
    }
    for name in names {
        let Some(lane) = lanes.get_mut(&name) else {
            continue;
        };
        let unacked = lane.writer.unacked_readings();
        match lane.writer.flush(clock.now_ms()).await {
            Ok(n) => {
                metrics.written.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                // Sources that wait for an answer were refused and keep their data (MQTT
                // redelivers, HTTP clients retry, generators resend); readings nobody waits for
                // (aggregates, anomaly events) are lost here, and counted.
                tracing::error!(stream = %name, error = %e, "append failed; sources were told");
                metrics.dropped.fetch_add(unacked as u64, Ordering::Relaxed);
            }
        }
    }
}
