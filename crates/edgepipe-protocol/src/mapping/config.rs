//! Configuration of one topic mapping, as written in the server's config file.

use std::collections::BTreeMap;

use serde::Deserialize;

/// How a mapped topic's payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The payload is one bare value: a number (`21.5`, `7`), `true`/`false`, a JSON-quoted
    /// string, or any other text taken as a string. Surrounding whitespace is ignored. The
    /// metric comes from the pattern's `{metric}` or the `metric` setting; ts is server time.
    Raw,
    /// The payload is JSON: picked apart with `metrics` pointers, or one JSON scalar when the
    /// metric is known, or else an edgepipe reading object/array.
    #[default]
    Json,
}

/// One topic mapping: turns messages on a foreign topic scheme into readings.
///
/// ```toml
/// [[mqtt.mappings]]
/// pattern = "factory/{line}/{device_id}/status"
/// metrics = { temp = "/sensors/t", rpm = "/motor/rpm" }
/// ts_pointer = "/time"
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMappingConfig {
    /// Topic pattern, one level per `/`: literal levels, MQTT wildcards `+` (any one level) and
    /// `#` (the rest, last level only), and whole-level placeholders `{device_id}` (required),
    /// `{metric}` (optional) and `{name}` for any other name, which becomes a tag.
    pub pattern: String,
    /// Payload format: `"json"` (default) or `"raw"`.
    #[serde(default)]
    pub payload: PayloadFormat,
    /// Metric name when the pattern has no `{metric}` (raw payloads or a JSON scalar).
    #[serde(default)]
    pub metric: Option<String>,
    /// For JSON payloads: metric name -> JSON pointer (RFC 6901) to its value, e.g.
    /// `temp = "/sensors/t"`. Pointers missing from a message are skipped; a message with none
    /// of them is refused.
    #[serde(default)]
    pub metrics: BTreeMap<String, String>,
    /// With `metrics`: JSON pointer to an integer timestamp in ms since the epoch. Missing from
    /// a message (or not set): server time.
    #[serde(default)]
    pub ts_pointer: Option<String>,
}
