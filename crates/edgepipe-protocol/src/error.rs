//! The crate's one error type.

use edgepipe_types::DeviceId;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a payload, body line, content type or mapping was refused.
///
/// Every message names what is wrong (metric, field, timestamp, limit) so that it can be shown to
/// the device owner and stored as the dead-letter reason as it is.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The payload is not well-formed JSON (or has a duplicate key).
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// The payload is neither JSON nor a batch envelope.
    #[error(
        "unrecognized payload: expected a JSON object, a JSON array or a batch envelope \
         starting with \"EPB\", found first byte 0x{first_byte:02x}"
    )]
    UnrecognizedPayload {
        /// The first non-whitespace byte.
        first_byte: u8,
    },
    /// The payload is empty (or only whitespace).
    #[error("empty payload")]
    EmptyPayload,
    /// A reading (or an array element) is not a JSON object.
    #[error("a reading must be a JSON object, found {found}")]
    NotAnObject {
        /// JSON kind found instead.
        found: &'static str,
    },
    /// An array of readings failed at one element.
    #[error("reading #{index} (0-based) of the array: {source}")]
    InElement {
        /// 0-based index of the element.
        index: usize,
        /// What was wrong with it.
        #[source]
        source: Box<Error>,
    },
    /// A reading object has a field this protocol does not define (typo protection).
    #[error("unknown field {field:?} in reading (expected \"ts\", \"metrics\", \"device_id\")")]
    UnknownField {
        /// The field name.
        field: String,
    },
    /// A reading object has no `metrics` field.
    #[error("reading has no \"metrics\" field")]
    MissingMetrics,
    /// `metrics` is not an object.
    #[error("\"metrics\" must be an object of metric name to value, found {found}")]
    MetricsNotObject {
        /// JSON kind found instead.
        found: &'static str,
    },
    /// `metrics` is an empty object, or a message carries no reading at all.
    #[error("no readings: {what} is empty")]
    NoReadings {
        /// What was empty ("metrics object", "array", "body").
        what: &'static str,
    },
    /// A metric name is not a valid [`edgepipe_types::Metric`].
    #[error("invalid metric name: {0}")]
    InvalidMetric(#[source] edgepipe_types::Error),
    /// A device id is not a valid [`DeviceId`].
    #[error("invalid device id: {0}")]
    InvalidDeviceId(#[source] edgepipe_types::Error),
    /// A metric's value has a JSON kind that cannot be a reading value.
    #[error(
        "metric {metric:?}: {found} is not a supported value (expected a number, boolean or string)"
    )]
    UnsupportedValue {
        /// The metric.
        metric: String,
        /// JSON kind found ("null", "object", "array").
        found: &'static str,
    },
    /// An integer does not fit in an `i64`.
    #[error("metric {metric:?}: integer {value} does not fit in a signed 64-bit integer")]
    IntegerOutOfRange {
        /// The metric.
        metric: String,
        /// The value as written.
        value: String,
    },
    /// A float is NaN or infinite.
    #[error("metric {metric:?}: value {value} is not a finite number")]
    NonFinite {
        /// The metric.
        metric: String,
        /// The value as text.
        value: String,
    },
    /// A string value (or envelope header string) is longer than the limit.
    #[error("{what}: string of {len} bytes exceeds max_string_len {limit}")]
    StringTooLong {
        /// What the string is (`metric "state"`, `envelope source`).
        what: String,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// `ts` is not an integer number of milliseconds.
    #[error("ts must be an integer number of milliseconds since the Unix epoch, found {found}")]
    TsNotInteger {
        /// What was found, e.g. `float 1.7e12`, `string`.
        found: String,
    },
    /// `ts` is further in the future than the allowed clock skew.
    #[error(
        "ts {ts} is {ahead_ms} ms ahead of server time {now_ms}, more than max_future_skew_ms \
         {limit_ms} (device clock wrong, or not milliseconds?)"
    )]
    TsInFuture {
        /// The reading's timestamp.
        ts: i64,
        /// Server time.
        now_ms: i64,
        /// `ts - now_ms`.
        ahead_ms: i64,
        /// The allowed skew.
        limit_ms: i64,
    },
    /// `ts` is before the earliest accepted time.
    #[error(
        "ts {ts} is before min_ts_ms {min_ts_ms} (device clock unset, or seconds instead of \
         milliseconds?)"
    )]
    TsTooOld {
        /// The reading's timestamp.
        ts: i64,
        /// The limit.
        min_ts_ms: i64,
    },
    /// A message holds more readings than allowed.
    #[error("too many readings: {count} exceeds max_readings_per_message {limit}")]
    TooManyReadings {
        /// Readings counted so far (at least this many).
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// `device_id` is not a string.
    #[error("\"device_id\" must be a string, found {found}")]
    DeviceIdNotString {
        /// JSON kind found instead.
        found: &'static str,
    },
    /// The message names a device other than the authenticated one.
    #[error("not authorized for device {found:?} (authenticated as {expected:?})")]
    DeviceMismatch {
        /// The authenticated device.
        expected: DeviceId,
        /// The device the message names.
        found: String,
    },
    /// The same metric appears twice in one reading (line protocol, topic mapping).
    #[error("metric {metric:?} appears more than once in one reading")]
    DuplicateMetric {
        /// The metric.
        metric: String,
    },

    // ---- batch envelope ----
    /// The envelope does not start with `EPB`.
    #[error("batch envelope: bad magic {found:02x?}, expected \"EPB\"")]
    BadMagic {
        /// The bytes found.
        found: Vec<u8>,
    },
    /// The envelope's version byte is not known to this build.
    #[error(
        "batch envelope: version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedEnvelopeVersion {
        /// Version found.
        found: u8,
        /// Version this build reads.
        supported: u8,
    },
    /// The envelope ends before a part it announces.
    #[error("batch envelope truncated in {part}: needs {needed} bytes, {available} available")]
    Truncated {
        /// Which part ("preamble", "header", "lz4 size prefix").
        part: &'static str,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The envelope header JSON is malformed or has unknown fields.
    #[error("batch envelope header: {0}")]
    EnvelopeHeader(#[source] serde_json::Error),
    /// The header field `source` or `stream` is empty.
    #[error("batch envelope header: {field:?} must not be empty")]
    EmptyOriginField {
        /// The field.
        field: &'static str,
    },
    /// The header names a compression this build does not know.
    #[error("batch envelope: unknown compression {found:?} (expected \"none\" or \"lz4\")")]
    UnknownCompression {
        /// The value found.
        found: String,
    },
    /// The envelope header is longer than the 16-bit length field can say.
    #[error("batch envelope header of {len} bytes exceeds the 65535-byte limit")]
    HeaderTooLong {
        /// Header length.
        len: usize,
    },
    /// The lz4 body announces, or the zstd body decodes to, a size above the cap.
    #[error("batch envelope: decompressed size {size} exceeds the limit of {limit} bytes")]
    DecompressedTooLarge {
        /// The announced size.
        size: usize,
        /// The cap.
        limit: usize,
    },
    /// The lz4 or zstd body does not decompress.
    #[error("batch envelope: body does not decompress: {reason}")]
    Decompress {
        /// The decoder's reason.
        reason: String,
    },
    /// The encoder could not compress a body (zstd reports allocation failures this way).
    #[error("batch envelope: body does not compress: {reason}")]
    Compress {
        /// The encoder's reason.
        reason: String,
    },

    // ---- HTTP ----
    /// The HTTP content type is not one this endpoint reads.
    #[error(
        "unsupported content type {content_type:?} (expected application/json, \
         application/x-ndjson, application/jsonl or text/plain for line protocol)"
    )]
    UnknownContentType {
        /// The content type as sent.
        content_type: String,
    },
    /// The line-protocol precision is not `ns`, `us`, `ms` or `s`.
    #[error("unknown precision {value:?} (expected ns, us, ms or s)")]
    UnknownPrecision {
        /// The value as sent.
        value: String,
    },
    /// A line-protocol line does not parse.
    #[error("line protocol: {reason}")]
    LineSyntax {
        /// What is wrong, naming the part of the line.
        reason: String,
    },
    /// A line-protocol field value does not parse.
    #[error("line protocol: field {field:?}: invalid value {value:?}: {reason}")]
    FieldValue {
        /// The field key.
        field: String,
        /// The value as written.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A line-protocol timestamp is not an integer or out of range.
    #[error("line protocol: invalid timestamp {value:?}: {reason}")]
    LineTimestamp {
        /// The timestamp as written.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The body is not valid UTF-8 where text is required.
    #[error("{what} is not valid UTF-8")]
    NotUtf8 {
        /// What was being read.
        what: &'static str,
    },

    // ---- topic mappings ----
    /// A topic-mapping pattern is not valid.
    #[error("topic mapping pattern {pattern:?}: {reason}")]
    InvalidPattern {
        /// The pattern.
        pattern: String,
        /// Why it was refused.
        reason: String,
    },
    /// A JSON pointer in a topic mapping is not valid.
    #[error(
        "topic mapping: {what} {pointer:?} is not a JSON pointer (must be empty or start with '/')"
    )]
    InvalidPointer {
        /// Which setting (`metrics.temp`, `ts_pointer`).
        what: String,
        /// The pointer.
        pointer: String,
    },
    /// A raw-payload mapping has no way to name the metric.
    #[error(
        "topic mapping pattern {pattern:?}: payload \"raw\" needs a {{metric}} placeholder in the \
         pattern or a `metric` setting"
    )]
    RawNeedsMetric {
        /// The pattern.
        pattern: String,
    },
    /// A mapped JSON payload had none of the configured metric pointers.
    #[error("topic mapping: payload has none of the configured metric pointers ({pointers})")]
    NoMappedMetrics {
        /// The configured pointers, comma-separated.
        pointers: String,
    },
    /// A raw payload is not a number, boolean or string.
    #[error("raw payload for metric {metric:?}: {reason}")]
    RawPayload {
        /// The metric.
        metric: String,
        /// Why it was refused.
        reason: String,
    },
}

impl Error {
    /// Wraps this error as having happened at array element `index`.
    pub(crate) fn at_element(self, index: usize) -> Error {
        Error::InElement {
            index,
            source: Box::new(self),
        }
    }
}
