//! The swap protocol of compaction: the [`SwapLock`] our queries and retention share, staged
//! outputs under `_edgepipe/staging/`, the intent marker `_edgepipe/compaction/<dir>.json`,
//! [`finish_swap`] (moves a marker's staged files into place and deletes its inputs) and
//! [`recover_compactions`] at start. A leaf: it uses neither the compactor nor the writer.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::store::LakeStore;
use crate::{Error, Result};

/// The lock that makes compaction's file swap atomic for our queries.
pub type SwapLock = Arc<tokio::sync::RwLock<()>>;

const MARKER_PREFIX: &str = "_edgepipe/compaction/";

/// Where compaction outputs are written before the swap moves them into their partition.
pub(crate) const STAGING_PREFIX: &str = "_edgepipe/staging/";

pub(crate) fn staging_key(key: &str) -> String {
    format!("{STAGING_PREFIX}{key}")
}

/// Deletes every staged object (compaction runs one partition at a time, so nothing staged is
/// in use when this runs), with a local store's unfinished uploads (`<key>#<n>` files, which
/// listings do not show) and empty directories.
pub(crate) async fn clear_staging(store: &LakeStore) -> Result<()> {
    store.delete_prefix(STAGING_PREFIX).await
}

/// Stores `marker` as the compaction intent of partition `dir`.
pub(crate) async fn put_marker(store: &LakeStore, dir: &str, marker: &Marker) -> Result<String> {
    let key = format!("{MARKER_PREFIX}{}.json", dir.replace('/', "_"));
    let data = serde_json::to_vec(marker).map_err(|e| Error::Config(format!("marker: {e}")))?;
    store.put(&key, Bytes::from(data)).await?;
    Ok(key)
}

/// A compaction's intent, stored once every output is staged and durable.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Marker {
    pub(crate) inputs: Vec<String>,
    pub(crate) outputs: Vec<String>,
    /// The partition's rollup files, moved into place with the outputs (absent in markers of
    /// versions that wrote rollups in place).
    #[serde(default)]
    pub(crate) rollups: Vec<String>,
}

/// Finishes the swap `marker` describes: moves every output and rollup still staged into
/// place, then deletes the inputs the outputs do not replace. Idempotent, so it serves both the
/// swap and its recovery after a crash at any point of it (a marker is written only once every
/// output is staged and durable, so a marker's swap can always go forward, also when an output
/// has the name of an input it replaces). Returns false, changing nothing, when an output is
/// neither staged nor in place (a marker of a version that wrote outputs in place and crashed
/// before storing them all).
pub(crate) async fn finish_swap(store: &LakeStore, marker: &Marker) -> Result<bool> {
    // One listing of what is staged (in a swap, everything; after a crash, what is left).
    let staged: std::collections::HashSet<String> = store
        .list(STAGING_PREFIX)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for o in &marker.outputs {
        if !staged.contains(&staging_key(o)) && !store.exists(o).await? {
            return Ok(false);
        }
    }
    // Rollups first: a query that read the hour's rollup must not see the rewritten one with
    // rows it also reads from the inputs. They are a pure function of the deduplicated rows.
    for key in marker.rollups.iter().chain(&marker.outputs) {
        let from = staging_key(key);
        if staged.contains(&from) {
            store.rename(&from, key).await?;
        }
    }
    for i in &marker.inputs {
        if !marker.outputs.contains(i) {
            store.delete(i).await?;
        }
    }
    Ok(true)
}

/// Finishes (or, for a marker of the earlier in-place layout, rolls back) compactions
/// interrupted by a crash, and deletes what they staged. Call before anything else touches the
/// lake: the lake writer does when it opens, `edgepipe lake compact` before it compacts.
pub async fn recover_compactions(store: &LakeStore) -> Result<()> {
    for (key, _) in store.list(MARKER_PREFIX).await? {
        let data = store.get(&key).await?;
        let marker: Marker = serde_json::from_slice(&data).map_err(|e| Error::Corrupt {
            key: key.clone(),
            reason: format!("compaction marker does not parse: {e}"),
        })?;
        if finish_swap(store, &marker).await? {
            tracing::warn!(
                marker = key,
                "lake: finished a compaction interrupted by a crash"
            );
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
    // Outputs staged by a run that stopped before its marker.
    clear_staging(store).await
}
