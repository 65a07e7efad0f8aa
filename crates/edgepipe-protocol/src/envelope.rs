//! The agent's binary batch envelope.
//!
//! ```text
//! b"EPB" | version: u8 = 1 | header_len: u16 big-endian | header: JSON | body
//! header = {"source": "...", "stream": "...", "seq": 42, "compression": "none" | "lz4" | "zstd"}
//! body   = JSON array of reading objects, lz4-compressed (block format, 4-byte little-endian
//!          uncompressed size prepended) or zstd-compressed (one standard zstd frame) when the
//!          header says so
//! ```
//!
//! `(source, stream, seq)` is the batch's identity ([`BatchOrigin`]): the server deduplicates
//! replays of the same triple. The body uses the same reading objects as plain JSON payloads,
//! so the same validation applies. Decompression is capped at [`MAX_DECOMPRESSED_LEN`]: a
//! crafted size prefix is an error, not a 4 GiB allocation, and a zstd frame is decoded as a
//! stream that stops at the cap (its announced content size is never trusted for allocation).

use edgepipe_types::{BatchOrigin, DeviceId, Reading};
use serde::{Deserialize, Serialize};

use crate::{Decoded, Error, Limits, Result, json, validate};

/// First three bytes of every envelope.
pub const MAGIC: &[u8; 3] = b"EPB";
/// Envelope format version this build writes and reads.
pub const VERSION: u8 = 1;
/// Largest decompressed body accepted, in bytes.
pub const MAX_DECOMPRESSED_LEN: usize = 64 * 1024 * 1024;
/// zstd level used by [`encode`]: level 3 is zstd's default balance of speed and ratio.
const ZSTD_LEVEL: i32 = 3;

/// Body compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Body stored as is.
    #[default]
    None,
    /// lz4 block format with the uncompressed size prepended (4 bytes, little-endian).
    Lz4,
    /// One zstd frame (level 3); what the edge agent sends.
    Zstd,
}

impl Compression {
    /// The header spelling: `"none"` or `"lz4"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    source: String,
    stream: String,
    seq: u64,
    compression: String,
}

/// Encodes a batch. Infallible for any origin whose header fits 65535 bytes (a `source` and
/// `stream` within [`Limits::max_string_len`] always do); see [`try_encode`] for the checked form.
/// An origin that does not fit yields an envelope with an empty header, which every decoder
/// refuses, rather than a panic.
///
/// Every reading is written with its `ts`, so readings decode as [`TsSource::Device`]
/// (an agent's timestamp is the reading's identity from then on).
///
/// [`TsSource::Device`]: edgepipe_types::TsSource::Device
pub fn encode(origin: &BatchOrigin, readings: &[Reading], compression: Compression) -> Vec<u8> {
    match try_encode(origin, readings, compression) {
        Ok(bytes) => bytes,
        Err(_) => {
            let mut out = MAGIC.to_vec();
            out.extend_from_slice(&[VERSION, 0, 0]);
            out
        }
    }
}

/// Encodes a batch, failing with [`Error::HeaderTooLong`] if the header exceeds 65535 bytes.
pub fn try_encode(
    origin: &BatchOrigin,
    readings: &[Reading],
    compression: Compression,
) -> Result<Vec<u8>> {
    let header = serde_json::to_vec(&Header {
        source: origin.source.clone(),
        stream: origin.stream.clone(),
        seq: origin.seq,
        compression: compression.as_str().to_owned(),
    })
    .map_err(Error::EnvelopeHeader)?;
    let header_len =
        u16::try_from(header.len()).map_err(|_| Error::HeaderTooLong { len: header.len() })?;
    let body = json::write_readings(readings);
    let body = match compression {
        Compression::None => body,
        Compression::Lz4 => lz4_flex::block::compress_prepend_size(&body),
        Compression::Zstd => {
            zstd::bulk::compress(&body, ZSTD_LEVEL).map_err(|e| Error::Compress {
                reason: e.to_string(),
            })?
        }
    };
    let mut out = Vec::with_capacity(6 + header.len() + body.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes an envelope. All or nothing, like [`crate::decode_payload`] (which calls this for
/// payloads starting with [`MAGIC`]).
pub fn decode(payload: &[u8], now_ms: i64, limits: &Limits) -> Result<Decoded> {
    decode_inner(payload, now_ms, limits, None)
}

pub(crate) fn decode_inner(
    payload: &[u8],
    now_ms: i64,
    limits: &Limits,
    device: Option<&DeviceId>,
) -> Result<Decoded> {
    let Some((preamble, rest)) = payload.split_at_checked(6) else {
        if !MAGIC.starts_with(&payload[..payload.len().min(3)]) {
            return Err(Error::BadMagic {
                found: payload[..payload.len().min(3)].to_vec(),
            });
        }
        return Err(Error::Truncated {
            part: "preamble",
            needed: 6,
            available: payload.len(),
        });
    };
    if &preamble[..3] != MAGIC {
        return Err(Error::BadMagic {
            found: preamble[..3].to_vec(),
        });
    }
    if preamble[3] != VERSION {
        return Err(Error::UnsupportedEnvelopeVersion {
            found: preamble[3],
            supported: VERSION,
        });
    }
    let header_len = usize::from(u16::from_be_bytes([preamble[4], preamble[5]]));
    let Some((header, body)) = rest.split_at_checked(header_len) else {
        return Err(Error::Truncated {
            part: "header",
            needed: header_len,
            available: rest.len(),
        });
    };
    let header: Header = serde_json::from_slice(header).map_err(Error::EnvelopeHeader)?;
    for (field, value) in [("source", &header.source), ("stream", &header.stream)] {
        if value.is_empty() {
            return Err(Error::EmptyOriginField { field });
        }
        validate::check_str(|| format!("envelope {field}"), value, limits)?;
    }
    let decompressed;
    let body = match header.compression.as_str() {
        "none" => body,
        "lz4" => {
            decompressed = decompress(body)?;
            &decompressed[..]
        }
        "zstd" => {
            decompressed = decompress_zstd(body, MAX_DECOMPRESSED_LEN)?;
            &decompressed[..]
        }
        _ => {
            return Err(Error::UnknownCompression {
                found: header.compression,
            });
        }
    };
    if json::first_non_ws(body) != Some(b'[') {
        return Err(Error::NotAnObject {
            found: "something other than an array as the envelope body",
        });
    }
    let readings = json::decode_bytes(body, now_ms, limits, device, 0)?;
    Ok(Decoded {
        origin: Some(BatchOrigin {
            source: header.source,
            stream: header.stream,
            seq: header.seq,
        }),
        readings,
    })
}

fn decompress(body: &[u8]) -> Result<Vec<u8>> {
    let Some((size, block)) = body.split_first_chunk::<4>() else {
        return Err(Error::Truncated {
            part: "lz4 size prefix",
            needed: 4,
            available: body.len(),
        });
    };
    let size = u32::from_le_bytes(*size);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_DECOMPRESSED_LEN {
        return Err(Error::DecompressedTooLarge {
            size,
            limit: MAX_DECOMPRESSED_LEN,
        });
    }
    let mut out = vec![0u8; size];
    let written =
        lz4_flex::block::decompress_into(block, &mut out).map_err(|e| Error::Decompress {
            reason: e.to_string(),
        })?;
    if written != size {
        return Err(Error::Decompress {
            reason: format!("size prefix says {size} bytes, block holds {written}"),
        });
    }
    Ok(out)
}

/// Decodes one zstd frame as a stream, refusing output beyond `limit` bytes without ever
/// allocating more than it has decoded.
fn decompress_zstd(body: &[u8], limit: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let decoder =
        zstd::stream::read::Decoder::with_buffer(body).map_err(|e| Error::Decompress {
            reason: format!("zstd: {e}"),
        })?;
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    decoder
        .take(cap)
        .read_to_end(&mut out)
        .map_err(|e| Error::Decompress {
            reason: format!("zstd: {e}"),
        })?;
    if out.len() > limit {
        return Err(Error::DecompressedTooLarge {
            size: out.len(),
            limit,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use edgepipe_types::{Metric, TsSource, Value};

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn origin() -> BatchOrigin {
        BatchOrigin {
            source: "agent-1".into(),
            stream: "main".into(),
            seq: 42,
        }
    }

    fn readings() -> Result<Vec<Reading>> {
        let r = |m: &str, ts, value| -> Result<Reading> {
            Ok(Reading {
                metric: Metric::new(m).map_err(Error::InvalidMetric)?,
                ts,
                value,
                ts_source: TsSource::Device,
            })
        };
        Ok(vec![
            r("temp", NOW - 10, Value::F64(21.5))?,
            r("count", NOW - 10, Value::I64(-3))?,
            r("temp", NOW - 5, Value::F64(1.0))?,
            r("state", NOW - 5, Value::Str("ok \"quoted\" ünïcode".into()))?,
            r("on", NOW, Value::Bool(true))?,
        ])
    }

    fn header_bytes(json: &str) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        out.extend_from_slice(&(json.len() as u16).to_be_bytes());
        out.extend_from_slice(json.as_bytes());
        out
    }

    #[test]
    fn round_trips_uncompressed_lz4_and_zstd() -> Result<()> {
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let bytes = encode(&origin(), &readings()?, c);
            let d = decode(&bytes, NOW, &Limits::default())?;
            assert_eq!(d.origin, Some(origin()));
            assert_eq!(d.readings, readings()?);
        }
        Ok(())
    }

    #[test]
    fn wire_layout_is_magic_version_be_length_header_body() {
        let bytes = encode(&origin(), &[], Compression::None);
        assert_eq!(&bytes[..4], b"EPB\x01");
        let len = usize::from(u16::from_be_bytes([bytes[4], bytes[5]]));
        let header: serde_json::Value =
            serde_json::from_slice(&bytes[6..6 + len]).unwrap_or_default();
        assert_eq!(header["source"], "agent-1");
        assert_eq!(header["stream"], "main");
        assert_eq!(header["seq"], 42);
        assert_eq!(header["compression"], "none");
        assert_eq!(&bytes[6 + len..], b"[]");
    }

    #[test]
    fn bad_magic_is_refused() {
        let err = decode(b"EPX\x01\x00\x00", NOW, &Limits::default());
        assert!(matches!(err, Err(Error::BadMagic { .. })), "{err:?}");
    }

    #[test]
    fn unknown_version_is_refused() {
        let err = decode(b"EPB\x02\x00\x00", NOW, &Limits::default());
        assert!(
            matches!(err, Err(Error::UnsupportedEnvelopeVersion { found: 2, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_preamble_and_header_are_refused() {
        assert!(matches!(
            decode(b"EPB", NOW, &Limits::default()),
            Err(Error::Truncated {
                part: "preamble",
                ..
            })
        ));
        assert!(matches!(
            decode(b"EPB\x01\x00\x10{}", NOW, &Limits::default()),
            Err(Error::Truncated {
                part: "header",
                needed: 16,
                available: 2
            })
        ));
    }

    #[test]
    fn header_with_unknown_field_is_refused_naming_it() {
        let b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"none","x":1}"#);
        let err = decode(&b, NOW, &Limits::default())
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("`x`"));
    }

    #[test]
    fn unknown_compression_is_refused() {
        let mut b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"brotli"}"#);
        b.extend_from_slice(b"[]");
        let err = decode(&b, NOW, &Limits::default());
        assert!(matches!(err, Err(Error::UnknownCompression { found }) if found == "brotli"));
    }

    #[test]
    fn zstd_output_above_cap_is_an_error_not_an_allocation() -> Result<()> {
        // 1 MiB of one byte compresses to a few hundred bytes; a 64 KiB cap must refuse it.
        let big = vec![b' '; 1024 * 1024];
        let frame = zstd::bulk::compress(&big, 3).map_err(|e| Error::Compress {
            reason: e.to_string(),
        })?;
        assert!(frame.len() < 1024);
        let err = decompress_zstd(&frame, 64 * 1024);
        assert!(
            matches!(err, Err(Error::DecompressedTooLarge { limit: 65536, .. })),
            "{err:?}"
        );
        Ok(())
    }

    #[test]
    fn corrupt_zstd_frame_is_an_error() {
        let mut b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"zstd"}"#);
        b.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0x00, 0x01]);
        let err = decode(&b, NOW, &Limits::default());
        assert!(matches!(err, Err(Error::Decompress { .. })), "{err:?}");
        let mut b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"zstd"}"#);
        b.extend_from_slice(b"not zstd at all");
        assert!(decode(&b, NOW, &Limits::default()).is_err());
    }

    #[test]
    fn truncated_zstd_frame_is_an_error() -> Result<()> {
        let whole = encode(&origin(), &readings()?, Compression::Zstd);
        let cut = &whole[..whole.len() - 3];
        assert!(decode(cut, NOW, &Limits::default()).is_err());
        Ok(())
    }

    #[test]
    fn empty_source_is_refused() {
        let mut b = header_bytes(r#"{"source":"","stream":"s","seq":1,"compression":"none"}"#);
        b.extend_from_slice(br#"[{"metrics":{"a":1}}]"#);
        let err = decode(&b, NOW, &Limits::default());
        assert!(matches!(
            err,
            Err(Error::EmptyOriginField { field: "source" })
        ));
    }

    #[test]
    fn lz4_size_prefix_above_cap_is_an_error_not_an_allocation() {
        let mut b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"lz4"}"#);
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(b"\x00");
        let err = decode(&b, NOW, &Limits::default());
        assert!(
            matches!(err, Err(Error::DecompressedTooLarge { .. })),
            "{err:?}"
        );
    }

    #[test]
    fn corrupt_lz4_block_is_an_error() {
        let mut b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"lz4"}"#);
        b.extend_from_slice(&100u32.to_le_bytes());
        b.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x01]);
        let err = decode(&b, NOW, &Limits::default());
        assert!(matches!(err, Err(Error::Decompress { .. })), "{err:?}");
    }

    #[test]
    fn lz4_size_prefix_larger_than_block_is_an_error() {
        let mut body = lz4_flex::block::compress_prepend_size(br#"[{"metrics":{"a":1}}]"#);
        body[..4].copy_from_slice(&1000u32.to_le_bytes());
        let mut b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"lz4"}"#);
        b.extend_from_slice(&body);
        let err = decode(&b, NOW, &Limits::default());
        assert!(matches!(err, Err(Error::Decompress { .. })), "{err:?}");
    }

    #[test]
    fn body_readings_are_validated_like_json() {
        let mut b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"none"}"#);
        b.extend_from_slice(br#"[{"ts":5,"metrics":{"a":1}}]"#);
        let err = decode(&b, NOW, &Limits::default());
        assert!(
            matches!(err, Err(Error::InElement { index: 0, .. })),
            "{err:?}"
        );
    }

    #[test]
    fn body_must_be_an_array() {
        let mut b = header_bytes(r#"{"source":"a","stream":"s","seq":1,"compression":"none"}"#);
        b.extend_from_slice(br#"{"metrics":{"a":1}}"#);
        assert!(decode(&b, NOW, &Limits::default()).is_err());
    }

    #[test]
    fn oversized_origin_cannot_be_encoded() {
        let big = BatchOrigin {
            source: "s".repeat(70_000),
            stream: "m".into(),
            seq: 1,
        };
        assert!(matches!(
            try_encode(&big, &[], Compression::None),
            Err(Error::HeaderTooLong { .. })
        ));
        let bytes = encode(&big, &[], Compression::None);
        assert!(decode(&bytes, NOW, &Limits::default()).is_err());
    }

    #[test]
    fn same_ts_readings_share_one_object_and_server_ts_is_kept() -> Result<()> {
        let mut rs = readings()?;
        rs[0].ts_source = TsSource::Server;
        let bytes = encode(&origin(), &rs, Compression::None);
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(text.matches("\"ts\"").count(), 3);
        let d = decode(&bytes, NOW, &Limits::default())?;
        assert_eq!(d.readings[0].ts, rs[0].ts);
        assert_eq!(d.readings[0].ts_source, TsSource::Device);
        Ok(())
    }
}
