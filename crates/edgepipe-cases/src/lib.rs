//! Cases: the "act on it" end of the pipeline. Owns correlation of anomaly events into cases
//! (one open case per device and category, flapping suppression, severity, auto-resolve), the
//! case lifecycle (open → acknowledged → investigating → resolved | false_positive, reopen) with
//! a timeline of every change, evidence kept with the case, the [`CaseStore`] (SQLite by
//! default, PostgreSQL at scale, one implementation over sqlx with per-dialect migrations), the
//! notification outbox written in the same transaction as the case change, and the notifier
//! that delivers it (webhook with HMAC signature, email over SMTP) at least once.
//!
//! Where it sits: the server's detection stage hands anomaly events ([`CaseEvent`]) to
//! [`CaseStore::ingest`]; operators change cases through the API and CLI
//! ([`CaseStore::act`]); resolving a case writes a labelled interval ([`Label`]) that the
//! detection stage reads back as feedback and the lake exports as its `labels` table.

pub mod bench;
mod config;
mod error;
pub mod loopback;
mod model;
pub mod notify;
#[cfg(test)]
mod notify_tests;
mod severity;
pub mod store;
#[cfg(test)]
mod tests;

pub use config::{CasesConfig, ChannelConfig, RouteConfig};
pub use error::{Error, Result};
pub use model::*;
pub use severity::severity_of;
pub use store::{AuditEntry, CaseStore, ChainReport, Role, SqlCaseStore, User};

/// Wall-clock time in ms since the Unix epoch (for stamps the store sets itself: migrations,
/// audit entries, delivery times).
pub(crate) fn now_ms() -> Millis {
    edgepipe_types::Clock::now_ms(&edgepipe_types::SystemClock)
}
