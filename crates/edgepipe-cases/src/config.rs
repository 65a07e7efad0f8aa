//! `[cases]` configuration: correlation, severity, the store, notification channels and routes.

use edgepipe_types::config::Problem;
use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Severity;

/// `[cases]` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CasesConfig {
    /// Turn anomaly events into cases.
    pub enabled: bool,
    /// Case store URL: `sqlite://PATH` or `postgres://user@host:port/db`; unset or empty:
    /// `sqlite://<data dir>/cases.db`.
    pub store_url: Option<String>,
    /// Events of one device and category join its open case while they come within this time
    /// (event time) of its last event. A case with no new event for this long (wall time) is
    /// resolved automatically (marked as automatic), unless someone is investigating; an event
    /// further than this past the last one (a backlog arriving fast) also closes it first.
    #[serde(with = "edgepipe_types::duration_serde")]
    pub window: Duration,
    /// An automatically resolved case whose last event is within this time before a new event
    /// (event time) is reopened (counted as a flap, not notified again unless its severity
    /// rises) instead of opening a new case.
    #[serde(with = "edgepipe_types::duration_serde")]
    pub flap_window: Duration,
    /// How far before the first anomaly the evidence snapshot of raw readings reaches.
    #[serde(with = "edgepipe_types::duration_serde")]
    pub evidence_before: Duration,
    /// At most this many raw readings in the evidence snapshot.
    pub evidence_max_rows: usize,
    /// Per-metric criticality raising (or lowering) a case's severity: metric name →
    /// `-1`..`+2` levels (e.g. `{ pressure = 2, humidity = -1 }`).
    pub criticality: BTreeMap<String, i64>,
    /// Notification channels.
    pub channels: Vec<ChannelConfig>,
    /// Routes from case changes to channels. None: every channel gets every notification.
    pub routes: Vec<RouteConfig>,
    /// More pending notifications than this for one channel are sent as one digest.
    pub digest_threshold: usize,
    /// Longest wait between delivery attempts of a failing notification (it is never dropped).
    #[serde(with = "edgepipe_types::duration_serde")]
    pub max_retry_backoff: Duration,
}

impl Default for CasesConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            store_url: None,
            window: Duration::from_secs(15 * 60),
            flap_window: Duration::from_secs(60 * 60),
            evidence_before: Duration::from_secs(10 * 60),
            evidence_max_rows: 5_000,
            criticality: BTreeMap::new(),
            channels: Vec::new(),
            routes: Vec::new(),
            digest_threshold: 20,
            max_retry_backoff: Duration::from_secs(300),
        }
    }
}

impl CasesConfig {
    /// Every problem with the configuration, with its key path.
    pub fn problems(&self) -> Vec<Problem> {
        let mut p = Vec::new();
        if self.window.is_zero() {
            p.push(Problem::new("cases.window", "must be more than 0"));
        }
        if let Some(u) = self.store_url.as_ref().filter(|u| !u.is_empty())
            && !(u.starts_with("sqlite:")
                || u.starts_with("postgres:")
                || u.starts_with("postgresql:"))
        {
            p.push(Problem::new(
                "cases.store_url",
                format!(
                    "{:?} is neither sqlite://PATH nor postgres://...",
                    redact(u)
                ),
            ));
        }
        for (m, c) in &self.criticality {
            if !(-1..=2).contains(c) {
                p.push(Problem::new(
                    format!("cases.criticality.{m}"),
                    format!("{c} is outside -1..=2"),
                ));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.channels.iter().enumerate() {
            if !names.insert(c.name()) {
                p.push(Problem::new(
                    format!("cases.channels[{i}].name"),
                    format!("{:?} is used twice", c.name()),
                ));
            }
            if c.name().is_empty() {
                p.push(Problem::new(format!("cases.channels[{i}].name"), "empty"));
            }
            match c {
                ChannelConfig::Webhook { url, secret, .. } => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        p.push(Problem::new(
                            format!("cases.channels[{i}].url"),
                            format!("{url:?} is not http(s)://"),
                        ));
                    }
                    if secret.is_empty() {
                        p.push(Problem::new(
                            format!("cases.channels[{i}].secret"),
                            "empty (receivers verify the HMAC with it)",
                        ));
                    }
                }
                ChannelConfig::Email { to, from, .. } => {
                    if to.is_empty() {
                        p.push(Problem::new(
                            format!("cases.channels[{i}].to"),
                            "no recipients",
                        ));
                    }
                    for a in to.iter().chain(std::iter::once(from)) {
                        if a.parse::<lettre::Address>().is_err() {
                            p.push(Problem::new(
                                format!("cases.channels[{i}]"),
                                format!("{a:?} is not an email address"),
                            ));
                        }
                    }
                }
            }
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !names.contains(r.channel.as_str()) {
                p.push(Problem::new(
                    format!("cases.routes[{i}].channel"),
                    format!("no channel named {:?}", r.channel),
                ));
            }
            for e in &r.events {
                if !["opened", "escalated", "reopened", "resolved"].contains(&e.as_str()) {
                    p.push(Problem::new(
                        format!("cases.routes[{i}].events"),
                        format!("{e:?} is not one of opened, escalated, reopened, resolved"),
                    ));
                }
            }
        }
        p
    }

    /// The channels a notification of `event` for a case of `severity` on `device` goes to.
    pub fn route(&self, event: &str, severity: Severity, device: &str) -> Vec<&str> {
        if self.routes.is_empty() {
            return self.channels.iter().map(|c| c.name()).collect();
        }
        let mut out: Vec<&str> = Vec::new();
        for r in &self.routes {
            if severity >= r.min_severity
                && (r.events.is_empty() || r.events.iter().any(|e| e == event))
                && (r.devices.is_empty() || r.devices.iter().any(|p| glob_match(p, device)))
                && !out.contains(&r.channel.as_str())
            {
                out.push(r.channel.as_str());
            }
        }
        out
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else if let Some(pos) = rest.find(part) {
            rest = &rest[pos + part.len()..];
        } else {
            return false;
        }
    }
    true
}

/// The URL with any password replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// A notification channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelConfig {
    /// HTTP POST of JSON, signed: `X-Edgepipe-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
    Webhook {
        /// Name used by routes and in the outbox.
        name: String,
        /// Target URL.
        url: String,
        /// HMAC key.
        secret: String,
        /// Body template (for ticket systems): `{{case.title}}`, `{{event}}`, ... replaced by
        /// the JSON value at that path (strings JSON-escaped, without quotes). Unset: the
        /// notification JSON itself.
        #[serde(default)]
        template: Option<String>,
        /// Request timeout.
        #[serde(default = "default_timeout", with = "edgepipe_types::duration_serde")]
        timeout: Duration,
    },
    /// Email over SMTP.
    Email {
        /// Name used by routes and in the outbox.
        name: String,
        /// SMTP server host.
        smtp_host: String,
        /// SMTP port (25, 465, 587; a local relay or test server often uses 1025).
        #[serde(default = "default_smtp_port")]
        smtp_port: u16,
        /// Sender address.
        from: String,
        /// Recipients.
        to: Vec<String>,
        /// SMTP user (with `password`).
        #[serde(default)]
        username: Option<String>,
        /// SMTP password.
        #[serde(default)]
        password: Option<String>,
        /// `starttls`, `tls` or `none` (plain, for a relay on localhost).
        #[serde(default = "default_smtp_tls")]
        tls: String,
    },
}

impl ChannelConfig {
    /// The channel's name.
    pub fn name(&self) -> &str {
        match self {
            Self::Webhook { name, .. } | Self::Email { name, .. } => name,
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_smtp_port() -> u16 {
    587
}
fn default_smtp_tls() -> String {
    "starttls".to_owned()
}

/// Sends some case changes to one channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The channel.
    pub channel: String,
    /// Only cases of this severity or higher.
    #[serde(default = "default_min_severity")]
    pub min_severity: Severity,
    /// Only devices matching one of these patterns (`*` wildcard); empty: all.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Only these changes (`opened`, `escalated`, `reopened`, `resolved`); empty: all.
    #[serde(default)]
    pub events: Vec<String>,
}

fn default_min_severity() -> Severity {
    Severity::Info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("line1-*", "line1-press"));
        assert!(!glob_match("line1-*", "line2-press"));
        assert!(glob_match("*-press", "line1-press"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("dev", "dev"));
    }

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn problems_name_the_key() {
        let cfg: CasesConfig = toml_like(
            r#"{"window":"0s","channels":[{"name":"w","type":"webhook","url":"ftp://x","secret":""}],
                "routes":[{"channel":"nope","events":["boom"]}], "criticality":{"p":7}}"#,
        );
        let p = cfg
            .problems()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n");
        for needle in [
            "cases.window",
            "cases.channels[0].url",
            "cases.channels[0].secret",
            "cases.routes[0].channel",
            "cases.routes[0].events",
            "cases.criticality.p",
        ] {
            assert!(p.contains(needle), "{needle} missing in {p}");
        }
    }

    #[test]
    fn routes_by_severity_device_and_event() {
        let cfg: CasesConfig = toml_like(
            r#"{"channels":[{"name":"ops","type":"webhook","url":"http://x","secret":"s"},
                            {"name":"mail","type":"email","smtp_host":"h","from":"a@b.c","to":["d@e.f"]}],
                "routes":[{"channel":"ops","min_severity":"high"},
                          {"channel":"mail","devices":["line1-*"],"events":["opened"]}]}"#,
        );
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
        assert_eq!(cfg.route("opened", Severity::Low, "line1-a"), vec!["mail"]);
        assert_eq!(
            cfg.route("opened", Severity::Critical, "line1-a"),
            vec!["ops", "mail"]
        );
        assert_eq!(
            cfg.route("resolved", Severity::Low, "line1-a"),
            Vec::<&str>::new()
        );
        assert_eq!(cfg.route("opened", Severity::High, "line2-a"), vec!["ops"]);
    }

    fn toml_like(json: &str) -> CasesConfig {
        serde_json::from_str(json).expect("config parses")
    }
}
