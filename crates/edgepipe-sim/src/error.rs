//! The crate's error type.

use std::time::Duration;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors from configuring or running the simulator and the load generator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration was refused; every problem found is listed.
    #[error("invalid {what} configuration: {}", problems.join("; "))]
    InvalidConfig {
        /// Which configuration ("fleet", "fleet run", "bench").
        what: &'static str,
        /// Each problem, prefixed with the field it concerns.
        problems: Vec<String>,
    },
    /// A client could not connect to the broker or gateway.
    #[error("client {client} cannot connect to {addr}: {source}{hint}")]
    Connect {
        /// MQTT client id.
        client: String,
        /// `host:port` it tried.
        addr: String,
        /// What went wrong.
        #[source]
        source: Box<rumqttc::ConnectionError>,
        /// A hint for the common causes (nothing listening, credentials refused).
        hint: &'static str,
    },
    /// A client got no CONNACK in time.
    #[error("client {client} got no CONNACK from {addr} within {after:?}")]
    ConnectTimeout {
        /// MQTT client id.
        client: String,
        /// `host:port` it tried.
        addr: String,
        /// How long it waited.
        after: Duration,
    },
    /// Per-device credentials were given but one device has none.
    #[error("no credential for device {device} in the credentials map")]
    MissingCredential {
        /// The device without a token.
        device: String,
    },
    /// Writing ground-truth labels failed.
    #[error("cannot write labels to {target}: {source}")]
    WriteLabels {
        /// Path or "writer".
        target: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A worker task of the run failed to finish (panicked or was cancelled).
    #[error("{what} task failed: {reason}")]
    Task {
        /// Which task.
        what: &'static str,
        /// Why.
        reason: String,
    },
}

impl Error {
    pub(crate) fn connect(client: &str, addr: &str, source: rumqttc::ConnectionError) -> Self {
        let hint = match &source {
            rumqttc::ConnectionError::Io(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused =>
            {
                " (nothing is listening there: is the broker or `edgepipe serve` running?)"
            }
            rumqttc::ConnectionError::ConnectionRefused(
                rumqttc::ConnectReturnCode::BadUserNamePassword
                | rumqttc::ConnectReturnCode::NotAuthorized,
            ) => " (credentials refused: check the device token or enable auto-registration)",
            _ => "",
        };
        Error::Connect {
            client: client.to_owned(),
            addr: addr.to_owned(),
            source: Box::new(source),
            hint,
        }
    }
}
