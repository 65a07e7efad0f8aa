#![no_main]

use edgepipe_protocol::Limits;
use edgepipe_protocol::http::{Format, Precision, decode_body};
use edgepipe_types::DeviceId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(device) = DeviceId::new("d1") {
        let _ = decode_body(
            Format::Json,
            data,
            &device,
            1_700_000_000_000,
            &Limits::default(),
            Precision::Ns,
        );
    }
});
