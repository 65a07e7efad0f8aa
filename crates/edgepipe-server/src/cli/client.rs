//! The CLI's client for the running server's HTTP API (reqwest, on loopback): the server's
//! address and the local CLI token come from the data directory it holds.

use anyhow::{Context, bail};

/// The running server that holds a data directory: its HTTP address and the local CLI's API
/// token (`<data>/cli.token`, written by the server at start).
#[derive(Debug, Clone)]
pub(crate) struct Remote {
    addr: String,
    token: String,
    /// The server's certificate file when it serves HTTPS (pinned by the client).
    tls_cert: Option<std::path::PathBuf>,
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
    let tls_cert = (info["https"] == true)
        .then(|| info["tls_cert"].as_str().map(std::path::PathBuf::from))
        .flatten();
    if info["https"] == true && tls_cert.is_none() {
        bail!("server.json says the server serves HTTPS but names no certificate file");
    }
    Ok(Remote {
        addr,
        token,
        tls_cert,
    })
}

/// A client for the running server (no proxy from the environment; over HTTPS it trusts the
/// server's own certificate file, pinned, rather than a name).
fn client(remote: &Remote) -> anyhow::Result<reqwest::Client> {
    // reqwest takes rustls' process-wide provider; ring, as everywhere in edgepipe.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder().no_proxy();
    if let Some(cert) = &remote.tls_cert {
        b = b.use_preconfigured_tls(crate::gateway::tls_config::pinned_client_config(cert)?);
    }
    b.build().context("building the HTTP client")
}

fn url(remote: &Remote, path: &str) -> String {
    let scheme = if remote.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}{path}", remote.addr)
}

/// Fetches JSON from the running server's API; anything but 200 is an error naming the status
/// and the server's answer.
pub(crate) async fn http_get_json(
    remote: &Remote,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let addr = &remote.addr;
    let resp = client(remote)?
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
    let resp = client(remote)?
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
