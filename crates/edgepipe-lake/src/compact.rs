//! Compaction: a partition's small files become a few large ones, deduplicated on
//! `(device_id, metric, ts)` with the last WAL write winning, and its rollups are (re)written.
//!
//! Atomicity for our own queries: outputs are encoded first, then, holding the [`SwapLock`] for
//! writing, the outputs are stored and the inputs deleted. Queries hold the lock for reading
//! while they list and read files, so they see either the inputs or the outputs, never both and
//! never neither. Crash safety: an intent marker `_edgepipe/compaction/<date>-<hour>.json` names
//! inputs and outputs before anything changes; on start, a marker whose outputs all exist
//! finishes the swap (deletes the inputs), any other marker is rolled back (deletes the outputs
//! written so far). External readers (DuckDB, Spark) do not take our lock: for the moment between
//! storing the outputs and deleting the inputs (milliseconds on a local disk, one DELETE round
//! trip per input on S3) a scan that lists the partition then may count a compacted reading
//! twice. Compaction only touches flush files already checkpointed, never a flush in progress.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Float64Array, Float64Builder, Int64Builder, RecordBatch,
    StringArray, StringBuilder, TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::LakeConfig;
use crate::parquet_io::{decode_parquet, encode_parquet};
use crate::schema::{HOUR_US, hour_of_key, readings_schema, rollup_schema};
use crate::store::LakeStore;
use crate::writer::sort_readings;
use crate::{Error, Result, tables};

/// The lock that makes compaction's file swap atomic for our queries.
pub type SwapLock = Arc<tokio::sync::RwLock<()>>;

const MARKER_PREFIX: &str = "_edgepipe/compaction/";

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

#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// A file in a `readings` partition, as named by the writer or the compactor.
#[derive(Debug, Clone)]
struct LakeFile {
    key: String,
    first: u64,
    last: u64,
    compacted: bool,
}

fn parse_file(key: &str) -> Option<LakeFile> {
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
    })
}

/// The highest WAL sequence any `readings` file covers, if there is one.
pub(crate) async fn max_wal_seq(store: &LakeStore) -> Result<Option<u64>> {
    Ok(store
        .list(&format!("{}/", tables::READINGS))
        .await?
        .iter()
        .filter_map(|(k, _)| parse_file(k))
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
    for (key, _) in store.list(&format!("{}/", tables::READINGS)).await? {
        let Some(f) = parse_file(&key) else {
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
    let schema = readings_schema();
    let mut batches = Vec::new();
    let mut bytes_in = 0u64;
    for f in &files {
        let data = store.get(&f.key).await?;
        bytes_in += data.len() as u64;
        let (_, bs) = decode_parquet(data).map_err(|e| Error::Corrupt {
            key: f.key.clone(),
            reason: e.to_string(),
        })?;
        for b in bs {
            batches.push(conform(&b, &schema).map_err(|e| Error::Corrupt {
                key: f.key.clone(),
                reason: e.to_string(),
            })?);
        }
    }
    let rows_in: usize = batches.iter().map(|b| b.num_rows()).sum();
    let row_group_rows = config.row_group_rows;
    let target = config.target_file_bytes;
    let first = files.iter().map(|f| f.first).min().unwrap_or(0);
    let last = files.iter().map(|f| f.last).max().unwrap_or(0);
    let dir_owned = dir.to_owned();
    let rollups = config.rollups;
    let (outputs, rollup_files, rows_out) = tokio::task::spawn_blocking(move || {
        let sorted = sort_readings(&batches)?;
        let deduped = dedup_last_wins(&sorted)?;
        let rows_out = deduped.num_rows();
        let per_row = (bytes_in as f64 / rows_in.max(1) as f64).max(0.5);
        let rows_per_file = ((target as f64 / per_row) as usize).max(row_group_rows);
        let mut outputs = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while start < rows_out {
            let n = rows_per_file.min(rows_out - start);
            let key = format!("{dir_owned}/compacted-{first:020}-{last:020}-{i:03}.parquet");
            outputs.push((
                key,
                encode_parquet(&schema, &[deduped.slice(start, n)], row_group_rows)?,
            ));
            start += n;
            i += 1;
        }
        let rollup_files = if rollups {
            rollup_outputs(&dir_owned, &deduped, row_group_rows)?
        } else {
            Vec::new()
        };
        Ok::<_, Error>((outputs, rollup_files, rows_out))
    })
    .await
    .map_err(|e| Error::Config(format!("compaction task failed: {e}")))??;

    let marker_key = format!("{MARKER_PREFIX}{}.json", dir.replace('/', "_"));
    let marker = Marker {
        inputs: files.iter().map(|f| f.key.clone()).collect(),
        outputs: outputs.iter().map(|(k, _)| k.clone()).collect(),
    };
    let mb = serde_json::to_vec(&marker).map_err(|e| Error::Config(format!("marker: {e}")))?;
    store.put(&marker_key, Bytes::from(mb)).await?;
    {
        let _w = swap.write().await;
        // Rollups inside the swap too: a query that read the hour's rollup must not see the
        // rewritten one (with rows it also reads from the fresh buffer or flush files). They
        // are a pure function of the deduplicated rows, so a crash after writing them but
        // before the swap finishes only rewrites them the same way on the next run.
        for (key, data) in &rollup_files {
            store.put(key, data.clone()).await?;
        }
        for (key, data) in &outputs {
            store.put(key, data.clone()).await?;
        }
        for f in &files {
            if !outputs.iter().any(|(k, _)| k == &f.key) {
                store.delete(&f.key).await?;
            }
        }
    }
    store.delete(&marker_key).await?;
    report.partitions += 1;
    report.files_in += files.len();
    report.files_out += outputs.len();
    report.rows_in += rows_in as u64;
    report.rows_out += rows_out as u64;
    report.duplicates_removed += (rows_in - rows_out) as u64;
    report.bytes_in += bytes_in;
    report.bytes_out += outputs.iter().map(|(_, d)| d.len() as u64).sum::<u64>();
    tracing::info!(
        partition = dir,
        files_in = files.len(),
        rows_in,
        rows_out,
        "lake: compacted"
    );
    Ok(())
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

/// 1-minute and 1-hour rollups of one partition's deduplicated rows (sorted by device, metric,
/// ts), as `(key, parquet)` pairs.
fn rollup_outputs(
    dir: &str,
    rows: &RecordBatch,
    row_group_rows: usize,
) -> Result<Vec<(String, Bytes)>> {
    let suffix = dir
        .strip_prefix(&format!("{}/", tables::READINGS))
        .unwrap_or(dir);
    let mut out = Vec::new();
    for (table, width_us) in [
        (tables::ROLLUP_1M, 60_000_000i64),
        (tables::ROLLUP_1H, HOUR_US),
    ] {
        let batch = rollup(rows, width_us)?;
        out.push((
            format!("{table}/{suffix}/rollup.parquet"),
            encode_parquet(&rollup_schema(), &[batch], row_group_rows)?,
        ));
    }
    Ok(out)
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

/// Finishes or rolls back compactions interrupted by a crash. Call before anything else
/// touches the lake.
pub(crate) async fn recover_compactions(store: &LakeStore) -> Result<()> {
    for (key, _) in store.list(MARKER_PREFIX).await? {
        let data = store.get(&key).await?;
        let marker: Marker = serde_json::from_slice(&data).map_err(|e| Error::Corrupt {
            key: key.clone(),
            reason: format!("compaction marker does not parse: {e}"),
        })?;
        let mut all_outputs = true;
        for o in &marker.outputs {
            if !store.exists(o).await? {
                all_outputs = false;
            }
        }
        if all_outputs {
            tracing::warn!(
                marker = key,
                "lake: finishing a compaction interrupted by a crash"
            );
            for i in &marker.inputs {
                if !marker.outputs.contains(i) {
                    store.delete(i).await?;
                }
            }
        } else {
            tracing::warn!(
                marker = key,
                "lake: rolling back a compaction interrupted by a crash"
            );
            for o in &marker.outputs {
                if !marker.inputs.contains(o) {
                    store.delete(o).await?;
                }
            }
        }
        store.delete(&key).await?;
    }
    Ok(())
}

impl Compactor {
    /// Compacts every `compaction_interval` until `stop` turns true. `committed` reports the
    /// lake writer's checkpoint.
    pub async fn run(
        self,
        committed: impl Fn() -> u64 + Send,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if self.config.compaction_interval.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.config.compaction_interval) => {}
                _ = stop.changed() => {}
            }
            if *stop.borrow() {
                return;
            }
            let now_ms = chrono::Utc::now().timestamp_millis();
            match compact(
                &self.store,
                &self.config,
                &self.swap,
                committed(),
                now_ms,
                false,
            )
            .await
            {
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
        }
    }
}
