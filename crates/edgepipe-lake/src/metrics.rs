//! The lake's counters ([`LakeMetrics`]), shared by the lake writer, the compactor and the
//! metrics endpoint. A leaf: it uses neither the writer nor the compactor.

use std::sync::atomic::AtomicU64;

/// Counters of the lake writer, shared with the metrics endpoint.
#[derive(Debug, Default)]
pub struct LakeMetrics {
    /// Rows written to Parquet files.
    pub rows_written: AtomicU64,
    /// Parquet files written.
    pub files_written: AtomicU64,
    /// Bytes of Parquet written.
    pub bytes_written: AtomicU64,
    /// Flushes completed.
    pub flushes: AtomicU64,
    /// WAL records that did not decode (logged with their sequence; never silently skipped).
    pub records_undecodable: AtomicU64,
    /// WAL records the disk budget deleted before the lake read them.
    pub records_lost_to_wal_budget: AtomicU64,
    /// Receive time (ms) of the newest row flushed to the lake, for freshness.
    pub last_flush_unix_ms: AtomicU64,
    /// Crashed flushes undone at start.
    pub flushes_recovered: AtomicU64,
    /// Time spent reading WAL records into Arrow rows (ns).
    pub read_ns: AtomicU64,
    /// Time spent sorting and encoding flushes as Parquet (ns).
    pub encode_ns: AtomicU64,
    /// Time spent storing flushed files and checkpointing (ns).
    pub store_ns: AtomicU64,
    /// Compaction passes run to their end (each interval's pass, whether it found work,
    /// compacted or failed; a failure is logged).
    pub compaction_runs: AtomicU64,
    /// Partitions compacted.
    pub partitions_compacted: AtomicU64,
    /// 1 while a compaction pass runs (it holds a partition's files and an output file in
    /// memory), else 0.
    pub compaction_running: AtomicU64,
}
