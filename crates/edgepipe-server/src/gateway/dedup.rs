//! The ingest core's duplicate detection: the windows of agent batch sequence numbers already
//! stored (replays), the in-flight marks of batches on their way to disk, and the content index
//! of recently stored readings (QoS 1 resends).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use edgepipe_types::DeviceId;

/// Per-(device, source, stream) window of agent batch sequence numbers already stored.
#[derive(Debug, Default)]
pub(crate) struct SeqWindow {
    seen: BTreeSet<u64>,
    /// Everything at or below this is treated as seen (pruned from `seen`).
    floor: Option<u64>,
}

pub(crate) const DEDUP_WINDOW: usize = 4096;

impl SeqWindow {
    pub(crate) fn contains(&self, seq: u64) -> bool {
        self.floor.is_some_and(|f| seq <= f) || self.seen.contains(&seq)
    }
    pub(crate) fn insert(&mut self, seq: u64) {
        self.seen.insert(seq);
        while self.seen.len() > DEDUP_WINDOW {
            if let Some(min) = self.seen.pop_first() {
                self.floor = Some(self.floor.map_or(min, |f| f.max(min)));
            }
        }
    }
}

pub(crate) type DedupKey = (String, String, String);

/// An agent batch marked in flight. It travels inside the WAL append's durable callback, so it
/// is dropped, clearing the mark, exactly when that append can no longer become durable
/// unseen: after the callback recorded it as stored, or when the append failed or was never
/// queued (its handler dropped while waiting to enqueue; the callback is dropped with it).
#[derive(Debug)]
pub(crate) struct InFlightBatch {
    pub(crate) set: Arc<Mutex<HashSet<(DedupKey, u64)>>>,
    pub(crate) batch: (DedupKey, u64),
}

impl InFlightBatch {
    /// Its append is durable: into its window first, then (on drop) out of the in-flight set,
    /// so a copy checked in between finds it in one of the two.
    pub(crate) fn stored(self, dedup: &Mutex<HashMap<DedupKey, SeqWindow>>) {
        dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(self.batch.0.clone())
            .or_default()
            .insert(self.batch.1);
    }
}

impl Drop for InFlightBatch {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.batch);
    }
}

/// Recently stored readings by content hash `(device, metric, ts, value)`, in two generations so
/// memory stays bounded. A message whose every reading is already here is a resend (a QoS 1
/// publish repeated after a crash or lost PUBACK) and is acknowledged without writing again.
#[derive(Debug, Default)]
pub(crate) struct ContentDedup {
    current: HashSet64,
    previous: HashSet64,
}

/// The set's keys are already SipHash outputs: hashing them again would only cost time.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PassThrough(u64);

impl std::hash::Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `HashSet<u64>`; fold anything else in for completeness.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

pub(crate) type HashSet64 =
    std::collections::HashSet<u64, std::hash::BuildHasherDefault<PassThrough>>;

/// Readings remembered per generation (two generations are kept): 7/8 of 2^20, the most a hash
/// table of 2^20 buckets holds at its load factor. One more and the table would double to 2^21
/// buckets (18 MB instead of 9 MB per generation) for an eighth more history.
pub(crate) const CONTENT_GENERATION: usize = (1 << 20) / 8 * 7;

impl ContentDedup {
    pub(crate) fn contains_all(&self, hashes: &[u64]) -> bool {
        !hashes.is_empty()
            && hashes
                .iter()
                .all(|h| self.current.contains(h) || self.previous.contains(h))
    }
    pub(crate) fn insert_all(&mut self, hashes: &[u64]) {
        // Start a new generation before this message would overfill the current one, so the
        // table never grows past its reserved size. The old generation's table is cleared and
        // reused rather than freed and allocated again.
        if !self.current.is_empty() && self.current.len() + hashes.len() > CONTENT_GENERATION {
            std::mem::swap(&mut self.previous, &mut self.current);
            self.current.clear();
        }
        if self.current.capacity() == 0 {
            self.current.reserve(CONTENT_GENERATION);
        }
        for h in hashes {
            self.current.insert(*h);
        }
    }
    /// Bytes of the two tables (buckets of 8 bytes plus one control byte each).
    #[cfg(test)]
    pub(crate) fn table_bytes(&self) -> usize {
        let bucket = |cap: usize| {
            if cap == 0 {
                0
            } else {
                (cap * 8 / 7).next_power_of_two()
            }
        };
        (bucket(self.current.capacity()) + bucket(self.previous.capacity())) * 9
    }
}

/// Content hashes of a message's readings; empty (never a duplicate) when any timestamp was
/// stamped by the server, since such a reading has no identity of its own to repeat.
///
/// foldhash's quality variant with a seed drawn at start (the index is rebuilt from the WAL at
/// each start, so hashes never outlive the process): well spread in every bit, as the
/// pass-through tables need, unpredictable to devices, and a fraction of SipHash's cost.
pub(crate) fn content_hashes(
    seed: &foldhash::quality::RandomState,
    device: &DeviceId,
    readings: &[edgepipe_types::Reading],
) -> Vec<u64> {
    use std::hash::{BuildHasher, Hash, Hasher};
    if readings
        .iter()
        .any(|r| r.ts_source == edgepipe_types::TsSource::Server)
    {
        return Vec::new();
    }
    readings
        .iter()
        .map(|r| {
            let mut h = seed.build_hasher();
            device.as_str().hash(&mut h);
            r.metric.as_str().hash(&mut h);
            r.ts.hash(&mut h);
            match &r.value {
                edgepipe_types::Value::F64(v) => (0u8, v.to_bits()).hash(&mut h),
                edgepipe_types::Value::I64(v) => (1u8, *v).hash(&mut h),
                edgepipe_types::Value::Bool(v) => (2u8, *v).hash(&mut h),
                edgepipe_types::Value::Str(v) => (3u8, v).hash(&mut h),
            }
            h.finish()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resend index remembers between one and two generations of readings, and its two
    /// tables keep their reserved size however messages of any size fill them.
    #[test]
    fn the_content_index_keeps_two_generations_in_fixed_tables() {
        let mut c = ContentDedup::default();
        let mut next = 0u64;
        let mut batch = |n: usize| -> Vec<u64> {
            (0..n)
                .map(|_| {
                    next += 1;
                    next.wrapping_mul(0x9E37_79B9_7F4A_7C15)
                })
                .collect()
        };
        let first = batch(100);
        c.insert_all(&first);
        let one_table = c.table_bytes();
        assert!(
            one_table <= 10 << 20,
            "one generation takes {one_table} bytes"
        );
        // Fill well past two generations with messages of 1 and 100 readings.
        let mut last = Vec::new();
        for i in 0..(CONTENT_GENERATION * 5 / 2) / 50 {
            last = batch(if i % 2 == 0 { 1 } else { 99 });
            c.insert_all(&last);
        }
        assert!(c.contains_all(&last), "the newest message is remembered");
        assert!(
            !c.contains_all(&first),
            "the oldest generation is forgotten"
        );
        assert!(c.current.len() <= CONTENT_GENERATION);
        assert!(c.previous.len() > CONTENT_GENERATION - 100);
        assert_eq!(c.table_bytes(), 2 * one_table, "the tables never grew");
    }

    /// Two copies of one agent batch at once (a resend on a new connection while the first
    /// copy's append is still on its way to disk): the second is refused until the first is
    /// stored (then it is a duplicate) or has failed (then it is written).
    #[test]
    fn seq_window_prunes_to_a_floor() {
        let mut w = SeqWindow::default();
        for s in 0..(DEDUP_WINDOW as u64 + 10) {
            w.insert(s);
        }
        assert!(w.contains(0));
        assert!(w.contains(DEDUP_WINDOW as u64 + 9));
        assert!(!w.contains(DEDUP_WINDOW as u64 + 10));
        assert_eq!(w.seen.len(), DEDUP_WINDOW);
    }
}
