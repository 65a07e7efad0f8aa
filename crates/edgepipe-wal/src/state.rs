//! What the handles, the writer thread and the readers of an open WAL share: the segment
//! list, consumer checkpoints, gaps and counters, and the public gap and stats types.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;

use crate::config::WalConfig;
use crate::format::{OpenSegment, Segment};

/// A range of sequence numbers lost to [`FullPolicy::DropOldest`](crate::FullPolicy::DropOldest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// First lost sequence.
    pub from: u64,
    /// One past the last lost sequence.
    pub to: u64,
}

/// Counters and sizes, for metrics and status lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Records appended since open.
    pub appended_records: u64,
    /// Payload bytes appended since open.
    pub appended_bytes: u64,
    /// fdatasync calls since open.
    pub fsyncs: u64,
    /// Records truncated from a torn tail at open.
    pub torn_records_truncated: u64,
    /// Bytes truncated from a torn tail at open.
    pub torn_bytes_truncated: u64,
    /// Records deleted by the drop-oldest policy.
    pub dropped_records: u64,
    /// Appends refused because the budget was full.
    pub rejected_full: u64,
    /// Record bytes in all segment files (with preallocation the files also hold the
    /// active segment's unused zeros, and a spare segment lies beside them). The disk budget
    /// counts these bytes.
    pub disk_bytes: u64,
    /// Number of segment files.
    pub segments: u64,
    /// Oldest sequence on disk.
    pub first_seq: u64,
    /// Next sequence to be assigned; everything below is durable.
    pub next_seq: u64,
}

#[derive(Debug)]
pub(crate) struct State {
    /// Closed segments plus the active one (last).
    pub(crate) segments: Vec<Segment>,
    pub(crate) consumers: BTreeMap<String, u64>,
    pub(crate) gaps: Vec<Gap>,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) appended_records: AtomicU64,
    pub(crate) appended_bytes: AtomicU64,
    pub(crate) fsyncs: AtomicU64,
    pub(crate) dropped_records: AtomicU64,
    pub(crate) rejected_full: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) config: WalConfig,
    pub(crate) state: Mutex<State>,
    /// Next sequence whose record is not yet durable: everything below is readable.
    pub(crate) durable: watch::Sender<u64>,
    pub(crate) poisoned: AtomicBool,
    pub(crate) counters: Counters,
    pub(crate) torn_records: u64,
    pub(crate) torn_bytes: u64,
    /// Open segment readers left by [`Wal::read`] and [`Wal::read_each`], keyed by the next
    /// sequence they return, so a consumer that keeps reading from where it stopped continues
    /// in the open file instead of reopening the segment and scanning it from the start.
    ///
    /// [`Wal::read`]: crate::Wal::read
    /// [`Wal::read_each`]: crate::Wal::read_each
    pub(crate) read_cache: Mutex<Vec<(u64, Option<OpenSegment>)>>,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this crate; the state is still
        // structurally valid, so keep serving rather than cascading the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
