//! The case service: wires `edgepipe-cases` into the server. It opens the state store
//! (cases, users, audit log; `sqlite://<data>/cases.db` unless `cases.store_url` says
//! otherwise), takes anomaly events from the detection stage ([`CaseManager`], an
//! [`AnomalyHandler`]), keeps raw-reading evidence with new cases, runs the notifier, the
//! auto-resolver and the export of labels to the lake, and hands operators' verdicts back to
//! the detection stage as feedback.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use arrow::array::RecordBatch;
use edgepipe_cases::notify::{Notifier, NotifyMetrics};
use edgepipe_cases::{CaseEvent, CaseStore, CasesConfig, Category, Evidence, Label, SqlCaseStore};
use edgepipe_detect::{EventKind, Feedback, SeriesKey};
use edgepipe_lake::LakeStore;
use edgepipe_lake::events::LabelRow;
use edgepipe_types::{DeviceId, Metric, SharedClock};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

use crate::stages::detect::{AnomalyEvent, AnomalyHandler, FeedbackItem};

/// Counters of the case service.
#[derive(Debug, Default)]
pub struct CaseMetrics {
    /// Anomaly events received from the detection stage.
    pub events_received: AtomicU64,
    /// Events already taken (redelivered after a restart).
    pub events_duplicate: AtomicU64,
    /// Cases opened.
    pub opened: AtomicU64,
    /// Cases brought back by flapping.
    pub flapped: AtomicU64,
    /// Cases resolved automatically.
    pub auto_resolved: AtomicU64,
    /// Evidence snapshots stored.
    pub evidence_stored: AtomicU64,
    /// Evidence snapshots that failed (the case is kept; the query in the case still works).
    pub evidence_failed: AtomicU64,
    /// Labels exported to the lake.
    pub labels_exported: AtomicU64,
}

/// Opens the state store named by `cfg` (default: SQLite in the data directory).
pub async fn open_store(data_dir: &Path, cfg: &CasesConfig) -> anyhow::Result<SqlCaseStore> {
    let url = cfg
        .store_url
        .clone()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("cases.db").display()));
    if url.starts_with("sqlite://") {
        std::fs::create_dir_all(data_dir)?;
    }
    Ok(SqlCaseStore::open(&url, cfg.clone()).await?)
}

/// A request to keep evidence with a new case.
#[derive(Debug)]
struct EvidenceRequest {
    case_id: i64,
}

/// The running case service.
#[derive(Debug)]
pub struct CaseService {
    /// The state store.
    pub store: Arc<SqlCaseStore>,
    /// Settings.
    pub cfg: Arc<CasesConfig>,
    /// Counters.
    pub metrics: Arc<CaseMetrics>,
    /// Notifier counters.
    pub notify_metrics: Arc<NotifyMetrics>,
    waker: Arc<Notify>,
    evidence_tx: mpsc::Sender<EvidenceRequest>,
    /// The server's clock (case times, auto-resolve windows).
    pub clock: SharedClock,
    stop: CancellationToken,
    /// Stops the tasks if the service is dropped without [`CaseService::shutdown`].
    _stop_on_drop: DropGuard,
    tasks: TaskTracker,
}

impl CaseService {
    /// Starts the notifier, auto-resolver, evidence keeper and label exporter over `store`.
    pub fn start(
        store: SqlCaseStore,
        engine: edgepipe_query::QueryEngine,
        lake: LakeStore,
        alarms: Option<(
            crate::stages::alarms::AlarmsConfig,
            crate::stages::alarms::Watched,
        )>,
        clock: SharedClock,
    ) -> anyhow::Result<Self> {
        let cfg = Arc::new(store.config().clone());
        let store = Arc::new(store);
        let notifier = Notifier::new(store.clone(), cfg.clone())?;
        let waker = notifier.waker();
        let notify_metrics = notifier.metrics();
        let metrics: Arc<CaseMetrics> = Arc::default();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (evidence_tx, evidence_rx) = mpsc::channel(4096);
        tasks.spawn(notifier.run(Duration::from_secs(1), stop.clone()));
        tasks.spawn(auto_resolve_loop(
            store.clone(),
            clock.clone(),
            cfg.clone(),
            waker.clone(),
            metrics.clone(),
            stop.clone(),
        ));
        tasks.spawn(evidence_loop(
            store.clone(),
            clock.clone(),
            cfg.clone(),
            engine,
            evidence_rx,
            metrics.clone(),
        ));
        tasks.spawn(label_export_loop(
            store.clone(),
            lake,
            metrics.clone(),
            stop.clone(),
        ));
        if let Some((cfg, watched)) = alarms {
            tasks.spawn(crate::stages::alarms::run(
                cfg,
                watched,
                store.clone(),
                waker.clone(),
                clock.clone(),
                stop.clone(),
            ));
        }
        Ok(Self {
            store,
            clock,
            cfg,
            metrics,
            notify_metrics,
            waker,
            evidence_tx,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            tasks,
        })
    }

    /// The handler the detection stage hands its events to.
    pub fn handler(&self) -> Arc<dyn AnomalyHandler> {
        Arc::new(CaseManager {
            store: self.store.clone(),
            enabled: self.cfg.enabled,
            waker: self.waker.clone(),
            evidence_tx: self.evidence_tx.clone(),
            metrics: self.metrics.clone(),
            clock: self.clock.clone(),
        })
    }

    /// Wakes the notifier (after an operator's change).
    pub fn waker(&self) -> Arc<Notify> {
        self.waker.clone()
    }

    /// Stops the background tasks (the notifier finishes its round; undelivered
    /// notifications stay in the outbox for the next start). They stop together and get 10 s
    /// in all: a notifier round stuck on a mail server (15 s timeout) does not hold the rest.
    pub async fn shutdown(self) {
        self.stop.cancel();
        drop(self.evidence_tx);
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.tasks.wait()).await;
        self.store.close().await;
    }
}

/// Turns anomaly events into cases.
#[derive(Debug)]
pub struct CaseManager {
    store: Arc<SqlCaseStore>,
    enabled: bool,
    waker: Arc<Notify>,
    evidence_tx: mpsc::Sender<EvidenceRequest>,
    metrics: Arc<CaseMetrics>,
    clock: SharedClock,
}

/// The case-manager view of a detection event.
pub fn case_event(e: &AnomalyEvent) -> CaseEvent {
    let ev = &e.event;
    let category = match ev.kind {
        EventKind::Silence => Category::Silence,
        EventKind::Gap => Category::Gap,
        EventKind::Anomaly | EventKind::Multivariate => Category::Anomaly,
    };
    CaseEvent {
        id: e.id.clone(),
        category,
        device_id: ev.device.as_str().to_owned(),
        metric: ev.metric.as_ref().map(|m| m.as_str().to_owned()),
        metrics: ev
            .explanation
            .contributing
            .iter()
            .map(|c| c.metric.as_str().to_owned())
            .collect(),
        ts: ev.ts,
        kind: serde_json::to_value(ev.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        score: ev.score,
        model_version: e.model_version.clone(),
        explanation: serde_json::to_value(&ev.explanation).unwrap_or_default(),
    }
}

#[async_trait::async_trait]
impl AnomalyHandler for CaseManager {
    async fn handle(&self, events: &[AnomalyEvent]) -> anyhow::Result<()> {
        if !self.enabled || events.is_empty() {
            return Ok(());
        }
        let evs: Vec<CaseEvent> = events.iter().map(case_event).collect();
        let out = self.store.ingest(&evs, self.clock.now_ms()).await?;
        let m = &self.metrics;
        m.events_received
            .fetch_add(evs.len() as u64, Ordering::Relaxed);
        m.events_duplicate
            .fetch_add(out.duplicates, Ordering::Relaxed);
        m.opened
            .fetch_add(out.opened.len() as u64, Ordering::Relaxed);
        m.flapped
            .fetch_add(out.reopened.len() as u64, Ordering::Relaxed);
        if out.notifications > 0 {
            self.waker.notify_one();
        }
        for id in &out.opened {
            if self
                .evidence_tx
                .try_send(EvidenceRequest { case_id: *id })
                .is_err()
            {
                self.metrics.evidence_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    case = id,
                    "cases: evidence queue full; case kept without a readings snapshot"
                );
            }
        }
        Ok(())
    }

    async fn feedback_since(&self, after: i64) -> anyhow::Result<(Vec<FeedbackItem>, i64)> {
        let labels = self.store.labels_since(after, 1000).await?;
        let upto = labels.last().map_or(after, |l| l.id);
        Ok((labels.iter().filter_map(feedback_item).collect(), upto))
    }
}

/// Detector feedback from a label: only verdicts on anomaly cases about one metric (a silence
/// or gap verdict says nothing about the metric's values).
fn feedback_item(l: &Label) -> Option<FeedbackItem> {
    if l.category != Category::Anomaly {
        return None;
    }
    let device = DeviceId::new(l.device_id.as_str()).ok()?;
    let metric = Metric::new(l.metric.as_deref()?).ok()?;
    let feedback = match l.label.as_str() {
        "false_positive" => Feedback::FalsePositive { score: l.max_score },
        "confirmed" => Feedback::TruePositive { score: l.max_score },
        _ => return None,
    };
    Some(FeedbackItem {
        id: l.id,
        key: SeriesKey::new(device, metric),
        feedback,
    })
}

async fn auto_resolve_loop(
    store: Arc<SqlCaseStore>,
    clock: SharedClock,
    cfg: Arc<CasesConfig>,
    waker: Arc<Notify>,
    metrics: Arc<CaseMetrics>,
    stop: CancellationToken,
) {
    // Often enough that "quiet for the window" is met within a few percent of it.
    let every = (cfg.window / 20).clamp(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        match store.auto_resolve(clock.now_ms()).await {
            Ok(ids) if !ids.is_empty() => {
                metrics
                    .auto_resolved
                    .fetch_add(ids.len() as u64, Ordering::Relaxed);
                tracing::info!(
                    count = ids.len(),
                    "cases: resolved automatically after a quiet window"
                );
                waker.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "cases: auto-resolve failed"),
        }
    }
}

/// The SQL that shows a case's raw readings from `before` ahead of `from` to `to`.
pub fn window_query(device: &str, from_ms: i64, to_ms: i64) -> String {
    format!(
        "SELECT metric, ts, value FROM readings WHERE device_id = '{}' \
         AND ts >= to_timestamp_millis({from_ms}) AND ts <= to_timestamp_millis({to_ms}) \
         ORDER BY metric, ts",
        device.replace('\'', "''")
    )
}

/// Whether any row's `ts` is at or after `ts_ms`.
fn reaches(batches: &[RecordBatch], ts_ms: i64) -> bool {
    let at = ts_ms.saturating_mul(1000);
    batches.iter().any(|b| {
        b.column_by_name("ts")
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow::array::TimestampMicrosecondArray>()
            })
            .is_some_and(|ts| ts.iter().flatten().any(|t| t >= at))
    })
}

async fn evidence_loop(
    store: Arc<SqlCaseStore>,
    clock: SharedClock,
    cfg: Arc<CasesConfig>,
    engine: edgepipe_query::QueryEngine,
    mut rx: mpsc::Receiver<EvidenceRequest>,
    metrics: Arc<CaseMetrics>,
) {
    let before = i64::try_from(cfg.evidence_before.as_millis()).unwrap_or(i64::MAX);
    while let Some(req) = rx.recv().await {
        let case = match store.get(req.case_id).await {
            Ok(d) => d.case,
            Err(e) => {
                metrics.evidence_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(case = req.case_id, error = %e, "cases: loading a case for evidence failed");
                continue;
            }
        };
        let sql = format!(
            "{} LIMIT {}",
            window_query(
                &case.device_id,
                case.first_event_ts.saturating_sub(before),
                case.last_event_ts
            ),
            cfg.evidence_max_rows
        );
        // The reading that raised the case is durable (detection reads it from the WAL), but
        // SQL sees it only once the lake writer has read it too (within lake.read_interval):
        // until the window's last event is in the result, try again, for up to 2 s (then the
        // evidence holds what is visible, as before).
        let rows = async {
            let mut attempts = 0;
            loop {
                let out = engine.query(&sql).await?;
                let complete =
                    out.rows >= cfg.evidence_max_rows || reaches(&out.batches, case.last_event_ts);
                if complete || attempts >= 20 {
                    return anyhow::Ok(edgepipe_query::json_rows(&out.schema, &out.batches)?);
                }
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        .await;
        let body = match rows {
            Ok(rows) => serde_json::json!({"query": sql, "rows": rows}),
            Err(e) => {
                metrics.evidence_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(case = req.case_id, error = %format!("{e:#}"), "cases: evidence query failed");
                continue;
            }
        };
        let ev = Evidence {
            kind: "readings".into(),
            created_at: clock.now_ms(),
            body,
        };
        match store.add_evidence(req.case_id, &ev).await {
            Ok(()) => {
                metrics.evidence_stored.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.evidence_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(case = req.case_id, error = %e, "cases: storing evidence failed");
            }
        }
    }
}

const LABEL_BLOCK: i64 = 1000;
const LABELS_EXPORTED: &str = "lake.labels_exported";

/// Exports labels to the lake's `labels` table. Labels are grouped in blocks of 1,000 ids;
/// a block's files (one per event-time hour) are rewritten whole whenever it gains labels, so
/// a crash between writing and remembering the position only rewrites the same files: no
/// label is lost or duplicated.
async fn label_export_loop(
    store: Arc<SqlCaseStore>,
    lake: LakeStore,
    metrics: Arc<CaseMetrics>,
    stop: CancellationToken,
) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => false,
            _ = stop.cancelled() => true,
        };
        if let Err(e) = export_labels(&store, &lake, &metrics).await {
            tracing::warn!(error = %format!("{e:#}"), "cases: exporting labels to the lake failed; will retry");
        }
        if stopping {
            return;
        }
    }
}

/// One export round (public for tests and `lake` tooling).
pub async fn export_labels(
    store: &SqlCaseStore,
    lake: &LakeStore,
    metrics: &CaseMetrics,
) -> anyhow::Result<u64> {
    let done: i64 = store
        .get_meta(LABELS_EXPORTED)
        .await?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let new = store.labels_since(done, 10_000).await?;
    let Some(last) = new.last().map(|l| l.id) else {
        return Ok(0);
    };
    let first_block = (done + 1).div_euclid(LABEL_BLOCK);
    let last_block = last.div_euclid(LABEL_BLOCK);
    for block in first_block..=last_block {
        let start = block * LABEL_BLOCK;
        let labels: Vec<Label> = store
            .labels_since(start - 1, LABEL_BLOCK as u32)
            .await?
            .into_iter()
            .filter(|l| l.id < start + LABEL_BLOCK)
            .collect();
        for (hour, ls) in edgepipe_lake::events::by_hour(&labels, |l| l.start_ts) {
            let key = edgepipe_lake::sink::part_key(
                edgepipe_lake::tables::LABELS,
                hour,
                start as u64,
                (start + LABEL_BLOCK - 1) as u64,
            );
            lake.put(&key, encode_labels(&ls)?).await?;
        }
    }
    store.set_meta(LABELS_EXPORTED, &last.to_string()).await?;
    let n = new.len() as u64;
    metrics.labels_exported.fetch_add(n, Ordering::Relaxed);
    Ok(n)
}

fn encode_labels(ls: &[&Label]) -> anyhow::Result<bytes::Bytes> {
    let rows: Vec<LabelRow<'_>> = ls
        .iter()
        .map(|l| LabelRow {
            label_id: l.id,
            case_id: l.case_id,
            device_id: &l.device_id,
            metric: l.metric.as_deref(),
            start_ms: l.start_ts,
            end_ms: l.end_ts,
            label: &l.label,
            max_score: l.max_score,
            root_cause: l.root_cause.as_deref(),
            actor: &l.actor,
            created_at_ms: l.created_at,
            category: l.category.as_str(),
        })
        .collect();
    Ok(edgepipe_lake::events::encode_labels(&rows, 64 * 1024)?)
}
