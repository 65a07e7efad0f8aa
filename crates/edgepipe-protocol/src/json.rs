//! The JSON reading format shared by MQTT payloads, HTTP bodies and the batch envelope body.
//!
//! ```json
//! {"ts": 1700000000123, "metrics": {"temp": 21.5, "on": true, "state": "ok", "count": 5}}
//! ```
//!
//! A document is one such object or an array of them. JSON is parsed into [`Node`] rather than
//! `serde_json::Value` so that object keys keep their order (readings come out in the order
//! they were written) and duplicate keys are refused instead of silently keeping the last one.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;

use edgepipe_types::{DeviceId, Metric, Reading, TsSource, Value};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::validate::{check_finite, check_str, check_ts, smallest_duplicate};
use crate::{Error, Limits, Result};

/// A parsed JSON value that keeps object key order and integer precision. Keys and strings
/// borrow from the input where they need no unescaping (the usual case: no allocation).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node<'a> {
    Null,
    Bool(bool),
    /// Any integer that fits `i64`.
    I64(i64),
    /// A non-negative integer above `i64::MAX`.
    U64(u64),
    F64(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Node<'a>>),
    Obj(Vec<(Cow<'a, str>, Node<'a>)>),
}

impl<'a> Node<'a> {
    /// The JSON kind, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::I64(_) | Node::U64(_) | Node::F64(_) => "a number",
            Node::Str(_) => "a string",
            Node::Arr(_) => "an array",
            Node::Obj(_) => "an object",
        }
    }

    /// Resolves an RFC 6901 JSON pointer (`""` is the whole document).
    pub(crate) fn pointer(&self, pointer: &str) -> Option<&Node<'a>> {
        if pointer.is_empty() {
            return Some(self);
        }
        let rest = pointer.strip_prefix('/')?;
        let mut node = self;
        for raw in rest.split('/') {
            let token = raw.replace("~1", "/").replace("~0", "~");
            node = match node {
                Node::Obj(fields) => fields.iter().find(|(k, _)| *k == token).map(|(_, v)| v)?,
                Node::Arr(items) => {
                    // RFC 6901: no leading zeros, no sign.
                    if token.is_empty()
                        || (token.len() > 1 && token.starts_with('0'))
                        || !token.bytes().all(|b| b.is_ascii_digit())
                    {
                        return None;
                    }
                    items.get(token.parse::<usize>().ok()?)?
                }
                _ => return None,
            };
        }
        Some(node)
    }
}

impl<'de> Deserialize<'de> for Node<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E>(self) -> std::result::Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Node<'de>, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Node<'de>, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Node<'de>, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Node<'de>, E> {
        Ok(Node::I64(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Node<'de>, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Node::I64(i),
            Err(_) => Node::U64(v),
        })
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Node<'de>, E> {
        Ok(Node::F64(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Node<'de>, E> {
        Ok(Node::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Node<'de>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Node::Arr(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Node<'de>, A::Error> {
        let mut fields: Vec<(Cow<'de, str>, Node<'de>)> = Vec::new();
        // A JSON object key always arrives as a string (borrowed unless it had escapes).
        while let Some(k) = map.next_key::<Node<'de>>()? {
            let Node::Str(k) = k else {
                return Err(de::Error::custom(format_args!(
                    "object key is {}, not a string",
                    k.kind()
                )));
            };
            let v = map.next_value::<Node<'de>>()?;
            fields.push((k, v));
        }
        // Duplicate keys are refused: keeping only one of them would drop data silently.
        if let Some(dup) = smallest_duplicate(&fields, |(k, _)| k) {
            return Err(de::Error::custom(format_args!("duplicate key {dup:?}")));
        }
        Ok(Node::Obj(fields))
    }
}

/// Parses `bytes` as one JSON document.
pub(crate) fn parse(bytes: &[u8]) -> Result<Node<'_>> {
    serde_json::from_slice(bytes).map_err(Error::Json)
}

/// Parses and decodes a whole JSON document of readings: [`parse`] then [`decode_document`],
/// with the plain shapes devices send taken by the fast path (`fastjson`), which returns what
/// these two would, or leaves the document to them.
pub(crate) fn decode_bytes(
    bytes: &[u8],
    now_ms: i64,
    limits: &Limits,
    device: Option<&DeviceId>,
    already: usize,
) -> Result<Vec<Reading>> {
    if let Some(readings) = crate::fastjson::decode(bytes, now_ms, limits, device, already) {
        return Ok(readings);
    }
    parse(bytes).and_then(|node| decode_document(node, now_ms, limits, device, already))
}

/// First byte that is not JSON whitespace, if any.
pub(crate) fn first_non_ws(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
}

/// Reads a `ts` node as integer milliseconds (unchecked against limits).
pub(crate) fn ts_from_node(node: &Node<'_>) -> Result<i64> {
    match node {
        Node::I64(v) => Ok(*v),
        Node::U64(v) => Err(Error::TsNotInteger {
            found: format!("{v}, which is out of range"),
        }),
        Node::F64(v) => Err(Error::TsNotInteger {
            found: format!("the non-integer number {v}"),
        }),
        other => Err(Error::TsNotInteger {
            found: other.kind().to_owned(),
        }),
    }
}

/// Converts a metric's JSON value into a reading value.
pub(crate) fn value_from_node(metric: &str, node: Node<'_>, limits: &Limits) -> Result<Value> {
    match node {
        Node::I64(v) => Ok(Value::I64(v)),
        Node::U64(v) => Err(Error::IntegerOutOfRange {
            metric: metric.to_owned(),
            value: v.to_string(),
        }),
        Node::F64(v) => check_finite(metric, v).map(Value::F64),
        Node::Bool(b) => Ok(Value::Bool(b)),
        Node::Str(s) => {
            check_str(|| format!("metric {metric:?}"), &s, limits)?;
            Ok(Value::Str(s.into_owned()))
        }
        other @ (Node::Null | Node::Arr(_) | Node::Obj(_)) => Err(Error::UnsupportedValue {
            metric: metric.to_owned(),
            found: other.kind(),
        }),
    }
}

/// Decodes a whole JSON document (one reading object or an array of them).
///
/// `already` is the number of readings the caller has accepted before this document (for the
/// per-message limit); `device`, when given, must equal any `device_id` the objects declare.
pub(crate) fn decode_document(
    node: Node<'_>,
    now_ms: i64,
    limits: &Limits,
    device: Option<&DeviceId>,
    already: usize,
) -> Result<Vec<Reading>> {
    let mut out = Vec::new();
    match node {
        Node::Obj(fields) => decode_object(fields, now_ms, limits, device, already, &mut out)?,
        Node::Arr(items) => {
            if items.is_empty() {
                return Err(Error::NoReadings { what: "array" });
            }
            // Every element yields at least one reading, so this is a lower bound.
            if already.saturating_add(items.len()) > limits.max_readings_per_message {
                return Err(Error::TooManyReadings {
                    count: already.saturating_add(items.len()),
                    limit: limits.max_readings_per_message,
                });
            }
            for (index, item) in items.into_iter().enumerate() {
                let Node::Obj(fields) = item else {
                    return Err(Error::NotAnObject { found: item.kind() }.at_element(index));
                };
                let before = already.saturating_add(out.len());
                decode_object(fields, now_ms, limits, device, before, &mut out)
                    .map_err(|e| e.at_element(index))?;
            }
        }
        other => {
            return Err(Error::NotAnObject {
                found: other.kind(),
            });
        }
    }
    Ok(out)
}

/// Decodes one reading object's fields, appending its readings to `out`.
pub(crate) fn decode_object(
    fields: Vec<(Cow<'_, str>, Node<'_>)>,
    now_ms: i64,
    limits: &Limits,
    device: Option<&DeviceId>,
    already: usize,
    out: &mut Vec<Reading>,
) -> Result<()> {
    let mut ts = None;
    let mut metrics = None;
    for (key, value) in fields {
        match key.as_ref() {
            "ts" => ts = Some(value),
            "metrics" => metrics = Some(value),
            "device_id" => {
                let Node::Str(declared) = value else {
                    return Err(Error::DeviceIdNotString {
                        found: value.kind(),
                    });
                };
                if let Some(expected) = device
                    && expected.as_str() != declared
                {
                    return Err(Error::DeviceMismatch {
                        expected: expected.clone(),
                        found: declared.into_owned(),
                    });
                }
            }
            _ => {
                return Err(Error::UnknownField {
                    field: key.into_owned(),
                });
            }
        }
    }
    let (ts, ts_source) = match ts {
        Some(node) => {
            let ts = ts_from_node(&node)?;
            check_ts(ts, now_ms, limits)?;
            (ts, TsSource::Device)
        }
        None => (now_ms, TsSource::Server),
    };
    let metrics = match metrics {
        Some(Node::Obj(m)) => m,
        Some(other) => {
            return Err(Error::MetricsNotObject {
                found: other.kind(),
            });
        }
        None => return Err(Error::MissingMetrics),
    };
    if metrics.is_empty() {
        return Err(Error::NoReadings {
            what: "metrics object",
        });
    }
    let count = already.saturating_add(metrics.len());
    if count > limits.max_readings_per_message {
        return Err(Error::TooManyReadings {
            count,
            limit: limits.max_readings_per_message,
        });
    }
    out.reserve(metrics.len());
    for (name, value) in metrics {
        // The key is already an owned string: validated in place, not copied.
        let metric = Metric::new(name.into_owned()).map_err(Error::InvalidMetric)?;
        let value = value_from_node(metric.as_str(), value, limits)?;
        out.push(Reading {
            metric,
            ts,
            value,
            ts_source,
        });
    }
    Ok(())
}

/// Writes `readings` as a JSON array of reading objects, grouping consecutive readings that
/// share a timestamp (and have distinct metrics) into one object.
///
/// Every object carries `ts`, including readings the server stamped: once a timestamp is
/// assigned it is the reading's identity. Non-finite floats, which validated readings never
/// hold, are written as `null` and so are refused when decoded.
pub(crate) fn write_readings(readings: &[Reading]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 + readings.len() * 32);
    buf.push(b'[');
    let mut i = 0;
    while i < readings.len() {
        let ts = readings[i].ts;
        let mut end = i + 1;
        while end < readings.len()
            && readings[end].ts == ts
            && !readings[i..end]
                .iter()
                .any(|r| r.metric == readings[end].metric)
        {
            end += 1;
        }
        if i > 0 {
            buf.push(b',');
        }
        // Writing into a Vec cannot fail.
        let _ = write!(buf, "{{\"ts\":{ts},\"metrics\":{{");
        for (n, r) in readings[i..end].iter().enumerate() {
            if n > 0 {
                buf.push(b',');
            }
            write_json(&mut buf, r.metric.as_str());
            buf.push(b':');
            match &r.value {
                Value::F64(v) => write_json(&mut buf, v),
                Value::I64(v) => write_json(&mut buf, v),
                Value::Bool(v) => write_json(&mut buf, v),
                Value::Str(v) => write_json(&mut buf, v.as_str()),
            }
        }
        buf.extend_from_slice(b"}}");
        i = end;
    }
    buf.push(b']');
    buf
}

fn write_json<T: serde::Serialize + ?Sized>(buf: &mut Vec<u8>, v: &T) {
    // Serializing a str, bool or number into a Vec cannot fail (non-finite floats become null).
    let _ = serde_json::to_writer(&mut *buf, v);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_keeps_key_order_and_refuses_duplicate_keys() -> Result<()> {
        let Node::Obj(f) = parse(br#"{"b":1,"a":2}"#)? else {
            panic!("not an object");
        };
        assert_eq!(f[0].0, "b");
        assert_eq!(f[1].0, "a");
        let err = parse(br#"{"metrics":{"t":1,"t":2}}"#)
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("duplicate key \"t\""));
        Ok(())
    }

    /// Keys and strings with escapes are unescaped (owned), the rest borrowed: both compare
    /// alike, so an escaped spelling of a key is still a duplicate, and readings decode the same.
    #[test]
    fn escaped_keys_and_strings_decode_like_plain_ones() -> Result<()> {
        let err = parse(br#"{"metrics":{"t":1,"\u0074":2}}"#)
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("duplicate key \"t\""));
        let node = parse(br#"{"\u0074s":1700000000000,"metrics":{"te\u006dp":1.5,"s":"a\"b"}}"#)?;
        let limits = Limits::default();
        let got = decode_document(node, 1_700_000_000_000, &limits, None, 0)?;
        let plain = parse(br#"{"ts":1700000000000,"metrics":{"temp":1.5,"s":"a\"b"}}"#)?;
        assert_eq!(
            got,
            decode_document(plain, 1_700_000_000_000, &limits, None, 0)?
        );
        assert_eq!(got[0].metric.as_str(), "temp");
        assert_eq!(got[1].value, Value::Str("a\"b".into()));
        Ok(())
    }

    /// Objects up to 16 keys are checked pairwise, larger ones by sorting: both refuse a
    /// duplicate and name the smallest duplicated key.
    #[test]
    fn duplicate_keys_are_named_alike_in_small_and_large_objects() {
        for n in [2usize, 15, 16, 17, 40] {
            let mut keys: Vec<String> = (0..n).map(|i| format!("k{i:02}")).collect();
            // Two duplicated keys, the larger one first.
            keys.push(format!("k{:02}", n - 1));
            keys.push("k00".into());
            let body = keys
                .iter()
                .enumerate()
                .map(|(i, k)| format!("\"{k}\":{i}"))
                .collect::<Vec<_>>()
                .join(",");
            let err = parse(format!("{{{body}}}").as_bytes())
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("duplicate key \"k00\""), "{n} keys: {err}");
            let unique = (0..n)
                .map(|i| format!("\"k{i:02}\":{i}"))
                .collect::<Vec<_>>()
                .join(",");
            assert!(
                parse(format!("{{{unique}}}").as_bytes()).is_ok(),
                "{n} keys"
            );
        }
    }

    #[test]
    fn json_pointer_follows_rfc_6901() -> Result<()> {
        let n = parse(br#"{"a/b":{"c~d":[10,20]}}"#)?;
        assert_eq!(n.pointer("/a~1b/c~0d/1"), Some(&Node::I64(20)));
        assert_eq!(n.pointer("/a~1b/c~0d/01"), None);
        assert_eq!(n.pointer("/missing"), None);
        assert_eq!(n.pointer(""), Some(&n));
        assert_eq!(n.pointer("no-slash"), None);
        Ok(())
    }

    #[test]
    fn u64_above_i64_max_is_kept_apart() -> Result<()> {
        assert_eq!(parse(b"9223372036854775807")?, Node::I64(i64::MAX));
        assert_eq!(parse(b"9223372036854775808")?, Node::U64(1 << 63));
        assert_eq!(parse(b"-9223372036854775808")?, Node::I64(i64::MIN));
        Ok(())
    }
}
