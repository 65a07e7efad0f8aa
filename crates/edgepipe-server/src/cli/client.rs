//! The CLI's client for the running server's HTTP API (reqwest, on loopback): the server's
//! address and the local CLI token come from the data directory it holds.

use anyhow::{Context, bail};

/// The running server that holds a data directory: its HTTP address and the local CLI's API
/// token (`<data>/cli.token`, written by the server at start).
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    addr: String,
    token: String,
}

/// The running server's HTTP address and token, if one holds the data directory.
pub(crate) fn running_server(data_dir: &std::path::Path) -> Option<Remote> {
    match crate::server::lock_data_dir(data_dir) {
        Ok(_) => None,
        Err(_) => remote_of(data_dir).ok(),
    }
}

pub(crate) fn remote_of(data_dir: &std::path::Path) -> anyhow::Result<Remote> {
    let info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("server.json")).context("reading server.json")?,
    )?;
    let addr = info["http"]
        .as_str()
        .context("server.json has no http address")?
        .to_owned();
    let token = std::fs::read_to_string(data_dir.join("cli.token"))
        .with_context(|| format!("reading {}", data_dir.join("cli.token").display()))?
        .trim()
        .to_owned();
    Ok(Remote { addr, token })
}

/// A client for the running server (plain HTTP on loopback, no proxy from the environment).
fn client() -> anyhow::Result<reqwest::Client> {
    // reqwest takes rustls' process-wide provider; ring, as everywhere in edgepipe.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client")
}

fn url(remote: &Remote, path: &str) -> String {
    format!("http://{}{path}", remote.addr)
}

/// Fetches JSON from the running server's API; anything but 200 is an error naming the status
/// and the server's answer.
pub(crate) async fn http_get_json(
    remote: &Remote,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let addr = &remote.addr;
    let resp = client()?
        .get(url(remote, path))
        .bearer_auth(&remote.token)
        .send()
        .await
        .with_context(|| format!("connecting to the running server at {addr}"))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading the answer from {addr}{path}"))?;
    if status != reqwest::StatusCode::OK {
        bail!(
            "{status} from {addr}{path}: {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("the answer from {addr}{path} is not JSON"))
}

/// Posts `body` (text) to the running server's API; returns the status and the whole body
/// (chunked or not).
pub(crate) async fn http_post(
    remote: &Remote,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let addr = &remote.addr;
    let resp = client()?
        .post(url(remote, path))
        .bearer_auth(&remote.token)
        .header(reqwest::header::CONTENT_TYPE, "text/plain")
        .body(body.to_vec())
        .send()
        .await
        .with_context(|| format!("connecting to the running server at {addr}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading the answer from {addr}{path}"))?;
    Ok((status, body.to_vec()))
}
