//! InfluxDB line protocol, one line at a time (format described in the parent module's docs).

use edgepipe_types::{DeviceId, Reading, TsSource, Value};

use super::Precision;
use crate::{Error, Limits, Result, validate};

fn syntax(reason: impl Into<String>) -> Error {
    Error::LineSyntax {
        reason: reason.into(),
    }
}

/// Byte index of the first `sep` not escaped by `\` (and, if `quotes`, not inside `"..."`).
fn find_unescaped(s: &str, sep: u8, quotes: bool) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut in_quotes = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'"' if quotes => in_quotes = !in_quotes,
            b if b == sep && !in_quotes => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Splits on every unescaped `sep` (see [`find_unescaped`]).
fn split_unescaped(mut s: &str, sep: u8, quotes: bool) -> Vec<&str> {
    let mut parts = Vec::new();
    while let Some(i) = find_unescaped(s, sep, quotes) {
        parts.push(&s[..i]);
        s = &s[i + 1..];
    }
    parts.push(s);
    parts
}

/// Removes `\` before any of `specials`; other backslashes are kept as written.
fn unescape(s: &str, specials: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && specials.contains(&next)
        {
            out.push(next);
            chars.next();
        } else {
            out.push(c);
        }
    }
    out
}

const MEASUREMENT_SPECIALS: &[char] = &[',', ' '];
const KEY_SPECIALS: &[char] = &[',', '=', ' '];

/// Parses one line into its readings. Blank and comment lines yield no readings.
/// `already` is the number of readings accepted before this line in the same request.
pub(super) fn parse_line(
    raw: &[u8],
    device: &DeviceId,
    now_ms: i64,
    limits: &Limits,
    precision: Precision,
    already: usize,
) -> Result<Vec<Reading>> {
    let line = std::str::from_utf8(raw).map_err(|_| Error::NotUtf8 { what: "line" })?;
    let line = line.trim_start_matches([' ', '\t']);
    let line = line.trim_end_matches([' ', '\t', '\r']);
    if line.is_empty() || line.starts_with('#') {
        return Ok(Vec::new());
    }

    // Series key: measurement and tags, up to the first unescaped space.
    let key_end = find_unescaped(line, b' ', false)
        .ok_or_else(|| syntax("missing field set after the measurement"))?;
    let (series, rest) = line.split_at(key_end);
    let rest = rest.trim_start_matches(' ');

    let mut series_parts = split_unescaped(series, b',', false).into_iter();
    let measurement = unescape(
        series_parts.next().unwrap_or_default(),
        MEASUREMENT_SPECIALS,
    );
    if measurement.is_empty() {
        return Err(syntax("empty measurement"));
    }
    for tag in series_parts {
        let eq = find_unescaped(tag, b'=', false)
            .ok_or_else(|| syntax(format!("tag {tag:?} has no '='")))?;
        let key = unescape(&tag[..eq], KEY_SPECIALS);
        let value = unescape(&tag[eq + 1..], KEY_SPECIALS);
        if key.is_empty() || value.is_empty() {
            return Err(syntax(format!("tag {tag:?} has an empty key or value")));
        }
        if (key == "device_id" || key == "device") && value != device.as_str() {
            return Err(Error::DeviceMismatch {
                expected: device.clone(),
                found: value,
            });
        }
    }

    // Field set: up to the first unescaped space outside a quoted string.
    let (fields, ts_text) = match find_unescaped(rest, b' ', true) {
        Some(i) => (&rest[..i], rest[i..].trim_start_matches(' ')),
        None => (rest, ""),
    };
    if fields.is_empty() {
        return Err(syntax("missing field set after the measurement"));
    }
    let fields = split_unescaped(fields, b',', true);
    let count = already.saturating_add(fields.len());
    if count > limits.max_readings_per_message {
        return Err(Error::TooManyReadings {
            count,
            limit: limits.max_readings_per_message,
        });
    }

    let (ts, ts_source) = if ts_text.is_empty() {
        (now_ms, TsSource::Server)
    } else {
        (
            parse_timestamp(ts_text, precision, now_ms, limits)?,
            TsSource::Device,
        )
    };

    let mut readings: Vec<Reading> = Vec::with_capacity(fields.len());
    for field in fields {
        let eq = find_unescaped(field, b'=', false)
            .ok_or_else(|| syntax(format!("field {field:?} has no '='")))?;
        let key = unescape(&field[..eq], KEY_SPECIALS);
        if key.is_empty() {
            return Err(syntax(format!("field {field:?} has an empty key")));
        }
        let name = if key == "value" {
            measurement.clone()
        } else {
            format!("{measurement}.{key}")
        };
        let metric = validate::metric(&name)?;
        if readings.iter().any(|r| r.metric == metric) {
            return Err(Error::DuplicateMetric { metric: name });
        }
        let value = parse_field_value(&key, &name, &field[eq + 1..], limits)?;
        readings.push(Reading {
            metric,
            ts,
            value,
            ts_source,
        });
    }
    Ok(readings)
}

fn parse_timestamp(text: &str, precision: Precision, now_ms: i64, limits: &Limits) -> Result<i64> {
    let bad = |reason| Error::LineTimestamp {
        value: text.to_owned(),
        reason,
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(if text.contains(' ') {
            bad("unexpected text after the timestamp")
        } else {
            bad("not an integer")
        });
    }
    let ts: i64 = text.parse().map_err(|_| bad("out of the 64-bit range"))?;
    let ms = precision
        .to_ms(ts)
        .ok_or_else(|| bad("out of range in milliseconds"))?;
    validate::check_ts(ms, now_ms, limits)?;
    Ok(ms)
}

fn parse_field_value(key: &str, metric: &str, text: &str, limits: &Limits) -> Result<Value> {
    let bad = |reason| Error::FieldValue {
        field: key.to_owned(),
        value: text.to_owned(),
        reason,
    };
    if text.is_empty() {
        return Err(bad("empty value"));
    }
    if let Some(inner) = text.strip_prefix('"') {
        let s = parse_string(inner).ok_or_else(|| bad("unterminated or malformed string"))?;
        validate::check_str(|| format!("metric {metric:?}"), &s, limits)?;
        return Ok(Value::Str(s));
    }
    match text {
        "t" | "T" | "true" | "True" | "TRUE" => return Ok(Value::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Ok(Value::Bool(false)),
        _ => {}
    }
    let is_int = |s: &str| {
        let d = s.strip_prefix('-').unwrap_or(s);
        !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit())
    };
    if let Some(n) = text.strip_suffix('i') {
        if !is_int(n) {
            return Err(bad("not an integer"));
        }
        return n
            .parse::<i64>()
            .map(Value::I64)
            .map_err(|_| Error::IntegerOutOfRange {
                metric: metric.to_owned(),
                value: n.to_owned(),
            });
    }
    if let Some(n) = text.strip_suffix('u') {
        if n.starts_with('-') || !is_int(n) {
            return Err(bad("not an unsigned integer"));
        }
        return n
            .parse::<i64>()
            .map(Value::I64)
            .map_err(|_| Error::IntegerOutOfRange {
                metric: metric.to_owned(),
                value: n.to_owned(),
            });
    }
    // Rust's float parser also takes "inf" and "NaN"; line protocol does not.
    if !text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
    {
        return Err(bad("not a number, boolean or string"));
    }
    let v: f64 = text.parse().map_err(|_| bad("not a valid float"))?;
    validate::check_finite(metric, v).map(Value::F64)
}

/// Parses the rest of a quoted string after its opening `"`: `\"` and `\\` are unescaped,
/// other backslashes kept; the closing `"` must end the value.
fn parse_string(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n @ ('"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => return None,
            },
            '"' => return chars.next().is_none().then_some(out),
            c => out.push(c),
        }
    }
    None
}
