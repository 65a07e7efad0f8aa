//! The agent library's one error type: every failure that can stop a component, with the
//! context (path, stream, address) needed to act on it.

use std::path::PathBuf;

/// Result with the agent's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from the agent's components.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid; every problem found, each with its key path.
    #[error("invalid configuration:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Config(Vec<crate::problem::Problem>),
    /// A stream's store-and-forward queue failed.
    #[error("queue of stream {stream:?}: {source}")]
    Queue {
        /// The stream.
        stream: String,
        /// The WAL error.
        #[source]
        source: edgepipe_wal::Error,
    },
    /// A queue record does not decode (a foreign or newer file in the queue directory).
    #[error("queue of stream {stream:?}: record {seq} does not decode: {reason}")]
    BadRecord {
        /// The stream.
        stream: String,
        /// WAL sequence of the record.
        seq: u64,
        /// Why.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A network listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The pipeline stopped, so nothing can be appended any more.
    #[error("the agent pipeline has stopped")]
    PipelineClosed,
    /// A reading batch could not be appended (disk budget full with `reject`, fsync failure).
    #[error("append to stream {stream:?} refused: {reason}")]
    AppendRefused {
        /// The stream.
        stream: String,
        /// Why.
        reason: String,
    },
    /// The detector configuration or model artifact is invalid.
    #[error("detector: {0}")]
    Detect(#[from] edgepipe_detect::Error),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
