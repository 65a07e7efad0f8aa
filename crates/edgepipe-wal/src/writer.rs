//! Appending: the append requests and their admission, and the writer thread that owns the
//! active segment, group-commits appends under one fdatasync, rolls segments and applies the
//! disk budget.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use crate::Wal;
use crate::config::FullPolicy;
use crate::error::{Error, Result, io_err};
use crate::format::{
    RECORD_HEADER_LEN, SPARE_NAME, Segment, create_segment, encode_record, fsync_dir,
    segment_header, segment_path, write_zeros,
};
use crate::state::{Gap, Shared};

/// Runs on the writer thread once an append is durable, with the append's first sequence.
pub type OnDurable = Box<dyn FnOnce(u64) + Send + 'static>;

/// One append: its records, whether its reply waits for the fsync, the reply and the callback.
pub(crate) struct Append {
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
pub(crate) enum Request {
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

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append")
            .field("records", &self.payloads.len())
            .field("durable", &self.durable)
            .finish()
    }
}

impl Wal {
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

pub(crate) struct Writer {
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
    /// A writer for the active segment `active`, open as `file`, with no spare underway.
    pub(crate) fn new(shared: Arc<Shared>, file: File, active: Segment) -> Self {
        Writer {
            shared,
            file,
            active,
            spare: None,
            spare_failed: false,
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
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
    pub(crate) fn start_spare(&mut self) {
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
