//! Result encodings: a text table for terminals, CSV, JSON (array of objects) and Arrow IPC
//! (stream format) for clients that want columns.

use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;

use crate::{Error, Result};

/// How to encode a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Aligned text table.
    Table,
    /// CSV with a header row.
    Csv,
    /// JSON array of row objects.
    Json,
    /// Arrow IPC stream.
    Arrow,
}

impl OutputFormat {
    /// Parses `table`, `csv`, `json` or `arrow`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" => Ok(Self::Json),
            "arrow" => Ok(Self::Arrow),
            other => Err(Error::BadRequest(format!(
                "unknown format {other:?} (use table, csv, json or arrow)"
            ))),
        }
    }

    /// MIME type for HTTP responses.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Table => "text/plain; charset=utf-8",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
            Self::Arrow => "application/vnd.apache.arrow.stream",
        }
    }
}

/// Encodes batches in `format` into `out`.
pub fn write_output(
    format: OutputFormat,
    schema: &SchemaRef,
    batches: &[RecordBatch],
    out: &mut impl Write,
) -> Result<()> {
    let enc = |e: arrow::error::ArrowError| Error::Encode(e.to_string());
    match format {
        OutputFormat::Table => {
            let t = arrow::util::pretty::pretty_format_batches(batches).map_err(enc)?;
            writeln!(out, "{t}").map_err(|e| Error::Encode(e.to_string()))?;
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(schema.clone()))
                    .map_err(enc)?;
            }
            for b in batches {
                w.write(b).map_err(enc)?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::ArrayWriter::new(out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs).map_err(enc)?;
            w.finish().map_err(enc)?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                // ArrayWriter writes nothing for no rows; a JSON client expects an array.
                let inner = w.into_inner();
                inner
                    .write_all(b"[]")
                    .map_err(|e| Error::Encode(e.to_string()))?;
            }
        }
        OutputFormat::Arrow => {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(out, schema).map_err(enc)?;
            for b in batches {
                w.write(b).map_err(enc)?;
            }
            w.finish().map_err(enc)?;
        }
    }
    Ok(())
}
