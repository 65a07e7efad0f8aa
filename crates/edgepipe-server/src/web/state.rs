//! What every handler shares: the ingest core, the lake's query side and the case service.

use std::sync::Arc;

use edgepipe_cases::SqlCaseStore;
use edgepipe_types::SharedClock;

use crate::gateway::ingest::Ingestor;

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) ingestor: Arc<Ingestor>,
    pub(crate) lake: LakeApi,
    pub(crate) cases: CasesApi,
    /// The server's one clock.
    pub(crate) clock: SharedClock,
}

/// What the API needs from the lake stage.
#[derive(Debug, Clone)]
pub struct LakeApi {
    /// SQL engine.
    pub engine: edgepipe_query::QueryEngine,
    /// Writer counters.
    pub metrics: Arc<edgepipe_lake::LakeMetrics>,
    /// Rows not yet flushed.
    pub fresh: edgepipe_lake::FreshBuffer,
    /// Detection stage counters.
    pub detect: Arc<crate::stages::detect::DetectMetrics>,
}

/// What the API needs from the case service.
#[derive(Debug, Clone)]
pub struct CasesApi {
    /// The state store (cases, users, audit).
    pub store: Arc<SqlCaseStore>,
    /// Case counters.
    pub metrics: Arc<crate::stages::cases::CaseMetrics>,
    /// Notifier counters.
    pub notify: Arc<edgepipe_cases::notify::NotifyMetrics>,
    /// Wakes the notifier after a change.
    pub waker: Arc<tokio::sync::Notify>,
    /// How far around a case its window query reaches (ms).
    pub evidence_before_ms: i64,
}
