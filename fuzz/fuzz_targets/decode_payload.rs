#![no_main]

use edgepipe_protocol::{Limits, decode_payload, decode_payload_for};
use edgepipe_types::DeviceId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let _ = decode_payload(data, 1_700_000_000_000, &limits);
    if let Ok(device) = DeviceId::new("d1") {
        let _ = decode_payload_for(&device, data, 1_700_000_000_000, &limits);
    }
});
