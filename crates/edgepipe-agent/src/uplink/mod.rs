//! The uplink: sends every stream's queued batches to the server as zstd batch envelopes over
//! MQTT 3.1.1 or 5 (rumqttc, QoS 1), and moves a stream's acknowledged position only on PUBACK.
//!
//! # Send state machine
//! - **offline**: not connected. Reconnect with exponential backoff and jitter
//!   (`backoff_min` doubling to `backoff_max`, each wait drawn from `[cap/2, cap]`). Gaps caused
//!   by the disk budget are still detected and recorded while offline.
//! - **catch-up**: connected with a backlog. At CONNACK each stream's durable end becomes its
//!   *boundary*: records at or after it are *live* and go out as soon as they are durable;
//!   records before it are *backlog* and go out in order, limited to `catch_up_rate` readings/s
//!   (a token bucket shared by all streams), so fresh data is never stuck behind hours of
//!   backlog and the uplink is not flooded.
//! - **normal**: every stream's backlog is sent; only the live lane runs.
//!
//! Every choice of the next batch takes, in order: alerts batches (live, then backlog; not
//! rate-limited, they are few), then live batches by stream priority (telemetry, bulk), then
//! backlog batches by priority within the catch-up rate. Within a stream each lane is sent in
//! sequence order, and a batch's `seq` is its queue sequence number, so the server orders and
//! deduplicates by `(source, stream, seq)`. The live lane may run at most `max_live_ahead`
//! batches ahead of the stream's oldest unacknowledged batch: the server's replay window is
//! 4096 batches per stream, and a backlog batch must never fall below it.
//!
//! # Acknowledgement
//! rumqttc reports each publish's packet id as it writes it (in request order) and each PUBACK
//! by packet id; the uplink maps them back to `(stream, seq)`. A stream's checkpoint advances
//! over the contiguous prefix of acknowledged (or shed) batches and is persisted at most every
//! 100 ms ([`StreamQueue::save_acked`]). On disconnect, every unacknowledged batch is sent again
//! after the next CONNACK (same seq; the server drops what it already has). A fresh rumqttc
//! client per connection keeps rumqttc from resending on its own.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgepipe_protocol::envelope::{self, Compression};
use edgepipe_types::BatchOrigin;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::pipeline::{ALERTS_STREAM, Input, InputTx};
use crate::queue::Priority;

#[cfg(feature = "tls")]
pub use self::config::tls_config;
pub use self::config::{Backoff, CompressionSetting, MqttVersion, UplinkConfig};
use self::link::{Link, LinkEvent};
pub use self::stream::{GapEvent, StreamSender};

mod config;
mod link;
mod stream;
#[cfg(test)]
mod tests;

/// Everything the uplink task needs.
#[derive(Debug)]
pub struct Uplink {
    /// Settings.
    pub cfg: UplinkConfig,
    /// Envelope `source`.
    pub agent_id: String,
    /// Senders, one per stream.
    pub senders: Vec<StreamSender>,
    /// Pipeline input, for gap events.
    pub pipeline: InputTx,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Clock.
    pub clock: SharedClock,
}

enum End {
    Stop,
    Lost(String),
}

struct TokenBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn ready(&mut self) -> bool {
        if self.rate <= 0.0 {
            return true;
        }
        let now = Instant::now();
        let burst = (self.rate / 4.0).max(1.0);
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(burst);
        self.last = now;
        self.tokens > 0.0
    }
    fn take(&mut self, n: u64) {
        if self.rate > 0.0 {
            self.tokens -= n as f64;
        }
    }
}

impl Uplink {
    /// Runs until `cancel`; persists every stream's acknowledged position before returning.
    pub async fn run(mut self, cancel: CancellationToken) {
        self.senders.sort_by_key(|s| s.q.priority);
        let (tls, host, port) = match self.cfg.endpoint() {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "uplink url invalid; uplink disabled");
                return;
            }
        };
        let user = self
            .cfg
            .device_id
            .clone()
            .unwrap_or_else(|| self.agent_id.clone());
        let topic = edgepipe_protocol::telemetry_topic(&user);
        let mut backoff = Backoff::new(self.cfg.backoff_min, self.cfg.backoff_max);
        let mut bucket = TokenBucket {
            rate: self.cfg.catch_up_rate as f64,
            tokens: 0.0,
            last: Instant::now(),
        };
        let mut conn_no = 0u64;
        loop {
            self.metrics.send_state.store(2, Ordering::Relaxed);
            self.metrics.connected.store(0, Ordering::Relaxed);
            conn_no += 1;
            let link = Link::new(
                &self.cfg,
                host.clone(),
                port,
                format!("{}-uplink-{conn_no}", self.agent_id),
                user.clone(),
                tls,
            );
            let end = match link {
                Ok(link) => {
                    self.session(link, &topic, &mut backoff, &mut bucket, &cancel)
                        .await
                }
                Err(e) => End::Lost(e),
            };
            for s in &mut self.senders {
                s.on_disconnect();
                s.persist(true);
            }
            match end {
                End::Stop => return,
                End::Lost(e) => {
                    self.metrics
                        .connect_failures
                        .fetch_add(1, Ordering::Relaxed);
                    let wait = backoff.next_wait();
                    tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "uplink down; reconnecting after backoff");
                    let until = tokio::time::Instant::now() + wait;
                    loop {
                        self.housekeeping().await;
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                            _ = cancel.cancelled() => {
                                for s in &mut self.senders { s.persist(true); }
                                return;
                            }
                        }
                    }
                }
            }
        }
    }

    /// Gap detection, metrics, persisting: done online and offline.
    async fn housekeeping(&mut self) {
        let mut events = Vec::new();
        for (i, s) in self.senders.iter_mut().enumerate() {
            events.extend(s.find_gaps().into_iter().map(|g| (i, g)));
        }
        let gaps_found = !events.is_empty();
        for (i, g) in events {
            // The gap event is durable in the alerts stream before the shed range is
            // acknowledged past (persist happens on the next housekeeping or ack), and before
            // the shed counters and queue depths show it: whoever sees the shed count also
            // sees the alerts stream holding its gap event.
            let (count, m) = (g.count, Arc::clone(&self.senders[i].m));
            let (tx, rx) = oneshot::channel();
            let input = Input {
                stream: ALERTS_STREAM.to_string(),
                readings: g.readings(),
                positions: Vec::new(),
                ack: Some(tx),
                raw: true,
            };
            if self.pipeline.send(input).await.is_ok() {
                let _ = rx.await;
            }
            m.gaps.fetch_add(1, Ordering::Relaxed);
            m.shed_readings.fetch_add(count, Ordering::Relaxed);
        }
        let now = self.clock.now_ms();
        for s in &mut self.senders {
            s.refresh_metrics(now);
            s.persist(gaps_found);
        }
    }

    async fn session(
        &mut self,
        mut link: Link,
        topic: &str,
        backoff: &mut Backoff,
        bucket: &mut TokenBucket,
        cancel: &CancellationToken,
    ) -> End {
        let started = Instant::now();
        let mut connected = false;
        let mut written: VecDeque<(usize, u64)> = VecDeque::new();
        let mut pkids: HashMap<u16, (usize, u64)> = HashMap::new();
        let mut inflight = 0usize;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_house = Instant::now();
        let mut rate_mark = (Instant::now(), self.metrics.sent_total());
        loop {
            tokio::select! {
                ev = link.poll() => match ev {
                    Ok(LinkEvent::Connected) => {
                        connected = true;
                        backoff.reset();
                        self.metrics.connected.store(1, Ordering::Relaxed);
                        for s in &mut self.senders {
                            s.on_connect();
                        }
                        tracing::info!("uplink connected");
                    }
                    Ok(LinkEvent::Written(pkid)) => {
                        if let Some(x) = written.pop_front() {
                            pkids.insert(pkid, x);
                        }
                    }
                    Ok(LinkEvent::Acked(pkid)) => {
                        if let Some((i, seq)) = pkids.remove(&pkid) {
                            inflight = inflight.saturating_sub(1);
                            if let Some(s) = self.senders.get_mut(i) {
                                s.acked(seq);
                                s.persist(false);
                            }
                        }
                    }
                    Ok(LinkEvent::Refused(pkid, reason)) => {
                        if let Some((i, _)) = pkids.remove(&pkid)
                            && let Some(s) = self.senders.get(i)
                        {
                            s.m.refused_batches.fetch_add(1, Ordering::Relaxed);
                        }
                        link.disconnect();
                        return End::Lost(format!("server refused a batch: {reason}"));
                    }
                    Ok(LinkEvent::Other) => {}
                    Err(e) => return End::Lost(e),
                },
                _ = tick.tick() => {
                    if !connected && started.elapsed() > self.cfg.connect_timeout {
                        return End::Lost("connect timeout".into());
                    }
                }
                _ = cancel.cancelled() => {
                    link.disconnect();
                    return End::Stop;
                }
            }
            if last_house.elapsed() >= Duration::from_millis(500) {
                last_house = Instant::now();
                self.housekeeping().await;
                let (t0, n0) = rate_mark;
                let secs = t0.elapsed().as_secs_f64();
                if secs >= 1.0 {
                    let n = self.metrics.sent_total();
                    self.metrics.sent_per_sec.store(
                        ((n.saturating_sub(n0)) as f64 / secs) as u64,
                        Ordering::Relaxed,
                    );
                    rate_mark = (Instant::now(), n);
                }
            }
            if !connected {
                continue;
            }
            let catching_up = self.senders.iter().any(|s| s.in_catch_up());
            self.metrics
                .send_state
                .store(u64::from(catching_up), Ordering::Relaxed);
            // Fill the in-flight window: live by priority, then backlog by priority.
            while inflight < self.cfg.max_inflight {
                let max_ahead = self.cfg.max_live_ahead;
                let alerts = |s: &StreamSender| s.q.priority == Priority::Alerts;
                // Alerts (live, then backlog, never rate-limited: they are few), then live by
                // priority, then backlog by priority within the catch-up rate.
                let pick = self
                    .senders
                    .iter()
                    .position(|s| alerts(s) && s.live_ready(max_ahead))
                    .map(|i| (i, true))
                    .or_else(|| {
                        self.senders
                            .iter()
                            .position(|s| alerts(s) && s.backlog_ready())
                            .map(|i| (i, false))
                    })
                    .or_else(|| {
                        self.senders
                            .iter()
                            .position(|s| s.live_ready(max_ahead))
                            .map(|i| (i, true))
                    })
                    .or_else(|| {
                        if !bucket.ready() {
                            return None;
                        }
                        self.senders
                            .iter()
                            .position(|s| s.backlog_ready())
                            .map(|i| (i, false))
                    });
                let Some((i, live)) = pick else { break };
                let Some(s) = self.senders.get_mut(i) else {
                    break;
                };
                let ready = match s.next(live) {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        // Nothing readable (a gap is being recorded); let housekeeping run.
                        if !live {
                            s.backlog = s.boundary.min(s.backlog.max(s.q.wal.stats().first_seq));
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "queue read failed");
                        break;
                    }
                };
                let origin = BatchOrigin {
                    source: self.agent_id.clone(),
                    stream: s.q.name.clone(),
                    seq: ready.seq,
                };
                let compression = match self.cfg.compression {
                    CompressionSetting::Zstd => Compression::Zstd,
                    CompressionSetting::Lz4 => Compression::Lz4,
                    CompressionSetting::None => Compression::None,
                };
                let payload = match envelope::try_encode(&origin, &ready.rec.readings, compression)
                {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot encode batch");
                        s.unsend(ready.seq, live);
                        break;
                    }
                };
                if !link.try_publish(topic, payload) {
                    s.unsend(ready.seq, live);
                    break;
                }
                if !live && s.q.priority != Priority::Alerts {
                    bucket.take(ready.rec.readings.len() as u64);
                }
                s.sent(ready.seq, &ready.rec);
                written.push_back((i, ready.seq));
                inflight += 1;
            }
        }
    }
}
