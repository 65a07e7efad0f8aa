//! The on-disk segment format: header, record framing and checksum, segment paths and
//! creation, the zero-filled preallocation, and reading a segment up to its durable bytes.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Result, io_err};

const SEGMENT_MAGIC: &[u8; 8] = b"EPWALSEG";

/// Segment format written. Version 2 segments may hold zeros after their last record (see
/// [`WalConfig::preallocate`]), which a build reading only version 1 would take for corruption;
/// the bump makes such a build refuse them by name instead.
///
/// [`WalConfig::preallocate`]: crate::WalConfig::preallocate
pub(crate) const FORMAT_VERSION: u32 = 2;
/// Oldest segment format still read (version 1: records up to the end of the file).
const OLDEST_FORMAT_VERSION: u32 = 1;
/// Bytes of a segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Bytes of framing before each record's payload.
pub const RECORD_HEADER_LEN: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub(crate) first_seq: u64,
    /// One past the last record in the segment.
    pub(crate) end_seq: u64,
    pub(crate) bytes: u64,
    pub(crate) path: PathBuf,
}

impl Segment {
    /// A segment holding its header and no record yet.
    pub(crate) fn empty(first_seq: u64, path: PathBuf) -> Self {
        Segment {
            first_seq,
            end_seq: first_seq,
            bytes: SEGMENT_HEADER_LEN as u64,
            path,
        }
    }
}

pub(crate) fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join("segments").join(format!("{first_seq:020}.seg"))
}

pub(crate) fn fsync_dir(path: &Path) -> Result<()> {
    crate::durable::fsync_dir(path).map_err(io_err(path))
}

/// A segment file open for reading: its first sequence, the buffered file and its path.
pub(crate) type OpenSegment = (u64, BufReader<Bounded>, PathBuf);

/// A segment file read up to `limit`: the bytes known to hold durable records. Beyond it lie
/// the zeros of a preallocated segment, or records still on their way to disk.
#[derive(Debug)]
pub(crate) struct Bounded {
    pub(crate) file: File,
    pub(crate) pos: u64,
    pub(crate) limit: u64,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let room = usize::try_from(self.limit.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let n = buf.len().min(room);
        if n == 0 {
            return Ok(0);
        }
        let got = self.file.read_at(&mut buf[..n], self.pos)?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl Seek for Bounded {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let (base, delta) = match to {
            SeekFrom::Start(p) => (p, 0),
            SeekFrom::Current(d) => (self.pos, d),
            SeekFrom::End(d) => (self.limit, d),
        };
        self.pos = base.checked_add_signed(delta).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek before the file start")
        })?;
        Ok(self.pos)
    }
}

/// File name of the spare segment a background thread fills with zeros.
pub(crate) const SPARE_NAME: &str = "spare.prealloc";

/// Writes zeros from `from` to `to` with positioned writes, then syncs data and size.
pub(crate) fn write_zeros(f: &File, from: u64, to: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut off = from;
    while off < to {
        let n = usize::try_from(to - off).map_or(zeros.len(), |r| r.min(zeros.len()));
        f.write_all_at(&zeros[..n], off)?;
        off += n as u64;
    }
    f.sync_all()
}

pub(crate) fn segment_header(first_seq: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// `(first_seq, format version)` of a segment header.
pub(crate) fn parse_segment_header(
    h: &[u8; SEGMENT_HEADER_LEN],
) -> std::result::Result<(u64, u32), String> {
    if &h[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic".into());
    }
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if crc != crc32c::crc32c(&h[0..24]) {
        return Err("segment header checksum mismatch".into());
    }
    let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "segment format version {version}, this build reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}"
        ));
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&h[16..24]);
    Ok((u64::from_le_bytes(s), version))
}

fn record_crc(seq: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&seq.to_le_bytes()), payload)
}

pub(crate) fn encode_record(buf: &mut Vec<u8>, seq: u64, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&record_crc(seq, payload).to_le_bytes());
    buf.extend_from_slice(&seq.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Outcome of reading one record frame: `f`'s result for a good record.
pub(crate) enum Frame<R> {
    Record(R),
    /// Clean end of file.
    End,
    /// Short or invalid frame: the reason.
    Bad(String),
}

/// Reads one frame, checks its length limit, checksum and sequence, and hands `(seq, payload)`
/// to `f`. A frame that lies whole in the reader's buffer (the common case) is passed in place,
/// without allocating or copying; one that straddles a refill is assembled in `scratch` (reused
/// across calls). Recovery, readers and consumers all read frames through this one function.
pub(crate) fn read_frame<B: BufRead, R>(
    r: &mut B,
    max_len: usize,
    expect_seq: u64,
    scratch: &mut Vec<u8>,
    f: impl FnOnce(u64, &[u8]) -> R,
) -> io::Result<Frame<R>> {
    let check = |crc: u32, seq: u64, payload: &[u8]| -> Option<String> {
        if crc != record_crc(seq, payload) {
            return Some("record checksum mismatch".into());
        }
        if seq != expect_seq {
            return Some(format!("record sequence {seq}, expected {expect_seq}"));
        }
        None
    };
    let buf = r.fill_buf()?;
    if buf.is_empty() {
        return Ok(Frame::End);
    }
    if let Some(head) = buf.get(..RECORD_HEADER_LEN) {
        let (len, crc, seq) = parse_record_header(head);
        if len > max_len {
            return Ok(Frame::Bad(format!(
                "record length {len} exceeds limit {max_len}"
            )));
        }
        if let Some(payload) = buf.get(RECORD_HEADER_LEN..RECORD_HEADER_LEN + len) {
            if let Some(bad) = check(crc, seq, payload) {
                return Ok(Frame::Bad(bad));
            }
            let out = f(seq, payload);
            r.consume(RECORD_HEADER_LEN + len);
            return Ok(Frame::Record(out));
        }
    }
    // The frame straddles the end of the buffer: read it piecewise.
    let mut head = [0u8; RECORD_HEADER_LEN];
    if let Err(e) = r.read_exact(&mut head) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(Frame::Bad("short record header".into()))
        } else {
            Err(e)
        };
    }
    let (len, crc, seq) = parse_record_header(&head);
    if len > max_len {
        return Ok(Frame::Bad(format!(
            "record length {len} exceeds limit {max_len}"
        )));
    }
    scratch.clear();
    scratch.resize(len, 0);
    if let Err(e) = r.read_exact(scratch) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(Frame::Bad("short record payload".into()))
        } else {
            Err(e)
        };
    }
    if let Some(bad) = check(crc, seq, scratch) {
        return Ok(Frame::Bad(bad));
    }
    Ok(Frame::Record(f(seq, scratch)))
}

/// `(payload length, crc, seq)` of a record header.
fn parse_record_header(head: &[u8]) -> (usize, u32, u64) {
    let word = |i: usize| [head[i], head[i + 1], head[i + 2], head[i + 3]];
    let len = u32::from_le_bytes(word(0)) as usize;
    let crc = u32::from_le_bytes(word(4));
    let seq = u64::from_le_bytes([
        head[8], head[9], head[10], head[11], head[12], head[13], head[14], head[15],
    ]);
    (len, crc, seq)
}

pub(crate) fn create_segment(dir: &Path, first_seq: u64) -> Result<(File, Segment)> {
    let path = segment_path(dir, first_seq);
    let mut f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    f.write_all(&segment_header(first_seq))
        .map_err(io_err(&path))?;
    f.sync_all().map_err(io_err(&path))?;
    fsync_dir(&dir.join("segments"))?;
    Ok((f, Segment::empty(first_seq, path)))
}
