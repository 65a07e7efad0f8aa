//! The API's status codes, authentication and error bodies, through the real router and the
//! real stores (WAL, lake, SQLite state store) in a temp directory, called in process with
//! `oneshot`: no socket, no binary.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use edgepipe_cases::{CasesConfig, Role};
use edgepipe_lake::{FreshBuffer, LakeConfig, SwapLock};
use edgepipe_query::{QueryConfig, QueryEngine};
use edgepipe_types::{SharedClock, SystemClock};
use edgepipe_wal::{Wal, WalConfig};
use http_body_util::BodyExt;
use tower::ServiceExt;

use crate::gateway::deadletter::DeadLetters;
use crate::gateway::devices::DeviceRegistry;
use crate::gateway::ingest::{Ingestor, IngestorParts};
use crate::gateway::metrics::Metrics;
use crate::web::state::{CasesApi, LakeApi};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A router over fresh stores, with one device and one user of each role.
struct Fixture {
    app: axum::Router,
    device_token: String,
    viewer: String,
    admin: String,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Result<Fixture, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let data = dir.path();
    let clock: SharedClock = Arc::new(SystemClock);
    let devices = DeviceRegistry::open(data)?;
    let device_token = devices.add("dev-1")?;
    let ingestor = Arc::new(Ingestor::new(IngestorParts {
        wal: Wal::open(data.join("wal"), WalConfig::default())?,
        deadletters: DeadLetters::open(data, &Default::default())?,
        devices,
        limits: edgepipe_protocol::Limits::default(),
        max_payload: 64 * 1024,
        device_msgs_per_sec: 0,
        mappings: Vec::new(),
        clock: clock.clone(),
        metrics: Arc::new(Metrics::default()),
        auto_register: false,
    })?);
    let lake = crate::stages::lake::open_store(data, &LakeConfig::default())?;
    let fresh = FreshBuffer::default();
    let engine = QueryEngine::new(
        lake,
        Some(fresh.clone()),
        SwapLock::default(),
        QueryConfig::default(),
    );
    let store = Arc::new(crate::stages::cases::open_store(data, &CasesConfig::default()).await?);
    let viewer = store.user_put("vera", Role::Viewer, false, "test").await?;
    let admin = store.user_put("adam", Role::Admin, false, "test").await?;
    let app = super::router::router(
        ingestor,
        64 * 1024,
        LakeApi {
            engine,
            metrics: Arc::default(),
            fresh,
            detect: Arc::default(),
        },
        CasesApi {
            store,
            metrics: Arc::default(),
            notify: Arc::default(),
            waker: Arc::default(),
            evidence_before_ms: 600_000,
        },
        clock,
    );
    Ok(Fixture {
        app,
        device_token,
        viewer,
        admin,
        _dir: dir,
    })
}

/// Sends `req` (with a peer address, as the server's make-service adds it) and returns the
/// status and the body as text.
async fn call(
    app: &axum::Router,
    mut req: Request<Body>,
) -> Result<(StatusCode, String), Box<dyn std::error::Error>> {
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
    let resp = app.clone().oneshot(req).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn get(path: &str, token: Option<&str>) -> Result<Request<Body>, axum::http::Error> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b.body(Body::empty())
}

/// A POST with a JSON body, or line protocol (`text/plain`) when `path` is the ingest endpoint.
fn post(path: &str, token: &str, body: &str) -> Result<Request<Body>, axum::http::Error> {
    let content_type = if path.starts_with("/api/v1/ingest") {
        "text/plain"
    } else {
        "application/json"
    };
    Request::post(path)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .header(header::CONTENT_TYPE, content_type)
        .body(Body::from(body.to_owned()))
}

fn code(body: &str) -> Result<String, Box<dyn std::error::Error>> {
    let v: serde_json::Value = serde_json::from_str(body)?;
    Ok(v["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn an_unknown_path_is_404_naming_it() -> TestResult {
    let f = fixture().await?;
    let (status, body) = call(&f.app, get("/api/v1/nothing", None)?).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(code(&body)?, "not_found");
    assert!(body.contains("/api/v1/nothing"), "{body}");
    Ok(())
}

#[tokio::test]
async fn the_operator_api_is_401_without_a_valid_token_and_says_nothing_more() -> TestResult {
    let f = fixture().await?;
    for token in [None, Some("not-a-token"), Some(f.device_token.as_str())] {
        let (status, body) = call(&f.app, get("/api/v1/status", token)?).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}");
        assert_eq!(code(&body)?, "unauthorized");
        assert!(!body.contains("vera") && !body.contains("adam"), "{body}");
    }
    let (status, body) = call(&f.app, get("/api/v1/status", Some(&f.viewer))?).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

#[tokio::test]
async fn a_viewer_may_read_but_not_add_devices() -> TestResult {
    let f = fixture().await?;
    let (status, body) = call(&f.app, get("/api/v1/devices", Some(&f.viewer))?).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("dev-1"), "{body}");
    let add = |t: &str| post("/api/v1/devices", t, r#"{"id": "dev-2"}"#);
    let (status, body) = call(&f.app, add(&f.viewer)?).await?;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, body) = call(&f.app, add(&f.admin)?).await?;
    assert!(status.is_success(), "{status} {body}");
    Ok(())
}

#[tokio::test]
async fn ingest_answers_401_for_a_bad_device_token_400_naming_bad_lines_and_200_when_stored()
-> TestResult {
    let f = fixture().await?;
    let line = "m v=1.5 1700000000000";
    let (status, body) = call(&f.app, post("/api/v1/ingest?precision=ms", "wrong", line)?).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = call(
        &f.app,
        post(
            "/api/v1/ingest?precision=ms",
            &f.device_token,
            &format!("{line}\nm v=oops 1700000000001"),
        )?,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body)?;
    assert_eq!(v["accepted"], 1, "{body}");
    assert_eq!(v["rejected"], 1, "{body}");
    assert_eq!(v["errors"][0]["line"], 2, "{body}");
    let (status, body) = call(
        &f.app,
        post(
            "/api/v1/ingest?precision=ms",
            &f.device_token,
            "m v=2 1700000000002",
        )?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

#[tokio::test]
async fn bad_sql_is_400_with_its_code_and_good_sql_sees_nothing_yet() -> TestResult {
    let f = fixture().await?;
    let (status, body) = call(
        &f.app,
        post("/api/v1/query", &f.viewer, r#"{"sql": "SELEC nonsense"}"#)?,
    )
    .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body)?, "bad_sql");
    let (status, body) = call(
        &f.app,
        post(
            "/api/v1/query",
            &f.viewer,
            r#"{"sql": "SELECT count(*) AS n FROM readings"}"#,
        )?,
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    Ok(())
}

#[tokio::test]
async fn health_and_metrics_need_no_token() -> TestResult {
    let f = fixture().await?;
    let (status, body) = call(&f.app, get("/healthz", None)?).await?;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let (status, body) = call(&f.app, get("/metrics", None)?).await?;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("edgepipe_wal_segments"), "{body}");
    Ok(())
}
