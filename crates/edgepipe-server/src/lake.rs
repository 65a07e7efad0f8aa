//! The server's storage stage: opens the lake, runs the lake writer (a WAL consumer) and the
//! compactor, and owns the query engine the API and dashboard use.
//!
//! A writer error (the object store unreachable, a full disk) never stops ingestion: the
//! writer logs it, waits with backoff, reopens (undoing a half-done flush) and resumes from its
//! WAL checkpoint; the WAL keeps the records meanwhile.

use std::sync::Arc;
use std::time::Duration;

use edgepipe_lake::{
    Compactor, FreshBuffer, LakeConfig, LakeMetrics, LakeStore, LakeWriter, SwapLock,
};
use edgepipe_query::{QueryConfig, QueryEngine};
use edgepipe_wal::Wal;
use tokio::sync::watch;

/// Opens the configured lake: `lake.url`, or `<data_dir>/lake` when empty.
pub fn open_store(
    data_dir: &std::path::Path,
    cfg: &LakeConfig,
) -> Result<LakeStore, edgepipe_lake::Error> {
    if cfg.url.is_empty() {
        LakeStore::local(data_dir.join("lake"))
    } else {
        LakeStore::open(&cfg.url, &cfg.s3)
    }
}

/// The running lake writer, compactor and query engine.
#[derive(Debug)]
pub struct LakeService {
    /// SQL over lake + fresh rows.
    pub engine: QueryEngine,
    /// Writer counters.
    pub metrics: Arc<LakeMetrics>,
    /// Rows not yet in lake files.
    pub fresh: FreshBuffer,
    /// The lake.
    pub store: LakeStore,
    stop: watch::Sender<bool>,
    writer: Option<tokio::task::JoinHandle<()>>,
    compactor: Option<tokio::task::JoinHandle<()>>,
}

impl LakeService {
    /// Opens the lake (recovering interrupted flushes and compactions) and starts the writer
    /// and compactor.
    pub async fn start(
        store: LakeStore,
        wal: Wal,
        lake: LakeConfig,
        query: QueryConfig,
    ) -> Result<Self, edgepipe_lake::Error> {
        let metrics: Arc<LakeMetrics> = Arc::default();
        let fresh = FreshBuffer::default();
        let wal = Arc::new(wal);
        let first = LakeWriter::open_with(
            store.clone(),
            wal.clone(),
            lake.clone(),
            metrics.clone(),
            fresh.clone(),
        )
        .await?;
        let (stop, stop_rx) = watch::channel(false);
        let writer = tokio::spawn(writer_loop(
            first,
            store.clone(),
            wal,
            lake.clone(),
            metrics.clone(),
            fresh.clone(),
            stop_rx.clone(),
        ));
        let swap = SwapLock::default();
        let compactor = Compactor {
            store: store.clone(),
            config: lake,
            swap: swap.clone(),
        };
        let f = fresh.clone();
        let compactor = tokio::spawn(compactor.run(move || f.committed(), stop_rx));
        let engine = QueryEngine::new(store.clone(), Some(fresh.clone()), swap, query);
        Ok(Self {
            engine,
            metrics,
            fresh,
            store,
            stop,
            writer: Some(writer),
            compactor: Some(compactor),
        })
    }

    /// Stops the compactor, flushes every buffered row to the lake and stops the writer. Call
    /// after ingestion stopped and before the WAL closes.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.compactor.take() {
            let _ = t.await;
        }
        if let Some(t) = self.writer.take() {
            let _ = t.await;
        }
    }
}

async fn writer_loop(
    first: LakeWriter,
    store: LakeStore,
    wal: Arc<Wal>,
    cfg: LakeConfig,
    metrics: Arc<LakeMetrics>,
    fresh: FreshBuffer,
    stop: watch::Receiver<bool>,
) {
    let mut writer = Some(first);
    let mut backoff = Duration::from_millis(200);
    loop {
        let w = match writer.take() {
            Some(w) => w,
            None => {
                match LakeWriter::open_with(
                    store.clone(),
                    wal.clone(),
                    cfg.clone(),
                    metrics.clone(),
                    fresh.clone(),
                )
                .await
                {
                    Ok(w) => w,
                    Err(e) => {
                        tracing::error!(error = %e, retry_in = ?backoff, "lake: reopening the writer failed");
                        if wait_or_stop(backoff, &stop).await {
                            return;
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        continue;
                    }
                }
            }
        };
        match w.run(stop.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::error!(error = %e, retry_in = ?backoff, "lake: writer failed; the WAL keeps the records, retrying");
                if wait_or_stop(backoff, &stop).await {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Sleeps `d`; returns true when asked to stop meanwhile.
async fn wait_or_stop(d: Duration, stop: &watch::Receiver<bool>) -> bool {
    let mut stop = stop.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}
