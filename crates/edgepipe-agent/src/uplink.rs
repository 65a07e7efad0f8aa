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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgepipe_protocol::envelope::{self, Compression};
use edgepipe_types::{BatchOrigin, DeviceId, Metric, Reading, TsSource, Value};
use edgepipe_wal::Reader;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::clock::SharedClock;
use crate::durations::dur;
use crate::metrics::{Metrics, StreamMetrics};
use crate::pipeline::{ALERTS_STREAM, Input, InputTx};
use crate::problem::Problem;
use crate::queue::{AckState, Priority, QueueRecord, StreamQueue};

/// MQTT protocol version of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

/// Envelope body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CompressionSetting {
    /// zstd (default).
    #[default]
    Zstd,
    /// lz4.
    Lz4,
    /// None.
    None,
}

/// `[uplink]`: the connection to the edgepipe server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Server address `mqtt://host:port`. Default "mqtt://127.0.0.1:1883".
    pub url: String,
    /// `v311` (default) or `v5`.
    pub protocol: MqttVersion,
    /// The agent's device id at the server (MQTT username). Default: `agent_id`.
    pub device_id: Option<String>,
    /// The device token (MQTT password); also `EDGEPIPE_AGENT_TOKEN`. Default: empty.
    pub token: String,
    /// For `mqtts://`: PEM file of the CA certificates to trust. Default: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// MQTT keep-alive. Default "30s".
    #[serde(with = "dur")]
    pub keep_alive: Duration,
    /// Give up a connection attempt after this long. Default "10s".
    #[serde(with = "dur")]
    pub connect_timeout: Duration,
    /// Batches published and not yet acknowledged, at most. Default 32.
    pub max_inflight: usize,
    /// Backlog readings per second during catch-up (all streams together); 0 = unlimited.
    /// Default 20000.
    pub catch_up_rate: u64,
    /// How many batches the live lane may run ahead of a stream's oldest unacknowledged batch.
    /// Default 2000 (must stay below the server's replay window of 4096).
    pub max_live_ahead: u64,
    /// First reconnect wait. Default "200ms".
    #[serde(with = "dur")]
    pub backoff_min: Duration,
    /// Longest reconnect wait. Default "30s".
    #[serde(with = "dur")]
    pub backoff_max: Duration,
    /// `zstd` (default), `lz4` or `none`.
    pub compression: CompressionSetting,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            protocol: MqttVersion::V311,
            device_id: None,
            token: String::new(),
            ca_file: None,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_inflight: 32,
            catch_up_rate: 20_000,
            max_live_ahead: 2000,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            compression: CompressionSetting::Zstd,
        }
    }
}

impl UplinkConfig {
    /// `(tls, host, port)` from `url`.
    pub fn endpoint(&self) -> Result<(bool, String, u16), String> {
        let (tls, rest) = if let Some(r) = self.url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = self.url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err("must start with mqtt:// or mqtts://".into());
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| "must name a port (mqtt://host:port)".to_string())?;
        let port = port
            .trim_end_matches('/')
            .parse::<u16>()
            .map_err(|_| format!("bad port {port:?}"))?;
        if host.is_empty() {
            return Err("host is empty".into());
        }
        Ok((tls, host.to_string(), port))
    }

    pub(crate) fn check(&self, agent_id: &str, problems: &mut Vec<Problem>) {
        match self.endpoint() {
            Ok((true, _, _)) if !cfg!(feature = "tls") => problems.push(Problem::new(
                "uplink.url",
                "mqtts:// needs the agent built with the `tls` feature",
            )),
            Ok((true, _, _)) =>
            {
                #[cfg(feature = "tls")]
                if let Err(e) = tls_config(self.ca_file.as_deref()) {
                    problems.push(Problem::new("uplink.ca_file", e));
                }
            }
            Ok(_) => {}
            Err(e) => problems.push(Problem::new("uplink.url", e)),
        }
        let dev = self.device_id.as_deref().unwrap_or(agent_id);
        if let Err(e) = DeviceId::new(dev) {
            problems.push(Problem::new("uplink.device_id", e.to_string()));
        }
        if self.max_inflight == 0 || self.max_inflight > 1000 {
            problems.push(Problem::new("uplink.max_inflight", "must be 1..=1000"));
        }
        if self.max_live_ahead == 0 || self.max_live_ahead > 4000 {
            problems.push(Problem::new(
                "uplink.max_live_ahead",
                "must be 1..=4000 (the server's replay window is 4096 batches per stream)",
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            problems.push(Problem::new(
                "uplink.backoff_max",
                "backoff_min must be positive and backoff_max at least backoff_min",
            ));
        }
        if self.connect_timeout.is_zero() {
            problems.push(Problem::new("uplink.connect_timeout", "must be positive"));
        }
    }
}

// ---------------------------------------------------------------- backoff

/// Exponential backoff with jitter: the n-th wait is drawn from `[cap/2, cap]`, where
/// `cap = min(max, min * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }
    /// Back to `min` (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let hi = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(hi / 2..=hi))
    }
}

// ---------------------------------------------------------------- TLS

/// A rustls client configuration (ring provider, chosen explicitly) trusting `ca_file`'s
/// certificates, or the system's roots.
#[cfg(feature = "tls")]
pub fn tls_config(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for c in certs {
                let c = c.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in the file", path.display()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err("no system root certificates found; set uplink.ca_file".into());
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

// ---------------------------------------------------------------- MQTT link

enum Link {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::V4(..) => "Link::V4",
            Link::V5(..) => "Link::V5",
        })
    }
}

enum LinkEvent {
    Connected,
    Written(u16),
    Acked(u16),
    Refused(u16, String),
    Other,
}

impl Link {
    fn new(
        cfg: &UplinkConfig,
        host: String,
        port: u16,
        client_id: String,
        user: String,
        tls: bool,
    ) -> Result<Link, String> {
        let cap = cfg.max_inflight * 2 + 16;
        #[cfg(feature = "tls")]
        let transport = if tls {
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(tls_config(
                cfg.ca_file.as_deref(),
            )?))
        } else {
            rumqttc::Transport::Tcp
        };
        #[cfg(not(feature = "tls"))]
        let transport = if tls {
            return Err("mqtts:// needs the agent built with the `tls` feature".into());
        } else {
            rumqttc::Transport::Tcp
        };
        let inflight = u16::try_from(cfg.max_inflight * 2).unwrap_or(u16::MAX);
        match cfg.protocol {
            MqttVersion::V311 => {
                let mut o = rumqttc::MqttOptions::new(client_id, host, port);
                o.set_keep_alive(cfg.keep_alive)
                    .set_clean_session(true)
                    .set_credentials(user, cfg.token.clone())
                    .set_max_packet_size(1024 * 1024, 1024 * 1024)
                    .set_inflight(inflight)
                    .set_transport(transport);
                let (c, e) = rumqttc::AsyncClient::new(o, cap);
                Ok(Link::V4(c, Box::new(e)))
            }
            MqttVersion::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(client_id, host, port);
                o.set_keep_alive(cfg.keep_alive)
                    .set_clean_start(true)
                    .set_credentials(user, cfg.token.clone())
                    .set_max_packet_size(Some(1024 * 1024))
                    .set_outgoing_inflight_upper_limit(inflight)
                    .set_transport(transport);
                let (c, e) = rumqttc::v5::AsyncClient::new(o, cap);
                Ok(Link::V5(c, Box::new(e)))
            }
        }
    }

    async fn poll(&mut self) -> Result<LinkEvent, String> {
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
        use rumqttc::{Event, Outgoing, Packet};
        match self {
            Link::V4(_, el) => match el.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(_)) => Ok(LinkEvent::Connected),
                Event::Incoming(Packet::PubAck(a)) => Ok(LinkEvent::Acked(a.pkid)),
                Event::Outgoing(Outgoing::Publish(p)) => Ok(LinkEvent::Written(p)),
                _ => Ok(LinkEvent::Other),
            },
            Link::V5(_, el) => match el.poll().await.map_err(|e| e.to_string())? {
                rumqttc::v5::Event::Incoming(P5::ConnAck(_)) => Ok(LinkEvent::Connected),
                rumqttc::v5::Event::Incoming(P5::PubAck(a)) => match a.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                        Ok(LinkEvent::Acked(a.pkid))
                    }
                    r => Ok(LinkEvent::Refused(a.pkid, format!("{r:?}"))),
                },
                rumqttc::v5::Event::Outgoing(Outgoing::Publish(p)) => Ok(LinkEvent::Written(p)),
                _ => Ok(LinkEvent::Other),
            },
        }
    }

    fn try_publish(&self, topic: &str, payload: Vec<u8>) -> bool {
        match self {
            Link::V4(c, _) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .is_ok(),
            Link::V5(c, _) => c
                .try_publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .is_ok(),
        }
    }

    fn disconnect(&self) {
        match self {
            Link::V4(c, _) => {
                let _ = c.try_disconnect();
            }
            Link::V5(c, _) => {
                let _ = c.try_disconnect();
            }
        }
    }
}

// ---------------------------------------------------------------- per-stream sender

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Sent,
    Acked,
    Shed,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    span: u64,
    first_reading: u64,
    count: u64,
    first_ts: i64,
    last_ts: i64,
    state: St,
}

/// One stream's sending side.
#[derive(Debug)]
pub struct StreamSender {
    q: Arc<StreamQueue>,
    m: Arc<StreamMetrics>,
    ack: AckState,
    saved: AckState,
    saved_at: Instant,
    entries: BTreeMap<u64, Entry>,
    backlog: u64,
    boundary: u64,
    live: u64,
    backlog_reader: Option<Reader>,
    live_reader: Option<Reader>,
    oldest_cache: Option<(u64, i64)>,
}

/// A record ready to publish.
struct Ready {
    seq: u64,
    rec: QueueRecord,
}

impl StreamSender {
    /// A sender resuming at the stream's persisted acknowledgement.
    pub fn new(q: Arc<StreamQueue>, metrics: &Metrics) -> crate::Result<Self> {
        let ack = q.load_acked()?;
        let m = metrics.stream(&q.name);
        let mut s = Self {
            q,
            m,
            ack,
            saved: ack,
            saved_at: Instant::now(),
            entries: BTreeMap::new(),
            backlog: ack.next_seq,
            boundary: ack.next_seq,
            live: ack.next_seq,
            backlog_reader: None,
            live_reader: None,
            oldest_cache: None,
        };
        s.refresh_metrics(0);
        Ok(s)
    }

    fn on_connect(&mut self) {
        self.entries.retain(|_, e| e.state != St::Sent);
        self.boundary = self.q.wal.durable_end().max(self.ack.next_seq);
        self.backlog = self.ack.next_seq;
        self.live = self.boundary;
        self.backlog_reader = None;
        self.live_reader = None;
    }

    fn on_disconnect(&mut self) {
        self.entries.retain(|_, e| e.state != St::Sent);
    }

    fn in_catch_up(&self) -> bool {
        self.backlog < self.boundary
    }

    fn live_ready(&self, max_ahead: u64) -> bool {
        self.live < self.q.wal.durable_end()
            && self.live - self.ack.next_seq.min(self.live) < max_ahead
    }

    fn backlog_ready(&self) -> bool {
        self.backlog < self.boundary
    }

    /// Reads the next record of a lane, skipping batches already acknowledged.
    fn next(&mut self, live: bool) -> crate::Result<Option<Ready>> {
        loop {
            let (cursor, end) = if live {
                (self.live, self.q.wal.durable_end())
            } else {
                (self.backlog, self.boundary)
            };
            if cursor >= end {
                return Ok(None);
            }
            if let Some(e) = self.entries.get(&cursor).copied()
                && e.state != St::Sent
            {
                if live {
                    self.live += e.span;
                    self.live_reader = None;
                } else {
                    self.backlog += e.span;
                    self.backlog_reader = None;
                }
                continue;
            }
            let slot = if live {
                &mut self.live_reader
            } else {
                &mut self.backlog_reader
            };
            if slot.as_ref().is_none_or(|r| r.position() != cursor) {
                match self.q.wal.reader(cursor) {
                    Ok(r) => *slot = Some(r),
                    Err(edgepipe_wal::Error::Truncated { .. }) => return Ok(None),
                    Err(source) => {
                        return Err(crate::Error::Queue {
                            stream: self.q.name.clone(),
                            source,
                        });
                    }
                }
            }
            let Some(reader) = slot.as_mut() else {
                return Ok(None);
            };
            let next = match reader.next_record() {
                Ok(n) => n,
                Err(edgepipe_wal::Error::Truncated { .. }) => {
                    *slot = None;
                    return Ok(None);
                }
                Err(source) => {
                    *slot = None;
                    return Err(crate::Error::Queue {
                        stream: self.q.name.clone(),
                        source,
                    });
                }
            };
            let Some((seq, bytes)) = next else {
                return Ok(None);
            };
            let rec = QueueRecord::decode(&bytes).map_err(|reason| crate::Error::BadRecord {
                stream: self.q.name.clone(),
                seq,
                reason,
            })?;
            if live {
                self.live = seq + 1;
            } else {
                self.backlog = seq + 1;
            }
            return Ok(Some(Ready { seq, rec }));
        }
    }

    fn sent(&mut self, seq: u64, rec: &QueueRecord) {
        self.entries.insert(
            seq,
            Entry {
                span: 1,
                first_reading: rec.first_reading,
                count: rec.readings.len() as u64,
                first_ts: rec.first_ts(),
                last_ts: rec.last_ts(),
                state: St::Sent,
            },
        );
    }

    fn unsend(&mut self, seq: u64, live: bool) {
        self.entries.remove(&seq);
        if live {
            self.live = self.live.min(seq);
            self.live_reader = None;
        } else {
            self.backlog = self.backlog.min(seq);
            self.backlog_reader = None;
        }
    }

    fn acked(&mut self, seq: u64) {
        if let Some(e) = self.entries.get_mut(&seq)
            && e.state == St::Sent
        {
            e.state = St::Acked;
            self.m.sent_batches.fetch_add(1, Ordering::Relaxed);
            self.m.sent_readings.fetch_add(e.count, Ordering::Relaxed);
        }
        self.advance();
    }

    fn advance(&mut self) {
        while let Some((&k, &e)) = self.entries.first_key_value() {
            if k != self.ack.next_seq || e.state == St::Sent {
                break;
            }
            self.ack.next_seq = k + e.span;
            self.ack.next_reading = e.first_reading + e.count;
            self.ack.last_ts = e.last_ts;
            self.entries.remove(&k);
        }
        // Entries below the checkpoint can only be stale Sent ones after a gap; drop them.
        let floor = self.ack.next_seq;
        self.entries.retain(|&k, _| k >= floor);
    }

    fn persist(&mut self, force: bool) {
        if self.ack == self.saved {
            return;
        }
        if !force && self.saved_at.elapsed() < Duration::from_millis(100) {
            return;
        }
        match self.q.save_acked(&self.ack) {
            Ok(()) => {
                self.saved = self.ack;
                self.saved_at = Instant::now();
            }
            Err(e) => {
                tracing::error!(stream = %self.q.name, error = %e, "cannot persist acknowledged position")
            }
        }
    }

    /// Detects batches the disk budget deleted before they were acknowledged and turns them
    /// into shed entries; returns one gap event per contiguous shed range.
    fn find_gaps(&mut self) -> Vec<GapEvent> {
        let oldest = self.q.wal.stats().first_seq;
        if oldest <= self.ack.next_seq {
            return Vec::new();
        }
        // first_reading at `oldest` (the first surviving record).
        let Ok(Some(first)) = self.q.read_at(oldest) else {
            return Vec::new();
        };
        let mut gaps = Vec::new();
        let mut s = self.ack.next_seq;
        let mut at = self.ack.next_reading;
        let mut ts_before = self.ack.last_ts;
        let known: Vec<(u64, Entry)> = self
            .entries
            .range(..oldest)
            .map(|(k, e)| (*k, *e))
            .collect();
        let mut shed = Vec::new();
        for (k, e) in known {
            if k > s {
                shed.push((s, k, at, e.first_reading, ts_before, e.first_ts));
            }
            s = k + e.span;
            at = e.first_reading + e.count;
            ts_before = e.last_ts;
        }
        if s < oldest {
            shed.push((
                s,
                oldest,
                at,
                first.first_reading,
                ts_before,
                first.first_ts(),
            ));
        }
        for (from_seq, to_seq, from_reading, to_reading, from_ts, to_ts) in shed {
            let count = to_reading.saturating_sub(from_reading);
            self.entries.insert(
                from_seq,
                Entry {
                    span: to_seq - from_seq,
                    first_reading: from_reading,
                    count,
                    first_ts: from_ts,
                    last_ts: from_ts,
                    state: St::Shed,
                },
            );
            tracing::warn!(stream = %self.q.name, from_seq, to_seq, count, "disk budget shed unsent readings; recording a gap");
            gaps.push(GapEvent {
                stream: self.q.name.clone(),
                count,
                from_ts,
                to_ts,
            });
        }
        for cursor in [&mut self.backlog, &mut self.live, &mut self.boundary] {
            *cursor = (*cursor).max(oldest);
        }
        self.backlog_reader = None;
        self.live_reader = None;
        self.advance();
        gaps
    }

    fn refresh_metrics(&mut self, now_ms: i64) {
        let end = self.q.wal.durable_end();
        self.m
            .queue_depth
            .store(end.saturating_sub(self.ack.next_seq), Ordering::Relaxed);
        self.m
            .queue_bytes
            .store(self.q.wal.stats().disk_bytes, Ordering::Relaxed);
        let age = if self.ack.next_seq >= end {
            0
        } else {
            let appended = match self.oldest_cache {
                Some((seq, at)) if seq == self.ack.next_seq => Some(at),
                _ => self.q.read_at(self.ack.next_seq).ok().flatten().map(|r| {
                    self.oldest_cache = Some((self.ack.next_seq, r.appended_at));
                    r.appended_at
                }),
            };
            appended.map_or(0, |a| now_ms.saturating_sub(a).max(0))
        };
        self.m.oldest_unsent_age_ms.store(age, Ordering::Relaxed);
    }
}

/// A range of readings the disk budget shed before they were sent.
#[derive(Debug, Clone, PartialEq)]
pub struct GapEvent {
    /// The stream.
    pub stream: String,
    /// Exact number of shed readings.
    pub count: u64,
    /// Timestamp of the last reading before the gap (0 if unknown).
    pub from_ts: i64,
    /// Timestamp of the first reading after the gap.
    pub to_ts: i64,
}

impl GapEvent {
    /// The readings that carry the gap upstream (`agent.gap.<stream>.*` at `to_ts`).
    pub fn readings(&self) -> Vec<Reading> {
        let m = |s: &str| Metric::new(format!("agent.gap.{}.{s}", self.stream)).ok();
        let i = |v: u64| Value::I64(i64::try_from(v).unwrap_or(i64::MAX));
        [
            (m("count"), i(self.count)),
            (m("from_ts"), Value::I64(self.from_ts)),
            (m("to_ts"), Value::I64(self.to_ts)),
            (m("cause"), Value::Str("disk_budget".into())),
        ]
        .into_iter()
        .filter_map(|(metric, value)| {
            Some(Reading {
                metric: metric?,
                ts: self.to_ts,
                value,
                ts_source: TsSource::Device,
            })
        })
        .collect()
    }
}

// ---------------------------------------------------------------- the uplink task

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<u128> = (0..8).map(|_| b.next_wait().as_millis()).collect();
        assert!((50..=100).contains(&waits[0]), "{waits:?}");
        assert!((100..=200).contains(&waits[1]), "{waits:?}");
        assert!((200..=400).contains(&waits[2]), "{waits:?}");
        for w in &waits[4..] {
            assert!((500..=1000).contains(w), "{waits:?}");
        }
        b.reset();
        assert!(b.next_wait().as_millis() <= 100);
    }

    #[test]
    fn url_parsing() {
        let mut c = UplinkConfig::default();
        assert_eq!(c.endpoint(), Ok((false, "127.0.0.1".into(), 1883)));
        c.url = "mqtts://broker.example:8883".into();
        assert_eq!(c.endpoint(), Ok((true, "broker.example".into(), 8883)));
        c.url = "http://x:1".into();
        assert!(c.endpoint().is_err());
        c.url = "mqtt://x".into();
        assert!(c.endpoint().is_err());
    }

    #[test]
    fn gap_event_readings_name_stream_count_and_range() {
        let g = GapEvent {
            stream: "telemetry".into(),
            count: 1234,
            from_ts: 10,
            to_ts: 20,
        };
        let rs = g.readings();
        assert_eq!(rs.len(), 4);
        assert_eq!(rs[0].metric.as_str(), "agent.gap.telemetry.count");
        assert_eq!(rs[0].value, Value::I64(1234));
        assert!(rs.iter().all(|r| r.ts == 20));
    }
}
