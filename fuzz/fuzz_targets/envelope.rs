#![no_main]

use edgepipe_protocol::{Limits, envelope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = envelope::decode(data, 1_700_000_000_000, &limits);

    // The same bytes as the body of an intact lz4 envelope, to reach the body decoder.
    let header = br#"{"source":"a","stream":"s","seq":1,"compression":"lz4"}"#;
    let mut bytes = b"EPB\x01".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_be_bytes());
    bytes.extend_from_slice(header);
    bytes.extend(lz4_compress(data));
    let _ = envelope::decode(&bytes, 1_700_000_000_000, &limits);
});

/// Raw bytes in lz4's simplest valid form: one literal-only sequence.
fn lz4_compress(data: &[u8]) -> Vec<u8> {
    let mut out = (data.len() as u32).to_le_bytes().to_vec();
    let len = data.len();
    if len < 15 {
        out.push((len as u8) << 4);
    } else {
        out.push(0xf0);
        let mut rest = len - 15;
        while rest >= 255 {
            out.push(255);
            rest -= 255;
        }
        out.push(rest as u8);
    }
    out.extend_from_slice(data);
    out
}
