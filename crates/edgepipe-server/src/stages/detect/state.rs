//! The stage's snapshot file: detector state, WAL position, silence clock and the last
//! operator feedback applied, versioned (version 1 files still load).

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StateFile {
    pub(crate) version: u32,
    pub(crate) next_seq: u64,
    pub(crate) silence_clock: i64,
    pub(crate) detector: Vec<u8>,
    /// Last operator feedback id applied (version 2 on).
    pub(crate) feedback_pos: i64,
}

/// Version 1 had no `feedback_pos`.
#[derive(Debug, Deserialize)]
pub(crate) struct StateFileV1 {
    pub(crate) version: u32,
    pub(crate) next_seq: u64,
    pub(crate) silence_clock: i64,
    pub(crate) detector: Vec<u8>,
}

pub(crate) const STATE_VERSION: u32 = 2;

pub(crate) fn decode_state(bytes: &[u8]) -> Result<StateFile, String> {
    let (version, _) = postcard::take_from_bytes::<u32>(bytes).map_err(|e| e.to_string())?;
    match version {
        1 => {
            let v1: StateFileV1 = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
            Ok(StateFile {
                version: v1.version,
                next_seq: v1.next_seq,
                silence_clock: v1.silence_clock,
                detector: v1.detector,
                feedback_pos: 0,
            })
        }
        STATE_VERSION => postcard::from_bytes(bytes).map_err(|e| e.to_string()),
        v => Err(format!(
            "state version {v} is newer than this binary's {STATE_VERSION}"
        )),
    }
}
