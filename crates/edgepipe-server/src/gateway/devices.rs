//! Device identity: the registry of devices allowed to publish, with their tokens stored only as
//! SHA-256 digests of 256-bit random secrets.
//!
//! The registry is one JSON file (`devices.json` in the data directory), replaced atomically
//! (write temp, fsync, rename, fsync dir) under an exclusive lock file, so the CLI can add or
//! disable devices while the server runs; the server re-reads it when its modification time
//! changes.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use edgepipe_types::{DeviceId, SharedClock, SystemClock};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Errors from the device registry.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// File I/O failed.
    #[error("device registry {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The registry file is not valid.
    #[error("device registry {path} is corrupt: {message}")]
    Corrupt {
        /// File.
        path: PathBuf,
        /// Parser message.
        message: String,
    },
    /// The device id is invalid.
    #[error(transparent)]
    InvalidId(#[from] edgepipe_types::Error),
    /// Adding a device that exists.
    #[error("device {0} already exists (use rotate-token to issue a new token)")]
    Exists(String),
    /// Acting on a device that does not exist.
    #[error("no device {0}")]
    NotFound(String),
    /// The OS random source failed.
    #[error("cannot generate a token: {0}")]
    Random(String),
}

/// One registered device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceRecord {
    /// Identity (MQTT username).
    pub id: String,
    /// Hex SHA-256 of the token.
    pub token_sha256: String,
    /// Disabled devices are refused.
    pub enabled: bool,
    /// Creation time, ms since epoch.
    pub created_at: i64,
    /// Last token rotation, ms since epoch.
    pub rotated_at: i64,
    /// Registered automatically (dev mode) rather than by an operator.
    #[serde(default)]
    pub auto_registered: bool,
    /// Registered by its first connection with a valid certificate (`tls.register_by_certificate`).
    #[serde(default)]
    pub registered_by_certificate: bool,
    /// Certificates that became valid before this (ms since epoch) are refused:
    /// `devices revoke-cert` sets it to now. 0: none revoked.
    #[serde(default)]
    pub certs_valid_after_ms: i64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RegistryFile {
    version: u32,
    devices: BTreeMap<String, DeviceRecord>,
}

/// Outcome of checking credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// Credentials valid.
    Ok,
    /// Registered just now (auto-registration).
    Registered,
    /// No such device.
    Unknown,
    /// Device is disabled.
    Disabled,
    /// Token does not match.
    BadToken,
    /// The id is not a valid device id.
    InvalidId,
    /// The certificate was revoked (`devices revoke-cert`).
    Revoked,
}

/// What the cache was read from: the registry file's mtime and the journal's length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Stamp {
    file_mtime: Option<SystemTime>,
    journal_len: u64,
    read: bool,
}

/// The device registry.
///
/// Auto-registrations (dev mode) are appended to `devices.journal` (one JSON record per line,
/// one fdatasync each) instead of rewriting `devices.json`, so registering thousands of devices
/// stays cheap; the journal only ever adds devices absent from the file, and every operator
/// change (`devices add/disable/...`) folds it into `devices.json` and removes it.
#[derive(Debug)]
pub struct DeviceRegistry {
    path: PathBuf,
    lock_path: PathBuf,
    journal_path: PathBuf,
    cache: Mutex<(Stamp, RegistryFile)>,
    /// Bumped whenever the cache is read again or changed (see [`DeviceRegistry::generation`]).
    generation: std::sync::atomic::AtomicU64,
    /// Stamps creation and rotation times.
    clock: SharedClock,
}

/// Hex SHA-256 of a token.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Constant-time comparison, so the time to refuse says nothing about the stored digest.
fn ct_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn new_token() -> Result<String, DeviceError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| DeviceError::Random(e.to_string()))?;
    Ok(format!("ep_{}", hex::encode(bytes)))
}

impl DeviceRegistry {
    /// Opens (creating if absent) the registry in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, DeviceError> {
        fs::create_dir_all(data_dir).map_err(|source| DeviceError::Io {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let reg = DeviceRegistry {
            path: data_dir.join("devices.json"),
            lock_path: data_dir.join("devices.lock"),
            journal_path: data_dir.join("devices.journal"),
            cache: Mutex::new((Stamp::default(), RegistryFile::default())),
            generation: std::sync::atomic::AtomicU64::new(0),
            clock: Arc::new(SystemClock),
        };
        reg.refresh()?;
        Ok(reg)
    }

    /// The registry with `clock` stamping creation and rotation times (the server passes its
    /// one clock; [`DeviceRegistry::open`] starts with the system clock).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    fn io(&self, path: &Path) -> impl FnOnce(std::io::Error) -> DeviceError {
        let path = path.to_path_buf();
        move |source| DeviceError::Io { path, source }
    }

    fn stamp(&self) -> Stamp {
        Stamp {
            file_mtime: fs::metadata(&self.path).and_then(|m| m.modified()).ok(),
            journal_len: fs::metadata(&self.journal_path).map_or(0, |m| m.len()),
            read: true,
        }
    }

    fn read_file(&self) -> Result<(Stamp, RegistryFile), DeviceError> {
        let stamp = self.stamp();
        let mut file: RegistryFile = match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| DeviceError::Corrupt {
                path: self.path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RegistryFile::default(),
            Err(e) => return Err(self.io(&self.path)(e)),
        };
        match fs::read(&self.journal_path) {
            Ok(bytes) => {
                // A torn last line (crash mid-append) was never acknowledged: skip it.
                for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                    if let Ok(rec) = serde_json::from_slice::<DeviceRecord>(line) {
                        file.devices.entry(rec.id.clone()).or_insert(rec);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(&self.journal_path)(e)),
        }
        Ok((stamp, file))
    }

    /// Re-reads the files if they changed since last read.
    fn refresh(&self) -> Result<(), DeviceError> {
        let stamp = self.stamp();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.0.read && cache.0 == stamp {
            return Ok(());
        }
        *cache = self.read_file()?;
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// A number that changes whenever the registry may have changed (read from the file
    /// again, here or by another process such as `edgepipe devices`): watchers re-check their
    /// devices only then.
    pub fn generation(&self) -> Result<u64, DeviceError> {
        self.refresh()?;
        Ok(self.generation.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn lock_file(&self) -> Result<File, DeviceError> {
        let lock = File::create(&self.lock_path).map_err(self.io(&self.lock_path))?;
        lock.lock().map_err(self.io(&self.lock_path))?;
        Ok(lock)
    }

    /// Runs `f` on the registry (file + journal) under the lock file and writes the result
    /// atomically, folding the journal in.
    fn modify<T>(
        &self,
        f: impl FnOnce(&mut RegistryFile) -> Result<T, DeviceError>,
    ) -> Result<T, DeviceError> {
        let lock = self.lock_file()?;
        let (_, mut file) = self.read_file()?;
        let out = f(&mut file)?;
        file.version = 1;
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| DeviceError::Corrupt {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        edgepipe_wal::durable::replace_file(&self.path, &bytes).map_err(self.io(&self.path))?;
        // The journal is folded into the file now: remove it, and make the removal durable
        // (`replace_file` already made the new file's rename durable).
        match fs::remove_file(&self.journal_path) {
            Ok(()) => {
                if let Some(dir) = self.path.parent() {
                    edgepipe_wal::durable::fsync_dir(dir).map_err(self.io(dir))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io(&self.journal_path)(e)),
        }
        *self.cache.lock().unwrap_or_else(|p| p.into_inner()) = (self.stamp(), file);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        drop(lock);
        Ok(out)
    }

    /// Appends an auto-registered device to the journal (one fdatasync) unless it exists.
    fn register(&self, rec: DeviceRecord) -> Result<AuthResult, DeviceError> {
        let lock = self.lock_file()?;
        self.refresh()?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = cache.1.devices.get(&rec.id) {
            return Ok(
                if existing.enabled && ct_eq(&existing.token_sha256, &rec.token_sha256) {
                    AuthResult::Ok
                } else if !existing.enabled {
                    AuthResult::Disabled
                } else {
                    AuthResult::BadToken
                },
            );
        }
        let mut line = serde_json::to_vec(&rec).map_err(|e| DeviceError::Corrupt {
            path: self.journal_path.clone(),
            message: e.to_string(),
        })?;
        line.push(b'\n');
        let created = !self.journal_path.exists();
        let mut j = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.journal_path)
            .map_err(self.io(&self.journal_path))?;
        j.write_all(&line).map_err(self.io(&self.journal_path))?;
        j.sync_data().map_err(self.io(&self.journal_path))?;
        if created && let Some(dir) = self.journal_path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(self.io(dir))?;
        }
        cache.1.devices.insert(rec.id.clone(), rec);
        cache.0 = self.stamp();
        drop(cache);
        drop(lock);
        Ok(AuthResult::Registered)
    }

    /// Registers a device and returns its token (shown once; only its hash is stored).
    pub fn add(&self, id: &str) -> Result<String, DeviceError> {
        let id = DeviceId::new(id)?;
        let token = new_token()?;
        let hash = hash_token(&token);
        self.modify(|f| {
            if f.devices.contains_key(id.as_str()) {
                return Err(DeviceError::Exists(id.to_string()));
            }
            let now = self.clock.now_ms();
            f.devices.insert(
                id.to_string(),
                DeviceRecord {
                    id: id.to_string(),
                    token_sha256: hash,
                    enabled: true,
                    created_at: now,
                    rotated_at: now,
                    auto_registered: false,
                    registered_by_certificate: false,
                    certs_valid_after_ms: 0,
                },
            );
            Ok(())
        })?;
        Ok(token)
    }

    /// Issues a new token, invalidating the old one.
    pub fn rotate_token(&self, id: &str) -> Result<String, DeviceError> {
        let token = new_token()?;
        let hash = hash_token(&token);
        self.modify(|f| {
            let d = f
                .devices
                .get_mut(id)
                .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
            d.token_sha256 = hash;
            d.rotated_at = self.clock.now_ms();
            Ok(())
        })?;
        Ok(token)
    }

    /// Revokes every certificate of the device that became valid before now: new connections
    /// with one are refused and open ones are closed (within a second). Certificates issued
    /// from the next second on are accepted. Returns the cut-off (ms since the epoch).
    pub fn revoke_certs(&self, id: &str) -> Result<i64, DeviceError> {
        let now = self.clock.now_ms();
        self.modify(|f| {
            let d = f
                .devices
                .get_mut(id)
                .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
            d.certs_valid_after_ms = now;
            Ok(())
        })?;
        Ok(now)
    }

    /// Authenticates a device by a certificate rustls verified (chain, dates): the device must
    /// be enabled and the certificate not revoked. An unknown device is registered when
    /// `register` (its token stays unset: it authenticates by certificate only).
    pub fn authenticate_cert(
        &self,
        cert: &crate::gateway::identity::CertIdentity,
        register: bool,
    ) -> Result<AuthResult, DeviceError> {
        let id = cert.device_id.as_str();
        if DeviceId::new(id).is_err() {
            return Ok(AuthResult::InvalidId);
        }
        let found = self.get(id)?;
        match found {
            Some(d) if !d.enabled => Ok(AuthResult::Disabled),
            Some(d) if cert.not_before_ms < d.certs_valid_after_ms => Ok(AuthResult::Revoked),
            Some(_) => Ok(AuthResult::Ok),
            None if register => {
                let now = self.clock.now_ms();
                match self.register(DeviceRecord {
                    id: id.to_string(),
                    token_sha256: String::new(),
                    enabled: true,
                    created_at: now,
                    rotated_at: now,
                    auto_registered: false,
                    registered_by_certificate: true,
                    certs_valid_after_ms: 0,
                })? {
                    // Registered meanwhile by another connection of the same device.
                    AuthResult::BadToken | AuthResult::Ok => self.authenticate_cert(cert, false),
                    r => Ok(r),
                }
            }
            None => Ok(AuthResult::Unknown),
        }
    }

    /// The device `id`, as the registry holds it now.
    pub fn get(&self, id: &str) -> Result<Option<DeviceRecord>, DeviceError> {
        self.refresh()?;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        Ok(cache.1.devices.get(id).cloned())
    }

    /// Whether a connection of `id` authenticated at some point (with a certificate valid from
    /// `cert_not_before_ms`, if any) may stay open: the device exists, is enabled, and the
    /// certificate is not revoked. Reads the registry as last read (a watcher checking many
    /// connections calls [`Self::generation`] once, which reads it again if it changed).
    pub fn may_stay(&self, id: &str, cert_not_before_ms: Option<i64>) -> bool {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.1.devices.get(id).is_some_and(|d| {
            d.enabled && cert_not_before_ms.is_none_or(|nb| nb >= d.certs_valid_after_ms)
        })
    }

    /// Enables or disables a device.
    pub fn set_enabled(&self, id: &str, enabled: bool) -> Result<(), DeviceError> {
        self.modify(|f| {
            let d = f
                .devices
                .get_mut(id)
                .ok_or_else(|| DeviceError::NotFound(id.to_string()))?;
            d.enabled = enabled;
            Ok(())
        })
    }

    /// Every registered device.
    pub fn list(&self) -> Result<Vec<DeviceRecord>, DeviceError> {
        self.refresh()?;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        Ok(cache.1.devices.values().cloned().collect())
    }

    /// The enabled device whose token this is, if any (HTTP clients may send only the token).
    pub fn find_by_token(&self, token: &str) -> Result<Option<String>, DeviceError> {
        self.refresh()?;
        let hash = hash_token(token);
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        Ok(cache
            .1
            .devices
            .values()
            .find(|d| d.enabled && ct_eq(&d.token_sha256, &hash))
            .map(|d| d.id.clone()))
    }

    /// Checks `id`/`token`; with `auto_register`, an unknown valid id is registered with the
    /// token it presented.
    pub fn authenticate(
        &self,
        id: &str,
        token: &str,
        auto_register: bool,
    ) -> Result<AuthResult, DeviceError> {
        if DeviceId::new(id).is_err() {
            return Ok(AuthResult::InvalidId);
        }
        let found = self.get(id)?;
        match found {
            Some(d) if !d.enabled => Ok(AuthResult::Disabled),
            Some(d) if ct_eq(&d.token_sha256, &hash_token(token)) => Ok(AuthResult::Ok),
            Some(_) => Ok(AuthResult::BadToken),
            None if auto_register && !token.is_empty() => {
                let now = self.clock.now_ms();
                self.register(DeviceRecord {
                    id: id.to_string(),
                    token_sha256: hash_token(token),
                    enabled: true,
                    created_at: now,
                    rotated_at: now,
                    auto_registered: true,
                    registered_by_certificate: false,
                    certs_valid_after_ms: 0,
                })
            }
            None => Ok(AuthResult::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_auth_disable_rotate() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let reg = DeviceRegistry::open(dir.path())?;
        let token = reg.add("pump-1")?;
        assert!(token.len() >= 64);
        assert!(matches!(reg.add("pump-1"), Err(DeviceError::Exists(_))));
        assert_eq!(reg.authenticate("pump-1", &token, false)?, AuthResult::Ok);
        assert_eq!(
            reg.authenticate("pump-1", "nope", false)?,
            AuthResult::BadToken
        );
        assert_eq!(
            reg.authenticate("pump-2", &token, false)?,
            AuthResult::Unknown
        );
        assert_eq!(
            reg.authenticate("a/b", &token, true)?,
            AuthResult::InvalidId
        );
        let stored = fs::read_to_string(dir.path().join("devices.json"))?;
        assert!(!stored.contains(&token), "token must never be stored");

        // A second registry (the CLI) changes the file; the first sees it.
        let cli = DeviceRegistry::open(dir.path())?;
        let new = cli.rotate_token("pump-1")?;
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            reg.authenticate("pump-1", &token, false)?,
            AuthResult::BadToken
        );
        assert_eq!(reg.authenticate("pump-1", &new, false)?, AuthResult::Ok);
        cli.set_enabled("pump-1", false)?;
        assert_eq!(
            reg.authenticate("pump-1", &new, false)?,
            AuthResult::Disabled
        );
        Ok(())
    }

    #[test]
    fn auto_registrations_go_to_the_journal_and_fold_into_the_file()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let reg = DeviceRegistry::open(dir.path())?;
        for i in 0..50 {
            assert_eq!(
                reg.authenticate(&format!("auto-{i}"), "pw", true)?,
                AuthResult::Registered
            );
        }
        assert!(dir.path().join("devices.journal").exists());
        assert!(!dir.path().join("devices.json").exists());
        // A torn last line (crash mid-append) is ignored.
        let mut j = fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("devices.journal"))?;
        j.write_all(b"{\"id\":\"torn")?;
        drop(j);
        let cli = DeviceRegistry::open(dir.path())?;
        assert_eq!(cli.list()?.len(), 50);
        cli.set_enabled("auto-7", false)?;
        assert!(
            !dir.path().join("devices.journal").exists(),
            "folded into devices.json"
        );
        let again = DeviceRegistry::open(dir.path())?;
        assert_eq!(again.list()?.len(), 50);
        assert_eq!(
            again.authenticate("auto-7", "pw", true)?,
            AuthResult::Disabled
        );
        assert_eq!(again.authenticate("auto-8", "pw", true)?, AuthResult::Ok);
        assert_eq!(
            reg.authenticate("auto-7", "pw", true)?,
            AuthResult::Disabled
        );
        Ok(())
    }

    #[test]
    fn auto_registration_binds_the_first_token() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let reg = DeviceRegistry::open(dir.path())?;
        assert_eq!(
            reg.authenticate("sim-1", "s3cret", true)?,
            AuthResult::Registered
        );
        assert_eq!(reg.authenticate("sim-1", "s3cret", true)?, AuthResult::Ok);
        assert_eq!(
            reg.authenticate("sim-1", "other", true)?,
            AuthResult::BadToken
        );
        assert_eq!(reg.authenticate("sim-2", "", true)?, AuthResult::Unknown);
        Ok(())
    }
}
