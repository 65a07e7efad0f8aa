//! `[uplink]` settings: protocol version, compression, the server, credentials, TLS and
//! reconnect backoff.

use std::sync::Arc;
use std::time::Duration;

use edgepipe_types::DeviceId;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::durations::dur;
use crate::problem::Problem;

/// MQTT protocol version of the uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MqttVersion {
    /// MQTT 3.1.1.
    #[default]
    V311,
    /// MQTT 5.
    V5,
}

/// Envelope body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CompressionSetting {
    /// zstd (default).
    #[default]
    Zstd,
    /// lz4.
    Lz4,
    /// None.
    None,
}

/// `[uplink]`: the connection to the edgepipe server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Server address `mqtt://host:port`. Default "mqtt://127.0.0.1:1883".
    pub url: String,
    /// `v311` (default) or `v5`.
    pub protocol: MqttVersion,
    /// The agent's device id at the server (MQTT username). Default: `agent_id`.
    pub device_id: Option<String>,
    /// The device token (MQTT password); also `EDGEPIPE_AGENT_TOKEN`. Default: empty.
    pub token: String,
    /// For `mqtts://`: PEM file of the CA certificates to trust. Default: the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// For `mqtts://`: the agent's own certificate (PEM chain) to authenticate with (mTLS),
    /// e.g. from `edgepipe devices add ID --cert`; then no token is needed.
    pub cert_file: Option<std::path::PathBuf>,
    /// The private key (PEM) of `cert_file`.
    pub key_file: Option<std::path::PathBuf>,
    /// MQTT keep-alive. Default "30s".
    #[serde(with = "dur")]
    pub keep_alive: Duration,
    /// Give up a connection attempt after this long. Default "10s".
    #[serde(with = "dur")]
    pub connect_timeout: Duration,
    /// Batches published and not yet acknowledged, at most. Default 32.
    pub max_inflight: usize,
    /// Backlog readings per second during catch-up (all streams together); 0 = unlimited.
    /// Default 20000.
    pub catch_up_rate: u64,
    /// How many batches the live lane may run ahead of a stream's oldest unacknowledged batch.
    /// Default 2000 (must stay below the server's replay window of 4096).
    pub max_live_ahead: u64,
    /// First reconnect wait. Default "200ms".
    #[serde(with = "dur")]
    pub backoff_min: Duration,
    /// Longest reconnect wait. Default "30s".
    #[serde(with = "dur")]
    pub backoff_max: Duration,
    /// `zstd` (default), `lz4` or `none`.
    pub compression: CompressionSetting,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            protocol: MqttVersion::V311,
            device_id: None,
            token: String::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
            keep_alive: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_inflight: 32,
            catch_up_rate: 20_000,
            max_live_ahead: 2000,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            compression: CompressionSetting::Zstd,
        }
    }
}

impl UplinkConfig {
    /// `(tls, host, port)` from `url`.
    pub fn endpoint(&self) -> Result<(bool, String, u16), String> {
        let (tls, rest) = if let Some(r) = self.url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = self.url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err("must start with mqtt:// or mqtts://".into());
        };
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| "must name a port (mqtt://host:port)".to_string())?;
        let port = port
            .trim_end_matches('/')
            .parse::<u16>()
            .map_err(|_| format!("bad port {port:?}"))?;
        if host.is_empty() {
            return Err("host is empty".into());
        }
        Ok((tls, host.to_string(), port))
    }

    pub(crate) fn check(&self, agent_id: &str, problems: &mut Vec<Problem>) {
        match self.endpoint() {
            Ok((true, _, _)) if !cfg!(feature = "tls") => problems.push(Problem::new(
                "uplink.url",
                "mqtts:// needs the agent built with the `tls` feature",
            )),
            Ok((true, _, _)) =>
            {
                #[cfg(feature = "tls")]
                if let Err((key, e)) = tls_config(self) {
                    problems.push(Problem::new(key, e));
                }
            }
            Ok(_) if self.cert_file.is_some() => problems.push(Problem::new(
                "uplink.cert_file",
                "a client certificate needs TLS: use an mqtts:// url",
            )),
            Ok(_) => {}
            Err(e) => problems.push(Problem::new("uplink.url", e)),
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(Problem::new(
                if self.cert_file.is_some() {
                    "uplink.key_file"
                } else {
                    "uplink.cert_file"
                },
                "cert_file and key_file go together",
            ));
        }
        let dev = self.device_id.as_deref().unwrap_or(agent_id);
        if let Err(e) = DeviceId::new(dev) {
            problems.push(Problem::new("uplink.device_id", e.to_string()));
        }
        if self.max_inflight == 0 || self.max_inflight > 1000 {
            problems.push(Problem::new("uplink.max_inflight", "must be 1..=1000"));
        }
        if self.max_live_ahead == 0 || self.max_live_ahead > 4000 {
            problems.push(Problem::new(
                "uplink.max_live_ahead",
                "must be 1..=4000 (the server's replay window is 4096 batches per stream)",
            ));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            problems.push(Problem::new(
                "uplink.backoff_max",
                "backoff_min must be positive and backoff_max at least backoff_min",
            ));
        }
        if self.connect_timeout.is_zero() {
            problems.push(Problem::new("uplink.connect_timeout", "must be positive"));
        }
    }
}

// ---------------------------------------------------------------- backoff

/// Exponential backoff with jitter: the n-th wait is drawn from `[cap/2, cap]`, where
/// `cap = min(max, min * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }
    /// Back to `min` (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    /// The next wait.
    pub fn next_wait(&mut self) -> Duration {
        let cap = self
            .min
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let hi = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX).max(1);
        Duration::from_millis(rand::rng().random_range(hi / 2..=hi))
    }
}

// ---------------------------------------------------------------- TLS

/// A rustls client configuration (ring provider, chosen explicitly) trusting `ca_file`'s
/// certificates, or the system's roots.
#[cfg(feature = "tls")]
pub fn tls_config(u: &UplinkConfig) -> Result<Arc<rustls::ClientConfig>, (&'static str, String)> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match u.ca_file.as_deref() {
        Some(path) => {
            let bad = |e: String| ("uplink.ca_file", format!("{}: {e}", path.display()));
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
            for c in certs {
                let c = c.map_err(|e| bad(e.to_string()))?;
                roots.add(c).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                let _ = roots.add(c);
            }
            if roots.is_empty() {
                return Err((
                    "uplink.ca_file",
                    "no system root certificates found; set uplink.ca_file".into(),
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("uplink.url", e.to_string()))?
        .with_root_certificates(roots);
    let cfg = match (u.cert_file.as_deref(), u.key_file.as_deref()) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| ("uplink.cert_file", format!("{}: {e}", cert.display())))?;
            if chain.is_empty() {
                return Err((
                    "uplink.cert_file",
                    format!("{}: no certificate in the file", cert.display()),
                ));
            }
            let k = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ("uplink.key_file", format!("{}: {e}", key.display())))?;
            b.with_client_auth_cert(chain, k)
                .map_err(|e| ("uplink.key_file", format!("{}: {e}", key.display())))?
        }
        _ => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}
