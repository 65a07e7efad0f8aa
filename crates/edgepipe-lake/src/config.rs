//! `[lake]` configuration: where the lake lives, how often it flushes and compacts, and how long
//! each table is kept.

use edgepipe_types::config::Problem;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::store::S3Config;

/// The lake writer's and compactor's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LakeConfig {
    /// Lake location: a directory, `file:///dir` or `s3://bucket/prefix`. Empty means
    /// `<data_dir>/lake`.
    pub url: String,
    /// S3 settings for `s3://` URLs.
    pub s3: S3Config,
    /// Write buffered rows to Parquet at least this often. SQL sees rows before they are
    /// flushed (from the fresh buffer), so this trades file count against WAL replay length.
    #[serde(with = "crate::duration_serde")]
    pub flush_interval: Duration,
    /// Flush as soon as this many rows are buffered. A writer behind the WAL (a backlog after
    /// an outage or restart) with no flush in flight starts one at an eighth of this, so the
    /// sort and encode run beside the reading. The default (256 Ki rows, ~20 MB) keeps a
    /// flush's working set small: a backlog written in flushes of 1 M rows took ~25 % more CPU
    /// (fresh memory faulted in for every buffer, sorted copy and encoder) and longer.
    pub flush_max_rows: usize,
    /// Read newly durable WAL records at most this often: under load, fewer and larger reads
    /// (and fresh-buffer batches) instead of one per group commit. SQL sees a reading at most
    /// this much later.
    #[serde(with = "crate::duration_serde")]
    pub read_interval: Duration,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Readings received more than this after their event time are flagged `replayed`.
    #[serde(with = "crate::duration_serde")]
    pub late_after: Duration,
    /// Run compaction this often (`0s` disables background compaction; `edgepipe lake compact`
    /// still works).
    #[serde(with = "crate::duration_serde")]
    pub compaction_interval: Duration,
    /// Compact a partition once it holds this many small files, even if its hour is still open.
    pub compact_min_files: usize,
    /// Compact a closed hour (and write its rollups) once it has been closed this long.
    #[serde(with = "crate::duration_serde")]
    pub compact_after: Duration,
    /// Target size of a compacted file, in bytes.
    pub target_file_bytes: u64,
    /// Write 1-minute and 1-hour rollups when compacting.
    pub rollups: bool,
    /// How long each table is kept.
    pub retention: RetentionConfig,
}

/// Age limits per table, in days of event time; `0` keeps forever.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Raw readings.
    pub readings_days: u32,
    /// 1-minute rollups.
    pub rollup_1m_days: u32,
    /// 1-hour rollups.
    pub rollup_1h_days: u32,
}

impl Default for LakeConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            s3: S3Config::default(),
            flush_interval: Duration::from_secs(30),
            flush_max_rows: 256 * 1024,
            read_interval: Duration::from_millis(50),
            row_group_rows: 256 * 1024,
            late_after: Duration::from_secs(300),
            compaction_interval: Duration::from_secs(60),
            compact_min_files: 12,
            compact_after: Duration::from_secs(300),
            target_file_bytes: 128 * 1024 * 1024,
            rollups: true,
            retention: RetentionConfig::default(),
        }
    }
}

impl LakeConfig {
    /// Small sizes and short intervals for tests.
    pub fn test_config() -> Self {
        Self {
            flush_interval: Duration::from_millis(200),
            flush_max_rows: 10_000,
            read_interval: Duration::from_millis(10),
            row_group_rows: 4096,
            compaction_interval: Duration::ZERO,
            ..Self::default()
        }
    }

    /// Every problem with the settings, each with its key path.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.flush_interval.is_zero() {
            out.push(Problem::new(
                "lake.flush_interval",
                "must be greater than 0",
            ));
        }
        if self.read_interval >= self.flush_interval {
            out.push(Problem::new(
                "lake.read_interval",
                "must be shorter than lake.flush_interval",
            ));
        }
        if self.flush_max_rows == 0 {
            out.push(Problem::new("lake.flush_max_rows", "must be at least 1"));
        }
        if self.row_group_rows < 1024 {
            out.push(Problem::new(
                "lake.row_group_rows",
                format!("{} is too small (at least 1024)", self.row_group_rows),
            ));
        }
        if self.compact_min_files < 2 {
            out.push(Problem::new("lake.compact_min_files", "must be at least 2"));
        }
        if self.target_file_bytes < 1024 * 1024 {
            out.push(Problem::new(
                "lake.target_file_bytes",
                "must be at least 1 MiB",
            ));
        }
        // Compaction moves its outputs into place with a server-side copy on S3, which S3
        // refuses for objects over 5 GiB.
        if self.target_file_bytes > 4 * 1024 * 1024 * 1024 {
            out.push(Problem::new(
                "lake.target_file_bytes",
                "must be at most 4 GiB (S3 copies larger objects only in parts)",
            ));
        }
        if !(self.url.is_empty()
            || self.url.starts_with("s3://")
            || self.url.starts_with("file://")
            || !self.url.contains("://"))
        {
            out.push(Problem::new(
                "lake.url",
                format!(
                    "{:?}: unsupported scheme (use a directory, file:// or s3://)",
                    self.url
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_file_size_is_bounded_both_ways() {
        let keys =
            |c: LakeConfig| -> Vec<String> { c.problems().into_iter().map(|p| p.path).collect() };
        assert!(keys(LakeConfig::default()).is_empty());
        for bytes in [1024, 5 * 1024 * 1024 * 1024] {
            let c = LakeConfig {
                target_file_bytes: bytes,
                ..LakeConfig::default()
            };
            assert_eq!(
                keys(c),
                vec!["lake.target_file_bytes".to_owned()],
                "{bytes}"
            );
        }
    }
}
