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

/// The rows as JSON objects (one per row, column name to value): what the query API, the
/// devices overview and case evidence embed in their own JSON answers.
pub fn json_rows(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<serde_json::Value>> {
    let mut buf = Vec::new();
    write_output(OutputFormat::Json, schema, batches, &mut buf)?;
    serde_json::from_slice(&buf).map_err(|e| Error::Encode(e.to_string()))
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
            // arrow's ArrayWriter writes `[]` itself for no rows (the format tests hold it to
            // that: writing another pair made `[][]`).
            let mut w = arrow::json::ArrayWriter::new(out);
            let refs: Vec<&RecordBatch> = batches.iter().collect();
            w.write_batches(&refs).map_err(enc)?;
            w.finish().map_err(enc)?;
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("device_id", DataType::Utf8, false),
            Field::new("value", DataType::Float64, true),
        ]))
    }

    fn batch(rows: usize) -> Result<RecordBatch> {
        let ids: Vec<String> = (0..rows).map(|i| format!("dev-{i}")).collect();
        let values: Vec<Option<f64>> = (0..rows)
            .map(|i| (i % 2 == 0).then_some(i as f64))
            .collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(StringArray::from(ids)),
                Arc::new(Float64Array::from(values)),
            ],
        )
        .map_err(|e| Error::Encode(e.to_string()))
    }

    fn encode(format: OutputFormat, batches: &[RecordBatch]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        write_output(format, &schema(), batches, &mut out)?;
        Ok(out)
    }

    /// Found by the case manager's evidence query: an empty result was `[][]` (arrow writes
    /// `[]` itself for no rows and this function added another).
    #[test]
    fn json_is_one_array_with_or_without_rows()
    -> std::result::Result<(), Box<dyn std::error::Error>> {
        for (batches, rows) in [
            (vec![], 0),
            (vec![batch(0)?], 0),
            (vec![batch(0)?, batch(0)?], 0),
            (vec![batch(3)?], 3),
            (vec![batch(0)?, batch(2)?, batch(5)?], 7),
        ] {
            let out = encode(OutputFormat::Json, &batches)?;
            let v: serde_json::Value = serde_json::from_slice(&out)
                .map_err(|e| format!("{e}: {:?}", String::from_utf8_lossy(&out)))?;
            let arr = v.as_array().ok_or("not an array")?;
            assert_eq!(arr.len(), rows, "{v}");
            assert_eq!(&json_rows(&schema(), &batches)?, arr);
            if rows > 0 {
                assert_eq!(arr[0]["device_id"], "dev-0");
                assert_eq!(arr[0]["value"], 0.0);
            }
        }
        Ok(())
    }

    #[test]
    fn csv_has_the_header_even_without_rows() -> Result<()> {
        let out = encode(OutputFormat::Csv, &[])?;
        assert_eq!(String::from_utf8_lossy(&out).trim(), "device_id,value");
        let out = encode(OutputFormat::Csv, &[batch(2)?])?;
        let text = String::from_utf8_lossy(&out);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines, ["device_id,value", "dev-0,0.0", "dev-1,"]);
        Ok(())
    }

    #[test]
    fn arrow_ipc_round_trips_rows_and_schema() -> std::result::Result<(), Box<dyn std::error::Error>>
    {
        for batches in [vec![], vec![batch(4)?, batch(1)?]] {
            let out = encode(OutputFormat::Arrow, &batches)?;
            let r = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(out), None)?;
            assert_eq!(r.schema(), schema());
            let got: usize = r
                .map(|b| b.map(|b| b.num_rows()))
                .collect::<std::result::Result<Vec<_>, _>>()?
                .iter()
                .sum();
            assert_eq!(got, batches.iter().map(|b| b.num_rows()).sum::<usize>());
        }
        Ok(())
    }
}
