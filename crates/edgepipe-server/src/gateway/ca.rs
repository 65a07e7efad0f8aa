//! The built-in certificate authority (rcgen, ring, ECDSA P-256): issues device certificates
//! (`devices add ID --cert`, or a device's own CSR with `--csr`) and the server's certificate,
//! and rotates with an overlap in which the old and the new CA are both trusted.
//!
//! Files under `<data>/ca/`: `ca.key` (mode 0600, never logged), `ca.pem`, and for each
//! rotated-out CA `previous/<serial>.pem` with `previous/<serial>.until` (ms since the epoch the
//! overlap ends). The server trusts [`trusted_files`] as device CAs and reads them again when
//! the set changes (a rotation, an overlap ending).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// What can go wrong with the built-in CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `ca init` on a data directory that has a CA.
    #[error("{0} already holds a CA (use `edgepipe ca rotate` to replace it)")]
    Exists(PathBuf),
    /// No CA yet.
    #[error("no CA in {0}: run `edgepipe ca init` first")]
    Missing(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// rcgen refused (a bad CSR, a bad name).
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: String,
        /// Cause.
        source: rcgen::Error,
    },
    /// A device id that cannot be a certificate's CN.
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let what = what.into();
    move |source| CaError::Cert { what, source }
}

/// The CA directory of a data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("ca")
}

fn time_of(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial_bytes() -> Result<[u8; 16], CaError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| CaError::Io {
        path: PathBuf::from("getrandom"),
        source: std::io::Error::other(e.to_string()),
    })?;
    // Positive (the top bit clear) and never zero.
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(b)
}

fn random_serial() -> Result<SerialNumber, CaError> {
    Ok(SerialNumber::from_slice(&random_serial_bytes()?))
}

/// Writes `bytes` to `path` atomically, readable by the owner only when `private`.
fn write_file(path: &Path, bytes: &[u8], private: bool) -> Result<(), CaError> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut f = o.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(d) = path.parent() {
        edgepipe_wal::durable::fsync_dir(d).map_err(io(d))?;
    }
    Ok(())
}

/// A new self-signed CA certificate and key. Its name carries its creation time and the start
/// of its serial: the CAs before and after a rotation differ by name, so a certificate of a CA
/// no longer trusted is refused as from an unknown CA (not as a forgery of the new one).
fn new_ca(name: &str, days: u32, now_ms: i64) -> Result<(String, String), CaError> {
    let mut p = CertificateParams::default();
    let created = humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0)),
    );
    let serial = random_serial_bytes()?;
    p.distinguished_name.push(
        DnType::CommonName,
        format!("{name} {created} {}", hex::encode(&serial[..4])),
    );
    p.distinguished_name
        .push(DnType::OrganizationName, "edgepipe");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = time_of(now_ms - 3_600_000);
    p.not_after = time_of(now_ms + i64::from(days) * 86_400_000);
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
    let cert = p
        .self_signed(&key)
        .map_err(cert_err("signing the CA certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Creates the CA of `data_dir`. Refuses if one exists.
pub fn init(data_dir: &Path, name: &str, days: u32, now_ms: i64) -> Result<PathBuf, CaError> {
    let d = dir(data_dir);
    if d.join("ca.pem").exists() {
        return Err(CaError::Exists(d));
    }
    std::fs::create_dir_all(&d).map_err(io(&d))?;
    let (cert, key) = new_ca(name, days, now_ms)?;
    write_file(&d.join("ca.key"), key.as_bytes(), true)?;
    write_file(&d.join("ca.pem"), cert.as_bytes(), false)?;
    Ok(d.join("ca.pem"))
}

/// Replaces the CA with a new one; the old one stays trusted for `overlap` (certificates it
/// issued keep working meanwhile). Returns the new CA file.
pub fn rotate(
    data_dir: &Path,
    name: &str,
    days: u32,
    overlap: Duration,
    now_ms: i64,
) -> Result<PathBuf, CaError> {
    let d = dir(data_dir);
    let old_pem = d.join("ca.pem");
    let old = std::fs::read(&old_pem).map_err(|_| CaError::Missing(d.clone()))?;
    let serial = crate::gateway::identity::identity_of(&pem_der(&old)?, Default::default())
        .map(|i| i.serial)
        .unwrap_or_else(|_| now_ms.to_string());
    let prev = d.join("previous");
    std::fs::create_dir_all(&prev).map_err(io(&prev))?;
    let until = now_ms.saturating_add(i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX));
    // The old CA's trust first: a crash in between leaves both trusted, never neither.
    write_file(&prev.join(format!("{serial}.pem")), &old, false)?;
    write_file(
        &prev.join(format!("{serial}.until")),
        until.to_string().as_bytes(),
        false,
    )?;
    let (cert, key) = new_ca(name, days, now_ms)?;
    write_file(&d.join("ca.key"), key.as_bytes(), true)?;
    write_file(&d.join("ca.pem"), cert.as_bytes(), false)?;
    Ok(d.join("ca.pem"))
}

fn pem_der(pem: &[u8]) -> Result<Vec<u8>, CaError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem)
        .map(|c| c.as_ref().to_vec())
        .map_err(|e| CaError::Invalid(format!("not a PEM certificate: {e}")))
}

/// The CA certificate files devices may chain to now: the current CA and every rotated-out one
/// whose overlap has not ended. Empty without a CA.
pub fn trusted_files(data_dir: &Path, now_ms: i64) -> Vec<PathBuf> {
    let d = dir(data_dir);
    let mut out = Vec::new();
    if d.join("ca.pem").exists() {
        out.push(d.join("ca.pem"));
    }
    let Ok(entries) = std::fs::read_dir(d.join("previous")) else {
        return out;
    };
    let mut prev: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .filter(|p| {
            std::fs::read_to_string(p.with_extension("until"))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .is_some_and(|until| until > now_ms)
        })
        .collect();
    prev.sort();
    out.extend(prev);
    out
}

/// The trust bundle devices and clients need: every trusted CA certificate, PEM.
pub fn bundle(data_dir: &Path, now_ms: i64) -> Result<String, CaError> {
    let files = trusted_files(data_dir, now_ms);
    if files.is_empty() {
        return Err(CaError::Missing(dir(data_dir)));
    }
    let mut out = String::new();
    for f in files {
        out.push_str(&std::fs::read_to_string(&f).map_err(io(&f))?);
    }
    Ok(out)
}

/// The loaded CA: issues certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca")
    }
}

/// A certificate and, when the CA made the key, its private key (PEM).
#[derive(Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (None when a CSR brought its own).
    pub key_pem: Option<String>,
}

impl Ca {
    /// Loads the CA of `data_dir`.
    pub fn load(data_dir: &Path) -> Result<Self, CaError> {
        let d = dir(data_dir);
        let key_path = d.join("ca.key");
        let cert_path = d.join("ca.pem");
        if !cert_path.exists() {
            return Err(CaError::Missing(d));
        }
        let key = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let cert = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key = KeyPair::from_pem(&key).map_err(cert_err(format!("{}", key_path.display())))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)
            .map_err(cert_err(format!("{}", cert_path.display())))?;
        Ok(Self { issuer })
    }

    fn leaf_params(
        cn: &str,
        days: u32,
        not_before_ms: i64,
        client: bool,
    ) -> Result<CertificateParams, CaError> {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        p.use_authority_key_identifier_extension = true;
        p.not_before = time_of(not_before_ms);
        p.not_after = time_of(not_before_ms + i64::from(days) * 86_400_000);
        p.serial_number = Some(random_serial()?);
        Ok(p)
    }

    fn device_params(
        device: &str,
        days: u32,
        not_before_ms: i64,
    ) -> Result<CertificateParams, CaError> {
        let id = edgepipe_types::DeviceId::new(device)
            .map_err(|e| CaError::Invalid(format!("device id {device:?}: {e}")))?;
        let mut p = Self::leaf_params(id.as_str(), days, not_before_ms, true)?;
        let uri = format!(
            "{}{}",
            crate::gateway::identity::SAN_URI_PREFIX,
            id.as_str()
        );
        p.subject_alt_names.push(SanType::URI(
            rcgen::string::Ia5String::try_from(uri)
                .map_err(cert_err(format!("device id {device:?} in a URI")))?,
        ));
        Ok(p)
    }

    /// A new key and certificate for `device` (CN and SAN URI name it), valid from
    /// `not_before_ms` for `days`.
    pub fn issue_device(
        &self,
        device: &str,
        days: u32,
        not_before_ms: i64,
    ) -> Result<Issued, CaError> {
        let p = Self::device_params(device, days, not_before_ms)?;
        let key = KeyPair::generate().map_err(cert_err("generating the device key"))?;
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(cert_err(format!("signing {device}'s certificate")))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
        })
    }

    /// Signs a device's CSR (its key never leaves the device). The certificate names `device`
    /// whatever subject the CSR asked for; only its public key is taken.
    pub fn sign_csr(
        &self,
        device: &str,
        csr_pem: &str,
        days: u32,
        not_before_ms: i64,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(cert_err("the CSR does not parse or its signature is wrong"))?;
        let req = CertificateSigningRequestParams {
            params: Self::device_params(device, days, not_before_ms)?,
            public_key: csr.public_key,
        };
        let cert = req
            .signed_by(&self.issuer)
            .map_err(cert_err(format!("signing {device}'s CSR")))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: None,
        })
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(
        &self,
        names: &[String],
        days: u32,
        not_before_ms: i64,
    ) -> Result<Issued, CaError> {
        let first = names
            .first()
            .ok_or_else(|| CaError::Invalid("a server certificate needs a name".into()))?;
        let mut p = Self::leaf_params(first, days, not_before_ms, false)?;
        for n in names {
            p.subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName(
                        rcgen::string::Ia5String::try_from(n.as_str())
                            .map_err(cert_err(format!("server name {n:?}")))?,
                    ),
                });
        }
        let key = KeyPair::generate().map_err(cert_err("generating the server key"))?;
        let cert = p
            .signed_by(&key, &self.issuer)
            .map_err(cert_err("signing the server certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
        })
    }
}

/// Writes an issued certificate (and key, 0600) as `<dir>/<name>.pem` / `.key`, with the trust
/// bundle as `<dir>/<bundle_name>`. Returns the files written.
pub fn write_issued(
    out: &Path,
    name: &str,
    issued: &Issued,
    bundle: &str,
    bundle_name: &str,
) -> Result<Vec<PathBuf>, CaError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut files = Vec::new();
    if let Some(k) = &issued.key_pem {
        let p = out.join(format!("{name}.key"));
        write_file(&p, k.as_bytes(), true)?;
        files.push(p);
    }
    let p = out.join(format!("{name}.pem"));
    write_file(&p, issued.cert_pem.as_bytes(), false)?;
    files.push(p);
    let p = out.join(bundle_name);
    write_file(&p, bundle.as_bytes(), false)?;
    files.push(p);
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::identity::{DeviceIdFrom, identity_of};

    fn der(pem: &str) -> Vec<u8> {
        pem_der(pem.as_bytes()).expect("pem")
    }

    #[test]
    fn issued_certificates_name_their_device_and_chain_to_the_ca() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_790_000_000_000;
        init(dir.path(), "test CA", 3650, now).expect("init");
        assert!(matches!(
            init(dir.path(), "again", 1, now),
            Err(CaError::Exists(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca/ca.key"))
                .expect("key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let ca = Ca::load(dir.path()).expect("load");
        let issued = ca.issue_device("pump-1", 365, now).expect("issue");
        let cert = der(&issued.cert_pem);
        let id = identity_of(&cert, DeviceIdFrom::Cn).expect("cn");
        assert_eq!(id.device_id, "pump-1");
        assert_eq!(id.not_before_ms, now);
        assert_eq!(
            identity_of(&cert, DeviceIdFrom::SanUri)
                .expect("san")
                .device_id,
            "pump-1"
        );
        // The chain verifies with webpki, as the server's handshake does.
        let roots =
            crate::gateway::tls::load_roots(&trusted_files(dir.path(), now)).expect("roots");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            crate::gateway::tls::provider(),
        )
        .build()
        .expect("verifier");
        let at = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_millis(
            (now + 1000) as u64,
        ));
        verifier
            .verify_client_cert(&cert.clone().into(), &[], at)
            .expect("chains to the CA");
        assert!(ca.issue_device("bad id/with slash", 1, now).is_err());
    }

    #[test]
    fn a_csr_keeps_its_key_and_gets_the_device_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_790_000_000_000;
        init(dir.path(), "test CA", 3650, now).expect("init");
        let ca = Ca::load(dir.path()).expect("load");
        let device_key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(DnType::CommonName, "someone-else");
        let csr = p.serialize_request(&device_key).expect("csr");
        let issued = ca
            .sign_csr("valve-9", &csr.pem().expect("pem"), 30, now)
            .expect("signed");
        assert!(issued.key_pem.is_none());
        let id = identity_of(&der(&issued.cert_pem), DeviceIdFrom::Cn).expect("cn");
        assert_eq!(id.device_id, "valve-9");
        assert!(ca.sign_csr("valve-9", "not a csr", 30, now).is_err());
    }

    #[test]
    fn after_a_rotation_both_cas_are_trusted_until_the_overlap_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let now = 1_790_000_000_000;
        init(dir.path(), "CA 1", 3650, now).expect("init");
        let old = std::fs::read(dir.path().join("ca/ca.pem")).expect("old");
        rotate(dir.path(), "CA 2", 3650, Duration::from_secs(3600), now).expect("rotate");
        let files = trusted_files(dir.path(), now + 1000);
        assert_eq!(files.len(), 2, "{files:?}");
        assert_eq!(std::fs::read(&files[1]).expect("prev"), old);
        assert_eq!(trusted_files(dir.path(), now + 3_600_001).len(), 1);
        let b = bundle(dir.path(), now).expect("bundle");
        assert_eq!(b.matches("BEGIN CERTIFICATE").count(), 2);
    }
}
