//! Consumer checkpoint files: the name rule, the encoding, and the atomic replace.

use std::fs;
use std::path::Path;

use crate::error::{Error, Result, io_err};

const CHECKPOINT_MAGIC: &[u8; 8] = b"EPWALCKP";

pub(crate) fn valid_consumer_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn read_checkpoint(path: &Path) -> Result<u64> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    if bytes.len() != 20 || &bytes[0..8] != CHECKPOINT_MAGIC {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: "bad checkpoint file".into(),
        });
    }
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc != crc32c::crc32c(&bytes[0..16]) {
        return Err(Error::Corrupt {
            path: path.to_path_buf(),
            offset: 16,
            reason: "checkpoint checksum mismatch".into(),
        });
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&bytes[8..16]);
    Ok(u64::from_le_bytes(s))
}

pub(crate) fn write_checkpoint(dir: &Path, name: &str, next_seq: u64) -> Result<()> {
    let path = dir.join("consumers").join(format!("{name}.ckpt"));
    let mut bytes = Vec::with_capacity(20);
    bytes.extend_from_slice(CHECKPOINT_MAGIC);
    bytes.extend_from_slice(&next_seq.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
    crate::durable::replace_file(&path, &bytes).map_err(io_err(&path))
}
