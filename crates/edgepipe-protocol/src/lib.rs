//! Wire formats of edgepipe: the topic scheme, the payloads devices and agents send, and their
//! decoding into validated [`Reading`]s.
//!
//! This crate sits at the very front of the data path, between the gateway (MQTT, HTTP,
//! external broker) and the WAL: the gateway hands it raw bytes plus server time, and gets
//! back readings that already hold every invariant downstream relies on (valid metric names,
//! finite numbers, bounded strings, timestamps within [`Limits`]) or an [`Error`] that says
//! exactly what was wrong, fit to be stored as a dead-letter reason. It owns:
//!
//! - the device topic scheme `edgepipe/v1/{device_id}/telemetry` ([`telemetry_topic`],
//!   [`parse_telemetry_topic`], [`TELEMETRY_FILTER`]);
//! - the JSON reading format, one object or an array ([`decode_payload`], [`decode_payload_for`]):
//!   `{"ts": 1700000000123, "metrics": {"temp": 21.5, "on": true, "state": "ok", "count": 5}}`
//!   with optional `ts` (else server time, [`TsSource::Server`]) and optional `device_id`;
//! - the agent's binary batch envelope with `(source, stream, seq)` and optional lz4
//!   ([`envelope`]);
//! - HTTP ingest bodies: JSON, NDJSON and InfluxDB line protocol, with per-line errors
//!   ([`http`]);
//! - topic mappings that turn foreign fleets' topics and payloads into readings ([`mapping`]).
//!
//! No I/O and no clock: callers pass `now_ms`. Nothing here panics on input; the decoders are
//! property-tested and fuzzed (`fuzz/` at the repository root) on arbitrary bytes.

pub mod envelope;
mod error;
mod fastjson;
pub mod http;
mod json;
pub mod mapping;
mod validate;

#[cfg(doc)]
use edgepipe_types::TsSource;
use edgepipe_types::{BatchOrigin, DeviceId, Reading};

pub use error::{Error, Result};

/// Bounds every decoder enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Most readings one message (MQTT payload, envelope, HTTP request) may carry.
    pub max_readings_per_message: usize,
    /// Longest string value, in bytes (also bounds envelope `source`/`stream`).
    pub max_string_len: usize,
    /// How far ahead of server time a device timestamp may be, in ms.
    pub max_future_skew_ms: i64,
    /// Earliest accepted timestamp, ms since the epoch (catches unset clocks and seconds).
    pub min_ts_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_readings_per_message: 10_000,
            max_string_len: 1024,
            max_future_skew_ms: 300_000,
            // 2000-01-01T00:00:00Z
            min_ts_ms: 946_684_800_000,
        }
    }
}

/// What one message decoded to.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The agent batch identity, for batch envelopes; `None` for plain JSON.
    pub origin: Option<BatchOrigin>,
    /// The readings, in the order the message carried them.
    pub readings: Vec<Reading>,
}

/// Topic prefix of the device topic scheme.
pub const TOPIC_PREFIX: &str = "edgepipe/v1/";

/// `edgepipe/v1/{device_id}/telemetry` -> `Some(device_id)`; anything else `None`.
///
/// The device id is returned as written (non-empty, without `/`); the caller validates it and
/// compares it with the authenticated identity.
pub fn parse_telemetry_topic(topic: &str) -> Option<&str> {
    let id = topic
        .strip_prefix(TOPIC_PREFIX)?
        .strip_suffix("/telemetry")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// The telemetry topic of `device_id`: `edgepipe/v1/{device_id}/telemetry`, which
/// [`parse_telemetry_topic`] reads back. Devices, the simulator and the agent's uplink publish
/// to it.
pub fn telemetry_topic(device_id: &str) -> String {
    format!("{TOPIC_PREFIX}{device_id}/telemetry")
}

/// The subscription filter for every device's telemetry topic: `edgepipe/v1/+/telemetry`.
pub const TELEMETRY_FILTER: &str = "edgepipe/v1/+/telemetry";

/// Decodes an MQTT telemetry payload, detecting its format: a JSON reading object, a JSON
/// array of reading objects, or the binary agent batch envelope (starts with `EPB`).
///
/// All or nothing: one bad reading fails the message. A `device_id` field in the JSON is not
/// checked here; use [`decode_payload_for`] when the sender is known.
pub fn decode_payload(payload: &[u8], now_ms: i64, limits: &Limits) -> Result<Decoded> {
    decode_inner(payload, now_ms, limits, None)
}

/// Like [`decode_payload`], and also refuses a message whose `device_id` field names a device
/// other than `device` ([`Error::DeviceMismatch`]).
pub fn decode_payload_for(
    device: &DeviceId,
    payload: &[u8],
    now_ms: i64,
    limits: &Limits,
) -> Result<Decoded> {
    decode_inner(payload, now_ms, limits, Some(device))
}

fn decode_inner(
    payload: &[u8],
    now_ms: i64,
    limits: &Limits,
    device: Option<&DeviceId>,
) -> Result<Decoded> {
    if payload.starts_with(envelope::MAGIC) {
        return envelope::decode_inner(payload, now_ms, limits, device);
    }
    match json::first_non_ws(payload) {
        None => Err(Error::EmptyPayload),
        Some(b'{' | b'[') => {
            let readings = json::decode_bytes(payload, now_ms, limits, device, 0)?;
            Ok(Decoded {
                origin: None,
                readings,
            })
        }
        Some(first_byte) => Err(Error::UnrecognizedPayload { first_byte }),
    }
}

/// Writes `readings` in the JSON reading format, as an array of reading objects (consecutive
/// readings sharing a timestamp share an object). Every object carries `ts`, so the readings
/// decode with [`TsSource::Device`]. This is also the batch envelope's body.
pub fn encode_json(readings: &[Reading]) -> Vec<u8> {
    json::write_readings(readings)
}

#[cfg(test)]
mod tests;
