//! The Parquet data lake: everything acknowledged ends up here, exactly once, in files that
//! Spark, DuckDB, Athena and pyarrow read as they are.
//!
//! Where it sits: the gateway appends every accepted message to the server WAL; the
//! [`LakeWriter`] is a named WAL consumer that turns records into `readings` rows, keeps them in
//! a [`FreshBuffer`] (which SQL sees at once), and every `flush_interval` writes them as Parquet
//! (zstd, dictionary-encoded ids, sorted by device, metric, ts) into Hive partitions by event time
//! (`readings/date=YYYY-MM-DD/hour=HH/`) through `object_store` (local directory or S3).
//!
//! Exactly once, through crashes:
//! - a flush covers the WAL range `[first, last]` and names its files `part-<first>-<last>`;
//! - before writing, it stores an intent marker `_edgepipe/pending/readings-<first>.json`
//!   listing the files; the WAL checkpoint moves past `last` only after every file is stored;
//! - on start, a marker whose range is not checkpointed means a crash mid-flush: its files are
//!   deleted and the range is written again from the WAL.
//!
//! [`compact`] merges a partition's small files into large ones (deduplicating on
//! `(device_id, metric, ts)`, last WAL write wins) with an intent marker and a swap lock, and
//! writes the partition's 1-minute and 1-hour rollups. [`retention`] deletes partitions past each
//! table's age limit. Table schemas are in [`schema`].

mod column;
mod compact;
mod config;
pub mod events;
pub use edgepipe_types::duration_serde;
mod metrics;
mod parallel;
mod parquet_io;
mod ranged;
pub mod retention;
mod runs;
pub mod schema;
pub mod sink;
mod sort;
mod stats;
mod store;
mod swap;
#[cfg(test)]
mod test_rng;
mod writer;

pub use compact::{CompactionReport, Compactor, compact};
pub use config::{LakeConfig, RetentionConfig};
pub use metrics::LakeMetrics;
pub use parquet_io::{decode_parquet, encode_parquet, encode_parquet_level};
pub use stats::{PartitionStats, TableStats, VerifyProblem, lake_stats, verify};
pub use store::{LakeStore, S3Config};
pub use swap::{SwapLock, recover_compactions};
pub use writer::{CONSUMER as LAKE_CONSUMER, FreshBuffer, FreshSnapshot, LakeWriter};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Table names in the lake.
pub mod tables {
    /// Every acknowledged reading.
    pub const READINGS: &str = "readings";
    /// Per series and minute: count, min, max, avg, sum.
    pub const ROLLUP_1M: &str = "rollup_1m";
    /// Per series and hour: count, min, max, avg, sum.
    pub const ROLLUP_1H: &str = "rollup_1h";
    /// Every message the gateway refused (from the dead-letter store).
    pub const DEADLETTERS: &str = "deadletters";
    /// Anomaly events from the detection stage.
    pub const ANOMALIES: &str = "anomalies";
    /// Operators' verdicts on cases: labelled intervals per series.
    pub const LABELS: &str = "labels";
    /// Every table the lake manages.
    pub const ALL: [&str; 6] = [
        READINGS,
        ROLLUP_1M,
        ROLLUP_1H,
        DEADLETTERS,
        ANOMALIES,
        LABELS,
    ];
}

/// Errors from the lake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Local filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// File or directory involved.
        path: std::path::PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Object store operation failed.
    #[error("object store {op} {key:?}: {source}")]
    Store {
        /// Operation (put, get, list, delete).
        op: &'static str,
        /// Lake-relative key.
        key: String,
        /// Underlying error.
        source: object_store::Error,
    },
    /// Arrow error while building or converting rows.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet encoding or decoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// The WAL failed.
    #[error("wal: {0}")]
    Wal(#[from] edgepipe_wal::Error),
    /// Invalid configuration.
    #[error("lake config: {0}")]
    Config(String),
    /// A lake object does not have the expected content.
    /// The lake holds WAL records this WAL has never written: the WAL was replaced (or the
    /// lake belongs to another server). Writing on would hide the lake's rows from queries and
    /// overwrite its files, so the writer refuses to start.
    #[error(
        "the lake holds WAL records up to {lake_last} but this WAL ends at {wal_end}: it is not \
         the WAL the lake was written from (was the data directory's wal/ replaced, or does \
         lake.url point at another server's lake?); restore that WAL or use a new lake location"
    )]
    ForeignWal {
        /// Highest WAL sequence in a lake file name.
        lake_last: u64,
        /// The WAL's durable end.
        wal_end: u64,
    },
    #[error("lake object {key:?} is corrupt: {reason}")]
    Corrupt {
        /// Lake-relative key.
        key: String,
        /// What was wrong.
        reason: String,
    },
}

impl Error {
    fn store(op: &'static str) -> impl FnOnce(object_store::Error) -> Error {
        move |source| Error::Store {
            op,
            key: String::new(),
            source,
        }
    }

    fn store_at(op: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> Error {
        let key = key.to_owned();
        move |source| Error::Store { op, key, source }
    }
}
