//! One stream's sender: the batches read from its queue, in flight, acknowledged, and the gap
//! events for what its disk budget shed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use edgepipe_types::{Metric, Reading, TsSource, Value};
use edgepipe_wal::Reader;

use crate::metrics::{Metrics, StreamMetrics};
use crate::queue::{AckState, QueueRecord, StreamQueue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum St {
    Sent,
    Acked,
    Shed,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) span: u64,
    pub(crate) first_reading: u64,
    pub(crate) count: u64,
    pub(crate) first_ts: i64,
    pub(crate) last_ts: i64,
    pub(crate) state: St,
}

/// One stream's sending side.
#[derive(Debug)]
pub struct StreamSender {
    pub(crate) q: Arc<StreamQueue>,
    pub(crate) m: Arc<StreamMetrics>,
    pub(crate) ack: AckState,
    pub(crate) saved: AckState,
    pub(crate) saved_at: Instant,
    pub(crate) entries: BTreeMap<u64, Entry>,
    pub(crate) backlog: u64,
    pub(crate) boundary: u64,
    pub(crate) live: u64,
    pub(crate) backlog_reader: Option<Reader>,
    pub(crate) live_reader: Option<Reader>,
    pub(crate) oldest_cache: Option<(u64, i64)>,
}

/// A record ready to publish.
pub(crate) struct Ready {
    pub(crate) seq: u64,
    pub(crate) rec: QueueRecord,
}

impl StreamSender {
    /// A sender resuming at the stream's persisted acknowledgement.
    pub fn new(q: Arc<StreamQueue>, metrics: &Metrics) -> crate::Result<Self> {
        let ack = q.load_acked()?;
        let m = metrics.stream(&q.name);
        let mut s = Self {
            q,
            m,
            ack,
            saved: ack,
            saved_at: Instant::now(),
            entries: BTreeMap::new(),
            backlog: ack.next_seq,
            boundary: ack.next_seq,
            live: ack.next_seq,
            backlog_reader: None,
            live_reader: None,
            oldest_cache: None,
        };
        s.refresh_metrics(0);
        Ok(s)
    }

    pub(crate) fn on_connect(&mut self) {
        self.entries.retain(|_, e| e.state != St::Sent);
        self.boundary = self.q.wal.durable_end().max(self.ack.next_seq);
        self.backlog = self.ack.next_seq;
        self.live = self.boundary;
        self.backlog_reader = None;
        self.live_reader = None;
    }

    pub(crate) fn on_disconnect(&mut self) {
        self.entries.retain(|_, e| e.state != St::Sent);
    }

    pub(crate) fn in_catch_up(&self) -> bool {
        self.backlog < self.boundary
    }

    pub(crate) fn live_ready(&self, max_ahead: u64) -> bool {
        self.live < self.q.wal.durable_end()
            && self.live - self.ack.next_seq.min(self.live) < max_ahead
    }

    pub(crate) fn backlog_ready(&self) -> bool {
        self.backlog < self.boundary
    }

    /// Reads the next record of a lane, skipping batches already acknowledged.
    pub(crate) fn next(&mut self, live: bool) -> crate::Result<Option<Ready>> {
        loop {
            let (cursor, end) = if live {
                (self.live, self.q.wal.durable_end())
            } else {
                (self.backlog, self.boundary)
            };
            if cursor >= end {
                return Ok(None);
            }
            if let Some(e) = self.entries.get(&cursor).copied()
                && e.state != St::Sent
            {
                if live {
                    self.live += e.span;
                    self.live_reader = None;
                } else {
                    self.backlog += e.span;
                    self.backlog_reader = None;
                }
                continue;
            }
            let slot = if live {
                &mut self.live_reader
            } else {
                &mut self.backlog_reader
            };
            if slot.as_ref().is_none_or(|r| r.position() != cursor) {
                match self.q.wal.reader(cursor) {
                    Ok(r) => *slot = Some(r),
                    Err(edgepipe_wal::Error::Truncated { .. }) => return Ok(None),
                    Err(source) => {
                        return Err(crate::Error::Queue {
                            stream: self.q.name.clone(),
                            source,
                        });
                    }
                }
            }
            let Some(reader) = slot.as_mut() else {
                return Ok(None);
            };
            let next = match reader.next_record() {
                Ok(n) => n,
                Err(edgepipe_wal::Error::Truncated { .. }) => {
                    *slot = None;
                    return Ok(None);
                }
                Err(source) => {
                    *slot = None;
                    return Err(crate::Error::Queue {
                        stream: self.q.name.clone(),
                        source,
                    });
                }
            };
            let Some((seq, bytes)) = next else {
                return Ok(None);
            };
            let rec = QueueRecord::decode(&bytes).map_err(|reason| crate::Error::BadRecord {
                stream: self.q.name.clone(),
                seq,
                reason,
            })?;
            if live {
                self.live = seq + 1;
            } else {
                self.backlog = seq + 1;
            }
            return Ok(Some(Ready { seq, rec }));
        }
    }

    pub(crate) fn sent(&mut self, seq: u64, rec: &QueueRecord) {
        self.entries.insert(
            seq,
            Entry {
                span: 1,
                first_reading: rec.first_reading,
                count: rec.readings.len() as u64,
                first_ts: rec.first_ts(),
                last_ts: rec.last_ts(),
                state: St::Sent,
            },
        );
    }

    pub(crate) fn unsend(&mut self, seq: u64, live: bool) {
        self.entries.remove(&seq);
        if live {
            self.live = self.live.min(seq);
            self.live_reader = None;
        } else {
            self.backlog = self.backlog.min(seq);
            self.backlog_reader = None;
        }
    }

    pub(crate) fn acked(&mut self, seq: u64) {
        if let Some(e) = self.entries.get_mut(&seq)
            && e.state == St::Sent
        {
            e.state = St::Acked;
            self.m.sent_batches.fetch_add(1, Ordering::Relaxed);
            self.m.sent_readings.fetch_add(e.count, Ordering::Relaxed);
        }
        self.advance();
    }

    pub(crate) fn advance(&mut self) {
        while let Some((&k, &e)) = self.entries.first_key_value() {
            if k != self.ack.next_seq || e.state == St::Sent {
                break;
            }
            self.ack.next_seq = k + e.span;
            self.ack.next_reading = e.first_reading + e.count;
            self.ack.last_ts = e.last_ts;
            self.entries.remove(&k);
        }
        // Entries below the checkpoint can only be stale Sent ones after a gap; drop them.
        let floor = self.ack.next_seq;
        self.entries.retain(|&k, _| k >= floor);
    }

    pub(crate) fn persist(&mut self, force: bool) {
        if self.ack == self.saved {
            return;
        }
        if !force && self.saved_at.elapsed() < Duration::from_millis(100) {
            return;
        }
        match self.q.save_acked(&self.ack) {
            Ok(()) => {
                self.saved = self.ack;
                self.saved_at = Instant::now();
            }
            Err(e) => {
                tracing::error!(stream = %self.q.name, error = %e, "cannot persist acknowledged position")
            }
        }
    }

    /// Detects batches the disk budget deleted before they were acknowledged and turns them
    /// into shed entries; returns one gap event per contiguous shed range.
    pub(crate) fn find_gaps(&mut self) -> Vec<GapEvent> {
        let oldest = self.q.wal.stats().first_seq;
        if oldest <= self.ack.next_seq {
            return Vec::new();
        }
        // first_reading at `oldest` (the first surviving record).
        let Ok(Some(first)) = self.q.read_at(oldest) else {
            return Vec::new();
        };
        let mut gaps = Vec::new();
        let mut s = self.ack.next_seq;
        let mut at = self.ack.next_reading;
        let mut ts_before = self.ack.last_ts;
        let known: Vec<(u64, Entry)> = self
            .entries
            .range(..oldest)
            .map(|(k, e)| (*k, *e))
            .collect();
        let mut shed = Vec::new();
        for (k, e) in known {
            if k > s {
                shed.push((s, k, at, e.first_reading, ts_before, e.first_ts));
            }
            s = k + e.span;
            at = e.first_reading + e.count;
            ts_before = e.last_ts;
        }
        if s < oldest {
            shed.push((
                s,
                oldest,
                at,
                first.first_reading,
                ts_before,
                first.first_ts(),
            ));
        }
        for (from_seq, to_seq, from_reading, to_reading, from_ts, to_ts) in shed {
            let count = to_reading.saturating_sub(from_reading);
            self.entries.insert(
                from_seq,
                Entry {
                    span: to_seq - from_seq,
                    first_reading: from_reading,
                    count,
                    first_ts: from_ts,
                    last_ts: from_ts,
                    state: St::Shed,
                },
            );
            tracing::warn!(stream = %self.q.name, from_seq, to_seq, count, "disk budget shed unsent readings; recording a gap");
            gaps.push(GapEvent {
                stream: self.q.name.clone(),
                count,
                from_ts,
                to_ts,
            });
        }
        for cursor in [&mut self.backlog, &mut self.live, &mut self.boundary] {
            *cursor = (*cursor).max(oldest);
        }
        self.backlog_reader = None;
        self.live_reader = None;
        self.advance();
        gaps
    }

    pub(crate) fn refresh_metrics(&mut self, now_ms: i64) {
        let end = self.q.wal.durable_end();
        self.m
            .queue_depth
            .store(end.saturating_sub(self.ack.next_seq), Ordering::Relaxed);
        self.m
            .queue_bytes
            .store(self.q.wal.stats().disk_bytes, Ordering::Relaxed);
        let age = if self.ack.next_seq >= end {
            0
        } else {
            let appended = match self.oldest_cache {
                Some((seq, at)) if seq == self.ack.next_seq => Some(at),
                _ => self.q.read_at(self.ack.next_seq).ok().flatten().map(|r| {
                    self.oldest_cache = Some((self.ack.next_seq, r.appended_at));
                    r.appended_at
                }),
            };
            appended.map_or(0, |a| now_ms.saturating_sub(a).max(0))
        };
        self.m.oldest_unsent_age_ms.store(age, Ordering::Relaxed);
    }
}

/// A range of readings the disk budget shed before they were sent.
#[derive(Debug, Clone, PartialEq)]
pub struct GapEvent {
    /// The stream.
    pub stream: String,
    /// Exact number of shed readings.
    pub count: u64,
    /// Timestamp of the last reading before the gap (0 if unknown).
    pub from_ts: i64,
    /// Timestamp of the first reading after the gap.
    pub to_ts: i64,
}

impl GapEvent {
    /// The readings that carry the gap upstream (`agent.gap.<stream>.*` at `to_ts`).
    pub fn readings(&self) -> Vec<Reading> {
        let m = |s: &str| Metric::new(format!("agent.gap.{}.{s}", self.stream)).ok();
        let i = |v: u64| Value::I64(i64::try_from(v).unwrap_or(i64::MAX));
        [
            (m("count"), i(self.count)),
            (m("from_ts"), Value::I64(self.from_ts)),
            (m("to_ts"), Value::I64(self.to_ts)),
            (m("cause"), Value::Str("disk_budget".into())),
        ]
        .into_iter()
        .filter_map(|(metric, value)| {
            Some(Reading {
                metric: metric?,
                ts: self.to_ts,
                value,
                ts_source: TsSource::Device,
            })
        })
        .collect()
    }
}
