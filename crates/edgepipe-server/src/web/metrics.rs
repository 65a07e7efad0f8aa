//! `GET /metrics`: the server's counters and gauges in the Prometheus text format.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::web::state::AppState;

/// `GET /metrics`: Prometheus text exposition.
pub(crate) async fn metrics(State(st): State<AppState>) -> Response {
    let ing = &st.ingestor;
    let w = ing.wal().stats();
    let d = ing.deadletters().stats();
    let text = ing.metrics().render(&[
        (
            "edgepipe_wal_disk_bytes",
            "Bytes in WAL segments.",
            w.disk_bytes,
        ),
        ("edgepipe_wal_segments", "WAL segment files.", w.segments),
        (
            "edgepipe_wal_next_seq",
            "Next WAL sequence (records ever written).",
            w.next_seq,
        ),
        (
            "edgepipe_wal_fsyncs",
            "fdatasync calls since start.",
            w.fsyncs,
        ),
        (
            "edgepipe_wal_poisoned",
            "1 if an fsync failed and the WAL stopped acknowledging.",
            u64::from(ing.wal().is_poisoned()),
        ),
        (
            "edgepipe_deadletters_retained",
            "Dead letters retained.",
            d.retained,
        ),
        (
            "edgepipe_deadletters_dropped",
            "Dead letters deleted by the disk budget.",
            d.dropped,
        ),
        (
            "edgepipe_lake_rows_written_total",
            "Rows written to lake Parquet files.",
            st.lake.metrics.rows_written.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_lake_files_written_total",
            "Parquet files written by the lake writer.",
            st.lake.metrics.files_written.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_lake_bytes_written_total",
            "Parquet bytes written by the lake writer.",
            st.lake.metrics.bytes_written.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_lake_compaction_runs_total",
            "Compaction passes run to their end, failed ones included (one per lake.compaction_interval).",
            st.lake.metrics.compaction_runs.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_lake_partitions_compacted_total",
            "Lake partitions compacted.",
            st.lake.metrics.partitions_compacted.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_lake_compaction_running",
            "1 while a compaction pass runs, else 0.",
            st.lake.metrics.compaction_running.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_lake_fresh_rows",
            "Rows read from the WAL and queryable, not yet in lake files.",
            st.lake.fresh.rows() as u64,
        ),
        (
            "edgepipe_lake_wal_lag_records",
            "WAL records not yet committed to the lake.",
            w.next_seq.saturating_sub(st.lake.fresh.committed()),
        ),
        (
            "edgepipe_detect_readings_scored_total",
            "Readings scored by the detection stage.",
            st.lake.detect.scored.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_detect_events_total",
            "Anomaly events stored by the detection stage.",
            st.lake.detect.events.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_detect_wal_lag_records",
            "WAL records not yet checkpointed by the detection stage.",
            w.next_seq
                .saturating_sub(st.lake.detect.position.load(Ordering::Relaxed)),
        ),
        (
            "edgepipe_detect_scoring_microseconds_total",
            "Time spent scoring readings (divide by readings scored for the mean latency).",
            st.lake.detect.scoring_nanos.load(Ordering::Relaxed) / 1_000,
        ),
        (
            "edgepipe_cases_events_received_total",
            "Anomaly events handed to the case manager.",
            st.cases.metrics.events_received.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_cases_opened_total",
            "Cases opened.",
            st.cases.metrics.opened.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_cases_auto_resolved_total",
            "Cases resolved automatically after a quiet window.",
            st.cases.metrics.auto_resolved.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_notifications_delivered_total",
            "Notifications delivered (each one in a digest counts).",
            st.cases.notify.delivered.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_notifications_failed_total",
            "Failed notification delivery attempts (retried).",
            st.cases.notify.failures.load(Ordering::Relaxed),
        ),
        (
            "edgepipe_lake_records_dropped_total",
            "WAL records that never reached the lake (undecodable or deleted by the WAL budget).",
            st.lake.metrics.records_undecodable.load(Ordering::Relaxed)
                + st.lake
                    .metrics
                    .records_lost_to_wal_budget
                    .load(Ordering::Relaxed),
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
