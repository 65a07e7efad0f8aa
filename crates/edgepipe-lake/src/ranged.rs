//! Blocking, bounded-memory access to lake objects for code that runs on a thread of its own
//! (compaction): [`RangeReader`] lets the Parquet reader fetch the byte ranges it needs instead
//! of the whole object, and [`UploadSink`] streams a Parquet writer's output to the store in
//! parts instead of holding the whole file.
//!
//! Both drive the store's futures with [`tokio::runtime::Handle::block_on`], so they must be used
//! from a thread that is not a runtime worker (compaction runs on its own thread).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use object_store::{MultipartUpload, PutPayload};
use parquet::errors::ParquetError;
use parquet::file::reader::{ChunkReader, Length};
use tokio::runtime::Handle;

use crate::store::LakeStore;
use crate::{Error, Result};

/// Reads smaller than this (page headers, small pages, the footer) fetch a window of this
/// size, kept for the reads that follow: the page data sits right after its header, and the
/// next page of the column right after it. A read at the end of the object (the footer)
/// fetches the window that ends there, with the metadata.
const WINDOW: u64 = 256 * 1024;

/// Windows kept per object, least recently used replaced: the Parquet reader decodes all the
/// columns of a row group side by side, so each column's pages need a window of their own.
/// At most `MAX_WINDOWS * WINDOW` (4 MiB) per object being read.
const MAX_WINDOWS: usize = 16;

/// Objects up to this size are fetched whole, once, and kept (a flush file of a quiet hour):
/// one request instead of one per page.
const WHOLE: u64 = 1024 * 1024;

/// How much a [`SequentialRead`] takes from the window at a time.
const SEQUENTIAL_STEP: u64 = 4 * 1024;

/// An object read through ranged requests. Holds at most [`MAX_WINDOWS`] windows of
/// [`WINDOW`] bytes between calls (or the whole object, up to [`WHOLE`] bytes); larger reads
/// (whole pages) are fetched as asked and not kept.
#[derive(Debug, Clone)]
pub(crate) struct RangeReader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: LakeStore,
    key: String,
    len: u64,
    handle: Handle,
    /// Windows fetched: start, bytes and when last used.
    windows: Mutex<Windows>,
    /// Bytes fetched so far (tests check that a reader does not fetch whole files twice).
    fetched: std::sync::atomic::AtomicU64,
}

impl RangeReader {
    /// A reader of `key`, `len` bytes long (from the listing).
    pub(crate) fn new(store: LakeStore, key: String, len: u64, handle: Handle) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                key,
                len,
                handle,
                windows: Mutex::new(Windows::default()),
                fetched: std::sync::atomic::AtomicU64::new(0),
            }),
        }
    }

    /// Bytes fetched from the store so far.
    #[cfg(test)]
    pub(crate) fn fetched(&self) -> u64 {
        self.inner
            .fetched
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `len` bytes from `start`; a range past the listed end is an error.
    fn read_at(&self, start: u64, len: u64) -> std::result::Result<Bytes, ParquetError> {
        let i = &self.inner;
        let end = start.saturating_add(len);
        if end > i.len {
            return Err(ParquetError::EOF(format!(
                "{}: {len} bytes at {start} asked of a {}-byte object",
                i.key, i.len
            )));
        }
        if start >= end {
            return Ok(Bytes::new());
        }
        if let Some(hit) = i.windows.lock().map_err(|_| poisoned())?.get(start, end) {
            return Ok(hit);
        }
        let want = end - start;
        // What to fetch: the whole (small) object, a window around a small read, or exactly
        // a large read.
        let (from, fetch, keep) = if i.len <= WHOLE {
            (0, i.len, true)
        } else if want < WINDOW {
            let from = if end == i.len {
                i.len - WINDOW
            } else {
                start.min(i.len - WINDOW)
            };
            (from, WINDOW, true)
        } else {
            (start, want, false)
        };
        let data = i
            .handle
            .block_on(i.store.get_range(&i.key, from, fetch))
            .map_err(|e| ParquetError::External(Box::new(e)))?;
        i.fetched
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
        if (data.len() as u64) < fetch {
            return Err(ParquetError::EOF(format!(
                "{}: object shorter than listed ({} bytes at {from}, {fetch} expected)",
                i.key,
                data.len(),
            )));
        }
        let at = (start - from) as usize;
        let out = data.slice(at..at + want as usize);
        if keep {
            i.windows.lock().map_err(|_| poisoned())?.insert(from, data);
        }
        Ok(out)
    }
}

/// The windows a [`RangeReader`] keeps.
#[derive(Debug, Default)]
struct Windows {
    kept: Vec<(u64, Bytes, u64)>,
    clock: u64,
}

impl Windows {
    /// Bytes `[start, end)` if a window holds them.
    fn get(&mut self, start: u64, end: u64) -> Option<Bytes> {
        self.clock += 1;
        let now = self.clock;
        let (from, data, used) = self
            .kept
            .iter_mut()
            .find(|(from, data, _)| *from <= start && end <= *from + data.len() as u64)?;
        *used = now;
        let at = (start - *from) as usize;
        Some(data.slice(at..at + (end - start) as usize))
    }

    /// Keeps a window, replacing the least recently used one when full.
    fn insert(&mut self, from: u64, data: Bytes) {
        self.clock += 1;
        let entry = (from, data, self.clock);
        if self.kept.len() < MAX_WINDOWS {
            self.kept.push(entry);
        } else if let Some(lru) = self.kept.iter_mut().min_by_key(|w| w.2) {
            *lru = entry;
        }
    }
}

fn poisoned() -> ParquetError {
    ParquetError::General("range reader lock poisoned".into())
}

impl Length for RangeReader {
    fn len(&self) -> u64 {
        self.inner.len
    }
}

impl ChunkReader for RangeReader {
    type T = SequentialRead;

    fn get_read(&self, start: u64) -> std::result::Result<SequentialRead, ParquetError> {
        Ok(SequentialRead {
            reader: self.clone(),
            pos: start,
            buf: Bytes::new(),
        })
    }

    fn get_bytes(&self, start: u64, length: usize) -> std::result::Result<Bytes, ParquetError> {
        self.read_at(start, length as u64)
    }
}

/// A [`Read`] from an offset to the end of the object, a few KiB at a time through the
/// reader's window (the Parquet reader uses it for page headers, a few hundred bytes, and then
/// asks for the page's data, which the same window often holds).
#[derive(Debug)]
pub(crate) struct SequentialRead {
    reader: RangeReader,
    pos: u64,
    buf: Bytes,
}

impl Read for SequentialRead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() {
            let left = self.reader.inner.len.saturating_sub(self.pos);
            if left == 0 || out.is_empty() {
                return Ok(0);
            }
            self.buf = self
                .reader
                .read_at(self.pos, SEQUENTIAL_STEP.min(left))
                .map_err(std::io::Error::other)?;
            self.pos += self.buf.len() as u64;
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

/// Size of the parts an [`UploadSink`] sends (S3 wants at least 5 MiB but the last).
pub(crate) const PART_BYTES: usize = 8 * 1024 * 1024;

/// A [`Write`] that streams to a multipart upload of one object, a part at a time: at most one
/// part is held. Nothing is visible under the key until [`UploadSink::finish`]; dropping an
/// unfinished sink abandons the upload (the store cleans up what it staged).
pub(crate) struct UploadSink {
    store: LakeStore,
    key: String,
    handle: Handle,
    upload: Option<Box<dyn MultipartUpload>>,
    buf: Vec<u8>,
    part_bytes: usize,
    written: u64,
}

impl std::fmt::Debug for UploadSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadSink")
            .field("key", &self.key)
            .field("written", &self.written)
            .finish()
    }
}

impl UploadSink {
    /// Starts the upload of `key`.
    pub(crate) fn create(store: LakeStore, key: String, handle: Handle) -> Result<Self> {
        let upload = handle.block_on(store.upload(&key))?;
        Ok(Self {
            store,
            key,
            handle,
            upload: Some(upload),
            buf: Vec::new(),
            part_bytes: PART_BYTES,
            written: 0,
        })
    }

    /// Sends the buffered bytes as one part.
    fn send_part(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(up) = self.upload.as_mut() else {
            return Err(std::io::Error::other(format!(
                "{}: upload already finished",
                self.key
            )));
        };
        let part = PutPayload::from(std::mem::take(&mut self.buf));
        let sent = up.put_part(part);
        self.handle
            .block_on(sent)
            .map_err(|e| std::io::Error::other(format!("{}: upload part: {e}", self.key)))
    }

    /// Sends the last part, completes the upload (the object appears whole) and makes it
    /// durable. Returns the object's size.
    pub(crate) fn finish(mut self) -> Result<u64> {
        self.send_part().map_err(|source| Error::Io {
            path: self.key.clone().into(),
            source,
        })?;
        let Some(mut up) = self.upload.take() else {
            return Err(Error::Config(format!(
                "{}: upload already finished",
                self.key
            )));
        };
        let key = self.key.clone();
        if let Err(e) = self.handle.block_on(up.complete()) {
            if let Err(a) = self.handle.block_on(up.abort()) {
                tracing::warn!(key, error = %a, "lake: could not abort a failed upload");
            }
            return Err(Error::Store {
                op: "complete upload",
                key,
                source: e,
            });
        }
        self.handle.block_on(self.store.sync_local(&key))?;
        Ok(self.written)
    }
}

impl Write for UploadSink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.written += data.len() as u64;
        if self.buf.len() >= self.part_bytes {
            self.send_part()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Parts are sent when full (a short part in the middle is refused by S3).
        Ok(())
    }
}

impl Drop for UploadSink {
    fn drop(&mut self) {
        // Not while unwinding: waiting on the runtime then could panic again (and abort the
        // process); a local store removes its own staging file, S3 leaves an incomplete
        // upload for the bucket's lifecycle rule.
        if std::thread::panicking() {
            return;
        }
        if let Some(mut up) = self.upload.take() {
            let key = self.key.clone();
            if let Err(e) = self.handle.block_on(up.abort()) {
                tracing::warn!(key, error = %e, "lake: could not abort an unfinished upload");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

    /// A runtime for the store's futures (the code under test blocks on it from a thread of
    /// its own, as compaction does) and a local lake in a temporary directory.
    fn local_lake() -> TestResult<(tokio::runtime::Runtime, tempfile::TempDir, LakeStore)> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let dir = tempfile::tempdir()?;
        let store = LakeStore::local(dir.path())?;
        Ok((rt, dir, store))
    }

    /// Everything from `start` to the end of the object, read sequentially.
    fn read_from(r: &RangeReader, start: u64) -> std::result::Result<Vec<u8>, String> {
        let mut out = Vec::new();
        r.get_read(start)
            .map_err(|e| e.to_string())?
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn ranges_and_sequential_reads_see_the_object() -> TestResult {
        let (rt, _dir, store) = local_lake()?;
        const LEN: usize = 6_000_000;
        let data: Vec<u8> = (0..LEN as u32).map(|i| (i * 7 % 251) as u8).collect();
        rt.block_on(store.put("t/obj.bin", Bytes::from(data.clone())))?;
        let small: Vec<u8> = data[..300_000].to_vec();
        rt.block_on(store.put("t/small.bin", Bytes::from(small.clone())))?;
        let handle = rt.handle().clone();
        let r = std::thread::spawn(move || -> std::result::Result<(), String> {
            let e = |e: ParquetError| e.to_string();
            let r = RangeReader::new(
                store.clone(),
                "t/obj.bin".into(),
                LEN as u64,
                handle.clone(),
            );
            // The footer, then the metadata before it: one window ending at the end.
            let n = LEN as u64;
            assert_eq!(r.get_bytes(n - 8, 8).map_err(e)?, data[LEN - 8..]);
            assert_eq!(
                r.get_bytes(n - 8 - 5_000, 5_000).map_err(e)?,
                data[LEN - 5_008..LEN - 8]
            );
            assert_eq!(r.fetched(), WINDOW);
            // A small read, then one inside the window it fetched.
            assert_eq!(r.get_bytes(10, 100).map_err(e)?, data[10..110]);
            assert_eq!(r.get_bytes(1_000, 5_000).map_err(e)?, data[1_000..6_000]);
            assert_eq!(r.fetched(), 2 * WINDOW);
            // A large read is fetched as asked and not kept.
            assert_eq!(
                r.get_bytes(1_000_000, 500_000).map_err(e)?,
                data[1_000_000..1_500_000]
            );
            assert_eq!(r.fetched(), 2 * WINDOW + 500_000);
            // Both windows are still kept: reading the footer again fetches nothing.
            assert_eq!(r.get_bytes(n - 8, 8).map_err(e)?, data[LEN - 8..]);
            assert_eq!(r.fetched(), 2 * WINDOW + 500_000);
            // More windows than are kept: the least recently used goes, the others stay.
            // (Two windows are kept; 14 more fill the cache, the 15th replaces one.)
            for k in 0..MAX_WINDOWS as u64 - 1 {
                r.get_bytes(1_600_000 + k * (WINDOW + 1), 10).map_err(e)?;
            }
            let before = r.fetched();
            r.get_bytes(n - 8, 8).map_err(e)?;
            assert_eq!(
                r.fetched(),
                before,
                "the footer window was used last among the first two"
            );
            r.get_bytes(10, 100).map_err(e)?;
            assert_eq!(
                r.fetched(),
                before + WINDOW,
                "the window at 10 was the least recently used"
            );
            // A sequential read to the end, through windows.
            assert_eq!(read_from(&r, 5_900_000)?, data[5_900_000..]);
            // Past the listed end: an error, not a short answer or a panic.
            assert!(r.get_bytes(n - 10, 20).is_err());
            // An object shorter than listed: an error.
            let short = RangeReader::new(
                store.clone(),
                "t/obj.bin".into(),
                n + 100_000,
                handle.clone(),
            );
            assert!(short.get_bytes(n - 1_000, 100_000).is_err());
            // A small object is fetched once, whole, whatever is read of it.
            let s = RangeReader::new(store, "t/small.bin".into(), 300_000, handle);
            assert_eq!(s.get_bytes(299_992, 8).map_err(e)?, small[299_992..]);
            assert_eq!(s.get_bytes(0, 200_000).map_err(e)?, small[..200_000]);
            assert_eq!(read_from(&s, 123_456)?, small[123_456..]);
            assert_eq!(s.fetched(), 300_000);
            Ok(())
        })
        .join()
        .map_err(|_| "reader thread panicked")?;
        r.map_err(|e| e.into())
    }

    #[test]
    fn an_upload_appears_whole_only_when_finished() -> TestResult {
        let (rt, dir, store) = local_lake()?;
        let handle = rt.handle().clone();
        let s2 = store.clone();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let expected = data.clone();
        let size = std::thread::spawn(move || -> Result<u64> {
            let mut sink = UploadSink::create(s2.clone(), "t/up.bin".into(), handle.clone())?;
            sink.part_bytes = 100_000;
            for chunk in data.chunks(33_333) {
                sink.write_all(chunk)
                    .map_err(|e| Error::Config(e.to_string()))?;
            }
            assert!(
                !handle.block_on(s2.exists("t/up.bin"))?,
                "visible before finish"
            );
            let size = sink.finish()?;
            // An abandoned upload leaves nothing.
            let mut gone = UploadSink::create(s2.clone(), "t/gone.bin".into(), handle.clone())?;
            gone.part_bytes = 10;
            gone.write_all(b"0123456789abcdef")
                .map_err(|e| Error::Config(e.to_string()))?;
            drop(gone);
            Ok(size)
        })
        .join()
        .map_err(|_| "upload thread panicked")??;
        assert_eq!(size, 1_000_000);
        assert_eq!(rt.block_on(store.get("t/up.bin"))?, expected);
        assert!(!rt.block_on(store.exists("t/gone.bin"))?);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("t"))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::result::Result<_, _>>()?;
        assert_eq!(left, vec![std::ffi::OsString::from("up.bin")]);
        Ok(())
    }

    /// moto's S3 server (pip `moto[server]`, installed by `.ci/run`), killed on drop.
    struct Moto(std::process::Child);

    impl Drop for Moto {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A bucket on a moto server of its own and a store on it under a prefix.
    fn s3_lake() -> TestResult<(tokio::runtime::Runtime, Moto, LakeStore, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let moto = Moto(
            std::process::Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("moto_server (pip moto[server], from .ci/run): {e}"))?,
        );
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let made = std::process::Command::new("curl")
                .args(["-sf", "-X", "PUT", &format!("{endpoint}/parts")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if made {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err("moto did not start or refused the bucket".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let s3 = crate::S3Config {
            endpoint: endpoint.clone(),
            access_key_id: "test".into(),
            secret_access_key: "test".into(),
            allow_http: true,
            ..Default::default()
        };
        let store = LakeStore::open("s3://parts/lake", &s3)?;
        Ok((rt, moto, store, endpoint))
    }

    /// The real part size against a real S3 API: an object of three parts (two full 8 MiB
    /// parts and a short last one) appears whole only when finished, reads back byte for byte
    /// through ranged requests, and an abandoned upload leaves no object.
    #[test]
    fn a_multipart_upload_on_s3_compatible_storage() -> TestResult {
        let (rt, _moto, store, endpoint) = s3_lake()?;
        let handle = rt.handle().clone();
        let len = 2 * PART_BYTES + 1_234_567;
        // Bytes that differ from part to part, so a part sent twice or out of order shows.
        let data: Vec<u8> = (0..len as u64)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let expected = data.clone();
        let s2 = store.clone();
        let checked = std::thread::spawn(move || -> std::result::Result<u64, String> {
            let e = |e: Error| e.to_string();
            let mut sink = UploadSink::create(s2.clone(), "t/big.parquet".into(), handle.clone())
                .map_err(e)?;
            for chunk in data.chunks(1_000_003) {
                sink.write_all(chunk).map_err(|e| e.to_string())?;
            }
            if handle.block_on(s2.exists("t/big.parquet")).map_err(e)? {
                return Err("the object was visible before the upload finished".into());
            }
            let size = sink.finish().map_err(e)?;
            // Ranged reads across part boundaries, as compaction reads its inputs.
            let r = RangeReader::new(s2.clone(), "t/big.parquet".into(), size, handle.clone());
            let pe = |e: ParquetError| e.to_string();
            let at = PART_BYTES as u64 - 100;
            if r.get_bytes(at, 300).map_err(pe)? != data[at as usize..at as usize + 300] {
                return Err("a range across the first part boundary differs".into());
            }
            if read_from(&r, 2 * PART_BYTES as u64 - 5)? != data[2 * PART_BYTES - 5..] {
                return Err("the sequential read over the last part boundary differs".into());
            }
            // An upload abandoned after a full part leaves nothing under its key.
            let mut gone = UploadSink::create(s2.clone(), "t/gone.parquet".into(), handle.clone())
                .map_err(e)?;
            gone.write_all(&data[..PART_BYTES + 10])
                .map_err(|e| e.to_string())?;
            drop(gone);
            if handle.block_on(s2.exists("t/gone.parquet")).map_err(e)? {
                return Err("an abandoned upload left an object".into());
            }
            Ok(size)
        })
        .join()
        .map_err(|_| "upload thread panicked")??;
        assert_eq!(checked, len as u64);
        let back = rt.block_on(store.get("t/big.parquet"))?;
        assert_eq!(back.len(), expected.len());
        assert!(back == expected, "the object read back differs");
        let listed = rt.block_on(store.list("t/"))?;
        let keys: Vec<&str> = listed.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["t/big.parquet"], "{listed:?}");
        // The abandoned upload was aborted, not left pending on the server (an unfinished
        // multipart upload is invisible to listings of objects but holds its parts).
        let pending = std::process::Command::new("curl")
            .args(["-sf", &format!("{endpoint}/parts?uploads")])
            .output()?;
        assert!(
            pending.status.success(),
            "listing the multipart uploads failed"
        );
        let text = String::from_utf8_lossy(&pending.stdout);
        assert!(text.contains("ListMultipartUploadsResult"), "{text}");
        assert!(!text.contains("<Upload>"), "uploads left pending: {text}");
        Ok(())
    }
}
