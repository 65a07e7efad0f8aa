//! The local HTTP endpoint (hyper, HTTP/1.1, bound to localhost by default):
//! `GET /metrics` (Prometheus text), `GET /healthz`, and, when an `http` collector is
//! configured, `POST /api/v1/push` for local producers. A push is answered 200 only after its
//! readings are durable in the queue (503 if the queue refused them, 400 with per-line errors
//! if nothing in it decoded). Bodies are capped at 1 MiB; at most 256 connections are served at
//! once (further ones wait in the kernel's accept backlog).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use edgepipe_protocol::Limits;
use edgepipe_protocol::http::{Format, Precision, decode_body};
use edgepipe_types::DeviceId;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::collect::Ctx;
use crate::metrics::Metrics;

/// `[http]`: the local endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; empty disables the endpoint. Default "127.0.0.1:9464".
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

const MAX_BODY: usize = 1024 * 1024;

struct State {
    metrics: Arc<Metrics>,
    push: Option<Ctx>,
    device: DeviceId,
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

fn json_err(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"code": code, "message": message}).to_string();
    let mut r = text(status, body);
    if let Ok(v) = "application/json".parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    Ok(match (req.method(), path.as_str()) {
        (&Method::GET, "/metrics") => text(StatusCode::OK, st.metrics.render()),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::POST, "/api/v1/push") => push(&st, req).await,
        _ => json_err(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
    })
}

async fn push(st: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(ctx) = &st.push else {
        return json_err(
            StatusCode::NOT_FOUND,
            "not_found",
            "no http collector is configured",
        );
    };
    let ct = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let format = match Format::from_content_type(ct.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            return json_err(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "content_type",
                &e.to_string(),
            );
        }
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return json_err(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "body exceeds 1 MiB or was cut off",
            );
        }
    };
    let now = ctx.clock.now_ms();
    let d = decode_body(
        format,
        &body,
        &st.device,
        now,
        &Limits::default(),
        Precision::Ms,
    );
    if !d.errors.is_empty() {
        ctx.metrics.reject("http_decode", d.errors.len() as u64);
    }
    if d.readings.is_empty() {
        let msg = d.errors.first().map_or_else(
            || "no readings".to_string(),
            |e| format!("line {}: {}", e.line, e.message),
        );
        return json_err(StatusCode::BAD_REQUEST, "invalid", &msg);
    }
    let n = d.readings.len();
    match ctx.send_durable(d.readings, Vec::new()).await {
        Ok(()) => {
            let body = serde_json::json!({"accepted": n, "errors": d.errors.len()}).to_string();
            text(StatusCode::OK, body)
        }
        Err(e) => {
            tracing::warn!(error = %e, "push refused by the queue");
            json_err(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "queue unavailable",
            )
        }
    }
}

/// Binds and serves until `cancel`. Returns the bound address.
pub async fn serve(
    cfg: &HttpConfig,
    metrics: Arc<Metrics>,
    push: Option<Ctx>,
    device: DeviceId,
    cancel: CancellationToken,
) -> crate::Result<Option<SocketAddr>> {
    if cfg.listen.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|source| crate::Error::Bind {
            addr: cfg.listen.clone(),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| crate::Error::Bind {
        addr: cfg.listen.clone(),
        source,
    })?;
    let st = Arc::new(State {
        metrics,
        push,
        device,
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(256));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = cancel.cancelled() => return,
            };
            let (stream, _) = tokio::select! {
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
                _ = cancel.cancelled() => return,
            };
            let st = st.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(st.clone(), req));
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
                drop(permit);
            });
        }
    });
    Ok(Some(addr))
}
