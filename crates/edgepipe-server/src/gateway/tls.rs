//! TLS for the device and API listeners: rustls with the ring provider (chosen explicitly, never
//! a process default), TLS 1.2 and 1.3 only, the certificate chain and key read from PEM files
//! and read again when either file changes, so a renewed certificate (certbot, an operator's
//! `cp`) is served to new handshakes without a restart and without dropping connections.
//!
//! One [`ReloadingCert`] serves every TLS listener (MQTT on `tls.mqtt_addr`, HTTPS on
//! `http_addr`); each listener has its own [`rustls::ServerConfig`] (ALPN differs).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use edgepipe_types::config::Problem;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::gateway::identity::{DeviceIdFrom, HandshakeFailure};

/// `[tls]`: the server's certificate and the TLS listeners.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain (the server's certificate first). TLS is on when this is set.
    pub cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of the first certificate.
    pub key: Option<PathBuf>,
    /// MQTT over TLS listen address.
    pub mqtt_addr: SocketAddr,
    /// MQTT over WebSocket over TLS listen address (`wss://ADDR/mqtt`); off when unset.
    pub mqtt_ws_addr: Option<SocketAddr>,
    /// Serve the API, ingest and dashboard on `http_addr` over HTTPS (no plaintext HTTP).
    pub https: bool,
    /// How often the certificate, key and CA files are checked for a change.
    #[serde(with = "edgepipe_types::duration_serde")]
    pub reload_interval: Duration,
    /// PEM bundle of the CAs whose device certificates are accepted (mTLS). Unset: devices
    /// authenticate with tokens only.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: `optional` (a device authenticates with a certificate or a token)
    /// or `required` (devices must present a certificate; tokens are refused on every
    /// listener). Users of the API and dashboard are not affected.
    pub client_auth: ClientAuth,
    /// Where a device certificate names its device: `cn` or `san_uri`
    /// (`urn:edgepipe:device:ID`).
    pub device_id_from: DeviceIdFrom,
    /// A valid certificate of a device not in the registry registers it (as AWS IoT's
    /// just-in-time registration does). Off when the CA also signs certificates that must not
    /// become devices.
    pub register_by_certificate: bool,
}

/// Whether TLS clients must present a device certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// A certificate or a token.
    #[default]
    Optional,
    /// A certificate; a device without one is refused at MQTT CONNECT or HTTPS ingest.
    Required,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 8883)),
            mqtt_ws_addr: None,
            https: true,
            reload_interval: Duration::from_secs(10),
            client_ca: None,
            client_auth: ClientAuth::Optional,
            device_id_from: DeviceIdFrom::Cn,
            register_by_certificate: true,
        }
    }
}

impl TlsConfig {
    /// Whether the TLS listeners run (a certificate is configured).
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// Whether `http_addr` serves HTTPS.
    pub fn serves_https(&self) -> bool {
        self.enabled() && self.https
    }

    /// Every problem, keyed `tls.*`; the files are read and checked (chain, key, that they
    /// match), so `edgepipe validate` finds a bad certificate before `serve` does.
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        match (&self.cert, &self.key) {
            (None, None) => {}
            (Some(_), None) => out.push(Problem::new(
                "tls.key",
                "missing: tls.cert is set, so the key of its certificate is needed",
            )),
            (None, Some(_)) => out.push(Problem::new(
                "tls.cert",
                "missing: tls.key is set, so the certificate it belongs to is needed",
            )),
            (Some(c), Some(k)) => {
                if let Err(e) = load_certified_key(c, k) {
                    out.push(Problem::new(e.key(), e.to_string()));
                }
            }
        }
        if self.reload_interval.is_zero() {
            out.push(Problem::new(
                "tls.reload_interval",
                "must be greater than 0",
            ));
        }
        out
    }
}

/// What is wrong with a certificate or key file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file cannot be read or holds no PEM certificate.
    #[error("certificate file {path}: {message}")]
    Cert {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key file cannot be read, holds no PEM private key, or a key of a type ring cannot
    /// sign with.
    #[error("key file {path}: {message}")]
    Key {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The key is not the first certificate's.
    #[error("key file {key} does not belong to the first certificate of {cert}")]
    Mismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
    },
    /// A CA bundle cannot be read or holds no usable CA certificate.
    #[error("CA file {path}: {message}")]
    Ca {
        /// File.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The config key to blame.
    fn key(&self) -> &'static str {
        match self {
            Self::Cert { .. } | Self::Rustls(_) => "tls.cert",
            Self::Ca { .. } => "tls.client_ca",
            Self::Key { .. } | Self::Mismatch { .. } => "tls.key",
        }
    }
}

/// The ring provider with TLS 1.2 and 1.3 suites only (rustls offers nothing older).
pub fn provider() -> Arc<CryptoProvider> {
    static RING: std::sync::OnceLock<Arc<CryptoProvider>> = std::sync::OnceLock::new();
    RING.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads a PEM chain and key and checks that the key is the first certificate's.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert.to_path_buf(),
        message,
    };
    let key_err = |message: String| TlsError::Key {
        path: key.to_path_buf(),
        message,
    };
    let text = std::fs::read(cert).map_err(|e| cert_err(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("not PEM: {e}")))?;
    if chain.is_empty() {
        return Err(cert_err(
            "no certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    let text = std::fs::read(key).map_err(|e| key_err(e.to_string()))?;
    let private = PrivateKeyDer::from_pem_slice(&text).map_err(|e| {
        key_err(format!(
            "no private key in it (expected PKCS#8, PKCS#1 or SEC1 PEM): {e}"
        ))
    })?;
    match CertifiedKey::from_der(chain, private, &provider()) {
        Ok(k) => Ok(k),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        }),
        Err(rustls::Error::General(m)) => Err(key_err(m)),
        Err(e) => Err(cert_err(e.to_string())),
    }
}

/// The trust anchors of the CA bundles `files` (every certificate in each).
pub fn load_roots(files: &[PathBuf]) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for path in files {
        let ca_err = |message: String| TlsError::Ca {
            path: path.clone(),
            message,
        };
        let text = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(ca_err("no certificate in it".into()));
        }
        for c in certs {
            roots
                .add(c)
                .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
        }
    }
    Ok(roots)
}

/// Which TLS listener a counter is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// MQTT over TLS.
    Mqtt,
    /// HTTPS.
    Https,
}

/// Counters of the TLS listeners, on `/metrics`.
#[derive(Debug, Default)]
pub struct TlsMetrics {
    /// Failed handshakes by listener (MQTT, HTTPS) and [`HandshakeFailure`].
    failures: [[AtomicU64; HandshakeFailure::ALL.len()]; 2],
    /// Certificate reloads after a file changed.
    pub reloads: AtomicU64,
    /// Changed files that could not be loaded (the previous certificate stays in use).
    pub reload_failures: AtomicU64,
}

impl TlsMetrics {
    /// Counts a failed handshake and logs it (debug: scanners make many).
    pub fn handshake_failed(&self, listener: Listener, peer: Option<&str>, e: &std::io::Error) {
        let why = HandshakeFailure::of(e);
        let i = HandshakeFailure::ALL
            .iter()
            .position(|r| *r == why)
            .unwrap_or(HandshakeFailure::ALL.len() - 1);
        self.failures[listener as usize][i].fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            listener = ?listener,
            peer = peer.unwrap_or("?"),
            reason = why.as_str(),
            error = %e,
            "tls handshake failed"
        );
    }

    /// Failed handshakes on `listener` for `reason`.
    pub fn failures(&self, listener: Listener, reason: HandshakeFailure) -> u64 {
        let i = HandshakeFailure::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.failures[listener as usize][i].load(Ordering::Relaxed)
    }

    /// Prometheus text for the counters.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP edgepipe_tls_handshake_failures_total TLS handshakes that failed, by listener and reason.\n\
             # TYPE edgepipe_tls_handshake_failures_total counter"
        );
        for (l, name) in [(Listener::Mqtt, "mqtt"), (Listener::Https, "https")] {
            for r in HandshakeFailure::ALL {
                let _ = writeln!(
                    out,
                    "edgepipe_tls_handshake_failures_total{{listener=\"{name}\",reason=\"{}\"}} {}",
                    r.as_str(),
                    self.failures(l, r)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP edgepipe_tls_cert_reloads_total Certificate reloads after the files changed.\n\
             # TYPE edgepipe_tls_cert_reloads_total counter\n\
             edgepipe_tls_cert_reloads_total {}\n\
             # HELP edgepipe_tls_cert_reload_failures_total Changed certificate files that did not load (the previous certificate stays).\n\
             # TYPE edgepipe_tls_cert_reload_failures_total counter\n\
             edgepipe_tls_cert_reload_failures_total {}",
            v(&self.reloads),
            v(&self.reload_failures),
        );
    }
}

/// What the files looked like when last loaded: a change of any one's length or modification
/// time triggers a reload.
type Stamp = Vec<(Option<SystemTime>, u64)>;

fn stamp(files: &[&Path]) -> Stamp {
    files
        .iter()
        .map(|p| match std::fs::metadata(p) {
            Ok(m) => (m.modified().ok(), m.len()),
            Err(_) => (None, 0),
        })
        .collect()
}

/// The CAs whose device certificates TLS clients may authenticate with: CA bundles from the
/// configuration and the built-in CA of a data directory (its current CA and rotated-out ones
/// still in their overlap; see [`crate::gateway::ca`]).
#[derive(Debug, Clone, Default)]
pub struct ClientTrust {
    /// CA bundles (PEM).
    pub ca_files: Vec<PathBuf>,
    /// The data directory whose built-in CA is trusted (when it has one).
    pub builtin: Option<PathBuf>,
}

impl ClientTrust {
    /// Every CA file trusted now.
    fn files(&self) -> Vec<PathBuf> {
        let mut out = self.ca_files.clone();
        if let Some(d) = &self.builtin {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            out.extend(crate::gateway::ca::trusted_files(d, now));
        }
        out
    }
}

/// The verifier of the CAs trusted now; None when there are none (no client certificate is
/// asked for then).
fn client_verifier(trust: &ClientTrust) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    let files = trust.files();
    if files.is_empty() {
        return Ok(None);
    }
    let roots = load_roots(&files)?;
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map(Some)
        .map_err(|e| TlsError::Ca {
            path: files.first().cloned().unwrap_or_default(),
            message: e.to_string(),
        })
}

/// The server certificate every TLS listener presents, and the CAs device certificates must
/// chain to, read again from their files when they change ([`ReloadingCert::watch`]): new
/// handshakes get the new ones, connections already open keep theirs.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    pub(super) current: RwLock<Arc<CertifiedKey>>,
    pub(super) trust: Option<ClientTrust>,
    verifier: RwLock<Option<Arc<dyn ClientCertVerifier>>>,
    seen: Mutex<Stamp>,
    /// Counters.
    pub metrics: Arc<TlsMetrics>,
}

impl ReloadingCert {
    /// Loads the chain, key and client CAs; an error names the file and what is wrong with it.
    pub fn open(
        cert: &Path,
        key: &Path,
        trust: Option<ClientTrust>,
        metrics: Arc<TlsMetrics>,
    ) -> Result<Arc<Self>, TlsError> {
        let me = Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(load_certified_key(cert, key)?)),
            verifier: RwLock::new(match &trust {
                Some(t) => client_verifier(t)?,
                None => None,
            }),
            trust,
            seen: Mutex::new(Vec::new()),
            metrics,
        };
        *me.seen.lock().unwrap_or_else(|p| p.into_inner()) = me.stamp();
        Ok(Arc::new(me))
    }

    fn stamp(&self) -> Stamp {
        // The trusted CA files are listed anew each time: a rotation or the end of an overlap
        // changes the list, and so the stamp.
        let ca_files = self
            .trust
            .as_ref()
            .map(ClientTrust::files)
            .unwrap_or_default();
        let mut files = vec![self.cert.as_path(), self.key.as_path()];
        files.extend(ca_files.iter().map(PathBuf::as_path));
        let mut st = stamp(&files);
        st.push((None, ca_files.len() as u64));
        st
    }

    /// The certificate chain served now (the server's certificate first).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .cert
            .clone()
    }

    /// Loads the files again if any changed since the last load. Ok(true) when new ones are in
    /// use; on an error the previous ones stay (all of them: a half-renewed set is not used).
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = self.stamp();
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now {
                return Ok(false);
            }
            // Tried once per change: a half-written set is tried again at its next change
            // (the next file's write is one).
            *seen = now;
        }
        let loaded = load_certified_key(&self.cert, &self.key).and_then(|k| {
            let v = match &self.trust {
                Some(t) => client_verifier(t)?,
                None => None,
            };
            Ok((k, v))
        });
        match loaded {
            Ok((k, v)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(k);
                *self.verifier.write().unwrap_or_else(|p| p.into_inner()) = v;
                self.metrics.reloads.fetch_add(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => {
                self.metrics.reload_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Checks the files every `every` until `stop`, logging each reload and each failure.
    pub async fn watch(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.cancelled() => return,
            }
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(
                    cert = %self.cert.display(),
                    "tls: certificate and CAs reloaded; new connections get them, open ones keep theirs"
                ),
                Ok(false) => {}
                Err(e) => tracing::error!(
                    error = %e,
                    "tls: the changed certificate or CA files do not load; still serving the previous ones"
                ),
            }
        }
    }

    pub(super) fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        self.verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Whether `addr` can be reached from other machines (not loopback).
pub fn is_exposed(addr: SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_unreadable_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        let half = TlsConfig {
            cert: Some(cert.clone()),
            ..TlsConfig::default()
        };
        let p = half.problems();
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].to_string().starts_with("tls.key: missing"), "{p:?}");
        let both = TlsConfig {
            cert: Some(cert.clone()),
            key: Some(key.clone()),
            ..TlsConfig::default()
        };
        let p = both.problems();
        assert!(
            p[0].to_string().contains("server.pem") && p[0].to_string().starts_with("tls.cert"),
            "{p:?}"
        );
        std::fs::write(&cert, "not a certificate\n").expect("write");
        let p = both.problems();
        assert!(p[0].to_string().contains("no certificate in it"), "{p:?}");
    }
}
