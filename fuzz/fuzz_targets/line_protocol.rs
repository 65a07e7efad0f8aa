#![no_main]

use edgepipe_protocol::Limits;
use edgepipe_protocol::http::{Format, Precision, decode_body};
use edgepipe_types::DeviceId;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&p, body)) = data.split_first() else {
        return;
    };
    let precision = [Precision::Ns, Precision::Us, Precision::Ms, Precision::S][usize::from(p % 4)];
    if let Ok(device) = DeviceId::new("d1") {
        let _ = decode_body(
            Format::LineProtocol,
            body,
            &device,
            1_700_000_000_000,
            &Limits::default(),
            precision,
        );
    }
});
