//! Opening a WAL: scanning its segments, truncating a torn tail, loading consumer
//! checkpoints, and starting the writer thread.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};

use crate::Wal;
use crate::checkpoint::{read_checkpoint, valid_consumer_name};
use crate::config::WalConfig;
use crate::error::{Error, Result, io_err};
use crate::format::{
    Bounded, FORMAT_VERSION, Frame, RECORD_HEADER_LEN, SEGMENT_HEADER_LEN, SPARE_NAME, Segment,
    create_segment, fsync_dir, parse_segment_header, read_frame, segment_path, write_zeros,
};
use crate::state::{Counters, Shared, State};
use crate::writer::Writer;

/// The end offset of the last non-zero byte of `f` in `[from, len)`, or `from` when that range
/// holds only zeros (a preallocated segment's unused tail).
fn dirty_end(f: &File, from: u64, len: u64) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    const CHUNK: usize = 1 << 20;
    let mut buf = vec![0u8; CHUNK];
    let zeros = vec![0u8; CHUNK];
    let mut off = from;
    let mut end = from;
    while off < len {
        let want = usize::try_from(len - off).map_or(CHUNK, |r| r.min(CHUNK));
        let got = f.read_at(&mut buf[..want], off)?;
        if got == 0 {
            break;
        }
        // A slice comparison (memcmp) first: the tail is megabytes of zeros.
        if buf[..got] != zeros[..got]
            && let Some(i) = buf[..got].iter().rposition(|b| *b != 0)
        {
            end = off + i as u64 + 1;
        }
        off += got as u64;
    }
    Ok(end)
}

/// Scans one segment. Returns `(end_seq, valid_bytes, torn, dirty_end)`: `torn` is
/// `Some(reason)` when the records end at `valid_bytes` in an invalid frame followed by bytes
/// that are not all zero, and those bytes end at `dirty_end`. Zeros after the last record are
/// a preallocated segment's unused tail, not a torn write.
pub(crate) fn scan_segment(
    path: &Path,
    first_seq: u64,
    max_len: usize,
) -> Result<(u64, u64, Option<String>, u64)> {
    let f = File::open(path).map_err(io_err(path))?;
    let file_len = f.metadata().map_err(io_err(path))?.len();
    let mut r = BufReader::with_capacity(
        1 << 20,
        Bounded {
            file: f,
            pos: 0,
            limit: file_len,
        },
    );
    r.seek(SeekFrom::Start(SEGMENT_HEADER_LEN as u64))
        .map_err(io_err(path))?;
    let mut seq = first_seq;
    let mut pos = SEGMENT_HEADER_LEN as u64;
    let mut scratch = Vec::new();
    loop {
        match read_frame(&mut r, max_len, seq, &mut scratch, |_, p| p.len())
            .map_err(io_err(path))?
        {
            Frame::Record(len) => {
                pos += (RECORD_HEADER_LEN + len) as u64;
                seq += 1;
            }
            Frame::End => return Ok((seq, pos, None, pos)),
            Frame::Bad(reason) => {
                let end = dirty_end(&r.get_ref().file, pos, file_len).map_err(io_err(path))?;
                let torn = (end > pos).then_some(reason);
                return Ok((seq, pos, torn, end));
            }
        }
    }
}

/// Estimate how many records a torn tail held: at least one when any bytes were cut.
fn torn_record_estimate(bytes: u64) -> u64 {
    u64::from(bytes > 0)
}

impl Wal {
    /// Opens (or creates) the WAL in `dir`, recovering from any crash: a torn tail is truncated
    /// and counted, consumer checkpoints are loaded.
    pub fn open(dir: impl AsRef<Path>, config: WalConfig) -> Result<Wal> {
        config.validate()?;
        let dir = dir.as_ref().to_path_buf();
        let seg_dir = dir.join("segments");
        let cons_dir = dir.join("consumers");
        fs::create_dir_all(&seg_dir).map_err(io_err(&seg_dir))?;
        fs::create_dir_all(&cons_dir).map_err(io_err(&cons_dir))?;

        let mut firsts = Vec::new();
        for entry in fs::read_dir(&seg_dir).map_err(io_err(&seg_dir))? {
            let entry = entry.map_err(io_err(&seg_dir))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".seg")
                && let Ok(first) = stem.parse::<u64>()
            {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut segments: Vec<Segment> = Vec::new();
        // Format version of the last segment (a new one is written in the current format).
        let mut last_version = FORMAT_VERSION;
        let mut torn_records = 0;
        let mut torn_bytes = 0;
        let count = firsts.len();
        for (i, first) in firsts.into_iter().enumerate() {
            let last = i + 1 == count;
            let path = segment_path(&dir, first);
            let mut header = [0u8; SEGMENT_HEADER_LEN];
            let header_ok = File::open(&path)
                .and_then(|mut f| f.read_exact(&mut header))
                .map_err(|e| e.to_string())
                .and_then(|()| parse_segment_header(&header));
            match header_ok {
                Ok((hfirst, version)) if hfirst == first => last_version = version,
                Ok((hfirst, _)) => {
                    return Err(Error::Corrupt {
                        path,
                        offset: 16,
                        reason: format!("header says first seq {hfirst}, name says {first}"),
                    });
                }
                Err(reason) if last => {
                    // A crash while creating the segment: nothing in it was ever acknowledged.
                    let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    tracing::warn!(path = %path.display(), %reason, "removing torn segment header");
                    torn_bytes += len;
                    torn_records +=
                        torn_record_estimate(len.saturating_sub(SEGMENT_HEADER_LEN as u64));
                    fs::remove_file(&path).map_err(io_err(&path))?;
                    fsync_dir(&seg_dir)?;
                    continue;
                }
                Err(reason) => {
                    return Err(Error::Corrupt {
                        path,
                        offset: 0,
                        reason,
                    });
                }
            }
            if let Some(prev) = segments.last()
                && prev.end_seq != first
            {
                return Err(Error::Corrupt {
                    path,
                    offset: 16,
                    reason: format!(
                        "segment starts at seq {first} but the previous one ends at {}",
                        prev.end_seq
                    ),
                });
            }
            let (end_seq, valid, torn, dirty) =
                scan_segment(&path, first, config.max_record_bytes)?;
            if let Some(reason) = torn {
                if !last {
                    return Err(Error::Corrupt {
                        path,
                        offset: valid,
                        reason,
                    });
                }
                let cut = dirty - valid;
                tracing::warn!(path = %path.display(), offset = valid, bytes = cut, %reason, "truncating torn wal tail");
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                f.set_len(valid).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                torn_bytes += cut;
                torn_records += torn_record_estimate(cut);
            }
            segments.push(Segment {
                first_seq: first,
                end_seq,
                bytes: valid,
                path,
            });
        }

        let mut consumers = BTreeMap::new();
        for entry in fs::read_dir(&cons_dir).map_err(io_err(&cons_dir))? {
            let entry = entry.map_err(io_err(&cons_dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".ckpt")
                && valid_consumer_name(stem)
            {
                let pos = read_checkpoint(&entry.path())?;
                consumers.insert(stem.to_string(), pos);
            }
        }

        let next_seq = segments.last().map_or(0, |s| s.end_seq);
        // A segment whose header was torn may have been the only one; restart its sequence
        // after the highest checkpoint so consumers never skip new records.
        let start = if segments.is_empty() {
            consumers.values().copied().max().unwrap_or(0)
        } else {
            next_seq
        };
        for pos in consumers.values_mut() {
            if *pos > start {
                tracing::warn!(
                    checkpoint = *pos,
                    next_seq = start,
                    "consumer checkpoint beyond the log end; clamping"
                );
                *pos = start;
            }
        }

        let (file, active) = match segments.last() {
            Some(s) => {
                let f = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&s.path)
                    .map_err(io_err(&s.path))?;
                (f, s.clone())
            }
            None => {
                let (f, s) = create_segment(&dir, start)?;
                segments.push(s.clone());
                (f, s)
            }
        };
        // A spare left by an earlier run may be half written: start afresh.
        let spare = seg_dir.join(SPARE_NAME);
        match fs::remove_file(&spare) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&spare)(e)),
        }
        // A version 1 segment is left to grow as written, so a build before preallocation can
        // still read it; the next segment is zero-filled.
        if config.preallocate && last_version >= 2 {
            let len = file.metadata().map_err(io_err(&active.path))?.len();
            if len < config.segment_bytes
                && let Err(e) = write_zeros(&file, len, config.segment_bytes)
            {
                // A disk too full for the zeros still takes records: the segment grows as
                // written instead (slower syncs), and the zeros that did land are cut off.
                tracing::warn!(path = %active.path.display(), error = %e, "wal: segment not preallocated");
                file.set_len(len).map_err(io_err(&active.path))?;
                file.sync_all().map_err(io_err(&active.path))?;
            }
        }

        let (durable, _) = watch::channel(active.end_seq);
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            config: config.clone(),
            state: Mutex::new(State {
                segments,
                consumers,
                gaps: Vec::new(),
            }),
            durable,
            poisoned: AtomicBool::new(false),
            counters: Counters::default(),
            torn_records,
            torn_bytes,
            read_cache: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel(config.queue_depth);
        let writer_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || {
                let mut w = Writer::new(writer_shared, file, active);
                w.start_spare();
                w.run(rx)
            })
            .map_err(io_err(&dir))?;
        Ok(Wal {
            shared,
            tx,
            writer: Arc::new(Mutex::new(Some(handle))),
        })
    }
}
