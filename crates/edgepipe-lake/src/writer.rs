//! The lake writer: a WAL consumer that buffers rows (visible to SQL at once through the
//! [`FreshBuffer`]) and flushes them as Parquet into event-time partitions.
//!
//! Guarantees:
//! - When [`FreshBuffer::snapshot`] returns, its `committed` position and its batches are
//!   consistent: every WAL record below `committed` is in a stored lake file, every record from
//!   `committed` up to what the writer has read is in the batches, and no record is in both
//!   unless a reader ignores lake rows with `wal_seq >= committed` (the query engine does).
//! - The WAL checkpoint moves past a record only after the files holding its rows are stored.
//! - A crash at any point leaves either the old checkpoint (the range is rewritten under the same
//!   file names after the intent marker's files are deleted) or the new one.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, PrimitiveArray, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::buffer::BooleanBuffer;
use arrow::compute::interleave;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Float64Type, Int64Type, SchemaRef, TimeUnit,
    TimestampMicrosecondType,
};
use bytes::Bytes;
use edgepipe_types::IngestRecordView;
use edgepipe_wal::{Consumer, Wal};
use tokio::sync::watch;

use crate::config::LakeConfig;
use crate::parquet_io::{Column, encode_flush_files};
use crate::schema::{COL_TS, HOUR_US, RowsBuilder, readings_schema};
use crate::store::LakeStore;
use crate::{Error, Result, tables};

/// Name of the lake writer's WAL consumer.
pub const CONSUMER: &str = "lake";
const READ_BATCH: usize = 4096;
/// Durable records still unread after a read that make the writer "behind" the WAL (a
/// backlog, not the few reads' worth that arrive between two reads under load).
const BEHIND_RECORDS: u64 = 8 * READ_BATCH as u64;

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

/// A consistent view of what the lake files do not hold yet.
#[derive(Debug, Clone)]
pub struct FreshSnapshot {
    /// Every WAL record below this is in lake files; lake rows with `wal_seq >= committed` are
    /// from a flush still in progress and must be ignored (their rows are in `batches`).
    pub committed: u64,
    /// Rows read from the WAL but not yet committed to the lake, in the `readings` schema.
    pub batches: Vec<RecordBatch>,
}

#[derive(Debug, Default)]
struct FreshState {
    committed: u64,
    batches: Vec<RecordBatch>,
    rows: usize,
}

/// Shared handle on the rows the writer holds in memory.
#[derive(Debug, Clone, Default)]
pub struct FreshBuffer {
    inner: Arc<Mutex<FreshState>>,
}

impl FreshBuffer {
    /// The current consistent snapshot (cheap: batches are reference-counted).
    pub fn snapshot(&self) -> FreshSnapshot {
        let s = self.lock();
        FreshSnapshot {
            committed: s.committed,
            batches: s.batches.clone(),
        }
    }

    /// Rows buffered.
    pub fn rows(&self) -> usize {
        self.lock().rows
    }

    /// The committed WAL position.
    pub fn committed(&self) -> u64 {
        self.lock().committed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FreshState> {
        // A poisoned lock only means a panic elsewhere while holding it; the state is a plain
        // list of batches and a number, always valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The WAL → Parquet writer.
#[derive(Debug)]
pub struct LakeWriter {
    store: LakeStore,
    wal: Arc<Wal>,
    /// The WAL consumer; inside the flush in flight while there is one.
    consumer: Option<Consumer>,
    config: LakeConfig,
    fresh: FreshBuffer,
    builder: RowsBuilder,
    next_seq: u64,
    metrics: Arc<LakeMetrics>,
    /// The flush being encoded and stored while the writer reads on (at most one).
    in_flight: Option<InFlight>,
    /// Rows read since the last flush started.
    rows_since_flush: usize,
    /// Whether the last read stopped with at least `BEHIND_RECORDS` durable records still
    /// unread (a backlog: after an outage or a restart, or ingest faster than the writer).
    behind: bool,
}

/// A flush under way: it owns the consumer and hands it back when its range is checkpointed.
/// Dropping it (the writer dropped) abandons the flush before or while it stores: the intent
/// marker makes the next writer undo any files it stored.
struct InFlight(Pin<Box<dyn Future<Output = Result<Consumer>> + Send>>);

impl std::fmt::Debug for InFlight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InFlight")
    }
}

impl LakeWriter {
    /// Opens the writer: undoes crashed flushes and positions at the WAL checkpoint.
    pub async fn open(
        store: LakeStore,
        wal: Arc<Wal>,
        config: LakeConfig,
        metrics: Arc<LakeMetrics>,
    ) -> Result<Self> {
        Self::open_with(store, wal, config, metrics, FreshBuffer::default()).await
    }

    /// Like [`open`](Self::open), reusing a fresh buffer that queries already hold (after a
    /// writer restart the buffer is reset to the checkpoint).
    pub async fn open_with(
        store: LakeStore,
        wal: Arc<Wal>,
        config: LakeConfig,
        metrics: Arc<LakeMetrics>,
        fresh: FreshBuffer,
    ) -> Result<Self> {
        let consumer = wal.consumer(CONSUMER)?;
        let position = consumer.position();
        let undone = crate::sink::recover(&store, tables::READINGS, position).await?;
        metrics
            .flushes_recovered
            .fetch_add(undone as u64, Ordering::Relaxed);
        crate::compact::recover_compactions(&store).await?;
        let wal_end = wal.durable_end();
        if let Some(lake_last) = crate::compact::max_wal_seq(&store).await?
            && lake_last >= wal_end
        {
            return Err(Error::ForeignWal { lake_last, wal_end });
        }
        {
            let mut s = fresh.lock();
            s.committed = position;
            s.batches.clear();
            s.rows = 0;
        }
        let late_after_us = i64::try_from(config.late_after.as_micros()).unwrap_or(i64::MAX);
        Ok(Self {
            store,
            wal,
            consumer: Some(consumer),
            fresh,
            builder: RowsBuilder::new(late_after_us),
            next_seq: position,
            config,
            metrics,
            in_flight: None,
            rows_since_flush: 0,
            behind: false,
        })
    }

    /// The handle queries use to see rows not yet in lake files.
    pub fn fresh(&self) -> FreshBuffer {
        self.fresh.clone()
    }

    /// Runs until `stop` turns true, then flushes what is buffered and returns.
    ///
    /// Flushes are pipelined: while one is sorted, encoded and stored, the writer reads on
    /// into the fresh buffer (which then holds up to twice `flush_max_rows`); the next flush
    /// starts only after the previous one is checkpointed, so checkpoints move in WAL order.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut last_flush = Instant::now();
        let mut last_read = Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            self.poll_flush().await?;
            let progressed = self.read_available()?;
            if progressed {
                last_read = Instant::now();
            }
            let due = last_flush.elapsed() >= self.config.flush_interval;
            if self.flush_due(due) {
                self.finish_flush().await?;
                self.start_flush()?;
                last_flush = Instant::now();
                continue;
            }
            if progressed {
                continue;
            }
            let wait = self
                .config
                .flush_interval
                .saturating_sub(last_flush.elapsed())
                .max(Duration::from_millis(1));
            let wal = self.wal.clone();
            let after = self.next_seq;
            let flushing = async {
                match self.in_flight.as_mut() {
                    Some(f) => f.0.as_mut().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = wal.wait_beyond_no_sooner(after, last_read + self.config.read_interval) => {
                    if let Err(edgepipe_wal::Error::Closed) = r {
                        break;
                    }
                }
                done = flushing => {
                    self.in_flight = None;
                    self.consumer = Some(done?);
                }
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        self.finish_flush().await?;
        self.read_available()?;
        self.flush().await
    }

    /// Reads and flushes until everything durable in the WAL when called is in the lake,
    /// pipelined as in [`run`](Self::run) (at most `flush_max_rows` per flush).
    pub async fn catch_up(&mut self) -> Result<()> {
        loop {
            self.poll_flush().await?;
            let more = self.read_available()?;
            if !more {
                self.finish_flush().await?;
                self.start_flush()?;
                return self.finish_flush().await;
            }
            if self.flush_due(false) {
                self.finish_flush().await?;
                self.start_flush()?;
            }
        }
    }

    /// Rows a writer that is behind the WAL buffers before it starts a flush while none is in
    /// flight (an eighth of `flush_max_rows`).
    fn early_flush_rows(&self) -> usize {
        (self.config.flush_max_rows / 8).max(1)
    }

    /// Whether to start a flush now: the flush interval is up (`timer_due`), the buffer is
    /// full, or the writer is behind the WAL with no flush in flight and an eighth of a full
    /// buffer read. The last keeps a backlog's sort and encode running beside the reading from
    /// the start, instead of leaving the encoder idle while the first full buffer is read;
    /// flushes then grow or shrink with how fast each side goes, up to `flush_max_rows`. A
    /// writer that keeps up with ingest is never behind and flushes by time and size only.
    fn flush_due(&self, timer_due: bool) -> bool {
        timer_due
            || self.rows_since_flush >= self.config.flush_max_rows
            || (self.behind
                && self.in_flight.is_none()
                && self.rows_since_flush >= self.early_flush_rows())
    }

    /// Reads durable records not yet read into the fresh buffer, until the WAL has no more or
    /// the buffer holds `flush_max_rows` (then it is the caller's turn to flush). Behind the
    /// WAL it also returns early, so the caller can start or collect a flush: after one chunk
    /// while a flush is in flight, and once an eighth of a full buffer is read while none is.
    /// Returns whether anything was read.
    pub fn read_available(&mut self) -> Result<bool> {
        let started = Instant::now();
        let r = self.read_available_inner();
        self.metrics
            .read_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    fn read_available_inner(&mut self) -> Result<bool> {
        let mut any = false;
        self.behind = false;
        loop {
            let (builder, metrics, next_seq) =
                (&mut self.builder, &self.metrics, &mut self.next_seq);
            let read = self.wal.read_each(*next_seq, READ_BATCH, |seq, payload| {
                match IngestRecordView::decode(payload) {
                    Ok(rec) => builder.push_view(seq, &rec),
                    Err(e) => {
                        tracing::error!(seq, error = %e, "lake: wal record does not decode; not written to the lake");
                        metrics.records_undecodable.fetch_add(1, Ordering::Relaxed);
                    }
                }
                *next_seq = seq + 1;
            });
            let n = match read {
                Ok(n) => n,
                Err(edgepipe_wal::Error::Truncated { requested, oldest }) => {
                    // The WAL's disk budget (drop_oldest) deleted records before we read them.
                    // The WAL records the gap; we count it and move on (rows read before the
                    // deleted range stay in the builder).
                    tracing::error!(
                        from = requested,
                        to = oldest,
                        "lake: wal records deleted by the disk budget before they reached the lake"
                    );
                    self.metrics
                        .records_lost_to_wal_budget
                        .fetch_add(oldest.saturating_sub(requested), Ordering::Relaxed);
                    self.next_seq = oldest;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            if n == 0 && self.builder.is_empty() {
                break;
            }
            any = true;
            let batch = self.builder.finish()?;
            let rows = batch.num_rows();
            {
                let mut s = self.fresh.lock();
                s.rows += rows;
                if rows > 0 {
                    s.batches.push(batch);
                }
            }
            // A full buffer goes to the lake before more is read: under a sustained ingest
            // faster than one read pass, reading "until the WAL is drained" never ends and
            // the buffer (and the flush that sorts it) grows without bound.
            self.rows_since_flush += rows;
            if n < READ_BATCH {
                break;
            }
            let waiting = self.wal.durable_end().saturating_sub(self.next_seq);
            self.behind = waiting >= BEHIND_RECORDS;
            if self.rows_since_flush >= self.config.flush_max_rows {
                break;
            }
            // Behind the WAL, the caller decides whether to start or collect a flush first.
            if self.behind
                && (self.in_flight.is_some() || self.rows_since_flush >= self.early_flush_rows())
            {
                break;
            }
        }
        Ok(any)
    }

    /// Writes every buffered row to the lake and moves the WAL checkpoint past them (after
    /// the flush in flight, if any).
    pub async fn flush(&mut self) -> Result<()> {
        self.finish_flush().await?;
        self.start_flush()?;
        self.finish_flush().await
    }

    /// Waits for the flush in flight, if any, and takes its consumer back.
    async fn finish_flush(&mut self) -> Result<()> {
        if let Some(f) = self.in_flight.take() {
            self.consumer = Some(f.0.await?);
        }
        Ok(())
    }

    /// Lets the flush in flight make progress (its store step runs only when polled) and
    /// takes its consumer back if it is done.
    async fn poll_flush(&mut self) -> Result<()> {
        let Some(f) = self.in_flight.as_mut() else {
            return Ok(());
        };
        let done = tokio::select! {
            biased;
            r = f.0.as_mut() => Some(r),
            _ = std::future::ready(()) => None,
        };
        if let Some(r) = done {
            self.in_flight = None;
            self.consumer = Some(r?);
        }
        Ok(())
    }

    /// Starts flushing every row read so far. Requires no flush in flight.
    fn start_flush(&mut self) -> Result<()> {
        let Some(mut consumer) = self.consumer.take() else {
            return Err(Error::Config(
                "lake writer: a flush started while another was in flight".into(),
            ));
        };
        self.rows_since_flush = 0;
        let snap = self.fresh.snapshot();
        let first = snap.committed;
        if self.next_seq == first {
            self.consumer = Some(consumer);
            return Ok(());
        }
        let last = self.next_seq - 1;
        let flushed_batches = snap.batches.len();
        let rows: usize = snap.batches.iter().map(|b| b.num_rows()).sum();
        if rows == 0 {
            // Records without readings (none today, but a future record kind) still advance.
            consumer.commit(last + 1)?;
            self.consumer = Some(consumer);
            commit_fresh(&self.fresh, last + 1, flushed_batches);
            self.metrics.flushes.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let row_group_rows = self.config.row_group_rows;
        let store = self.store.clone();
        let fresh = self.fresh.clone();
        let metrics = self.metrics.clone();
        let batches = snap.batches;
        self.in_flight = Some(InFlight(Box::pin(async move {
            let encode_started = Instant::now();
            let files = tokio::task::spawn_blocking(move || {
                partition_and_encode(&batches, first, last, row_group_rows)
            })
            .await
            .map_err(|e| Error::Config(format!("encode task failed: {e}")))??;
            let bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
            let store_started = Instant::now();
            metrics.encode_ns.fetch_add(
                (store_started - encode_started).as_nanos() as u64,
                Ordering::Relaxed,
            );
            crate::sink::store_flush(&store, tables::READINGS, first, last, &files, || {
                consumer.commit(last + 1).map_err(Error::from)
            })
            .await?;
            metrics
                .store_ns
                .fetch_add(store_started.elapsed().as_nanos() as u64, Ordering::Relaxed);
            commit_fresh(&fresh, last + 1, flushed_batches);
            metrics
                .rows_written
                .fetch_add(rows as u64, Ordering::Relaxed);
            metrics
                .files_written
                .fetch_add(files.len() as u64, Ordering::Relaxed);
            metrics.bytes_written.fetch_add(bytes, Ordering::Relaxed);
            metrics.flushes.fetch_add(1, Ordering::Relaxed);
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            metrics.last_flush_unix_ms.store(now_ms, Ordering::Relaxed);
            tracing::debug!(first, last, rows, files = files.len(), "lake: flushed");
            Ok(consumer)
        })));
        Ok(())
    }
}

/// Marks the WAL range below `committed` as in the lake and drops the batches that held it.
fn commit_fresh(fresh: &FreshBuffer, committed: u64, flushed_batches: usize) {
    let mut s = fresh.lock();
    s.committed = committed;
    let n = flushed_batches.min(s.batches.len());
    let removed: usize = s.batches.drain(..n).map(|b| b.num_rows()).sum();
    s.rows = s.rows.saturating_sub(removed);
}

/// Sorts rows by (hour, device, metric, ts, wal_seq) and encodes one file per hour partition.
fn partition_and_encode(
    batches: &[RecordBatch],
    first: u64,
    last: u64,
    row_group_rows: usize,
) -> Result<Vec<(String, Bytes)>> {
    let schema = readings_schema();
    if batches.is_empty() {
        return Ok(Vec::new());
    }
    let sorted = sort_runs(batches)?;
    let ts = match sorted.columns.get(COL_TS) {
        Some(Column::Arrays(a)) if a.len() == 1 => a[0].clone(),
        _ => return Err(Error::Config("sorted ts column is not one array".into())),
    };
    let ts = ts
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Config("ts column is not timestamp(us)".into()))?;
    let mut keys = Vec::new();
    let mut parts = Vec::new();
    let mut start = 0usize;
    while start < sorted.rows {
        let hour = ts.value(start).div_euclid(HOUR_US);
        let mut end = start + 1;
        while end < sorted.rows && ts.value(end).div_euclid(HOUR_US) == hour {
            end += 1;
        }
        let columns = sorted
            .columns
            .iter()
            .map(|c| c.slice(start, end - start))
            .collect();
        parts.push((end - start, columns));
        keys.push(crate::sink::part_key(tables::READINGS, hour, first, last));
        start = end;
    }
    // Every partition's columns are encoded together, on the machine's cores.
    let files = encode_flush_files(&schema, &parts, row_group_rows)?;
    Ok(keys.into_iter().zip(files).collect())
}

/// Interns strings to dense ids, remembering where the last one was found: ids of a WAL batch
/// come in runs (a record's device) and cycles (its metrics), so the next lookup is usually a
/// hit on the same or the following id, without hashing.
struct Interner<'a> {
    ids: std::collections::HashMap<&'a str, u32>,
    distinct: Vec<&'a str>,
    last: usize,
}

impl<'a> Interner<'a> {
    fn new() -> Self {
        Self {
            ids: std::collections::HashMap::new(),
            distinct: Vec::new(),
            last: 0,
        }
    }

    fn id(&mut self, v: &'a str) -> u32 {
        for probe in [self.last, self.last + 1, 0] {
            if self.distinct.get(probe) == Some(&v) {
                self.last = probe;
                return probe as u32;
            }
        }
        let next = self.distinct.len() as u32;
        let id = *self.ids.entry(v).or_insert(next);
        if id == next {
            self.distinct.push(v);
        }
        self.last = id as usize;
        id
    }

    /// Each id's rank among the distinct values in byte order.
    fn ranks(&self) -> Vec<u32> {
        let mut order: Vec<u32> = (0..self.distinct.len() as u32).collect();
        order.sort_unstable_by(|a, b| self.distinct[*a as usize].cmp(self.distinct[*b as usize]));
        let mut rank = vec![0u32; self.distinct.len()];
        for (r, id) in order.iter().enumerate() {
            rank[*id as usize] = r as u32;
        }
        rank
    }
}

/// Sorts `readings` rows (of any number of batches of one schema) into one batch ordered by
/// hour bucket, device_id, metric, ts, wal_seq; rows equal on all five keep their input order.
///
/// Sorting compares nothing per row in the usual case: device and metric are interned to ranks,
/// rows are placed by a counting sort on (hour, device, metric) and each series' run is only
/// sorted on (ts, wal_seq) when it is not already in order (WAL order is nearly time order).
/// The output is gathered from the input batches in one pass (no concatenation first).
pub(crate) fn sort_readings(batches: &[RecordBatch]) -> Result<RecordBatch> {
    if batches.is_empty() {
        return Ok(RecordBatch::new_empty(readings_schema()));
    }
    sort_runs(batches)?.into_batch()
}

/// Readings sorted by [`sort_runs`]: each column Arrow arrays, or, for the string columns that
/// come in runs (`device_id`, `metric`; any string column holding one value), the runs, so the
/// flush writes them without per-row work (see [`crate::runs`]).
pub(crate) struct Sorted<'a> {
    schema: SchemaRef,
    rows: usize,
    columns: Vec<Column<'a>>,
}

impl Sorted<'_> {
    /// The sorted rows as one batch.
    pub(crate) fn into_batch(self) -> Result<RecordBatch> {
        let columns = self
            .columns
            .iter()
            .map(Column::to_array)
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema, columns)?)
    }
}

/// [`sort_readings`], keeping the columns that come in runs as runs.
pub(crate) fn sort_runs<'a>(batches: &'a [RecordBatch]) -> Result<Sorted<'a>> {
    let Some(first) = batches.first() else {
        return Err(Error::Config("no batches to sort".into()));
    };
    let schema = first.schema();
    struct Cols<'a> {
        ts: &'a TimestampMicrosecondArray,
        seq: &'a Int64Array,
        dev: &'a StringArray,
        met: &'a StringArray,
    }
    let cols = batches
        .iter()
        .map(|batch| {
            let strings = |name: &str| -> Result<&StringArray> {
                batch
                    .column_by_name(name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(|| Error::Config(format!("column {name} is missing or not utf8")))
            };
            Ok(Cols {
                ts: batch
                    .column(COL_TS)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .ok_or_else(|| Error::Config("ts column is not timestamp(us)".into()))?,
                seq: batch
                    .column_by_name("wal_seq")
                    .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                    .ok_or_else(|| {
                        Error::Config("column wal_seq is missing or not int64".into())
                    })?,
                dev: strings("device_id")?,
                met: strings("metric")?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    if n > u32::MAX as usize {
        return Err(Error::Config(format!(
            "{n} rows are too many to sort at once"
        )));
    }
    // Pass 1: interned ids and the hour range.
    let mut devs = Interner::new();
    let mut mets = Interner::new();
    let mut ids: Vec<(u32, u32)> = Vec::with_capacity(n);
    let (mut hmin, mut hmax) = (i64::MAX, i64::MIN);
    for c in &cols {
        for i in 0..c.ts.len() {
            let dev = if c.dev.is_null(i) { "" } else { c.dev.value(i) };
            let met = if c.met.is_null(i) { "" } else { c.met.value(i) };
            ids.push((devs.id(dev), mets.id(met)));
            let h = c.ts.value(i).div_euclid(HOUR_US);
            hmin = hmin.min(h);
            hmax = hmax.max(h);
        }
    }
    let (dev_rank, met_rank) = (devs.ranks(), mets.ranks());
    let (nd, nm) = (dev_rank.len() as u64, met_rank.len() as u64);
    let hours = if n == 0 { 0 } else { hmax.abs_diff(hmin) + 1 };
    let groups = hours.saturating_mul(nd).saturating_mul(nm);
    let inverse = |rank: &[u32]| {
        let mut by_rank = vec![0usize; rank.len()];
        for (id, r) in rank.iter().enumerate() {
            by_rank[*r as usize] = id;
        }
        by_rank
    };
    let (dev_by_rank, met_by_rank) = (inverse(&dev_rank), inverse(&met_rank));
    // (batch, row) of every input row, in output order, and the output's runs of one series:
    // (device id, metric id, rows).
    let mut order: Vec<(usize, usize)> = Vec::with_capacity(n);
    let mut series_runs: Vec<(usize, usize, usize)> = Vec::new();
    if groups <= (2 * n as u64).max(1 << 16) && groups < u64::from(u32::MAX) {
        // Counting sort on the (hour, device, metric) group: stable, so each group's rows keep
        // WAL order.
        let mut keys: Vec<u32> = Vec::with_capacity(n);
        let mut counts = vec![0u32; groups as usize + 1];
        let mut k = 0usize;
        for c in &cols {
            for i in 0..c.ts.len() {
                let (d, m) = ids[k];
                k += 1;
                let h = (c.ts.value(i).div_euclid(HOUR_US) - hmin) as u64;
                let g = (h * nd + dev_rank[d as usize] as u64) * nm + met_rank[m as usize] as u64;
                keys.push(g as u32);
                counts[g as usize + 1] += 1;
            }
        }
        for g in 1..counts.len() {
            counts[g] += counts[g - 1];
        }
        let starts = counts.clone();
        order.resize(n, (0, 0));
        // Placing rows in input order, a group whose (ts, wal_seq) ever goes down is noted as
        // needing a sort.
        let mut last_key = vec![(i64::MIN, i64::MIN); groups as usize];
        let mut unsorted = vec![false; groups as usize];
        let mut k = 0usize;
        for (b, c) in cols.iter().enumerate() {
            let (ts, seq) = (c.ts.values(), c.seq.values());
            for i in 0..c.ts.len() {
                let g = keys[k] as usize;
                let slot = &mut counts[g];
                order[*slot as usize] = (b, i);
                *slot += 1;
                k += 1;
                let key = (ts[i], seq[i]);
                if key < last_key[g] {
                    unsorted[g] = true;
                }
                last_key[g] = key;
            }
        }
        // Each group's run in (ts, wal_seq) order: a stable sort where it is not already.
        let key = |&(b, i): &(usize, usize)| (cols[b].ts.value(i), cols[b].seq.value(i));
        for g in 0..groups as usize {
            let len = (starts[g + 1] - starts[g]) as usize;
            if len > 0 {
                let series = g as u64 % (nd * nm);
                let (d, m) = ((series / nm) as usize, (series % nm) as usize);
                series_runs.push((dev_by_rank[d], met_by_rank[m], len));
            }
            if unsorted[g] {
                order[starts[g] as usize..starts[g + 1] as usize].sort_by_key(key);
            }
        }
    } else {
        // Sparse groups (rows spread over many hours): a comparison sort on the same keys.
        let mut keyed: Vec<(i64, u32, u32, i64, i64, usize, usize)> = Vec::with_capacity(n);
        let mut k = 0usize;
        for (b, c) in cols.iter().enumerate() {
            for i in 0..c.ts.len() {
                let (d, m) = ids[k];
                k += 1;
                let t = c.ts.value(i);
                keyed.push((
                    t.div_euclid(HOUR_US),
                    dev_rank[d as usize],
                    met_rank[m as usize],
                    t,
                    c.seq.value(i),
                    b,
                    i,
                ));
            }
        }
        keyed.sort_unstable();
        order.extend(keyed.iter().map(|k| (k.5, k.6)));
        for k in &keyed {
            let (d, m) = (dev_by_rank[k.1 as usize], met_by_rank[k.2 as usize]);
            match series_runs.last_mut() {
                Some(last) if (last.0, last.1) == (d, m) => last.2 += 1,
                _ => series_runs.push((d, m, 1)),
            }
        }
    }
    let no_nulls = |name: &str| {
        batches
            .iter()
            .all(|b| b.column_by_name(name).is_some_and(|c| c.null_count() == 0))
    };
    let (dev_runs, met_runs) = (no_nulls("device_id"), no_nulls("metric"));
    // Columns are independent: gathered on the machine's cores.
    let fields = schema.fields().len();
    let runs_of = |distinct: &[&'a str], pick: fn(&(usize, usize, usize)) -> usize| {
        Column::Runs(
            series_runs
                .iter()
                .map(|r| (distinct[pick(r)], r.2))
                .collect(),
        )
    };
    let columns = crate::parallel::map(
        (0..fields).collect(),
        crate::parallel::threads_for(fields),
        |j| match schema.field(j).name().as_str() {
            "device_id" if dev_runs => Ok(runs_of(&devs.distinct, |r| r.0)),
            "metric" if met_runs => Ok(runs_of(&mets.distinct, |r| r.1)),
            _ => {
                let arrays: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(j).as_ref()).collect();
                gather(&arrays, &order, n)
            }
        },
    )?;
    Ok(Sorted {
        schema,
        rows: n,
        columns,
    })
}

/// The rows `order` picks from `arrays` (one per input batch), without gathering row by row
/// when the column holds a single value: all null (the value kinds a fleet does not send,
/// tags without topic mappings), one string (quality, source: kept as one run) or one boolean
/// (replayed).
fn gather<'a>(arrays: &[&'a dyn Array], order: &[(usize, usize)], n: usize) -> Result<Column<'a>> {
    let one_array = |a: ArrayRef| Column::Arrays(vec![a]);
    let Some(first) = arrays.first() else {
        return Ok(one_array(interleave(arrays, order)?));
    };
    let data_type = first.data_type();
    if arrays.iter().all(|a| a.null_count() == a.len()) {
        return Ok(one_array(new_null_array(data_type, n)));
    }
    if arrays.iter().any(|a| a.null_count() > 0) {
        return Ok(one_array(interleave(arrays, order)?));
    }
    let strings: Option<Vec<&'a StringArray>> = arrays
        .iter()
        .map(|a| a.as_any().downcast_ref::<StringArray>())
        .collect();
    if let Some(strings) = strings {
        let one = strings.iter().find(|a| !a.is_empty()).map(|a| a.value(0));
        if let Some(one) = one
            && strings.iter().all(|a| holds_only(a, one))
        {
            return Ok(Column::Runs(vec![(one, n)]));
        }
        return Ok(one_array(interleave(arrays, order)?));
    }
    let bools: Option<Vec<&BooleanArray>> = arrays
        .iter()
        .map(|a| a.as_any().downcast_ref::<BooleanArray>())
        .collect();
    if let Some(bools) = bools {
        let trues: usize = bools.iter().map(|a| a.true_count()).sum();
        if trues == 0 || trues == n {
            let values = if trues == n {
                BooleanBuffer::new_set(n)
            } else {
                BooleanBuffer::new_unset(n)
            };
            return Ok(one_array(Arc::new(BooleanArray::new(values, None))));
        }
        return Ok(one_array(interleave(arrays, order)?));
    }
    // The lake's fixed-width columns: read straight from each batch's values (no concatenated
    // copy first, no per-row dispatch on the type).
    let typed = match data_type {
        DataType::Int64 => gather_primitive::<Int64Type>(arrays, order),
        DataType::Float64 => gather_primitive::<Float64Type>(arrays, order),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            gather_primitive::<TimestampMicrosecondType>(arrays, order)
        }
        _ => None,
    };
    match typed {
        Some(a) => Ok(one_array(a)),
        None => Ok(one_array(interleave(arrays, order)?)),
    }
}

/// The rows `order` picks from null-free primitive arrays of type `T` (same data type, kept),
/// or `None` when an array is not of that type.
fn gather_primitive<T: ArrowPrimitiveType>(
    arrays: &[&dyn Array],
    order: &[(usize, usize)],
) -> Option<ArrayRef> {
    let values: Vec<&[T::Native]> = arrays
        .iter()
        .map(|a| a.as_primitive_opt::<T>().map(|p| p.values().as_ref()))
        .collect::<Option<_>>()?;
    let data_type = arrays.first()?.data_type().clone();
    let mut out: Vec<T::Native> = Vec::with_capacity(order.len());
    for &(b, i) in order {
        out.push(*values.get(b)?.get(i)?);
    }
    Some(Arc::new(
        PrimitiveArray::<T>::new(out.into(), None).with_data_type(data_type),
    ))
}

/// Whether every value of a null-free string array is `one` (compares the offsets and the
/// value bytes in bulk).
fn holds_only(a: &StringArray, one: &str) -> bool {
    let len = one.len();
    if a.value_offsets()
        .windows(2)
        .any(|w| (w[1] - w[0]) as usize != len)
    {
        return false;
    }
    let start = a.value_offsets().first().copied().unwrap_or(0) as usize;
    let bytes = &a.value_data()[start..start + len * a.len()];
    if len == 0 {
        return true;
    }
    let pattern = one.as_bytes().repeat((4096 / len).max(1));
    bytes
        .chunks(pattern.len())
        .all(|c| c == &pattern[..c.len()])
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::TimestampMicrosecondType;
    use edgepipe_types::{DeviceId, IngestRecord, Metric, Reading, Transport, TsSource, Value};

    use crate::store::LakeStore;

    use crate::test_rng::Rng;

    fn batches(rng: &mut Rng, hours_spread: i64, mixed: bool) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        let mut seq = 0u64;
        for _ in 0..1 + rng.below(4) {
            let mut b = RowsBuilder::new(i64::MAX);
            for _ in 0..rng.below(400) {
                let dev = format!("dev-{}", rng.below(7));
                let readings = (0..1 + rng.below(4))
                    .map(|_| {
                        let metric = ["b", "a", "ab", "z", "m"][rng.below(5) as usize];
                        // Mostly increasing time with duplicates, some late rows, a spread of hours.
                        let ts = 1_700_000_000_000
                            + (rng.below(hours_spread as u64 * 3600) as i64) * 1000
                            + rng.below(3) as i64;
                        let kind = if mixed { rng.below(4) } else { 0 };
                        let value = match kind {
                            0 => Value::F64(rng.below(1000) as f64),
                            1 => Value::I64(rng.below(1000) as i64),
                            2 => Value::Bool(rng.below(2) == 1),
                            _ => Value::Str(format!("s{}", rng.below(3))),
                        };
                        Ok(Reading {
                            metric: Metric::new(metric)?,
                            ts,
                            value,
                            ts_source: if mixed && rng.below(3) == 0 {
                                TsSource::Server
                            } else {
                                TsSource::Device
                            },
                        })
                    })
                    .collect::<Result<Vec<_>, edgepipe_types::Error>>();
                let (Ok(device_id), Ok(readings)) = (DeviceId::new(dev), readings) else {
                    continue;
                };
                let mixed_rec = mixed && rng.below(3) == 0;
                let rec = IngestRecord {
                    device_id,
                    received_at: 1_700_000_000_000,
                    transport: if mixed_rec {
                        Transport::Replay
                    } else {
                        Transport::Http
                    },
                    origin: None,
                    tags: if mixed_rec {
                        vec![("line".into(), "1".into())]
                    } else {
                        Vec::new()
                    },
                    readings,
                };
                // Some records repeat a sequence (compaction sorts rows of several files).
                seq += rng.below(2);
                b.push_record(seq, &rec);
            }
            if let Ok(batch) = b.finish() {
                out.push(batch);
            }
        }
        out
    }

    /// The expected order, by plain comparison of the keys (ties in input order).
    fn naive(batches: &[RecordBatch]) -> Vec<(i64, String, String, i64, i64, usize)> {
        let mut rows = Vec::new();
        for b in batches {
            let ts = b.column(COL_TS).as_primitive::<TimestampMicrosecondType>();
            let dev = b.column(0).as_string::<i32>();
            let met = b.column(1).as_string::<i32>();
            let seq = b.column(12).as_primitive::<arrow::datatypes::Int64Type>();
            for i in 0..b.num_rows() {
                rows.push((
                    ts.value(i).div_euclid(HOUR_US),
                    dev.value(i).to_owned(),
                    met.value(i).to_owned(),
                    ts.value(i),
                    seq.value(i),
                    rows.len(),
                ));
            }
        }
        rows.sort_by(|a, b| (a.0, &a.1, &a.2, a.3, a.4).cmp(&(b.0, &b.1, &b.2, b.3, b.4)));
        rows
    }

    #[test]
    fn sort_matches_a_plain_comparison_sort() -> Result<()> {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Dense hours use the counting sort; years of spread use the comparison fallback;
        // mixed value kinds, sources and tags take the row-by-row gather instead of the
        // single-value shortcuts.
        for spread in [1, 3, 24 * 365 * 30] {
            for round in 0..40 {
                let input = batches(&mut rng, spread, round % 2 == 1);
                let sorted = sort_readings(&input)?;
                // The expected batch: the input rows concatenated and taken in the order of a
                // stable comparison sort (ties keep input order).
                let expect_order: Vec<u32> = naive(&input).iter().map(|r| r.5 as u32).collect();
                let all = arrow::compute::concat_batches(&readings_schema(), &input)?;
                let idx = arrow::array::UInt32Array::from(expect_order);
                let cols = all
                    .columns()
                    .iter()
                    .map(|c| arrow::compute::take(c.as_ref(), &idx, None))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                let expect = RecordBatch::try_new(readings_schema(), cols)?;
                assert_eq!(sorted, expect, "spread {spread} round {round}");
            }
        }
        assert_eq!(sort_readings(&[])?.num_rows(), 0);
        Ok(())
    }

    /// One WAL record of `device`'s `readings`, received at `received_at`.
    fn encoded(
        device: &str,
        received_at: i64,
        readings: Vec<Reading>,
    ) -> std::result::Result<Vec<u8>, edgepipe_types::Error> {
        Ok(IngestRecord {
            device_id: DeviceId::new(device)?,
            received_at,
            transport: Transport::Mqtt5,
            origin: None,
            tags: Vec::new(),
            readings,
        }
        .encode())
    }

    /// Rows in the lake's readings table.
    /// Ten one-reading records of `d1`/`m`, one a second: the `s`-th ten seconds from
    /// 2023-11-14 22:13:20 UTC.
    fn ten_seconds_of_d1(s: i64) -> std::result::Result<Vec<Vec<u8>>, edgepipe_types::Error> {
        (0..10)
            .map(|k| {
                let ts = 1_700_000_000_000 + (s * 10 + k) * 1000;
                let reading = Reading {
                    metric: Metric::new("m")?,
                    ts,
                    value: Value::F64(k as f64),
                    ts_source: TsSource::Device,
                };
                encoded("d1", ts, vec![reading])
            })
            .collect()
    }

    async fn lake_readings(store: &LakeStore) -> Result<u64> {
        Ok(crate::lake_stats(store)
            .await?
            .iter()
            .find(|t| t.table == tables::READINGS)
            .map_or(0, |t| t.rows))
    }

    /// Pipelined flushes: many flushes, each reading on while the previous one encodes, put
    /// every reading in the lake exactly once, checkpoint the whole WAL and leave the fresh
    /// buffer empty.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pipelined_catch_up_writes_every_reading_once()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (wal, expected) = backlog(dir.path(), 10_500).await?;
        let store = LakeStore::local(dir.path().join("lake"))?;
        let config = LakeConfig {
            flush_max_rows: 1000,
            ..LakeConfig::default()
        };
        let metrics = Arc::new(LakeMetrics::default());
        let mut w = LakeWriter::open(store.clone(), wal.clone(), config, metrics.clone()).await?;
        w.catch_up().await?;
        let fresh = w.fresh();
        assert_eq!(fresh.rows(), 0);
        assert_eq!(fresh.committed(), wal.durable_end());
        // 10,500 records are three WAL reads of up to 4,096 records: a flush each.
        let flushes = metrics.flushes.load(Ordering::Relaxed);
        assert!(flushes >= 3, "{flushes} flushes");
        assert_eq!(lake_readings(&store).await?, expected);
        assert_eq!(metrics.rows_written.load(Ordering::Relaxed), expected);
        // Reopened, the writer finds nothing left to write.
        drop(w);
        let mut again =
            LakeWriter::open(store.clone(), wal, LakeConfig::default(), metrics.clone()).await?;
        again.catch_up().await?;
        assert_eq!(metrics.rows_written.load(Ordering::Relaxed), expected);
        Ok(())
    }

    /// `records` WAL records of 3 readings each (7 devices in turn, one second apart) in a
    /// fresh WAL under `dir`; returns the WAL and the number of readings.
    async fn backlog(
        dir: &std::path::Path,
        records: i64,
    ) -> std::result::Result<(Arc<Wal>, u64), Box<dyn std::error::Error>> {
        let wal = Arc::new(Wal::open(
            dir.join("wal"),
            edgepipe_wal::WalConfig::default(),
        )?);
        let mut expected = 0u64;
        let metrics: Vec<Metric> = (0..3)
            .map(|m| Metric::new(format!("m{m}")))
            .collect::<std::result::Result<_, _>>()?;
        for chunk in 0..(records + 999) / 1000 {
            let mut batch = Vec::new();
            for r in chunk * 1000..((chunk + 1) * 1000).min(records) {
                let ts = 1_700_000_000_000 + (r / 7) * 1000;
                let readings: Vec<Reading> = metrics
                    .iter()
                    .map(|m| Reading {
                        metric: m.clone(),
                        ts,
                        value: Value::F64(r as f64),
                        ts_source: TsSource::Device,
                    })
                    .collect();
                expected += readings.len() as u64;
                batch.push(encoded(&format!("d{}", r % 7), ts, readings)?);
            }
            wal.append_batch(batch).await?;
        }
        Ok((wal, expected))
    }

    /// A writer behind the WAL starts its first flush after an eighth of `flush_max_rows`
    /// instead of reading a full buffer first (the encoder would sit idle), and still writes
    /// every reading once; a writer with only a little waiting flushes by size and time alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_backlog_starts_flushing_early_and_a_small_read_does_not()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let config = LakeConfig {
            flush_max_rows: 400_000,
            ..LakeConfig::default()
        };
        // 60,000 records, 180,000 rows: less than one full buffer. Behind by more than
        // BEHIND_RECORDS after the first 50,000 rows, so the first flush starts then.
        let dir = tempfile::tempdir()?;
        let (wal, expected) = backlog(dir.path(), 60_000).await?;
        let store = LakeStore::local(dir.path().join("lake"))?;
        let metrics = Arc::new(LakeMetrics::default());
        let mut w =
            LakeWriter::open(store.clone(), wal.clone(), config.clone(), metrics.clone()).await?;
        w.catch_up().await?;
        let flushes = metrics.flushes.load(Ordering::Relaxed);
        assert!(
            flushes >= 2,
            "{flushes} flush(es): the first did not start early"
        );
        assert_eq!(lake_readings(&store).await?, expected);
        assert_eq!(w.fresh().committed(), wal.durable_end());

        // 20,000 records: never BEHIND_RECORDS waiting after a read, so one flush at the end.
        let dir = tempfile::tempdir()?;
        let (wal, expected) = backlog(dir.path(), 20_000).await?;
        let store = LakeStore::local(dir.path().join("lake"))?;
        let metrics = Arc::new(LakeMetrics::default());
        let mut w = LakeWriter::open(store.clone(), wal, config, metrics.clone()).await?;
        w.catch_up().await?;
        assert_eq!(metrics.flushes.load(Ordering::Relaxed), 1);
        assert_eq!(lake_readings(&store).await?, expected);
        Ok(())
    }

    /// Two flush files of a closed hour (the first overwritten with garbage when `corrupt`),
    /// then the background compactor until it has run two passes. Returns its counters and the
    /// keys of the readings files left.
    async fn compactor_over_two_flush_files(
        corrupt: bool,
    ) -> std::result::Result<
        (Arc<LakeMetrics>, LakeStore, Vec<String>, tempfile::TempDir),
        Box<dyn std::error::Error>,
    > {
        let dir = tempfile::tempdir()?;
        let wal = Arc::new(Wal::open(dir.path().join("wal"), Default::default())?);
        let store = LakeStore::local(dir.path().join("lake"))?;
        let metrics = Arc::new(LakeMetrics::default());
        let config = LakeConfig {
            compaction_interval: std::time::Duration::from_millis(10),
            ..LakeConfig::default()
        };
        let mut w =
            LakeWriter::open(store.clone(), wal.clone(), config.clone(), metrics.clone()).await?;
        for part in 0..2i64 {
            wal.append_batch(ten_seconds_of_d1(part)?).await?;
            w.catch_up().await?;
            w.flush().await?;
        }
        let keys = |store: LakeStore| async move {
            let listed = store.list(&format!("{}/", tables::READINGS)).await?;
            Ok::<_, crate::Error>(listed.into_iter().map(|(k, _)| k).collect::<Vec<_>>())
        };
        let flushed = keys(store.clone()).await?;
        assert_eq!(flushed.len(), 2, "{flushed:?}");
        if corrupt {
            store
                .put(&flushed[0], bytes::Bytes::from_static(b"not parquet"))
                .await?;
        }
        let fresh = w.fresh();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let compactor = crate::Compactor {
            store: store.clone(),
            config,
            swap: crate::SwapLock::default(),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(compactor.run(move || fresh.committed(), stop_rx));
        for _ in 0..3000 {
            if metrics.compaction_runs.load(Ordering::Relaxed) >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop_tx.send(true)?;
        task.await?;
        let left = keys(store.clone()).await?;
        Ok((metrics, store, left, dir))
    }

    /// The background compactor counts its passes and the partitions it compacted, and says
    /// when a pass is running: two flush files of a closed hour become one, no row lost.
    #[tokio::test]
    async fn the_compactor_counts_its_passes_and_partitions()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let (metrics, store, left, _dir) = compactor_over_two_flush_files(false).await?;
        assert!(metrics.compaction_runs.load(Ordering::Relaxed) >= 2);
        assert_eq!(metrics.partitions_compacted.load(Ordering::Relaxed), 1);
        assert_eq!(metrics.compaction_running.load(Ordering::Relaxed), 0);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(lake_readings(&store).await?, 20);
        Ok(())
    }

    /// A pass that fails (a corrupt input) still ends: it is counted, the running gauge goes
    /// back to 0, nothing counts as compacted, the partition's files are left as they were and
    /// nothing stays staged.
    #[tokio::test]
    async fn a_failed_compaction_pass_ends_and_leaves_the_files()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let (metrics, store, left, dir) = compactor_over_two_flush_files(true).await?;
        assert!(metrics.compaction_runs.load(Ordering::Relaxed) >= 2);
        assert_eq!(metrics.partitions_compacted.load(Ordering::Relaxed), 0);
        assert_eq!(metrics.compaction_running.load(Ordering::Relaxed), 0);
        assert_eq!(left.len(), 2, "{left:?}");
        // Nothing a failed pass staged is left behind (not even a local directory).
        assert!(store.list("_edgepipe/staging/").await?.is_empty());
        assert!(!dir.path().join("lake/_edgepipe/staging").exists());
        Ok(())
    }

    /// The WAL's disk budget (`drop_oldest`) deletes records before the lake reads them: the
    /// writer counts every lost record, writes every surviving one once, and both add up to
    /// what was appended (nothing vanishes uncounted).
    #[tokio::test]
    async fn records_the_wal_budget_deleted_are_counted_and_the_rest_written()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let wal = Arc::new(Wal::open(
            dir.path().join("wal"),
            edgepipe_wal::WalConfig {
                segment_bytes: 4096,
                max_bytes: 32 * 1024,
                full_policy: edgepipe_wal::FullPolicy::DropOldest,
                ..edgepipe_wal::WalConfig::default()
            },
        )?);
        let store = LakeStore::local(dir.path().join("lake"))?;
        let metrics = Arc::new(LakeMetrics::default());
        // The writer's consumer exists (at 0) before anything is appended.
        let mut w = LakeWriter::open(
            store.clone(),
            wal.clone(),
            LakeConfig::default(),
            metrics.clone(),
        )
        .await?;
        let total = 3000u64;
        for s in 0..total as i64 / 10 {
            wal.append_batch(ten_seconds_of_d1(s)?).await?;
        }
        w.catch_up().await?;
        let lost = metrics.records_lost_to_wal_budget.load(Ordering::Relaxed);
        let written = metrics.rows_written.load(Ordering::Relaxed);
        assert!(
            lost > 0,
            "the budget deleted nothing; the test did not exercise it"
        );
        assert_eq!(written + lost, total, "written {written}, lost {lost}");
        assert_eq!(lake_readings(&store).await?, written);
        Ok(())
    }
}
