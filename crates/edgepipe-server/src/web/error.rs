//! The API's one error shape: `{"code": "...", "message": "..."}` with a stable code; 4xx say
//! what was wrong, 401 and 5xx are opaque with the detail in the log. The conversions from the
//! ingest, query and case errors live here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::gateway::ingest::Rejection;

/// API error with a stable code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    /// Adds `Retry-After: secs`.
    pub(crate) fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
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
        let mut r = (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
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
            r @ Rejection::TooManyMetrics { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "too_many_metrics", r.to_string())
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

impl From<edgepipe_cases::Error> for ApiError {
    fn from(e: edgepipe_cases::Error) -> Self {
        use edgepipe_cases::Error as E;
        match e {
            E::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
            E::InvalidTransition { .. } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", e.to_string())
            }
            E::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string()),
            e => {
                tracing::error!(error = %e, "case store failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the case store failed; see the server log",
                )
            }
        }
    }
}
