//! Shared vocabulary of edgepipe: what a reading is, who sent it, and how a batch of readings
//! travels through the write-ahead log. No I/O lives here.
//!
//! A reading's identity is `(device_id, metric, ts)` (architecture principle 3): writing the same
//! reading twice is idempotent downstream. [`IngestRecord`] is the unit the gateway appends to the
//! WAL: one accepted message (MQTT publish, HTTP line batch, agent envelope) with every reading it
//! carried, encoded by [`IngestRecord::encode`] in a versioned binary form.

pub mod clock;
pub mod config;
pub mod duration_serde;

pub use clock::{Clock, SharedClock, SystemClock};

use std::fmt;

use serde::{Deserialize, Serialize};

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from validating identifiers and decoding records.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    /// An identifier was empty, too long, or held a character outside `[A-Za-z0-9_.:-]`.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidId {
        /// What kind of identifier ("device id", "metric").
        what: &'static str,
        /// The offending value (truncated to 80 characters).
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A stored record did not decode.
    #[error("record does not decode: {0}")]
    Decode(String),
    /// A stored record has a format version this build does not know.
    #[error("record format version {found} is not supported (this build reads up to {supported})")]
    UnsupportedVersion {
        /// Version byte found.
        found: u8,
        /// Highest version this build reads.
        supported: u8,
    },
}

/// Longest device id or metric name accepted.
pub const MAX_ID_LEN: usize = 128;

fn check_id(what: &'static str, s: &str) -> Result<()> {
    let fail = |reason| {
        Err(Error::InvalidId {
            what,
            value: s.chars().take(80).collect(),
            reason,
        })
    };
    if s.is_empty() {
        return fail("must not be empty");
    }
    if s.len() > MAX_ID_LEN {
        return fail("longer than 128 bytes");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return fail("only ASCII letters, digits and _ - . : are allowed");
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self> {
                let s = s.into();
                check_id($what, &s)?;
                Ok(Self(s))
            }
            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = Error;
            fn try_from(s: String) -> Result<Self> {
                Self::new(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// A device's identity: `[A-Za-z0-9_.:-]{1,128}`. Also its MQTT username.
    DeviceId,
    "device id"
);
id_type!(
    /// A metric name within a device: `[A-Za-z0-9_.:-]{1,128}`.
    Metric,
    "metric"
);

/// Milliseconds since the Unix epoch (UTC), event time.
pub type TimestampMs = i64;

/// A reading's value, kept without loss: integers stay integers, strings stay strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// A finite floating-point number (NaN and infinities are refused at decode).
    F64(f64),
    /// A signed 64-bit integer.
    I64(i64),
    /// A boolean.
    Bool(bool),
    /// A string (bounded by the protocol's limits).
    Str(String),
}

impl Value {
    /// The value as a float where that makes sense (numbers and booleans).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::F64(v) => Some(*v),
            Value::I64(v) => Some(*v as f64),
            Value::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
            Value::Str(_) => None,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::F64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(v) => write!(f, "{v:?}"),
        }
    }
}

/// Where a reading's timestamp came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TsSource {
    /// The device sent it.
    #[default]
    Device,
    /// The device sent none; the server stamped its receive time.
    Server,
}

/// One reading of one metric of one device at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Metric name.
    pub metric: Metric,
    /// Event time in ms since the epoch.
    pub ts: TimestampMs,
    /// The value.
    pub value: Value,
    /// Whether `ts` came from the device or the server.
    pub ts_source: TsSource,
}

/// How a message reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    /// MQTT 3.1.1.
    Mqtt311,
    /// MQTT 5.
    Mqtt5,
    /// HTTP `POST /api/v1/ingest`.
    Http,
    /// Replayed from another system (backfill).
    Replay,
}

/// Identity of an agent batch: `(source, stream, seq)`; replays of the same triple are duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BatchOrigin {
    /// The sending agent instance.
    pub source: String,
    /// The agent's stream (one sequence space per stream).
    pub stream: String,
    /// Monotonic per-stream sequence number.
    pub seq: u64,
}

/// One accepted message with all its readings: the unit appended to the server's WAL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestRecord {
    /// The authenticated device that sent it.
    pub device_id: DeviceId,
    /// Server receive time, ms since the epoch.
    pub received_at: TimestampMs,
    /// Transport it arrived on.
    pub transport: Transport,
    /// Agent batch identity, when it came in an agent envelope.
    pub origin: Option<BatchOrigin>,
    /// Extra labels from topic mappings (e.g. `line` from `factory/{line}/...`).
    pub tags: Vec<(String, String)>,
    /// The readings.
    pub readings: Vec<Reading>,
}

/// Format version written as the first byte of an encoded [`IngestRecord`].
pub const INGEST_RECORD_VERSION: u8 = 1;

/// The postcard body of an encoded record, after checking its version byte.
fn record_body(bytes: &[u8]) -> Result<&[u8]> {
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| Error::Decode("empty record".into()))?;
    if version != INGEST_RECORD_VERSION {
        return Err(Error::UnsupportedVersion {
            found: version,
            supported: INGEST_RECORD_VERSION,
        });
    }
    Ok(body)
}

impl IngestRecord {
    /// Encodes as `version byte | postcard body`.
    pub fn encode(&self) -> Vec<u8> {
        let out = vec![INGEST_RECORD_VERSION];
        // postcard only fails on writer errors or unsupported serde shapes; neither applies to
        // a Vec writer and these plain types.
        match postcard::to_extend(self, out) {
            Ok(v) => v,
            Err(_) => vec![INGEST_RECORD_VERSION],
        }
    }

    /// Decodes what [`encode`](Self::encode) wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let body = record_body(bytes)?;
        postcard::from_bytes(body).map_err(|e| Error::Decode(e.to_string()))
    }
}

/// A borrowed view of an encoded [`IngestRecord`]: the same fields with strings pointing into
/// the encoded bytes, for readers that only copy them onwards (the lake writer) and should not
/// allocate per reading. Decoding checks the same things [`IngestRecord::decode`] does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestRecordView<'a> {
    /// The authenticated device that sent it.
    #[serde(borrow)]
    pub device_id: &'a str,
    /// Server receive time, ms since the epoch.
    pub received_at: TimestampMs,
    /// Transport it arrived on.
    pub transport: Transport,
    /// Agent batch identity, when it came in an agent envelope.
    #[serde(borrow)]
    pub origin: Option<BatchOriginView<'a>>,
    /// Extra labels from topic mappings.
    #[serde(borrow)]
    pub tags: Vec<(&'a str, &'a str)>,
    /// The readings.
    #[serde(borrow)]
    pub readings: Vec<ReadingView<'a>>,
}

/// Borrowed [`BatchOrigin`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchOriginView<'a> {
    /// The sending agent instance.
    pub source: &'a str,
    /// The agent's stream.
    pub stream: &'a str,
    /// Per-stream sequence number.
    pub seq: u64,
}

/// Borrowed [`Reading`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadingView<'a> {
    /// Metric name.
    pub metric: &'a str,
    /// Event time in ms since the epoch.
    pub ts: TimestampMs,
    /// The value.
    #[serde(borrow)]
    pub value: ValueView<'a>,
    /// Whether `ts` came from the device or the server.
    pub ts_source: TsSource,
}

/// Borrowed [`Value`] (variants in the same order: the encoding is positional).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ValueView<'a> {
    /// A finite floating-point number.
    F64(f64),
    /// A signed 64-bit integer.
    I64(i64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(&'a str),
}

impl<'a> IngestRecordView<'a> {
    /// Decodes what [`IngestRecord::encode`] wrote, borrowing strings from `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Result<Self> {
        let body = record_body(bytes)?;
        let view: Self = postcard::from_bytes(body).map_err(|e| Error::Decode(e.to_string()))?;
        check_id("device id", view.device_id)?;
        for r in &view.readings {
            check_id("metric", r.metric)?;
        }
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(DeviceId::new("dev-1").is_ok());
        assert!(DeviceId::new("").is_err());
        assert!(DeviceId::new("a/b").is_err());
        assert!(Metric::new("x".repeat(129)).is_err());
    }

    #[test]
    fn record_round_trips() -> Result<()> {
        let rec = IngestRecord {
            device_id: DeviceId::new("d1")?,
            received_at: 1_700_000_000_000,
            transport: Transport::Mqtt5,
            origin: Some(BatchOrigin {
                source: "gw".into(),
                stream: "main".into(),
                seq: 7,
            }),
            tags: vec![("line".into(), "3".into())],
            readings: vec![
                Reading {
                    metric: Metric::new("temp")?,
                    ts: 1,
                    value: Value::F64(21.5),
                    ts_source: TsSource::Device,
                },
                Reading {
                    metric: Metric::new("count")?,
                    ts: 2,
                    value: Value::I64(i64::MAX),
                    ts_source: TsSource::Server,
                },
                Reading {
                    metric: Metric::new("state")?,
                    ts: 3,
                    value: Value::Str("ok".into()),
                    ts_source: TsSource::Device,
                },
            ],
        };
        let bytes = rec.encode();
        assert_eq!(IngestRecord::decode(&bytes)?, rec);
        let view = IngestRecordView::decode(&bytes)?;
        assert_eq!(view.device_id, "d1");
        assert_eq!(view.received_at, rec.received_at);
        assert_eq!(view.transport, rec.transport);
        assert_eq!(
            view.origin,
            Some(BatchOriginView {
                source: "gw",
                stream: "main",
                seq: 7
            })
        );
        assert_eq!(view.tags, vec![("line", "3")]);
        let expect = [
            ("temp", 1, ValueView::F64(21.5), TsSource::Device),
            ("count", 2, ValueView::I64(i64::MAX), TsSource::Server),
            ("state", 3, ValueView::Str("ok"), TsSource::Device),
        ];
        assert_eq!(view.readings.len(), expect.len());
        for (r, (m, ts, v, src)) in view.readings.iter().zip(expect) {
            assert_eq!((r.metric, r.ts, &r.value, r.ts_source), (m, ts, &v, src));
        }
        assert!(IngestRecordView::decode(&[9, 1, 2]).is_err());
        assert!(IngestRecordView::decode(&[]).is_err());
        assert!(IngestRecordView::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(IngestRecord::decode(&[9, 1, 2]).is_err());
        assert!(IngestRecord::decode(&[]).is_err());
        Ok(())
    }

    #[test]
    fn bad_device_id_in_record_is_refused() {
        let mut bytes = vec![INGEST_RECORD_VERSION];
        bytes.extend(postcard::to_stdvec(&"a/b").unwrap_or_default());
        assert!(IngestRecord::decode(&bytes).is_err());
        assert!(IngestRecordView::decode(&bytes).is_err());
        // Well-formed records whose ids break the rules: both decoders refuse them.
        for (dev, metric) in [("a/b", "temp"), ("d1", "bad metric"), ("", "temp")] {
            let view = IngestRecordView {
                device_id: dev,
                received_at: 1,
                transport: Transport::Http,
                origin: None,
                tags: Vec::new(),
                readings: vec![ReadingView {
                    metric,
                    ts: 1,
                    value: ValueView::Bool(true),
                    ts_source: TsSource::Device,
                }],
            };
            let mut bytes = vec![INGEST_RECORD_VERSION];
            bytes.extend(postcard::to_stdvec(&view).unwrap_or_default());
            assert!(IngestRecord::decode(&bytes).is_err(), "{dev} {metric}");
            assert!(IngestRecordView::decode(&bytes).is_err(), "{dev} {metric}");
        }
        let ok = IngestRecordView {
            device_id: "d1",
            received_at: 1,
            transport: Transport::Http,
            origin: None,
            tags: Vec::new(),
            readings: Vec::new(),
        };
        let mut bytes = vec![INGEST_RECORD_VERSION];
        bytes.extend(postcard::to_stdvec(&ok).unwrap_or_default());
        assert!(IngestRecord::decode(&bytes).is_ok());
        assert_eq!(IngestRecordView::decode(&bytes), Ok(ok));
    }

    proptest::proptest! {
        /// Bad input never panics either decoder, and both agree on what they accept: the
        /// lake writer (the view) refuses exactly the records the rest of the server refuses.
        #[test]
        fn view_and_owned_decoders_agree_on_any_bytes(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            flips in proptest::collection::vec((0usize..64, proptest::prelude::any::<u8>()), 0..4),
        ) {
            let check = |b: &[u8]| {
                let owned = IngestRecord::decode(b);
                let view = IngestRecordView::decode(b);
                proptest::prop_assert_eq!(owned.is_ok(), view.is_ok(), "{:?}", b);
                if let (Ok(o), Ok(v)) = (owned, view) {
                    proptest::prop_assert_eq!(o.device_id.as_str(), v.device_id);
                    proptest::prop_assert_eq!(o.readings.len(), v.readings.len());
                    for (r, rv) in o.readings.iter().zip(&v.readings) {
                        proptest::prop_assert_eq!(r.metric.as_str(), rv.metric);
                        proptest::prop_assert_eq!(r.ts, rv.ts);
                    }
                }
                Ok(())
            };
            // Arbitrary bytes behind a valid version byte.
            let mut raw = vec![INGEST_RECORD_VERSION];
            raw.extend(&bytes);
            check(&raw)?;
            // A valid record with a few bytes changed.
            let rec = IngestRecord {
                device_id: DeviceId::new("dev-1").map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?,
                received_at: 1_700_000_000_000,
                transport: Transport::Mqtt5,
                origin: None,
                tags: vec![("line".into(), "3".into())],
                readings: vec![Reading {
                    metric: Metric::new("temp").map_err(|e| proptest::test_runner::TestCaseError::fail(e.to_string()))?,
                    ts: 5,
                    value: Value::Str("ok".into()),
                    ts_source: TsSource::Device,
                }],
            };
            let mut enc = rec.encode();
            for (at, v) in &flips {
                let n = enc.len();
                enc[at % n] = *v;
            }
            check(&enc)?;
        }
    }
}
