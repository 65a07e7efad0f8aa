//! The HTTP API: `POST /api/v1/ingest` (JSON, NDJSON, InfluxDB line protocol; bearer token =
//! device token); SQL, series, dead letters, status and the operator API of [`crate::api`]
//! (bearer token = API token of a user with a role); Prometheus `/metrics`, `/healthz`,
//! `/readyz`, the OpenAPI document and the dashboard (unauthenticated).
//!
//! Errors are `{"code": "...", "message": "..."}`; 4xx say what was wrong, 401 and 5xx are
//! opaque with the detail in the log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use edgepipe_protocol::http::{Format, Precision};
use edgepipe_types::DeviceId;
use serde::Deserialize;
use serde_json::json;

use crate::devices::AuthResult;
use crate::ingest::{Ingestor, Rejection};

/// API error with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid bearer token",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response()
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r {
            Rejection::NotAuthorized(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "not_authorized", m)
            }
            Rejection::BadPayload(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_payload", m),
            Rejection::UnknownTopic(m) => {
                ApiError::new(StatusCode::BAD_REQUEST, "unknown_topic", m)
            }
            r @ Rejection::RateLimited { .. } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", r.to_string())
            }
            r @ Rejection::TooLarge { .. } => {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", r.to_string())
            }
            Rejection::Unavailable(m) => {
                tracing::error!(error = %m, "ingest unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the server cannot store data right now; retry later",
                )
            }
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AppState {
    pub(crate) ingestor: Arc<Ingestor>,
    pub(crate) lake: LakeApi,
    pub(crate) cases: crate::api::CasesApi,
}

/// What the API needs from the lake stage.
#[derive(Debug, Clone)]
pub struct LakeApi {
    /// SQL engine.
    pub engine: edgepipe_query::QueryEngine,
    /// Writer counters.
    pub metrics: Arc<edgepipe_lake::LakeMetrics>,
    /// Rows not yet flushed.
    pub fresh: edgepipe_lake::FreshBuffer,
    /// Detection stage counters.
    pub detect: Arc<crate::detect::DetectMetrics>,
}

/// Builds the router. `max_body` bytes → larger bodies get 413.
pub fn router(
    ingestor: Arc<Ingestor>,
    max_body: usize,
    lake: LakeApi,
    cases: crate::api::CasesApi,
) -> Router {
    use crate::{api, dashboard};
    let state = AppState {
        ingestor,
        lake,
        cases,
    };
    let users = Router::new()
        .route("/api/v1/query", post(query))
        .route("/api/v1/series", get(series))
        .route("/api/v1/deadletters", get(list_deadletters))
        .route("/api/v1/deadletters/{id}", get(get_deadletter))
        .route("/api/v1/status", get(status))
        .route("/api/v1/whoami", get(api::whoami))
        .route("/api/v1/fleet", get(api::fleet))
        .route("/api/v1/cases", get(api::list_cases))
        .route("/api/v1/cases/{id}", get(api::get_case))
        .route("/api/v1/cases/{id}/actions", post(api::case_action))
        .route(
            "/api/v1/devices",
            get(api::list_devices).post(api::add_device),
        )
        .route("/api/v1/devices/{id}/{action}", post(api::device_action))
        .route("/api/v1/users", get(api::list_users).post(api::add_user))
        .route("/api/v1/audit", get(api::audit))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            api::require_user,
        ));
    Router::new()
        .route("/api/v1/ingest", post(ingest))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(dashboard::index))
        .route("/assets/{name}", get(dashboard::asset))
        .route("/api/openapi.json", get(dashboard::openapi))
        .route("/api/docs", get(dashboard::api_docs))
        .merge(users)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint {} (see /api/openapi.json)", uri.path()),
    )
}

/// `GET /readyz`: 200 when the server can take and serve data (WAL writable, state store
/// reachable), 503 with the reason otherwise.
async fn readyz(State(st): State<AppState>) -> Response {
    if st.ingestor.wal().is_poisoned() {
        return (StatusCode::SERVICE_UNAVAILABLE, "wal poisoned\n").into_response();
    }
    if let Err(e) = edgepipe_cases::CaseStore::get_meta(&*st.cases.store, "ready-probe").await {
        tracing::warn!(error = %e, "readyz: state store unreachable");
        return (StatusCode::SERVICE_UNAVAILABLE, "state store unreachable\n").into_response();
    }
    (StatusCode::OK, "ready\n").into_response()
}

#[derive(Debug, Deserialize)]
struct IngestQuery {
    precision: Option<String>,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn authenticate(
    ing: &Ingestor,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<DeviceId, ApiError> {
    let fail = |why: &str| {
        ing.metrics().auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %peer, why, "http authentication failed");
        ApiError::unauthorized()
    };
    let Some(token) = bearer(headers) else {
        return Err(fail("no bearer token"));
    };
    // The device id may travel in `X-Device-Id`; otherwise the token alone names the device.
    let found;
    let device = match headers.get("x-device-id").and_then(|v| v.to_str().ok()) {
        Some(d) => d,
        None => match ing.devices().find_by_token(token) {
            Ok(Some(d)) => {
                found = d;
                found.as_str()
            }
            Ok(None) => return Err(fail("unknown token")),
            Err(e) => {
                tracing::error!(error = %e, "device registry unavailable");
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "retry later",
                ));
            }
        },
    };
    match ing
        .devices()
        .authenticate(device, token, ing.auto_register())
    {
        Ok(AuthResult::Ok | AuthResult::Registered) => {
            DeviceId::new(device).map_err(|_| fail("invalid device id"))
        }
        Ok(AuthResult::Disabled) => Err(fail("device disabled")),
        Ok(_) => Err(fail("bad credentials")),
        Err(e) => {
            tracing::error!(error = %e, "device registry unavailable");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "retry later",
            ))
        }
    }
}

async fn ingest(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<IngestQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let ing = &st.ingestor;
    let device = authenticate(ing, &headers, peer)?;
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = Format::from_content_type(ct).map_err(|e| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            e.to_string(),
        )
    })?;
    let precision = match q.precision.as_deref() {
        Some(p) => Precision::parse(p)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_precision", e.to_string()))?,
        None => Precision::Ns,
    };
    let peer_s = peer.to_string();
    let out = ing
        .http(&device, format, precision, &body, Some(&peer_s))
        .await?;
    let status = if out.rejected == 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, Json(out)).into_response())
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

async fn list_deadletters(
    State(st): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let dl = st.ingestor.deadletters();
    let limit = q.limit.unwrap_or(100).min(1000);
    let items = match q.after {
        Some(a) => dl.list(a, limit),
        None => dl.tail(limit),
    }
    .map_err(|e| {
        tracing::error!(error = %e, "dead-letter read failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    Ok(Json(json!({"stats": dl.stats(), "items": items})).into_response())
}

async fn get_deadletter(
    State(st): State<AppState>,
    Path(id): Path<u64>,
) -> Result<Response, ApiError> {
    match st.ingestor.deadletters().get(id) {
        Ok(Some(d)) => Ok(Json(d).into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead letter {id}"),
        )),
        Err(e) => {
            tracing::error!(error = %e, "dead-letter read failed");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ))
        }
    }
}

/// A JSON snapshot of the server's counters.
pub fn status_json(ing: &Ingestor) -> serde_json::Value {
    let m = ing.metrics();
    let w = ing.wal().stats();
    json!({
        "mqtt_connections": m.mqtt_connections.load(Ordering::Relaxed),
        "messages_received": m.messages_received.load(Ordering::Relaxed),
        "messages_written": m.messages_written.load(Ordering::Relaxed),
        "readings_written": m.readings_written.load(Ordering::Relaxed),
        "duplicates": m.duplicates.load(Ordering::Relaxed),
        "auth_failures": m.auth_failures.load(Ordering::Relaxed),
        "deadletters": ing.deadletters().stats(),
        "wal": {
            "disk_bytes": w.disk_bytes,
            "segments": w.segments,
            "first_seq": w.first_seq,
            "next_seq": w.next_seq,
            "fsyncs": w.fsyncs,
            "torn_records_truncated": w.torn_records_truncated,
            "poisoned": ing.wal().is_poisoned(),
        },
    })
}

async fn status(State(st): State<AppState>) -> Response {
    let mut v = status_json(&st.ingestor);
    v["lake"] = lake_json(&st.lake);
    v["detect"] = detect_json(&st.lake.detect);
    v["cases"] = crate::api::cases_status(&st.cases).await;
    let m = st.ingestor.metrics();
    v["ingest"] = json!({
        "readings_written": m.readings_written.load(Ordering::Relaxed),
        "messages_written": m.messages_written.load(Ordering::Relaxed),
        "messages_received": m.messages_received.load(Ordering::Relaxed),
        "mqtt_connections": m.mqtt_connections.load(Ordering::Relaxed),
        "auth_failures": m.auth_failures.load(Ordering::Relaxed),
    });
    let w = st.ingestor.wal().stats();
    v["consumers"] = json!([
        {"name": "lake", "position": st.lake.fresh.committed(),
         "lag_records": w.next_seq.saturating_sub(st.lake.fresh.committed())},
        {"name": "detect", "position": st.lake.detect.position.load(Ordering::Relaxed),
         "lag_records": w.next_seq.saturating_sub(st.lake.detect.position.load(Ordering::Relaxed))},
    ]);
    Json(v).into_response()
}

fn lake_json(l: &LakeApi) -> serde_json::Value {
    let m = &l.metrics;
    json!({
        "rows_written": m.rows_written.load(Ordering::Relaxed),
        "files_written": m.files_written.load(Ordering::Relaxed),
        "bytes_written": m.bytes_written.load(Ordering::Relaxed),
        "flushes": m.flushes.load(Ordering::Relaxed),
        "committed_wal_seq": l.fresh.committed(),
        "fresh_rows": l.fresh.rows(),
        "last_flush_unix_ms": m.last_flush_unix_ms.load(Ordering::Relaxed),
        "records_undecodable": m.records_undecodable.load(Ordering::Relaxed),
        "records_lost_to_wal_budget": m.records_lost_to_wal_budget.load(Ordering::Relaxed),
    })
}

fn detect_json(d: &crate::detect::DetectMetrics) -> serde_json::Value {
    json!({
        "scored": d.scored.load(Ordering::Relaxed),
        "late": d.late.load(Ordering::Relaxed),
        "skipped_non_numeric": d.skipped_non_numeric.load(Ordering::Relaxed),
        "events": d.events.load(Ordering::Relaxed),
        "checkpoints": d.checkpoints.load(Ordering::Relaxed),
        "checkpointed_wal_seq": d.position.load(Ordering::Relaxed),
        "feedback_applied": d.feedback_applied.load(Ordering::Relaxed),
        "gap_reports": d.gaps.load(Ordering::Relaxed),
        "model_version": d.model_version(),
    })
}

async fn metrics(State(st): State<AppState>) -> Response {
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

async fn healthz(State(st): State<AppState>) -> Response {
    if st.ingestor.wal().is_poisoned() {
        (StatusCode::SERVICE_UNAVAILABLE, "wal poisoned\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryBody {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

impl From<edgepipe_query::Error> for ApiError {
    fn from(e: edgepipe_query::Error) -> Self {
        use edgepipe_query::Error as E;
        let code = match &e {
            E::Sql(_) => "bad_sql",
            E::MemoryLimit { .. } => "memory_limit",
            E::RowLimit { .. } => "row_limit",
            E::Timeout(_) => "timeout",
            E::BadRequest(_) => "bad_request",
            E::Execution(_) | E::Encode(_) => "query_failed",
        };
        if e.is_client_error() {
            let status = match &e {
                E::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                E::MemoryLimit { .. } | E::RowLimit { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, code, e.to_string())
        } else {
            tracing::error!(error = %e, "query failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                code,
                "the query failed on the server; see the server log",
            )
        }
    }
}

/// `POST /api/v1/query`: body `{"sql": "...", "format": "json|csv|arrow"}` (JSON) or the SQL
/// itself as text with `?format=`. JSON answers `{"columns": [...], "rows": [...]}`.
async fn query(
    State(st): State<AppState>,
    Query(q): Query<QueryParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let (sql, fmt) = if is_json {
        let b: QueryBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("body must be {{\"sql\": \"...\", \"format\": \"json\"}}: {e}"),
            )
        })?;
        (b.sql, b.format.or(q.format))
    } else {
        let sql = String::from_utf8(body.to_vec()).map_err(|_| {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", "SQL must be UTF-8")
        })?;
        (sql, q.format)
    };
    let format = edgepipe_query::OutputFormat::parse(fmt.as_deref().unwrap_or("json"))?;
    let out = st.lake.engine.query(&sql).await?;
    if format == edgepipe_query::OutputFormat::Json {
        let rows = edgepipe_query::json_rows(&out.schema, &out.batches)?;
        let columns: Vec<serde_json::Value> = out
            .schema
            .fields()
            .iter()
            .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
            .collect();
        return Ok(
            Json(json!({"columns": columns, "rows": rows, "row_count": out.rows})).into_response(),
        );
    }
    let mut buf = Vec::new();
    edgepipe_query::write_output(format, &out.schema, &out.batches, &mut buf)?;
    Ok(([(header::CONTENT_TYPE, format.content_type())], buf).into_response())
}

/// `GET /api/v1/series?device&metric&from&to&step&points`: min/max/avg per bucket.
async fn series(
    State(st): State<AppState>,
    Query(req): Query<edgepipe_query::SeriesRequest>,
) -> Result<Response, ApiError> {
    let r = st.lake.engine.series(&req).await?;
    Ok(Json(r).into_response())
}
