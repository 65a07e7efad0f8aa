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

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot, watch};

#[cfg(test)]
mod tests;

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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to do when an append would exceed [`WalConfig::max_bytes`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Refuse the append with [`Error::Full`]; the producer must not acknowledge.
    #[default]
    Reject,
    /// Delete the oldest segments (even unconsumed ones), recording a [`Gap`].
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

    fn validate(&self) -> Result<()> {
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

/// A range of sequence numbers lost to [`FullPolicy::DropOldest`].
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

const SEGMENT_MAGIC: &[u8; 8] = b"EPWALSEG";
const CHECKPOINT_MAGIC: &[u8; 8] = b"EPWALCKP";
/// Segment format written. Version 2 segments may hold zeros after their last record (see
/// [`WalConfig::preallocate`]), which a build reading only version 1 would take for corruption;
/// the bump makes such a build refuse them by name instead.
const FORMAT_VERSION: u32 = 2;
/// Oldest segment format still read (version 1: records up to the end of the file).
const OLDEST_FORMAT_VERSION: u32 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes of framing before each record's payload.
pub const RECORD_HEADER_LEN: usize = 16;

#[derive(Debug, Clone)]
struct Segment {
    first_seq: u64,
    /// One past the last record in the segment.
    end_seq: u64,
    bytes: u64,
    path: PathBuf,
}

impl Segment {
    /// A segment holding its header and no record yet.
    fn empty(first_seq: u64, path: PathBuf) -> Self {
        Segment {
            first_seq,
            end_seq: first_seq,
            bytes: SEGMENT_HEADER_LEN as u64,
            path,
        }
    }
}

#[derive(Debug)]
struct State {
    /// Closed segments plus the active one (last).
    segments: Vec<Segment>,
    consumers: BTreeMap<String, u64>,
    gaps: Vec<Gap>,
}

#[derive(Debug, Default)]
struct Counters {
    appended_records: AtomicU64,
    appended_bytes: AtomicU64,
    fsyncs: AtomicU64,
    dropped_records: AtomicU64,
    rejected_full: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    config: WalConfig,
    state: Mutex<State>,
    /// Next sequence whose record is not yet durable: everything below is readable.
    durable: watch::Sender<u64>,
    poisoned: AtomicBool,
    counters: Counters,
    torn_records: u64,
    torn_bytes: u64,
    /// Open segment readers left by [`Wal::read`] and [`Wal::read_each`], keyed by the next
    /// sequence they return, so a consumer that keeps reading from where it stopped continues
    /// in the open file instead of reopening the segment and scanning it from the start.
    read_cache: Mutex<Vec<(u64, Option<OpenSegment>)>>,
}

/// A segment file open for reading: its first sequence, the buffered file and its path.
type OpenSegment = (u64, BufReader<Bounded>, PathBuf);

/// A segment file read up to `limit`: the bytes known to hold durable records. Beyond it lie
/// the zeros of a preallocated segment, or records still on their way to disk.
#[derive(Debug)]
struct Bounded {
    file: File,
    pos: u64,
    limit: u64,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let room = usize::try_from(self.limit.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Bounded {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(p) => (p, 0),
            SeekFrom::Current(d) => (self.pos, d),
            SeekFrom::End(d) => (self.limit, d),
        };
        self.pos = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the file start")
        })?;
        Ok(self.pos)
    }
}

/// File name of the spare segment a background thread fills with zeros.
const SPARE_NAME: &str = "spare.prealloc";

/// Writes zeros from `from` to `to` with positioned writes, then syncs data and size.
fn write_zeros(f: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut off = from;
    while off < to {
        let n = usize::try_from(to - off).map_or(zeros.len(), |r| r.min(zeros.len()));
        f.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    f.sync_all()
}

/// Creates the spare segment: `bytes` of zeros, synced. Runs on its own thread. On failure (a
/// full disk, say) the partial file is removed at once, so it holds no space others need.
fn prepare_spare(path: PathBuf, bytes: u64) -> io::Result<PathBuf> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    if let Err(e) = write_zeros(&f, 0, bytes) {
        drop(f);
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(path)
}

/// The end offset of the last non-zero byte of `f` in `[from, len)`, or `from` when that range
/// holds only zeros (a preallocated segment's unused tail).
fn dirty_end(f: &File, from: u64, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let mut off = from;
    let mut end = from;
    while off < len {
        let want = usize::try_from(len - off).map_or(CHUNK, |r| r.min(CHUNK));
        let got = f.read_at(&mut buf[..want], off)?;
        if got == 0 {
            break;
        }
        // A slice comparison (memcmp) first: the tail is megabytes of zeros.
        if buf[..got] != zeros[..got]
            && let Some(i) = buf[..got].iter().rposition(|b| *b != 0)
        {
            end = off + i as u64 + 1;
        }
        off += got as u64;
    }
    Ok(end)
}

/// Most readers [`Wal::read`] and [`Wal::read_each`] keep open (one per consumer is the common case).
const READ_CACHE: usize = 8;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this crate; the state is still
        // structurally valid, so keep serving rather than cascading the panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs on the writer thread once an append is durable, with the append's first sequence.
pub type OnDurable = Box<dyn FnOnce(u64) + Send + 'static>;

/// One append: its records, whether its reply waits for the fsync, the reply and the callback.
struct Append {
    payloads: Vec<Vec<u8>>,
    durable: bool,
    reply: oneshot::Sender<Result<u64>>,
    on_durable: Option<OnDurable>,
}

impl Append {
    /// Bytes the records take in a segment.
    fn bytes(&self) -> usize {
        self.payloads
            .iter()
            .map(|p| p.len() + RECORD_HEADER_LEN)
            .sum()
    }
}

/// What the writer receives: one append, or appends handed over together
/// ([`Wal::submit_prepared`]), which go into one group and are each answered on their own.
#[derive(Debug)]
enum Request {
    One(Append),
    Many(Vec<Append>),
}

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Request::One(a) => a.bytes(),
            Request::Many(all) => all.iter().map(Append::bytes).sum(),
        }
    }

    /// Adds its appends, in order, to `out`.
    fn into_appends(self, out: &mut Vec<Append>) {
        match self {
            Request::One(a) => out.push(a),
            Request::Many(all) => out.extend(all),
        }
    }
}

/// A durable append built by [`Wal::prepare_then`] and not yet handed to the writer.
#[derive(Debug)]
pub struct Prepared(Append);

/// The outcome of a prepared append: resolves to its sequence once it is fdatasynced, or to
/// the error that stopped it ([`Error::Closed`] if it was never handed to the writer).
#[derive(Debug)]
pub struct Appended(oneshot::Receiver<Result<u64>>);

impl std::future::Future for Appended {
    type Output = Result<u64>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<u64>> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.map_err(|_| Error::Closed)?)
    }
}

/// A handle to an open WAL. Cheap to clone; the writer thread stops when the last handle drops
/// or [`Wal::close`] is called.
#[derive(Debug, Clone)]
pub struct Wal {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Request>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append")
            .field("records", &self.payloads.len())
            .field("durable", &self.durable)
            .finish()
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join("segments").join(format!("{first_seq:020}.seg"))
}

fn fsync_dir(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io_err(path))
}

fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `(first_seq, format version)` of a segment header.
fn parse_segment_header(h: &[u8; SEGMENT_HEADER_LEN]) -> std::result::Result<(u64, u32), String> {
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc != crc32c::crc32c(&h[0..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "segment format version {version}, this build reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
        ));
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&h[16..24]);
    Ok((u64::from_le_bytes(s), version))
}

fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

fn encode_record(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record_crc(seq, payload).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Outcome of reading one record frame: `f`'s result for a good record.
enum Frame<R> {
    Record(R),
    /// Clean end of file.
    End,
    /// Short or invalid frame: the reason.
    Bad(String),
}

/// Reads one frame, checks its length limit, checksum and sequence, and hands `(seq, payload)`
/// to `f`. A frame that lies whole in the reader's buffer (the common case) is passed in place,
/// without allocating or copying; one that straddles a refill is assembled in `scratch` (reused
/// across calls). Recovery, readers and consumers all read frames through this one function.
fn read_frame<B: BufRead, R>(
    r: &mut B,
    max_len: usize,
    expect_seq: u64,
    scratch: &mut Vec<u8>,
    f: impl FnOnce(u64, &[u8]) -> R,
) -> io::Result<Frame<R>> {
    let check = |crc: u32, seq: u64, payload: &[u8]| -> Option<String> {
        if crc != record_crc(seq, payload) {
            return Some("record checksum mismatch".into());
        }
        if seq != expect_seq {
            return Some(format!("record sequence {seq}, expected {expect_seq}"));
        }
        None
    };
    let buf = r.fill_buf()?;
    if buf.is_empty() {
        return Ok(Frame::End);
    }
    if let Some(head) = buf.get(..RECORD_HEADER_LEN) {
        let (len, crc, seq) = parse_record_header(head);
        if len > max_len {
            return Ok(Frame::Bad(format!(
                "record length {len} exceeds limit {max_len}"
            )));
        }
        if let Some(payload) = buf.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) {
            if let Some(bad) = check(crc, seq, payload) {
                return Ok(Frame::Bad(bad));
            }
            let out = f(seq, payload);
            r.consume(RECORD_HEADER_LEN + len);
            return Ok(Frame::Record(out));
        }
    }
    // The frame straddles the end of the buffer: read it piecewise.
    let mut head = [0u8; RECORD_HEADER_LEN];
    if let Err(e) = r.read_exact(&mut head) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(Frame::Bad("short record header".into()))
        } else {
            Err(e)
        };
    }
    let (len, crc, seq) = parse_record_header(&head);
    if len > max_len {
        return Ok(Frame::Bad(format!(
            "record length {len} exceeds limit {max_len}"
        )));
    }
    scratch.clear();
    scratch.resize(len, 0);
    if let Err(e) = r.read_exact(scratch) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(Frame::Bad("short record payload".into()))
        } else {
            Err(e)
        };
    }
    if let Some(bad) = check(crc, seq, scratch) {
        return Ok(Frame::Bad(bad));
    }
    Ok(Frame::Record(f(seq, scratch)))
}

/// `(payload length, crc, seq)` of a record header.
fn parse_record_header(head: &[u8]) -> (usize, u32, u64) {
    let word = |i: usize| [head[i], head[i + 1], head[i + 2], head[i + 3]];
    let len = u32::from_le_bytes(word(0)) as usize;
    let crc = u32::from_le_bytes(word(4));
    let seq = u64::from_le_bytes([
        head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15],
    ]);
    (len, crc, seq)
}

fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn read_checkpoint(path: &Path) -> Result<u64> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    if bytes.len() != 20 || &bytes[0..8] != CHECKPOINT_MAGIC {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "bad checkpoint file".into(),
        });
    }
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc != crc32c::crc32c(&bytes[0..16]) {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 16,
            reason: "checkpoint checksum mismatch".into(),
        });
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&bytes[8..16]);
    Ok(u64::from_le_bytes(s))
}

fn write_checkpoint(dir: &Path, name: &str, next_seq: u64) -> Result<()> {
    let cdir = dir.join("consumers");
    let tmp = cdir.join(format!("{name}.ckpt.tmp"));
    let path = cdir.join(format!("{name}.ckpt"));
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&next_seq.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&bytes).map_err(io_err(&tmp))?;
        f.sync_data().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    fsync_dir(&cdir)
}

/// Scans one segment. Returns `(end_seq, valid_bytes, torn, dirty_end)`: `torn` is
/// `Some(reason)` when the records end at `valid_bytes` in an invalid frame followed by bytes
/// that are not all zero, and those bytes end at `dirty_end`. Zeros after the last record are
/// a preallocated segment's unused tail, not a torn write.
fn scan_segment(
    path: &Path,
    first_seq: u64,
    max_len: usize,
) -> Result<(u64, u64, Option<String>, u64)> {
    let f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(
        1 << 20,
        Bounded {
            file: f,
            pos: 0,
            limit: file_len,
        },
    );
    r.seek(SeekFrom::Start(SEGMENT_HEADER_LEN as u64))
        .map_err(io_err(path))?;
    let mut seq = first_seq;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut scratch = Vec::new();
    loop {
        match read_frame(&mut r, max_len, seq, &mut scratch, |_, p| p.len())
            .map_err(io_err(path))?
        {
            Frame::Record(len) => {
                pos += (RECORD_HEADER_LEN + len) as u64;
                seq += 1;
            }
            Frame::End => return Ok((seq, pos, None, pos)),
            Frame::Bad(reason) => {
                let end = dirty_end(&r.get_ref().file, pos, file_len).map_err(io_err(path))?;
                let torn = (end > pos).then_some(reason);
                return Ok((seq, pos, torn, end));
            }
        }
    }
}

/// Estimate how many records a torn tail held: at least one when any bytes were cut.
fn torn_record_estimate(bytes: u64) -> u64 {
    u64::from(bytes > 0)
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, recovering from any crash: a torn tail is truncated
    /// and counted, consumer checkpoints are loaded.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Wal> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let seg_dir = dir.join("segments");
        let cons_dir = dir.join("consumers");
        fs::create_dir_all(&seg_dir).map_err(io_err(&seg_dir))?;
        fs::create_dir_all(&cons_dir).map_err(io_err(&cons_dir))?;

        let mut firsts = Vec::new();
        for entry in fs::read_dir(&seg_dir).map_err(io_err(&seg_dir))? {
            let entry = entry.map_err(io_err(&seg_dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".seg")
                && let Ok(first) = stem.parse::<u64>()
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut segments: Vec<Segment> = Vec::new();
        // Format version of the last segment (a new one is written in the current format).
        let mut last_version = FORMAT_VERSION;
        let mut torn_records = 0;
        let mut torn_bytes = 0;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let last = i + 1 == count;
            let path = segment_path(&dir, first);
            let mut header = [0u8; SEGMENT_HEADER_LEN];
            let header_ok = File::open(&path)
                .and_then(|mut f| f.read_exact(&mut header))
                .map_err(|e| e.to_string())
                .and_then(|()| parse_segment_header(&header));
            match header_ok {
                Ok((hfirst, version)) if hfirst == first => last_version = version,
                Ok((hfirst, _)) => {
                    return Err(Error::Corrupt {
                        path,
                        offset: 16,
                        reason: format!("header says first seq {hfirst}, name says {first}"),
                    });
                }
                Err(reason) if last => {
                    // A crash while creating the segment: nothing in it was ever acknowledged.
                    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    tracing::warn!(path = %path.display(), %reason, "removing torn segment header");
                    torn_bytes += len;
                    torn_records +=
                        torn_record_estimate(len.saturating_sub(SEGMENT_HEADER_LEN as u64));
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    fsync_dir(&seg_dir)?;
                    continue;
                }
                Err(reason) => {
                    return Err(Error::Corrupt {
                        path,
                        offset: 0,
                        reason,
                    });
                }
            }
            if let Some(prev) = segments.last()
                && prev.end_seq != first
            {
                return Err(Error::Corrupt {
                    path,
                    offset: 16,
                    reason: format!(
                        "segment starts at seq {first} but the previous one ends at {}",
                        prev.end_seq
                    ),
                });
            }
            let (end_seq, valid, torn, dirty) =
                scan_segment(&path, first, config.max_record_bytes)?;
            if let Some(reason) = torn {
                if !last {
                    return Err(Error::Corrupt {
                        path,
                        offset: valid,
                        reason,
                    });
                }
                let cut = dirty - valid;
                tracing::warn!(path = %path.display(), offset = valid, bytes = cut, %reason, "truncating torn wal tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(valid).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                torn_bytes += cut;
                torn_records += torn_record_estimate(cut);
            }
            segments.push(Segment {
                first_seq: first,
                end_seq,
                bytes: valid,
                path,
            });
        }

        let mut consumers = BTreeMap::new();
        for entry in fs::read_dir(&cons_dir).map_err(io_err(&cons_dir))? {
            let entry = entry.map_err(io_err(&cons_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".ckpt")
                && valid_consumer_name(stem)
            {
                let pos = read_checkpoint(&entry.path())?;
                consumers.insert(stem.to_string(), pos);
            }
        }

        let next_seq = segments.last().map_or(0, |s| s.end_seq);
        // A segment whose header was torn may have been the only one; restart its sequence
        // after the highest checkpoint so consumers never skip new records.
        let start = if segments.is_empty() {
            consumers.values().copied().max().unwrap_or(0)
        } else {
            next_seq
        };
        for pos in consumers.values_mut() {
            if *pos > start {
                tracing::warn!(
                    checkpoint = *pos,
                    next_seq = start,
                    "consumer checkpoint beyond the log end; clamping"
                );
                *pos = start;
            }
        }

        let (file, active) = match segments.last() {
            Some(s) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&s.path)
                    .map_err(io_err(&s.path))?;
                (f, s.clone())
            }
            None => {
                let (f, s) = create_segment(&dir, start)?;
                segments.push(s.clone());
                (f, s)
            }
        };
        // A spare left by an earlier run may be half written: start afresh.
        let spare = seg_dir.join(SPARE_NAME);
        match fs::remove_file(&spare) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&spare)(e)),
        }
        // A version 1 segment is left to grow as written, so a build before preallocation can
        // still read it; the next segment is zero-filled.
        if config.preallocate && last_version >= 2 {
            let len = file.metadata().map_err(io_err(&active.path))?.len();
            if len < config.segment_bytes
                && let Err(e) = write_zeros(&file, len, config.segment_bytes)
            {
                // A disk too full for the zeros still takes records: the segment grows as
                // written instead (slower syncs), and the zeros that did land are cut off.
                tracing::warn!(path = %active.path.display(), error = %e, "wal: segment not preallocated");
                file.set_len(len).map_err(io_err(&active.path))?;
                file.sync_all().map_err(io_err(&active.path))?;
            }
        }

        let (durable, _) = watch::channel(active.end_seq);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            config: config.clone(),
            state: Mutex::new(State {
                segments,
                consumers,
                gaps: Vec::new(),
            }),
            durable,
            poisoned: AtomicBool::new(false),
            counters: Counters::default(),
            torn_records,
            torn_bytes,
            read_cache: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let writer_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || {
                let mut w = Writer {
                    shared: writer_shared,
                    file,
                    active,
                    spare: None,
                    spare_failed: false,
                };
                w.start_spare();
                w.run(rx)
            })
            .map_err(io_err(&dir))?;
        Ok(Wal {
            shared,
            tx,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }

    /// The WAL's directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Appends one record. When this returns `Ok(seq)`, the record is fdatasynced and will be
    /// found at `seq` after any crash.
    pub async fn append(&self, payload: Vec<u8>) -> Result<u64> {
        self.submit(vec![payload], true, None).await
    }

    /// Appends several records atomically ordered; returns the first one's sequence. When it
    /// returns, all are fdatasynced.
    pub async fn append_batch(&self, payloads: Vec<Vec<u8>>) -> Result<u64> {
        self.submit(payloads, true, None).await
    }

    /// Like [`append`](Self::append), and `on_durable` runs on the writer thread right after the
    /// record is fdatasynced, before this returns, even if the caller's future was dropped in
    /// the meantime. Use it for bookkeeping that must follow every durable record (an index of
    /// what is stored) and must not be lost when a caller is cancelled. It does not run if the
    /// append fails. Keep it short: it runs inside the group commit.
    pub async fn append_then(
        &self,
        payload: Vec<u8>,
        on_durable: impl FnOnce(u64) + Send + 'static,
    ) -> Result<u64> {
        self.submit(vec![payload], true, Some(Box::new(on_durable)))
            .await
    }

    /// Appends one record without waiting for fsync: when this returns the bytes are written
    /// to the OS (they survive a process crash but not a power loss until the group's fsync,
    /// which follows immediately). Readers see the record only once it is durable.
    pub async fn append_unconfirmed(&self, payload: Vec<u8>) -> Result<u64> {
        self.submit(vec![payload], false, None).await
    }

    /// Builds a durable append like [`append_then`](Self::append_then) without handing it to
    /// the writer yet; returns it and the future of its outcome. Hand any number of them to the
    /// writer at once with [`submit_prepared`](Self::submit_prepared).
    ///
    /// For a caller that makes appends in bursts (a network thread that read many messages in
    /// one go and handles each in its own task): the writer starts a group commit as soon as
    /// anything arrives, so appends submitted one by one split such a burst, the first alone in
    /// one fsync and the rest in the next. Gathered and handed over together, the burst shares
    /// one fsync. `on_durable` runs only if the append is handed over and becomes durable.
    pub fn prepare_then(
        &self,
        payload: Vec<u8>,
        on_durable: impl FnOnce(u64) + Send + 'static,
    ) -> Result<(Prepared, Appended)> {
        self.admit(std::slice::from_ref(&payload))?;
        let (reply, rx) = oneshot::channel();
        let append = Append {
            payloads: vec![payload],
            durable: true,
            reply,
            on_durable: Some(Box::new(on_durable)),
        };
        Ok((Prepared(append), Appended(rx)))
    }

    /// Hands prepared appends to the writer in one piece, in order: they go into the same group
    /// commit. Waits only while the
    /// writer's queue is full. If the WAL is closed, each append's [`Appended`] resolves to
    /// [`Error::Closed`].
    pub async fn submit_prepared(&self, batch: Vec<Prepared>) {
        let mut appends: Vec<Append> = batch.into_iter().map(|Prepared(a)| a).collect();
        let req = match appends.len() {
            0 => return,
            1 => match appends.pop() {
                Some(a) => Request::One(a),
                None => return,
            },
            _ => Request::Many(appends),
        };
        // A send error drops the requests, and with them their replies: their futures see Closed.
        let _ = self.tx.send(req).await;
    }

    /// Refuses appends up front: the WAL is poisoned, or a record is over the size limit.
    fn admit(&self, payloads: &[Vec<u8>]) -> Result<()> {
        if self.shared.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        let limit = self.shared.config.max_record_bytes;
        if let Some(p) = payloads.iter().find(|p| p.len() > limit) {
            return Err(Error::RecordTooLarge {
                len: p.len(),
                limit,
            });
        }
        Ok(())
    }

    /// Whether `self` and `other` are handles to the same open WAL.
    pub fn same_as(&self, other: &Wal) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    async fn submit(
        &self,
        payloads: Vec<Vec<u8>>,
        durable: bool,
        on_durable: Option<OnDurable>,
    ) -> Result<u64> {
        self.admit(&payloads)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::One(Append {
                payloads,
                durable,
                reply,
                on_durable,
            }))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Next sequence number to be durable: every record below it can be read.
    pub fn durable_end(&self) -> u64 {
        *self.shared.durable.borrow()
    }

    /// Waits until the durable end is greater than `seq` (a record at `seq` is readable), or the
    /// WAL closes.
    pub async fn wait_beyond(&self, seq: u64) -> Result<u64> {
        let mut rx = self.shared.durable.subscribe();
        loop {
            let end = *rx.borrow_and_update();
            if end > seq {
                return Ok(end);
            }
            if rx.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Like [`wait_beyond`](Self::wait_beyond), but returns no sooner than `not_before`: a
    /// consumer that read at `t` and passes `t + interval` reads a busy WAL in batches, at most
    /// once per interval, instead of once per group commit.
    pub async fn wait_beyond_no_sooner(
        &self,
        seq: u64,
        not_before: std::time::Instant,
    ) -> Result<u64> {
        let end = self.wait_beyond(seq).await?;
        tokio::time::sleep_until(tokio::time::Instant::from_std(not_before)).await;
        Ok(end)
    }

    /// Reads up to `max` durable records starting at `from`. A call that starts where an
    /// earlier one stopped continues in that call's open segment file (cost proportional to
    /// what it reads, not to the position in the segment).
    pub fn read(&self, from: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        self.read_each(from, max, |seq, payload| out.push((seq, payload.to_vec())))?;
        Ok(out)
    }

    /// Like [`read`](Self::read), but hands each record to `f` in place (no allocation or copy
    /// per record: the consumers' hot path). Returns how many records were handed over.
    pub fn read_each(&self, from: u64, max: usize, mut f: impl FnMut(u64, &[u8])) -> Result<usize> {
        let mut reader = self.reader(from)?;
        {
            let mut cache = self
                .shared
                .read_cache
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(i) = cache.iter().position(|(next, _)| *next == from) {
                reader.current = cache.swap_remove(i).1;
            }
        }
        let mut scratch = Vec::new();
        let mut n = 0;
        while n < max {
            match reader.next_with(&mut scratch, &mut f)? {
                Some(()) => n += 1,
                None => break,
            }
        }
        let mut cache = self
            .shared
            .read_cache
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() >= READ_CACHE {
            cache.remove(0);
        }
        cache.push((reader.next, reader.current.take()));
        Ok(n)
    }

    /// A sequential reader positioned at `from` (it reads up to the durable end at each call).
    pub fn reader(&self, from: u64) -> Result<Reader> {
        let oldest = self
            .shared
            .lock()
            .segments
            .first()
            .map_or(0, |s| s.first_seq);
        if from < oldest {
            return Err(Error::Truncated {
                requested: from,
                oldest,
            });
        }
        Ok(Reader {
            wal: self.clone(),
            next: from,
            current: None,
        })
    }

    /// Registers (or reopens) the named consumer; a new one starts at the oldest retained record.
    pub fn consumer(&self, name: &str) -> Result<Consumer> {
        if !valid_consumer_name(name) {
            return Err(Error::InvalidConsumer(name.to_string()));
        }
        let mut st = self.shared.lock();
        let pos = match st.consumers.get(name) {
            Some(p) => *p,
            None => {
                let start = st.segments.first().map_or(0, |s| s.first_seq);
                write_checkpoint(&self.shared.dir, name, start)?;
                st.consumers.insert(name.to_string(), start);
                start
            }
        };
        // Gaps from drop-oldest can leave a checkpoint below the oldest segment.
        let oldest = st.segments.first().map_or(0, |s| s.first_seq);
        Ok(Consumer {
            wal: self.clone(),
            name: name.to_string(),
            position: pos.max(oldest),
        })
    }

    /// Unregisters a consumer so it no longer holds back retention.
    pub fn remove_consumer(&self, name: &str) -> Result<()> {
        let path = self
            .shared
            .dir
            .join("consumers")
            .join(format!("{name}.ckpt"));
        let mut st = self.shared.lock();
        st.consumers.remove(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        drop(st);
        self.apply_retention()
    }

    /// Names and checkpoints of registered consumers.
    pub fn consumers(&self) -> BTreeMap<String, u64> {
        self.shared.lock().consumers.clone()
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

    /// Deletes closed segments every consumer has passed.
    fn apply_retention(&self) -> Result<()> {
        let doomed: Vec<Segment> = {
            let mut st = self.shared.lock();
            let Some(min) = st.consumers.values().copied().min() else {
                return Ok(());
            };
            let mut doomed = Vec::new();
            while st.segments.len() > 1 && st.segments[0].end_seq <= min {
                doomed.push(st.segments.remove(0));
            }
            doomed
        };
        for s in &doomed {
            fs::remove_file(&s.path).map_err(io_err(&s.path))?;
        }
        if !doomed.is_empty() {
            fsync_dir(&self.shared.dir.join("segments"))?;
        }
        Ok(())
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

fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, Segment)> {
    let path = segment_path(dir, first_seq);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    f.write_all(&segment_header(first_seq))
        .map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    fsync_dir(&dir.join("segments"))?;
    Ok((f, Segment::empty(first_seq, path)))
}

/// Turns the zero-filled spare into the segment starting at `first_seq`: its header written
/// and synced first, then the rename, so a crash leaves either a spare (removed at open) or a
/// valid empty segment.
fn install_spare(dir: &Path, spare: &Path, first_seq: u64) -> Result<(File, Segment)> {
    use std::os::unix::fs::FileExt;
    let path = segment_path(dir, first_seq);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(spare)
        .map_err(io_err(spare))?;
    f.write_all_at(&segment_header(first_seq), 0)
        .map_err(io_err(spare))?;
    f.sync_data().map_err(io_err(spare))?;
    fs::rename(spare, &path).map_err(io_err(&path))?;
    fsync_dir(&dir.join("segments"))?;
    Ok((f, Segment::empty(first_seq, path)))
}

struct Writer {
    shared: Arc<Shared>,
    file: File,
    active: Segment,
    /// The thread filling the next segment with zeros, when preallocating.
    spare: Option<JoinHandle<io::Result<PathBuf>>>,
    /// Set once a spare could not be made: no more are tried in this process, so a nearly
    /// full disk is not filled to the brim again at every roll.
    spare_failed: bool,
}

struct Pending {
    first: u64,
    durable: bool,
    reply: oneshot::Sender<Result<u64>>,
    on_durable: Option<OnDurable>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut pending: Vec<Pending> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut bytes = first.bytes();
            let mut appends = Vec::new();
            first.into_appends(&mut appends);
            // Group commit: take everything that queued up while we were syncing, bounded so
            // one group does not grow without limit.
            while bytes < 8 * 1024 * 1024 {
                match rx.try_recv() {
                    Ok(r) => {
                        bytes += r.bytes();
                        r.into_appends(&mut appends);
                    }
                    Err(_) => break,
                }
            }
            if self.shared.poisoned.load(Ordering::Acquire) {
                for a in appends {
                    let _ = a.reply.send(Err(Error::Poisoned));
                }
                continue;
            }
            buf.clear();
            pending.clear();
            let mut failed = false;
            for a in appends {
                let need = a.bytes() as u64;
                let Append {
                    payloads,
                    durable,
                    reply,
                    on_durable,
                } = a;
                if failed {
                    let _ = reply.send(Err(Error::Poisoned));
                    continue;
                }
                if let Err(e) = self.make_room(&mut buf, need) {
                    if matches!(e, Error::Full { .. }) {
                        self.shared
                            .counters
                            .rejected_full
                            .fetch_add(1, Ordering::Relaxed);
                        let _ = reply.send(Err(e));
                        continue;
                    }
                    tracing::error!(error = %e, "wal write failed; poisoning");
                    self.shared.poisoned.store(true, Ordering::Release);
                    failed = true;
                    let _ = reply.send(Err(Error::Poisoned));
                    continue;
                }
                let first = self.active.end_seq;
                for p in &payloads {
                    encode_record(&mut buf, self.active.end_seq, p);
                    self.active.end_seq += 1;
                    self.active.bytes += (p.len() + RECORD_HEADER_LEN) as u64;
                    self.shared
                        .counters
                        .appended_bytes
                        .fetch_add(p.len() as u64, Ordering::Relaxed);
                }
                self.shared
                    .counters
                    .appended_records
                    .fetch_add(payloads.len() as u64, Ordering::Relaxed);
                pending.push(Pending {
                    first,
                    durable,
                    reply,
                    on_durable,
                });
            }
            if failed {
                for p in pending.drain(..) {
                    let _ = p.reply.send(Err(Error::Poisoned));
                }
                continue;
            }
            if let Err(e) = self.flush(&mut buf, &mut pending) {
                tracing::error!(error = %e, "wal fsync failed; poisoning, no further acks");
                self.shared.poisoned.store(true, Ordering::Release);
                for p in pending.drain(..) {
                    let _ = p.reply.send(Err(Error::Poisoned));
                }
            }
        }
        // Channel closed: every request was answered; the last group is synced. A spare
        // being filled is finished, so no thread writes in the directory after close.
        if let Some(h) = self.spare.take() {
            let _ = h.join();
        }
    }

    /// Starts filling a spare segment with zeros, when preallocating and none is underway.
    fn start_spare(&mut self) {
        if !self.shared.config.preallocate || self.spare.is_some() || self.spare_failed {
            return;
        }
        let path = self.shared.dir.join("segments").join(SPARE_NAME);
        let bytes = self.shared.config.segment_bytes;
        match std::thread::Builder::new()
            .name("wal-spare".into())
            .spawn(move || prepare_spare(path, bytes))
        {
            Ok(h) => self.spare = Some(h),
            Err(e) => tracing::warn!(error = %e, "wal: no thread to prepare a spare segment"),
        }
    }

    /// The spare segment if it is ready. One still being filled is left to finish (the
    /// caller creates a segment that grows as it is written instead of waiting).
    fn take_spare(&mut self) -> Option<PathBuf> {
        if !self.spare.as_ref().is_some_and(|h| h.is_finished()) {
            return None;
        }
        match self.spare.take()?.join() {
            Ok(Ok(path)) => Some(path),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "wal: spare segment not prepared; segments grow as written from now on");
                self.spare_failed = true;
                None
            }
            Err(_) => {
                self.spare_failed = true;
                None
            }
        }
    }

    /// Writes the buffer, answers unconfirmed appends, fsyncs, answers durable ones.
    fn flush(&mut self, buf: &mut Vec<u8>, pending: &mut Vec<Pending>) -> Result<()> {
        if buf.is_empty() && pending.is_empty() {
            return Ok(());
        }
        let path = self.active.path.clone();
        self.write_buf(buf).map_err(io_err(&path))?;
        // Unconfirmed appends are answered once written; the rest after the fsync.
        for p in pending.iter_mut().filter(|p| !p.durable) {
            let (tx, _) = oneshot::channel();
            let _ = std::mem::replace(&mut p.reply, tx).send(Ok(p.first));
        }
        self.file.sync_data().map_err(io_err(&path))?;
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.publish_active();
        self.shared.durable.send_replace(self.active.end_seq);
        // Every callback first, then the replies back to back: the group's waiters wake
        // together (they must still find the callbacks' bookkeeping done).
        for p in pending.iter_mut() {
            if let Some(f) = p.on_durable.take() {
                f(p.first);
            }
        }
        for p in pending.drain(..) {
            if p.durable {
                let _ = p.reply.send(Ok(p.first));
            }
        }
        Ok(())
    }

    /// Writes `buf`, which holds the active segment's last records (already counted in its
    /// `bytes`), at their place in the file, and clears it. Records are written in place, not
    /// appended, so they overwrite a preallocated segment's zeros.
    fn write_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file
            .write_all_at(buf, self.active.bytes - buf.len() as u64)?;
        buf.clear();
        Ok(())
    }

    fn publish_active(&self) {
        let mut st = self.shared.lock();
        if let Some(last) = st.segments.last_mut()
            && last.first_seq == self.active.first_seq
        {
            last.end_seq = self.active.end_seq;
            last.bytes = self.active.bytes;
        }
    }

    /// Ensures `need` more bytes fit in the active segment and the budget, rolling segments and
    /// applying the full policy. Bytes already buffered are flushed before rolling.
    fn make_room(&mut self, buf: &mut Vec<u8>, need: u64) -> Result<()> {
        let shared = self.shared.clone();
        let cfg = &shared.config;
        // Roll when the active segment would overflow, unless it is empty (a big record gets a
        // segment of its own).
        if self.active.bytes + need > cfg.segment_bytes
            && self.active.end_seq > self.active.first_seq
        {
            self.roll(buf)?;
        }
        let used: u64 = {
            let st = self.shared.lock();
            st.segments
                .iter()
                .filter(|s| s.first_seq != self.active.first_seq)
                .map(|s| s.bytes)
                .sum::<u64>()
                + self.active.bytes
        };
        if used + need <= cfg.max_bytes {
            return Ok(());
        }
        match cfg.full_policy {
            FullPolicy::Reject => Err(Error::Full {
                used,
                budget: cfg.max_bytes,
                needed: need,
            }),
            FullPolicy::DropOldest => {
                let mut used = used;
                while used + need > cfg.max_bytes {
                    let victim = {
                        let mut st = self.shared.lock();
                        if st.segments.len() > 1 {
                            let v = st.segments.remove(0);
                            let gap = Gap {
                                from: v.first_seq,
                                to: v.end_seq,
                            };
                            st.gaps.push(gap);
                            let new_first = st.segments[0].first_seq;
                            for pos in st.consumers.values_mut() {
                                if *pos < new_first {
                                    *pos = new_first;
                                }
                            }
                            Some(v)
                        } else {
                            None
                        }
                    };
                    let Some(v) = victim else {
                        return Err(Error::Full {
                            used,
                            budget: cfg.max_bytes,
                            needed: need,
                        });
                    };
                    tracing::warn!(
                        from = v.first_seq,
                        to = v.end_seq,
                        "wal budget full: dropping oldest segment"
                    );
                    self.shared
                        .counters
                        .dropped_records
                        .fetch_add(v.end_seq - v.first_seq, Ordering::Relaxed);
                    fs::remove_file(&v.path).map_err(io_err(&v.path))?;
                    used = used.saturating_sub(v.bytes);
                }
                Ok(())
            }
        }
    }

    /// Seals the active segment (writing and syncing what is buffered) and opens the next.
    fn roll(&mut self, buf: &mut Vec<u8>) -> Result<()> {
        let path = self.active.path.clone();
        self.write_buf(buf).map_err(io_err(&path))?;
        self.file.sync_data().map_err(io_err(&path))?;
        self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.publish_active();
        let dir = self.shared.dir.clone();
        let first = self.active.end_seq;
        let (file, seg) = match self.take_spare() {
            Some(spare) => install_spare(&dir, &spare, first)?,
            None => create_segment(&dir, first)?,
        };
        self.file = file;
        self.active = seg.clone();
        self.shared.lock().segments.push(seg);
        self.start_spare();
        Ok(())
    }
}

/// A sequential reader over durable records.
#[derive(Debug)]
pub struct Reader {
    wal: Wal,
    next: u64,
    current: Option<OpenSegment>,
}

impl Reader {
    /// Sequence of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next
    }

    /// The next durable record, or `None` when the reader is at the durable end.
    pub fn next_record(&mut self) -> Result<Option<(u64, Vec<u8>)>> {
        let mut scratch = Vec::new();
        self.next_with(&mut scratch, |seq, payload| (seq, payload.to_vec()))
    }

    /// Hands the next durable record to `f` as `(seq, payload)` without copying it out of the
    /// read buffer (`scratch` holds the rare record that straddles a buffer refill; reuse it).
    /// `None` when the reader is at the durable end.
    pub fn next_with<R>(
        &mut self,
        scratch: &mut Vec<u8>,
        f: impl FnOnce(u64, &[u8]) -> R,
    ) -> Result<Option<R>> {
        if self.next >= self.wal.durable_end() {
            return Ok(None);
        }
        loop {
            if self.current.is_none() {
                let seg = {
                    let st = self.wal.shared.lock();
                    let oldest = st.segments.first().map_or(0, |s| s.first_seq);
                    if self.next < oldest {
                        return Err(Error::Truncated {
                            requested: self.next,
                            oldest,
                        });
                    }
                    st.segments
                        .iter()
                        .find(|s| {
                            s.first_seq <= self.next && self.next < s.end_seq.max(s.first_seq + 1)
                        })
                        .cloned()
                };
                let Some(seg) = seg else { return Ok(None) };
                let file = File::open(&seg.path).map_err(io_err(&seg.path))?;
                let mut r = BufReader::with_capacity(
                    256 * 1024,
                    Bounded {
                        file,
                        pos: 0,
                        limit: seg.bytes,
                    },
                );
                r.seek(SeekFrom::Start(SEGMENT_HEADER_LEN as u64))
                    .map_err(io_err(&seg.path))?;
                let mut seq = seg.first_seq;
                // Skip to `next`.
                let max = self.wal.shared.config.max_record_bytes;
                while seq < self.next {
                    match read_frame(&mut r, max, seq, scratch, |_, _| ())
                        .map_err(io_err(&seg.path))?
                    {
                        Frame::Record(()) => seq += 1,
                        Frame::End => return Ok(None),
                        Frame::Bad(reason) => {
                            return Err(Error::Corrupt {
                                path: seg.path.clone(),
                                offset: 0,
                                reason,
                            });
                        }
                    }
                }
                self.current = Some((seg.first_seq, r, seg.path));
            }
            // At the end of what this segment held when last looked at: read on if it holds
            // more records now, move on if a later segment starts here, otherwise stay on the
            // active segment for the next call.
            let Some((first, r, path)) = self.current.as_mut() else {
                return Ok(None);
            };
            if r.fill_buf().map_err(io_err(path))?.is_empty() {
                let (grown, more) = {
                    let st = self.wal.shared.lock();
                    let grown = st
                        .segments
                        .iter()
                        .find(|s| s.first_seq == *first)
                        .map(|s| s.bytes)
                        .filter(|b| *b > r.get_ref().limit);
                    (grown, st.segments.iter().any(|s| s.first_seq == self.next))
                };
                if let Some(bytes) = grown {
                    r.get_mut().limit = bytes;
                    continue;
                }
                if !more {
                    return Ok(None);
                }
                self.current = None;
                continue;
            }
            let max = self.wal.shared.config.max_record_bytes;
            return match read_frame(r, max, self.next, scratch, f).map_err(io_err(path))? {
                Frame::Record(out) => {
                    self.next += 1;
                    Ok(Some(out))
                }
                // Not reached: the buffer was just seen non-empty.
                Frame::End => Ok(None),
                // Could be a record still being written past the durable end; the durable
                // check above rules that out, so this is corruption.
                Frame::Bad(reason) => Err(Error::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason,
                }),
            };
        }
    }
}

/// A named consumer with a durable checkpoint.
#[derive(Debug)]
pub struct Consumer {
    wal: Wal,
    name: String,
    position: u64,
}

impl Consumer {
    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The checkpointed position: the next sequence this consumer has not processed.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// A reader starting at the checkpoint.
    pub fn reader(&self) -> Result<Reader> {
        self.wal.reader(self.position)
    }

    /// Durably records that every record below `next_seq` is processed. When this returns, a
    /// restart resumes at `next_seq`; segments every consumer has passed are deleted.
    pub fn commit(&mut self, next_seq: u64) -> Result<()> {
        let end = self.wal.durable_end();
        let next_seq = next_seq.min(end);
        write_checkpoint(&self.wal.shared.dir, &self.name, next_seq)?;
        self.position = next_seq;
        self.wal
            .shared
            .lock()
            .consumers
            .insert(self.name.clone(), next_seq);
        self.wal.apply_retention()
    }
}
