//! The detection stage: a WAL consumer that scores every numeric reading with the live
//! `edgepipe-detect` detector, writes anomaly events to the lake's `anomalies` table and hands
//! them to an [`AnomalyHandler`] (the case manager), from which it also takes operator
//! feedback (false positives raise that series' threshold).
//!
//! Exactly-once firing through crashes: the detector is deterministic, and its state is
//! checkpointed together with the WAL position it has consumed. A checkpoint stores the events
//! of the WAL range since the last one through the lake's crash-safe flush protocol, and inside
//! that protocol's commit step writes the detector snapshot (atomically: temp file, fsync,
//! rename) and then moves the WAL checkpoint. After a crash the stage restores the last
//! snapshot, the lake undoes the half-written range, and replaying the same WAL records yields
//! the same events under the same ids: nothing fires twice, nothing is missed, and there is no
//! re-warm-up.
//!
//! Live events go to the handler as soon as they are scored (not at the next checkpoint), so an
//! anomaly reaches its case within a second; the handler dedups on the stable event id, so the
//! redelivery after a crash is harmless. Feedback is applied at a checkpoint and the last
//! applied feedback id is part of the snapshot.
//!
//! Agents' gap reports (`agent.gap.<stream>.count` readings) become `gap` events.
//!
//! Replayed (late, backfilled) readings are scored and learned, but the events they raise are
//! recorded with `replayed = true` and not handed to the case manager: a condition that has
//! already cleared does not page anyone. Silence is checked against the newest event time in
//! the WAL, clamped to its receive time (deterministic on replay; a fast backlog is not
//! silence).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use edgepipe_detect::{
    DETECTOR_SNAPSHOT_VERSION, Detector, DetectorConfig, Event, ModelParams, ScoreStatus, SeriesKey,
};
use edgepipe_lake::LakeStore;
use edgepipe_types::{DeviceId, IngestRecordView, Metric, Transport, ValueView};
use edgepipe_wal::Wal;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Name of the stage's WAL consumer and lake table.
pub const CONSUMER: &str = "detect";
/// Lake table of anomaly events.
pub const TABLE: &str = edgepipe_lake::tables::ANOMALIES;

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

/// `[detect.retrain]`: fit a new model artifact from the lake on a schedule, evaluate it on
/// operators' labels against the promoted one, and promote it when it does better.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrainConfig {
    /// How often to retrain ("0s" = never; `edgepipe models train` still works by hand).
    #[serde(with = "edgepipe_lake::duration_serde")]
    pub every: Duration,
    /// History to fit on.
    #[serde(with = "edgepipe_lake::duration_serde")]
    pub since: Duration,
    /// Promote the new artifact when its score on the labels beats the promoted one's (with
    /// no labels at all: only when nothing is promoted yet).
    pub auto_promote: bool,
}

impl Default for RetrainConfig {
    fn default() -> Self {
        Self {
            every: Duration::ZERO,
            since: Duration::from_secs(30 * 86_400),
            auto_promote: true,
        }
    }
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

/// An anomaly event as stored and handed on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyEvent {
    /// Stable id: `<wal_seq>-<n>` (or `silence-<ts>/<device>[/<metric>]`); the same event
    /// replayed after a crash has the same id.
    pub id: String,
    /// The WAL record that raised it.
    pub wal_seq: u64,
    /// Model version (hash of the model parameters in force).
    pub model_version: String,
    /// Raised by replayed (late) data: recorded, not handed to cases.
    pub replayed: bool,
    /// The detector's finding with its explanation.
    pub event: Event,
}

/// Operator feedback on one series, as the detection stage applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackItem {
    /// Increasing id; the stage checkpoints the last one it applied.
    pub id: i64,
    /// The series.
    pub key: SeriesKey,
    /// The verdict.
    pub feedback: edgepipe_detect::Feedback,
}

/// Receives live (not replayed) anomaly events as soon as they are scored, before they are
/// checkpointed, and supplies operator feedback. Implementations must be idempotent on
/// [`AnomalyEvent::id`]: after a crash the events since the last checkpoint are delivered
/// again. An error makes the stage restart from its last checkpoint (and deliver again), so
/// nothing is skipped while the receiver is down.
#[async_trait::async_trait]
pub trait AnomalyHandler: Send + Sync + std::fmt::Debug {
    /// Called with new events in WAL order. When it returns `Ok`, they are taken.
    async fn handle(&self, events: &[AnomalyEvent]) -> anyhow::Result<()>;

    /// Feedback with id greater than `after`, in id order, and the highest id looked at
    /// (labels that are not detector feedback are skipped, and the position moves past them).
    async fn feedback_since(&self, after: i64) -> anyhow::Result<(Vec<FeedbackItem>, i64)>;
}

/// Counters for metrics and status.
#[derive(Debug, Default)]
pub struct DetectMetrics {
    /// Readings scored.
    pub scored: AtomicU64,
    /// Readings not scored: non-numeric values.
    pub skipped_non_numeric: AtomicU64,
    /// Readings at or before their series' newest timestamp (late duplicates).
    pub late: AtomicU64,
    /// Anomaly events stored.
    pub events: AtomicU64,
    /// Checkpoints written.
    pub checkpoints: AtomicU64,
    /// WAL position consumed and checkpointed.
    pub position: AtomicU64,
    /// Nanoseconds spent scoring (for the per-reading latency).
    pub scoring_nanos: AtomicU64,
    /// Operator feedback items applied to thresholds.
    pub feedback_applied: AtomicU64,
    /// Gap reports from agents turned into events.
    pub gaps: AtomicU64,
    /// Version of the model parameters in force.
    pub model_version: std::sync::Mutex<String>,
}

impl DetectMetrics {
    fn set_model_version(&self, v: &str) {
        let mut g = self.model_version.lock().unwrap_or_else(|p| p.into_inner());
        v.clone_into(&mut g);
    }

    /// Version of the model parameters in force.
    pub fn model_version(&self) -> String {
        self.model_version
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    next_seq: u64,
    silence_clock: i64,
    detector: Vec<u8>,
    /// Last operator feedback id applied (version 2 on).
    feedback_pos: i64,
}

/// Version 1 had no `feedback_pos`.
#[derive(Debug, Deserialize)]
struct StateFileV1 {
    version: u32,
    next_seq: u64,
    silence_clock: i64,
    detector: Vec<u8>,
}

const STATE_VERSION: u32 = 2;

fn decode_state(bytes: &[u8]) -> Result<StateFile, String> {
    let (version, _) = postcard::take_from_bytes::<u32>(bytes).map_err(|e| e.to_string())?;
    match version {
        1 => {
            let v1: StateFileV1 = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            Ok(StateFile {
                version: v1.version,
                next_seq: v1.next_seq,
                silence_clock: v1.silence_clock,
                detector: v1.detector,
                feedback_pos: 0,
            })
        }
        STATE_VERSION => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
        v => Err(format!(
            "state version {v} is newer than this binary's {STATE_VERSION}"
        )),
    }
}

/// The version string of a parameter set: the first 12 hex digits of the SHA-256 of its JSON.
pub fn model_version(params: &ModelParams) -> String {
    use sha2::Digest;
    let json = serde_json::to_vec(params).unwrap_or_default();
    let h = sha2::Sha256::digest(&json);
    format!("m{}-{}", params.version, &hex::encode(h)[..12])
}

/// The running stage.
#[derive(Debug)]
pub struct DetectStage {
    wal: Wal,
    consumer: edgepipe_wal::Consumer,
    store: LakeStore,
    state_path: PathBuf,
    cfg: DetectConfig,
    detector: Detector,
    model_version: String,
    next_seq: u64,
    silence_clock: i64,
    pending: Vec<AnomalyEvent>,
    /// How many of `pending` the handler has taken.
    delivered: usize,
    feedback_pos: i64,
    first_uncheckpointed: u64,
    handler: Option<Arc<dyn AnomalyHandler>>,
    metrics: Arc<DetectMetrics>,
    data_dir: PathBuf,
}

impl DetectStage {
    /// Opens the stage: restores the last checkpoint (or starts fresh), undoes a half-written
    /// event range.
    pub async fn open(
        data_dir: &Path,
        wal: Wal,
        store: LakeStore,
        cfg: DetectConfig,
        handler: Option<Arc<dyn AnomalyHandler>>,
        metrics: Arc<DetectMetrics>,
    ) -> anyhow::Result<Self> {
        let dir = data_dir.join("detect");
        std::fs::create_dir_all(&dir)?;
        let state_path = dir.join("state.bin");
        let consumer = wal.consumer(CONSUMER)?;
        let (detector, next_seq, silence_clock, feedback_pos) = match std::fs::read(&state_path) {
            Ok(bytes) => {
                let st = decode_state(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", state_path.display()))?;
                match Detector::snapshot_version(&st.detector) {
                    // Versions start at 1; a 0 is damage, not an old layout.
                    Some(v) if (1..DETECTOR_SNAPSHOT_VERSION).contains(&v) => {
                        // Written by an edgepipe whose detectors kept other state: the series
                        // warm up again from the checkpointed position (nothing is rescored
                        // twice), and the promoted model and operator feedback are applied
                        // again as on a first start.
                        tracing::warn!(
                            path = %state_path.display(),
                            snapshot_version = v,
                            current = DETECTOR_SNAPSHOT_VERSION,
                            "detect: detector state from another version; series warm up again"
                        );
                        (
                            Detector::new(cfg.detector, ModelParams::default())?,
                            st.next_seq,
                            st.silence_clock,
                            0,
                        )
                    }
                    _ => (
                        Detector::restore(cfg.detector, &st.detector)
                            .map_err(|e| anyhow::anyhow!("{}: {e}", state_path.display()))?,
                        st.next_seq,
                        st.silence_clock,
                        st.feedback_pos,
                    ),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                Detector::new(cfg.detector, ModelParams::default())?,
                consumer.position(),
                i64::MIN,
                0,
            ),
            Err(e) => return Err(anyhow::anyhow!("{}: {e}", state_path.display())),
        };
        edgepipe_lake::sink::recover(&store, TABLE, next_seq).await?;
        let model_version = model_version(detector.params());
        metrics.position.store(next_seq, Ordering::Relaxed);
        metrics.set_model_version(&model_version);
        let mut stage = Self {
            wal,
            consumer,
            store,
            state_path,
            cfg,
            detector,
            model_version,
            next_seq,
            silence_clock,
            pending: Vec::new(),
            delivered: 0,
            feedback_pos,
            first_uncheckpointed: next_seq,
            handler,
            metrics,
            data_dir: data_dir.to_path_buf(),
        };
        stage.swap_model_if_promoted();
        Ok(stage)
    }

    /// Hot-swaps the promoted model (`<data>/models/CURRENT`) when it differs from the one in
    /// force. Called at open and at every checkpoint; a broken artifact is logged and skipped.
    fn swap_model_if_promoted(&mut self) {
        // Only the small CURRENT file is read per checkpoint; the artifact only when it changed.
        let version = match crate::models::current_version(&self.data_dir) {
            Ok(Some(v)) if v != self.model_version => v,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "detect: reading the promoted model failed");
                return;
            }
        };
        let swapped = crate::models::load(&self.data_dir, &version)
            .and_then(|params| Ok(self.detector.set_params(params)?));
        match swapped {
            Ok(reset) => {
                tracing::info!(from = %self.model_version, to = %version, series_reset = reset, "detect: promoted model swapped in");
                self.model_version = version;
                self.metrics.set_model_version(&self.model_version);
            }
            Err(e) => {
                tracing::error!(version, error = %format!("{e:#}"), "detect: promoted model refused")
            }
        }
    }

    /// Scores records until `stop`, checkpointing every `checkpoint_interval` and at the end.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> anyhow::Result<()> {
        let mut last_checkpoint = Instant::now();
        let mut last_read = Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            let progressed = self.step()?;
            if progressed {
                last_read = Instant::now();
            }
            self.deliver().await?;
            if last_checkpoint.elapsed() >= self.cfg.checkpoint_interval {
                self.checkpoint().await?;
                last_checkpoint = Instant::now();
            }
            if progressed {
                continue;
            }
            let wal = self.wal.clone();
            let after = self.next_seq;
            let wait = self
                .cfg
                .checkpoint_interval
                .saturating_sub(last_checkpoint.elapsed())
                .max(Duration::from_millis(1));
            tokio::select! {
                r = wal.wait_beyond_no_sooner(after, last_read + self.cfg.read_interval) => {
                    if let Err(edgepipe_wal::Error::Closed) = r {
                        break;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        self.step()?;
        self.checkpoint().await
    }

    /// Scores every durable record not yet scored. Returns whether anything was read.
    pub fn step(&mut self) -> anyhow::Result<bool> {
        let late_ms = i64::try_from(self.cfg.late_after.as_millis()).unwrap_or(i64::MAX);
        let t0 = Instant::now();
        let wal = self.wal.clone();
        let read = wal.read_each(self.next_seq, 2048, |seq, payload| {
            self.process_record(seq, payload, late_ms)
        });
        let n = match read {
            Ok(n) => n,
            Err(edgepipe_wal::Error::Truncated { oldest, .. }) => {
                self.next_seq = oldest;
                return Ok(true);
            }
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            return Ok(false);
        }
        self.metrics
            .scoring_nanos
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        Ok(true)
    }

    /// Scores one WAL record and moves the silence clock.
    fn process_record(&mut self, seq: u64, payload: &[u8], late_ms: i64) {
        self.next_seq = seq + 1;
        let Ok(rec) = IngestRecordView::decode(payload) else {
            // The lake writer logs and counts undecodable records; nothing to score.
            return;
        };
        self.score_record(seq, &rec, late_ms);
        // The silence clock follows event time (clamped to receive time, so a device with
        // a fast clock cannot move it ahead): a backlog replayed fast does not look like
        // every series falling silent. The check walks every series, so it runs when the
        // clock enters a new second, not per record (silence is judged in tens of seconds).
        let newest = rec.readings.iter().map(|r| r.ts).max().unwrap_or(i64::MIN);
        let clock = newest.min(rec.received_at);
        if clock <= self.silence_clock {
            return;
        }
        let new_second = clock.div_euclid(1000) > self.silence_clock.div_euclid(1000);
        self.silence_clock = clock;
        if !new_second {
            return;
        }
        for e in self.detector.tick(self.silence_clock) {
            // `/` cannot occur in device ids or metric names: no two silences share an id.
            let id = format!(
                "silence-{}/{}{}",
                e.ts,
                e.device.as_str(),
                e.metric
                    .as_ref()
                    .map(|m| format!("/{}", m.as_str()))
                    .unwrap_or_default()
            );
            self.push_event(id, seq, false, e);
        }
    }

    /// Hands events not yet taken to the handler (live ones only).
    async fn deliver(&mut self) -> anyhow::Result<()> {
        let Some(h) = &self.handler else {
            self.delivered = self.pending.len();
            return Ok(());
        };
        if self.delivered == self.pending.len() {
            return Ok(());
        }
        let live: Vec<AnomalyEvent> = self.pending[self.delivered..]
            .iter()
            .filter(|e| !e.replayed)
            .cloned()
            .collect();
        if !live.is_empty() {
            h.handle(&live).await?;
        }
        self.delivered = self.pending.len();
        Ok(())
    }

    /// The snapshot as stored: position, silence clock, detector state, feedback position.
    fn state_bytes(&self) -> anyhow::Result<Vec<u8>> {
        Ok(postcard::to_allocvec(&StateFile {
            version: STATE_VERSION,
            next_seq: self.next_seq,
            silence_clock: self.silence_clock,
            detector: self.detector.snapshot()?,
            feedback_pos: self.feedback_pos,
        })?)
    }

    /// Applies operator feedback that arrived since the last checkpoint.
    async fn apply_feedback(&mut self) -> anyhow::Result<()> {
        let Some(h) = &self.handler else {
            return Ok(());
        };
        let (items, upto) = h.feedback_since(self.feedback_pos).await?;
        self.feedback_pos = self.feedback_pos.max(upto);
        for it in items {
            let thr = self.detector.apply_feedback(&it.key, it.feedback);
            tracing::info!(device = it.key.device.as_str(), metric = it.key.metric.as_str(), feedback = ?it.feedback, threshold = thr, "detect: operator feedback applied");
            self.feedback_pos = self.feedback_pos.max(it.id);
            self.metrics
                .feedback_applied
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn score_record(&mut self, seq: u64, rec: &IngestRecordView<'_>, late_ms: i64) {
        let mut n = 0usize;
        for r in &rec.readings {
            // An agent's gap report (`agent.gap.<stream>.count`): a gap event, not a signal
            // to model.
            if let Some(stream) = r
                .metric
                .strip_prefix("agent.gap.")
                .and_then(|m| m.strip_suffix(".count"))
            {
                let count = match r.value {
                    ValueView::F64(v) => v,
                    ValueView::I64(v) => v as f64,
                    _ => 0.0,
                };
                // The view's ids were validated when it was decoded.
                if count > 0.0
                    && let (Ok(device), Ok(metric)) =
                        (DeviceId::new(rec.device_id), Metric::new(r.metric))
                {
                    let replayed =
                        rec.transport == Transport::Replay || rec.received_at - r.ts > late_ms;
                    let id = format!("{seq}-{n}");
                    n += 1;
                    self.metrics.gaps.fetch_add(1, Ordering::Relaxed);
                    self.push_event(
                        id,
                        seq,
                        replayed,
                        Event {
                            kind: edgepipe_detect::EventKind::Gap,
                            device,
                            metric: Some(metric),
                            ts: r.ts,
                            score: 1.0,
                            threshold: 0.0,
                            explanation: edgepipe_detect::Explanation {
                                value: Some(count),
                                ..Default::default()
                            },
                        },
                    );
                    tracing::debug!(stream, count, "detect: agent gap report");
                }
                continue;
            }
            let v = match r.value {
                ValueView::F64(v) => v,
                ValueView::I64(v) => v as f64,
                ValueView::Bool(b) => f64::from(u8::from(b)),
                ValueView::Str(_) => {
                    self.metrics
                        .skipped_non_numeric
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            // The view's ids were validated when it was decoded, so this cannot fail.
            let Ok(s) = self.detector.score_ids(rec.device_id, r.metric, r.ts, v) else {
                continue;
            };
            match s.status {
                ScoreStatus::Scored => {
                    self.metrics.scored.fetch_add(1, Ordering::Relaxed);
                }
                ScoreStatus::Late => {
                    self.metrics.late.fetch_add(1, Ordering::Relaxed);
                }
                ScoreStatus::Overflow => {}
            }
            let replayed = rec.transport == Transport::Replay || rec.received_at - r.ts > late_ms;
            for e in [s.event, s.device_event].into_iter().flatten() {
                let id = format!("{seq}-{n}");
                n += 1;
                self.push_event(id, seq, replayed, *e);
            }
        }
    }

    fn push_event(&mut self, id: String, seq: u64, replayed: bool, event: Event) {
        self.pending.push(AnomalyEvent {
            id,
            wal_seq: seq,
            model_version: self.model_version.clone(),
            replayed,
            event,
        });
    }

    /// Stores pending events, the detector snapshot and the WAL position, in that order.
    pub async fn checkpoint(&mut self) -> anyhow::Result<()> {
        let first = self.first_uncheckpointed;
        if self.next_seq == first {
            // Nothing new from the WAL, but operators may have given feedback meanwhile (a
            // quiet fleet is exactly when they resolve cases) and a model may have been
            // promoted: apply both, and keep the snapshot, whose WAL position is unchanged, in
            // step with the feedback (a promoted model is swapped in again at open anyway).
            let before = self.feedback_pos;
            self.apply_feedback().await?;
            if self.feedback_pos != before {
                write_atomically(&self.state_path, &self.state_bytes()?)?;
            }
            self.swap_model_if_promoted();
            return Ok(());
        }
        let last = self.next_seq - 1;
        self.deliver().await?;
        self.apply_feedback().await?;
        let files = encode_events(&self.pending, first, last)?;
        let state_bytes = self.state_bytes()?;
        let state_path = &self.state_path;
        let consumer = &mut self.consumer;
        let next = self.next_seq;
        edgepipe_lake::sink::store_flush(&self.store, TABLE, first, last, &files, || {
            write_atomically(state_path, &state_bytes).map_err(|source| {
                edgepipe_lake::Error::Io {
                    path: state_path.clone(),
                    source,
                }
            })?;
            consumer.commit(next)?;
            Ok(())
        })
        .await?;
        self.metrics
            .events
            .fetch_add(self.pending.len() as u64, Ordering::Relaxed);
        self.metrics.checkpoints.fetch_add(1, Ordering::Relaxed);
        self.metrics.position.store(next, Ordering::Relaxed);
        self.pending.clear();
        self.delivered = 0;
        self.first_uncheckpointed = next;
        self.swap_model_if_promoted();
        Ok(())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn encode_events(
    events: &[AnomalyEvent],
    first: u64,
    last: u64,
) -> anyhow::Result<Vec<(String, bytes::Bytes)>> {
    let mut by_hour: std::collections::BTreeMap<i64, Vec<&AnomalyEvent>> = Default::default();
    for e in events {
        by_hour
            .entry(
                e.event
                    .ts
                    .saturating_mul(1000)
                    .div_euclid(edgepipe_lake::schema::HOUR_US),
            )
            .or_default()
            .push(e);
    }
    let schema = edgepipe_lake::schema::anomalies_schema();
    let mut files = Vec::new();
    for (hour, es) in by_hour {
        let mut id = StringBuilder::new();
        let mut dev = StringBuilder::new();
        let mut met = StringBuilder::new();
        let mut ts = TimestampMicrosecondBuilder::new();
        let mut kind = StringBuilder::new();
        let mut score = Float64Builder::new();
        let mut thr = Float64Builder::new();
        let mut value = Float64Builder::new();
        let mut lo = Float64Builder::new();
        let mut hi = Float64Builder::new();
        let mut expl = StringBuilder::new();
        let mut mv = StringBuilder::new();
        let mut rep = BooleanBuilder::new();
        let mut seq = Int64Builder::new();
        for e in es {
            let ev = &e.event;
            id.append_value(&e.id);
            dev.append_value(ev.device.as_str());
            met.append_option(ev.metric.as_ref().map(|m| m.as_str()));
            ts.append_value(ev.ts.saturating_mul(1000));
            kind.append_value(
                serde_json::to_value(ev.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
            );
            score.append_value(ev.score);
            thr.append_value(ev.threshold);
            value.append_option(ev.explanation.value);
            lo.append_option(ev.explanation.expected.map(|x| x.0));
            hi.append_option(ev.explanation.expected.map(|x| x.1));
            expl.append_value(serde_json::to_string(&ev.explanation)?);
            mv.append_value(&e.model_version);
            rep.append_value(e.replayed);
            seq.append_value(i64::try_from(e.wal_seq).unwrap_or(i64::MAX));
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(dev.finish()),
            Arc::new(met.finish()),
            Arc::new(ts.finish().with_timezone("UTC")),
            Arc::new(kind.finish()),
            Arc::new(score.finish()),
            Arc::new(thr.finish()),
            Arc::new(value.finish()),
            Arc::new(lo.finish()),
            Arc::new(hi.finish()),
            Arc::new(expl.finish()),
            Arc::new(mv.finish()),
            Arc::new(rep.finish()),
            Arc::new(seq.finish()),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols)?;
        files.push((
            edgepipe_lake::sink::part_key(TABLE, hour, first, last),
            edgepipe_lake::encode_parquet(&schema, &[batch], 64 * 1024)?,
        ));
    }
    Ok(files)
}

/// Runs the stage until `stop`, reopening it after an error (with backoff): the WAL keeps the
/// records meanwhile.
pub async fn run_stage(
    data_dir: PathBuf,
    wal: Wal,
    store: LakeStore,
    cfg: DetectConfig,
    handler: Option<Arc<dyn AnomalyHandler>>,
    metrics: Arc<DetectMetrics>,
    stop: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let r = match DetectStage::open(
            &data_dir,
            wal.clone(),
            store.clone(),
            cfg.clone(),
            handler.clone(),
            metrics.clone(),
        )
        .await
        {
            Ok(stage) => stage.run(stop.clone()).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), retry_in = ?backoff, "detect: stage failed; retrying");
                let mut s = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = s.changed() => {}
                }
                if *stop.borrow() {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;
    use edgepipe_types::{IngestRecord, Reading, TsSource, Value};
    use edgepipe_wal::{FullPolicy, WalConfig};

    /// A detector snapshot of an older layout (an upgrade added detector state) does not stop
    /// the stage: it starts its series afresh at the checkpointed position and takes the
    /// promoted model and the operators' feedback again. A newer layout (a downgrade) or a
    /// damaged snapshot of the current one is refused with the file named.
    #[tokio::test]
    async fn an_older_detector_snapshot_restarts_the_series_at_the_checkpoint() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let wal = Wal::open(dir.path().join("wal"), WalConfig::default())?;
        let open = |detector: Vec<u8>| {
            let st = StateFile {
                version: STATE_VERSION,
                next_seq: 0,
                silence_clock: 1_700_000_000_000,
                detector,
                feedback_pos: 42,
            };
            let (wal, root) = (wal.clone(), dir.path().to_path_buf());
            async move {
                std::fs::create_dir_all(root.join("detect"))?;
                std::fs::write(root.join("detect/state.bin"), postcard::to_allocvec(&st)?)?;
                DetectStage::open(
                    &root,
                    wal,
                    LakeStore::local(root.join("lake"))?,
                    DetectConfig::default(),
                    None,
                    Arc::new(DetectMetrics::default()),
                )
                .await
            }
        };
        let mut older = postcard::to_allocvec(&(DETECTOR_SNAPSHOT_VERSION - 1))?;
        older.extend_from_slice(&[7, 7, 7]);
        let stage = open(older).await?;
        assert_eq!(stage.next_seq, 0);
        assert_eq!(stage.silence_clock, 1_700_000_000_000);
        assert_eq!(stage.feedback_pos, 0, "feedback is applied again");
        assert_eq!(stage.detector.series_count(), 0);
        drop(stage);

        let mut newer = postcard::to_allocvec(&(DETECTOR_SNAPSHOT_VERSION + 1))?;
        newer.extend_from_slice(&[7, 7, 7]);
        let err = format!("{:#}", open(newer).await.err().context("a newer layout")?);
        assert!(err.contains("snapshot version"), "{err}");
        assert!(err.contains("state.bin"), "the file is named: {err}");

        for first in [DETECTOR_SNAPSHOT_VERSION, 0] {
            let mut damaged = postcard::to_allocvec(&first)?;
            damaged.extend_from_slice(&[7, 7, 7]);
            let err = format!("{:#}", open(damaged).await.err().context("damaged")?);
            assert!(err.contains("state.bin"), "the file is named: {err}");
        }
        Ok(())
    }

    /// The WAL's disk budget (`drop_oldest`) deletes records before the stage reads them: the
    /// stage moves past the deleted range, scores every surviving reading exactly once (a
    /// second pass would find them late), and scored + deleted is what was appended.
    #[tokio::test]
    async fn records_the_wal_budget_deleted_are_skipped_and_the_rest_scored_once()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let wal = Wal::open(
            dir.path().join("wal"),
            WalConfig {
                segment_bytes: 4096,
                max_bytes: 32 * 1024,
                full_policy: FullPolicy::DropOldest,
                ..WalConfig::default()
            },
        )?;
        let store = LakeStore::local(dir.path().join("lake"))?;
        let metrics = Arc::new(DetectMetrics::default());
        let mut stage = DetectStage::open(
            dir.path(),
            wal.clone(),
            store,
            DetectConfig::default(),
            None,
            metrics.clone(),
        )
        .await?;
        let total = 3000u64;
        for s in 0..total as i64 / 10 {
            let mut batch = Vec::new();
            for k in 0..10 {
                let ts = 1_700_000_000_000 + (s * 10 + k) * 1000;
                let rec = IngestRecord {
                    device_id: DeviceId::new("d1")?,
                    received_at: ts,
                    transport: Transport::Mqtt5,
                    origin: None,
                    tags: Vec::new(),
                    readings: vec![Reading {
                        metric: Metric::new("m")?,
                        ts,
                        value: Value::F64((k % 3) as f64),
                        ts_source: TsSource::Device,
                    }],
                };
                batch.push(rec.encode());
            }
            wal.append_batch(batch).await?;
        }
        while stage.step()? {}
        let dropped = wal.stats().dropped_records;
        assert!(
            dropped > 0,
            "the budget deleted nothing; the test did not exercise it"
        );
        let scored = metrics.scored.load(Ordering::Relaxed);
        assert_eq!(
            metrics.late.load(Ordering::Relaxed),
            0,
            "a reading scored twice"
        );
        assert_eq!(
            scored + dropped,
            total,
            "scored {scored}, deleted {dropped}"
        );
        assert_eq!(stage.next_seq, wal.durable_end());
        Ok(())
    }
}
