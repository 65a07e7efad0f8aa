//! WAL configuration: sizes, limits and the full-disk policy, validated in one place.

use edgepipe_types::config::{Problem, key_path};

use crate::error::{Error, Result};
use crate::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};

/// What to do when an append would exceed [`WalConfig::max_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the append with [`Error::Full`]; the producer must not acknowledge.
    #[default]
    Reject,
    /// Delete the oldest segments (even unconsumed ones), recording a [`Gap`](crate::Gap).
    DropOldest,
}

/// WAL configuration.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WalConfig {
    /// Roll to a new segment once the active one reaches this many bytes.
    pub segment_bytes: u64,
    /// Disk budget for all segments, in bytes.
    pub max_bytes: u64,
    /// Policy when the budget is reached.
    pub full_policy: FullPolicy,
    /// Largest payload accepted.
    pub max_record_bytes: usize,
    /// Pending appends queued for the writer before producers wait (back-pressure).
    pub queue_depth: usize,
    /// Fill each segment with zeros up to `segment_bytes` before records go into it. An append
    /// then overwrites zeros instead of growing the file, so its fdatasync has only data to
    /// flush, not a new file size (on ext4 here: ~135 µs against ~215 µs). The next segment
    /// is prepared by a background thread, so rolling does not wait for the zeros. It costs up
    /// to two segments of disk beyond the records: the active segment's unused tail and the
    /// spare. Off for stores that are written rarely. On a disk too full for the zeros the
    /// WAL still opens and takes records: the segment then grows as written, a partial spare is
    /// removed at once, and no further spare is tried until the next open.
    pub preallocate: bool,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 16 * 1024 * 1024 * 1024,
            full_policy: FullPolicy::Reject,
            max_record_bytes: 8 * 1024 * 1024,
            queue_depth: 4096,
            preallocate: true,
        }
    }
}

impl WalConfig {
    /// Small sizes for tests: 4 KiB segments, 1 MiB budget.
    pub fn test_config() -> Self {
        Self {
            segment_bytes: 4096,
            max_bytes: 1024 * 1024,
            full_policy: FullPolicy::Reject,
            max_record_bytes: 64 * 1024,
            queue_depth: 64,
            preallocate: true,
        }
    }

    /// Every problem an operator's settings have, under `path` (e.g. `wal`, `queue`): the
    /// rules of [`size_problems`], and positive record and queue limits. Stricter than what
    /// [`crate::Wal::open`] insists on (tests open tiny WALs), so configurations get room to work.
    pub fn problems(&self, path: &str) -> Vec<Problem> {
        let mut out = size_problems(path, self.segment_bytes, self.max_bytes);
        if self.max_record_bytes == 0 {
            out.push(Problem::new(
                key_path(path, "max_record_bytes"),
                "must be positive",
            ));
        }
        if self.queue_depth == 0 {
            out.push(Problem::new(
                key_path(path, "queue_depth"),
                "must be positive",
            ));
        }
        out
    }

    /// What [`crate::Wal::open`] refuses: limits it cannot work with at all.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.segment_bytes < (SEGMENT_HEADER_LEN + RECORD_HEADER_LEN) as u64 {
            return Err(Error::Config(
                "segment_bytes is smaller than one record".into(),
            ));
        }
        if self.max_bytes < self.segment_bytes {
            return Err(Error::Config(format!(
                "max_bytes ({}) must be at least segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            )));
        }
        if self.max_record_bytes == 0 || self.queue_depth == 0 {
            return Err(Error::Config(
                "max_record_bytes and queue_depth must be positive".into(),
            ));
        }
        Ok(())
    }
}

/// The smallest segment an operator may configure.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// The WAL's size rules for a configuration at `path`: segments of at least
/// [`MIN_SEGMENT_BYTES`], and a disk budget of at least two segments (the active segment and
/// the zero-filled spare; with less, retention could never free a whole segment).
pub fn size_problems(path: &str, segment_bytes: u64, max_bytes: u64) -> Vec<Problem> {
    let mut out = Vec::new();
    if segment_bytes < MIN_SEGMENT_BYTES {
        out.push(Problem::new(
            key_path(path, "segment_bytes"),
            format!("must be at least {MIN_SEGMENT_BYTES}"),
        ));
    }
    if max_bytes < segment_bytes.saturating_mul(2) {
        out.push(Problem::new(
            key_path(path, "max_bytes"),
            format!(
                "{max_bytes} must be at least two segments ({} bytes)",
                segment_bytes.saturating_mul(2)
            ),
        ));
    }
    out
}
