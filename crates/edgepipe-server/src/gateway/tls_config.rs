//! The rustls configurations built on [`crate::gateway::tls`]: each listener's server config
//! (with the device-certificate check, handed to the CAs loaded last) and the client config
//! `edgepipe` commands use to reach the local server's HTTPS API (its certificate pinned).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::gateway::tls::{ReloadingCert, TlsError, provider};

/// The client-certificate check of every handshake, handed to the verifier loaded last. A
/// certificate is never mandatory in the handshake: browsers reach the API on the same HTTPS
/// port, and `client_auth = "required"` is enforced where a device authenticates (MQTT
/// CONNECT, HTTPS ingest), with an answer the device can read.
#[derive(Debug)]
struct Clients(Arc<ReloadingCert>);

impl ClientCertVerifier for Clients {
    fn offer_client_auth(&self) -> bool {
        self.0.verifier().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // The CAs may change under a running listener; an empty list lets the client send
        // the certificate it was configured with.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verdict = match self.0.verifier() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::General("no client CAs loaded".into())),
        };
        if let Err(e) = &verdict {
            crate::gateway::identity::note_verify_failure(e);
        }
        verdict
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// A listener's rustls configuration: TLS 1.3 and 1.2, the reloading certificate, client
/// certificates checked against its CAs when it has some, `alpn` protocols offered (none:
/// the client's choice is not checked).
pub fn server_config(
    cert: Arc<ReloadingCert>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let b = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut cfg = if cert.trust.is_some() {
        b.with_client_cert_verifier(Arc::new(Clients(cert.clone())))
            .with_cert_resolver(cert)
    } else {
        b.with_no_client_auth().with_cert_resolver(cert)
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// A client configuration that trusts exactly the server certificate in `cert_file` (the first
/// of its chain), whatever name it carries: how `edgepipe` commands on the server's machine
/// reach its HTTPS API at the address in `server.json`, which a certificate for the public
/// name does not cover.
pub fn pinned_client_config(cert_file: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let text = std::fs::read(cert_file).map_err(|e| TlsError::Cert {
        path: cert_file.to_path_buf(),
        message: e.to_string(),
    })?;
    let cert = CertificateDer::pem_slice_iter(&text)
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| TlsError::Cert {
            path: cert_file.to_path_buf(),
            message: "no certificate in it".into(),
        })?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            cert: cert.into_owned(),
        }))
        .with_no_client_auth();
    Ok(cfg)
}

/// Accepts one certificate, byte for byte; signatures are checked as usual.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
}

/// A handshake signature checked with the ring provider's algorithms (both verifiers' way).
fn signature(
    tls13: bool,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let algs = &provider().signature_verification_algorithms;
    if tls13 {
        rustls::crypto::verify_tls13_signature(message, cert, dss, algs)
    } else {
        rustls::crypto::verify_tls12_signature(message, cert, dss, algs)
    }
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server presented a certificate other than the one in its tls.cert file".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(false, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signature(true, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
