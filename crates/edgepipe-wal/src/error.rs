//! The WAL's error type and `Result` alias, and the helper that names the path in I/O errors.

use std::io;
use std::path::{Path, PathBuf};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from the WAL.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation failed.
    #[error("wal I/O error on {path}: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        source: io::Error,
    },
    /// A record is larger than the configured limit.
    #[error("wal record of {len} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// Payload length.
        len: usize,
        /// Configured limit.
        limit: usize,
    },
    /// The disk budget is exhausted and the policy is `reject`.
    #[error(
        "wal disk budget full: {used} of {budget} bytes used, append of {needed} bytes refused"
    )]
    Full {
        /// Bytes used by segments.
        used: u64,
        /// Configured budget.
        budget: u64,
        /// Bytes the refused append needed.
        needed: u64,
    },
    /// An earlier fsync failed; the WAL no longer acknowledges anything.
    #[error("wal is poisoned after an fsync failure and no longer accepts appends")]
    Poisoned,
    /// The WAL was closed.
    #[error("wal is closed")]
    Closed,
    /// A segment or checkpoint is corrupt somewhere other than a torn tail.
    #[error("wal corrupt at {path} offset {offset}: {reason}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Byte offset.
        offset: u64,
        /// What was wrong.
        reason: String,
    },
    /// A consumer name is not usable as a file name.
    #[error("invalid consumer name {0:?}: use [A-Za-z0-9_-]{{1,64}}")]
    InvalidConsumer(String),
    /// A read asked for a sequence that retention or the budget already deleted.
    #[error("wal sequence {requested} is gone; the oldest retained is {oldest}")]
    Truncated {
        /// Requested sequence.
        requested: u64,
        /// Oldest sequence still on disk.
        oldest: u64,
    },
    /// The configuration is invalid.
    #[error("invalid wal config: {0}")]
    Config(String),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
