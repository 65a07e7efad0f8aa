//! Every counter the server keeps, in one place, rendered in the Prometheus text format at
//! `/metrics`. Names follow `*_received_total`, `*_written_total`, `*_rejected_total{reason}`;
//! device ids are never labels.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a message was refused (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// Payload did not decode or validate.
    BadPayload,
    /// Topic or device not allowed for this client.
    NotAuthorized,
    /// Topic matches no scheme or mapping.
    UnknownTopic,
    /// Device exceeded its message rate.
    RateLimited,
    /// Payload larger than the limit.
    TooLarge,
    /// The WAL could not take it (full or failed); not acknowledged.
    Unavailable,
    /// QoS 2 is not supported.
    QosNotSupported,
    /// The device would go past `limits.max_metrics_per_device` distinct metric names.
    TooManyMetrics,
}

impl RejectReason {
    /// All reasons, for rendering.
    pub const ALL: [RejectReason; 8] = [
        RejectReason::BadPayload,
        RejectReason::NotAuthorized,
        RejectReason::UnknownTopic,
        RejectReason::RateLimited,
        RejectReason::TooLarge,
        RejectReason::Unavailable,
        RejectReason::QosNotSupported,
        RejectReason::TooManyMetrics,
    ];

    /// Label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadPayload => "bad_payload",
            RejectReason::NotAuthorized => "not_authorized",
            RejectReason::UnknownTopic => "unknown_topic",
            RejectReason::RateLimited => "rate_limited",
            RejectReason::TooLarge => "too_large",
            RejectReason::Unavailable => "unavailable",
            RejectReason::QosNotSupported => "qos_not_supported",
            RejectReason::TooManyMetrics => "too_many_metrics",
        }
    }
}

/// Why a device certificate that passed the handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRefusal {
    /// Revoked by `edgepipe devices revoke-cert`.
    Revoked = 0,
    /// Its device is not registered (and `tls.register_by_certificate` is off).
    Unregistered = 1,
    /// Its device is disabled.
    Disabled = 2,
    /// It names no device (no CN or SAN URI, as `tls.device_id_from` asks).
    NoDeviceId = 3,
    /// The username names another device than the certificate.
    OtherDevice = 4,
    /// No certificate where `tls.client_auth = "required"` (a token was offered).
    NoClientCertificate = 5,
}

impl CertRefusal {
    /// Every reason, in counter order.
    pub const ALL: [CertRefusal; 6] = [
        Self::Revoked,
        Self::Unregistered,
        Self::Disabled,
        Self::NoDeviceId,
        Self::OtherDevice,
        Self::NoClientCertificate,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Unregistered => "unregistered",
            Self::Disabled => "disabled",
            Self::NoDeviceId => "no_device_id",
            Self::OtherDevice => "other_device",
            Self::NoClientCertificate => "no_client_certificate",
        }
    }
}

/// Server counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Messages received (MQTT publishes, HTTP requests' lines).
    pub messages_received: AtomicU64,
    /// Messages appended to the WAL.
    pub messages_written: AtomicU64,
    /// Readings appended to the WAL.
    pub readings_written: AtomicU64,
    /// Agent batches recognised as replays and acknowledged without writing.
    pub duplicates: AtomicU64,
    rejected: [AtomicU64; 8],
    /// Dead letters stored.
    pub deadletters_written: AtomicU64,
    /// Dead letters that could not be stored (the WAL for them failed).
    pub deadletters_failed: AtomicU64,
    /// MQTT connections open now.
    pub mqtt_connections: AtomicU64,
    /// MQTT connections accepted since start.
    pub mqtt_connects: AtomicU64,
    /// Authentication failures (MQTT and HTTP).
    pub auth_failures: AtomicU64,
    /// Connections refused by the connection limit.
    pub connections_refused: AtomicU64,
    /// Will messages ingested after abnormal disconnects.
    pub wills_published: AtomicU64,
    /// HTTP ingest requests.
    pub http_requests: AtomicU64,
    /// Submission batches handed to the WAL by MQTT workers (see `submit`).
    pub mqtt_submit_batches: AtomicU64,
    /// WAL appends that went through those batches.
    pub mqtt_batched_appends: AtomicU64,
    /// Device certificates refused after the handshake, by [`CertRefusal`].
    cert_refusals: [AtomicU64; 6],
    /// Open connections closed because their device was disabled or certificate revoked.
    pub connections_closed_by_revocation: AtomicU64,
    /// Authentication attempts refused because their address was backing off after failures.
    pub auth_blocked: AtomicU64,
    /// The TLS listeners' counters (handshake failures, certificate reloads).
    pub tls: std::sync::Arc<crate::gateway::tls::TlsMetrics>,
}

impl Metrics {
    /// Counts a refused device certificate.
    pub fn cert_refusal(&self, why: CertRefusal) {
        self.cert_refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one rejection.
    pub fn reject(&self, reason: RejectReason) {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Rejections so far for `reason`.
    pub fn rejected(&self, reason: RejectReason) -> u64 {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.rejected[i].load(Ordering::Relaxed)
    }

    /// Prometheus text exposition, with WAL and dead-letter gauges appended by the caller.
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let c = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        };
        c(
            &mut out,
            "edgepipe_ingest_messages_received_total",
            "Messages received from devices.",
            &self.messages_received,
        );
        c(
            &mut out,
            "edgepipe_ingest_messages_written_total",
            "Messages durably appended to the WAL.",
            &self.messages_written,
        );
        c(
            &mut out,
            "edgepipe_ingest_readings_written_total",
            "Readings durably appended to the WAL.",
            &self.readings_written,
        );
        c(
            &mut out,
            "edgepipe_ingest_duplicates_total",
            "Replayed agent batches acknowledged without writing.",
            &self.duplicates,
        );
        let _ = writeln!(
            out,
            "# HELP edgepipe_ingest_messages_rejected_total Messages refused, by reason.\n# TYPE edgepipe_ingest_messages_rejected_total counter"
        );
        for r in RejectReason::ALL {
            let _ = writeln!(
                out,
                "edgepipe_ingest_messages_rejected_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.rejected(r)
            );
        }
        c(
            &mut out,
            "edgepipe_deadletters_written_total",
            "Dead letters stored.",
            &self.deadletters_written,
        );
        c(
            &mut out,
            "edgepipe_deadletters_failed_total",
            "Dead letters that could not be stored.",
            &self.deadletters_failed,
        );
        c(
            &mut out,
            "edgepipe_mqtt_connects_total",
            "MQTT connections accepted.",
            &self.mqtt_connects,
        );
        c(
            &mut out,
            "edgepipe_auth_failures_total",
            "Authentication failures.",
            &self.auth_failures,
        );
        c(
            &mut out,
            "edgepipe_mqtt_connections_refused_total",
            "Connections refused by the connection limit.",
            &self.connections_refused,
        );
        c(
            &mut out,
            "edgepipe_mqtt_wills_published_total",
            "Will messages ingested after abnormal disconnects.",
            &self.wills_published,
        );
        c(
            &mut out,
            "edgepipe_http_ingest_requests_total",
            "HTTP ingest requests.",
            &self.http_requests,
        );
        c(
            &mut out,
            "edgepipe_mqtt_submit_batches_total",
            "Batches of WAL appends handed over together by MQTT worker threads.",
            &self.mqtt_submit_batches,
        );
        c(
            &mut out,
            "edgepipe_mqtt_batched_appends_total",
            "WAL appends handed over in those batches.",
            &self.mqtt_batched_appends,
        );
        let _ = writeln!(
            out,
            "# HELP edgepipe_mqtt_connections MQTT connections open.\n# TYPE edgepipe_mqtt_connections gauge\nedgepipe_mqtt_connections {}",
            self.mqtt_connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP edgepipe_device_cert_refusals_total Valid device certificates refused at CONNECT or request, by reason.\n# TYPE edgepipe_device_cert_refusals_total counter"
        );
        for r in CertRefusal::ALL {
            let _ = writeln!(
                out,
                "edgepipe_device_cert_refusals_total{{reason=\"{}\"}} {}",
                r.as_str(),
                self.cert_refusals[r as usize].load(Ordering::Relaxed)
            );
        }
        c(
            &mut out,
            "edgepipe_auth_blocked_total",
            "Authentication attempts refused unexamined: their address was backing off after repeated failures.",
            &self.auth_blocked,
        );
        c(
            &mut out,
            "edgepipe_connections_closed_by_revocation_total",
            "Open connections closed because their device was disabled or its certificate revoked.",
            &self.connections_closed_by_revocation,
        );
        self.tls.render(&mut out);
        for (name, help, v) in extra {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
