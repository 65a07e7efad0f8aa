//! Parquet encoding with the lake's writer settings, and decoding for compaction and verify.
//!
//! Settings, and why: zstd on every column (level 1 for flushes, 3 for compacted files);
//! dictionary encoding for the string columns (`device_id`, `metric`, `quality`, `source`),
//! except `quality` and `source` in flush files, which compaction rewrites (see [`Purpose`]);
//! `DELTA_BINARY_PACKED` for the timestamps and `wal_seq` (regular 1 Hz series sort into
//! near-constant deltas that pack to a few bits); page statistics on every column but a flush
//! file's `quality` and `source`, so readers prune row groups on `ts`, `device_id` and `metric`.
//!
//! Only encodings every reader we promise handles: `BYTE_STREAM_SPLIT` would shrink float
//! columns, but Spark 4.0's vectorized reader refuses it ("Unsupported encoding"), found by the
//! pyspark end-to-end test.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::arrow_writer::{
    ArrowColumnChunk, ArrowColumnWriter, ArrowLeafColumn, compute_leaves,
};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::{Error, Result};

/// What a file is for, which decides the string columns' encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// A file that lives: compaction's outputs, the small tables, encode-only measurements.
    /// Every string column dictionary-encoded, statistics everywhere.
    Kept,
    /// A lake writer's flush file, rewritten by compaction within `compact_after`: the ids
    /// (`device_id`, `metric`) dictionary-encoded with statistics as in kept files, but
    /// `quality` and `source` `PLAIN` without statistics. Those two usually hold one or two
    /// values per file, and interning them per row (plus min/max compares) cost ~5 % of a
    /// backlog write's CPU (BENCHMARKS.md, lake, session 15); zstd folds their repeated
    /// bytes, so the files are barely larger.
    Flush,
}

fn properties(
    schema: &SchemaRef,
    row_group_rows: usize,
    level: i32,
    purpose: Purpose,
) -> Result<WriterProperties> {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(level)?);
    let mut b = WriterProperties::builder()
        .set_compression(zstd)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("edgepipe {}", env!("CARGO_PKG_VERSION")));
    let flush = purpose == Purpose::Flush;
    for f in schema.fields() {
        let path = ColumnPath::from(f.name().as_str());
        match f.name().as_str() {
            "quality" | "source" if flush => {
                b = b
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path.clone(), Encoding::PLAIN)
                    .set_column_statistics_enabled(path, EnabledStatistics::None);
            }
            "ts" | "received_at" | "wal_seq" | "bucket" | "count" => {
                b = b
                    .set_column_dictionary_enabled(path.clone(), false)
                    .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
            }
            _ => {}
        }
    }
    Ok(b.build())
}

/// Encodes batches (all of `schema`) as one Parquet file, zstd level 3 (compaction outputs and
/// the small tables: files that live long).
pub fn encode_parquet(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    row_group_rows: usize,
) -> Result<Bytes> {
    encode_parquet_level(schema, batches, row_group_rows, 3)
}

/// Rows below which a file is encoded on the calling thread only (threads cost more than
/// they save on small files).
const PARALLEL_MIN_ROWS: usize = 32 * 1024;

/// Encodes with a chosen zstd level (the lake writer's flushes use 1: they are rewritten by
/// compaction, so speed matters more than size).
///
/// Files of at least 32k rows have their columns encoded in parallel, on as many threads as
/// the machine has cores (at most one per column); they decode to the same rows either way.
pub fn encode_parquet_level(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    row_group_rows: usize,
    zstd_level: i32,
) -> Result<Bytes> {
    let threads = crate::parallel::threads_for(schema.fields().len());
    encode_with_threads(schema, batches, row_group_rows, zstd_level, threads)
}

fn encode_with_threads(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    row_group_rows: usize,
    zstd_level: i32,
    threads: usize,
) -> Result<Bytes> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if threads > 1 && rows >= PARALLEL_MIN_ROWS {
        let mut files = encode_files(
            schema,
            &[batches],
            row_group_rows,
            zstd_level,
            Purpose::Kept,
            threads,
        )?;
        return files
            .pop()
            .ok_or_else(|| Error::Config("parquet encoder returned no file".into()));
    }
    let mut w = StreamWriter::new(schema, row_group_rows, zstd_level)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()
}

/// Encodes the lake writer's flush files, one per batch (one per hour partition), zstd level
/// 1 with [`Purpose::Flush`] settings, all at once on the machine's cores when there are at
/// least 32k rows in all (see [`encode_files`]).
pub(crate) fn encode_flush_files(
    schema: &SchemaRef,
    files: &[RecordBatch],
    row_group_rows: usize,
) -> Result<Vec<Bytes>> {
    let rows: usize = files.iter().map(|b| b.num_rows()).sum();
    let threads = if rows >= PARALLEL_MIN_ROWS {
        crate::parallel::threads_for(schema.fields().len() * files.len())
    } else {
        1
    };
    let inputs: Vec<&[RecordBatch]> = files.iter().map(std::slice::from_ref).collect();
    encode_files(schema, &inputs, row_group_rows, 1, Purpose::Flush, threads)
}

/// Encodes several Parquet files (each made of its batches, all of `schema`) at once: every
/// column of every row group of every file is one job for `threads` workers, so the cores stay
/// busy even when the files differ in size or a file has few columns worth the work. The
/// finished column chunks are then appended in order; each file decodes to the same rows as
/// the serial path's.
pub(crate) fn encode_files(
    schema: &SchemaRef,
    files: &[&[RecordBatch]],
    row_group_rows: usize,
    zstd_level: i32,
    purpose: Purpose,
    threads: usize,
) -> Result<Vec<Bytes>> {
    let props = properties(schema, row_group_rows, zstd_level, purpose)?;
    let group_rows = row_group_rows.max(1);
    let mut writers = Vec::with_capacity(files.len());
    // Per file, the number of column jobs of each of its row groups.
    let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(files.len());
    let mut jobs: Vec<ColumnJob> = Vec::new();
    for batches in files {
        // The ArrowWriter embeds the Arrow schema in the file's metadata, as the serial path
        // does.
        let (file, factory) =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))?
                .into_serialized_writer()?;
        writers.push(file);
        let mut shape = Vec::new();
        for (g, pieces) in row_groups(batches, group_rows).iter().enumerate() {
            let mut column_writers = factory.create_column_writers(g)?.into_iter();
            let before = jobs.len();
            for (j, field) in schema.fields().iter().enumerate() {
                let mut leaves = Vec::new();
                for piece in pieces {
                    leaves.push(compute_leaves(field, piece.column(j))?);
                }
                // Flat schemas have one leaf per column; nested ones several, in order.
                let per_piece = leaves.first().map_or(0, Vec::len);
                let mut by_leaf: Vec<Vec<ArrowLeafColumn>> =
                    (0..per_piece).map(|_| Vec::new()).collect();
                for piece_leaves in leaves {
                    for (k, leaf) in piece_leaves.into_iter().enumerate() {
                        if let Some(v) = by_leaf.get_mut(k) {
                            v.push(leaf);
                        }
                    }
                }
                for leaf_parts in by_leaf {
                    let writer = column_writers.next().ok_or_else(|| {
                        Error::Config(format!("no parquet column writer for {}", field.name()))
                    })?;
                    jobs.push((writer, leaf_parts));
                }
            }
            shape.push(jobs.len() - before);
        }
        shapes.push(shape);
    }
    let mut chunks = encode_columns(jobs, threads)?.into_iter();
    let mut out = Vec::with_capacity(files.len());
    for (mut file, shape) in writers.into_iter().zip(shapes) {
        for columns in shape {
            let mut row_group = file.next_row_group()?;
            for _ in 0..columns {
                let chunk = chunks
                    .next()
                    .ok_or_else(|| Error::Config("parquet encoder lost a column chunk".into()))?;
                chunk.append_to_row_group(&mut row_group)?;
            }
            row_group.close()?;
        }
        out.push(Bytes::from(file.into_inner()?));
    }
    Ok(out)
}

/// The input batches cut into row groups of `group_rows` rows, each made of slices of the
/// batches (no copy).
fn row_groups(batches: &[RecordBatch], group_rows: usize) -> Vec<Vec<RecordBatch>> {
    let mut groups = Vec::new();
    let mut pieces: Vec<RecordBatch> = Vec::new();
    let mut in_group = 0;
    for batch in batches.iter().filter(|b| b.num_rows() > 0) {
        let mut at = 0;
        while at < batch.num_rows() {
            let take = (group_rows - in_group).min(batch.num_rows() - at);
            pieces.push(batch.slice(at, take));
            in_group += take;
            at += take;
            if in_group == group_rows {
                groups.push(std::mem::take(&mut pieces));
                in_group = 0;
            }
        }
    }
    if !pieces.is_empty() {
        groups.push(pieces);
    }
    groups
}

type ColumnJob = (ArrowColumnWriter, Vec<ArrowLeafColumn>);

fn encode_columns(jobs: Vec<ColumnJob>, threads: usize) -> Result<Vec<ArrowColumnChunk>> {
    crate::parallel::map(jobs, threads, |(mut writer, leaves)| {
        for leaf in &leaves {
            writer.write(leaf)?;
        }
        Ok(writer.close()?)
    })
}

/// A Parquet file written batch by batch on one thread (compaction's outputs, small files):
/// only the row group being filled is held, already encoded page by page, never the file's rows.
/// It writes into `W`: memory (`Vec<u8>`) or a stream to the store.
pub(crate) struct StreamWriter<W: std::io::Write + Send = Vec<u8>> {
    writer: ArrowWriter<W>,
    rows: usize,
}

impl<W: std::io::Write + Send> std::fmt::Debug for StreamWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamWriter")
            .field("rows", &self.rows)
            .finish()
    }
}

impl StreamWriter<Vec<u8>> {
    /// A writer into memory with the lake's settings at zstd `level`.
    pub(crate) fn new(schema: &SchemaRef, row_group_rows: usize, level: i32) -> Result<Self> {
        Self::to(Vec::new(), schema, row_group_rows, level)
    }

    /// Closes the file and returns its bytes.
    pub(crate) fn finish(self) -> Result<Bytes> {
        Ok(Bytes::from(self.into_inner()?))
    }
}

impl<W: std::io::Write + Send> StreamWriter<W> {
    /// A writer into `out` with the lake's settings at zstd `level`.
    pub(crate) fn to(
        out: W,
        schema: &SchemaRef,
        row_group_rows: usize,
        level: i32,
    ) -> Result<Self> {
        let props = properties(schema, row_group_rows, level, Purpose::Kept)?;
        Ok(Self {
            writer: ArrowWriter::try_new(out, schema.clone(), Some(props))?,
            rows: 0,
        })
    }

    /// Appends rows.
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows();
        Ok(self.writer.write(batch)?)
    }

    /// Rows written so far.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Closes the file (writes the footer) and returns the output.
    pub(crate) fn into_inner(self) -> Result<W> {
        Ok(self.writer.into_inner()?)
    }
}

/// Decodes a whole Parquet file into batches.
pub fn decode_parquet(data: Bytes) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(data)?.with_batch_size(64 * 1024);
    let schema = builder.schema().clone();
    let reader = builder.build()?;
    let mut out = Vec::new();
    for b in reader {
        out.push(b.map_err(Error::from)?);
    }
    Ok((schema, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{RowsBuilder, readings_schema};
    use arrow::compute::concat_batches;
    use edgepipe_types::{DeviceId, IngestRecord, Metric, Reading, Transport, TsSource, Value};

    /// 5,000 seconds of 12 devices x 3 metrics (180,000 rows) of every value kind, some with
    /// tags.
    fn rows() -> Result<RecordBatch, Box<dyn std::error::Error>> {
        let mut b = RowsBuilder::new(300_000_000);
        let values = [
            Value::F64(1.5),
            Value::I64(7),
            Value::Bool(true),
            Value::Str("on".into()),
        ];
        for s in 0..5_000i64 {
            for d in 0..12 {
                let rec = IngestRecord {
                    device_id: DeviceId::new(format!("d{d}"))?,
                    received_at: 1_700_000_000_000 + s * 1000,
                    transport: Transport::Mqtt5,
                    origin: None,
                    tags: if d % 5 == 0 {
                        vec![("line".into(), "2".into())]
                    } else {
                        Vec::new()
                    },
                    readings: (0..3)
                        .map(|m| {
                            Ok(Reading {
                                metric: Metric::new(format!("m{m}"))?,
                                ts: 1_700_000_000_000 + s * 1000,
                                value: values[((s + d + m) % 4) as usize].clone(),
                                ts_source: TsSource::Device,
                            })
                        })
                        .collect::<Result<_, edgepipe_types::Error>>()?,
                };
                b.push_record(s as u64, &rec);
            }
        }
        Ok(b.finish()?)
    }

    #[test]
    fn parallel_and_serial_encodes_hold_the_same_rows() -> Result<(), Box<dyn std::error::Error>> {
        let batch = rows()?;
        let schema = readings_schema();
        // Two input batches and a row-group size that does not divide them: row groups span
        // batch boundaries.
        let parts = [
            batch.slice(0, 70_000),
            batch.slice(70_000, batch.num_rows() - 70_000),
        ];
        let serial = encode_with_threads(&schema, &parts, 50_000, 1, 1)?;
        let parallel = encode_with_threads(&schema, &parts, 50_000, 1, 3)?;
        let (s1, a) = decode_parquet(serial)?;
        let (s2, b) = decode_parquet(parallel.clone())?;
        assert_eq!(s1, s2);
        let a = concat_batches(&s1, &a)?;
        let b = concat_batches(&s2, &b)?;
        assert_eq!(a, b);
        assert_eq!(b, batch);
        let meta = ParquetRecordBatchReaderBuilder::try_new(parallel)?
            .metadata()
            .clone();
        assert_eq!(meta.num_row_groups(), 4);
        Ok(())
    }

    /// Several files encoded at once (the flush path) hold, file by file, the rows the serial
    /// writer gives each, whatever their sizes (a row group cut mid-file, a file smaller than a
    /// row group, an empty file) and however many threads share the jobs.
    #[test]
    fn files_encoded_together_each_hold_their_own_rows() -> Result<(), Box<dyn std::error::Error>> {
        let batch = rows()?;
        let schema = readings_schema();
        let inputs = [
            batch.slice(0, 120_000),
            batch.slice(120_000, 7),
            batch.slice(120_007, 0),
            batch.slice(120_007, batch.num_rows() - 120_007),
        ];
        for threads in [1, 2, 5] {
            let refs: Vec<&[RecordBatch]> = inputs.iter().map(std::slice::from_ref).collect();
            let files = encode_files(&schema, &refs, 50_000, 1, Purpose::Flush, threads)?;
            assert_eq!(files.len(), inputs.len());
            for (file, input) in files.into_iter().zip(&inputs) {
                let meta = ParquetRecordBatchReaderBuilder::try_new(file.clone())?
                    .metadata()
                    .clone();
                assert_eq!(meta.num_row_groups(), input.num_rows().div_ceil(50_000));
                let (s, got) = decode_parquet(file)?;
                assert_eq!(s, schema);
                assert_eq!(concat_batches(&s, &got)?, *input, "threads {threads}");
            }
        }
        Ok(())
    }

    /// Flush files: ids dictionary-encoded with statistics (readers prune on them), `quality`
    /// and `source` plain without; files that live keep dictionaries and statistics on all.
    #[test]
    fn flush_files_keep_dictionary_ids_and_plain_quality_and_source()
    -> Result<(), Box<dyn std::error::Error>> {
        let batch = rows()?;
        let schema = readings_schema();
        let flush = encode_flush_files(&schema, std::slice::from_ref(&batch), 64 * 1024)?;
        let kept = encode_parquet_level(&schema, std::slice::from_ref(&batch), 64 * 1024, 1)?;
        for (file, is_flush) in [(flush[0].clone(), true), (kept, false)] {
            let meta = ParquetRecordBatchReaderBuilder::try_new(file)?
                .metadata()
                .clone();
            for rg in meta.row_groups() {
                for col in rg.columns() {
                    let name = col.column_path().string();
                    let dict = col.dictionary_page_offset().is_some();
                    let stats = col.statistics().is_some();
                    match name.as_str() {
                        "device_id" | "metric" => assert!(dict && stats, "{name}"),
                        "quality" | "source" if is_flush => {
                            assert!(!dict && !stats, "flush {name}")
                        }
                        "quality" | "source" => assert!(dict && stats, "kept {name}"),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}
