//! The crate's error type.

/// Errors of the case store and notifier.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be reached or a statement failed.
    #[error("case store: {0}")]
    Store(#[from] sqlx::Error),
    /// The store URL names no supported database.
    #[error("case store URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given (password removed).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No case with this id.
    #[error("case {0} does not exist")]
    NotFound(i64),
    /// The action is not allowed in the case's current state.
    #[error("case {id} is {state}: cannot {action} (allowed from {state}: {allowed})")]
    InvalidTransition {
        /// The case.
        id: i64,
        /// Its current state.
        state: String,
        /// The refused action.
        action: String,
        /// The actions that state allows.
        allowed: String,
    },
    /// Input that cannot be stored (empty comment, unknown outcome, ...).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A stored row could not be decoded (a newer schema or a damaged database).
    #[error("case store row: {0}")]
    Corrupt(String),
    /// The schema in the database is newer than this binary knows.
    #[error("case store schema version {found} is newer than this binary's {known}")]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this binary knows.
        known: i64,
    },
    /// A notification channel failed.
    #[error("notification channel {channel}: {reason}")]
    Channel {
        /// The channel's name.
        channel: String,
        /// What failed.
        reason: String,
    },
    /// A JSON body could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
