//! Parquet encoding with the lake's writer settings, and decoding for compaction and verify.
//!
//! Settings, and why: zstd on every column (level 1 for flushes, 3 for compacted files);
//! dictionary encoding for the string columns (`device_id`, `metric`, `quality`, `source`);
//! `DELTA_BINARY_PACKED` for the timestamps and `wal_seq` (regular 1 Hz series sort into
//! near-constant deltas that pack to a few bits); page statistics on every column, so readers
//! prune row groups and pages on `ts`, `device_id` and `metric`. A flush file's string columns
//! that come in runs (the ids after the sort; `quality` and `source` when they hold one value)
//! are written from the runs by [`crate::runs`], in the same layout.
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
use parquet::schema::types::{ColumnDescPtr, ColumnPath};

use crate::column::Column;
use crate::runs::Runs;

use crate::{Error, Result};

fn properties(schema: &SchemaRef, row_group_rows: usize, level: i32) -> Result<WriterProperties> {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(level)?);
    let mut b = WriterProperties::builder()
        .set_compression(zstd)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("edgepipe {}", env!("CARGO_PKG_VERSION")));
    for f in schema.fields() {
        let path = ColumnPath::from(f.name().as_str());
        if let "ts" | "received_at" | "wal_seq" | "bucket" | "count" = f.name().as_str() {
            b = b
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED);
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
        let groups = row_groups(batches, row_group_rows.max(1))
            .into_iter()
            .map(|pieces| {
                (0..schema.fields().len())
                    .map(|j| Column::Arrays(pieces.iter().map(|p| p.column(j).clone()).collect()))
                    .collect()
            })
            .collect();
        let mut files = encode_files(schema, vec![groups], row_group_rows, zstd_level, threads)?;
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

/// Encodes the lake writer's flush files (one per hour partition, each its columns of equal
/// length), zstd level 1, all at once on the machine's cores when there are at least 32k rows
/// in all (see [`encode_files`]). Columns given as runs are written from the runs.
pub(crate) fn encode_flush_files(
    schema: &SchemaRef,
    files: &[(usize, Vec<Column<'_>>)],
    row_group_rows: usize,
) -> Result<Vec<Bytes>> {
    let rows: usize = files.iter().map(|f| f.0).sum();
    let threads = if rows >= PARALLEL_MIN_ROWS {
        crate::parallel::threads_for(schema.fields().len() * files.len())
    } else {
        1
    };
    let inputs = cut_row_groups(files, row_group_rows);
    encode_files(schema, inputs, row_group_rows, 1, threads)
}

/// Files given as `(rows, columns)` cut into row groups of `row_group_rows` rows (slices, no
/// copy).
fn cut_row_groups<'a>(
    files: &[(usize, Vec<Column<'a>>)],
    row_group_rows: usize,
) -> Vec<FileInput<'a>> {
    let group_rows = row_group_rows.max(1);
    files
        .iter()
        .map(|(rows, columns)| {
            (0..*rows)
                .step_by(group_rows)
                .map(|at| {
                    let len = group_rows.min(rows - at);
                    columns.iter().map(|c| c.slice(at, len)).collect()
                })
                .collect()
        })
        .collect()
}

/// A file to encode: its row groups, each one [`Column`] per schema field.
type FileInput<'a> = Vec<Vec<Column<'a>>>;

/// Encodes several Parquet files (each given by its row groups, all of `schema`) at once: every
/// column of every row group of every file is one job for `threads` workers, so the cores stay
/// busy even when the files differ in size or a file has few columns worth the work. The
/// finished column chunks are then appended in order; each file decodes to the same rows as
/// the serial path's.
fn encode_files(
    schema: &SchemaRef,
    files: Vec<FileInput<'_>>,
    row_group_rows: usize,
    zstd_level: i32,
    threads: usize,
) -> Result<Vec<Bytes>> {
    let props = properties(schema, row_group_rows, zstd_level)?;
    // Pages of runs end where the arrow-rs writer's would: it checks the row limit after each
    // write batch, so its pages hold the limit rounded up to whole write batches.
    let batch = props.write_batch_size().max(1);
    let page_rows = props.data_page_row_count_limit().div_ceil(batch) * batch;
    let mut writers = Vec::with_capacity(files.len());
    // Per file, the number of column jobs of each of its row groups.
    let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(files.len());
    let mut jobs: Vec<ColumnJob> = Vec::new();
    for groups in files {
        // The ArrowWriter embeds the Arrow schema in the file's metadata, as the serial path
        // does.
        let (file, factory) =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))?
                .into_serialized_writer()?;
        let descr = file.schema_descr().clone();
        writers.push(file);
        let mut shape = Vec::new();
        for (g, columns) in groups.into_iter().enumerate() {
            let mut column_writers = factory.create_column_writers(g)?.into_iter();
            let mut leaf = 0usize;
            let before = jobs.len();
            for (field, column) in schema.fields().iter().zip(columns) {
                let pieces = match column {
                    Column::Runs(runs) => {
                        // A flat string column: one leaf, its writer not needed.
                        column_writers.next();
                        jobs.push(ColumnJob::Runs(
                            descr.column(leaf),
                            runs,
                            zstd_level,
                            page_rows,
                        ));
                        leaf += 1;
                        continue;
                    }
                    Column::Arrays(pieces) => pieces,
                };
                let mut leaves = Vec::new();
                for piece in &pieces {
                    leaves.push(compute_leaves(field, piece)?);
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
                    jobs.push(ColumnJob::Arrow(Box::new(writer), leaf_parts));
                    leaf += 1;
                }
            }
            shape.push(jobs.len() - before);
        }
        shapes.push(shape);
    }
    let mut chunks = encode_columns(jobs, threads)?.into_iter();
    let mut out = Vec::with_capacity(writers.len());
    for (mut file, shape) in writers.into_iter().zip(shapes) {
        for columns in shape {
            let mut row_group = file.next_row_group()?;
            for _ in 0..columns {
                match chunks.next() {
                    Some(EncodedChunk::Arrow(chunk)) => {
                        chunk.append_to_row_group(&mut row_group)?
                    }
                    Some(EncodedChunk::Runs(chunk)) => {
                        row_group.append_column(&chunk.bytes, chunk.close)?
                    }
                    None => {
                        return Err(Error::Config("parquet encoder lost a column chunk".into()));
                    }
                }
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

/// One column chunk to encode: by the arrow-rs writer from Arrow leaves, or from runs.
enum ColumnJob<'a> {
    Arrow(Box<ArrowColumnWriter>, Vec<ArrowLeafColumn>),
    Runs(ColumnDescPtr, Runs<'a>, i32, usize),
}

enum EncodedChunk {
    Arrow(ArrowColumnChunk),
    Runs(crate::runs::Chunk),
}

fn encode_columns(jobs: Vec<ColumnJob<'_>>, threads: usize) -> Result<Vec<EncodedChunk>> {
    crate::parallel::map(jobs, threads, |job| match job {
        ColumnJob::Arrow(mut writer, leaves) => {
            for leaf in &leaves {
                writer.write(leaf)?;
            }
            Ok(EncodedChunk::Arrow(writer.close()?))
        }
        ColumnJob::Runs(descr, runs, level, page_rows) => Ok(EncodedChunk::Runs(
            crate::runs::encode_chunk(descr, &runs, level, page_rows)?,
        )),
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
        let props = properties(schema, row_group_rows, level)?;
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
    use arrow::array::AsArray;
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

    /// A file's columns for the flush path: `device_id`, `metric`, `quality` and `source` as
    /// runs (as the sort gives them), the rest as arrays.
    fn flush_columns(batch: &RecordBatch) -> Vec<Column<'_>> {
        batch
            .schema()
            .fields()
            .iter()
            .enumerate()
            .map(|(j, f)| match f.name().as_str() {
                "device_id" | "metric" | "quality" | "source" => {
                    let a = batch.column(j).as_string::<i32>();
                    let mut runs: Runs<'_> = Vec::new();
                    for v in a.iter().flatten() {
                        match runs.last_mut() {
                            Some(last) if last.0 == v => last.1 += 1,
                            _ => runs.push((v, 1)),
                        }
                    }
                    Column::Runs(runs)
                }
                _ => Column::Arrays(vec![batch.column(j).clone()]),
            })
            .collect()
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
        let files_in: Vec<(usize, Vec<Column<'_>>)> = inputs
            .iter()
            .map(|b| (b.num_rows(), flush_columns(b)))
            .collect();
        for threads in [1, 2, 5] {
            let groups = cut_row_groups(&files_in, 50_000);
            let files = encode_files(&schema, groups, 50_000, 1, threads)?;
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
        let flushed = encode_flush_files(&schema, &files_in, 64 * 1024)?;
        for (file, input) in flushed.into_iter().zip(&inputs) {
            let (s, got) = decode_parquet(file)?;
            assert_eq!(concat_batches(&s, &got)?, *input);
        }
        Ok(())
    }

    /// String columns written from runs carry what the arrow-rs writer gives the same rows:
    /// a dictionary page, chunk statistics, a column index with the same page bounds and
    /// boundary order, an offset index with the same row counts; and a reader using the page
    /// index (row selection on a page-pruning predicate) reads the same rows.
    #[test]
    fn run_columns_carry_the_metadata_the_arrow_writer_gives()
    -> Result<(), Box<dyn std::error::Error>> {
        use parquet::arrow::arrow_reader::ArrowReaderOptions;
        use parquet::file::metadata::PageIndexPolicy;
        use parquet::file::page_index::column_index::ColumnIndexMetaData;
        let batch = rows()?;
        let sorted = crate::sort::sort_readings(std::slice::from_ref(&batch))?;
        let schema = readings_schema();
        let ours = encode_flush_files(
            &schema,
            &[(sorted.num_rows(), flush_columns(&sorted))],
            64 * 1024,
        )?
        .remove(0);
        let theirs = encode_with_threads(&schema, std::slice::from_ref(&sorted), 64 * 1024, 1, 1)?;
        let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Required);
        let meta = |f: &Bytes| -> Result<_, Box<dyn std::error::Error>> {
            Ok(
                ParquetRecordBatchReaderBuilder::try_new_with_options(f.clone(), options.clone())?
                    .metadata()
                    .clone(),
            )
        };
        let (a, b) = (meta(&ours)?, meta(&theirs)?);
        assert_eq!(a.num_row_groups(), b.num_row_groups());
        let (ca, cb) = (
            a.column_index().ok_or("no column index")?,
            b.column_index().ok_or("no column index")?,
        );
        let (oa, ob) = (
            a.offset_index().ok_or("no offset index")?,
            b.offset_index().ok_or("no offset index")?,
        );
        for (g, (ra, rb)) in a.row_groups().iter().zip(b.row_groups()).enumerate() {
            for (j, (x, y)) in ra.columns().iter().zip(rb.columns()).enumerate() {
                let name = x.column_path().string();
                assert_eq!(x.num_values(), y.num_values(), "{name}");
                assert_eq!(
                    x.statistics().map(|s| (
                        s.min_bytes_opt(),
                        s.max_bytes_opt(),
                        s.null_count_opt()
                    )),
                    y.statistics().map(|s| (
                        s.min_bytes_opt(),
                        s.max_bytes_opt(),
                        s.null_count_opt()
                    )),
                    "{name} statistics"
                );
                if !matches!(name.as_str(), "device_id" | "metric" | "quality" | "source") {
                    continue;
                }
                assert!(x.dictionary_page_offset().is_some(), "{name}");
                let rows = |o: &parquet::file::page_index::offset_index::OffsetIndexMetaData| {
                    o.page_locations()
                        .iter()
                        .map(|p| p.first_row_index)
                        .collect::<Vec<_>>()
                };
                assert_eq!(rows(&oa[g][j]), rows(&ob[g][j]), "{name} page rows");
                assert_eq!(
                    ca[g][j].get_boundary_order(),
                    cb[g][j].get_boundary_order(),
                    "{name} order"
                );
                match (&ca[g][j], &cb[g][j]) {
                    (ColumnIndexMetaData::BYTE_ARRAY(x), ColumnIndexMetaData::BYTE_ARRAY(y)) => {
                        let bounds =
                            |i: &parquet::file::page_index::column_index::ByteArrayColumnIndex| {
                                (0..i.num_pages() as usize)
                                    .map(|p| {
                                        (
                                            i.min_value(p).map(|v| v.to_vec()),
                                            i.max_value(p).map(|v| v.to_vec()),
                                        )
                                    })
                                    .collect::<Vec<_>>()
                            };
                        assert_eq!(bounds(x), bounds(y), "{name} page bounds");
                    }
                    other => panic!("{name}: column index {other:?}"),
                }
            }
        }
        let (_, got) = decode_parquet(ours.clone())?;
        assert_eq!(concat_batches(&schema, &got)?, sorted);
        Ok(())
    }

    /// Dictionary ids of one, two and three bytes (up to 70,000 distinct values), runs cut by
    /// pages and row groups, values repeated after others: the rows read back are the runs'.
    #[test]
    fn run_columns_of_many_distinct_values_read_back() -> Result<(), Box<dyn std::error::Error>> {
        use arrow::datatypes::{DataType, Field, Schema};
        use std::sync::Arc;
        let schema: SchemaRef = Arc::new(Schema::new(vec![Field::new("s", DataType::Utf8, false)]));
        for distinct in [1usize, 2, 255, 256, 70_000] {
            let names: Vec<String> = (0..distinct)
                .map(|i| format!("v{:05}", (i * 7919) % distinct))
                .collect();
            // Run lengths 1..=5, and every value again at the end (ids seen before).
            let mut runs: Runs<'_> = names
                .iter()
                .enumerate()
                .map(|(i, v)| (v.as_str(), i % 5 + 1))
                .collect();
            runs.extend(names.iter().take(300).map(|v| (v.as_str(), 2)));
            let rows = crate::runs::rows(&runs);
            let file = encode_flush_files(
                &schema,
                &[(rows, vec![Column::Runs(runs.clone())])],
                100_000,
            )?
            .remove(0);
            let (s, got) = decode_parquet(file)?;
            let got = concat_batches(&s, &got)?;
            assert_eq!(got.num_rows(), rows, "{distinct}");
            assert_eq!(got.column(0), &crate::runs::to_array(&runs), "{distinct}");
        }
        Ok(())
    }

    #[test]
    fn runs_slice_and_expand_to_the_rows_they_cover() {
        let runs = vec![("a", 3), ("b", 0), ("c", 2), ("a", 4)];
        assert_eq!(crate::runs::rows(&runs), 9);
        assert_eq!(
            crate::runs::slice(&runs, 2, 4),
            vec![("a", 1), ("c", 2), ("a", 1)]
        );
        assert_eq!(crate::runs::slice(&runs, 9, 0), Vec::<(&str, usize)>::new());
        let a = crate::runs::to_array(&crate::runs::slice(&runs, 1, 6));
        let a = a.as_string::<i32>();
        let v: Vec<&str> = a.iter().flatten().collect();
        assert_eq!(v, ["a", "a", "c", "c", "a", "a"]);
    }
}
