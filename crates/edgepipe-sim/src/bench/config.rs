//! [`BenchConfig`]: what `edgepipe bench ingest` runs.

use std::time::Duration;

use crate::{Error, Result};

/// Load generator settings.
#[derive(Clone)]
pub struct BenchConfig {
    /// Broker or gateway host.
    pub host: String,
    /// MQTT port.
    pub port: u16,
    /// Concurrent MQTT connections, each its own device `{client_prefix}-{i:05}`.
    pub connections: usize,
    /// 0 (throughput only) or 1 (PUBACK latency measured).
    pub qos: u8,
    /// Readings per message: 1 sends one JSON reading object, K > 1 a JSON array of K.
    pub batch: usize,
    /// Total messages per second across all connections; `None` sends as fast as the
    /// in-flight window allows.
    pub rate: Option<u64>,
    /// Measured run time (connecting happens before and is not counted).
    pub duration: Duration,
    /// Unacknowledged QoS 1 messages allowed per connection.
    pub inflight: u16,
    /// Client id and username prefix; ids are `{client_prefix}-{i:05}`.
    pub client_prefix: String,
    /// Password for every connection (`None`: username only, for anonymous brokers or a
    /// gateway in auto-registration mode).
    pub password: Option<String>,
    /// How long to wait for each connection's CONNACK before failing the run.
    pub connect_timeout: Duration,
    /// After `duration`, how long to wait for outstanding PUBACKs.
    pub drain_timeout: Duration,
    /// MQTT over TLS with this client configuration (`host` is the name verified); None:
    /// plain TCP.
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for BenchConfig {
    // The password stays out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("connections", &self.connections)
            .field("qos", &self.qos)
            .field("batch", &self.batch)
            .field("rate", &self.rate)
            .field("duration", &self.duration)
            .field("inflight", &self.inflight)
            .field("client_prefix", &self.client_prefix)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            connections: 10,
            qos: 1,
            batch: 1,
            rate: None,
            duration: Duration::from_secs(10),
            inflight: 100,
            client_prefix: "bench".to_owned(),
            password: None,
            connect_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            tls: None,
        }
    }
}

/// Largest batch accepted (keeps one message well under typical payload limits' order).
pub const MAX_BATCH: usize = 100_000;
/// Most connections accepted.
pub const MAX_CONNECTIONS: usize = 100_000;

impl BenchConfig {
    /// A short, small run for tests.
    pub fn test_config() -> Self {
        Self {
            connections: 2,
            duration: Duration::from_secs(2),
            ..Self::default()
        }
    }

    /// Checks every field, reporting all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.host.is_empty() {
            problems.push("host: must not be empty".to_owned());
        }
        if self.connections == 0 || self.connections > MAX_CONNECTIONS {
            problems.push(format!(
                "connections: {} is outside 1..={MAX_CONNECTIONS}",
                self.connections
            ));
        }
        if self.qos > 1 {
            problems.push(format!("qos: {} is not supported (0 or 1)", self.qos));
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            problems.push(format!("batch: {} is outside 1..={MAX_BATCH}", self.batch));
        }
        if self.rate == Some(0) {
            problems
                .push("rate: must be at least 1 msg/s (omit it for as fast as possible)".into());
        }
        if self.duration.is_zero() {
            problems.push("duration: must be non-zero".to_owned());
        }
        if self.inflight == 0 {
            problems.push("inflight: must be at least 1".to_owned());
        }
        let probe = format!("{}-{:05}", self.client_prefix, self.connections);
        if let Err(e) = edgepipe_types::DeviceId::new(probe) {
            problems.push(format!("client_prefix: {e}"));
        }
        if self.connect_timeout < Duration::from_secs(1) {
            problems.push("connect_timeout: must be at least 1s".to_owned());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig {
                what: "bench",
                problems,
            })
        }
    }

    /// Client id (and username) of connection `i`.
    pub fn client_id(&self, i: usize) -> String {
        format!("{}-{i:05}", self.client_prefix)
    }
}
