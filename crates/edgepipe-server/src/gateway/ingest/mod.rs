//! The ingest core shared by every transport: route a message to its device, check it may
//! publish there, decode and validate, drop agent-batch replays, append to the WAL and return
//! only when the record is durable. Refused messages go to the dead-letter store first.
//!
//! Everything here uses runtime-agnostic primitives (the WAL's channels), so the MQTT gateway's
//! ntex threads and the HTTP server's tokio runtime both await it directly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use edgepipe_protocol::http::{Format, Precision};
use edgepipe_protocol::mapping::TopicMapping;
use edgepipe_protocol::{Decoded, Limits};
use edgepipe_types::{BatchOrigin, Clock, DeviceId, IngestRecord, Transport};
use edgepipe_wal::Wal;

use crate::gateway::deadletter::{DeadLetter, DeadLetters};
use crate::gateway::dedup::{ContentDedup, DedupKey, InFlightBatch, SeqWindow, content_hashes};
use crate::gateway::devices::DeviceRegistry;
use crate::gateway::metrics::{Metrics, RejectReason};

pub use self::outcome::{Accepted, HttpLineError, HttpOutcome, Rejection};
pub use self::submit::{Direct, Submit};

mod admission;
mod outcome;
mod submit;
#[cfg(test)]
mod tests;

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
    cert_rules: crate::gateway::identity::CertRules,
    auth_guard: crate::gateway::auth_guard::AuthGuard,
    metric_names: crate::gateway::cardinality::CardinalityGuard,
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
            cert_rules: Default::default(),
            auth_guard: crate::gateway::auth_guard::AuthGuard::new(0, false),
            metric_names: crate::gateway::cardinality::CardinalityGuard::new(0),
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

    /// Refuses a body over the payload limit of which `start` was read (`seen` bytes in all
    /// when reading stopped): counted and dead-lettered like an oversized MQTT payload.
    pub async fn refuse_too_large(
        &self,
        device: &DeviceId,
        peer: Option<&str>,
        endpoint: &str,
        start: &[u8],
        seen: usize,
    ) -> Rejection {
        self.metrics
            .messages_received
            .fetch_add(1, Ordering::Relaxed);
        let r = Rejection::TooLarge {
            len: seen,
            limit: self.max_payload,
        };
        self.refuse(device, peer, endpoint.to_owned(), start, r)
            .await
    }

    /// The largest payload accepted, bytes.
    pub fn max_payload(&self) -> usize {
        self.max_payload
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
        submit: &impl Submit,
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
        if let Err(r) = self.check_metric_names(device, &decoded.readings) {
            return Err(self.refuse(device, peer, endpoint(), payload, r).await);
        }
        self.write(submit, device, decoded, tags, transport).await
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
        submit: &impl Submit,
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
        // The transport's submission path (the MQTT workers batch appends, see `mqtt_submit`).
        let result = submit
            .append_then(&self.wal, rec.encode(), move |_| {
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
        submit: &impl Submit,
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
        if let Err(r) = self.check_metric_names(device, &out.readings) {
            return Err(self
                .refuse(device, peer, "http:/api/v1/ingest".into(), body, r)
                .await);
        }
        let mut accepted = 0;
        if !out.readings.is_empty() {
            let decoded = Decoded {
                origin: None,
                readings: out.readings,
            };
            accepted = self
                .write(submit, device, decoded, Vec::new(), Transport::Http)
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
