//! The case store: where cases, their anomalies, timeline, evidence, labels and the
//! notification outbox live.

mod access;
mod audit;
mod migrations;
mod sql;

use async_trait::async_trait;

pub use access::{AuditEntry, Role, User};
pub use audit::ChainReport;
pub use sql::SqlCaseStore;

use crate::Result;
use crate::model::{
    Action, Case, CaseDetail, CaseEvent, CaseFilter, CasePage, Evidence, IngestOutcome, Label,
    Millis, OutboxMessage, OutboxStats,
};

/// Durable store of cases. Every method that changes something commits one transaction: the
/// case change, its timeline entry, the notifications it causes (outbox) and the labels it
/// writes are all stored, or none is.
#[async_trait]
pub trait CaseStore: Send + Sync + std::fmt::Debug {
    /// Correlates `events` into cases: an event joins its device's open case of the same
    /// category, brings back a case resolved automatically within the flap window, or opens a
    /// new one; at most one case per device and category is ever open, also under concurrent
    /// calls. Event ids seen before are skipped, so redelivery after a crash is harmless.
    /// When this returns `Ok`, everything is durable.
    async fn ingest(&self, events: &[CaseEvent], now: Millis) -> Result<IngestOutcome>;

    /// Applies an operator's action. Refuses actions the case's state does not allow
    /// ([`crate::Error::InvalidTransition`]). Resolving with a verdict writes labels.
    async fn act(&self, id: i64, action: &Action, actor: &str, now: Millis) -> Result<Case>;

    /// Resolves (automatically) cases quiet for the correlation window, except those being
    /// investigated. Returns their ids.
    async fn auto_resolve(&self, now: Millis) -> Result<Vec<i64>>;

    /// One case with its anomalies, timeline and evidence.
    async fn get(&self, id: i64) -> Result<CaseDetail>;

    /// Cases matching `filter`, newest first, one page.
    async fn list(&self, filter: &CaseFilter) -> Result<CasePage>;

    /// Open (not closed) cases per device: `(device_id, count, highest severity level)`.
    async fn open_by_device(&self) -> Result<Vec<(String, i64, i64)>>;

    /// Keeps evidence with a case.
    async fn add_evidence(&self, id: i64, evidence: &Evidence) -> Result<()>;

    /// Undelivered notifications due at `now`, oldest first.
    async fn outbox_due(&self, now: Millis, limit: u32) -> Result<Vec<OutboxMessage>>;

    /// Marks notifications delivered.
    async fn outbox_delivered(&self, ids: &[i64], now: Millis) -> Result<()>;

    /// Records a failed attempt; the notification is due again at `retry_at`.
    async fn outbox_failed(&self, ids: &[i64], retry_at: Millis, error: &str) -> Result<()>;

    /// Outbox counts.
    async fn outbox_stats(&self, now: Millis) -> Result<OutboxStats>;

    /// Labels with id greater than `after`, in id order.
    async fn labels_since(&self, after: i64, limit: u32) -> Result<Vec<Label>>;

    /// A small persistent value (positions of exporters).
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;

    /// Sets a small persistent value.
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;
}
