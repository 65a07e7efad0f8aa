//! The web dashboard: static assets embedded in the binary (works offline, no CDN), served
//! without authentication (the page itself holds no data; every API call it makes carries the
//! user's token). Charts use uPlot (MIT, vendored in `assets/`).

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../assets/index.html");
const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");
const UPLOT_JS: &str = include_str!("../../assets/uplot.min.js");
const UPLOT_CSS: &str = include_str!("../../assets/uplot.min.css");
const OPENAPI: &str = include_str!("../../assets/openapi.json");
const API_DOCS: &str = include_str!("../../assets/api-docs.html");
const API_DOCS_JS: &str = include_str!("../../assets/api-docs.js");

/// The policy every page is served with: nothing from elsewhere, no inline script.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /assets/{name}`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", APP_JS),
        "app.css" => page("text/css; charset=utf-8", APP_CSS),
        "uplot.min.js" => page("text/javascript; charset=utf-8", UPLOT_JS),
        "uplot.min.css" => page("text/css; charset=utf-8", UPLOT_CSS),
        "api-docs.js" => page("text/javascript; charset=utf-8", API_DOCS_JS),
        _ => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}

/// `GET /api/openapi.json`: the OpenAPI 3.1 description of every endpoint.
pub async fn openapi() -> Response {
    page("application/json", OPENAPI)
}

/// `GET /api/docs`: a browsable view of the OpenAPI document.
pub async fn api_docs() -> Response {
    page("text/html; charset=utf-8", API_DOCS)
}
