//! The operator API: API-token authentication with roles (viewer / operator / admin), cases,
//! the fleet overview, devices, users and the audit log. Every change is in the audit log
//! (actor, action, target, time); case changes also in the case's timeline.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use edgepipe_cases::{Action, CaseFilter, CaseState, CaseStore, Category, Role, Severity, User};
use serde::Deserialize;
use serde_json::json;

use crate::web::error::ApiError;
use crate::web::state::{AppState, CasesApi};

/// Authenticates the API token of every request under it and puts the [`User`] in the
/// request's extensions. 401 (opaque) for a missing, unknown or disabled token.
pub(crate) async fn require_user(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned());
    let Some(token) = token else {
        st.ingestor
            .metrics()
            .auth_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer, path = %req.uri().path(), "api: no bearer token");
        return Err(ApiError::unauthorized());
    };
    match st.cases.store.authenticate(&token).await {
        Ok(Some(user)) => {
            req.extensions_mut().insert(user);
            Ok(next.run(req).await)
        }
        Ok(None) => {
            st.ingestor
                .metrics()
                .auth_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(peer, path = %req.uri().path(), "api: unknown or disabled token");
            Err(ApiError::unauthorized())
        }
        Err(e) => Err(e.into()),
    }
}

fn need(user: &User, role: Role, what: &str) -> Result<(), ApiError> {
    if user.role >= role {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} is a {}; {what} needs the {} role",
                user.name,
                user.role.as_str(),
                role.as_str()
            ),
        ))
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", msg)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad(format!("body must be {shape}: {e}")))
}

/// `GET /api/v1/whoami`.
pub(crate) async fn whoami(axum::Extension(u): axum::Extension<User>) -> Response {
    Json(json!({"user": u.name, "role": u.role})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CasesQuery {
    state: Option<String>,
    min_severity: Option<String>,
    device_id: Option<String>,
    category: Option<String>,
    assignee: Option<String>,
    limit: Option<u32>,
    after: Option<String>,
}

/// `GET /api/v1/cases?state=open,acknowledged&min_severity=high&device_id&category&assignee&limit&after`.
pub(crate) async fn list_cases(
    State(st): State<AppState>,
    Query(q): Query<CasesQuery>,
) -> Result<Response, ApiError> {
    let mut f = CaseFilter {
        device_id: q.device_id.filter(|s| !s.is_empty()),
        assignee: q.assignee.filter(|s| !s.is_empty()),
        limit: q.limit,
        after: q.after.filter(|s| !s.is_empty()),
        ..Default::default()
    };
    if let Some(states) = q.state.filter(|s| !s.is_empty()) {
        for s in states.split(',') {
            f.states.push(CaseState::parse(s.trim()).ok_or_else(|| {
                bad(format!(
                    "state {s:?} is not one of open, acknowledged, investigating, resolved, false_positive"
                ))
            })?);
        }
    }
    if let Some(s) = q.min_severity.filter(|s| !s.is_empty()) {
        f.min_severity = Some(Severity::parse(&s).ok_or_else(|| {
            bad(format!(
                "min_severity {s:?} is not one of info, low, medium, high, critical (or 1-5)"
            ))
        })?);
    }
    if let Some(c) = q.category.filter(|s| !s.is_empty()) {
        f.category = Some(Category::parse(&c).ok_or_else(|| {
            bad(format!(
                "category {c:?} is not one of anomaly, silence, gap, pipeline"
            ))
        })?);
    }
    if f.limit.is_some_and(|l| l == 0 || l > 1000) {
        return Err(bad("limit must be 1 to 1000"));
    }
    Ok(Json(st.cases.store.list(&f).await?).into_response())
}

/// `GET /api/v1/cases/{id}`: the case with anomalies, timeline, evidence and the SQL showing
/// its full window of raw readings.
pub(crate) async fn get_case(
    State(st): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let d = st.cases.store.get(id).await?;
    let before = st.cases.evidence_before_ms;
    let q = crate::stages::cases::window_query(
        &d.case.device_id,
        d.case.first_event_ts.saturating_sub(before),
        d.case.last_event_ts.saturating_add(before),
    );
    let mut v = serde_json::to_value(&d).map_err(|e| {
        tracing::error!(error = %e, "encoding a case");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    v["window_query"] = json!(q);
    Ok(Json(v).into_response())
}

/// `POST /api/v1/cases/{id}/actions` with an action (`{"action": "acknowledge"}`, ...).
pub(crate) async fn case_action(
    State(st): State<AppState>,
    Path(id): Path<i64>,
    axum::Extension(u): axum::Extension<User>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let action: Action = parse_json(
        &body,
        r#"{"action": "acknowledge|investigate|resolve|reopen|assign|comment", ...}"#,
    )?;
    need(&u, Role::Operator, &format!("{} a case", action.name()))?;
    let action = match action {
        // An empty assignee from a form means "unassign".
        Action::Assign { assignee: Some(a) } if a.trim().is_empty() => {
            Action::Assign { assignee: None }
        }
        a => a,
    };
    let c = st
        .cases
        .store
        .act(id, &action, &u.name, st.clock.now_ms())
        .await?;
    st.cases.waker.notify_one();
    Ok(Json(c).into_response())
}

/// `GET /api/v1/fleet`: every device with last seen, online, readings in the last hour,
/// metrics and open cases. "Last seen" and "online" follow what the server received (receive
/// time), not the readings' event time: a device catching up on a backlog is online and was
/// seen just now, however old its readings are (`last_reading_ts_ms` gives their newest).
pub(crate) async fn fleet(State(st): State<AppState>) -> Result<Response, ApiError> {
    let now = st.clock.now_ms();
    let sql = format!(
        "SELECT device_id, CAST(max(received_at) AS BIGINT) / 1000 AS last_ms, \
         CAST(max(ts) AS BIGINT) / 1000 AS last_ts_ms, \
         sum(CASE WHEN ts >= to_timestamp_millis({h}) THEN 1 ELSE 0 END) AS n1h, \
         array_agg(DISTINCT metric) AS metrics \
         FROM readings WHERE ts >= to_timestamp_millis({d}) GROUP BY device_id",
        h = now - 3_600_000,
        d = now - 86_400_000
    );
    let out = st.lake.engine.query(&sql).await?;
    let rows = edgepipe_query::json_rows(&out.schema, &out.batches)?;
    let open = st.cases.store.open_by_device().await?;
    let mut devices: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    if let Ok(list) = st.ingestor.devices().list() {
        for d in list {
            devices.insert(
                d.id.to_string(),
                json!({"device_id": d.id.to_string(), "last_seen_ms": null, "online": false,
                       "readings_last_hour": 0, "metrics": [], "open_cases": 0,
                       "max_open_severity": null, "enabled": d.enabled}),
            );
        }
    }
    for r in rows {
        let Some(id) = r["device_id"].as_str().map(str::to_owned) else {
            continue;
        };
        let last = r["last_ms"].as_i64();
        let e = devices.entry(id.clone()).or_insert_with(|| {
            json!({"device_id": id, "open_cases": 0, "max_open_severity": null, "enabled": true})
        });
        e["last_seen_ms"] = json!(last);
        e["last_reading_ts_ms"] = r["last_ts_ms"].clone();
        e["online"] = json!(last.is_some_and(|l| now - l <= 120_000));
        e["readings_last_hour"] = r["n1h"].clone();
        e["metrics"] = r["metrics"].clone();
    }
    for (id, n, sev) in open {
        let e = devices.entry(id.clone()).or_insert_with(|| {
            json!({"device_id": id, "last_seen_ms": null, "online": false,
                   "readings_last_hour": 0, "metrics": [], "enabled": true})
        });
        e["open_cases"] = json!(n);
        e["max_open_severity"] = json!(Severity::from_level(sev));
    }
    Ok(
        Json(json!({"devices": devices.into_values().collect::<Vec<_>>(), "now_ms": now}))
            .into_response(),
    )
}

/// `GET /api/v1/devices`.
pub(crate) async fn list_devices(State(st): State<AppState>) -> Result<Response, ApiError> {
    let list: Vec<serde_json::Value> = st
        .ingestor
        .devices()
        .list()
        .map_err(device_err)?
        .into_iter()
        .map(|d| {
            json!({"id": d.id, "enabled": d.enabled, "created_at": d.created_at,
                   "rotated_at": d.rotated_at, "auto_registered": d.auto_registered})
        })
        .collect();
    Ok(Json(json!({"devices": list})).into_response())
}

fn device_err(e: crate::gateway::devices::DeviceError) -> ApiError {
    use crate::gateway::devices::DeviceError as D;
    match e {
        D::Exists(_) | D::InvalidId(_) => bad(e.to_string()),
        D::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()),
        e => {
            tracing::error!(error = %e, "device registry failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewDevice {
    id: String,
}

/// `POST /api/v1/devices` `{"id": "..."}` (admin): registers a device; the token is in the
/// answer, once.
pub(crate) async fn add_device(
    State(st): State<AppState>,
    axum::Extension(u): axum::Extension<User>,
    body: Bytes,
) -> Result<Response, ApiError> {
    need(&u, Role::Admin, "adding a device")?;
    let d: NewDevice = parse_json(&body, r#"{"id": "device-id"}"#)?;
    let token = st.ingestor.devices().add(&d.id).map_err(device_err)?;
    st.cases
        .store
        .audit(
            &u.name,
            "device.add",
            &format!("device:{}", d.id),
            json!({}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": d.id, "token": token})),
    )
        .into_response())
}

/// `POST /api/v1/devices/{id}/{disable|enable|rotate-token}` (admin).
pub(crate) async fn device_action(
    State(st): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    axum::Extension(u): axum::Extension<User>,
) -> Result<Response, ApiError> {
    need(&u, Role::Admin, "managing devices")?;
    let reg = st.ingestor.devices();
    let body = match action.as_str() {
        "disable" => {
            reg.set_enabled(&id, false).map_err(device_err)?;
            json!({"id": id, "enabled": false})
        }
        "enable" => {
            reg.set_enabled(&id, true).map_err(device_err)?;
            json!({"id": id, "enabled": true})
        }
        "rotate-token" => json!({"id": id, "token": reg.rotate_token(&id).map_err(device_err)?}),
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no device action {other:?} (disable, enable, rotate-token)"),
            ));
        }
    };
    st.cases
        .store
        .audit(
            &u.name,
            &format!("device.{}", action.replace('-', "_")),
            &format!("device:{id}"),
            json!({}),
        )
        .await?;
    Ok(Json(body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

/// `GET /api/v1/audit?before&limit` (admin): newest first.
pub(crate) async fn audit(
    State(st): State<AppState>,
    axum::Extension(u): axum::Extension<User>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    need(&u, Role::Admin, "reading the audit log")?;
    let entries = st
        .cases
        .store
        .audit_log(q.before, q.limit.unwrap_or(100))
        .await?;
    let next = entries.last().map(|e| e.id);
    Ok(Json(json!({"entries": entries, "next_before": next})).into_response())
}

/// `GET /api/v1/users` (admin).
pub(crate) async fn list_users(
    State(st): State<AppState>,
    axum::Extension(u): axum::Extension<User>,
) -> Result<Response, ApiError> {
    need(&u, Role::Admin, "listing users")?;
    Ok(Json(json!({"users": st.cases.store.users().await?})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    name: String,
    role: Role,
}

/// `POST /api/v1/users` `{"name": "...", "role": "viewer|operator|admin"}` (admin); the token
/// is in the answer, once.
pub(crate) async fn add_user(
    State(st): State<AppState>,
    axum::Extension(u): axum::Extension<User>,
    body: Bytes,
) -> Result<Response, ApiError> {
    need(&u, Role::Admin, "adding users")?;
    let n: NewUser = parse_json(&body, r#"{"name": "...", "role": "viewer|operator|admin"}"#)?;
    let token = st
        .cases
        .store
        .user_put(&n.name, n.role, false, &u.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"name": n.name, "role": n.role, "token": token})),
    )
        .into_response())
}

/// The `cases` section of `/api/v1/status`.
pub(crate) async fn cases_status(c: &CasesApi, now_ms: i64) -> serde_json::Value {
    // The opened and reopened counters before the outbox figures: a case is counted only once
    // its notifications are committed to the outbox, so read in this order every counted case's
    // notifications are in the figures (read the other way round, a reader could see a case
    // opened whose notification the pending count did not include yet).
    let m = &c.metrics;
    let (opened, flapped) = (
        m.opened.load(Ordering::Relaxed),
        m.flapped.load(Ordering::Relaxed),
    );
    let o = c.store.outbox_stats(now_ms).await.unwrap_or_default();
    let open: i64 = c
        .store
        .open_by_device()
        .await
        .map(|v| v.iter().map(|(_, n, _)| n).sum())
        .unwrap_or(0);
    json!({
        "open_cases": open,
        "events_received": m.events_received.load(Ordering::Relaxed),
        "cases_opened": opened,
        "cases_flapped": flapped,
        "cases_auto_resolved": m.auto_resolved.load(Ordering::Relaxed),
        "evidence_stored": m.evidence_stored.load(Ordering::Relaxed),
        "evidence_failed": m.evidence_failed.load(Ordering::Relaxed),
        "labels_exported": m.labels_exported.load(Ordering::Relaxed),
        "outbox_pending": o.pending,
        "outbox_failing": o.failing,
        "outbox_delivered": o.delivered,
        "outbox_oldest_pending_ms": o.oldest_pending_ms,
        "notifications_delivered": c.notify.delivered.load(Ordering::Relaxed),
        "notification_digests": c.notify.digests.load(Ordering::Relaxed),
        "notification_failures": c.notify.failures.load(Ordering::Relaxed),
    })
}
