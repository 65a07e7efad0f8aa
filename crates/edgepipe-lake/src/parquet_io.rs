//! Parquet encoding with the lake's writer settings, and decoding for compaction and verify.
//!
//! Settings, and why: zstd on every column (level 1 for flushes, 3 for compacted files); dictionary encoding for the string ids
//! (`device_id`, `metric`, `quality`, `source`); `DELTA_BINARY_PACKED` for the timestamps and
//! `wal_seq` (regular 1 Hz series sort into near-constant deltas that pack to a few bits);
//! page statistics everywhere so readers prune row groups on `ts`.
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

fn properties(schema: &SchemaRef, row_group_rows: usize, level: i32) -> Result<WriterProperties> {
    let zstd = Compression::ZSTD(ZstdLevel::try_new(level)?);
    let mut b = WriterProperties::builder()
        .set_compression(zstd)
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("edgepipe {}", env!("CARGO_PKG_VERSION")));
    for f in schema.fields() {
        let path = ColumnPath::from(f.name().as_str());
        match f.name().as_str() {
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
        return encode_parallel(schema, batches, rows, row_group_rows, zstd_level, threads);
    }
    let mut w = StreamWriter::new(schema, row_group_rows, zstd_level)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()
}

/// One row group at a time: every column's writer goes to a queue that `threads` workers
/// drain; the finished chunks are appended in column order.
fn encode_parallel(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    total: usize,
    row_group_rows: usize,
    zstd_level: i32,
    threads: usize,
) -> Result<Bytes> {
    let mut buf = Vec::new();
    let props = properties(schema, row_group_rows, zstd_level)?;
    // The ArrowWriter embeds the Arrow schema in the file's metadata, as the serial path does.
    let (mut file, factory) =
        ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))?.into_serialized_writer()?;
    let group_rows = row_group_rows.max(1);
    // Row groups of `group_rows` rows, each made of slices of the input batches (no copy).
    let mut pieces: Vec<RecordBatch> = Vec::new();
    let mut in_group = 0;
    let mut group = 0;
    let mut pending = batches.iter().filter(|b| b.num_rows() > 0).cloned();
    let mut current = pending.next();
    let mut done = 0;
    while let Some(batch) = current.take() {
        let take = (group_rows - in_group).min(batch.num_rows());
        pieces.push(batch.slice(0, take));
        in_group += take;
        done += take;
        current = if take < batch.num_rows() {
            Some(batch.slice(take, batch.num_rows() - take))
        } else {
            pending.next()
        };
        if in_group == group_rows || done == total {
            let mut writers = factory.create_column_writers(group)?.into_iter();
            let mut jobs = Vec::new();
            for (j, field) in schema.fields().iter().enumerate() {
                let mut leaves = Vec::new();
                for piece in &pieces {
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
                    let writer = writers.next().ok_or_else(|| {
                        Error::Config(format!("no parquet column writer for {}", field.name()))
                    })?;
                    jobs.push((writer, leaf_parts));
                }
            }
            let chunks = encode_columns(jobs, threads)?;
            let mut row_group = file.next_row_group()?;
            for chunk in chunks {
                chunk.append_to_row_group(&mut row_group)?;
            }
            row_group.close()?;
            pieces.clear();
            in_group = 0;
            group += 1;
        }
    }
    file.close()?;
    Ok(Bytes::from(buf))
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
    use arrow::compute::concat_batches;
    use edgepipe_types::{DeviceId, IngestRecord, Metric, Reading, Transport, TsSource, Value};

    #[test]
    fn parallel_and_serial_encodes_hold_the_same_rows() -> Result<(), Box<dyn std::error::Error>> {
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
        let batch = b.finish()?;
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
}
