//! Tests of the topic scheme and the JSON reading rules through [`decode_payload`].

use edgepipe_types::{DeviceId, Metric, Reading, TsSource, Value};

use super::*;

const NOW: i64 = 1_700_000_000_000;

fn decode(payload: &str) -> Result<Decoded> {
    decode_payload(payload.as_bytes(), NOW, &Limits::default())
}

fn err(payload: &str) -> String {
    match decode(payload) {
        Ok(d) => format!("unexpectedly decoded: {d:?}"),
        Err(e) => e.to_string(),
    }
}

fn reading(metric: &str, ts: i64, value: Value, ts_source: TsSource) -> Reading {
    Reading {
        metric: Metric::new(metric).unwrap_or_else(|e| panic!("{e}")),
        ts,
        value,
        ts_source,
    }
}

fn dev(id: &str) -> DeviceId {
    DeviceId::new(id).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn limits_default_to_the_documented_values() {
    let l = Limits::default();
    assert_eq!(l.max_readings_per_message, 10_000);
    assert_eq!(l.max_string_len, 1024);
    assert_eq!(l.max_future_skew_ms, 300_000);
    assert_eq!(l.min_ts_ms, 946_684_800_000);
}

#[test]
fn telemetry_topic_yields_the_device_id() {
    assert_eq!(
        parse_telemetry_topic("edgepipe/v1/dev-1/telemetry"),
        Some("dev-1")
    );
    assert_eq!(
        parse_telemetry_topic(&telemetry_topic(dev("d9").as_str())),
        Some("d9")
    );
}

#[test]
fn telemetry_topic_round_trips_through_the_parser() {
    assert_eq!(
        telemetry_topic("sim-0001"),
        "edgepipe/v1/sim-0001/telemetry"
    );
    for id in ["d9", "sim-0001", "gw-1", "pump_7.a:b", "x"] {
        let topic = telemetry_topic(id);
        assert!(topic.starts_with(TOPIC_PREFIX), "{topic}");
        assert_eq!(parse_telemetry_topic(&topic), Some(id), "{topic}");
    }
    // The subscription filter is the scheme with MQTT's one-level wildcard for the device.
    assert_eq!(TELEMETRY_FILTER, telemetry_topic("+"));
}

#[test]
fn other_topics_are_not_telemetry() {
    for t in [
        "edgepipe/v1//telemetry",
        "edgepipe/v1/a/b/telemetry",
        "edgepipe/v1/dev-1/commands",
        "edgepipe/v2/dev-1/telemetry",
        "edgepipe/v1/dev-1/telemetry/x",
        "x/edgepipe/v1/dev-1/telemetry",
        "",
    ] {
        assert_eq!(parse_telemetry_topic(t), None, "{t}");
    }
}

#[test]
fn json_object_decodes_every_value_kind_in_order() -> Result<()> {
    let d = decode(
        r#"{"ts": 1700000000123, "metrics": {"temp": 21.5, "on": true, "state": "ok", "count": 5}}"#,
    )?;
    let ts = 1_700_000_000_123;
    assert_eq!(d.origin, None);
    assert_eq!(
        d.readings,
        vec![
            reading("temp", ts, Value::F64(21.5), TsSource::Device),
            reading("on", ts, Value::Bool(true), TsSource::Device),
            reading("state", ts, Value::Str("ok".into()), TsSource::Device),
            reading("count", ts, Value::I64(5), TsSource::Device),
        ]
    );
    Ok(())
}

#[test]
fn json_array_decodes_all_objects() -> Result<()> {
    let d = decode(
        r#"[{"ts": 1699999999000, "metrics": {"a": 1}}, {"ts": 1700000000000, "metrics": {"a": 2, "b": -1.5e3}}]"#,
    )?;
    assert_eq!(d.readings.len(), 3);
    assert_eq!(d.readings[2].value, Value::F64(-1500.0));
    Ok(())
}

#[test]
fn missing_ts_gets_server_time() -> Result<()> {
    let d = decode(r#"{"metrics": {"a": 1}}"#)?;
    assert_eq!(
        d.readings,
        vec![reading("a", NOW, Value::I64(1), TsSource::Server)]
    );
    Ok(())
}

#[test]
fn integer_stays_integer_and_decimal_point_makes_float() -> Result<()> {
    let d = decode(r#"{"metrics": {"i": -7, "f": 7.0, "big": 9223372036854775807}}"#)?;
    assert_eq!(d.readings[0].value, Value::I64(-7));
    assert_eq!(d.readings[1].value, Value::F64(7.0));
    assert_eq!(d.readings[2].value, Value::I64(i64::MAX));
    Ok(())
}

#[test]
fn integer_above_i64_max_is_refused_naming_the_metric() {
    let e = err(r#"{"metrics": {"big": 9223372036854775808}}"#);
    assert!(
        e.contains("\"big\"") && e.contains("9223372036854775808"),
        "{e}"
    );
}

#[test]
fn non_finite_float_is_refused() {
    assert!(validate::check_finite("m", f64::NAN).is_err());
    assert!(validate::check_finite("m", f64::INFINITY).is_err());
    // JSON cannot spell NaN; an overflowing literal is a parse error, not an infinity.
    assert!(decode(r#"{"metrics": {"x": 1e999}}"#).is_err());
    assert!(decode(r#"{"metrics": {"x": NaN}}"#).is_err());
}

#[test]
fn float_ts_is_refused() {
    let e = err(r#"{"ts": 1700000000000.5, "metrics": {"a": 1}}"#);
    assert!(
        e.contains("ts must be an integer") && e.contains("1700000000000.5"),
        "{e}"
    );
}

#[test]
fn string_or_null_ts_is_refused() {
    assert!(err(r#"{"ts": "2024-01-01", "metrics": {"a": 1}}"#).contains("a string"));
    assert!(err(r#"{"ts": null, "metrics": {"a": 1}}"#).contains("null"));
}

#[test]
fn ts_too_far_in_future_is_refused_naming_ts_now_and_limit() {
    let ts = NOW + 300_001;
    let e = err(&format!(r#"{{"ts": {ts}, "metrics": {{"a": 1}}}}"#));
    assert!(
        e.contains(&ts.to_string()) && e.contains(&NOW.to_string()) && e.contains("300000"),
        "{e}"
    );
    // Exactly at the limit is fine.
    let ok = NOW + 300_000;
    assert!(decode(&format!(r#"{{"ts": {ok}, "metrics": {{"a": 1}}}}"#)).is_ok());
}

#[test]
fn ts_before_min_is_refused_and_hints_at_seconds() {
    let e = err(r#"{"ts": 1700000000, "metrics": {"a": 1}}"#);
    assert!(
        e.contains("1700000000") && e.contains("946684800000") && e.contains("seconds"),
        "{e}"
    );
    assert!(decode(r#"{"ts": 946684800000, "metrics": {"a": 1}}"#).is_ok());
}

#[test]
fn extreme_ts_does_not_overflow() {
    assert!(decode(r#"{"ts": 9223372036854775807, "metrics": {"a": 1}}"#).is_err());
    assert!(decode(r#"{"ts": -9223372036854775808, "metrics": {"a": 1}}"#).is_err());
    let near_max = Limits {
        max_future_skew_ms: i64::MAX,
        ..Limits::default()
    };
    assert!(
        decode_payload(
            br#"{"ts": 9223372036854775807, "metrics": {"a": 1}}"#,
            NOW,
            &near_max
        )
        .is_ok()
    );
}

#[test]
fn null_object_and_array_values_are_refused_naming_the_metric() {
    for (v, kind) in [("null", "null"), ("{}", "an object"), ("[1]", "an array")] {
        let e = err(&format!(r#"{{"metrics": {{"bad_one": {v}}}}}"#));
        assert!(e.contains("\"bad_one\"") && e.contains(kind), "{e}");
    }
}

#[test]
fn long_string_is_refused_with_length_and_limit() {
    let s = "x".repeat(1025);
    let e = err(&format!(r#"{{"metrics": {{"note": "{s}"}}}}"#));
    assert!(
        e.contains("\"note\"") && e.contains("1025") && e.contains("1024"),
        "{e}"
    );
    let ok = "x".repeat(1024);
    assert!(decode(&format!(r#"{{"metrics": {{"note": "{ok}"}}}}"#)).is_ok());
}

#[test]
fn empty_metrics_object_is_refused() {
    assert!(err(r#"{"metrics": {}}"#).contains("metrics object is empty"));
}

#[test]
fn missing_or_non_object_metrics_is_refused() {
    assert!(err(r#"{"ts": 1700000000000}"#).contains("no \"metrics\""));
    assert!(err(r#"{"metrics": [1, 2]}"#).contains("an array"));
}

#[test]
fn invalid_metric_name_is_refused_naming_it() {
    let e = err(r#"{"metrics": {"temp/inside": 1}}"#);
    assert!(e.contains("temp/inside"), "{e}");
    assert!(decode(r#"{"metrics": {"": 1}}"#).is_err());
}

#[test]
fn unknown_top_level_field_is_refused_naming_it() {
    let e = err(r#"{"tss": 1700000000000, "metrics": {"a": 1}}"#);
    assert!(e.contains("\"tss\""), "{e}");
}

#[test]
fn duplicate_key_is_refused() {
    assert!(err(r#"{"metrics": {"a": 1, "a": 2}}"#).contains("duplicate key \"a\""));
    assert!(err(r#"{"metrics": {"a": 1}, "metrics": {"b": 2}}"#).contains("duplicate key"));
}

#[test]
fn too_many_readings_is_refused_with_count_and_limit() {
    let limits = Limits {
        max_readings_per_message: 3,
        ..Limits::default()
    };
    let one = br#"{"metrics": {"a": 1, "b": 2, "c": 3, "d": 4}}"#;
    let e = decode_payload(one, NOW, &limits)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("4") && e.contains("max_readings_per_message 3"),
        "{e}"
    );
    let many = br#"[{"metrics": {"a": 1, "b": 2}}, {"metrics": {"a": 1, "b": 2}}]"#;
    assert!(matches!(
        decode_payload(many, NOW, &limits),
        Err(Error::InElement { .. })
    ));
    let elements = br#"[{"metrics": {"a": 1}}, {"metrics": {"a": 1}}, {"metrics": {"a": 1}}, {"metrics": {"a": 1}}]"#;
    assert!(matches!(
        decode_payload(elements, NOW, &limits),
        Err(Error::TooManyReadings { count: 4, limit: 3 })
    ));
}

#[test]
fn bad_array_element_fails_the_message_naming_its_index() {
    let e = err(r#"[{"metrics": {"a": 1}}, 5]"#);
    assert!(e.contains("#1") && e.contains("a number"), "{e}");
    assert!(err("[]").contains("array is empty"));
}

#[test]
fn scalar_and_garbage_payloads_are_refused() {
    assert!(matches!(
        decode("42"),
        Err(Error::UnrecognizedPayload { first_byte: b'4' })
    ));
    assert!(matches!(decode("   "), Err(Error::EmptyPayload)));
    assert!(matches!(
        decode(r#"{"metrics": {"a": 1}} x"#),
        Err(Error::Json(_))
    ));
    assert!(matches!(decode(r#"{"metrics": "#), Err(Error::Json(_))));
}

#[test]
fn device_id_field_is_accepted_by_decode_payload() -> Result<()> {
    let d = decode(r#"{"device_id": "someone-else", "metrics": {"a": 1}}"#)?;
    assert_eq!(d.readings.len(), 1);
    Ok(())
}

#[test]
fn decode_payload_for_refuses_another_device() {
    let p = br#"[{"metrics": {"a": 1}}, {"device_id": "d2", "metrics": {"a": 1}}]"#;
    let e = decode_payload_for(&dev("d1"), p, NOW, &Limits::default());
    let msg = e.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("not authorized for device \"d2\""), "{msg}");
}

#[test]
fn decode_payload_for_accepts_own_device_and_absent_field() -> Result<()> {
    let p = br#"[{"device_id": "d1", "metrics": {"a": 1}}, {"metrics": {"b": 2}}]"#;
    let d = decode_payload_for(&dev("d1"), p, NOW, &Limits::default())?;
    assert_eq!(d.readings.len(), 2);
    Ok(())
}

#[test]
fn non_string_device_id_is_refused() {
    assert!(
        err(r#"{"device_id": 7, "metrics": {"a": 1}}"#).contains("\"device_id\" must be a string")
    );
}

#[test]
fn envelope_is_detected_by_magic() -> Result<()> {
    let origin = edgepipe_types::BatchOrigin {
        source: "s".into(),
        stream: "m".into(),
        seq: 1,
    };
    let rs = vec![reading("a", NOW, Value::I64(1), TsSource::Device)];
    let bytes = envelope::encode(&origin, &rs, envelope::Compression::Lz4);
    let d = decode_payload(&bytes, NOW, &Limits::default())?;
    assert_eq!(d.origin, Some(origin));
    assert_eq!(d.readings, rs);
    Ok(())
}

#[test]
fn envelope_body_device_id_is_checked_by_decode_payload_for() {
    let mut b = b"EPB\x01".to_vec();
    let header = br#"{"source":"a","stream":"s","seq":1,"compression":"none"}"#;
    b.extend_from_slice(&(header.len() as u16).to_be_bytes());
    b.extend_from_slice(header);
    b.extend_from_slice(br#"[{"device_id":"d2","metrics":{"a":1}}]"#);
    assert!(decode_payload(&b, NOW, &Limits::default()).is_ok());
    assert!(decode_payload_for(&dev("d1"), &b, NOW, &Limits::default()).is_err());
}

/// Decode throughput on the load generator's payload shapes (a single reading, and an array of
/// 100 one-metric objects). A measurement, not a test of speed: run with
/// `cargo test --release -p edgepipe-protocol decode_throughput -- --ignored --nocapture`.
#[test]
#[ignore]
fn decode_throughput() -> Result<()> {
    let one = |t: i64, j: usize| format!("{{\"ts\":{t},\"metrics\":{{\"m{j}\":{}.25}}}}", t % 97);
    let single = one(NOW, 0).into_bytes();
    let batch = format!(
        "[{}]",
        (0..100)
            .map(|j| one(NOW - 1000 + j as i64, j))
            .collect::<Vec<_>>()
            .join(",")
    )
    .into_bytes();
    let limits = Limits::default();
    // EDGEPIPE_DECODE_ITERS=N decodes each payload N times untimed (for an instruction count
    // under `valgrind --tool=callgrind`, which a shared machine cannot disturb).
    if let Some(iters) = std::env::var("EDGEPIPE_DECODE_ITERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        for payload in [&single, &batch] {
            for _ in 0..iters {
                std::hint::black_box(decode_payload(payload, NOW, &limits)?);
            }
        }
        return Ok(());
    }
    for (name, payload, per) in [("single", &single, 1usize), ("batch of 100", &batch, 100)] {
        let mut rates = Vec::new();
        for _ in 0..5 {
            let started = std::time::Instant::now();
            let mut n = 0usize;
            while started.elapsed() < std::time::Duration::from_millis(300) {
                for _ in 0..100 {
                    n += decode_payload(payload, NOW, &limits)?.readings.len();
                }
            }
            assert_eq!(n % per, 0);
            rates.push(n as f64 / started.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!("{name}: median {:.0} readings/s", rates[2]);
    }
    Ok(())
}
