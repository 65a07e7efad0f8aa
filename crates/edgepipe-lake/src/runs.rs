//! String columns written from runs of one value, without per-row work.
//!
//! After the flush sort, a file's `device_id` and `metric` columns are runs: the sort knows
//! each series' run of rows. `quality` and `source` usually hold one value for a whole flush.
//! The arrow-rs writer would take such a column row by row: it interns every row's string into
//! the dictionary and compares it with the page's min and max. That was ~15 % of a flush's CPU
//! (BENCHMARKS.md, lake, sessions 15 and 16).
//!
//! [`encode_chunk`] writes the column chunk from the runs, in the layout the arrow-rs writer
//! gives the same rows:
//! - one PLAIN dictionary page of the distinct values (first-seen order);
//! - `RLE_DICTIONARY` data pages of at most `page_rows` rows, one RLE run per input run;
//! - zstd on every page;
//! - chunk statistics (min, max, no nulls);
//! - a column index (min and max per page) and an offset index.
//!
//! The row group writer then takes the chunk as already encoded
//! ([`SerializedRowGroupWriter::append_column`]). Readers get the same rows and metadata as
//! from the arrow-rs writer. Tests decode both and compare; the end-to-end tests read such
//! files with pyarrow, DuckDB and Spark.
//!
//! [`SerializedRowGroupWriter::append_column`]: parquet::file::writer::SerializedRowGroupWriter::append_column

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};

use bytes::Bytes;
use parquet::basic::{BoundaryOrder, Compression, Encoding, EncodingMask, PageType, ZstdLevel};
use parquet::column::page::{CompressedPage, Page, PageWriter};
use parquet::column::writer::ColumnCloseResult;
use parquet::data_type::ByteArray;
use parquet::file::metadata::{
    ColumnChunkMetaData, ColumnIndexBuilder, OffsetIndexBuilder, PageEncodingStats,
};
use parquet::file::statistics::{Statistics, ValueStatistics};
use parquet::file::writer::{SerializedPageWriter, TrackedWrite};
use parquet::schema::types::ColumnDescPtr;

use crate::{Error, Result};

/// A string column as runs of one value, in row order: `(value, rows)`.
pub(crate) type Runs<'a> = Vec<(&'a str, usize)>;

/// The runs covering rows `start..start + len` of `runs`.
pub(crate) fn slice<'a>(runs: &[(&'a str, usize)], start: usize, len: usize) -> Runs<'a> {
    let mut out = Vec::new();
    let (mut at, end) = (0usize, start + len);
    for &(value, rows) in runs {
        let (from, to) = (at.max(start), (at + rows).min(end));
        if from < to {
            out.push((value, to - from));
        }
        at += rows;
        if at >= end {
            break;
        }
    }
    out
}

/// The number of rows the runs hold.
pub(crate) fn rows(runs: &[(&str, usize)]) -> usize {
    runs.iter().map(|r| r.1).sum()
}

/// The runs as an Arrow string array (each value repeated row by row).
pub(crate) fn to_array(runs: &[(&str, usize)]) -> ArrayRef {
    let bytes: usize = runs.iter().map(|r| r.1 * r.0.len()).sum();
    let mut b = StringBuilder::with_capacity(rows(runs), bytes);
    for &(value, n) in runs {
        b.append_value_n(value, n);
    }
    Arc::new(b.finish())
}

/// A column chunk encoded from runs, ready for
/// [`SerializedRowGroupWriter::append_column`](parquet::file::writer::SerializedRowGroupWriter::append_column).
pub(crate) struct Chunk {
    pub(crate) bytes: Bytes,
    pub(crate) close: ColumnCloseResult,
}

/// Encodes one row group's chunk of a required `BYTE_ARRAY` (UTF8) column given as runs. The
/// layout is described in the module doc. Pages hold at most `page_rows` rows; zstd at `level`.
pub(crate) fn encode_chunk(
    descr: ColumnDescPtr,
    runs: &[(&str, usize)],
    level: i32,
    page_rows: usize,
) -> Result<Chunk> {
    let page_rows = page_rows.max(1);
    // The dictionary, in first-seen order, and the runs as dictionary ids (adjacent runs of one
    // value merged).
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut dict: Vec<&str> = Vec::new();
    let mut keyed: Vec<(u32, usize)> = Vec::with_capacity(runs.len());
    for &(value, n) in runs.iter().filter(|r| r.1 > 0) {
        let id = *ids.entry(value).or_insert_with(|| {
            dict.push(value);
            (dict.len() - 1) as u32
        });
        match keyed.last_mut() {
            Some(last) if last.0 == id => last.1 += n,
            _ => keyed.push((id, n)),
        }
    }
    let total_rows: usize = keyed.iter().map(|r| r.1).sum();
    // One bit at least: a width of 0 is legal, but 1 is what every reader surely takes.
    let bit_width = (u32::BITS - (dict.len().saturating_sub(1) as u32).leading_zeros()).max(1);
    let id_bytes = bit_width.div_ceil(8) as usize;
    let codec = ZstdLevel::try_new(level)?;

    let mut sink = TrackedWrite::new(Vec::new());
    let mut column_index = ColumnIndexBuilder::new(descr.physical_type());
    let mut offset_index = OffsetIndexBuilder::new();
    let (mut compressed, mut uncompressed, mut data_pages) = (0usize, 0usize, 0i32);
    let mut data_page_offset = None;
    let (mut ascending, mut descending) = (true, true);
    let mut previous: Option<(&str, &str)> = None;
    let mut chunk_min: Option<&str> = None;
    let mut chunk_max: Option<&str> = None;
    let mut unencoded_total = 0i64;
    {
        let mut pages = SerializedPageWriter::new(&mut sink);
        let mut plain = Vec::with_capacity(dict.iter().map(|v| v.len() + 4).sum());
        for v in &dict {
            plain.extend_from_slice(&(v.len() as u32).to_le_bytes());
            plain.extend_from_slice(v.as_bytes());
        }
        let spec = pages.write_page(CompressedPage::new(
            Page::DictionaryPage {
                buf: zstd_compress(&plain, codec)?,
                num_values: dict.len() as u32,
                encoding: Encoding::PLAIN,
                is_sorted: false,
            },
            plain.len(),
        ))?;
        compressed += spec.compressed_size;
        uncompressed += spec.uncompressed_size;

        // Data pages: cut the keyed runs every `page_rows` rows.
        let mut runs = keyed.iter().copied();
        let mut carry: Option<(u32, usize)> = None;
        let mut left = total_rows;
        while left > 0 {
            let want = page_rows.min(left);
            let mut buf = Vec::with_capacity(16);
            buf.push(bit_width as u8);
            let (mut in_page, mut unencoded) = (0usize, 0i64);
            let (mut min, mut max): (Option<&str>, Option<&str>) = (None, None);
            while in_page < want {
                let Some((id, n)) = carry.take().or_else(|| runs.next()) else {
                    return Err(Error::Config("run column: fewer rows than counted".into()));
                };
                let take = n.min(want - in_page);
                if take < n {
                    carry = Some((id, n - take));
                }
                in_page += take;
                let value = dict[id as usize];
                unencoded += (value.len() * take) as i64;
                min = Some(min.map_or(value, |m| m.min(value)));
                max = Some(max.map_or(value, |m| m.max(value)));
                // An RLE run: ULEB128 of (count << 1), then the id in `id_bytes` bytes.
                let mut header = (take as u64) << 1;
                loop {
                    let byte = (header & 0x7f) as u8;
                    header >>= 7;
                    if header == 0 {
                        buf.push(byte);
                        break;
                    }
                    buf.push(byte | 0x80);
                }
                buf.extend_from_slice(&id.to_le_bytes()[..id_bytes]);
            }
            left -= want;
            let (Some(min), Some(max)) = (min, max) else {
                return Err(Error::Config("run column: an empty data page".into()));
            };
            let spec = pages.write_page(CompressedPage::new(
                Page::DataPage {
                    buf: zstd_compress(&buf, codec)?,
                    num_values: want as u32,
                    encoding: Encoding::RLE_DICTIONARY,
                    def_level_encoding: Encoding::RLE,
                    rep_level_encoding: Encoding::RLE,
                    statistics: None,
                },
                buf.len(),
            ))?;
            data_page_offset.get_or_insert(spec.offset as i64);
            compressed += spec.compressed_size;
            uncompressed += spec.uncompressed_size;
            data_pages += 1;
            column_index.append(false, min.as_bytes().to_vec(), max.as_bytes().to_vec(), 0);
            offset_index.append_offset_and_size(spec.offset as i64, spec.compressed_size as i32);
            offset_index.append_row_count(want as i64);
            offset_index.append_unencoded_byte_array_data_bytes(Some(unencoded));
            unencoded_total += unencoded;
            if let Some((pmin, pmax)) = previous {
                ascending &= pmin <= min && pmax <= max;
                descending &= pmin >= min && pmax >= max;
            }
            previous = Some((min, max));
            chunk_min = Some(chunk_min.map_or(min, |m| m.min(min)));
            chunk_max = Some(chunk_max.map_or(max, |m| m.max(max)));
        }
        pages.close()?;
    }
    column_index.set_boundary_order(match (ascending, descending) {
        (true, _) => BoundaryOrder::ASCENDING,
        (false, true) => BoundaryOrder::DESCENDING,
        (false, false) => BoundaryOrder::UNORDERED,
    });
    let statistics = Statistics::ByteArray(ValueStatistics::new(
        chunk_min.map(|v| ByteArray::from(v.as_bytes().to_vec())),
        chunk_max.map(|v| ByteArray::from(v.as_bytes().to_vec())),
        None,
        Some(0),
        false,
    ));
    let mut page_stats = vec![PageEncodingStats {
        page_type: PageType::DICTIONARY_PAGE,
        encoding: Encoding::PLAIN,
        count: 1,
    }];
    if data_pages > 0 {
        page_stats.push(PageEncodingStats {
            page_type: PageType::DATA_PAGE,
            encoding: Encoding::RLE_DICTIONARY,
            count: data_pages,
        });
    }
    let metadata = ColumnChunkMetaData::builder(descr)
        .set_compression(Compression::ZSTD(codec))
        .set_encodings_mask(EncodingMask::new_from_encodings(
            [Encoding::PLAIN, Encoding::RLE, Encoding::RLE_DICTIONARY].iter(),
        ))
        .set_page_encoding_stats(page_stats)
        .set_total_compressed_size(compressed as i64)
        .set_total_uncompressed_size(uncompressed as i64)
        .set_num_values(total_rows as i64)
        .set_data_page_offset(data_page_offset.unwrap_or(compressed as i64))
        .set_dictionary_page_offset(Some(0))
        .set_statistics(statistics)
        .set_unencoded_byte_array_data_bytes(Some(unencoded_total))
        .build()?;
    let bytes = Bytes::from(sink.into_inner()?);
    if bytes.len() != compressed {
        return Err(Error::Config(format!(
            "run column: wrote {} bytes, counted {compressed}",
            bytes.len()
        )));
    }
    Ok(Chunk {
        bytes,
        close: ColumnCloseResult {
            bytes_written: compressed as u64,
            rows_written: total_rows as u64,
            metadata,
            bloom_filter: None,
            column_index: Some(column_index.build()?),
            offset_index: Some(offset_index.build()),
        },
    })
}

fn zstd_compress(data: &[u8], level: ZstdLevel) -> Result<Bytes> {
    zstd::bulk::compress(data, level.compression_level())
        .map(Bytes::from)
        .map_err(|e| Error::Config(format!("zstd: {e}")))
}
