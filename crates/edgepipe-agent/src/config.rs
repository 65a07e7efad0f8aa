//! The agent's configuration: the TOML file, then `EDGEPIPE_AGENT_*` environment variables,
//! then command-line flags; and `validate`, which reports every problem at once with its key
//! path (`collectors[2].path`, `streams[0].transforms[1].expr`).
//!
//! Each section is deserialized on its own (`#[serde(deny_unknown_fields)]` everywhere), so one
//! bad section does not hide problems in another; then the whole is checked for what serde
//! cannot see (unknown streams, duplicate names, ranges, filter expressions, detector settings).
//! Durations are written like `"500ms"`, `"30s"`, `"5m"`.
//!
//! ```toml
//! agent_id = "gw-1"                      # envelope source; also the default device id
//! data_dir = "./edgepipe-agent-data"
//! [uplink]                                # see UplinkConfig
//! url = "mqtt://server:1883"
//! token = "..."
//! [queue]                                 # see QueueConfig
//! max_bytes = 1073741824
//! [[streams]]                             # "telemetry", "alerts", "health" exist by default
//! name = "bulk"
//! priority = "bulk"
//! transforms = [{ type = "deadband", abs = 0.5 }]
//! [[collectors]]
//! type = "mqtt"
//! name = "local"
//! stream = "telemetry"
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use crate::durations::{dur, opt_dur};
pub use crate::problem::Problem;

use crate::collect::{CollectorConfig, CollectorKind};
use crate::detect::{AlertsConfig, DetectConfig};
use crate::http::HttpConfig;
use crate::pipeline::{ALERTS_STREAM, HEALTH_STREAM};
use crate::queue::{Priority, QueueConfig};
use crate::transform::{Chain, TransformConfig};
use crate::uplink::UplinkConfig;

/// `[[streams]]`: a named queue with a priority and transforms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Stream name (`[A-Za-z0-9_-]{1,64}`), the envelope's `stream`.
    pub name: String,
    /// `alerts`, `telemetry` (default) or `bulk`.
    #[serde(default)]
    pub priority: Priority,
    /// Disk budget override in bytes. Default: `queue.max_bytes`.
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// Transforms, applied in order. Default: none.
    #[serde(default)]
    pub transforms: Vec<TransformConfig>,
}

/// `[health]`: the agent's own telemetry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// How often health readings go into the `health` stream; "0s" disables. Default "10s".
    #[serde(with = "dur")]
    pub interval: std::time::Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: std::time::Duration::from_secs(10),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The agent's name: envelope `source`, default device id. Default "edgepipe-agent".
    pub agent_id: String,
    /// Queue and state directory. Default "./edgepipe-agent-data".
    pub data_dir: PathBuf,
    /// Uplink.
    pub uplink: UplinkConfig,
    /// Queue settings.
    pub queue: QueueConfig,
    /// Streams (the built-in `telemetry`, `alerts`, `health` are added when not declared).
    pub streams: Vec<StreamConfig>,
    /// Collectors.
    pub collectors: Vec<CollectorConfig>,
    /// Local detection.
    pub detect: DetectConfig,
    /// Local alerts.
    pub alerts: AlertsConfig,
    /// Local HTTP endpoint.
    pub http: HttpConfig,
    /// Health telemetry.
    pub health: HealthConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            agent_id: "edgepipe-agent".into(),
            data_dir: PathBuf::from("./edgepipe-agent-data"),
            uplink: UplinkConfig::default(),
            queue: QueueConfig::default(),
            streams: Vec::new(),
            collectors: Vec::new(),
            detect: DetectConfig::default(),
            alerts: AlertsConfig::default(),
            http: HttpConfig::default(),
            health: HealthConfig::default(),
        }
    }
}

fn take<T: DeserializeOwned + Default>(
    table: &mut toml::Table,
    key: &str,
    problems: &mut Vec<Problem>,
) -> T {
    match table.remove(key) {
        None => T::default(),
        Some(v) => v.try_into().unwrap_or_else(|e: toml::de::Error| {
            problems.push(Problem::new(key, e.message().trim().to_string()));
            T::default()
        }),
    }
}

fn collector(v: toml::Value, path: &str, problems: &mut Vec<Problem>) -> Option<CollectorConfig> {
    let toml::Value::Table(mut t) = v else {
        problems.push(Problem::new(path, "must be a table"));
        return None;
    };
    let name = match t.remove("name") {
        Some(toml::Value::String(s)) => s,
        Some(_) => {
            problems.push(Problem::new(format!("{path}.name"), "must be a string"));
            return None;
        }
        None => {
            problems.push(Problem::new(format!("{path}.name"), "missing"));
            return None;
        }
    };
    let stream = match t.remove("stream") {
        Some(toml::Value::String(s)) => s,
        Some(_) => {
            problems.push(Problem::new(format!("{path}.stream"), "must be a string"));
            return None;
        }
        None => "telemetry".to_string(),
    };
    // Unknown fields inside a kind are caught by the kind's own deny_unknown_fields.
    match toml::Value::Table(t).try_into::<CollectorKind>() {
        Ok(kind) => Some(CollectorConfig { name, stream, kind }),
        Err(e) => {
            problems.push(Problem::new(path, e.message().trim().to_string()));
            None
        }
    }
}

const KNOWN: [&str; 10] = [
    "agent_id",
    "data_dir",
    "uplink",
    "queue",
    "streams",
    "collectors",
    "detect",
    "alerts",
    "http",
    "health",
];

impl AgentConfig {
    /// Parses TOML text, collecting every problem (parse errors per section, then semantic).
    pub fn parse(text: &str) -> Result<AgentConfig, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut table: toml::Table = match text.parse() {
            Ok(t) => t,
            Err(e) => {
                return Err(vec![Problem::new(
                    "(file)",
                    e.to_string().trim().to_string(),
                )]);
            }
        };
        let mut cfg = AgentConfig::default();
        for key in table.keys() {
            if !KNOWN.contains(&key.as_str()) {
                problems.push(Problem::new(
                    key.clone(),
                    format!("unknown key (expected one of {})", KNOWN.join(", ")),
                ));
            }
        }
        match table.remove("agent_id") {
            Some(toml::Value::String(s)) => cfg.agent_id = s,
            Some(_) => problems.push(Problem::new("agent_id", "must be a string")),
            None => {}
        }
        match table.remove("data_dir") {
            Some(toml::Value::String(s)) => cfg.data_dir = PathBuf::from(s),
            Some(_) => problems.push(Problem::new("data_dir", "must be a string")),
            None => {}
        }
        cfg.uplink = take(&mut table, "uplink", &mut problems);
        cfg.queue = take(&mut table, "queue", &mut problems);
        cfg.detect = take(&mut table, "detect", &mut problems);
        cfg.alerts = take(&mut table, "alerts", &mut problems);
        cfg.http = take(&mut table, "http", &mut problems);
        cfg.health = take(&mut table, "health", &mut problems);
        match table.remove("streams") {
            Some(toml::Value::Array(a)) => {
                for (i, v) in a.into_iter().enumerate() {
                    match v.try_into::<StreamConfig>() {
                        Ok(s) => cfg.streams.push(s),
                        Err(e) => problems.push(Problem::new(
                            format!("streams[{i}]"),
                            e.message().trim().to_string(),
                        )),
                    }
                }
            }
            Some(_) => problems.push(Problem::new("streams", "must be an array of tables")),
            None => {}
        }
        match table.remove("collectors") {
            Some(toml::Value::Array(a)) => {
                for (i, v) in a.into_iter().enumerate() {
                    if let Some(c) = collector(v, &format!("collectors[{i}]"), &mut problems) {
                        cfg.collectors.push(c);
                    }
                }
            }
            Some(_) => problems.push(Problem::new("collectors", "must be an array of tables")),
            None => {}
        }
        cfg.add_builtin_streams();
        problems.extend(cfg.check());
        if problems.is_empty() {
            Ok(cfg)
        } else {
            Err(problems)
        }
    }

    /// Reads and parses `path`, then applies `EDGEPIPE_AGENT_TOKEN` and `EDGEPIPE_AGENT_DATA_DIR`.
    pub fn load(path: &Path) -> Result<AgentConfig, Vec<Problem>> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| vec![Problem::new("(file)", format!("{}: {e}", path.display()))])?;
        let mut cfg = Self::parse(&text)?;
        if let Ok(t) = std::env::var("EDGEPIPE_AGENT_TOKEN") {
            cfg.uplink.token = t;
        }
        if let Ok(d) = std::env::var("EDGEPIPE_AGENT_DATA_DIR") {
            cfg.data_dir = PathBuf::from(d);
        }
        Ok(cfg)
    }

    fn add_builtin_streams(&mut self) {
        for (name, prio) in [
            ("telemetry", Priority::Telemetry),
            (ALERTS_STREAM, Priority::Alerts),
            (HEALTH_STREAM, Priority::Telemetry),
        ] {
            if !self.streams.iter().any(|s| s.name == name) {
                self.streams.push(StreamConfig {
                    name: name.into(),
                    priority: prio,
                    max_bytes: None,
                    transforms: Vec::new(),
                });
            }
        }
    }

    /// Every semantic problem.
    pub fn check(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if edgepipe_types::DeviceId::new(self.agent_id.as_str()).is_err()
            || self.agent_id.len() > 64
        {
            p.push(Problem::new(
                "agent_id",
                "must be 1-64 characters of [A-Za-z0-9_.:-]",
            ));
        }
        self.uplink.check(&self.agent_id, &mut p);
        self.queue.check("queue", &mut p);
        let mut names = BTreeSet::new();
        for (i, s) in self.streams.iter().enumerate() {
            let ok = !s.name.is_empty()
                && s.name.len() <= 64
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !ok {
                p.push(Problem::new(
                    format!("streams[{i}].name"),
                    "must be 1-64 characters of [A-Za-z0-9_-]",
                ));
            }
            if !names.insert(s.name.clone()) {
                p.push(Problem::new(
                    format!("streams[{i}].name"),
                    format!("duplicate stream {:?}", s.name),
                ));
            }
            if let Some(b) = s.max_bytes
                && b < self.queue.segment_bytes.saturating_mul(2)
            {
                p.push(Problem::new(
                    format!("streams[{i}].max_bytes"),
                    "must be at least two segments",
                ));
            }
            Chain::compile(&s.transforms, &format!("streams[{i}].transforms"), &mut p);
        }
        let mut cnames = BTreeSet::new();
        let mut http = 0;
        for (i, c) in self.collectors.iter().enumerate() {
            let path = format!("collectors[{i}]");
            if c.name.is_empty()
                || !c
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                p.push(Problem::new(
                    format!("{path}.name"),
                    "must be non-empty [A-Za-z0-9_-]",
                ));
            }
            if !cnames.insert(c.name.clone()) {
                p.push(Problem::new(
                    format!("{path}.name"),
                    format!("duplicate collector {:?}", c.name),
                ));
            }
            if !names.contains(&c.stream) {
                p.push(Problem::new(
                    format!("{path}.stream"),
                    format!("unknown stream {:?} (declare it in [[streams]])", c.stream),
                ));
            }
            match &c.kind {
                CollectorKind::Generator(g) => {
                    if g.rate == 0 {
                        p.push(Problem::new(format!("{path}.rate"), "must be positive"));
                    }
                    if u64::from(g.series) * 1000 < u64::from(g.rate) {
                        p.push(Problem::new(
                            format!("{path}.series"),
                            "must be at least rate / 1000 so timestamps stay unique per series",
                        ));
                    }
                    if edgepipe_types::Metric::new(format!("{}.s0", g.prefix)).is_err() {
                        p.push(Problem::new(
                            format!("{path}.prefix"),
                            "not a valid metric prefix",
                        ));
                    }
                }
                CollectorKind::Mqtt(m) => {
                    for (j, r) in crate::collect::mqtt::compile(m).into_iter().enumerate() {
                        if let Err(e) = r {
                            p.push(Problem::new(format!("{path}.topic_mappings[{j}]"), e));
                        }
                    }
                    if !m.addr.contains(':') {
                        p.push(Problem::new(format!("{path}.addr"), "must be host:port"));
                    }
                }
                CollectorKind::Http(_) => http += 1,
                CollectorKind::Simulator(s) => {
                    if !(0.0..=1.0).contains(&s.spike_probability) {
                        p.push(Problem::new(
                            format!("{path}.spike_probability"),
                            "must be in [0, 1]",
                        ));
                    }
                }
                CollectorKind::Modbus(m) => {
                    if m.registers.is_empty() {
                        p.push(Problem::new(
                            format!("{path}.registers"),
                            "must not be empty",
                        ));
                    }
                    for (j, r) in m.registers.iter().enumerate() {
                        if edgepipe_types::Metric::new(r.metric.as_str()).is_err() {
                            p.push(Problem::new(
                                format!("{path}.registers[{j}].metric"),
                                "not a valid metric name",
                            ));
                        }
                        if !r.scale.is_finite() {
                            p.push(Problem::new(
                                format!("{path}.registers[{j}].scale"),
                                "must be finite",
                            ));
                        }
                    }
                }
                CollectorKind::File(_) | CollectorKind::Stdin(_) | CollectorKind::System(_) => {}
            }
        }
        if http > 1 {
            p.push(Problem::new(
                "collectors",
                "at most one collector of type \"http\"",
            ));
        }
        if http == 1 && self.http.listen.is_empty() {
            p.push(Problem::new(
                "http.listen",
                "an http collector needs the local endpoint",
            ));
        }
        if self.detect.enabled {
            let _ = self.detect.ensemble(&mut p);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_builtin_streams() -> Result<(), String> {
        let c = AgentConfig::parse("agent_id = \"gw-1\"").map_err(|p| format!("{p:?}"))?;
        let names: Vec<_> = c.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["telemetry", "alerts", "health"]);
        Ok(())
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let text = r#"
agent_id = "bad id"
colectors = 1
[uplink]
url = "http://x"
max_inflight = 0
[queue]
batch_max_wait = "soon"
[[streams]]
name = "bulk"
priority = "bulk"
transforms = [{ type = "filter", expr = "value >" }, { type = "nope" }]
[[streams]]
name = "x y"
[[collectors]]
type = "generator"
name = "g"
stream = "missing"
rate = 5000
series = 1
[[collectors]]
type = "file"
name = "f"
pth = "/tmp/x"
[[collectors]]
type = "generator"
stream = "bulk"
"#;
        let problems = AgentConfig::parse(text).err().unwrap_or_default();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "agent_id",
            "colectors",
            "queue",
            "streams[0]",
            "collectors[0].stream",
            "collectors[0].series",
            "collectors[1]",
            "collectors[2].name",
        ] {
            assert!(paths.contains(&want), "missing {want} in {problems:#?}");
        }
        // The bad sections did not hide each other.
        assert!(problems.len() >= 8, "{problems:#?}");
    }

    #[test]
    fn semantic_problems_in_valid_syntax() {
        let text = r#"
[uplink]
url = "http://x"
max_inflight = 0
[[streams]]
name = "bulk"
transforms = [{ type = "filter", expr = "value >" }, { type = "rename", from = "a", to = "b c" }]
"#;
        let problems = AgentConfig::parse(text).err().unwrap_or_default();
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        for want in [
            "uplink.url",
            "uplink.max_inflight",
            "streams[0].transforms[0].expr",
            "streams[0].transforms[1].to",
        ] {
            assert!(paths.contains(&want), "missing {want} in {problems:#?}");
        }
    }
}

#[cfg(test)]
mod example {
    use super::*;

    #[test]
    fn the_shipped_example_config_validates() {
        let text = include_str!("../agent.example.toml");
        let cfg = AgentConfig::parse(text);
        assert!(cfg.is_ok(), "{:#?}", cfg.err());
    }
}
