//! Tests of the uplink.

use super::*;
use edgepipe_types::Value;

#[test]
fn backoff_grows_with_jitter_and_caps() {
    let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let waits: Vec<u128> = (0..8).map(|_| b.next_wait().as_millis()).collect();
    assert!((50..=100).contains(&waits[0]), "{waits:?}");
    assert!((100..=200).contains(&waits[1]), "{waits:?}");
    assert!((200..=400).contains(&waits[2]), "{waits:?}");
    for w in &waits[4..] {
        assert!((500..=1000).contains(w), "{waits:?}");
    }
    b.reset();
    assert!(b.next_wait().as_millis() <= 100);
}

#[test]
fn url_parsing() {
    let mut c = UplinkConfig::default();
    assert_eq!(c.endpoint(), Ok((false, "127.0.0.1".into(), 1883)));
    c.url = "mqtts://broker.example:8883".into();
    assert_eq!(c.endpoint(), Ok((true, "broker.example".into(), 8883)));
    c.url = "http://x:1".into();
    assert!(c.endpoint().is_err());
    c.url = "mqtt://x".into();
    assert!(c.endpoint().is_err());
}

#[test]
fn gap_event_readings_name_stream_count_and_range() {
    let g = GapEvent {
        stream: "telemetry".into(),
        count: 1234,
        from_ts: 10,
        to_ts: 20,
    };
    let rs = g.readings();
    assert_eq!(rs.len(), 4);
    assert_eq!(rs[0].metric.as_str(), "agent.gap.telemetry.count");
    assert_eq!(rs[0].value, Value::I64(1234));
    assert!(rs.iter().all(|r| r.ts == 20));
}
