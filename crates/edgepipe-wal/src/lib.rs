//! `edgepipe-wal`: the segmented, append-only write-ahead log every accepted reading passes
//! through before it is acknowledged (architecture principle 1), and from which every downstream
//! stage (lake writer, fresh buffer, detector, routes) consumes with its own durable checkpoint.
//!
//! # Format
//! A WAL is a directory:
//! ```text
//! <dir>/segments/<first_seq:020>.seg   segment files, in sequence order
//! <dir>/consumers/<name>.ckpt          one checkpoint per named consumer
//! ```
//! Every segment starts with a 32-byte header:
//! `magic "EPWALSEG" (8) | version u32 LE (=2; 1 is read too) | reserved u32 | first_seq u64 LE | crc32c u32 LE
//! of the preceding 24 bytes | reserved u32`, followed by records framed as
//! `len u32 LE | crc32c u32 LE over (seq LE bytes ++ payload) | seq u64 LE | payload (len bytes)`.
//! Sequence numbers start at 0 and are contiguous across segments.
//!
//! With [`WalConfig::preallocate`] (the default), a segment is filled with zeros to its full
//! size before records are written into it, and records overwrite the zeros in place: the
//! file's size does not change with an append, so its fdatasync flushes data only. The zeros
//! after the last record end the log (no record frame is all zeros: its checksum covers the
//! sequence number). A background thread keeps one zero-filled spare,
//! `<dir>/segments/spare.prealloc`, which becomes the next segment when the active one rolls
//! (header written and synced, then renamed); a spare found at open is deleted.
//!
//! A checkpoint file holds `magic "EPWALCKP" | next_seq u64 LE | crc32c u32 LE`, written to a
//! temporary file, fsynced, renamed over the old one, and the directory fsynced.
//!
//! # Guarantees
//! - One writer thread owns the active segment. Appends that arrive while it is syncing are
//!   written together and covered by one `fdatasync` (group commit). Appends a caller prepared
//!   and handed over together ([`Wal::prepare_then`], [`Wal::submit_prepared`]) are always in
//!   the same group.
//! - [`Wal::append`] returns only after the record's bytes are fdatasynced. [`Wal::append_unconfirmed`]
//!   returns once the bytes are handed to the OS; the same group's fsync follows right after.
//! - Readers and consumers only ever see records that are durable, so a consumer can never
//!   checkpoint past what a crash would keep.
//! - If an fsync fails, the WAL is poisoned: the failing appends and every later one return
//!   [`Error::Poisoned`]; nothing is acknowledged that might not be on disk.
//! - On open, a torn tail (short or CRC-failing record at the end of the last segment followed
//!   by bytes that are not all zero, or a torn segment header) is truncated and counted in
//!   [`WalStats::torn_records_truncated`] / `torn_bytes_truncated` (the bytes up to the last
//!   non-zero one). Corruption anywhere else is an error naming the file and offset.
//! - Readers read a segment only up to the bytes published as durable, never into the zeros
//!   or into a group being written.
//! - Retention deletes whole non-active segments whose every record every registered consumer
//!   has passed. With no consumer registered, nothing is deleted by retention.
//! - A disk budget ([`WalConfig::max_bytes`]) bounds the segment bytes. When an append would
//!   exceed it, [`FullPolicy::Reject`] refuses the append with [`Error::Full`] (callers do not
//!   acknowledge), and [`FullPolicy::DropOldest`] deletes the oldest segments, records the lost
//!   sequence range as a [`Gap`] and counts the dropped records.

mod checkpoint;
mod config;
pub mod durable;
mod error;
mod format;
mod reader;
mod recovery;
mod state;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

pub use crate::config::{FullPolicy, MIN_SEGMENT_BYTES, WalConfig, size_problems};
pub use crate::error::{Error, Result};
pub use crate::format::{RECORD_HEADER_LEN, SEGMENT_HEADER_LEN};
pub use crate::reader::{Consumer, Reader};
pub use crate::state::{Gap, WalStats};
pub use crate::writer::{Appended, OnDurable, Prepared};

use crate::state::Shared;
use crate::writer::Request;

/// A handle to an open WAL. Cheap to clone; the writer thread stops when the last handle drops
/// or [`Wal::close`] is called.
#[derive(Debug, Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Wal {
    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Whether `self` and `other` are handles to the same open WAL.
    pub fn same_as(&self, other: &Wal) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Sequence ranges lost to the drop-oldest policy since open.
    pub fn gaps(&self) -> Vec<Gap> {
        self.shared.lock().gaps.clone()
    }

    /// Current counters and sizes.
    pub fn stats(&self) -> WalStats {
        let st = self.shared.lock();
        let c = &self.shared.counters;
        WalStats {
            appended_records: c.appended_records.load(Ordering::Relaxed),
            appended_bytes: c.appended_bytes.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            torn_records_truncated: self.shared.torn_records,
            torn_bytes_truncated: self.shared.torn_bytes,
            dropped_records: c.dropped_records.load(Ordering::Relaxed),
            rejected_full: c.rejected_full.load(Ordering::Relaxed),
            disk_bytes: st.segments.iter().map(|s| s.bytes).sum(),
            segments: st.segments.len() as u64,
            first_seq: st.segments.first().map_or(0, |s| s.first_seq),
            next_seq: self.durable_end(),
        }
    }

    /// Whether an fsync failure stopped the WAL.
    pub fn is_poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    /// Drops this handle; if it is the last one, waits until the writer has answered every
    /// queued append and stopped.
    pub fn close(self) {
        let Wal { tx, writer, shared } = self;
        drop(tx);
        drop(shared);
        if let Ok(slot) = Arc::try_unwrap(writer)
            && let Ok(Some(handle)) = slot.into_inner()
        {
            let _ = handle.join();
        }
    }
}
