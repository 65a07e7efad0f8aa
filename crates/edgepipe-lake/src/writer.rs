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
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{RecordBatch, TimestampMicrosecondArray};
use bytes::Bytes;
use edgepipe_types::IngestRecordView;
use edgepipe_wal::{Consumer, Wal};
use tokio_util::sync::CancellationToken;

use crate::column::Column;
use crate::config::LakeConfig;
use crate::metrics::LakeMetrics;
use crate::parquet_io::encode_flush_files;
use crate::schema::{COL_TS, HOUR_US, RowsBuilder, readings_schema};
use crate::sort::sort_runs;
use crate::store::LakeStore;
use crate::{Error, Result, tables};

/// Name of the lake writer's WAL consumer.
pub const CONSUMER: &str = "lake";
const READ_BATCH: usize = 4096;
/// Durable records still unread after a read that make the writer "behind" the WAL (a
/// backlog, not the few reads' worth that arrive between two reads under load).
const BEHIND_RECORDS: u64 = 8 * READ_BATCH as u64;

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
        crate::swap::recover_compactions(&store).await?;
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

    /// Runs until `stop` is cancelled, then flushes what is buffered and returns.
    ///
    /// Flushes are pipelined: while one is sorted, encoded and stored, the writer reads on
    /// into the fresh buffer (which then holds up to twice `flush_max_rows`); the next flush
    /// starts only after the previous one is checkpointed, so checkpoints move in WAL order.
    pub async fn run(mut self, stop: CancellationToken) -> Result<()> {
        let mut last_flush = Instant::now();
        let mut last_read = Instant::now();
        loop {
            if stop.is_cancelled() {
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
                _ = stop.cancelled() => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use edgepipe_types::{DeviceId, IngestRecord, Metric, Reading, Transport, TsSource, Value};

    use crate::store::LakeStore;

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
        let stop = CancellationToken::new();
        let compactor = crate::Compactor {
            store: store.clone(),
            config,
            swap: crate::SwapLock::default(),
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(compactor.run(move || fresh.committed(), stop.clone()));
        for _ in 0..3000 {
            if metrics.compaction_runs.load(Ordering::Relaxed) >= 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        stop.cancel();
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
