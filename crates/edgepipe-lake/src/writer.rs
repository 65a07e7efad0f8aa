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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::{
    Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::{concat_batches, take};
use bytes::Bytes;
use edgepipe_types::IngestRecord;
use edgepipe_wal::{Consumer, Wal};
use tokio::sync::watch;

use crate::config::LakeConfig;
use crate::parquet_io::encode_parquet_level;
use crate::schema::{COL_TS, HOUR_US, RowsBuilder, readings_schema};
use crate::store::LakeStore;
use crate::{Error, Result, tables};

/// Name of the lake writer's WAL consumer.
pub const CONSUMER: &str = "lake";
const READ_BATCH: usize = 4096;

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
    consumer: Consumer,
    config: LakeConfig,
    fresh: FreshBuffer,
    builder: RowsBuilder,
    next_seq: u64,
    metrics: Arc<LakeMetrics>,
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
            consumer,
            fresh,
            builder: RowsBuilder::new(late_after_us),
            next_seq: position,
            config,
            metrics,
        })
    }

    /// The handle queries use to see rows not yet in lake files.
    pub fn fresh(&self) -> FreshBuffer {
        self.fresh.clone()
    }

    /// Runs until `stop` turns true, then flushes what is buffered and returns.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let mut last_flush = Instant::now();
        loop {
            if *stop.borrow() {
                break;
            }
            let progressed = self.read_available()?;
            let due = last_flush.elapsed() >= self.config.flush_interval;
            if due || self.fresh.rows() >= self.config.flush_max_rows {
                self.flush().await?;
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
            tokio::select! {
                r = wal.wait_beyond(after) => {
                    if let Err(edgepipe_wal::Error::Closed) = r {
                        break;
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        self.read_available()?;
        self.flush().await
    }

    /// Reads durable records not yet read into the fresh buffer, until the WAL has no more or
    /// the buffer holds `flush_max_rows` (then it is the caller's turn to flush). Returns
    /// whether anything was read.
    pub fn read_available(&mut self) -> Result<bool> {
        let mut any = false;
        loop {
            let records = match self.wal.read(self.next_seq, READ_BATCH) {
                Ok(r) => r,
                Err(edgepipe_wal::Error::Truncated { requested, oldest }) => {
                    // The WAL's disk budget (drop_oldest) deleted records before we read them.
                    // The WAL records the gap; we count it and move on.
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
            if records.is_empty() {
                break;
            }
            any = true;
            for (seq, payload) in &records {
                match IngestRecord::decode(payload) {
                    Ok(rec) => self.builder.push_record(*seq, &rec),
                    Err(e) => {
                        tracing::error!(seq, error = %e, "lake: wal record does not decode; not written to the lake");
                        self.metrics
                            .records_undecodable
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.next_seq = seq + 1;
            }
            let batch = self.builder.finish()?;
            let mut s = self.fresh.lock();
            s.rows += batch.num_rows();
            if batch.num_rows() > 0 {
                s.batches.push(batch);
            }
            // A full buffer goes to the lake before more is read: under a sustained ingest
            // faster than one read pass, reading "until the WAL is drained" never ends and
            // the buffer (and the flush that sorts it) grows without bound.
            if records.len() < READ_BATCH || s.rows >= self.config.flush_max_rows {
                break;
            }
        }
        Ok(any)
    }

    /// Writes every buffered row to the lake and moves the WAL checkpoint past them.
    pub async fn flush(&mut self) -> Result<()> {
        let snap = self.fresh.snapshot();
        let first = snap.committed;
        if self.next_seq == first {
            return Ok(());
        }
        let last = self.next_seq - 1;
        let rows: usize = snap.batches.iter().map(|b| b.num_rows()).sum();
        if rows > 0 {
            let row_group_rows = self.config.row_group_rows;
            let batches = snap.batches.clone();
            let files = tokio::task::spawn_blocking(move || {
                partition_and_encode(&batches, first, last, row_group_rows)
            })
            .await
            .map_err(|e| Error::Config(format!("encode task failed: {e}")))??;
            let bytes: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
            let consumer = &mut self.consumer;
            crate::sink::store_flush(&self.store, tables::READINGS, first, last, &files, || {
                consumer.commit(last + 1).map_err(Error::from)
            })
            .await?;
            self.commit_fresh(last + 1, snap.batches.len());
            self.metrics
                .rows_written
                .fetch_add(rows as u64, Ordering::Relaxed);
            self.metrics
                .files_written
                .fetch_add(files.len() as u64, Ordering::Relaxed);
            self.metrics
                .bytes_written
                .fetch_add(bytes, Ordering::Relaxed);
            tracing::debug!(first, last, rows, files = files.len(), "lake: flushed");
        } else {
            // Records without readings (none today, but a future record kind) still advance.
            self.consumer.commit(last + 1)?;
            self.commit_fresh(last + 1, snap.batches.len());
        }
        self.metrics.flushes.fetch_add(1, Ordering::Relaxed);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.metrics
            .last_flush_unix_ms
            .store(now_ms, Ordering::Relaxed);
        Ok(())
    }

    fn commit_fresh(&self, committed: u64, flushed_batches: usize) {
        let mut s = self.fresh.lock();
        s.committed = committed;
        let n = flushed_batches.min(s.batches.len());
        let removed: usize = s.batches.drain(..n).map(|b| b.num_rows()).sum();
        s.rows = s.rows.saturating_sub(removed);
    }
}

/// Sorts rows by (hour, device, metric, ts, wal_seq) and encodes one file per hour partition.
fn partition_and_encode(
    batches: &[RecordBatch],
    first: u64,
    last: u64,
    row_group_rows: usize,
) -> Result<Vec<(String, Bytes)>> {
    let schema = readings_schema();
    let all = concat_batches(&schema, batches)?;
    let sorted = sort_readings(&all)?;
    let ts = sorted
        .column(COL_TS)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Config("ts column is not timestamp(us)".into()))?;
    let mut out = Vec::new();
    let mut start = 0usize;
    while start < sorted.num_rows() {
        let hour = ts.value(start).div_euclid(HOUR_US);
        let mut end = start + 1;
        while end < sorted.num_rows() && ts.value(end).div_euclid(HOUR_US) == hour {
            end += 1;
        }
        let part = sorted.slice(start, end - start);
        let key = crate::sink::part_key(tables::READINGS, hour, first, last);
        out.push((
            key,
            encode_parquet_level(&schema, &[part], row_group_rows, 1)?,
        ));
        start = end;
    }
    Ok(out)
}

/// Sorts `readings` rows by hour bucket, device_id, metric, ts, wal_seq.
pub(crate) fn sort_readings(batch: &RecordBatch) -> Result<RecordBatch> {
    let ts = batch
        .column(COL_TS)
        .as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .ok_or_else(|| Error::Config("ts column is not timestamp(us)".into()))?;
    let strings = |name: &str| -> Result<&StringArray> {
        batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| Error::Config(format!("column {name} is missing or not utf8")))
    };
    let seq = batch
        .column_by_name("wal_seq")
        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
        .ok_or_else(|| Error::Config("column wal_seq is missing or not int64".into()))?;
    // Sorting on string columns compares bytes for every pair; a batch holds few distinct
    // devices and metrics, so rank them once and sort plain integer tuples instead.
    let dev = ranks(strings("device_id")?);
    let met = ranks(strings("metric")?);
    let n = batch.num_rows();
    let mut keys: Vec<(i64, u32, u32, i64, i64, u32)> = (0..n)
        .map(|i| {
            let t = ts.value(i);
            (
                t.div_euclid(HOUR_US),
                dev[i],
                met[i],
                t,
                seq.value(i),
                i as u32,
            )
        })
        .collect();
    keys.sort_unstable();
    let idx = UInt32Array::from_iter_values(keys.iter().map(|k| k.5));
    let cols = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), cols)?)
}

/// Each row's rank among the column's distinct values in byte order.
fn ranks(col: &StringArray) -> Vec<u32> {
    let mut ids: std::collections::HashMap<&str, u32> = std::collections::HashMap::new();
    let mut distinct: Vec<&str> = Vec::new();
    let first: Vec<u32> = (0..col.len())
        .map(|i| {
            let v = if col.is_null(i) { "" } else { col.value(i) };
            *ids.entry(v).or_insert_with(|| {
                distinct.push(v);
                (distinct.len() - 1) as u32
            })
        })
        .collect();
    let mut order: Vec<u32> = (0..distinct.len() as u32).collect();
    order.sort_unstable_by(|a, b| distinct[*a as usize].cmp(distinct[*b as usize]));
    let mut rank = vec![0u32; distinct.len()];
    for (r, id) in order.iter().enumerate() {
        rank[*id as usize] = r as u32;
    }
    first.into_iter().map(|id| rank[id as usize]).collect()
}
