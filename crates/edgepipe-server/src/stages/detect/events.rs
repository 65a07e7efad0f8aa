//! What the stage hands on: anomaly events (to the handler, the case manager, and to the lake's
//! `anomalies` table), and the operator feedback it takes back.

use edgepipe_detect::{Event, SeriesKey};
use edgepipe_lake::events::AnomalyRow;
use serde::Serialize;

/// Lake table of anomaly events.
pub const TABLE: &str = edgepipe_lake::tables::ANOMALIES;

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

pub(crate) fn encode_events(
    events: &[AnomalyEvent],
    first: u64,
    last: u64,
) -> anyhow::Result<Vec<(String, bytes::Bytes)>> {
    let mut files = Vec::new();
    for (hour, es) in edgepipe_lake::events::by_hour(events, |e| e.event.ts) {
        let kinds: Vec<String> = es
            .iter()
            .map(|e| {
                serde_json::to_value(e.event.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        let rows = es
            .iter()
            .zip(&kinds)
            .map(|(e, kind)| {
                let ev = &e.event;
                Ok(AnomalyRow {
                    event_id: &e.id,
                    device_id: ev.device.as_str(),
                    metric: ev.metric.as_ref().map(|m| m.as_str()),
                    ts_ms: ev.ts,
                    kind,
                    score: ev.score,
                    threshold: ev.threshold,
                    value: ev.explanation.value,
                    expected: ev.explanation.expected,
                    explanation: serde_json::to_string(&ev.explanation)?,
                    model_version: &e.model_version,
                    replayed: e.replayed,
                    wal_seq: e.wal_seq,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        files.push((
            edgepipe_lake::sink::part_key(TABLE, hour, first, last),
            edgepipe_lake::events::encode_anomalies(&rows, 64 * 1024)?,
        ));
    }
    Ok(files)
}
