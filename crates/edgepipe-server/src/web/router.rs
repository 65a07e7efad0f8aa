//! The HTTP API: `POST /api/v1/ingest` (JSON, NDJSON, InfluxDB line protocol; bearer token =
//! device token); SQL, series, dead letters, status and the operator API of [`crate::web::api`]
//! (bearer token = API token of a user with a role); Prometheus `/metrics`, `/healthz`,
//! `/readyz`, the OpenAPI document and the dashboard (unauthenticated).
//!
//! Errors are `{"code": "...", "message": "..."}`; 4xx say what was wrong, 401 and 5xx are
//! opaque with the detail in the log.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use edgepipe_types::SharedClock;

use crate::gateway::ingest::Ingestor;

use crate::web::error::ApiError;
use crate::web::state::{AppState, CasesApi, LakeApi};
use crate::web::{api, dashboard, data, metrics};

/// Builds the router. `max_body` bytes → larger bodies get 413.
pub fn router(
    ingestor: Arc<Ingestor>,
    max_body: usize,
    lake: LakeApi,
    cases: CasesApi,
    clock: SharedClock,
) -> Router {
    let state = AppState {
        ingestor,
        lake,
        cases,
        clock,
    };
    let users = Router::new()
        .route("/api/v1/query", post(data::query))
        .route("/api/v1/series", get(data::series))
        .route("/api/v1/deadletters", get(data::list_deadletters))
        .route("/api/v1/deadletters/{id}", get(data::get_deadletter))
        .route("/api/v1/status", get(data::status))
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
        // The ingest handler reads its body up to `limits.max_payload_bytes` itself, so an
        // oversized body is counted and dead-lettered rather than cut off by the framework.
        .route(
            "/api/v1/ingest",
            post(data::ingest).layer(DefaultBodyLimit::disable()),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(data::healthz))
        .route("/readyz", get(data::readyz))
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
