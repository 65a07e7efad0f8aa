#![no_main]

use std::collections::BTreeMap;

use edgepipe_protocol::Limits;
use edgepipe_protocol::mapping::{PayloadFormat, TopicMapping, TopicMappingConfig};
use libfuzzer_sys::fuzz_target;

fn mappings() -> Vec<TopicMapping> {
    let raw = TopicMappingConfig {
        pattern: "f/{line}/{device_id}/{metric}".into(),
        payload: PayloadFormat::Raw,
        metric: None,
        metrics: BTreeMap::new(),
        ts_pointer: None,
    };
    let scalar = TopicMappingConfig {
        payload: PayloadFormat::Json,
        ..raw.clone()
    };
    let native = TopicMappingConfig {
        pattern: "n/{device_id}/#".into(),
        payload: PayloadFormat::Json,
        ..raw.clone()
    };
    let pointers = TopicMappingConfig {
        pattern: "p/+/{device_id}".into(),
        payload: PayloadFormat::Json,
        metrics: [
            ("t".to_owned(), "/s/t".to_owned()),
            ("u".to_owned(), "/a/0".to_owned()),
        ]
        .into(),
        ts_pointer: Some("/ts".into()),
        ..raw.clone()
    };
    [raw, scalar, native, pointers]
        .iter()
        .filter_map(|c| TopicMapping::compile(c).ok())
        .collect()
}

// Input: topic, a 0 byte, then the payload.
fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let Ok(topic) = std::str::from_utf8(topic) else {
        return;
    };
    for m in mappings() {
        if let Some(t) = m.matches(topic) {
            let _ = m.decode(&t, payload, 1_700_000_000_000, &Limits::default());
        }
    }
    // Patterns themselves are config input.
    let _ = TopicMapping::compile(&TopicMappingConfig {
        pattern: topic.to_owned(),
        payload: PayloadFormat::Raw,
        metric: Some("m".into()),
        metrics: BTreeMap::new(),
        ts_pointer: None,
    });
});
