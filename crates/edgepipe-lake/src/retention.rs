//! Retention: deletes whole partitions whose event-time day is older than the table's limit.
//!
//! A partition is deleted under the [`SwapLock`], so our queries see it either
//! whole or not at all. Rollups usually live longer than raw readings (the hot/cold tiers of
//! Timestream and InfluxDB): set `readings_days` low and the `rollup_*_days` high.

use std::collections::BTreeSet;

use crate::config::LakeConfig;
use crate::store::LakeStore;
use crate::swap::SwapLock;
use crate::{Result, tables};

/// Deletes partitions past their table's age limit; returns the deleted partition directories.
pub async fn apply(
    store: &LakeStore,
    config: &LakeConfig,
    swap: &SwapLock,
    now_ms: i64,
) -> Result<Vec<String>> {
    let r = &config.retention;
    let mut deleted = Vec::new();
    for (table, days) in [
        (tables::READINGS, r.readings_days),
        (tables::ROLLUP_1M, r.rollup_1m_days),
        (tables::ROLLUP_1H, r.rollup_1h_days),
    ] {
        if days == 0 {
            continue;
        }
        let cutoff_ms = now_ms - i64::from(days) * 86_400_000;
        let Some(cutoff) = chrono::DateTime::from_timestamp_millis(cutoff_ms) else {
            continue;
        };
        // Partitions of days strictly before the cutoff's day are entirely past the limit.
        let cutoff_date = cutoff.format("%Y-%m-%d").to_string();
        let objects = store.list(&format!("{table}/")).await?;
        let mut dirs = BTreeSet::new();
        let mut doomed = Vec::new();
        for (key, _) in objects {
            let Some(date) = key.split('/').find_map(|seg| seg.strip_prefix("date=")) else {
                continue;
            };
            if date < cutoff_date.as_str() {
                if let Some((dir, _)) = key.rsplit_once('/') {
                    dirs.insert(dir.to_owned());
                }
                doomed.push(key);
            }
        }
        if doomed.is_empty() {
            continue;
        }
        let _w = swap.write().await;
        for key in &doomed {
            store.delete(key).await?;
        }
        tracing::info!(
            table,
            partitions = dirs.len(),
            files = doomed.len(),
            "lake: retention deleted partitions"
        );
        deleted.extend(dirs);
    }
    Ok(deleted)
}
