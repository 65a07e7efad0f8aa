//! Compaction: a partition's small files become a few large ones, deduplicated on
//! `(device_id, metric, ts)` with the last WAL write winning, and its rollups are (re)written.
//! The inputs are merged as streams (every file is sorted by series), a round of whole series
//! at a time, so a partition of tens of millions of rows compacts in bounded memory: inputs are
//! read through ranged requests (a window or a page at a time, never a whole file) and each
//! output is streamed to the store in 8 MiB parts under a staging key
//! (`_edgepipe/staging/<key>`, outside every table) as it is encoded.
//!
//! Atomicity for our own queries: outputs are staged first, then, holding the [`SwapLock`] for
//! writing, the outputs are renamed into the partition (an atomic rename on a local
//! directory, a server-side copy on S3) and the inputs deleted. Queries hold the lock for reading
//! while they list and read files, so they see either the inputs or the outputs, never both and
//! never neither. Crash safety: an intent marker `_edgepipe/compaction/<date>-<hour>.json` names
//! inputs, outputs and rollups once every output is staged and durable, before anything in a
//! table changes; on start, a marker's swap is finished (staged files moved into place, inputs
//! deleted: it can always go forward, also when an output has the name of an input it
//! replaces), and every staged object left by a run that stopped before its marker is deleted.
//! On S3, an upload interrupted by a crash stays as an incomplete multipart upload, which
//! listings do not show: give the bucket a lifecycle rule that aborts incomplete uploads after
//! a day. External readers (DuckDB, Spark) do not take our lock: for the moment between
//! moving the outputs in and deleting the inputs (milliseconds on a local disk, one DELETE round
//! trip per input on S3) a scan that lists the partition then may count a compacted reading
//! twice. Compaction only touches flush files already checkpointed, never a flush in progress.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Float64Builder, Int64Builder, RecordBatch,
    StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::reader::ChunkReader;
use serde::Serialize;

use crate::config::LakeConfig;
use crate::metrics::LakeMetrics;
use crate::parquet_io::StreamWriter;
use crate::ranged::{RangeReader, UploadSink};
use crate::schema::{HOUR_US, hour_of_key, readings_schema, rollup_schema};
use crate::sort::sort_readings;
use crate::store::LakeStore;
use crate::swap::{Marker, SwapLock, clear_staging, finish_swap, put_marker, staging_key};
use crate::{Error, Result, tables};

/// What a compaction run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct CompactionReport {
    /// Partitions compacted.
    pub partitions: usize,
    /// Files read.
    pub files_in: usize,
    /// Files written.
    pub files_out: usize,
    /// Rows read.
    pub rows_in: u64,
    /// Rows written.
    pub rows_out: u64,
    /// Rows dropped as duplicates of a later write of the same (device_id, metric, ts).
    pub duplicates_removed: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Bytes written.
    pub bytes_out: u64,
}

/// A file in a `readings` partition, as named by the writer or the compactor.
#[derive(Debug, Clone)]
struct LakeFile {
    key: String,
    first: u64,
    last: u64,
    compacted: bool,
    /// Object size in bytes (from the listing).
    size: u64,
}

/// The file a listed object is, if it is one of ours (`size` from the listing).
fn parse_file(key: &str, size: u64) -> Option<LakeFile> {
    let name = key.rsplit('/').next()?;
    let stem = name.strip_suffix(".parquet")?;
    let (compacted, rest) = if let Some(r) = stem.strip_prefix("part-") {
        (false, r)
    } else if let Some(r) = stem.strip_prefix("compacted-") {
        (true, r)
    } else {
        return None;
    };
    let mut it = rest.split('-');
    let first = it.next()?.parse().ok()?;
    let last = it.next()?.parse().ok()?;
    Some(LakeFile {
        key: key.to_owned(),
        first,
        last,
        compacted,
        size,
    })
}

/// The highest WAL sequence any `readings` file covers, if there is one.
pub(crate) async fn max_wal_seq(store: &LakeStore) -> Result<Option<u64>> {
    Ok(store
        .list(&format!("{}/", tables::READINGS))
        .await?
        .iter()
        .filter_map(|(k, m)| parse_file(k, m.size))
        .map(|f| f.last)
        .max())
}

/// Runs compaction in the background every `compaction_interval`.
#[derive(Debug, Clone)]
pub struct Compactor {
    /// The lake.
    pub store: LakeStore,
    /// Settings.
    pub config: LakeConfig,
    /// Swap lock shared with the query engine.
    pub swap: SwapLock,
    /// Where the passes are counted (shared with the lake writer's counters).
    pub metrics: Arc<LakeMetrics>,
}

/// Compacts every partition that needs it. `committed` is the lake writer's WAL checkpoint:
/// flush files covering records at or beyond it are never touched. `force` compacts every
/// partition with more than one file or any uncompacted file; otherwise only partitions with at
/// least `compact_min_files` files, or closed hours (per `now_ms`) with an uncompacted file.
pub async fn compact(
    store: &LakeStore,
    config: &LakeConfig,
    swap: &SwapLock,
    committed: u64,
    now_ms: i64,
    force: bool,
) -> Result<CompactionReport> {
    let mut by_partition: BTreeMap<String, Vec<LakeFile>> = BTreeMap::new();
    for (key, meta) in store.list(&format!("{}/", tables::READINGS)).await? {
        let Some(f) = parse_file(&key, meta.size) else {
            continue;
        };
        if !f.compacted && f.last >= committed {
            continue;
        }
        let dir = key
            .rsplit_once('/')
            .map(|(d, _)| d.to_owned())
            .unwrap_or_default();
        by_partition.entry(dir).or_default().push(f);
    }
    let mut report = CompactionReport::default();
    for (dir, files) in by_partition {
        let uncompacted = files.iter().any(|f| !f.compacted);
        let closed = hour_of_key(&dir)
            .map(|h| {
                (h + 1) * HOUR_US / 1000
                    + i64::try_from(config.compact_after.as_millis()).unwrap_or(i64::MAX)
                    <= now_ms
            })
            .unwrap_or(false);
        let needed = if force {
            files.len() > 1 || uncompacted
        } else {
            files.len() >= config.compact_min_files || (closed && uncompacted)
        };
        if needed {
            compact_partition(store, config, swap, &dir, files, &mut report).await?;
        }
    }
    Ok(report)
}

/// Adds missing nullable columns so batches of older schema versions concatenate with new ones.
pub(crate) fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch.clone());
    }
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => cols.push(c.clone()),
            Some(c) => cols.push(arrow::compute::cast(c, f.data_type())?),
            None if f.is_nullable() => cols.push(arrow::array::new_null_array(
                f.data_type(),
                batch.num_rows(),
            )),
            None => {
                return Err(Error::Corrupt {
                    key: String::new(),
                    reason: format!("required column {} missing", f.name()),
                });
            }
        }
    }
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

async fn compact_partition(
    store: &LakeStore,
    config: &LakeConfig,
    swap: &SwapLock,
    dir: &str,
    files: Vec<LakeFile>,
    report: &mut CompactionReport,
) -> Result<()> {
    let handle = tokio::runtime::Handle::current();
    let inputs: Vec<(String, RangeReader)> = files
        .iter()
        .map(|f| {
            let r = RangeReader::new(store.clone(), f.key.clone(), f.size, handle.clone());
            (f.key.clone(), r)
        })
        .collect();
    let plan = MergePlan {
        dir: dir.to_owned(),
        first: files.iter().map(|f| f.first).min().unwrap_or(0),
        last: files.iter().map(|f| f.last).max().unwrap_or(0),
        row_group_rows: config.row_group_rows,
        target_file_bytes: config.target_file_bytes,
        rollups: config.rollups,
        batch_rows: MERGE_BATCH_ROWS,
    };
    // On a thread of its own at a lower priority (the threads its sort spawns inherit it):
    // compaction is background work; at normal priority a big partition's merge competes as
    // an equal with the ingest threads for the cores. Its reads and uploads block that thread
    // on the runtime's store futures.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let staging_store = store.clone();
    std::thread::Builder::new()
        .name("lake-compact".into())
        .spawn(move || {
            background_priority();
            let open = |key: &str| {
                UploadSink::create(staging_store.clone(), staging_key(key), handle.clone())
            };
            let _ = tx.send(merge_partition(inputs, &plan, open));
        })
        .map_err(|e| Error::Config(format!("cannot start the compaction thread: {e}")))?;
    let merged = rx
        .await
        .map_err(|_| Error::Config("compaction thread ended without a result".into()))
        .and_then(|r| r);
    let merged = match merged {
        Ok(m) => m,
        Err(e) => {
            // Outputs staged before the failure are of no use; the inputs are untouched.
            if let Err(c) = clear_staging(store).await {
                tracing::warn!(partition = dir, error = %c, "lake: could not clear staged outputs");
            }
            return Err(e);
        }
    };
    let MergeOutput {
        outputs,
        rollup_files,
        rows_in,
        rows_out,
        bytes_in,
    } = merged;

    let marker = Marker {
        inputs: files.iter().map(|f| f.key.clone()).collect(),
        outputs: outputs.iter().map(|(k, _)| k.clone()).collect(),
        rollups: rollup_files.iter().map(|(k, _)| k.clone()).collect(),
    };
    let marker_key = put_marker(store, dir, &marker).await?;
    {
        // Rollups inside the swap too (see `finish_swap`). A step that fails (an S3 copy, a
        // delete) is retried once before the lock is released, so our queries do not go on
        // seeing moved outputs beside their inputs; if that fails too, the marker stays and
        // the next start finishes the swap.
        let _w = swap.write().await;
        if let Err(e) = finish_swap(store, &marker).await {
            tracing::warn!(partition = dir, error = %e, "lake: compaction swap failed; retrying once");
            finish_swap(store, &marker).await?;
        }
    }
    store.delete(&marker_key).await?;
    // Nothing is staged now; a local store still has the directories renames left.
    if let Err(e) = clear_staging(store).await {
        tracing::warn!(error = %e, "lake: could not remove the empty staging directories");
    }
    report.partitions += 1;
    report.files_in += files.len();
    report.files_out += outputs.len();
    report.rows_in += rows_in as u64;
    report.rows_out += rows_out as u64;
    report.duplicates_removed += (rows_in - rows_out) as u64;
    report.bytes_in += bytes_in;
    report.bytes_out += outputs.iter().map(|(_, size)| size).sum::<u64>();
    tracing::info!(
        partition = dir,
        files_in = files.len(),
        rows_in,
        rows_out,
        "lake: compacted"
    );
    Ok(())
}

/// Lowers the calling thread's priority to nice 10 (Linux: per thread; threads it starts
/// inherit it). Best effort: a failure only logs, compaction then runs at normal priority.
fn background_priority() {
    use thread_priority::{ThreadPriority, ThreadPriorityValue};
    // The crate maps 0..=99 onto nice 19..=-20 (rounding down); 22 is nice 10 (tested).
    let done = ThreadPriorityValue::try_from(22u8)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            thread_priority::set_current_thread_priority(ThreadPriority::Crossplatform(v))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = done {
        tracing::warn!(error = %e, "lake: could not lower the compaction thread's priority");
    }
}

/// Rows decoded per input file at a time while merging.
const MERGE_BATCH_ROWS: usize = 32 * 1024;

/// What to merge into and how.
#[derive(Debug, Clone)]
struct MergePlan {
    dir: String,
    first: u64,
    last: u64,
    row_group_rows: usize,
    target_file_bytes: u64,
    rollups: bool,
    batch_rows: usize,
}

/// Where [`merge_partition`] writes an output file: memory (tests) or an upload to the store.
trait OutputFile: std::io::Write + Send {
    /// What a finished output leaves: its bytes, or its size once stored.
    type Done;
    /// Completes the file.
    fn close(self) -> Result<Self::Done>;
}

impl OutputFile for Vec<u8> {
    type Done = Bytes;
    fn close(self) -> Result<Bytes> {
        Ok(Bytes::from(self))
    }
}

impl OutputFile for UploadSink {
    type Done = u64;
    fn close(self) -> Result<u64> {
        self.finish()
    }
}

/// A merged partition: compacted files as `(key, what the output left)` pairs, and rollups as
/// `(key, parquet)` pairs.
#[derive(Debug)]
struct MergeOutput<D> {
    outputs: Vec<(String, D)>,
    rollup_files: Vec<(String, D)>,
    rows_in: usize,
    rows_out: usize,
    /// Bytes of the input files.
    bytes_in: u64,
}

/// One input file being merged: its reader and the rows read but not yet merged (sorted by
/// device, metric, ts, wal_seq like the file).
struct MergeInput {
    key: String,
    reader: ParquetRecordBatchReader,
    buf: Option<RecordBatch>,
    done: bool,
}

impl MergeInput {
    /// Reads the next batch onto the buffer (or marks the file done).
    fn pull(&mut self, schema: &SchemaRef) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let corrupt = |key: &str, e: &dyn std::fmt::Display| Error::Corrupt {
            key: key.to_owned(),
            reason: e.to_string(),
        };
        match self.reader.next() {
            None => self.done = true,
            Some(b) => {
                let b = b.map_err(|e| corrupt(&self.key, &e))?;
                let b = conform(&b, schema).map_err(|e| corrupt(&self.key, &e))?;
                self.buf = Some(match self.buf.take() {
                    Some(old) if old.num_rows() > 0 => {
                        arrow::compute::concat_batches(schema, [&old, &b])?
                    }
                    _ => b,
                });
            }
        }
        Ok(())
    }

    fn buffered(&self) -> usize {
        self.buf.as_ref().map_or(0, RecordBatch::num_rows)
    }

    /// The (device_id, metric) of the last buffered row.
    fn last_series(&self) -> Result<Option<(String, String)>> {
        let Some(b) = self.buf.as_ref().filter(|b| b.num_rows() > 0) else {
            return Ok(None);
        };
        let i = b.num_rows() - 1;
        let (dev, met) = (string_col(b, "device_id")?, string_col(b, "metric")?);
        Ok(Some((str_at(dev, i).to_owned(), str_at(met, i).to_owned())))
    }

    /// Takes the buffered rows whose series sorts before `bound` (all of them without one).
    fn take_before(&mut self, bound: Option<&(String, String)>) -> Result<Option<RecordBatch>> {
        let Some(b) = self.buf.take() else {
            return Ok(None);
        };
        let n = b.num_rows();
        let k = match bound {
            None => n,
            Some((bd, bm)) => {
                let (dev, met) = (string_col(&b, "device_id")?, string_col(&b, "metric")?);
                // Rows are sorted by series: binary search for the first at or after `bound`.
                let (mut lo, mut hi) = (0usize, n);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if (str_at(dev, mid), str_at(met, mid)) < (bd.as_str(), bm.as_str()) {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                lo
            }
        };
        if k < n {
            self.buf = Some(b.slice(k, n - k));
        }
        Ok((k > 0).then(|| b.slice(0, k)))
    }
}

/// Null ids sort (and are interned by the writer's sort) as "".
fn str_at(a: &StringArray, i: usize) -> &str {
    if a.is_null(i) { "" } else { a.value(i) }
}

/// Merges a partition's files into compacted files and rollups with bounded memory: every input
/// is already sorted by (device_id, metric, ts, wal_seq), so the merge reads `batch_rows` at a
/// time from each, and each round sorts, deduplicates and writes out only the whole series
/// that sort before the smallest series some input may still continue. A series never spans
/// two rounds, so deduplication (a series' duplicates) and rollups (per series and bucket) are
/// the same as over the whole partition at once. Memory: per input, the pages being decoded and
/// about `batch_rows` decoded rows (more only for one series longer than that); one row group
/// being encoded and the part being uploaded, for the compacted file and each rollup file
/// (`open` gives every output its writer; rollup rows are written round by round, in series
/// order like the rows they summarise).
fn merge_partition<R, W, F>(
    inputs: Vec<(String, R)>,
    plan: &MergePlan,
    mut open: F,
) -> Result<MergeOutput<W::Done>>
where
    R: ChunkReader + 'static,
    W: OutputFile,
    F: FnMut(&str) -> Result<W>,
{
    let schema = readings_schema();
    let bytes_in: u64 = inputs.iter().map(|(_, d)| d.len()).sum();
    let mut rows_in = 0usize;
    let mut merging = Vec::with_capacity(inputs.len());
    for (key, data) in inputs {
        let builder = ParquetRecordBatchReaderBuilder::try_new(data)
            .map_err(|e| Error::Corrupt {
                key: key.clone(),
                reason: e.to_string(),
            })?
            .with_batch_size(plan.batch_rows.max(1));
        rows_in += usize::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let reader = builder.build().map_err(|e| Error::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        })?;
        merging.push(MergeInput {
            key,
            reader,
            buf: None,
            done: false,
        });
    }
    let per_row = (bytes_in as f64 / rows_in.max(1) as f64).max(0.5);
    let rows_per_file =
        ((plan.target_file_bytes as f64 / per_row) as usize).max(plan.row_group_rows);
    let mut outputs: Vec<(String, W::Done)> = Vec::new();
    let mut out: Option<(String, StreamWriter<W>)> = None;
    // The rollups are written as the rounds go (rounds come in series order, as the files
    // are sorted), each to its own output: one file per table and partition.
    let mut rollups = Vec::new();
    if plan.rollups {
        for (table, width_us) in [
            (tables::ROLLUP_1M, 60_000_000),
            (tables::ROLLUP_1H, HOUR_US),
        ] {
            let key = rollup_key(&plan.dir, table);
            let w = StreamWriter::to(open(&key)?, &rollup_schema(), plan.row_group_rows, 3)?;
            rollups.push((key, width_us, w));
        }
    }
    let mut rows_out = 0usize;
    loop {
        for m in merging.iter_mut() {
            while !m.done && m.buffered() == 0 {
                m.pull(&schema)?;
            }
        }
        if merging.iter().all(|m| m.done && m.buffered() == 0) {
            break;
        }
        // The smallest series an unfinished input may still continue: rows of earlier series
        // are complete in every input. (Taking rows before it leaves each buffer's last row in
        // place, so these stay the buffers' last series for the pull below.)
        let lasts = merging
            .iter()
            .map(|m| if m.done { Ok(None) } else { m.last_series() })
            .collect::<Result<Vec<_>>>()?;
        let bound = lasts.iter().flatten().min().cloned();
        let mut round = Vec::new();
        for m in merging.iter_mut() {
            if let Some(b) = m.take_before(bound.as_ref())? {
                round.push(b);
            }
        }
        // Inputs whose buffer ends in the bound series read on (that series may continue).
        for (m, last) in merging.iter_mut().zip(&lasts) {
            if last.is_some() && *last == bound {
                m.pull(&schema)?;
            }
        }
        if round.is_empty() {
            continue;
        }
        let sorted = sort_readings(&round)?;
        drop(round);
        let deduped = dedup_last_wins(&sorted)?;
        drop(sorted);
        if deduped.num_rows() == 0 {
            continue;
        }
        rows_out += deduped.num_rows();
        if plan.rollups {
            for (_, width_us, w) in rollups.iter_mut() {
                w.write(&rollup(&deduped, *width_us)?)?;
            }
        }
        let (_, w) = match &mut out {
            Some(o) => o,
            None => {
                let key = output_key(plan, outputs.len());
                let w = StreamWriter::to(open(&key)?, &schema, plan.row_group_rows, 3)?;
                out.insert((key, w))
            }
        };
        w.write(&deduped)?;
        if w.rows() >= rows_per_file
            && let Some((key, w)) = out.take()
        {
            outputs.push((key, w.into_inner()?.close()?));
        }
    }
    if let Some((key, w)) = out.take()
        && w.rows() > 0
    {
        outputs.push((key, w.into_inner()?.close()?));
    }
    let mut rollup_files = Vec::with_capacity(rollups.len());
    for (key, _, w) in rollups {
        rollup_files.push((key, w.into_inner()?.close()?));
    }
    Ok(MergeOutput {
        outputs,
        rollup_files,
        rows_in,
        rows_out,
        bytes_in,
    })
}

fn output_key(plan: &MergePlan, i: usize) -> String {
    format!(
        "{}/compacted-{:020}-{:020}-{i:03}.parquet",
        plan.dir, plan.first, plan.last
    )
}

/// Keeps the last row of every run of equal (device_id, metric, ts) in rows sorted by
/// (hour, device_id, metric, ts, wal_seq): the latest WAL write wins.
fn dedup_last_wins(sorted: &RecordBatch) -> Result<RecordBatch> {
    let n = sorted.num_rows();
    let dev = string_col(sorted, "device_id")?;
    let met = string_col(sorted, "metric")?;
    let ts = ts_col(sorted, "ts")?;
    let keep: BooleanArray = (0..n)
        .map(|i| {
            Some(
                i + 1 == n
                    || ts.value(i) != ts.value(i + 1)
                    || met.value(i) != met.value(i + 1)
                    || dev.value(i) != dev.value(i + 1),
            )
        })
        .collect();
    Ok(filter_record_batch(sorted, &keep)?)
}

fn string_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a StringArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::Config(format!("column {name} is missing or not utf8")))
}

fn ts_col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a TimestampMicrosecondArray> {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .ok_or_else(|| Error::Config(format!("column {name} is missing or not timestamp(us)")))
}

/// 1-minute and 1-hour rollups of one partition (the merge rounds' rollup batches, in series
/// order), as `(key, parquet)` pairs.
/// Key of a partition's rollup file in `table` (one file per table and partition).
fn rollup_key(dir: &str, table: &str) -> String {
    let suffix = dir
        .strip_prefix(&format!("{}/", tables::READINGS))
        .unwrap_or(dir);
    format!("{table}/{suffix}/rollup.parquet")
}

fn rollup(rows: &RecordBatch, width_us: i64) -> Result<RecordBatch> {
    let dev = string_col(rows, "device_id")?;
    let met = string_col(rows, "metric")?;
    let ts = ts_col(rows, "ts")?;
    let val = rows
        .column_by_name("value")
        .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
        .ok_or_else(|| Error::Config("column value is missing or not float64".into()))?;
    let mut b_dev = StringBuilder::new();
    let mut b_met = StringBuilder::new();
    let mut b_bucket = TimestampMicrosecondBuilder::new();
    let mut b_count = Int64Builder::new();
    let mut b_min = Float64Builder::new();
    let mut b_max = Float64Builder::new();
    let mut b_avg = Float64Builder::new();
    let mut b_sum = Float64Builder::new();
    let mut b_num = Int64Builder::new();
    let n = rows.num_rows();
    let mut i = 0;
    while i < n {
        let bucket = ts.value(i).div_euclid(width_us) * width_us;
        let (mut count, mut num, mut sum) = (0i64, 0i64, 0.0f64);
        let (mut min, mut max) = (f64::INFINITY, f64::NEG_INFINITY);
        let mut j = i;
        while j < n
            && dev.value(j) == dev.value(i)
            && met.value(j) == met.value(i)
            && ts.value(j).div_euclid(width_us) * width_us == bucket
        {
            count += 1;
            if val.is_valid(j) {
                let v = val.value(j);
                num += 1;
                sum += v;
                min = min.min(v);
                max = max.max(v);
            }
            j += 1;
        }
        b_dev.append_value(dev.value(i));
        b_met.append_value(met.value(i));
        b_bucket.append_value(bucket);
        b_count.append_value(count);
        b_num.append_value(num);
        if num > 0 {
            b_min.append_value(min);
            b_max.append_value(max);
            b_avg.append_value(sum / num as f64);
            b_sum.append_value(sum);
        } else {
            b_min.append_null();
            b_max.append_null();
            b_avg.append_null();
            b_sum.append_null();
        }
        i = j;
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(b_dev.finish()),
        Arc::new(b_met.finish()),
        Arc::new(b_bucket.finish().with_timezone("UTC")),
        Arc::new(b_count.finish()),
        Arc::new(b_min.finish()),
        Arc::new(b_max.finish()),
        Arc::new(b_avg.finish()),
        Arc::new(b_sum.finish()),
        Arc::new(b_num.finish()),
    ];
    Ok(RecordBatch::try_new(rollup_schema(), cols)?)
}

impl Compactor {
    /// Compacts every `compaction_interval` until `stop` is cancelled. `committed` reports the
    /// lake writer's checkpoint.
    pub async fn run(
        self,
        committed: impl Fn() -> u64 + Send,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if self.config.compaction_interval.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.compaction_interval) => {}
                _ = stop.cancelled() => {}
            }
            if stop.is_cancelled() {
                return;
            }
            let now_ms = chrono::Utc::now().timestamp_millis();
            self.metrics.compaction_running.store(1, Ordering::Relaxed);
            let result = compact(
                &self.store,
                &self.config,
                &self.swap,
                committed(),
                now_ms,
                false,
            )
            .await;
            if let Ok(r) = &result {
                self.metrics
                    .partitions_compacted
                    .fetch_add(r.partitions as u64, Ordering::Relaxed);
            }
            match result {
                Ok(r) if r.partitions > 0 => {
                    tracing::info!(
                        partitions = r.partitions,
                        rows = r.rows_out,
                        "lake: compaction run"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "lake: compaction failed; retrying next interval")
                }
            }
            let retention =
                crate::retention::apply(&self.store, &self.config, &self.swap, now_ms).await;
            if let Err(e) = retention {
                tracing::error!(error = %e, "lake: retention failed; retrying next interval");
            }
            self.metrics.compaction_running.store(0, Ordering::Relaxed);
            self.metrics.compaction_runs.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
