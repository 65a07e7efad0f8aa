//! The dead-letter store: every message the gateway refuses is kept here durably with its raw
//! bytes (bounded, truncation flagged), the reason, the device, the endpoint and the time, so
//! nothing that reached us disappears silently (architecture principle 2).
//!
//! It is a second WAL (`<data>/deadletters`) with the drop-oldest policy: beyond its disk budget
//! the oldest dead letters are deleted and counted in [`DeadLetterStats::dropped`].

use std::path::Path;

use edgepipe_wal::{FullPolicy, Wal, WalConfig};
use serde::{Deserialize, Serialize};

/// Dead-letter store settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// Disk budget; the oldest dead letters are dropped (and counted) beyond it.
    pub max_bytes: u64,
    /// Raw bytes kept per dead letter; longer payloads are truncated and flagged.
    pub max_raw_bytes: usize,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_raw_bytes: 64 * 1024,
        }
    }
}

/// One refused message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeadLetter {
    /// Position in the store (assigned on read).
    #[serde(default)]
    pub id: u64,
    /// When it was refused, ms since epoch.
    pub time_ms: i64,
    /// The authenticated device, if known.
    pub device: Option<String>,
    /// Peer address.
    pub peer: Option<String>,
    /// Where it arrived: `mqtt:<topic>` or `http:<path>` (with line number for line errors).
    pub endpoint: String,
    /// Machine-readable reason (`bad_payload`, `not_authorized`, `unknown_topic`, ...).
    pub reason: String,
    /// Human-readable detail naming what was wrong.
    pub detail: String,
    /// Raw bytes (possibly truncated).
    #[serde(with = "raw_b64")]
    pub raw: Vec<u8>,
    /// Whether `raw` was truncated.
    pub truncated: bool,
    /// Length of the original payload.
    pub original_len: usize,
}

mod raw_b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// Errors from the dead-letter store.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    /// The underlying WAL failed.
    #[error("dead-letter store: {0}")]
    Wal(#[from] edgepipe_wal::Error),
    /// A stored entry did not decode.
    #[error("dead letter {id} does not decode: {message}")]
    Decode {
        /// Entry id.
        id: u64,
        /// Cause.
        message: String,
    },
}

/// Counters.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetterStats {
    /// Entries stored since the store was created (the next id).
    pub total: u64,
    /// Entries currently retained.
    pub retained: u64,
    /// Entries deleted by the disk budget.
    pub dropped: u64,
    /// Bytes on disk.
    pub disk_bytes: u64,
}

/// The store.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    wal: Wal,
    max_raw: usize,
}

impl DeadLetters {
    /// Opens the store under `data_dir/deadletters`.
    pub fn open(data_dir: &Path, cfg: &DeadLetterConfig) -> Result<Self, DeadLetterError> {
        let segment_bytes = (cfg.max_bytes / 8).clamp(64 * 1024, 16 * 1024 * 1024);
        let wal = Wal::open(
            data_dir.join("deadletters"),
            WalConfig {
                segment_bytes,
                max_bytes: cfg.max_bytes,
                full_policy: FullPolicy::DropOldest,
                max_record_bytes: cfg.max_raw_bytes * 3 + 64 * 1024,
                queue_depth: 1024,
                // Dead letters are rare: zero-filled segments would be disk spent for nothing.
                preallocate: false,
            },
        )?;
        Ok(Self {
            wal,
            max_raw: cfg.max_raw_bytes,
        })
    }

    /// Builds an entry, truncating `raw` to the configured bound.
    #[allow(clippy::too_many_arguments)]
    pub fn entry(
        &self,
        time_ms: i64,
        device: Option<&str>,
        peer: Option<String>,
        endpoint: String,
        reason: &str,
        detail: String,
        raw: &[u8],
    ) -> DeadLetter {
        let keep = raw.len().min(self.max_raw);
        DeadLetter {
            id: 0,
            time_ms,
            device: device.map(str::to_string),
            peer,
            endpoint,
            reason: reason.to_string(),
            detail,
            raw: raw[..keep].to_vec(),
            truncated: keep < raw.len(),
            original_len: raw.len(),
        }
    }

    /// Stores entries; when this returns they are durable. Returns the first id.
    pub async fn store(&self, entries: Vec<DeadLetter>) -> Result<u64, DeadLetterError> {
        let payloads = entries
            .iter()
            .map(|e| serde_json::to_vec(e).unwrap_or_default())
            .collect();
        Ok(self.wal.append_batch(payloads).await?)
    }

    /// Up to `limit` entries with id ≥ `after` (oldest first).
    pub fn list(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let st = self.wal.stats();
        let from = after.max(st.first_seq);
        self.wal
            .read(from, limit)?
            .into_iter()
            .map(|(id, bytes)| decode(id, &bytes))
            .collect()
    }

    /// The newest `limit` entries, newest last.
    pub fn tail(&self, limit: usize) -> Result<Vec<DeadLetter>, DeadLetterError> {
        let st = self.wal.stats();
        let from = st.next_seq.saturating_sub(limit as u64).max(st.first_seq);
        self.list(from, limit)
    }

    /// One entry by id.
    pub fn get(&self, id: u64) -> Result<Option<DeadLetter>, DeadLetterError> {
        let st = self.wal.stats();
        if id < st.first_seq || id >= st.next_seq {
            return Ok(None);
        }
        Ok(self.list(id, 1)?.into_iter().next())
    }

    /// Counters.
    pub fn stats(&self) -> DeadLetterStats {
        let st = self.wal.stats();
        DeadLetterStats {
            total: st.next_seq,
            retained: st.next_seq - st.first_seq,
            dropped: st.first_seq,
            disk_bytes: st.disk_bytes,
        }
    }

    /// A named consumer of the store (the lake exporter), with its durable checkpoint.
    pub fn consumer(&self, name: &str) -> Result<edgepipe_wal::Consumer, DeadLetterError> {
        Ok(self.wal.consumer(name)?)
    }

    /// Up to `limit` entries from `from` on, skipping entries the disk budget already deleted.
    /// Returns the entries and the next id to read.
    pub fn read_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<(Vec<DeadLetter>, u64), DeadLetterError> {
        let st = self.wal.stats();
        let from = from.max(st.first_seq);
        let rows = self.wal.read(from, limit)?;
        let next = rows.last().map_or(from, |(id, _)| id + 1);
        let entries = rows
            .into_iter()
            .map(|(id, bytes)| decode(id, &bytes))
            .collect::<Result<_, _>>()?;
        Ok((entries, next))
    }

    /// Closes the store's writer.
    pub fn close(self) {
        self.wal.close();
    }
}

fn decode(id: u64, bytes: &[u8]) -> Result<DeadLetter, DeadLetterError> {
    let mut d: DeadLetter = serde_json::from_slice(bytes).map_err(|e| DeadLetterError::Decode {
        id,
        message: e.to_string(),
    })?;
    d.id = id;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stores_truncates_and_lists() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let cfg = DeadLetterConfig {
            max_bytes: 4 * 1024 * 1024,
            max_raw_bytes: 8,
        };
        let dl = DeadLetters::open(dir.path(), &cfg)?;
        let e = dl.entry(
            1,
            Some("d1"),
            Some("127.0.0.1:5".into()),
            "mqtt:edgepipe/v1/d1/telemetry".into(),
            "bad_payload",
            "expected JSON".into(),
            b"0123456789abc",
        );
        assert!(e.truncated);
        assert_eq!(e.original_len, 13);
        let id = dl.store(vec![e]).await?;
        assert_eq!(id, 0);
        dl.close();
        let dl = DeadLetters::open(dir.path(), &cfg)?;
        let got = dl.get(0)?.ok_or("entry 0")?;
        assert_eq!(got.raw, b"01234567");
        assert_eq!(got.reason, "bad_payload");
        assert_eq!(dl.tail(10)?.len(), 1);
        assert_eq!(dl.stats().total, 1);
        Ok(())
    }
}
