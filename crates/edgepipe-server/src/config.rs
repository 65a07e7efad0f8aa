//! Server configuration: defaults → TOML file → `EDGEPIPE_*` environment → CLI flags, then
//! validated as a whole so every mistake is reported at once with its key path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgepipe_lake::LakeConfig;
use edgepipe_protocol::mapping::{TopicMapping, TopicMappingConfig};
use edgepipe_query::QueryConfig;
use edgepipe_types::config::Problem;
use edgepipe_wal::{FullPolicy, WalConfig};
use serde::Deserialize;

pub use crate::gateway::deadletter::DeadLetterConfig;

/// Errors from loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("config file {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message (names the key and line).
        message: String,
    },
    /// One or more values are invalid.
    #[error("invalid configuration:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// `EDGEPIPE_*` variables (without the prefix) that are not settings of [`ServerConfig::load`]
/// but are read by the binary itself.
const ENV_READ_ELSEWHERE: &[&str] = &[
    "LOG",
    "LOG_FORMAT",
    "CONFIG",
    "DATA_DIR",
    // Read by the project's own tooling: the test suites, scripts and browser tests.
    "NAB_DIR",
    "SERVER_BIN",
    "API_TOKEN",
    "URL",
];

/// The `EDGEPIPE_*` variables [`ServerConfig::load`] reads, for messages.
pub const ENV_SETTINGS: &[&str] = &[
    "EDGEPIPE_DATA_DIR",
    "EDGEPIPE_MQTT_ADDR",
    "EDGEPIPE_HTTP_ADDR",
    "EDGEPIPE_AUTO_REGISTER",
    "EDGEPIPE_LAKE_URL",
    "EDGEPIPE_LAKE_FLUSH_INTERVAL",
    "EDGEPIPE_CASES_STORE_URL",
    "EDGEPIPE_TLS_CERT",
    "EDGEPIPE_TLS_KEY",
    "EDGEPIPE_TLS_MQTT_ADDR",
    "EDGEPIPE_INSECURE_PLAINTEXT",
];

/// Top-level server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Directory for the WAL, dead letters and device registry.
    pub data_dir: PathBuf,
    /// MQTT listen address.
    pub mqtt_addr: SocketAddr,
    /// HTTP listen address.
    pub http_addr: SocketAddr,
    /// MQTT over WebSocket listen address (`ws://ADDR/mqtt`); off when unset.
    pub mqtt_ws_addr: Option<SocketAddr>,
    /// MQTT worker threads (0 = one per core).
    pub mqtt_workers: usize,
    /// Register unknown devices on first connect with the password they present.
    /// A development option: never enable it on a network you do not trust.
    pub auto_register: bool,
    /// Ingest limits.
    pub limits: LimitsConfig,
    /// The readings WAL.
    pub wal: WalConfig,
    /// The dead-letter store.
    pub deadletters: DeadLetterConfig,
    /// Topic mappings for fleets with their own topic schemes.
    pub topic_mappings: Vec<TopicMappingConfig>,
    /// The Parquet lake.
    pub lake: LakeConfig,
    /// Per-query limits.
    pub query: QueryConfig,
    /// The detection stage.
    pub detect: crate::stages::detect::DetectConfig,
    /// Cases, notifications and the state store (cases, users, audit log).
    pub cases: edgepipe_cases::CasesConfig,
    /// `EDGEPIPE_*` environment variables that [`ServerConfig::load`] found but no setting
    /// reads (a misspelling, or a variable of another version): reported by `serve` and
    /// `validate`, never silently ignored.
    #[serde(skip)]
    pub unknown_env: Vec<String>,
    /// Pipeline alarms (raised as `pipeline` cases).
    pub alarms: crate::stages::alarms::AlarmsConfig,
    /// TLS: the server certificate, MQTT over TLS, HTTPS.
    pub tls: crate::gateway::tls::TlsConfig,
    /// Allow plaintext MQTT or HTTP on an address other machines can reach (tokens would
    /// cross the network in the clear). Off: such a listener is a configuration error.
    pub insecure_plaintext: bool,
}

/// Limits on what devices may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest MQTT payload or HTTP body accepted, bytes.
    pub max_payload_bytes: usize,
    /// Most concurrent MQTT connections.
    pub max_connections: usize,
    /// Messages per second each device may send (0 = unlimited); bursts of twice that pass.
    pub device_msgs_per_sec: u32,
    /// Most readings in one message.
    pub max_readings_per_message: usize,
    /// How far in the future a device timestamp may be.
    #[serde(deserialize_with = "edgepipe_lake::duration_serde::deserialize")]
    pub max_future_skew: Duration,
    /// Longest string value.
    pub max_string_len: usize,
    /// Failed authentications per client address and minute after which the address is
    /// refused unexamined for 1 s, doubling up to 5 min while failures go on (0: off).
    pub auth_backoff_after: u32,
    /// Apply that backoff to loopback addresses too (local agents and tools are exempt by
    /// default).
    pub auth_backoff_loopback: bool,
    /// Distinct metric names a device may have (since the server started); a message that
    /// would go past it is dead-lettered (`too_many_metrics`). 0: no limit.
    pub max_metrics_per_device: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_payload_bytes: 128 * 1024,
            max_connections: 20_000,
            device_msgs_per_sec: 1_000,
            max_readings_per_message: 10_000,
            max_future_skew: Duration::from_secs(300),
            max_string_len: 1024,
            auth_backoff_after: 5,
            auth_backoff_loopback: false,
            max_metrics_per_device: 10_000,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./edgepipe-data"),
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 1883)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mqtt_ws_addr: None,
            mqtt_workers: 0,
            auto_register: false,
            limits: LimitsConfig::default(),
            wal: WalConfig::default(),
            deadletters: DeadLetterConfig::default(),
            topic_mappings: Vec::new(),
            lake: LakeConfig::default(),
            query: QueryConfig::default(),
            detect: crate::stages::detect::DetectConfig::default(),
            cases: edgepipe_cases::CasesConfig::default(),
            alarms: crate::stages::alarms::AlarmsConfig::default(),
            tls: crate::gateway::tls::TlsConfig::default(),
            insecure_plaintext: false,
            unknown_env: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// Small sizes and port 0 for tests.
    pub fn test_config(data_dir: &Path) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            mqtt_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt_workers: 1,
            wal: WalConfig {
                segment_bytes: 1024 * 1024,
                max_bytes: 256 * 1024 * 1024,
                ..WalConfig::default()
            },
            ..Self::default()
        }
    }

    /// Loads defaults, then `file` (if any), then `EDGEPIPE_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut cfg = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            None => ServerConfig::default(),
        };
        let mut errors = Vec::new();
        for (k, v) in env {
            let Some(key) = k.strip_prefix("EDGEPIPE_") else {
                continue;
            };
            match key {
                "DATA_DIR" => cfg.data_dir = PathBuf::from(v),
                "MQTT_ADDR" => match v.parse() {
                    Ok(a) => cfg.mqtt_addr = a,
                    Err(e) => {
                        errors.push(Problem::new("EDGEPIPE_MQTT_ADDR", format!("{v:?}: {e}")))
                    }
                },
                "HTTP_ADDR" => match v.parse() {
                    Ok(a) => cfg.http_addr = a,
                    Err(e) => {
                        errors.push(Problem::new("EDGEPIPE_HTTP_ADDR", format!("{v:?}: {e}")))
                    }
                },
                "AUTO_REGISTER" => cfg.auto_register = matches!(v.as_str(), "1" | "true" | "yes"),
                "LAKE_URL" => cfg.lake.url = v,
                "LAKE_FLUSH_INTERVAL" => match humantime::parse_duration(&v) {
                    Ok(d) => cfg.lake.flush_interval = d,
                    Err(e) => errors.push(Problem::new(
                        "EDGEPIPE_LAKE_FLUSH_INTERVAL",
                        format!("{v:?}: {e}"),
                    )),
                },
                "CASES_STORE_URL" => cfg.cases.store_url = Some(v),
                "TLS_CERT" => cfg.tls.cert = Some(PathBuf::from(v)),
                "TLS_KEY" => cfg.tls.key = Some(PathBuf::from(v)),
                "TLS_MQTT_ADDR" => match v.parse() {
                    Ok(a) => cfg.tls.mqtt_addr = a,
                    Err(e) => errors.push(Problem::new(
                        "EDGEPIPE_TLS_MQTT_ADDR",
                        format!("{v:?}: {e}"),
                    )),
                },
                "INSECURE_PLAINTEXT" => {
                    cfg.insecure_plaintext = matches!(v.as_str(), "1" | "true" | "yes")
                }
                // Read elsewhere: the log filter and format (main), the config file and data
                // directory flags' defaults (clap), the edge agent's own variables and the
                // test shims' (`EDGEPIPE_TEST_*`).
                k if ENV_READ_ELSEWHERE.contains(&k)
                    || k.starts_with("AGENT_")
                    || k.starts_with("TEST_") => {}
                _ => cfg.unknown_env.push(format!("EDGEPIPE_{key}")),
            }
        }
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        Ok(cfg)
    }

    /// TLS and the plaintext rule: plaintext MQTT or HTTP only on loopback unless
    /// `insecure_plaintext`, and no two listeners on one port.
    fn listener_problems(&self) -> Vec<Problem> {
        use crate::gateway::tls::is_exposed;
        let mut out = self.tls.problems();
        let hint = "devices' and users' tokens would cross the network in the clear; \
                    set tls.cert and tls.key (MQTT over TLS on tls.mqtt_addr, HTTPS on http_addr) \
                    and keep plaintext on 127.0.0.1, or pass --insecure-plaintext \
                    (insecure_plaintext = true) on a network you trust";
        if !self.insecure_plaintext {
            if is_exposed(self.mqtt_addr) {
                out.push(Problem::new(
                    "mqtt_addr",
                    format!(
                        "{} is plaintext MQTT on a non-loopback address: {hint}",
                        self.mqtt_addr
                    ),
                ));
            }
            if let Some(ws) = self.mqtt_ws_addr.filter(|a| is_exposed(*a)) {
                out.push(Problem::new(
                    "mqtt_ws_addr",
                    format!("{ws} is plaintext MQTT over WebSocket on a non-loopback address (use tls.mqtt_ws_addr for wss): {hint}"),
                ));
            }
            if is_exposed(self.http_addr) && !self.tls.serves_https() {
                out.push(Problem::new(
                    "http_addr",
                    format!(
                        "{} is plaintext HTTP on a non-loopback address: {hint}",
                        self.http_addr
                    ),
                ));
            }
        }
        let mut listeners = vec![("mqtt_addr", self.mqtt_addr), ("http_addr", self.http_addr)];
        listeners.extend(self.mqtt_ws_addr.map(|a| ("mqtt_ws_addr", a)));
        if self.tls.enabled() {
            listeners.push(("tls.mqtt_addr", self.tls.mqtt_addr));
            listeners.extend(self.tls.mqtt_ws_addr.map(|a| ("tls.mqtt_ws_addr", a)));
        } else if self.tls.mqtt_ws_addr.is_some() {
            out.push(Problem::new(
                "tls.mqtt_ws_addr",
                "wss needs the server certificate: set tls.cert and tls.key",
            ));
        }
        for (i, (name, a)) in listeners.iter().enumerate() {
            for (other, b) in &listeners[..i] {
                // mqtt_addr = http_addr is reported above.
                if a == b && a.port() != 0 && !(*other == "mqtt_addr" && *name == "http_addr") {
                    out.push(Problem::new(
                        *name,
                        format!("{a} is {other} too; give them different ports"),
                    ));
                }
            }
        }
        out
    }

    /// Checks every value, reporting all problems with their key paths.
    pub fn validate(&self) -> Result<Vec<TopicMapping>, ConfigError> {
        let mut errors = Vec::new();
        let l = &self.limits;
        if l.max_payload_bytes == 0 {
            errors.push(Problem::new("limits.max_payload_bytes", "must be positive"));
        }
        if l.max_payload_bytes > self.wal.max_record_bytes {
            errors.push(Problem::new(
                "limits.max_payload_bytes",
                format!(
                    "{} exceeds wal.max_record_bytes ({})",
                    l.max_payload_bytes, self.wal.max_record_bytes
                ),
            ));
        }
        if l.max_connections == 0 {
            errors.push(Problem::new("limits.max_connections", "must be positive"));
        }
        if l.max_readings_per_message == 0 {
            errors.push(Problem::new(
                "limits.max_readings_per_message",
                "must be positive",
            ));
        }
        // The WAL's own rules (segment size, two-segment budget, positive limits).
        errors.extend(self.wal.problems("wal"));
        if self.wal.full_policy == FullPolicy::DropOldest {
            errors.push(Problem::new(
                "wal.full_policy",
                "drop_oldest would lose acknowledged readings on the server; \
                 use reject (devices retry until there is room)",
            ));
        }
        if self.deadletters.max_bytes < 1024 * 1024 {
            errors.push(Problem::new(
                "deadletters.max_bytes",
                "must be at least 1 MiB",
            ));
        }
        if self.mqtt_addr == self.http_addr && self.mqtt_addr.port() != 0 {
            errors.push(Problem::new(
                "mqtt_addr",
                format!(
                    "{} is http_addr too; give them different ports",
                    self.mqtt_addr
                ),
            ));
        }
        errors.extend(self.listener_problems());
        errors.extend(self.cases.problems());
        errors.extend(self.alarms.problems());
        errors.extend(self.lake.problems());
        for e in self.detect.detector.problems() {
            errors.push(Problem::new("detect.detector", format!("{e}")));
        }
        if self.detect.checkpoint_interval.is_zero() {
            errors.push(Problem::new(
                "detect.checkpoint_interval",
                "must be greater than 0",
            ));
        }
        if self.detect.read_interval >= self.detect.checkpoint_interval {
            errors.push(Problem::new(
                "detect.read_interval",
                "must be shorter than detect.checkpoint_interval",
            ));
        }
        if self.query.max_rows == 0 {
            errors.push(Problem::new("query.max_rows", "must be at least 1"));
        }
        if self.query.max_memory_bytes < 1024 * 1024 {
            errors.push(Problem::new(
                "query.max_memory_bytes",
                "must be at least 1 MiB",
            ));
        }
        let mut mappings = Vec::new();
        for (i, m) in self.topic_mappings.iter().enumerate() {
            match TopicMapping::compile(m) {
                Ok(t) => mappings.push(t),
                Err(e) => errors.push(Problem::new(
                    format!("topic_mappings[{i}]"),
                    format!("{}: {e}", m.pattern),
                )),
            }
        }
        if errors.is_empty() {
            Ok(mappings)
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// The protocol limits these settings imply.
    pub fn protocol_limits(&self) -> edgepipe_protocol::Limits {
        edgepipe_protocol::Limits {
            max_readings_per_message: self.limits.max_readings_per_message,
            max_string_len: self.limits.max_string_len,
            max_future_skew_ms: self.limits.max_future_skew.as_millis() as i64,
            ..edgepipe_protocol::Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_is_reported_with_its_key() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
[limits]
max_payload_bytes = 0
max_connections = 0
[wal]
full_policy = "drop_oldest"
[lake]
flush_interval = "1s"
read_interval = "1s"
[detect]
checkpoint_interval = "5s"
read_interval = "1m"
[[topic_mappings]]
pattern = "factory/{line}/{metric}"
payload = "raw"
"#,
        )?;
        let cfg = ServerConfig::load(Some(&path), Vec::new())?;
        let err = cfg.validate().err().ok_or("must fail")?.to_string();
        assert!(err.contains("lake.read_interval"), "{err}");
        assert!(err.contains("detect.read_interval"), "{err}");
        assert!(err.contains("limits.max_payload_bytes"), "{err}");
        assert!(err.contains("limits.max_connections"), "{err}");
        assert!(err.contains("wal.full_policy"), "{err}");
        assert!(err.contains("topic_mappings[0]"), "{err}");
        Ok(())
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_named() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[limits]\nmax_payload = 5\n")?;
        let err = ServerConfig::load(Some(&path), Vec::new())
            .err()
            .ok_or("unknown key must fail")?;
        assert!(err.to_string().contains("max_payload"), "{err}");
        std::fs::write(&path, "[limits]\nmax_future_skew = \"soon\"\n")?;
        let err = ServerConfig::load(Some(&path), Vec::new())
            .err()
            .ok_or("bad duration must fail")?;
        assert!(err.to_string().contains("soon"), "{err}");
        Ok(())
    }

    /// The configuration example in the README parses and validates (keeps the docs true).
    #[test]
    fn readme_config_example_is_valid() -> Result<(), Box<dyn std::error::Error>> {
        let readme = include_str!("../../../README.md");
        let start = readme.find("```toml\n").ok_or("no toml block in README")? + 8;
        let len = readme[start..]
            .find("```")
            .ok_or("unterminated toml block")?;
        let cfg: ServerConfig = toml::from_str(&readme[start..start + len])?;
        cfg.validate()?;
        assert!(cfg.detect.enabled);
        assert_eq!(cfg.lake.flush_interval, Duration::from_secs(30));
        Ok(())
    }

    #[test]
    fn env_overrides_file() -> Result<(), Box<dyn std::error::Error>> {
        let cfg = ServerConfig::load(
            None,
            vec![(
                "EDGEPIPE_MQTT_ADDR".to_string(),
                "127.0.0.1:1999".to_string(),
            )],
        )?;
        assert_eq!(cfg.mqtt_addr.port(), 1999);
        assert!(
            ServerConfig::load(None, vec![("EDGEPIPE_HTTP_ADDR".into(), "nope".into())]).is_err()
        );
        Ok(())
    }

    #[test]
    fn unknown_edgepipe_variables_are_reported_and_others_are_not() -> Result<(), ConfigError> {
        let cfg = ServerConfig::load(
            None,
            [
                ("EDGEPIPE_MQTT_ADRR", "127.0.0.1:1999"),
                ("EDGEPIPE_LOG", "debug"),
                ("EDGEPIPE_AGENT_TOKEN", "x"),
                ("EDGEPIPE_TEST_FSYNC_LOG", "/tmp/log"),
                ("EDGEPIPE_NAB_DIR", "/data/nab"),
                ("EDGEPIPE_DATA_DIR", "/tmp/x"),
                ("PATH", "/bin"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        )?;
        assert_eq!(cfg.unknown_env, vec!["EDGEPIPE_MQTT_ADRR".to_string()]);
        assert_eq!(
            cfg.mqtt_addr.port(),
            1883,
            "the misspelt variable changed nothing"
        );
        Ok(())
    }
}
