//! The ingest core shared by every transport: route a message to its device, check it may
//! publish there, decode and validate, drop agent-batch replays, append to the WAL and return
//! only when the record is durable. Refused messages go to the dead-letter store first.
//!
//! Everything here uses runtime-agnostic primitives (the WAL's channels), so the MQTT gateway's
//! ntex threads and the HTTP server's tokio runtime both await it directly.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use edgepipe_protocol::http::{Format, Precision};
use edgepipe_protocol::mapping::TopicMapping;
use edgepipe_protocol::{Decoded, Limits};
use edgepipe_types::{BatchOrigin, DeviceId, IngestRecord, Transport};
use edgepipe_wal::Wal;

use crate::deadletter::{DeadLetter, DeadLetters};
use crate::devices::DeviceRegistry;
use crate::metrics::{Metrics, RejectReason};

/// Source of "now" for the domain code (tests inject their own).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// Why a message was not acknowledged as written.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The client may not publish there.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// The payload is invalid (stored as a dead letter).
    #[error("bad payload: {0}")]
    BadPayload(String),
    /// No topic scheme or mapping matches.
    #[error(
        "unknown topic {0:?}: use edgepipe/v1/{{device_id}}/telemetry or configure a topic mapping"
    )]
    UnknownTopic(String),
    /// Over the device's message rate.
    #[error("device {device} exceeded {limit} messages/s")]
    RateLimited {
        /// Device.
        device: String,
        /// Limit.
        limit: u32,
    },
    /// Payload over the size limit.
    #[error("payload of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// The WAL did not accept it; nothing was acknowledged, the client should retry.
    #[error("server cannot store data right now: {0}")]
    Unavailable(String),
}

impl Rejection {
    /// The metrics label.
    pub fn reason(&self) -> RejectReason {
        match self {
            Rejection::NotAuthorized(_) => RejectReason::NotAuthorized,
            Rejection::BadPayload(_) => RejectReason::BadPayload,
            Rejection::UnknownTopic(_) => RejectReason::UnknownTopic,
            Rejection::RateLimited { .. } => RejectReason::RateLimited,
            Rejection::TooLarge { .. } => RejectReason::TooLarge,
            Rejection::Unavailable(_) => RejectReason::Unavailable,
        }
    }
}

/// A durably accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Readings written (0 for a duplicate).
    pub readings: usize,
    /// A replay of an agent batch already stored.
    pub duplicate: bool,
}

/// Outcome of an HTTP ingest request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpOutcome {
    /// Readings durably written.
    pub accepted: usize,
    /// Lines refused (each stored as a dead letter).
    pub rejected: usize,
    /// The refused lines.
    pub errors: Vec<HttpLineError>,
}

/// One refused HTTP line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpLineError {
    /// 1-based line (or array element); 0 for the whole body.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

/// Per-(device, source, stream) window of agent batch sequence numbers already stored.
#[derive(Debug, Default)]
struct SeqWindow {
    seen: BTreeSet<u64>,
    /// Everything at or below this is treated as seen (pruned from `seen`).
    floor: Option<u64>,
}

const DEDUP_WINDOW: usize = 4096;

impl SeqWindow {
    fn contains(&self, seq: u64) -> bool {
        self.floor.is_some_and(|f| seq <= f) || self.seen.contains(&seq)
    }
    fn insert(&mut self, seq: u64) {
        self.seen.insert(seq);
        while self.seen.len() > DEDUP_WINDOW {
            if let Some(min) = self.seen.pop_first() {
                self.floor = Some(self.floor.map_or(min, |f| f.max(min)));
            }
        }
    }
}

type DedupKey = (String, String, String);

/// An agent batch marked in flight. It travels inside the WAL append's durable callback, so it
/// is dropped, clearing the mark, exactly when that append can no longer become durable
/// unseen: after the callback recorded it as stored, or when the append failed or was never
/// queued (its handler dropped while waiting to enqueue; the callback is dropped with it).
#[derive(Debug)]
struct InFlightBatch {
    set: Arc<Mutex<HashSet<(DedupKey, u64)>>>,
    batch: (DedupKey, u64),
}

impl InFlightBatch {
    /// Its append is durable: into its window first, then (on drop) out of the in-flight set,
    /// so a copy checked in between finds it in one of the two.
    fn stored(self, dedup: &Mutex<HashMap<DedupKey, SeqWindow>>) {
        dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(self.batch.0.clone())
            .or_default()
            .insert(self.batch.1);
    }
}

impl Drop for InFlightBatch {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.batch);
    }
}

/// What to do with an agent batch (see [`Ingestor::begin_batch`]).
#[derive(Debug)]
enum BatchStart {
    /// Already stored: acknowledge without writing.
    Stored,
    /// Another copy is being written right now: refuse this one for now.
    InFlight,
    /// Write it; it stays marked in flight while this lives.
    Write(InFlightBatch),
}

/// Recently stored readings by content hash `(device, metric, ts, value)`, in two generations so
/// memory stays bounded. A message whose every reading is already here is a resend (a QoS 1
/// publish repeated after a crash or lost PUBACK) and is acknowledged without writing again.
#[derive(Debug, Default)]
struct ContentDedup {
    current: HashSet64,
    previous: HashSet64,
}

/// The set's keys are already SipHash outputs: hashing them again would only cost time.
#[derive(Debug, Default, Clone, Copy)]
struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `HashSet<u64>`; fold anything else in for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type HashSet64 = std::collections::HashSet<u64, std::hash::BuildHasherDefault<PassThrough>>;

/// Readings remembered per generation (two generations are kept): 7/8 of 2^20, the most a hash
/// table of 2^20 buckets holds at its load factor. One more and the table would double to 2^21
/// buckets (18 MB instead of 9 MB per generation) for an eighth more history.
const CONTENT_GENERATION: usize = (1 << 20) / 8 * 7;

impl ContentDedup {
    fn contains_all(&self, hashes: &[u64]) -> bool {
        !hashes.is_empty()
            && hashes
                .iter()
                .all(|h| self.current.contains(h) || self.previous.contains(h))
    }
    fn insert_all(&mut self, hashes: &[u64]) {
        // Start a new generation before this message would overfill the current one, so the
        // table never grows past its reserved size. The old generation's table is cleared and
        // reused rather than freed and allocated again.
        if !self.current.is_empty() && self.current.len() + hashes.len() > CONTENT_GENERATION {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
        }
        if self.current.capacity() == 0 {
            self.current.reserve(CONTENT_GENERATION);
        }
        for h in hashes {
            self.current.insert(*h);
        }
    }
    /// Bytes of the two tables (buckets of 8 bytes plus one control byte each).
    #[cfg(test)]
    fn table_bytes(&self) -> usize {
        let bucket = |cap: usize| {
            if cap == 0 {
                0
            } else {
                (cap * 8 / 7).next_power_of_two()
            }
        };
        (bucket(self.current.capacity()) + bucket(self.previous.capacity())) * 9
    }
}

/// Content hashes of a message's readings; empty (never a duplicate) when any timestamp was
/// stamped by the server, since such a reading has no identity of its own to repeat.
///
/// foldhash's quality variant with a seed drawn at start (the index is rebuilt from the WAL at
/// each start, so hashes never outlive the process): well spread in every bit, as the
/// pass-through tables need, unpredictable to devices, and a fraction of SipHash's cost.
fn content_hashes(
    seed: &foldhash::quality::RandomState,
    device: &DeviceId,
    readings: &[edgepipe_types::Reading],
) -> Vec<u64> {
    use std::hash::{BuildHasher, Hash, Hasher};
    if readings
        .iter()
        .any(|r| r.ts_source == edgepipe_types::TsSource::Server)
    {
        return Vec::new();
    }
    readings
        .iter()
        .map(|r| {
            let mut h = seed.build_hasher();
            device.as_str().hash(&mut h);
            r.metric.as_str().hash(&mut h);
            r.ts.hash(&mut h);
            match &r.value {
                edgepipe_types::Value::F64(v) => (0u8, v.to_bits()).hash(&mut h),
                edgepipe_types::Value::I64(v) => (1u8, *v).hash(&mut h),
                edgepipe_types::Value::Bool(v) => (2u8, *v).hash(&mut h),
                edgepipe_types::Value::Str(v) => (3u8, v).hash(&mut h),
            }
            h.finish()
        })
        .collect()
}

/// WAL records scanned at startup to rebuild the replay and resend indexes.
const REBUILD_RECORDS: u64 = 1_000_000;

/// Token bucket per device.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The ingest pipeline front: shared by all gateways.
#[derive(Debug)]
pub struct Ingestor {
    wal: Wal,
    deadletters: DeadLetters,
    devices: DeviceRegistry,
    limits: Limits,
    max_payload: usize,
    rate: u32,
    mappings: Vec<TopicMapping>,
    dedup: Arc<Mutex<HashMap<DedupKey, SeqWindow>>>,
    /// Agent batches whose append is on its way to disk: not yet in `dedup` (that happens when
    /// they are durable), so a second copy arriving meanwhile (a resend on a new connection
    /// after the agent restarted) must not be written too.
    batches_in_flight: Arc<Mutex<HashSet<(DedupKey, u64)>>>,
    content: Arc<Mutex<ContentDedup>>,
    content_seed: foldhash::quality::RandomState,
    buckets: Mutex<HashMap<String, Bucket>>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    auto_register: bool,
}

/// What [`Ingestor::new`] needs.
#[derive(Debug)]
pub struct IngestorParts {
    /// The readings WAL.
    pub wal: Wal,
    /// The dead-letter store.
    pub deadletters: DeadLetters,
    /// The device registry.
    pub devices: DeviceRegistry,
    /// Protocol limits.
    pub limits: Limits,
    /// Largest payload.
    pub max_payload: usize,
    /// Messages/s per device (0 = unlimited).
    pub device_msgs_per_sec: u32,
    /// Compiled topic mappings.
    pub mappings: Vec<TopicMapping>,
    /// Clock.
    pub clock: Arc<dyn Clock>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Dev-mode auto-registration.
    pub auto_register: bool,
}

impl Ingestor {
    /// Builds the ingestor and rebuilds the replay-detection index from the WAL, so a restart
    /// still recognises batches stored before it.
    pub fn new(p: IngestorParts) -> Result<Self, edgepipe_wal::Error> {
        let ing = Ingestor {
            wal: p.wal,
            deadletters: p.deadletters,
            devices: p.devices,
            limits: p.limits,
            max_payload: p.max_payload,
            rate: p.device_msgs_per_sec,
            mappings: p.mappings,
            dedup: Arc::new(Mutex::new(HashMap::new())),
            batches_in_flight: Arc::new(Mutex::new(HashSet::new())),
            content: Arc::new(Mutex::new(ContentDedup::default())),
            content_seed: foldhash::quality::RandomState::default(),
            buckets: Mutex::new(HashMap::new()),
            clock: p.clock,
            metrics: p.metrics,
            auto_register: p.auto_register,
        };
        ing.rebuild_dedup()?;
        Ok(ing)
    }

    fn rebuild_dedup(&self) -> Result<(), edgepipe_wal::Error> {
        let st = self.wal.stats();
        let first = st
            .first_seq
            .max(st.next_seq.saturating_sub(REBUILD_RECORDS));
        let mut reader = self.wal.reader(first)?;
        let mut dedup = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        let mut content = self.content.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0u64;
        while let Some((seq, bytes)) = reader.next_record()? {
            match IngestRecord::decode(&bytes) {
                Ok(rec) => {
                    content.insert_all(&content_hashes(
                        &self.content_seed,
                        &rec.device_id,
                        &rec.readings,
                    ));
                    if let Some(o) = rec.origin {
                        dedup
                            .entry((rec.device_id.to_string(), o.source, o.stream))
                            .or_default()
                            .insert(o.seq);
                        n += 1;
                    }
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "wal record does not decode; skipped for replay detection")
                }
            }
        }
        if n > 0 {
            tracing::info!(batches = n, "replay-detection index rebuilt from the wal");
        }
        Ok(())
    }

    /// The device registry.
    pub fn devices(&self) -> &DeviceRegistry {
        &self.devices
    }

    /// The readings WAL.
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// The dead-letter store.
    pub fn deadletters(&self) -> &DeadLetters {
        &self.deadletters
    }

    /// Counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether unknown devices are registered on first connect.
    pub fn auto_register(&self) -> bool {
        self.auto_register
    }

    /// Now, from the injected clock.
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn rate_ok(&self, device: &str) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let burst = f64::from(self.rate) * 2.0;
        // Look up before inserting so the common case allocates nothing.
        if !buckets.contains_key(device) {
            buckets.insert(
                device.to_string(),
                Bucket {
                    tokens: burst,
                    last: now,
                },
            );
        }
        let Some(b) = buckets.get_mut(device) else {
            return true;
        };
        let refill = now.duration_since(b.last).as_secs_f64() * f64::from(self.rate);
        b.tokens = (b.tokens + refill).min(burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Stores a dead letter, counting failures (never panics, never blocks the caller's error).
    pub async fn dead_letter(&self, entries: Vec<DeadLetter>) {
        let n = entries.len() as u64;
        match self.deadletters.store(entries).await {
            Ok(_) => {
                self.metrics
                    .deadletters_written
                    .fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => {
                self.metrics
                    .deadletters_failed
                    .fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, "could not store dead letters");
            }
        }
    }

    async fn refuse(
        &self,
        device: &DeviceId,
        peer: Option<&str>,
        endpoint: String,
        payload: &[u8],
        rejection: Rejection,
    ) -> Rejection {
        self.metrics.reject(rejection.reason());
        // Unavailable and rate-limited messages are not accepted: the client still holds them
        // (no ack for QoS 1 on 3.1.1; 0x97 on 5), so they are counted, not dead-lettered.
        if !matches!(
            rejection,
            Rejection::Unavailable(_) | Rejection::RateLimited { .. }
        ) {
            let entry = self.deadletters.entry(
                self.clock.now_ms(),
                Some(device.as_str()),
                peer.map(str::to_string),
                endpoint,
                rejection.reason().as_str(),
                rejection.to_string(),
                payload,
            );
            self.dead_letter(vec![entry]).await;
        }
        rejection
    }

    /// Ingests one MQTT publish from the authenticated `device`. `Ok` means durable.
    pub async fn publish(
        &self,
        device: &DeviceId,
        topic: &str,
        payload: &[u8],
        transport: Transport,
        peer: Option<&str>,
    ) -> Result<Accepted, Rejection> {
        self.metrics
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let endpoint = || format!("mqtt:{topic}");
        if payload.len() > self.max_payload {
            let r = Rejection::TooLarge {
                len: payload.len(),
                limit: self.max_payload,
            };
            return Err(self.refuse(device, peer, endpoint(), payload, r).await);
        }
        let now = self.clock.now_ms();
        let decoded: Result<(Decoded, Vec<(String, String)>), Rejection> =
            if let Some(id) = edgepipe_protocol::parse_telemetry_topic(topic) {
                if id != device.as_str() {
                    Err(Rejection::NotAuthorized(format!(
                        "device {device} may not publish to {topic}"
                    )))
                } else {
                    edgepipe_protocol::decode_payload_for(device, payload, now, &self.limits)
                        .map(|d| (d, Vec::new()))
                        .map_err(|e| Rejection::BadPayload(e.to_string()))
                }
            } else if let Some((m, mapped)) = self
                .mappings
                .iter()
                .find_map(|m| m.matches(topic).map(|t| (m, t)))
            {
                if mapped.device_id != device.as_str() {
                    Err(Rejection::NotAuthorized(format!(
                        "device {device} may not publish to {topic} (it names device {})",
                        mapped.device_id
                    )))
                } else {
                    m.decode(&mapped, payload, now, &self.limits)
                        .map(|d| (d, mapped.tags.clone()))
                        .map_err(|e| Rejection::BadPayload(e.to_string()))
                }
            } else {
                Err(Rejection::UnknownTopic(topic.to_string()))
            };
        let (decoded, tags) = match decoded {
            Ok(d) => d,
            Err(r) => return Err(self.refuse(device, peer, endpoint(), payload, r).await),
        };
        if !self.rate_ok(device.as_str()) {
            let r = Rejection::RateLimited {
                device: device.to_string(),
                limit: self.rate,
            };
            return Err(self.refuse(device, peer, endpoint(), payload, r).await);
        }
        self.write(device, decoded, tags, transport).await
    }

    /// Whether an agent batch is already stored, being stored by another copy, or is ours to
    /// write (then it is marked in flight while the returned mark lives).
    fn begin_batch(&self, device: &DeviceId, o: &BatchOrigin) -> BatchStart {
        let key = (device.to_string(), o.source.clone(), o.stream.clone());
        // Lock order: in-flight set, then the windows (the durable callback takes them one at
        // a time, windows first, so a batch is in one or the other, or both, never neither).
        let mut in_flight = self
            .batches_in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let stored = self
            .dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .is_some_and(|w| w.contains(o.seq));
        if stored {
            return BatchStart::Stored;
        }
        if !in_flight.insert((key.clone(), o.seq)) {
            return BatchStart::InFlight;
        }
        BatchStart::Write(InFlightBatch {
            set: self.batches_in_flight.clone(),
            batch: (key, o.seq),
        })
    }

    async fn write(
        &self,
        device: &DeviceId,
        decoded: Decoded,
        tags: Vec<(String, String)>,
        transport: Transport,
    ) -> Result<Accepted, Rejection> {
        let mut batch = None;
        if let Some(o) = &decoded.origin {
            match self.begin_batch(device, o) {
                BatchStart::Stored => {
                    self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
                    return Ok(Accepted {
                        readings: 0,
                        duplicate: true,
                    });
                }
                // Not acknowledged: the sender resends it, by when the first copy is durable
                // (then a duplicate) or failed (then written).
                BatchStart::InFlight => {
                    self.metrics.reject(RejectReason::Unavailable);
                    return Err(Rejection::Unavailable(format!(
                        "batch {}/{} seq {} is already being written; resend it",
                        o.source, o.stream, o.seq
                    )));
                }
                BatchStart::Write(b) => batch = Some(b),
            }
        }
        let hashes = content_hashes(&self.content_seed, device, &decoded.readings);
        if decoded.origin.is_none()
            && self
                .content
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_all(&hashes)
        {
            self.metrics.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(Accepted {
                readings: 0,
                duplicate: true,
            });
        }
        let n = decoded.readings.len();
        let rec = IngestRecord {
            device_id: device.clone(),
            received_at: self.clock.now_ms(),
            transport,
            origin: decoded.origin.clone(),
            tags,
            readings: decoded.readings,
        };
        // The index update runs on the WAL writer once the record is durable, so a handler
        // dropped mid-await (its connection closed) cannot leave a stored record unindexed.
        let content = self.content.clone();
        let dedup = self.dedup.clone();
        let metrics = self.metrics.clone();
        // Through the thread's submission batch, when it has one (MQTT workers, see `submit`).
        let result = crate::submit::append_then(&self.wal, rec.encode(), move |_| {
            metrics.messages_written.fetch_add(1, Ordering::Relaxed);
            metrics
                .readings_written
                .fetch_add(n as u64, Ordering::Relaxed);
            content
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert_all(&hashes);
            if let Some(b) = batch {
                b.stored(&dedup);
            }
        })
        .await;
        match result {
            Ok(_) => Ok(Accepted {
                readings: n,
                duplicate: false,
            }),
            Err(e) => {
                tracing::error!(error = %e, device = %device, "wal append failed; not acknowledging");
                self.metrics.reject(RejectReason::Unavailable);
                Err(Rejection::Unavailable(e.to_string()))
            }
        }
    }

    /// Ingests an HTTP body. Valid lines are written (durably, before this returns); invalid
    /// ones are stored as dead letters and reported.
    pub async fn http(
        &self,
        device: &DeviceId,
        format: Format,
        precision: Precision,
        body: &[u8],
        peer: Option<&str>,
    ) -> Result<HttpOutcome, Rejection> {
        self.metrics.http_requests.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        if !self.rate_ok(device.as_str()) {
            let r = Rejection::RateLimited {
                device: device.to_string(),
                limit: self.rate,
            };
            return Err(self
                .refuse(device, peer, "http:/api/v1/ingest".into(), body, r)
                .await);
        }
        let now = self.clock.now_ms();
        let out = edgepipe_protocol::http::decode_body(
            format,
            body,
            device,
            now,
            &self.limits,
            precision,
        );
        let mut accepted = 0;
        if !out.readings.is_empty() {
            let decoded = Decoded {
                origin: None,
                readings: out.readings,
            };
            accepted = self
                .write(device, decoded, Vec::new(), Transport::Http)
                .await?
                .readings;
        }
        if !out.errors.is_empty() {
            for _ in &out.errors {
                self.metrics.reject(RejectReason::BadPayload);
            }
            let entries = out
                .errors
                .iter()
                .map(|e| {
                    self.deadletters.entry(
                        now,
                        Some(device.as_str()),
                        peer.map(str::to_string),
                        format!("http:/api/v1/ingest#line={}", e.line),
                        RejectReason::BadPayload.as_str(),
                        e.message.clone(),
                        &e.raw,
                    )
                })
                .collect();
            self.dead_letter(entries).await;
        }
        Ok(HttpOutcome {
            accepted,
            rejected: out.errors.len(),
            errors: out
                .errors
                .into_iter()
                .map(|e| HttpLineError {
                    line: e.line,
                    message: e.message,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resend index remembers between one and two generations of readings, and its two
    /// tables keep their reserved size however messages of any size fill them.
    #[test]
    fn the_content_index_keeps_two_generations_in_fixed_tables() {
        let mut c = ContentDedup::default();
        let mut next = 0u64;
        let mut batch = |n: usize| -> Vec<u64> {
            (0..n)
                .map(|_| {
                    next += 1;
                    next.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                })
                .collect()
        };
        let first = batch(100);
        c.insert_all(&first);
        let one_table = c.table_bytes();
        assert!(
            one_table <= 10 << 20,
            "one generation takes {one_table} bytes"
        );
        // Fill well past two generations with messages of 1 and 100 readings.
        let mut last = Vec::new();
        for i in 0..(CONTENT_GENERATION * 5 / 2) / 50 {
            last = batch(if i % 2 == 0 { 1 } else { 99 });
            c.insert_all(&last);
        }
        assert!(c.contains_all(&last), "the newest message is remembered");
        assert!(
            !c.contains_all(&first),
            "the oldest generation is forgotten"
        );
        assert!(c.current.len() <= CONTENT_GENERATION);
        assert!(c.previous.len() > CONTENT_GENERATION - 100);
        assert_eq!(c.table_bytes(), 2 * one_table, "the tables never grew");
    }

    /// Two copies of one agent batch at once (a resend on a new connection while the first
    /// copy's append is still on its way to disk): the second is refused until the first is
    /// stored (then it is a duplicate) or has failed (then it is written).
    #[test]
    fn a_batch_copy_is_refused_while_another_is_in_flight() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let ing = Ingestor::new(IngestorParts {
            wal: Wal::open(dir.path().join("wal"), edgepipe_wal::WalConfig::default())?,
            deadletters: DeadLetters::open(dir.path(), &Default::default())?,
            devices: DeviceRegistry::open(dir.path())?,
            limits: Limits::default(),
            max_payload: 128 * 1024,
            device_msgs_per_sec: 0,
            mappings: Vec::new(),
            clock: Arc::new(SystemClock),
            metrics: Arc::new(Metrics::default()),
            auto_register: false,
        })?;
        let dev = DeviceId::new("gw-1")?;
        let o = BatchOrigin {
            source: "agent-a".into(),
            stream: "telemetry".into(),
            seq: 7,
        };
        let BatchStart::Write(first) = ing.begin_batch(&dev, &o) else {
            return Err("a new batch is not ours to write".into());
        };
        assert!(matches!(ing.begin_batch(&dev, &o), BatchStart::InFlight));
        // Another seq of the same stream is independent.
        let other = BatchOrigin {
            seq: 8,
            ..o.clone()
        };
        let BatchStart::Write(_eight) = ing.begin_batch(&dev, &other) else {
            return Err("seq 8 is not ours to write".into());
        };
        // The first append failed or was never queued (its mark dropped with the callback):
        // the next copy is written.
        drop(first);
        let BatchStart::Write(second) = ing.begin_batch(&dev, &o) else {
            return Err("a failed batch could not be written again".into());
        };
        // Stored: every later copy is a duplicate, and only seq 8 is still in flight.
        second.stored(&ing.dedup);
        assert!(matches!(ing.begin_batch(&dev, &o), BatchStart::Stored));
        assert_eq!(
            ing.batches_in_flight
                .lock()
                .map_err(|e| e.to_string())?
                .len(),
            1,
            "only seq 8 is still in flight"
        );
        Ok(())
    }

    /// Through the real append path: an agent batch whose append fails (too large for the
    /// WAL; the durable callback, holding the in-flight mark, is dropped unrun) can be written
    /// again, and one whose append is durable is a duplicate from then on; neither leaves a
    /// mark behind.
    #[tokio::test]
    async fn an_append_that_fails_clears_the_mark_and_a_durable_one_stores_it()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ing = Ingestor::new(IngestorParts {
            wal: Wal::open(
                dir.path().join("wal"),
                edgepipe_wal::WalConfig {
                    max_record_bytes: 512,
                    ..edgepipe_wal::WalConfig::default()
                },
            )?,
            deadletters: DeadLetters::open(dir.path(), &Default::default())?,
            devices: DeviceRegistry::open(dir.path())?,
            limits: Limits::default(),
            max_payload: 128 * 1024,
            device_msgs_per_sec: 0,
            mappings: Vec::new(),
            clock: Arc::new(SystemClock),
            metrics: Arc::new(Metrics::default()),
            auto_register: false,
        })?;
        let dev = DeviceId::new("gw-1")?;
        let batch = |seq: u64, n: i64| -> Result<Decoded, edgepipe_types::Error> {
            Ok(Decoded {
                origin: Some(BatchOrigin {
                    source: "agent-a".into(),
                    stream: "telemetry".into(),
                    seq,
                }),
                readings: (0..n)
                    .map(|i| {
                        Ok(edgepipe_types::Reading {
                            metric: edgepipe_types::Metric::new(format!("m{i}"))?,
                            ts: 1_700_000_000_000,
                            value: edgepipe_types::Value::F64(i as f64),
                            ts_source: edgepipe_types::TsSource::Device,
                        })
                    })
                    .collect::<Result<_, edgepipe_types::Error>>()?,
            })
        };
        let too_big = ing
            .write(&dev, batch(1, 100)?, Vec::new(), Transport::Mqtt5)
            .await;
        assert!(matches!(too_big, Err(Rejection::Unavailable(_))));
        let origin = |seq| BatchOrigin {
            source: "agent-a".into(),
            stream: "telemetry".into(),
            seq,
        };
        assert!(matches!(
            ing.begin_batch(&dev, &origin(1)),
            BatchStart::Write(_)
        ));
        let ok = ing
            .write(&dev, batch(2, 2)?, Vec::new(), Transport::Mqtt5)
            .await;
        assert!(matches!(
            ok,
            Ok(Accepted {
                duplicate: false,
                ..
            })
        ));
        assert!(matches!(
            ing.begin_batch(&dev, &origin(2)),
            BatchStart::Stored
        ));
        assert!(
            ing.batches_in_flight
                .lock()
                .map_err(|e| e.to_string())?
                .is_empty()
        );
        Ok(())
    }

    #[test]
    fn seq_window_prunes_to_a_floor() {
        let mut w = SeqWindow::default();
        for s in 0..(DEDUP_WINDOW as u64 + 10) {
            w.insert(s);
        }
        assert!(w.contains(0));
        assert!(w.contains(DEDUP_WINDOW as u64 + 9));
        assert!(!w.contains(DEDUP_WINDOW as u64 + 10));
        assert_eq!(w.seen.len(), DEDUP_WINDOW);
    }
}
