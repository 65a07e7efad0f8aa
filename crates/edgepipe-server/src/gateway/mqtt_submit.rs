//! Submission batching: hands the WAL appends that a worker thread's tasks make in one
//! scheduler pass to the WAL writer in one piece.
//!
//! The WAL writer starts a group commit as soon as an append arrives. ntex reads many PUBLISH
//! packets from a socket in one go and handles the first inline and each of the others in a task
//! of its own; submitted one by one, the first append wakes the writer on the other core, which
//! syncs it alone while the rest are still being decoded, and the rest wait for the next fsync
//! (seen on one connection: groups of 1, 21 and 27 records from one 49-packet read).
//!
//! [`append_then`] instead puts the prepared append ([`Wal::prepare_then`]) in the thread's
//! batch; the first append of a batch spawns a flush task that first yields with tokio's
//! deferred wake-up (it is rescheduled only after the tasks that are ready now have run, up to
//! tokio's per-tick budget, and I/O has been polled, so the tasks the thread's last reads made
//! have added their appends) and then hands the whole batch over ([`Wal::submit_prepared`]): one
//! group, one fsync.
//!
//! This applies only while the thread holds more than one connection ([`Connection`]). A lone
//! client's publishes are limited by its own window of unacknowledged messages: batched, its
//! window lands in one group (seen: groups of 100, its whole window) and it sends nothing while
//! that group syncs. Submitted one by one, its burst is split across fsyncs and it refills the
//! window while the earlier part syncs, which measured ~8 % faster on one connection. With many
//! connections the windows are independent and one fsync serves many of them (measured in
//! `BENCHMARKS.md`, ingest run 22: more readings/s with 100 connections, and far fewer fsyncs).
//!
//! A batch is also handed over as soon as it holds [`MAX_BATCH_BYTES`] of payloads, which
//! bounds its memory and its first append's wait whatever the scheduler does.
//!
//! `/metrics` counts the batches handed over (`edgepipe_mqtt_submit_batches_total`) and the
//! appends in them (`edgepipe_mqtt_batched_appends_total`); the e2e kill -9 test with four
//! connections on one worker reads them to show its appends went through batches.
//!
//! [`install`] sets a batch up on the current thread (inside a tokio `LocalSet`, an ntex worker)
//! for one WAL; on other threads, or for another WAL, [`append_then`] submits at once. An append
//! still in a batch when its thread's runtime stops is dropped unwritten, its future resolves to
//! `Closed` and nothing is acknowledged for it. The same happens to a full batch whose handing
//! task is cancelled (its connection closed) while the writer's queue is full: the other
//! publishes in it are not acknowledged either, and their clients send them again.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use edgepipe_wal::{Prepared, Wal};

use crate::gateway::ingest::Submit;
use crate::gateway::metrics::Metrics;

/// A thread's pending batch for one WAL.
struct Batch {
    wal: Wal,
    pending: Vec<Prepared>,
    /// Payload bytes in `pending`.
    pending_bytes: usize,
    /// A flush task is spawned and has not taken the batch yet.
    scheduled: bool,
    /// Connections open on this thread ([`Connection`]).
    connections: usize,
    /// Counts batches and their appends for `/metrics`.
    metrics: Arc<Metrics>,
}

impl Batch {
    fn take(&mut self) -> Vec<Prepared> {
        self.pending_bytes = 0;
        let pending = std::mem::take(&mut self.pending);
        // A flush task can find its batch already handed over by the append that filled it.
        if !pending.is_empty() {
            self.metrics
                .mqtt_submit_batches
                .fetch_add(1, Ordering::Relaxed);
            self.metrics
                .mqtt_batched_appends
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
        }
        pending
    }
}

/// A batch is handed over at once when its payloads reach this size, without waiting for the
/// flush task: it bounds the batch's memory and the wait of its first append.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

thread_local! {
    static BATCH: RefCell<Option<Batch>> = const { RefCell::new(None) };
}

/// Sets up batching on this thread for `wal`, counting its batches in `metrics`. Call it from
/// inside a tokio `LocalSet`; a second call on the same thread does nothing. Returns whether
/// batching was set up.
pub fn install(wal: Wal, metrics: Arc<Metrics>) -> bool {
    BATCH.with(|b| {
        let mut slot = b.borrow_mut();
        if slot.is_some() {
            return false;
        }
        *slot = Some(Batch {
            wal,
            pending: Vec::new(),
            pending_bytes: 0,
            scheduled: false,
            connections: 0,
            metrics,
        });
        true
    })
}

/// Counts a connection on this thread while it lives. Batching applies only while the thread
/// holds more than one (see the module docs).
#[derive(Debug)]
pub struct Connection(());

impl Connection {
    /// Counts a connection opened on this thread (drop it on the same thread).
    pub fn open() -> Self {
        Self::add(1);
        Connection(())
    }

    fn add(delta: isize) {
        BATCH.with(|b| {
            if let Ok(mut slot) = b.try_borrow_mut()
                && let Some(batch) = slot.as_mut()
            {
                batch.connections = batch.connections.saturating_add_signed(delta);
            }
        });
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        Self::add(-1);
    }
}

/// Appends `payload` to `wal` durably, like [`Wal::append_then`], through this thread's batch
/// when it has one for `wal`.
pub async fn append_then(
    wal: &Wal,
    payload: Vec<u8>,
    on_durable: impl FnOnce(u64) + Send + 'static,
) -> edgepipe_wal::Result<u64> {
    let batching = BATCH.with(|b| {
        b.borrow()
            .as_ref()
            .is_some_and(|batch| batch.connections > 1 && batch.wal.same_as(wal))
    });
    if !batching {
        return wal.append_then(payload, on_durable).await;
    }
    let len = payload.len();
    let (prepared, appended) = wal.prepare_then(payload, on_durable)?;
    // What this append's task hands over itself: nothing (batched) or the batch it filled.
    // The hand-over is awaited here, before any other task on this thread runs (unless the
    // writer's queue is full, and then the channel keeps senders in order), so the WAL keeps
    // the order in which the thread made its appends.
    let hand_over = BATCH.with(|b| {
        // Still this thread's batch for `wal`: nothing ran since the check above.
        let mut slot = b.borrow_mut();
        let Some(batch) = slot.as_mut() else {
            return vec![prepared];
        };
        batch.pending.push(prepared);
        batch.pending_bytes += len;
        if batch.pending_bytes >= MAX_BATCH_BYTES {
            return batch.take();
        }
        if !batch.scheduled {
            batch.scheduled = true;
            tokio::task::spawn_local(flush());
        }
        Vec::new()
    });
    wal.submit_prepared(hand_over).await;
    appended.await
}

/// The MQTT workers' submission path for the ingest core: [`append_then`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Batched;

impl Submit for Batched {
    fn append_then(
        &self,
        wal: &Wal,
        payload: Vec<u8>,
        on_durable: impl FnOnce(u64) + Send + 'static,
    ) -> impl Future<Output = edgepipe_wal::Result<u64>> + Send {
        append_then(wal, payload, on_durable)
    }
}

/// The flush task: runs after this pass's ready tasks, then hands the batch over.
async fn flush() {
    tokio::task::yield_now().await;
    let taken = BATCH.with(|b| {
        let mut slot = b.borrow_mut();
        let batch = slot.as_mut()?;
        batch.scheduled = false;
        Some((batch.wal.clone(), batch.take()))
    });
    if let Some((wal, pending)) = taken {
        wal.submit_prepared(pending).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgepipe_wal::WalConfig;

    /// A current-thread runtime and a `LocalSet`, as an ntex worker runs.
    fn local_runtime() -> std::io::Result<(tokio::runtime::Runtime, tokio::task::LocalSet)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        Ok((rt, tokio::task::LocalSet::new()))
    }

    /// Runs `n` appends as ntex does with one read of `n` packets (the first polled inline by
    /// the reading task, the others in tasks it spawns) on a `LocalSet`; returns the fsyncs
    /// they took, the batches handed over, the appends in them and their sequences.
    fn burst(n: usize, batching: bool) -> anyhow::Result<(u64, u64, u64, Vec<u64>)> {
        let dir = tempfile::tempdir()?;
        let wal = Wal::open(dir.path(), WalConfig::default())?;
        let (rt, set) = local_runtime()?;
        let before = wal.stats().fsyncs;
        let w = wal.clone();
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        let seqs = set.block_on(&rt, async move {
            assert!(install(w.clone(), m));
            assert!(
                !install(w.clone(), Arc::default()),
                "a second install is a no-op"
            );
            // One connection: submitted at once; two: batched.
            let _conns: Vec<Connection> = (0..if batching { 2 } else { 1 })
                .map(|_| Connection::open())
                .collect();
            let mut handles = Vec::new();
            let first = {
                let w = w.clone();
                async move { append_then(&w, b"0".to_vec(), |_| {}).await }
            };
            let mut first = Box::pin(first);
            // The reading task polls the first append inline, then spawns the others.
            let inline = futures_poll_once(first.as_mut()).await;
            for i in 1..n {
                let w = w.clone();
                handles.push(tokio::task::spawn_local(async move {
                    append_then(&w, i.to_string().into_bytes(), |_| {}).await
                }));
            }
            let mut seqs = vec![match inline {
                Some(r) => r?,
                None => first.await?,
            }];
            for h in handles {
                seqs.push(h.await??);
            }
            Ok::<_, anyhow::Error>(seqs)
        })?;
        Ok((
            wal.stats().fsyncs - before,
            metrics.mqtt_submit_batches.load(Ordering::Relaxed),
            metrics.mqtt_batched_appends.load(Ordering::Relaxed),
            seqs,
        ))
    }

    /// Polls `f` once; its output if it completed.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: F) -> Option<F::Output> {
        let mut f = f;
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[test]
    fn one_pass_of_appends_shares_one_fsync() -> anyhow::Result<()> {
        let (fsyncs, batches, appends, mut seqs) = burst(49, true)?;
        assert_eq!(batches, 1, "49 appends from one pass, one hand-over");
        assert_eq!(appends, 49);
        assert_eq!(fsyncs, 1, "one hand-over, one group commit");
        seqs.sort_unstable();
        assert_eq!(seqs, (0..49).collect::<Vec<u64>>());
        Ok(())
    }

    #[test]
    fn with_one_connection_appends_go_straight_to_the_writer() -> anyhow::Result<()> {
        // How the writer groups them then depends on timing; each is durable all the same.
        let (fsyncs, batches, appends, mut seqs) = burst(49, false)?;
        assert_eq!((batches, appends), (0, 0));
        assert!(fsyncs >= 1);
        seqs.sort_unstable();
        assert_eq!(seqs, (0..49).collect::<Vec<u64>>());
        Ok(())
    }

    /// Runs `n` appends of half the batch limit, each in its own task, on a thread holding two
    /// connections, then lets the flush task finish. Returns their sequences, the batches
    /// handed over, the appends in those batches, and the WAL's fsyncs.
    fn half_limit_appends(n: u8) -> anyhow::Result<(Vec<u64>, u64, u64, u64)> {
        let dir = tempfile::tempdir()?;
        let wal = Wal::open(dir.path(), WalConfig::default())?;
        let (rt, set) = local_runtime()?;
        let w = wal.clone();
        let metrics = Arc::new(Metrics::default());
        let m = metrics.clone();
        let seqs = set.block_on(&rt, async move {
            install(w.clone(), m);
            let _conns = (Connection::open(), Connection::open());
            let half = MAX_BATCH_BYTES / 2;
            let mut handles = Vec::new();
            for i in 0..n {
                let w = w.clone();
                handles.push(tokio::task::spawn_local(async move {
                    append_then(&w, vec![i; half], |_| {}).await
                }));
            }
            let mut seqs = Vec::new();
            for h in handles {
                seqs.push(h.await??);
            }
            // Let the flush task run to its end.
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            Ok::<_, anyhow::Error>(seqs)
        })?;
        Ok((
            seqs,
            metrics.mqtt_submit_batches.load(Ordering::Relaxed),
            metrics.mqtt_batched_appends.load(Ordering::Relaxed),
            wal.stats().fsyncs,
        ))
    }

    /// A batch that reaches the size limit is handed over by the append that filled it; the
    /// appends after it start a new batch. All are durable, in order.
    #[test]
    fn a_full_batch_is_handed_over_and_the_rest_follows() -> anyhow::Result<()> {
        // Three appends of half the limit: the second fills the batch, which leaves at once;
        // the third goes with the flush task.
        let (seqs, batches, appends, fsyncs) = half_limit_appends(3)?;
        assert_eq!(seqs, vec![0, 1, 2]);
        assert_eq!((batches, appends), (2, 3));
        // Two hand-overs; the writer may find both queued and sync them together.
        assert!((1..=2).contains(&fsyncs), "{fsyncs} fsyncs");
        Ok(())
    }

    /// Two appends of half the limit: the second hands the batch over itself, and the flush
    /// task the first one spawned then finds nothing to hand over, and counts nothing.
    #[test]
    fn a_flush_that_finds_its_batch_gone_counts_no_batch() -> anyhow::Result<()> {
        let (seqs, batches, appends, _) = half_limit_appends(2)?;
        assert_eq!(seqs, vec![0, 1]);
        assert_eq!((batches, appends), (1, 2));
        Ok(())
    }

    #[test]
    fn another_wal_is_not_batched() -> anyhow::Result<()> {
        let d1 = tempfile::tempdir()?;
        let d2 = tempfile::tempdir()?;
        let ours = Wal::open(d1.path(), WalConfig::default())?;
        let other = Wal::open(d2.path(), WalConfig::default())?;
        let (rt, set) = local_runtime()?;
        let seq = set.block_on(&rt, async move {
            install(ours, Arc::default());
            let _conns = (Connection::open(), Connection::open());
            append_then(&other, b"x".to_vec(), |_| {}).await
        })?;
        assert_eq!(seq, 0);
        Ok(())
    }
}
