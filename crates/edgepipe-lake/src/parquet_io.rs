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

/// Encodes with a chosen zstd level (the lake writer's flushes use 1: they are rewritten by
/// compaction, so speed matters more than size).
pub fn encode_parquet_level(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    row_group_rows: usize,
    zstd_level: i32,
) -> Result<Bytes> {
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(
        &mut buf,
        schema.clone(),
        Some(properties(schema, row_group_rows, zstd_level)?),
    )?;
    for b in batches {
        w.write(b)?;
    }
    w.close()?;
    Ok(Bytes::from(buf))
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
