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
//! silence), and the same replay rule applies to it: a silence judged on a clock that lags the
//! receive time by more than `late_after` is recorded as replayed and opens no case.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgepipe_detect::{DETECTOR_SNAPSHOT_VERSION, Detector, Event, ModelParams, ScoreStatus};
use edgepipe_lake::LakeStore;
use edgepipe_types::{DeviceId, IngestRecordView, Metric, Transport, ValueView};
use edgepipe_wal::Wal;
use tokio_util::sync::CancellationToken;

use crate::stages::models::{self, model_version};

pub use self::config::DetectConfig;
use self::events::encode_events;
pub use self::events::{AnomalyEvent, AnomalyHandler, FeedbackItem, TABLE};
use self::state::{STATE_VERSION, StateFile, decode_state};
mod config;
mod events;

mod state;

#[cfg(test)]
mod tests;

/// Name of the stage's WAL consumer and lake table.
pub const CONSUMER: &str = "detect";

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
        let version = match models::current_version(&self.data_dir) {
            Ok(Some(v)) if v != self.model_version => v,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "detect: reading the promoted model failed");
                return;
            }
        };
        let swapped = models::load(&self.data_dir, &version)
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
    pub async fn run(mut self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut last_checkpoint = Instant::now();
        let mut last_read = Instant::now();
        loop {
            if stop.is_cancelled() {
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
                _ = stop.cancelled() => {}
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
        // The replay rule holds for silence too: judged on a clock that lags the receive time
        // by more than `late_after` (a backlog, a demo's catch-up), it is about the past.
        let replayed = replayed(rec.transport, rec.received_at, clock, late_ms);
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
            self.push_event(id, seq, replayed, e);
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
                    let replayed = replayed(rec.transport, rec.received_at, r.ts, late_ms);
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
            for e in [s.event, s.device_event].into_iter().flatten() {
                let id = format!("{seq}-{n}");
                n += 1;
                let replayed = replayed(rec.transport, rec.received_at, r.ts, late_ms);
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
                edgepipe_wal::durable::replace_file(&self.state_path, &self.state_bytes()?)?;
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
            edgepipe_wal::durable::replace_file(state_path, &state_bytes).map_err(|source| {
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

/// Runs the stage until `stop`, reopening it after an error (with backoff): the WAL keeps the
/// records meanwhile.
pub async fn run_stage(
    data_dir: PathBuf,
    wal: Wal,
    store: LakeStore,
    cfg: DetectConfig,
    handler: Option<Arc<dyn AnomalyHandler>>,
    metrics: Arc<DetectMetrics>,
    stop: CancellationToken,
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
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => {}
                }
                if stop.is_cancelled() {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The replay rule every event follows (anomalies, gaps, silence): data sent as a replay, or
/// received more than `late_ms` after the event time `ts`, is about the past; its events are
/// recorded with `replayed = true` and not handed to the case manager.
fn replayed(transport: Transport, received_at: i64, ts: i64, late_ms: i64) -> bool {
    transport == Transport::Replay || received_at.saturating_sub(ts) > late_ms
}
