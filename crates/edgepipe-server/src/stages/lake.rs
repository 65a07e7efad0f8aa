//! The server's storage stage: opens the lake, runs the lake writer (a WAL consumer) and the
//! compactor, and owns the query engine the API and dashboard use.
//!
//! A writer error (the object store unreachable, a full disk) never stops ingestion: the
//! writer logs it, waits with backoff, reopens (undoing a half-done flush) and resumes from its
//! WAL checkpoint; the WAL keeps the records meanwhile.

use std::sync::Arc;
use std::time::Duration;

use edgepipe_lake::events::DeadLetterRow;
use edgepipe_lake::{
    Compactor, FreshBuffer, LakeConfig, LakeMetrics, LakeStore, LakeWriter, SwapLock,
};
use edgepipe_query::{QueryConfig, QueryEngine};
use edgepipe_wal::Wal;
use tokio_util::sync::{CancellationToken, DropGuard};

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
    stop: CancellationToken,
    /// Stops the tasks if the service is dropped without [`LakeService::shutdown`].
    _stop_on_drop: DropGuard,
    writer: Option<tokio::task::JoinHandle<()>>,
    compactor: Option<tokio::task::JoinHandle<()>>,
    exporter: Option<tokio::task::JoinHandle<()>>,
    config: LakeConfig,
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
        let stop = CancellationToken::new();
        let writer = tokio::spawn(writer_loop(
            first,
            store.clone(),
            wal,
            lake.clone(),
            metrics.clone(),
            fresh.clone(),
            stop.clone(),
        ));
        let swap = SwapLock::default();
        let lake_cfg = lake.clone();
        let compactor = Compactor {
            store: store.clone(),
            config: lake,
            swap: swap.clone(),
            metrics: metrics.clone(),
        };
        let f = fresh.clone();
        let compactor = tokio::spawn(compactor.run(move || f.committed(), stop.clone()));
        let engine = QueryEngine::new(store.clone(), Some(fresh.clone()), swap, query);
        Ok(Self {
            engine,
            metrics,
            fresh,
            store,
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            writer: Some(writer),
            compactor: Some(compactor),
            exporter: None,
            config: lake_cfg,
        })
    }

    /// Starts exporting the ingestor's dead-letter store to the `deadletters` table.
    pub fn export_deadletters(&mut self, ing: Arc<crate::gateway::ingest::Ingestor>) {
        self.exporter = Some(tokio::spawn(export_deadletters(
            ing,
            self.store.clone(),
            self.config.clone(),
            self.stop.clone(),
        )));
    }

    /// Stops the compactor, flushes every buffered row to the lake and stops the writer. Call
    /// after ingestion stopped and before the WAL closes.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        if let Some(t) = self.compactor.take() {
            let _ = t.await;
        }
        if let Some(t) = self.exporter.take() {
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
    stop: CancellationToken,
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
async fn wait_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => stop.is_cancelled(),
        _ = stop.cancelled() => true,
    }
}

/// Exports the dead-letter store to the lake's `deadletters` table (partitioned by the time a
/// message was refused), with the same crash-safe flush protocol as readings. Runs every
/// `lake.flush_interval` until `stop`.
pub async fn export_deadletters(
    ing: Arc<crate::gateway::ingest::Ingestor>,
    store: LakeStore,
    cfg: LakeConfig,
    stop: CancellationToken,
) {
    // Undo a half-written range at start and after a failed round (a retry may cover a longer
    // range under other file names); not on every healthy round.
    let mut recover = true;
    loop {
        match export_deadletters_once(ing.deadletters(), &store, cfg.row_group_rows, recover).await
        {
            Ok(_) => recover = false,
            Err(e) => {
                tracing::error!(error = %e, "lake: exporting dead letters failed; retrying");
                recover = true;
            }
        }
        if stop.is_cancelled() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(cfg.flush_interval) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// One export round: everything the `lake` consumer of the dead-letter store has not passed.
/// `recover` first undoes a range an earlier round or process left half-written.
pub async fn export_deadletters_once(
    dl: &crate::gateway::deadletter::DeadLetters,
    store: &LakeStore,
    row_group_rows: usize,
    recover: bool,
) -> anyhow::Result<usize> {
    let mut consumer = dl.consumer(edgepipe_lake::LAKE_CONSUMER)?;
    let position = consumer.position();
    if recover {
        edgepipe_lake::sink::recover(store, edgepipe_lake::tables::DEADLETTERS, position).await?;
    }
    let (entries, next) = dl.read_from(position, 100_000)?;
    if entries.is_empty() {
        if next > position {
            consumer.commit(next)?;
        }
        return Ok(0);
    }
    let first = entries.first().map_or(position, |e| e.id);
    let last = next - 1;
    let mut files = Vec::new();
    for (hour, es) in edgepipe_lake::events::by_hour(&entries, |e| e.time_ms) {
        let rows: Vec<DeadLetterRow<'_>> = es
            .iter()
            .map(|e| DeadLetterRow {
                id: e.id,
                time_ms: e.time_ms,
                device: e.device.as_deref(),
                peer: e.peer.as_deref(),
                endpoint: &e.endpoint,
                reason: &e.reason,
                detail: &e.detail,
                raw: &e.raw,
                truncated: e.truncated,
                original_len: u64::try_from(e.original_len).unwrap_or(u64::MAX),
            })
            .collect();
        let key =
            edgepipe_lake::sink::part_key(edgepipe_lake::tables::DEADLETTERS, hour, first, last);
        files.push((
            key,
            edgepipe_lake::events::encode_deadletters(&rows, row_group_rows)?,
        ));
    }
    edgepipe_lake::sink::store_flush(
        store,
        edgepipe_lake::tables::DEADLETTERS,
        first,
        last,
        &files,
        || consumer.commit(next).map_err(edgepipe_lake::Error::from),
    )
    .await?;
    Ok(entries.len())
}
