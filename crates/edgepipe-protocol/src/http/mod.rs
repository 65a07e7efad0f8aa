//! HTTP ingest bodies (`POST /api/v1/ingest`): JSON, NDJSON and InfluxDB line protocol.
//!
//! Unlike MQTT payloads, an HTTP body is decoded line by line where the format allows it:
//! every bad line (or array element) becomes a [`LineError`] with its raw bytes, for the
//! dead-letter store, and the good ones still decode. The device is the authenticated one;
//! a line that names another device is refused.
//!
//! - [`Format::Json`]: the body is one reading object or an array of them. A body that is not
//!   JSON at all is one error at line 0; in an array, each bad element is an error at
//!   `line = index + 1` and the valid elements are kept.
//! - [`Format::Ndjson`]: one reading object (or array) per line; blank lines are skipped.
//! - [`Format::LineProtocol`]: see [`line_protocol`](self#line-protocol) below.
//!
//! Across the whole body at most [`Limits::max_readings_per_message`] readings are accepted;
//! lines beyond it are reported as errors, not dropped.
//!
//! # Line protocol
//!
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, escaping as in
//! InfluxDB: in the measurement `\,` and `\ `; in tag keys, tag values and field keys `\,`,
//! `\=` and `\ `; in string field values `\"` and `\\`. Field values: float (`1.5`, `-2e3`,
//! `1`), integer (`2i`), unsigned (`3u`, must fit `i64`), string (`"s"`), boolean (`t`, `T`,
//! `true`, `True`, `TRUE`, `f`, `F`, `false`, `False`, `FALSE`). Lines starting with `#` and
//! blank lines are skipped.
//!
//! Each field becomes one reading of metric `{measurement}.{field}`, except the field `value`,
//! whose metric is the measurement itself (`temp value=21.5` is metric `temp`). A `device_id`
//! or `device` tag must equal the authenticated device. **All other tags are ignored**: a
//! reading's identity is (device, metric, ts), so series that differ only in other tags would
//! overwrite each other; encode such distinctions in the measurement or field name. The
//! timestamp is in [`Precision`] units (default nanoseconds), truncated towards minus infinity
//! to milliseconds; without one, the reading gets server time ([`TsSource::Server`]).
//!
//! [`TsSource::Server`]: edgepipe_types::TsSource::Server

mod line_protocol;
#[cfg(test)]
mod tests;

use edgepipe_types::{DeviceId, Reading};
use serde_json::value::RawValue;

use crate::{Error, Limits, Result, json};

/// Body format, from the request's `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `application/json` (also when no content type is sent).
    #[default]
    Json,
    /// `application/x-ndjson`, `application/ndjson` or `application/jsonl`.
    Ndjson,
    /// `text/plain`: InfluxDB line protocol.
    LineProtocol,
}

impl Format {
    /// Maps a `Content-Type` header value (parameters such as `; charset=utf-8` are ignored,
    /// case-insensitive) to a format; `None` means JSON. Anything else is
    /// [`Error::UnknownContentType`] naming it.
    pub fn from_content_type(ct: Option<&str>) -> Result<Format, Error> {
        let Some(ct) = ct else {
            return Ok(Format::Json);
        };
        let essence = ct.split(';').next().unwrap_or_default().trim();
        let lower = essence.to_ascii_lowercase();
        match lower.as_str() {
            "application/json" => Ok(Format::Json),
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                Ok(Format::Ndjson)
            }
            "text/plain" => Ok(Format::LineProtocol),
            _ => Err(Error::UnknownContentType {
                content_type: ct.to_owned(),
            }),
        }
    }
}

/// Unit of line-protocol timestamps (`?precision=`), default nanoseconds as in InfluxDB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Nanoseconds.
    #[default]
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
}

impl Precision {
    /// Parses `ns`, `us`, `ms` or `s` (also InfluxDB 1.x's `n` and `u`).
    pub fn parse(s: &str) -> Result<Precision> {
        match s {
            "ns" | "n" => Ok(Precision::Ns),
            "us" | "u" | "µs" => Ok(Precision::Us),
            "ms" => Ok(Precision::Ms),
            "s" => Ok(Precision::S),
            _ => Err(Error::UnknownPrecision {
                value: s.to_owned(),
            }),
        }
    }

    /// Converts a timestamp in this unit to milliseconds (rounding down); `None` on overflow.
    pub fn to_ms(self, ts: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(ts.div_euclid(1_000_000)),
            Precision::Us => Some(ts.div_euclid(1_000)),
            Precision::Ms => Some(ts),
            Precision::S => ts.checked_mul(1_000),
        }
    }
}

/// One refused line (or array element) of an HTTP body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number (NDJSON, line protocol) or array element index + 1 (JSON); 0 when
    /// the whole JSON body was refused.
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// The refused bytes, as sent (the whole body for line 0).
    pub raw: Vec<u8>,
}

/// What an HTTP body decoded to.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HttpDecoded {
    /// Readings from every good line, in body order.
    pub readings: Vec<Reading>,
    /// One entry per refused line, in body order.
    pub errors: Vec<LineError>,
}

impl HttpDecoded {
    fn fail(&mut self, line: usize, err: &Error, raw: &[u8]) {
        self.errors.push(LineError {
            line,
            message: err.to_string(),
            raw: raw.to_vec(),
        });
    }
}

/// Decodes an HTTP ingest body from `device`; never fails as a whole, see [`HttpDecoded`].
/// `precision` applies to line protocol only.
pub fn decode_body(
    format: Format,
    body: &[u8],
    device: &DeviceId,
    now_ms: i64,
    limits: &Limits,
    precision: Precision,
) -> HttpDecoded {
    let mut out = HttpDecoded::default();
    match format {
        Format::Json => decode_json(body, device, now_ms, limits, &mut out),
        Format::Ndjson => {
            for (line, raw) in lines(body) {
                if raw.trim_ascii().is_empty() {
                    continue;
                }
                let already = out.readings.len();
                match json::decode_bytes(raw, now_ms, limits, Some(device), already) {
                    Ok(rs) => out.readings.extend(rs),
                    Err(e) => out.fail(line, &e, raw),
                }
            }
        }
        Format::LineProtocol => {
            for (line, raw) in lines(body) {
                let already = out.readings.len();
                match line_protocol::parse_line(raw, device, now_ms, limits, precision, already) {
                    Ok(rs) => out.readings.extend(rs),
                    Err(e) => out.fail(line, &e, raw),
                }
            }
        }
    }
    out
}

/// Splits a body into `(1-based line number, line without its \n or \r\n)`.
fn lines(body: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let trailing_newline = body.last() == Some(&b'\n');
    let mut parts: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    if trailing_newline || body.is_empty() {
        parts.pop();
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}

fn decode_json(
    body: &[u8],
    device: &DeviceId,
    now_ms: i64,
    limits: &Limits,
    out: &mut HttpDecoded,
) {
    let first = json::first_non_ws(body);
    if first != Some(b'[') {
        let result = match first {
            None => Err(Error::EmptyPayload),
            Some(_) => json::decode_bytes(body, now_ms, limits, Some(device), 0),
        };
        match result {
            Ok(rs) => out.readings = rs,
            Err(e) => out.fail(0, &e, body),
        }
        return;
    }
    let elements: Vec<&RawValue> = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return out.fail(0, &Error::Json(e), body),
    };
    if elements.is_empty() {
        return out.fail(0, &Error::NoReadings { what: "array" }, body);
    }
    for (index, element) in elements.into_iter().enumerate() {
        let raw = element.get().as_bytes();
        let already = out.readings.len();
        let result = json::parse(raw).and_then(|node| match node {
            json::Node::Obj(_) => {
                json::decode_document(node, now_ms, limits, Some(device), already)
            }
            other => Err(Error::NotAnObject {
                found: other.kind(),
            }),
        });
        match result {
            Ok(rs) => out.readings.extend(rs),
            Err(e) => out.fail(index + 1, &e, raw),
        }
    }
}
