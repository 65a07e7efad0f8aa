//! What the ingest core answers: accepted (how many readings, or a replay), or why not.

use crate::gateway::metrics::RejectReason;

/// Why a message was not acknowledged as written.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The client may not publish there.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// The payload is invalid (stored as a dead letter).
    #[error("bad payload: {0}")]
    BadPayload(String),
    /// No topic scheme or mapping matches.
    #[error(
        "unknown topic {0:?}: use edgepipe/v1/{{device_id}}/telemetry or configure a topic mapping"
    )]
    UnknownTopic(String),
    /// Over the device's message rate.
    #[error("device {device} exceeded {limit} messages/s")]
    RateLimited {
        /// Device.
        device: String,
        /// Limit.
        limit: u32,
    },
    /// Payload over the size limit.
    #[error("payload of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Limit.
        limit: usize,
    },
    /// The WAL did not accept it; nothing was acknowledged, the client should retry.
    #[error("server cannot store data right now: {0}")]
    Unavailable(String),
    /// The message would take the device past its limit of distinct metric names.
    #[error(
        "device {device} would have {would_have} distinct metric names, over the limit of {limit} (limits.max_metrics_per_device)"
    )]
    TooManyMetrics {
        /// Device.
        device: String,
        /// Names it would have with this message.
        would_have: usize,
        /// Limit.
        limit: usize,
    },
}

impl Rejection {
    /// The metrics label.
    pub fn reason(&self) -> RejectReason {
        match self {
            Rejection::NotAuthorized(_) => RejectReason::NotAuthorized,
            Rejection::BadPayload(_) => RejectReason::BadPayload,
            Rejection::UnknownTopic(_) => RejectReason::UnknownTopic,
            Rejection::RateLimited { .. } => RejectReason::RateLimited,
            Rejection::TooManyMetrics { .. } => RejectReason::TooManyMetrics,
            Rejection::TooLarge { .. } => RejectReason::TooLarge,
            Rejection::Unavailable(_) => RejectReason::Unavailable,
        }
    }
}

/// A durably accepted message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// Readings written (0 for a duplicate).
    pub readings: usize,
    /// A replay of an agent batch already stored.
    pub duplicate: bool,
}

/// Outcome of an HTTP ingest request.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpOutcome {
    /// Readings durably written.
    pub accepted: usize,
    /// Lines refused (each stored as a dead letter).
    pub rejected: usize,
    /// The refused lines.
    pub errors: Vec<HttpLineError>,
}

/// One refused HTTP line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HttpLineError {
    /// 1-based line (or array element); 0 for the whole body.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}
