//! Topic mappings for existing fleets with their own topic schemes
//! (`factory/{line}/{device_id}/{metric}` plus a payload format and JSON pointers).
//!
//! A [`TopicMappingConfig`] is compiled once into a [`TopicMapping`], which checks every
//! setting up front (pattern, metric names, pointers, conflicting options). At run time
//! [`TopicMapping::matches`] picks the device, metric and tags out of a topic, and
//! [`TopicMapping::decode`] turns the payload into readings with the same validation and
//! [`Limits`] as native payloads. How a payload is read:
//!
//! | settings | payload |
//! | --- | --- |
//! | `payload = "raw"` (+ `{metric}` or `metric`) | one bare value, see [`PayloadFormat::Raw`] |
//! | `metrics = { name = "/pointer" }` (+ `ts_pointer`) | JSON; each pointer gives one reading |
//! | `{metric}` or `metric`, JSON | one JSON number, boolean or string |
//! | none of these, JSON | an edgepipe reading object or array (`{"ts":…, "metrics":{…}}`) |

mod config;
#[cfg(test)]
mod tests;

pub use config::{PayloadFormat, TopicMappingConfig};

use edgepipe_types::{DeviceId, Metric, Reading, TsSource, Value};

use crate::{Decoded, Error, Limits, Result};
use crate::{json, validate};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    DeviceId,
    Metric,
    Tag(String),
    /// MQTT `+`.
    AnyOne,
    /// MQTT `#`: zero or more remaining levels.
    AnyRest,
}

/// What a topic told about a message: filled in by [`TopicMapping::matches`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedTopic {
    /// The `{device_id}` level, as written (validated by [`TopicMapping::decode`]).
    pub device_id: String,
    /// The `{metric}` level, if the pattern has one.
    pub metric: Option<String>,
    /// The other placeholders in pattern order, e.g. `("line", "3")`.
    pub tags: Vec<(String, String)>,
}

impl MappedTopic {
    /// The device id, validated.
    pub fn device(&self) -> Result<DeviceId> {
        DeviceId::new(self.device_id.as_str()).map_err(Error::InvalidDeviceId)
    }
}

/// A compiled, validated topic mapping.
#[derive(Debug, Clone)]
pub struct TopicMapping {
    pattern: String,
    segments: Vec<Segment>,
    payload: PayloadFormat,
    metric: Option<Metric>,
    metrics: Vec<(Metric, String)>,
    ts_pointer: Option<String>,
}

impl TopicMapping {
    /// Validates `cfg`: the pattern (whole-level placeholders with simple names, exactly one
    /// `{device_id}`, no repeated names, `#` only last), metric names, JSON pointers, and that
    /// the options fit together (`raw` needs a metric and takes no pointers; `metrics` and a
    /// fixed metric exclude each other; `ts_pointer` needs `metrics`).
    pub fn compile(cfg: &TopicMappingConfig) -> Result<Self, Error> {
        let pattern = cfg.pattern.clone();
        let bad = |reason: String| Error::InvalidPattern {
            pattern: pattern.clone(),
            reason,
        };
        if pattern.is_empty() {
            return Err(bad("must not be empty".into()));
        }
        let levels: Vec<&str> = pattern.split('/').collect();
        let mut segments = Vec::with_capacity(levels.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            let seg = if let Some(name) = level.strip_prefix('{').and_then(|l| l.strip_suffix('}'))
            {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(bad(format!(
                        "placeholder {level:?} must be a name of letters, digits and _"
                    )));
                }
                if names.contains(&name) {
                    return Err(bad(format!("placeholder {level:?} appears twice")));
                }
                names.push(name);
                match name {
                    "device_id" => Segment::DeviceId,
                    "metric" => Segment::Metric,
                    other => Segment::Tag(other.to_owned()),
                }
            } else if *level == "+" {
                Segment::AnyOne
            } else if *level == "#" {
                if i + 1 != levels.len() {
                    return Err(bad("'#' must be the last level".into()));
                }
                Segment::AnyRest
            } else if level.contains(['{', '}', '+', '#']) {
                return Err(bad(format!(
                    "level {level:?}: placeholders and wildcards must fill a whole level"
                )));
            } else {
                Segment::Literal((*level).to_owned())
            };
            segments.push(seg);
        }
        if !segments.contains(&Segment::DeviceId) {
            return Err(bad("needs a {device_id} placeholder".into()));
        }
        let topic_metric = segments.contains(&Segment::Metric);

        let metric = cfg.metric.as_deref().map(validate::metric).transpose()?;
        if topic_metric && metric.is_some() {
            return Err(bad("has {metric} and the `metric` setting; use one".into()));
        }
        let has_metric = topic_metric || metric.is_some();
        if cfg.payload == PayloadFormat::Raw && !has_metric {
            return Err(Error::RawNeedsMetric { pattern });
        }
        if cfg.payload == PayloadFormat::Raw
            && (!cfg.metrics.is_empty() || cfg.ts_pointer.is_some())
        {
            return Err(bad(
                "payload \"raw\" takes no `metrics` or `ts_pointer` (they need JSON)".into(),
            ));
        }
        if has_metric && !cfg.metrics.is_empty() {
            return Err(bad(
                "`metrics` pointers and a single metric ({metric} or `metric`) exclude each other"
                    .into(),
            ));
        }
        if cfg.ts_pointer.is_some() && cfg.metrics.is_empty() {
            return Err(bad("`ts_pointer` needs `metrics` pointers".into()));
        }
        let mut metrics = Vec::with_capacity(cfg.metrics.len());
        for (name, pointer) in &cfg.metrics {
            check_pointer(format!("metrics.{name}"), pointer)?;
            metrics.push((validate::metric(name)?, pointer.clone()));
        }
        if let Some(p) = &cfg.ts_pointer {
            check_pointer("ts_pointer".into(), p)?;
        }
        Ok(TopicMapping {
            pattern: cfg.pattern.clone(),
            segments,
            payload: cfg.payload,
            metric,
            metrics,
            ts_pointer: cfg.ts_pointer.clone(),
        })
    }

    /// The pattern as configured.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The MQTT topic filter to subscribe to: placeholders become `+`
    /// (`factory/{line}/{device_id}/{metric}` -> `factory/+/+/+`).
    pub fn subscription_filter(&self) -> String {
        let levels: Vec<&str> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.as_str(),
                Segment::DeviceId | Segment::Metric | Segment::Tag(_) | Segment::AnyOne => "+",
                Segment::AnyRest => "#",
            })
            .collect();
        levels.join("/")
    }

    /// Matches `topic` against the pattern; `None` if it does not fit. Placeholder values are
    /// returned as written; [`decode`](Self::decode) validates them.
    pub fn matches(&self, topic: &str) -> Option<MappedTopic> {
        let mut levels = topic.split('/');
        let mut device_id = None;
        let mut metric = None;
        let mut tags = Vec::new();
        for seg in &self.segments {
            if *seg == Segment::AnyRest {
                return device_id.map(|device_id| MappedTopic {
                    device_id,
                    metric,
                    tags,
                });
            }
            let level = levels.next()?;
            match seg {
                Segment::Literal(l) if l != level => return None,
                Segment::Literal(_) | Segment::AnyOne | Segment::AnyRest => {}
                Segment::DeviceId => device_id = Some(level.to_owned()),
                Segment::Metric => metric = Some(level.to_owned()),
                Segment::Tag(name) => tags.push((name.clone(), level.to_owned())),
            }
        }
        if levels.next().is_some() {
            return None;
        }
        device_id.map(|device_id| MappedTopic {
            device_id,
            metric,
            tags,
        })
    }

    /// Decodes a payload received on a topic this mapping matched (`m` from
    /// [`matches`](Self::matches)). All or nothing, like [`crate::decode_payload`]; the device
    /// id and metric taken from the topic are validated here.
    pub fn decode(
        &self,
        m: &MappedTopic,
        payload: &[u8],
        now_ms: i64,
        limits: &Limits,
    ) -> Result<Decoded, Error> {
        let device = m.device()?;
        let metric = match (&m.metric, &self.metric) {
            (Some(name), _) => Some(validate::metric(name)?),
            (None, Some(fixed)) => Some(fixed.clone()),
            (None, None) => None,
        };
        let readings = match (self.payload, metric) {
            (PayloadFormat::Raw, Some(metric)) => {
                let value = raw_value(metric.as_str(), payload, limits)?;
                vec![server_reading(metric, now_ms, value)]
            }
            (PayloadFormat::Raw, None) => {
                // compile() refuses this; a mapping whose topic lacks {metric} cannot get here.
                return Err(Error::RawNeedsMetric {
                    pattern: self.pattern.clone(),
                });
            }
            (PayloadFormat::Json, Some(metric)) => {
                let node = json::parse(payload)?;
                let value = json::value_from_node(metric.as_str(), node, limits)?;
                vec![server_reading(metric, now_ms, value)]
            }
            (PayloadFormat::Json, None) if !self.metrics.is_empty() => {
                self.decode_pointers(payload, now_ms, limits)?
            }
            (PayloadFormat::Json, None) => {
                json::decode_bytes(payload, now_ms, limits, Some(&device), 0)?
            }
        };
        Ok(Decoded {
            origin: None,
            readings,
        })
    }

    fn decode_pointers(
        &self,
        payload: &[u8],
        now_ms: i64,
        limits: &Limits,
    ) -> Result<Vec<Reading>> {
        if self.metrics.len() > limits.max_readings_per_message {
            return Err(Error::TooManyReadings {
                count: self.metrics.len(),
                limit: limits.max_readings_per_message,
            });
        }
        let node = json::parse(payload)?;
        let (ts, ts_source) = match self.ts_pointer.as_deref().and_then(|p| node.pointer(p)) {
            Some(ts_node) => {
                let ts = json::ts_from_node(ts_node)?;
                validate::check_ts(ts, now_ms, limits)?;
                (ts, TsSource::Device)
            }
            None => (now_ms, TsSource::Server),
        };
        let mut readings = Vec::with_capacity(self.metrics.len());
        for (metric, pointer) in &self.metrics {
            let Some(found) = node.pointer(pointer) else {
                continue;
            };
            let value = json::value_from_node(metric.as_str(), found.clone(), limits)?;
            readings.push(Reading {
                metric: metric.clone(),
                ts,
                value,
                ts_source,
            });
        }
        if readings.is_empty() {
            let pointers: Vec<&str> = self.metrics.iter().map(|(_, p)| p.as_str()).collect();
            return Err(Error::NoMappedMetrics {
                pointers: pointers.join(", "),
            });
        }
        Ok(readings)
    }
}

fn check_pointer(what: String, pointer: &str) -> Result<()> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(Error::InvalidPointer {
            what,
            pointer: pointer.to_owned(),
        })
    }
}

fn server_reading(metric: Metric, now_ms: i64, value: Value) -> Reading {
    Reading {
        metric,
        ts: now_ms,
        value,
        ts_source: TsSource::Server,
    }
}

/// Reads a bare value: a number, `true`/`false`, a JSON-quoted string, or any other text.
fn raw_value(metric: &str, payload: &[u8], limits: &Limits) -> Result<Value> {
    let bad = |reason: &str| Error::RawPayload {
        metric: metric.to_owned(),
        reason: reason.to_owned(),
    };
    let text = std::str::from_utf8(payload)
        .map_err(|_| bad("not valid UTF-8"))?
        .trim();
    if text.is_empty() {
        return Err(bad("empty payload"));
    }
    match text {
        "true" => return Ok(Value::Bool(true)),
        "false" => return Ok(Value::Bool(false)),
        _ => {}
    }
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|e| Error::RawPayload {
            metric: metric.to_owned(),
            reason: format!("malformed quoted string: {e}"),
        })?;
        validate::check_str(|| format!("metric {metric:?}"), &s, limits)?;
        return Ok(Value::Str(s));
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<i64>()
            .map(Value::I64)
            .map_err(|_| Error::IntegerOutOfRange {
                metric: metric.to_owned(),
                value: text.to_owned(),
            });
    }
    // Only plain decimal floats count as numbers; Rust would also read "inf" and "NaN".
    if text.bytes().any(|b| b.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
        && let Ok(v) = text.parse::<f64>()
    {
        return validate::check_finite(metric, v).map(Value::F64);
    }
    validate::check_str(|| format!("metric {metric:?}"), text, limits)?;
    Ok(Value::Str(text.to_owned()))
}
