//! Device identity from a TLS client certificate (mTLS): which device a certificate that
//! chained to a trusted CA names (its subject CN, or a `urn:edgepipe:device:ID` URI in its
//! subject alternative names), and why a handshake failed, in the words operators search for
//! (`expired`, `unknown_ca`, ...).
//!
//! The chain, validity dates and key usage are checked by rustls during the handshake (see
//! [`crate::gateway::tls`]); revocation and registration are checked at MQTT CONNECT or per
//! HTTPS request against the device registry.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The URI prefix a device id may be given under in a certificate's subject alternative names.
pub const SAN_URI_PREFIX: &str = "urn:edgepipe:device:";

/// The verified client certificate of an HTTPS connection, in each request's extensions.
#[derive(Debug, Clone)]
pub struct ClientCert(pub std::sync::Arc<rustls::pki_types::CertificateDer<'static>>);

/// Where a client certificate names its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceIdFrom {
    /// The subject's common name.
    #[default]
    Cn,
    /// A subject alternative name URI `urn:edgepipe:device:ID`.
    SanUri,
}

/// How device certificates are read and admitted (from `[tls]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertRules {
    /// Where a certificate names its device.
    pub device_id_from: DeviceIdFrom,
    /// An unknown device with a valid certificate is registered.
    pub register_by_certificate: bool,
    /// Devices must authenticate with a certificate; tokens are refused (`tls.client_auth =
    /// "required"`).
    pub cert_required: bool,
}

impl Default for CertRules {
    fn default() -> Self {
        Self {
            device_id_from: DeviceIdFrom::Cn,
            register_by_certificate: true,
            cert_required: false,
        }
    }
}

/// What a client certificate says about its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// The device id it names.
    pub device_id: String,
    /// Start of validity, ms since the epoch.
    pub not_before_ms: i64,
    /// End of validity, ms since the epoch.
    pub not_after_ms: i64,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, hex (what `openssl x509 -fingerprint -sha256` shows).
    pub sha256: String,
}

/// A client certificate that names no usable device.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Not a parsable X.509 certificate.
    #[error("client certificate does not parse: {0}")]
    Parse(String),
    /// The field the device id comes from is missing.
    #[error("client certificate has no {0}")]
    NoDeviceId(&'static str),
}

/// Reads the device identity of a DER certificate.
pub fn identity_of(der: &[u8], from: DeviceIdFrom) -> Result<CertIdentity, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let device_id = match from {
        DeviceIdFrom::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .ok_or(IdentityError::NoDeviceId("subject common name (CN)"))?,
        DeviceIdFrom::SanUri => cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .and_then(|san| {
                san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::URI(u) => u.strip_prefix(SAN_URI_PREFIX).map(str::to_owned),
                    _ => None,
                })
            })
            .ok_or(IdentityError::NoDeviceId(
                "subject alternative name URI urn:edgepipe:device:ID",
            ))?,
    };
    let v = cert.validity();
    Ok(CertIdentity {
        device_id,
        not_before_ms: v.not_before.timestamp().saturating_mul(1000),
        not_after_ms: v.not_after.timestamp().saturating_mul(1000),
        serial: cert.raw_serial_as_string().replace(':', ""),
        sha256: hex::encode(sha2::Sha256::digest(der)),
    })
}

/// Why a TLS handshake failed, as a short label for logs and the
/// `edgepipe_tls_handshake_failures_total{reason}` counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client certificate has expired.
    Expired,
    /// The client certificate is not valid yet.
    NotYetValid,
    /// The client certificate does not chain to a trusted CA.
    UnknownCa,
    /// The client certificate is otherwise unacceptable (signature, usage, encoding).
    BadCertificate,
    /// A client certificate is required and none was sent.
    NoClientCertificate,
    /// No protocol version in common (TLS 1.1 and older are refused).
    ProtocolVersion,
    /// The client refused us (e.g. it does not trust our certificate).
    ClientAlert,
    /// Not TLS at all (plaintext MQTT or HTTP on a TLS port).
    NotTls,
    /// The handshake did not finish in time.
    Timeout,
    /// Anything else (the connection closed mid-handshake, ...).
    Other,
}

impl HandshakeFailure {
    /// Every label, in counter order.
    pub const ALL: [HandshakeFailure; 10] = [
        Self::Expired,
        Self::NotYetValid,
        Self::UnknownCa,
        Self::BadCertificate,
        Self::NoClientCertificate,
        Self::ProtocolVersion,
        Self::ClientAlert,
        Self::NotTls,
        Self::Timeout,
        Self::Other,
    ];

    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::UnknownCa => "unknown_ca",
            Self::BadCertificate => "bad_certificate",
            Self::NoClientCertificate => "no_client_certificate",
            Self::ProtocolVersion => "protocol_version",
            Self::ClientAlert => "client_alert",
            Self::NotTls => "not_tls",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }

    /// Classifies a handshake error: the client-certificate verdict of this handshake if
    /// there was one (see [`note_verify_failure`]; ntex-tls reports a refused certificate as a
    /// mere disconnect), else rustls' error inside the `io::Error`.
    pub fn of(e: &std::io::Error) -> Self {
        if let Some(f) = VERIFY_FAILURE.with(std::cell::Cell::take) {
            return f;
        }
        if e.kind() == std::io::ErrorKind::TimedOut {
            return Self::Timeout;
        }
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(r) => Self::of_rustls(r),
            None => Self::Other,
        }
    }

    /// Classifies a rustls error.
    pub fn of_rustls(r: &rustls::Error) -> Self {
        use rustls::{CertificateError as C, Error as R, PeerIncompatible as P};
        match r {
            R::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => Self::Expired,
            R::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
                Self::NotYetValid
            }
            R::InvalidCertificate(C::UnknownIssuer) => Self::UnknownCa,
            R::InvalidCertificate(_) => Self::BadCertificate,
            R::NoCertificatesPresented => Self::NoClientCertificate,
            R::PeerIncompatible(
                P::SupportedVersionsExtensionRequired
                | P::Tls12NotOffered
                | P::Tls13RequiredForQuic,
            ) => Self::ProtocolVersion,
            R::AlertReceived(_) => Self::ClientAlert,
            R::InvalidMessage(_) | R::InappropriateMessage { .. } => Self::NotTls,
            _ => Self::Other,
        }
    }
}

thread_local! {
    /// The client-certificate verdict of the handshake this thread is processing.
    static VERIFY_FAILURE: std::cell::Cell<Option<HandshakeFailure>> =
        const { std::cell::Cell::new(None) };
}

/// Records why the client certificate of the handshake being processed on this thread was
/// refused; the listener's error path reads it ([`HandshakeFailure::of`]). rustls verifies
/// inside the same call that returns the handshake error, on the same thread.
pub fn note_verify_failure(e: &rustls::Error) {
    VERIFY_FAILURE.with(|v| v.set(Some(HandshakeFailure::of_rustls(e))));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(params: rcgen::CertificateParams) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().expect("key");
        params
            .self_signed(&key)
            .expect("self-signed")
            .der()
            .to_vec()
    }

    #[test]
    fn the_device_comes_from_the_cn_or_the_san_uri() {
        let mut p = rcgen::CertificateParams::new(vec!["pump-7.example".into()]).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "pump-7");
        p.subject_alt_names.push(rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from("urn:edgepipe:device:pump-7b").expect("ia5"),
        ));
        let der = cert(p);
        let id = identity_of(&der, DeviceIdFrom::Cn).expect("cn");
        assert_eq!(id.device_id, "pump-7");
        assert_eq!(id.sha256.len(), 64);
        assert!(id.not_after_ms > id.not_before_ms);
        let id = identity_of(&der, DeviceIdFrom::SanUri).expect("san");
        assert_eq!(id.device_id, "pump-7b");
    }

    #[test]
    fn a_certificate_without_the_field_or_not_a_certificate_is_named() {
        let p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        let der = cert(p);
        assert_eq!(
            identity_of(&der, DeviceIdFrom::SanUri),
            Err(IdentityError::NoDeviceId(
                "subject alternative name URI urn:edgepipe:device:ID"
            ))
        );
        assert!(matches!(
            identity_of(b"\x30\x03\x02\x01\x01", DeviceIdFrom::Cn),
            Err(IdentityError::Parse(_))
        ));
    }

    #[test]
    fn handshake_errors_get_the_operator_words() {
        let wrap = |r: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, r);
        assert_eq!(
            HandshakeFailure::of(&wrap(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            HandshakeFailure::UnknownCa
        );
        assert_eq!(
            HandshakeFailure::of(&wrap(rustls::Error::NoCertificatesPresented)),
            HandshakeFailure::NoClientCertificate
        );
        assert_eq!(
            HandshakeFailure::of(&std::io::Error::from(std::io::ErrorKind::TimedOut)),
            HandshakeFailure::Timeout
        );
    }
}
