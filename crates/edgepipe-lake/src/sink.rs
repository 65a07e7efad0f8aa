//! Crash-safe flushes of a WAL range into lake files, for any table fed by a WAL consumer
//! (`readings` by the [`LakeWriter`](crate::LakeWriter), `deadletters` by the server).
//!
//! Protocol: store an intent marker `_edgepipe/pending/<table>-<first>.json` naming the files,
//! store the files, let the caller move its WAL checkpoint past `last`, delete the marker. At
//! start, [`recover`] deletes the files of every marker of that table whose range the checkpoint
//! has not passed (the range is written again, under the same names, from the WAL), and drops
//! markers whose range it has passed (the flush was complete).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::LakeStore;
use crate::{Error, Result};

const PENDING_PREFIX: &str = "_edgepipe/pending/";

#[derive(Debug, Serialize, Deserialize)]
struct PendingFlush {
    first: u64,
    last: u64,
    files: Vec<String>,
}

/// Key of the file a flush of WAL range `[first, last]` writes for one event-time hour of
/// `table` (hours since the epoch): `<table>/date=YYYY-MM-DD/hour=HH/part-<first>-<last>.parquet`.
/// Derived from the range, so writing the same range again after a crash overwrites it.
pub fn part_key(table: &str, hour: i64, first: u64, last: u64) -> String {
    let (date, hh) = crate::schema::partition_of_hour(hour);
    format!("{table}/date={date}/hour={hh}/part-{first:020}-{last:020}.parquet")
}

/// Stores `files` for the WAL range `[first, last]` of `table`, calling `commit` (which moves
/// the caller's WAL checkpoint past `last`) only after every file is stored. When this returns
/// Ok, the range is in the lake and checkpointed.
pub async fn store_flush(
    store: &LakeStore,
    table: &str,
    first: u64,
    last: u64,
    files: &[(String, Bytes)],
    commit: impl FnOnce() -> Result<()>,
) -> Result<()> {
    let marker_key = format!("{PENDING_PREFIX}{table}-{first:020}.json");
    let marker = PendingFlush {
        first,
        last,
        files: files.iter().map(|(k, _)| k.clone()).collect(),
    };
    let marker_bytes =
        serde_json::to_vec(&marker).map_err(|e| Error::Config(format!("marker encode: {e}")))?;
    store.put(&marker_key, Bytes::from(marker_bytes)).await?;
    for (key, data) in files {
        store.put(key, data.clone()).await?;
    }
    commit()?;
    store.delete(&marker_key).await
}

/// Undoes `table`'s flushes that a crash interrupted before the checkpoint (`position`, the
/// next WAL sequence not yet in the lake) passed them. Returns how many were undone.
pub async fn recover(store: &LakeStore, table: &str, position: u64) -> Result<usize> {
    let mut undone = 0;
    let prefix = format!("{PENDING_PREFIX}{table}-");
    for (key, _) in store.list(PENDING_PREFIX).await? {
        if !key.starts_with(&prefix) {
            continue;
        }
        let data = store.get(&key).await?;
        let marker: PendingFlush = serde_json::from_slice(&data).map_err(|e| Error::Corrupt {
            key: key.clone(),
            reason: format!("flush marker does not parse: {e}"),
        })?;
        if marker.last >= position {
            tracing::warn!(
                table,
                first = marker.first,
                last = marker.last,
                files = marker.files.len(),
                "lake: undoing a flush interrupted by a crash; the range is rewritten from the WAL"
            );
            for f in &marker.files {
                store.delete(f).await?;
            }
            undone += 1;
        }
        store.delete(&key).await?;
    }
    Ok(undone)
}
