//! The crate's one error type.

use std::path::PathBuf;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from configuring detectors, restoring snapshots and reading or writing NAB files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "create directory", ...).
        op: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A CSV file had a malformed row.
    #[error("{path}:{line}: {reason}")]
    Csv {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong.
        reason: String,
    },
    /// A NAB label file did not parse or did not match the data.
    #[error("labels {path}: {reason}")]
    Labels {
        /// The label file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// A detector's results file does not have one row per data row.
    #[error("results {path}: {found} rows, but the data file has {expected}")]
    RowCount {
        /// The results file.
        path: PathBuf,
        /// Rows in the data file.
        expected: usize,
        /// Rows in the results file.
        found: usize,
    },
    /// A detector configuration value is out of range.
    #[error("invalid detector config {field}: {reason}")]
    InvalidConfig {
        /// The offending field (a dotted key path).
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// Model parameters (an artifact, a series key, fit options) are invalid.
    #[error("model parameters: {0}")]
    Params(String),
    /// A snapshot did not decode or belongs to an incompatible configuration.
    #[error("snapshot does not restore: {0}")]
    Snapshot(String),
}

impl Error {
    #[cfg(feature = "eval")]
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
