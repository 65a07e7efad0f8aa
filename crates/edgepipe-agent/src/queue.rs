//! The store-and-forward queue: one `edgepipe-wal` per stream, the agent's only copy of a
//! reading between collection and the server's PUBACK.
//!
//! # Record
//! Each WAL record is one uplink batch ([`QueueRecord`]): its readings, the cumulative number of
//! the stream's first reading in it, the wall time it was appended, and the positions of the
//! sources that fed it (file offsets, generator counters) after these readings. Writing the
//! positions in the same record makes "read from the source" and "stored durably" one atomic
//! step: after a crash a source resumes exactly after the last reading that is on disk.
//! The record's WAL sequence number is the batch's `seq` on the wire, so a resend after a crash
//! carries the same `(source, stream, seq)` and the server drops it as a replay.
//!
//! # Acknowledgement
//! `acked.json` beside the WAL holds `{next_seq, next_reading, last_ts}`: every record below
//! `next_seq` was acknowledged by the server (PUBACK) or recorded as shed in a gap. It is
//! replaced atomically (write, fsync, rename, fsync dir) and then mirrored into the WAL consumer
//! `uplink`, whose checkpoint lets retention delete acknowledged segments. Nothing is deleted
//! before its PUBACK. `next_reading` makes gap accounting exact: when the disk budget's
//! drop-oldest policy deletes unsent records, the number of shed readings is the first
//! surviving record's `first_reading` minus `next_reading` (less anything already in flight).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgepipe_types::{Reading, TsSource};
use edgepipe_wal::{FullPolicy, Wal, WalConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::durations::dur;
use crate::problem::Problem;
use crate::{Error, Result};

/// Queue settings shared by every stream (a stream may override `max_bytes`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Segment file size; retention and drop-oldest work in whole segments, so smaller
    /// segments shed less at a time. Default 4 MiB.
    pub segment_bytes: u64,
    /// Disk budget per stream in bytes. Default 1 GiB.
    pub max_bytes: u64,
    /// What happens when a stream's budget is full: `drop_oldest` (default; the oldest unsent
    /// segment is deleted and recorded as a gap that goes upstream) or `reject` (new readings are
    /// refused: MQTT sources are not acknowledged, HTTP pushes get 503, generators wait).
    pub full_policy: FullPolicy,
    /// A batch (one record, one envelope) is closed at this many readings. Default 500.
    pub batch_max_readings: usize,
    /// ... or when its first reading has waited this long. Default "50ms".
    #[serde(with = "dur")]
    pub batch_max_wait: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            segment_bytes: 4 * 1024 * 1024,
            max_bytes: 1024 * 1024 * 1024,
            full_policy: FullPolicy::DropOldest,
            batch_max_readings: 500,
            batch_max_wait: Duration::from_millis(50),
        }
    }
}

impl QueueConfig {
    pub(crate) fn check(&self, path: &str, problems: &mut Vec<Problem>) {
        problems.extend(edgepipe_wal::size_problems(
            path,
            self.segment_bytes,
            self.max_bytes,
        ));
        if !(1..=5000).contains(&self.batch_max_readings) {
            problems.push(Problem::new(
                format!("{path}.batch_max_readings"),
                "must be between 1 and 5000 (the server takes at most 10000 readings per message)",
            ));
        }
        if self.batch_max_wait.is_zero() {
            problems.push(Problem::new(
                format!("{path}.batch_max_wait"),
                "must be positive",
            ));
        }
    }
}

/// Uplink priority of a stream: every alerts batch goes before any telemetry batch, and every
/// telemetry batch before any bulk batch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Anomaly events and gaps.
    Alerts,
    /// Ordinary telemetry (default).
    #[default]
    Telemetry,
    /// Bulk data that may wait.
    Bulk,
}

/// Format version of an encoded [`QueueRecord`].
const RECORD_VERSION: u8 = 1;

/// One batch as stored in a stream's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueRecord {
    /// Wall time of the append, ms since the epoch (for "oldest unsent age").
    pub appended_at: i64,
    /// Cumulative number (0-based) of this record's first reading in its stream.
    pub first_reading: u64,
    /// Source positions after this record's readings, e.g. `("file:app", 4096)`.
    pub positions: Vec<(String, u64)>,
    /// The readings.
    pub readings: Vec<Reading>,
}

impl QueueRecord {
    /// `version | postcard`.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, vec![RECORD_VERSION]).unwrap_or_else(|_| vec![RECORD_VERSION])
    }

    /// Decodes what [`encode`](Self::encode) wrote.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Self, String> {
        match bytes.split_first() {
            Some((&RECORD_VERSION, body)) => postcard::from_bytes(body).map_err(|e| e.to_string()),
            Some((v, _)) => Err(format!("unknown record version {v}")),
            None => Err("empty record".into()),
        }
    }

    /// Timestamp of the last reading (or of the append, for an empty record).
    pub fn last_ts(&self) -> i64 {
        self.readings.last().map_or(self.appended_at, |r| r.ts)
    }

    /// Timestamp of the first reading (or of the append, for an empty record).
    pub fn first_ts(&self) -> i64 {
        self.readings.first().map_or(self.appended_at, |r| r.ts)
    }
}

/// What the server has acknowledged of a stream (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AckState {
    /// Every record below this is acknowledged or shed.
    pub next_seq: u64,
    /// Cumulative reading number at `next_seq`.
    pub next_reading: u64,
    /// Timestamp of the last acknowledged reading (start of a following gap's time range).
    pub last_ts: i64,
}

const CONSUMER: &str = "uplink";

/// One stream's queue: its WAL, its acknowledgement file.
#[derive(Debug)]
pub struct StreamQueue {
    /// Stream name (the envelope's `stream`).
    pub name: String,
    /// Uplink priority.
    pub priority: Priority,
    /// The WAL holding the stream's unacknowledged batches.
    pub wal: Wal,
    dir: PathBuf,
}

impl StreamQueue {
    /// Opens (or creates) the stream's queue under `root/<name>`, recovering from a crash.
    pub fn open(root: &Path, name: &str, priority: Priority, cfg: &WalConfig) -> Result<Self> {
        let dir = root.join(name);
        let wal = Wal::open(&dir, cfg.clone()).map_err(|source| Error::Queue {
            stream: name.to_string(),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            priority,
            wal,
            dir,
        })
    }

    fn err(&self, source: edgepipe_wal::Error) -> Error {
        Error::Queue {
            stream: self.name.clone(),
            source,
        }
    }

    /// The record at `seq`, if it is still on disk.
    pub fn read_at(&self, seq: u64) -> Result<Option<QueueRecord>> {
        match self.wal.read(seq, 1) {
            Ok(v) => match v.into_iter().next() {
                Some((s, bytes)) => {
                    QueueRecord::decode(&bytes)
                        .map(Some)
                        .map_err(|reason| Error::BadRecord {
                            stream: self.name.clone(),
                            seq: s,
                            reason,
                        })
                }
                None => Ok(None),
            },
            Err(edgepipe_wal::Error::Truncated { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The newest durable record.
    pub fn last_record(&self) -> Result<Option<QueueRecord>> {
        match self.wal.durable_end().checked_sub(1) {
            Some(seq) => self.read_at(seq),
            None => Ok(None),
        }
    }

    fn ack_path(&self) -> PathBuf {
        self.dir.join("acked.json")
    }

    /// The acknowledged state after a restart: `acked.json` if present (it is written before the
    /// WAL checkpoint, so it is never behind it), else the WAL consumer's checkpoint.
    pub fn load_acked(&self) -> Result<AckState> {
        let path = self.ack_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::BadRecord {
                stream: self.name.clone(),
                seq: 0,
                reason: format!("{}: {e}", path.display()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let next_seq = self
                    .wal
                    .consumer(CONSUMER)
                    .map_err(|e| self.err(e))?
                    .position();
                let next_reading = self.read_at(next_seq)?.map_or_else(
                    || {
                        self.last_record()
                            .ok()
                            .flatten()
                            .map_or(0, |r| r.first_reading + r.readings.len() as u64)
                    },
                    |r| r.first_reading,
                );
                Ok(AckState {
                    next_seq,
                    next_reading,
                    last_ts: 0,
                })
            }
            Err(e) => Err(Error::io(path)(e)),
        }
    }

    /// Durably records `state`, then moves the WAL checkpoint so retention can delete what is
    /// acknowledged. When this returns, a restart resumes at `state.next_seq`.
    pub fn save_acked(&self, state: &AckState) -> Result<()> {
        let path = self.ack_path();
        let bytes = serde_json::to_vec(state).unwrap_or_default();
        edgepipe_wal::durable::replace_file(&path, &bytes).map_err(Error::io(&path))?;
        let mut consumer = self.wal.consumer(CONSUMER).map_err(|e| self.err(e))?;
        consumer.commit(state.next_seq).map_err(|e| self.err(e))
    }

    /// Records in the queue not yet acknowledged (for the queue-depth metric).
    pub fn depth(&self, acked: u64) -> u64 {
        self.wal.durable_end().saturating_sub(acked)
    }
}

/// Answer to whoever handed readings to the pipeline: `Ok` once they are durable in the queue.
pub type Ack = oneshot::Sender<std::result::Result<(), String>>;

/// The pipeline's appending side of one stream: it collects readings into the open batch and
/// appends it as one record when it is full or old enough.
#[derive(Debug)]
pub struct StreamWriter {
    /// The queue.
    pub queue: Arc<StreamQueue>,
    next_reading: u64,
    positions: BTreeMap<String, u64>,
    pending: Vec<Reading>,
    identities: std::collections::HashSet<(edgepipe_types::Metric, i64)>,
    acks: Vec<Ack>,
    opened: Option<Instant>,
    max_readings: usize,
    max_wait: Duration,
}

impl StreamWriter {
    /// A writer continuing after the queue's last record (its reading count and positions).
    pub fn new(queue: Arc<StreamQueue>, cfg: &QueueConfig) -> Result<Self> {
        let last = queue.last_record()?;
        let (next_reading, positions) = match last {
            Some(r) => (
                r.first_reading + r.readings.len() as u64,
                r.positions.into_iter().collect(),
            ),
            None => (queue.load_acked()?.next_reading, BTreeMap::new()),
        };
        Ok(Self {
            queue,
            next_reading,
            positions,
            pending: Vec::new(),
            identities: std::collections::HashSet::new(),
            acks: Vec::new(),
            opened: None,
            max_readings: cfg.batch_max_readings,
            max_wait: cfg.batch_max_wait,
        })
    }

    /// The last durable position of `source` in this stream.
    pub fn position(&self, source: &str) -> Option<u64> {
        self.positions.get(source).copied()
    }

    /// Adds readings (and a source position reached after them) to the open batch.
    ///
    /// A batch never holds two readings with the same identity `(metric, ts)`: the envelope body
    /// groups readings by timestamp, and the server refuses (dead-letters) a body with a repeated
    /// metric in one object. A reading whose timestamp the agent assigned (server time, or the
    /// agent's own events) moves to the next free millisecond; a second reading with the same
    /// device timestamp is the same reading by identity and is dropped. Returns how many were
    /// dropped.
    pub fn push(
        &mut self,
        readings: Vec<Reading>,
        position: Vec<(String, u64)>,
        ack: Option<Ack>,
        own_ts: bool,
    ) -> usize {
        if self.opened.is_none() {
            self.opened = Some(Instant::now());
        }
        let mut dropped = 0;
        for mut r in readings {
            let movable = own_ts || r.ts_source == TsSource::Server;
            loop {
                if self.identities.insert((r.metric.clone(), r.ts)) {
                    self.pending.push(r);
                    break;
                }
                if !movable {
                    dropped += 1;
                    break;
                }
                r.ts = r.ts.saturating_add(1);
            }
        }
        for (k, v) in position {
            self.positions.insert(k, v);
        }
        if let Some(a) = ack {
            self.acks.push(a);
        }
        dropped
    }

    /// Readings in the open batch whose source does not wait for an answer (none are pending
    /// then), i.e. what a refused append loses for good.
    pub fn unacked_readings(&self) -> usize {
        if self.acks.is_empty() {
            self.pending.len()
        } else {
            0
        }
    }

    /// Whether the open batch must be appended now.
    pub fn due(&self, now: Instant) -> bool {
        self.pending.len() >= self.max_readings
            || self
                .opened
                .is_some_and(|t| now.duration_since(t) >= self.max_wait)
    }

    /// When the open batch becomes due by age.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.max_wait)
    }

    /// Appends the open batch (in records of at most `batch_max_readings`), waits until it is
    /// fdatasynced, then answers every source that contributed. On error the sources are told
    /// and nothing of the batch is stored.
    pub async fn flush(&mut self, now_ms: i64) -> Result<usize> {
        self.opened = None;
        if self.pending.is_empty() && self.acks.is_empty() {
            return Ok(0);
        }
        let readings = std::mem::take(&mut self.pending);
        self.identities.clear();
        let acks = std::mem::take(&mut self.acks);
        let n = readings.len();
        let positions: Vec<(String, u64)> = self
            .positions
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let mut payloads = Vec::new();
        let mut first = self.next_reading;
        // A batch with no readings (only a position moved, e.g. past blank lines) writes no
        // record: the position is carried by the next record instead.
        for chunk in readings.chunks(self.max_readings.max(1)) {
            let rec = QueueRecord {
                appended_at: now_ms,
                first_reading: first,
                positions: positions.clone(),
                readings: chunk.to_vec(),
            };
            first += chunk.len() as u64;
            payloads.push(rec.encode());
        }
        let result = if payloads.is_empty() {
            Ok(0)
        } else {
            self.queue.wal.append_batch(payloads).await
        };
        match result {
            Ok(_) => {
                self.next_reading = first;
                for a in acks {
                    let _ = a.send(Ok(()));
                }
                Ok(n)
            }
            Err(e) => {
                let reason = e.to_string();
                for a in acks {
                    let _ = a.send(Err(reason.clone()));
                }
                Err(Error::AppendRefused {
                    stream: self.queue.name.clone(),
                    reason,
                })
            }
        }
    }
}

/// Builds a stream's WAL configuration from the queue settings.
pub fn wal_config(cfg: &QueueConfig, max_bytes: Option<u64>) -> WalConfig {
    WalConfig {
        segment_bytes: cfg.segment_bytes,
        max_bytes: max_bytes.unwrap_or(cfg.max_bytes),
        full_policy: cfg.full_policy,
        max_record_bytes: 8 * 1024 * 1024,
        queue_depth: 256,
        // A gateway's disk is small and its queues many: no zero-filled spare per stream.
        preallocate: false,
    }
}

#[cfg(test)]
mod tests {
    use edgepipe_types::{Metric, TsSource, Value};

    use super::*;

    fn reading(i: i64) -> Reading {
        Reading {
            metric: Metric::new("m").unwrap_or_else(|e| panic!("{e}")),
            ts: 1_700_000_000_000 + i,
            value: Value::I64(i),
            ts_source: TsSource::Device,
        }
    }

    #[test]
    fn record_round_trips_and_refuses_garbage() {
        let r = QueueRecord {
            appended_at: 5,
            first_reading: 7,
            positions: vec![("file:a".into(), 99)],
            readings: vec![reading(1), reading(2)],
        };
        assert_eq!(QueueRecord::decode(&r.encode()), Ok(r));
        assert!(QueueRecord::decode(&[]).is_err());
        assert!(QueueRecord::decode(&[9, 1]).is_err());
        assert!(QueueRecord::decode(&[RECORD_VERSION, 0xff, 0xff]).is_err());
    }

    #[tokio::test]
    async fn writer_resumes_counts_and_positions_after_reopen() -> Result<()> {
        let dir = tempfile::tempdir().map_err(Error::io("tempdir"))?;
        let cfg = QueueConfig {
            batch_max_readings: 2,
            ..QueueConfig::default()
        };
        let wcfg = WalConfig::test_config();
        {
            let q = Arc::new(StreamQueue::open(
                dir.path(),
                "s",
                Priority::Telemetry,
                &wcfg,
            )?);
            let mut w = StreamWriter::new(q.clone(), &cfg)?;
            let (tx, rx) = oneshot::channel();
            w.push(
                vec![reading(0), reading(1), reading(2)],
                vec![("gen:x".into(), 3)],
                Some(tx),
                false,
            );
            assert_eq!(w.flush(1).await?, 3);
            assert_eq!(rx.await.ok(), Some(Ok(())));
            // Two records: [0, 1] and [2].
            assert_eq!(q.wal.durable_end(), 2);
            q.save_acked(&AckState {
                next_seq: 1,
                next_reading: 2,
                last_ts: 9,
            })?;
        }
        let q = Arc::new(StreamQueue::open(
            dir.path(),
            "s",
            Priority::Telemetry,
            &wcfg,
        )?);
        let w = StreamWriter::new(q.clone(), &cfg)?;
        assert_eq!(w.next_reading, 3);
        assert_eq!(w.position("gen:x"), Some(3));
        assert_eq!(
            q.load_acked()?,
            AckState {
                next_seq: 1,
                next_reading: 2,
                last_ts: 9
            }
        );
        assert_eq!(q.read_at(1)?.map(|r| r.first_reading), Some(2));
        Ok(())
    }
}

#[cfg(test)]
mod identity_tests {
    use edgepipe_types::{Metric, Value};

    use super::*;

    fn r(ts: i64, src: TsSource) -> Reading {
        Reading {
            metric: Metric::new("m").unwrap_or_else(|e| panic!("{e}")),
            ts,
            value: Value::I64(ts),
            ts_source: src,
        }
    }

    /// Regression: two readings of one metric in the same millisecond in one batch made the
    /// server dead-letter the whole envelope (a repeated key in one JSON object).
    #[tokio::test]
    async fn a_batch_never_repeats_an_identity() -> Result<()> {
        let dir = tempfile::tempdir().map_err(Error::io("tempdir"))?;
        let q = Arc::new(StreamQueue::open(
            dir.path(),
            "s",
            Priority::Telemetry,
            &WalConfig::test_config(),
        )?);
        let mut w = StreamWriter::new(q.clone(), &QueueConfig::default())?;
        let dropped = w.push(
            vec![
                r(5, TsSource::Server),
                r(5, TsSource::Server),
                r(5, TsSource::Device),
                r(7, TsSource::Device),
                r(7, TsSource::Device),
            ],
            Vec::new(),
            None,
            false,
        );
        assert_eq!(dropped, 2);
        assert_eq!(
            w.push(vec![r(5, TsSource::Device)], Vec::new(), None, true),
            0
        );
        let ts: Vec<i64> = w.pending.iter().map(|r| r.ts).collect();
        assert_eq!(ts, [5, 6, 7, 8]);
        w.flush(1).await?;
        // A new batch starts with a clean slate.
        assert_eq!(
            w.push(vec![r(5, TsSource::Device)], Vec::new(), None, false),
            0
        );
        Ok(())
    }
}
