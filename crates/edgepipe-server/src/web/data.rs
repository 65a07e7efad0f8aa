//! The data-plane handlers: device ingest (`POST /api/v1/ingest`), dead letters, SQL and series
//! over the lake, status, health and readiness.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use edgepipe_protocol::http::{Format, Precision};
use edgepipe_types::DeviceId;
use serde::Deserialize;
use serde_json::json;

use crate::gateway::devices::AuthResult;
use crate::gateway::identity::ClientCert;
use crate::gateway::ingest::{Direct, Ingestor};

use crate::web::error::ApiError;
use crate::web::state::{AppState, LakeApi};

/// `GET /readyz`: 200 when the server can take and serve data (WAL writable, state store
/// reachable), 503 with the reason otherwise.
pub(crate) async fn readyz(State(st): State<AppState>) -> Response {
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
pub(crate) struct IngestQuery {
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
    cert: Option<&ClientCert>,
) -> Result<DeviceId, ApiError> {
    let guard = ing.auth_guard();
    if let Err(wait_ms) = guard.check(peer.ip(), ing.now_ms()) {
        ing.metrics().auth_blocked.fetch_add(1, Ordering::Relaxed);
        let secs = (wait_ms + 999) / 1000;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "auth_backoff",
            format!("too many failed authentications from this address; retry in {secs} s"),
        )
        .with_retry_after(u64::try_from(secs).unwrap_or(1)));
    }
    let fail = |why: &str| {
        ing.metrics().auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %peer, why, "http authentication failed");
        if let Some(block_ms) = guard.failed(peer.ip(), ing.now_ms()) {
            tracing::warn!(peer = %peer, block_ms, "repeated authentication failures: this address is refused unexamined for a while");
        }
        ApiError::unauthorized()
    };
    let device = if let Some(cert) = cert {
        authenticate_cert(ing, headers, cert, fail)
    } else {
        authenticate_token(ing, headers, fail)
    }?;
    guard.succeeded(peer.ip());
    Ok(device)
}

fn authenticate_token(
    ing: &Ingestor,
    headers: &HeaderMap,
    fail: impl Fn(&str) -> ApiError,
) -> Result<DeviceId, ApiError> {
    if ing.cert_rules().cert_required {
        ing.metrics()
            .cert_refusal(crate::gateway::metrics::CertRefusal::NoClientCertificate);
        return Err(fail("no client certificate (tls.client_auth = required)"));
    }
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

/// A device certificate of the HTTPS connection authenticates the device (rustls verified it);
/// `X-Device-Id`, if sent, must be the device it names.
fn authenticate_cert(
    ing: &Ingestor,
    headers: &HeaderMap,
    cert: &ClientCert,
    fail: impl Fn(&str) -> ApiError,
) -> Result<DeviceId, ApiError> {
    use crate::gateway::metrics::CertRefusal;
    let rules = ing.cert_rules();
    let id = match crate::gateway::identity::identity_of(cert.0.as_ref(), rules.device_id_from) {
        Ok(id) => id,
        Err(e) => {
            ing.metrics().cert_refusal(CertRefusal::NoDeviceId);
            return Err(fail(&e.to_string()));
        }
    };
    if let Some(d) = headers.get("x-device-id").and_then(|v| v.to_str().ok())
        && d != id.device_id
    {
        ing.metrics().cert_refusal(CertRefusal::OtherDevice);
        return Err(fail(
            "X-Device-Id names another device than the client certificate",
        ));
    }
    match ing
        .devices()
        .authenticate_cert(&id, rules.register_by_certificate)
    {
        Ok(AuthResult::Ok | AuthResult::Registered) => {
            DeviceId::new(&id.device_id).map_err(|_| fail("invalid device id"))
        }
        Ok(r) => {
            let why = match r {
                AuthResult::Revoked => CertRefusal::Revoked,
                AuthResult::Disabled => CertRefusal::Disabled,
                _ => CertRefusal::Unregistered,
            };
            ing.metrics().cert_refusal(why);
            Err(fail(why.as_str()))
        }
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

/// Why [`read_limited`] gave up.
enum Oversize {
    /// The body could not be read.
    Read(String),
    /// It is longer than the limit: its first `limit` bytes, and how many were read in all
    /// before reading stopped.
    Over { start: Vec<u8>, seen: usize },
}

/// The whole body if it is at most `limit` bytes; otherwise stops reading past the limit.
async fn read_limited(body: axum::body::Body, limit: usize) -> Result<Bytes, Oversize> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Oversize::Read(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                let seen = buf.len();
                buf.truncate(limit);
                return Err(Oversize::Over { start: buf, seen });
            }
        }
    }
    Ok(Bytes::from(buf))
}

pub(crate) async fn ingest(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<Extension<ClientCert>>,
    Query(q): Query<IngestQuery>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let ing = &st.ingestor;
    let device = authenticate(ing, &headers, peer, cert.as_ref().map(|c| &c.0))?;
    let peer_s = peer.to_string();
    // Read up to the payload limit ourselves (the route has no framework body limit): an
    // oversized body is refused like an oversized MQTT payload, counted and kept (its start)
    // in the dead letters, rather than cut off by the framework unseen.
    let body = match read_limited(body, ing.max_payload()).await {
        Ok(b) => b,
        Err(Oversize::Read(e)) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the request body failed: {e}"),
            ));
        }
        Err(Oversize::Over { start, seen }) => {
            return Err(ing
                .refuse_too_large(&device, Some(&peer_s), "http:/api/v1/ingest", &start, seen)
                .await
                .into());
        }
    };
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
    let out = ing
        .http(&Direct, &device, format, precision, &body, Some(&peer_s))
        .await?;
    let status = if out.rejected == 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    Ok((status, Json(out)).into_response())
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

pub(crate) async fn list_deadletters(
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

pub(crate) async fn get_deadletter(
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

pub(crate) async fn status(State(st): State<AppState>) -> Response {
    let mut v = status_json(&st.ingestor);
    v["lake"] = lake_json(&st.lake);
    v["detect"] = detect_json(&st.lake.detect);
    v["cases"] = crate::web::api::cases_status(&st.cases, st.clock.now_ms()).await;
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

fn detect_json(d: &crate::stages::detect::DetectMetrics) -> serde_json::Value {
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

pub(crate) async fn healthz(State(st): State<AppState>) -> Response {
    if st.ingestor.wal().is_poisoned() {
        (StatusCode::SERVICE_UNAVAILABLE, "wal poisoned\n").into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct QueryParams {
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueryBody {
    sql: String,
    #[serde(default)]
    format: Option<String>,
}

/// `POST /api/v1/query`: body `{"sql": "...", "format": "json|csv|arrow"}` (JSON) or the SQL
/// itself as text with `?format=`. JSON answers `{"columns": [...], "rows": [...]}`.
pub(crate) async fn query(
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
pub(crate) async fn series(
    State(st): State<AppState>,
    Query(req): Query<edgepipe_query::SeriesRequest>,
) -> Result<Response, ApiError> {
    let r = st.lake.engine.series(&req).await?;
    Ok(Json(r).into_response())
}
