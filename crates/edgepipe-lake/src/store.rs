//! Where the lake lives: a local directory (default) or an S3-compatible bucket, behind one
//! `object_store` handle.
//!
//! On the local filesystem `object_store` writes each object to a temporary file and renames it
//! into place, so a reader never sees half an object; we add an fsync of the file and its
//! directory so that a stored object survives power loss before the WAL checkpoint moves past
//! it. On S3 a completed PUT is durable and atomic by the service's own guarantee.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::{Error, Result};

/// S3 connection settings (used when the lake URL starts with `s3://`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    /// Endpoint URL for S3-compatible stores (MinIO, moto, Ceph); empty for AWS.
    pub endpoint: String,
    /// Region; `us-east-1` when empty.
    pub region: String,
    /// Access key id; empty to use the environment (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// Secret access key; empty to use the environment (`AWS_SECRET_ACCESS_KEY`).
    pub secret_access_key: String,
    /// Allow plain `http://` endpoints (local test servers).
    pub allow_http: bool,
}

/// A handle on the lake's object store.
#[derive(Clone)]
pub struct LakeStore {
    store: Arc<dyn ObjectStore>,
    /// URL of the store's root (`file:///abs/dir/` or `s3://bucket/`), for query engines.
    root_url: Url,
    /// Prefix inside the store under which the lake lives (`""` for a local directory).
    prefix: String,
    /// The directory, when local (for fsync).
    local_dir: Option<PathBuf>,
}

impl fmt::Debug for LakeStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LakeStore")
            .field("root_url", &self.root_url.as_str())
            .field("prefix", &self.prefix)
            .finish()
    }
}

impl LakeStore {
    /// Opens a lake in a local directory, creating it.
    pub fn local(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let dir = dir.canonicalize().map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let store = LocalFileSystem::new_with_prefix(&dir).map_err(Error::store("open"))?;
        let root_url = Url::from_directory_path(&dir)
            .map_err(|()| Error::Config(format!("{} is not an absolute path", dir.display())))?;
        Ok(Self {
            store: Arc::new(store),
            root_url,
            prefix: String::new(),
            local_dir: Some(dir),
        })
    }

    /// Opens the lake at `location`: a directory path, `file:///dir`, or `s3://bucket/prefix`
    /// (with `s3` settings).
    pub fn open(location: &str, s3: &S3Config) -> Result<Self> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Config(format!(
                    "lake url {location:?} names no bucket (expected s3://bucket/prefix)"
                )));
            }
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_allow_http(s3.allow_http);
            b = b.with_region(if s3.region.is_empty() {
                "us-east-1"
            } else {
                &s3.region
            });
            if !s3.endpoint.is_empty() {
                b = b
                    .with_endpoint(&s3.endpoint)
                    .with_virtual_hosted_style_request(false);
            }
            if !s3.access_key_id.is_empty() {
                b = b.with_access_key_id(&s3.access_key_id);
            }
            if !s3.secret_access_key.is_empty() {
                b = b.with_secret_access_key(&s3.secret_access_key);
            }
            let store = b.build().map_err(Error::store("open s3"))?;
            let root_url = Url::parse(&format!("s3://{bucket}/"))
                .map_err(|e| Error::Config(format!("lake url {location:?}: {e}")))?;
            let prefix = prefix.trim_matches('/');
            return Ok(Self {
                store: Arc::new(store),
                root_url,
                prefix: if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                },
                local_dir: None,
            });
        }
        if let Some(path) = location.strip_prefix("file://") {
            return Self::local(path);
        }
        if location.contains("://") {
            return Err(Error::Config(format!(
                "lake url {location:?}: unsupported scheme (use a directory, file:// or s3://)"
            )));
        }
        Self::local(location)
    }

    /// The underlying store (for query engines to register).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// URL of the store root (`file:///dir/` or `s3://bucket/`).
    pub fn root_url(&self) -> &Url {
        &self.root_url
    }

    /// URL of a table's directory, e.g. `s3://bucket/prefix/readings/`.
    pub fn table_url(&self, table: &str) -> String {
        format!("{}{}{}/", self.root_url, self.prefix, table)
    }

    /// The local directory, when the lake is on the local filesystem.
    pub fn local_dir(&self) -> Option<&Path> {
        self.local_dir.as_deref()
    }

    /// The store path of a lake-relative key.
    pub fn path(&self, key: &str) -> ObjPath {
        ObjPath::from(format!("{}{}", self.prefix, key))
    }

    /// The lake-relative key of a store path.
    pub fn key_of(&self, path: &ObjPath) -> String {
        let s = path.as_ref();
        s.strip_prefix(self.prefix.as_str()).unwrap_or(s).to_owned()
    }

    /// Stores an object durably and atomically: when this returns, the whole object is
    /// readable and survives a crash.
    pub async fn put(&self, key: &str, data: Bytes) -> Result<()> {
        let path = self.path(key);
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(Error::store_at("put", key))?;
        self.sync_local(key).await
    }

    /// Reads a whole object.
    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key);
        let r = self
            .store
            .get(&path)
            .await
            .map_err(Error::store_at("get", key))?;
        r.bytes().await.map_err(Error::store_at("read", key))
    }

    /// Reads `len` bytes of an object from `start`.
    pub async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        let end = start.saturating_add(len);
        self.store
            .get_range(&self.path(key), start..end)
            .await
            .map_err(Error::store_at("get range", key))
    }

    /// Starts a multipart upload of `key`: parts are sent as they come and the object appears
    /// whole, atomically, when the upload completes (see [`Self::sync_local`] for durability).
    pub async fn upload(&self, key: &str) -> Result<Box<dyn object_store::MultipartUpload>> {
        self.store
            .put_multipart(&self.path(key))
            .await
            .map_err(Error::store_at("start upload", key))
    }

    /// Makes a stored object durable: on a local directory, fsyncs the file and its directory
    /// (a no-op on S3, where a completed PUT or upload is durable).
    pub async fn sync_local(&self, key: &str) -> Result<()> {
        if let Some(dir) = &self.local_dir {
            let file = dir.join(key);
            tokio::task::spawn_blocking(move || sync_file_and_dir(&file))
                .await
                .map_err(|e| Error::Config(format!("fsync task failed: {e}")))??;
        }
        Ok(())
    }

    /// Moves an object to another key, replacing what is there: an atomic rename on a local
    /// directory (then the target's directory is fsynced), a server-side copy and delete on
    /// S3 (the target appears whole).
    pub async fn rename(&self, from: &str, to: &str) -> Result<()> {
        self.store
            .rename(&self.path(from), &self.path(to))
            .await
            .map_err(Error::store_at("rename", from))?;
        self.sync_local(to).await
    }

    /// Deletes every object under `prefix`. On a local directory that is the whole directory
    /// (with files listings do not show, like unfinished uploads, and the empty directories
    /// renames leave behind); elsewhere each listed object.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let Some(dir) = &self.local_dir else {
            for (key, _) in self.list(prefix).await? {
                self.delete(&key).await?;
            }
            return Ok(());
        };
        let path = dir.join(prefix);
        tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::Io { path, source }),
        })
        .await
        .map_err(|e| Error::Config(format!("cleanup task failed: {e}")))?
    }

    /// Reads a whole object, `None` when it does not exist.
    pub async fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        let path = self.path(key);
        match self.store.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(Error::store_at("read", key))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(Error::store_at("get", key)(e)),
        }
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.store.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::store_at("head", key)(e)),
        }
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::store_at("delete", key)(e)),
        }
    }

    /// Every object under a lake-relative prefix (recursively), with lake-relative keys.
    pub async fn list(&self, prefix: &str) -> Result<Vec<(String, ObjectMeta)>> {
        let p = self.path(prefix);
        let metas: Vec<ObjectMeta> = self
            .store
            .list(Some(&p))
            .try_collect()
            .await
            .map_err(Error::store_at("list", prefix))?;
        let mut out: Vec<(String, ObjectMeta)> = metas
            .into_iter()
            .map(|m| (self.key_of(&m.location), m))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

fn sync_file_and_dir(file: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    std::fs::File::open(file)
        .and_then(|f| f.sync_all())
        .map_err(io(file))?;
    if let Some(dir) = file.parent() {
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}
