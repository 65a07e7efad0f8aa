//! The API, ingest and dashboard over HTTPS: the same router as plain HTTP, served by hyper on
//! tokio-rustls connections. A failed handshake (a plaintext client, an old TLS version, a
//! client that gave up) is counted and logged at debug level; it never reaches the router.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::gateway::identity::ClientCert;
use crate::gateway::tls::{Listener, TlsMetrics};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish their requests at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` over TLS until `stop`, then lets open connections finish their
/// requests (up to 10 s).
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    app: Router,
    metrics: Arc<TlsMetrics>,
    stop: CancellationToken,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!(error = %e, "https: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let metrics = metrics.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let peer_s = peer.to_string();
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics.handshake_failed(Listener::Https, Some(&peer_s), &e);
                    return;
                }
                Err(_) => {
                    let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
                    metrics.handshake_failed(Listener::Https, Some(&peer_s), &e);
                    return;
                }
            };
            // The device certificate rustls verified, for the ingest handler.
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ClientCert(Arc::new(c.clone().into_owned())));
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    if let Some(c) = &client_cert {
                        req.extensions_mut().insert(c.clone());
                    }
                    app.clone().oneshot(req)
                },
            );
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "https: connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("https: connections still open after {DRAIN:?} at shutdown; closing them");
    }
}
