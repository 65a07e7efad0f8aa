//! `edgepipe lake stats` and `edgepipe lake verify`: files, rows and bytes per table and
//! partition, read from Parquet footers (two ranged reads per file, never the data), and a check
//! of every file's footer and schema against the current table schemas.

use std::collections::BTreeMap;

use bytes::Bytes;
use object_store::ObjectStoreExt;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use serde::Serialize;

use crate::schema::{readings_schema, rollup_schema};
use crate::store::LakeStore;
use crate::{Error, Result, tables};

/// One partition's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PartitionStats {
    /// Partition directory relative to the table (`date=.../hour=...`).
    pub partition: String,
    /// Parquet files.
    pub files: u64,
    /// Rows (from footers).
    pub rows: u64,
    /// Bytes on the store.
    pub bytes: u64,
}

/// One table's totals and partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TableStats {
    /// Table name.
    pub table: String,
    /// Parquet files.
    pub files: u64,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Per partition, in order.
    pub partitions: Vec<PartitionStats>,
}

/// A file that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyProblem {
    /// Lake-relative key.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

async fn footer(store: &LakeStore, key: &str, size: u64) -> Result<ParquetMetaData> {
    let corrupt = |reason: String| Error::Corrupt {
        key: key.to_owned(),
        reason,
    };
    if size < 12 {
        return Err(corrupt(format!(
            "{size} bytes is too short for a parquet file"
        )));
    }
    let os = store.object_store();
    let path = store.path(key);
    let tail: Bytes = os
        .get_range(&path, size - 8..size)
        .await
        .map_err(|source| Error::Store {
            op: "get_range",
            key: key.to_owned(),
            source,
        })?;
    if &tail[4..8] != b"PAR1" {
        return Err(corrupt("no PAR1 magic at the end".into()));
    }
    let len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if len + 8 > size {
        return Err(corrupt(format!(
            "footer length {len} exceeds the file size {size}"
        )));
    }
    let meta_bytes = os
        .get_range(&path, size - 8 - len..size - 8)
        .await
        .map_err(|source| Error::Store {
            op: "get_range",
            key: key.to_owned(),
            source,
        })?;
    ParquetMetaDataReader::decode_metadata(&meta_bytes).map_err(|e| corrupt(e.to_string()))
}

/// Files, rows and bytes per table and partition.
pub async fn lake_stats(store: &LakeStore) -> Result<Vec<TableStats>> {
    let mut out = Vec::new();
    for table in tables::ALL {
        let mut parts: BTreeMap<String, PartitionStats> = BTreeMap::new();
        for (key, meta) in store.list(&format!("{table}/")).await? {
            if !key.ends_with(".parquet") {
                continue;
            }
            let md = footer(store, &key, meta.size).await?;
            let rel = key
                .strip_prefix(&format!("{table}/"))
                .unwrap_or(&key)
                .rsplit_once('/')
                .map(|(d, _)| d.to_owned())
                .unwrap_or_default();
            let p = parts.entry(rel.clone()).or_insert_with(|| PartitionStats {
                partition: rel,
                ..PartitionStats::default()
            });
            p.files += 1;
            p.rows += u64::try_from(md.file_metadata().num_rows()).unwrap_or(0);
            p.bytes += meta.size;
        }
        let partitions: Vec<PartitionStats> = parts.into_values().collect();
        out.push(TableStats {
            table: table.to_owned(),
            files: partitions.iter().map(|p| p.files).sum(),
            rows: partitions.iter().map(|p| p.rows).sum(),
            bytes: partitions.iter().map(|p| p.bytes).sum(),
            partitions,
        });
    }
    Ok(out)
}

/// Checks every file's footer, schema (every column known with the current type; required
/// columns present) and, for `readings`, that its `ts` statistics fall inside its partition
/// hour. Returns the problems found and the number of files checked.
pub async fn verify(store: &LakeStore) -> Result<(Vec<VerifyProblem>, usize)> {
    let mut problems = Vec::new();
    let mut checked = 0;
    for table in tables::ALL {
        let expected = match table {
            tables::READINGS => readings_schema(),
            tables::DEADLETTERS => crate::schema::deadletters_schema(),
            tables::ANOMALIES => crate::schema::anomalies_schema(),
            tables::LABELS => crate::schema::labels_schema(),
            _ => rollup_schema(),
        };
        for (key, meta) in store.list(&format!("{table}/")).await? {
            if !key.ends_with(".parquet") {
                problems.push(VerifyProblem {
                    key,
                    problem: "not a parquet file (left over from a tool?)".into(),
                });
                continue;
            }
            checked += 1;
            let md = match footer(store, &key, meta.size).await {
                Ok(m) => m,
                Err(e) => {
                    problems.push(VerifyProblem {
                        key,
                        problem: e.to_string(),
                    });
                    continue;
                }
            };
            let schema = match parquet::arrow::parquet_to_arrow_schema(
                md.file_metadata().schema_descr(),
                md.file_metadata().key_value_metadata(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(VerifyProblem {
                        key,
                        problem: format!("schema does not convert to arrow: {e}"),
                    });
                    continue;
                }
            };
            for f in schema.fields() {
                match expected.field_with_name(f.name()) {
                    Ok(e) if e.data_type() == f.data_type() => {}
                    Ok(e) => problems.push(VerifyProblem {
                        key: key.clone(),
                        problem: format!(
                            "column {} is {} but the table schema says {}",
                            f.name(),
                            f.data_type(),
                            e.data_type()
                        ),
                    }),
                    Err(_) => problems.push(VerifyProblem {
                        key: key.clone(),
                        problem: format!("unknown column {}", f.name()),
                    }),
                }
            }
            for e in expected.fields() {
                if !e.is_nullable() && schema.field_with_name(e.name()).is_err() {
                    problems.push(VerifyProblem {
                        key: key.clone(),
                        problem: format!("required column {} missing", e.name()),
                    });
                }
            }
        }
    }
    Ok((problems, checked))
}
