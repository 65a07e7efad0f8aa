//! The ingest load generator behind `edgepipe bench ingest`.
//!
//! [`run_ingest`] first connects every connection (warm-up, not timed), then starts the clock:
//! each connection's sender publishes batches to `edgepipe/v1/{client_id}/telemetry`, either
//! as fast as its in-flight window allows or paced so that all connections together send
//! [`BenchConfig::rate`] messages per second, spread evenly in time. PUBACK latency is measured
//! per connection from the moment the client writes the PUBLISH (`Outgoing::Publish(pkid)`) to
//! the matching `PubAck`, into an HDR histogram; with QoS 0 only throughput is reported.
//!
//! Payloads are the gateway's JSON readings: one `{"ts":..,"metrics":{"m0":..}}` object when
//! `batch` is 1, otherwise a JSON array of `batch` objects with metrics `m0..m{batch-1}`. The
//! `ts` of a connection's n-th message is `start + n` ms, so every reading of a run is distinct
//! under the `(device, metric, ts)` identity (above 1000 msg/s per connection those timestamps
//! run ahead of the wall clock).

mod config;
mod report;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgepipe_protocol::telemetry_topic;
use hdrhistogram::Histogram;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

pub use config::{BenchConfig, MAX_BATCH, MAX_CONNECTIONS};
pub use report::BenchReport;

use crate::net::network_options;
use crate::{Error, Result};

/// Connections opened concurrently during warm-up.
const CONNECT_PARALLELISM: usize = 256;
/// Latency histogram range: 1 µs to 1 h, 3 significant digits.
const HIST_MAX_US: u64 = 3_600_000_000;

/// Runs one load test and reports what was acknowledged.
///
/// Fails before sending anything if any connection cannot be established (the error names the
/// client and address and hints at the usual cause). Errors after that are counted in the
/// report and the connection reconnects. With `progress`, a progress bar is drawn on stderr.
pub async fn run_ingest(cfg: BenchConfig, progress: bool) -> Result<BenchReport> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    let conns = connect_all(&cfg).await?;

    let live = Arc::new(Live::default());
    let start = Instant::now();
    let deadline = start + cfg.duration;
    // Timestamps start 30 days back so that `start + n` ms never runs into the future (a
    // gateway refuses readings too far ahead), and values carry a per-run nonce so that a run
    // never repeats an earlier run's readings (the gateway acknowledges exact resends without
    // writing them, which would make a second run measure the dedup path instead of the WAL).
    let now = edgepipe_types::Clock::now_ms(&edgepipe_types::SystemClock);
    let ts_base = now - 30 * 24 * 3_600_000;
    let nonce = (now % 1_000_000) as f64 / 1_000.0;
    let n = conns.len();
    let mut pollers = JoinSet::new();
    let mut senders = JoinSet::new();
    for (i, (client, eventloop)) in conns.into_iter().enumerate() {
        let (total_tx, total_rx) = oneshot::channel();
        let pace = cfg.rate.map(|r| {
            // Connection i sends r/n msgs/s (the remainder spread over the first ones) and is
            // offset by i/n of its period, so the fleet's sends interleave evenly.
            let per = r / n as u64 + u64::from((i as u64) < r % n as u64);
            (per as f64, i as f64 / n as f64)
        });
        let sender = Sender {
            client: client.clone(),
            topic: telemetry_topic(&cfg.client_id(i)),
            qos: qos(cfg.qos),
            payload: PayloadBuilder::with_nonce(cfg.batch, ts_base, nonce),
            pace,
            start,
            deadline,
        };
        senders.spawn(async move {
            let sent = sender.run().await;
            let _ = total_tx.send(sent);
        });
        pollers.spawn(poll_loop(
            client,
            eventloop,
            cfg.qos,
            total_rx,
            Arc::clone(&live),
            deadline + cfg.drain_timeout,
            cfg.drain_timeout,
        ));
    }

    let bar = progress.then(|| progress_bar(&cfg, Arc::clone(&live), start));

    let mut hist = new_histogram()?;
    let mut messages_sent = 0;
    let mut messages_acked = 0;
    let mut errors = 0;
    let mut ack_order_stalls = 0;
    let mut end: Option<Instant> = None;
    let mut failure = None;
    while let Some(res) = pollers.join_next().await {
        match res {
            Ok(Ok(c)) => {
                hist.add(&c.hist).map_err(|e| Error::Task {
                    what: "latency merge",
                    reason: e.to_string(),
                })?;
                messages_sent += c.published;
                messages_acked += if cfg.qos == 0 { c.published } else { c.acked };
                errors += c.errors;
                ack_order_stalls += c.ack_order_stalls;
                end = end.max(c.last);
            }
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(e) => {
                failure.get_or_insert(Error::Task {
                    what: "bench connection",
                    reason: e.to_string(),
                });
            }
        }
    }
    // Senders finish by `deadline`; any still blocked lose their client with the poller.
    senders.abort_all();
    while senders.join_next().await.is_some() {}
    if let Some((bar, task)) = bar {
        task.abort();
        bar.finish_and_clear();
    }
    if let Some(e) = failure {
        return Err(e);
    }

    let elapsed = end.unwrap_or(deadline).saturating_duration_since(start);
    let secs = elapsed.as_secs_f64().max(1e-9);
    let readings_acked = messages_acked.saturating_mul(cfg.batch as u64);
    let measured = cfg.qos > 0 && !hist.is_empty();
    let q = |v: u64| measured.then_some(v);
    Ok(BenchReport {
        connections: cfg.connections,
        qos: cfg.qos,
        batch: cfg.batch,
        rate: cfg.rate,
        messages_sent,
        messages_acked,
        readings_acked,
        elapsed,
        msgs_per_s: messages_acked as f64 / secs,
        readings_per_s: readings_acked as f64 / secs,
        latency_p50_us: q(hist.value_at_quantile(0.5)),
        latency_p99_us: q(hist.value_at_quantile(0.99)),
        latency_max_us: q(hist.max()),
        latency_samples: if cfg.qos > 0 { hist.len() } else { 0 },
        errors,
        ack_order_stalls,
    })
}

fn qos(q: u8) -> QoS {
    if q == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    }
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).map_err(|e| Error::Task {
        what: "latency histogram",
        reason: e.to_string(),
    })
}

/// Counters shared by all connections, for the progress bar.
#[derive(Debug, Default)]
struct Live {
    acked: AtomicU64,
    errors: AtomicU64,
}

/// Opens every connection and waits for each CONNACK; fails on the first that cannot connect.
async fn connect_all(cfg: &Arc<BenchConfig>) -> Result<Vec<(AsyncClient, EventLoop)>> {
    let permits = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut set = JoinSet::new();
    for i in 0..cfg.connections {
        let cfg = Arc::clone(cfg);
        let permits = Arc::clone(&permits);
        set.spawn(async move {
            let _permit = permits.acquire().await;
            (i, connect_one(&cfg, i).await)
        });
    }
    let mut slots: Vec<Option<(AsyncClient, EventLoop)>> = Vec::new();
    slots.resize_with(cfg.connections, || None);
    while let Some(res) = set.join_next().await {
        match res {
            Ok((i, Ok(conn))) => {
                if let Some(slot) = slots.get_mut(i) {
                    *slot = Some(conn);
                }
            }
            Ok((_, Err(e))) => {
                set.abort_all();
                return Err(e);
            }
            Err(e) => {
                set.abort_all();
                return Err(Error::Task {
                    what: "bench connect",
                    reason: e.to_string(),
                });
            }
        }
    }
    Ok(slots.into_iter().flatten().collect())
}

async fn connect_one(cfg: &BenchConfig, i: usize) -> Result<(AsyncClient, EventLoop)> {
    let id = cfg.client_id(i);
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let mut opts = MqttOptions::new(id.clone(), cfg.host.clone(), cfg.port);
    let max_packet = (cfg.batch * 64 + 1024).max(1 << 20);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_credentials(id.clone(), cfg.password.clone().unwrap_or_default())
        .set_inflight(cfg.inflight)
        .set_max_packet_size(max_packet, max_packet);
    if let Some(tls) = &cfg.tls {
        opts.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    eventloop.set_network_options(network_options(cfg.connect_timeout));
    let connack = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    };
    match tokio::time::timeout(cfg.connect_timeout, connack).await {
        Ok(Ok(())) => Ok((client, eventloop)),
        Ok(Err(e)) => Err(Error::connect(&id, &addr, e)),
        Err(_) => Err(Error::ConnectTimeout {
            client: id,
            addr,
            after: cfg.connect_timeout,
        }),
    }
}

/// Builds message payloads with only the timestamp formatted per message.
#[derive(Debug)]
struct PayloadBuilder {
    batch: usize,
    ts_base: i64,
    seq: i64,
    /// `,"metrics":{"m{j}":{value}}}` for each reading j.
    tails: Vec<String>,
}

impl PayloadBuilder {
    #[cfg(test)]
    fn new(batch: usize, ts_base: i64) -> Self {
        Self::with_nonce(batch, ts_base, 0.0)
    }

    fn with_nonce(batch: usize, ts_base: i64, nonce: f64) -> Self {
        let tails = (0..batch)
            .map(|j| {
                format!(
                    ",\"metrics\":{{\"m{j}\":{}}}}}",
                    20.0 + nonce + (j % 100) as f64 * 0.25
                )
            })
            .collect();
        Self {
            batch,
            ts_base,
            seq: 0,
            tails,
        }
    }

    fn next_payload(&mut self) -> Vec<u8> {
        let ts = self.ts_base.saturating_add(self.seq).to_string();
        self.seq += 1;
        let tail_len = self.tails.first().map_or(0, String::len);
        let mut out = Vec::with_capacity(2 + self.batch * (8 + ts.len() + tail_len + 1));
        if self.batch > 1 {
            out.push(b'[');
        }
        for (j, tail) in self.tails.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"ts\":");
            out.extend_from_slice(ts.as_bytes());
            out.extend_from_slice(tail.as_bytes());
        }
        if self.batch > 1 {
            out.push(b']');
        }
        out
    }
}

/// One connection's publisher.
struct Sender {
    client: AsyncClient,
    topic: String,
    qos: QoS,
    payload: PayloadBuilder,
    /// `(msgs/s for this connection, phase in periods)`, or `None` for as fast as possible.
    pace: Option<(f64, f64)>,
    start: Instant,
    deadline: Instant,
}

impl Sender {
    /// Publishes until the deadline; returns how many messages were handed to the client.
    async fn run(mut self) -> u64 {
        let mut sent = 0u64;
        match self.pace {
            None => {
                while Instant::now() < self.deadline {
                    if !self.publish_one().await {
                        break;
                    }
                    sent += 1;
                }
            }
            Some((rate, phase)) => {
                // A 1 ms ticker with catch-up: at each tick send what is due by now, so the
                // rate holds even above the timer's resolution.
                let mut ticker = tokio::time::interval_at(self.start, Duration::from_millis(1));
                ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
                'run: loop {
                    ticker.tick().await;
                    let now = Instant::now();
                    if now >= self.deadline {
                        break;
                    }
                    let due = ((now - self.start).as_secs_f64() * rate + phase).floor() as u64;
                    while sent < due {
                        if Instant::now() >= self.deadline || !self.publish_one().await {
                            break 'run;
                        }
                        sent += 1;
                    }
                }
            }
        }
        sent
    }

    /// Hands one message to the client; false once the deadline passed or the client is gone.
    async fn publish_one(&mut self) -> bool {
        let payload = self.payload.next_payload();
        let publish = self
            .client
            .publish(self.topic.as_str(), self.qos, false, payload);
        matches!(
            tokio::time::timeout_at(self.deadline, publish).await,
            Ok(Ok(()))
        )
    }
}

/// What one connection measured.
#[derive(Debug)]
struct ConnResult {
    hist: Histogram<u64>,
    published: u64,
    acked: u64,
    errors: u64,
    /// Sends held back by an out-of-order acknowledgement (`Outgoing::AwaitAck`).
    ack_order_stalls: u64,
    /// Last acknowledgement (QoS 1) or write (QoS 0).
    last: Option<Instant>,
}

/// Drives one connection's event loop, timing PUBLISH → PUBACK, until the sender is done and
/// everything it sent is acknowledged (or written, QoS 0), or `hard_stop`.
async fn poll_loop(
    client: AsyncClient,
    mut eventloop: EventLoop,
    qos: u8,
    mut total_rx: oneshot::Receiver<u64>,
    live: Arc<Live>,
    hard_stop: Instant,
    drain_timeout: Duration,
) -> Result<ConnResult> {
    let mut r = ConnResult {
        hist: new_histogram()?,
        published: 0,
        acked: 0,
        errors: 0,
        ack_order_stalls: 0,
        last: None,
    };
    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    let mut total: Option<u64> = None;
    let mut stop = hard_stop;
    loop {
        if let Some(t) = total {
            let done = if qos == 0 { r.published } else { r.acked };
            if done >= t {
                break;
            }
        }
        let event = match total {
            None => tokio::select! {
                biased;
                t = &mut total_rx => {
                    total = Some(t.unwrap_or(0));
                    stop = stop.min(Instant::now() + drain_timeout);
                    continue;
                }
                _ = tokio::time::sleep_until(hard_stop) => break,
                ev = eventloop.poll() => ev,
            },
            Some(_) => match tokio::time::timeout_at(stop, eventloop.poll()).await {
                Ok(ev) => ev,
                Err(_) => break,
            },
        };
        match event {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let now = Instant::now();
                r.published += 1;
                if qos == 0 {
                    r.last = Some(now);
                } else {
                    sent_at.insert(pkid, now);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let now = Instant::now();
                if let Some(t0) = sent_at.remove(&ack.pkid) {
                    let us = u64::try_from((now - t0).as_micros()).unwrap_or(u64::MAX);
                    r.hist.saturating_record(us.clamp(1, HIST_MAX_US));
                }
                r.acked += 1;
                r.last = Some(now);
                live.acked.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Event::Outgoing(Outgoing::AwaitAck(_))) => r.ack_order_stalls += 1,
            Ok(_) => {}
            Err(e) => {
                r.errors += 1;
                live.errors.fetch_add(1, Ordering::Relaxed);
                sent_at.clear();
                tracing::debug!(error = %e, "bench connection error; reconnecting");
                let pause = Instant::now() + Duration::from_millis(100);
                if pause >= stop {
                    break;
                }
                tokio::time::sleep_until(pause).await;
            }
        }
    }
    // Polite goodbye; the socket closes with the event loop regardless.
    if client.try_disconnect().is_ok() {
        let bye = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), bye).await;
    }
    Ok(r)
}

fn progress_bar(
    cfg: &BenchConfig,
    live: Arc<Live>,
    start: Instant,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let total_ms = u64::try_from(cfg.duration.as_millis()).unwrap_or(u64::MAX);
    let bar = indicatif::ProgressBar::new(total_ms);
    let style = indicatif::ProgressStyle::with_template("{bar:30} {elapsed:>4} {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    let task_bar = bar.clone();
    let task = tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_millis(200));
        loop {
            ticker.tick().await;
            let el = start.elapsed();
            let acked = live.acked.load(Ordering::Relaxed);
            let errors = live.errors.load(Ordering::Relaxed);
            let rate = acked as f64 / el.as_secs_f64().max(1e-3);
            task_bar.set_position(
                u64::try_from(el.as_millis())
                    .unwrap_or(u64::MAX)
                    .min(total_ms),
            );
            task_bar.set_message(format!("{acked} acked ({rate:.0} msgs/s), {errors} errors"));
        }
    });
    (bar, task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_distinct_valid_json_readings() {
        let mut one = PayloadBuilder::new(1, 1_700_000_000_000);
        let a: serde_json::Value = serde_json::from_slice(&one.next_payload()).expect("json");
        let b: serde_json::Value = serde_json::from_slice(&one.next_payload()).expect("json");
        assert_eq!(a["ts"], 1_700_000_000_000_i64);
        assert_eq!(b["ts"], 1_700_000_000_001_i64);
        assert_eq!(a["metrics"]["m0"], 20.0);

        let mut many = PayloadBuilder::new(150, 5);
        let v: serde_json::Value = serde_json::from_slice(&many.next_payload()).expect("json");
        let arr = v.as_array().expect("array for batch > 1");
        assert_eq!(arr.len(), 150);
        let mut names: Vec<String> = arr
            .iter()
            .flat_map(|o| o["metrics"].as_object().expect("metrics").keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 150, "readings within a message are distinct");
        assert!(arr.iter().all(|o| o["ts"] == 5));
    }

    #[test]
    fn config_problems_are_all_reported() {
        let bad = BenchConfig {
            connections: 0,
            qos: 2,
            batch: 0,
            rate: Some(0),
            duration: Duration::ZERO,
            inflight: 0,
            client_prefix: "a b".into(),
            ..BenchConfig::default()
        };
        let err = bad.validate().expect_err("refused").to_string();
        for f in [
            "connections",
            "qos",
            "batch",
            "rate",
            "duration",
            "inflight",
            "client_prefix",
        ] {
            assert!(err.contains(f), "{f} missing: {err}");
        }
        assert!(BenchConfig::default().validate().is_ok());
        assert_eq!(BenchConfig::default().client_id(7), "bench-00007");
        let secret = BenchConfig {
            password: Some("hunter2".into()),
            ..BenchConfig::default()
        };
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
