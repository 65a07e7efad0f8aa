use std::collections::BTreeMap;

use edgepipe_types::{TsSource, Value};

use super::*;

const NOW: i64 = 1_700_000_000_000;

fn cfg(pattern: &str) -> TopicMappingConfig {
    TopicMappingConfig {
        pattern: pattern.into(),
        payload: PayloadFormat::Json,
        metric: None,
        metrics: BTreeMap::new(),
        ts_pointer: None,
    }
}

fn compile_err(c: &TopicMappingConfig) -> String {
    match TopicMapping::compile(c) {
        Ok(m) => format!("unexpectedly compiled: {m:?}"),
        Err(e) => e.to_string(),
    }
}

fn decode_on(m: &TopicMapping, topic: &str, payload: &str) -> Result<Decoded> {
    let Some(t) = m.matches(topic) else {
        panic!("{topic} does not match {}", m.pattern());
    };
    m.decode(&t, payload.as_bytes(), NOW, &Limits::default())
}

#[test]
fn config_deserializes_with_defaults_and_refuses_unknown_fields() {
    let c: TopicMappingConfig =
        serde_json::from_str(r#"{"pattern": "a/{device_id}"}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.payload, PayloadFormat::Json);
    assert!(c.metric.is_none() && c.metrics.is_empty() && c.ts_pointer.is_none());
    let raw: TopicMappingConfig =
        serde_json::from_str(r#"{"pattern": "a/{device_id}/{metric}", "payload": "raw"}"#)
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(raw.payload, PayloadFormat::Raw);
    let e = serde_json::from_str::<TopicMappingConfig>(r#"{"pattern": "x", "patern": "y"}"#);
    assert!(e.is_err());
}

#[test]
fn pattern_extracts_device_metric_and_tags() -> Result<()> {
    let m = TopicMapping::compile(&cfg("factory/{line}/{device_id}/{metric}"))?;
    assert_eq!(
        m.matches("factory/3/press-7/temp"),
        Some(MappedTopic {
            device_id: "press-7".into(),
            metric: Some("temp".into()),
            tags: vec![("line".into(), "3".into())],
        })
    );
    Ok(())
}

#[test]
fn pattern_does_not_match_other_shapes() -> Result<()> {
    let m = TopicMapping::compile(&cfg("factory/{line}/{device_id}/{metric}"))?;
    for t in [
        "factory/3/press-7",
        "factory/3/press-7/temp/x",
        "plant/3/p/t",
        "",
    ] {
        assert_eq!(m.matches(t), None, "{t}");
    }
    Ok(())
}

#[test]
fn wildcards_match_levels_without_capturing() -> Result<()> {
    let m = TopicMapping::compile(&cfg("site/+/{device_id}/#"))?;
    assert_eq!(m.subscription_filter(), "site/+/+/#");
    assert_eq!(
        m.matches("site/x/d1").map(|t| t.device_id),
        Some("d1".into())
    );
    assert_eq!(
        m.matches("site/x/d1/a/b").map(|t| t.device_id),
        Some("d1".into())
    );
    assert_eq!(m.matches("site/x"), None);
    Ok(())
}

#[test]
fn subscription_filter_replaces_placeholders() -> Result<()> {
    let m = TopicMapping::compile(&cfg("factory/{line}/{device_id}/{metric}"))?;
    assert_eq!(m.subscription_filter(), "factory/+/+/+");
    Ok(())
}

#[test]
fn bad_patterns_are_refused_with_the_reason() {
    for (p, why) in [
        ("", "empty"),
        ("factory/{line}", "{device_id}"),
        ("a/{device_id}/{device_id}", "twice"),
        ("a/dev-{device_id}", "whole level"),
        ("a/{}/{device_id}", "letters"),
        ("a/{bad-name}/{device_id}", "letters"),
        ("a/#/{device_id}", "last level"),
        ("a/b+/{device_id}", "whole level"),
    ] {
        let e = compile_err(&cfg(p));
        assert!(e.contains(why), "{p}: {e}");
    }
}

#[test]
fn raw_payload_needs_a_metric() {
    let mut c = cfg("a/{device_id}");
    c.payload = PayloadFormat::Raw;
    assert!(compile_err(&c).contains("needs a {metric}"));
    c.metric = Some("temp".into());
    assert!(TopicMapping::compile(&c).is_ok());
}

#[test]
fn conflicting_options_are_refused() {
    let mut c = cfg("a/{device_id}/{metric}");
    c.metric = Some("x".into());
    assert!(compile_err(&c).contains("use one"));

    let mut c = cfg("a/{device_id}/{metric}");
    c.metrics.insert("t".into(), "/t".into());
    assert!(compile_err(&c).contains("exclude each other"));

    let mut c = cfg("a/{device_id}");
    c.ts_pointer = Some("/ts".into());
    assert!(compile_err(&c).contains("needs `metrics`"));

    let mut c = cfg("a/{device_id}/{metric}");
    c.payload = PayloadFormat::Raw;
    c.ts_pointer = Some("/ts".into());
    assert!(compile_err(&c).contains("need JSON"));
}

#[test]
fn invalid_metric_names_and_pointers_are_refused_at_compile() {
    let mut c = cfg("a/{device_id}");
    c.metrics.insert("bad name".into(), "/t".into());
    assert!(compile_err(&c).contains("bad name"));

    let mut c = cfg("a/{device_id}");
    c.metrics.insert("t".into(), "sensors/t".into());
    assert!(compile_err(&c).contains("metrics.t"));

    let mut c = cfg("a/{device_id}");
    c.metrics.insert("t".into(), "/t".into());
    c.ts_pointer = Some("ts".into());
    assert!(compile_err(&c).contains("ts_pointer"));
}

#[test]
fn raw_payload_decodes_number_bool_and_string() -> Result<()> {
    let mut c = cfg("factory/{line}/{device_id}/{metric}");
    c.payload = PayloadFormat::Raw;
    let m = TopicMapping::compile(&c)?;
    let cases = [
        ("21.5\n", Value::F64(21.5)),
        ("-7", Value::I64(-7)),
        ("1e3", Value::F64(1000.0)),
        ("true", Value::Bool(true)),
        ("\"quoted \\\" text\"", Value::Str("quoted \" text".into())),
        ("RUNNING", Value::Str("RUNNING".into())),
        ("NaN", Value::Str("NaN".into())),
    ];
    for (payload, want) in cases {
        let d = decode_on(&m, "factory/3/d1/temp", payload)?;
        assert_eq!(d.readings.len(), 1);
        assert_eq!(d.readings[0].value, want, "{payload:?}");
        assert_eq!(d.readings[0].metric.as_str(), "temp");
        assert_eq!(
            (d.readings[0].ts, d.readings[0].ts_source),
            (NOW, TsSource::Server)
        );
    }
    Ok(())
}

#[test]
fn raw_payload_errors_name_the_metric() -> Result<()> {
    let mut c = cfg("f/{device_id}");
    c.payload = PayloadFormat::Raw;
    c.metric = Some("level".into());
    let m = TopicMapping::compile(&c)?;
    for payload in ["", "  ", "99999999999999999999", "1e999"] {
        let e = decode_on(&m, "f/d1", payload)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("\"level\""), "{payload:?}: {e}");
    }
    let t = m.matches("f/d1").unwrap_or_else(|| panic!("no match"));
    assert!(m.decode(&t, b"\xff", NOW, &Limits::default()).is_err());
    Ok(())
}

#[test]
fn invalid_device_or_metric_from_topic_is_refused_at_decode() -> Result<()> {
    let mut c = cfg("f/{device_id}/{metric}");
    c.payload = PayloadFormat::Raw;
    let m = TopicMapping::compile(&c)?;
    assert!(matches!(
        decode_on(&m, "f/d 1/t", "1"),
        Err(Error::InvalidDeviceId(_))
    ));
    assert!(matches!(
        decode_on(&m, "f//t", "1"),
        Err(Error::InvalidDeviceId(_))
    ));
    assert!(matches!(
        decode_on(&m, "f/d1/t+x", "1"),
        Err(Error::InvalidMetric(_))
    ));
    Ok(())
}

#[test]
fn json_pointers_pick_metrics_and_ts() -> Result<()> {
    let mut c = cfg("plant/{device_id}/status");
    c.metrics.insert("temp".into(), "/sensors/t".into());
    c.metrics.insert("rpm".into(), "/motor/rpm".into());
    c.metrics.insert("absent".into(), "/nope".into());
    c.ts_pointer = Some("/time".into());
    let m = TopicMapping::compile(&c)?;
    let d = decode_on(
        &m,
        "plant/d1/status",
        r#"{"time": 1699999999000, "sensors": {"t": 20.5}, "motor": {"rpm": 1200}}"#,
    )?;
    let got: Vec<(&str, &Value, i64, TsSource)> = d
        .readings
        .iter()
        .map(|r| (r.metric.as_str(), &r.value, r.ts, r.ts_source))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "rpm",
                &Value::I64(1200),
                1_699_999_999_000,
                TsSource::Device
            ),
            (
                "temp",
                &Value::F64(20.5),
                1_699_999_999_000,
                TsSource::Device
            ),
        ]
    );
    Ok(())
}

#[test]
fn json_pointer_missing_ts_uses_server_time_and_bad_ts_is_refused() -> Result<()> {
    let mut c = cfg("p/{device_id}");
    c.metrics.insert("t".into(), "/t".into());
    c.ts_pointer = Some("/time".into());
    let m = TopicMapping::compile(&c)?;
    let d = decode_on(&m, "p/d1", r#"{"t": 1}"#)?;
    assert_eq!(d.readings[0].ts_source, TsSource::Server);
    assert!(decode_on(&m, "p/d1", r#"{"t": 1, "time": 5}"#).is_err());
    assert!(decode_on(&m, "p/d1", r#"{"t": 1, "time": "now"}"#).is_err());
    Ok(())
}

#[test]
fn json_pointers_none_found_is_refused_naming_them() -> Result<()> {
    let mut c = cfg("p/{device_id}");
    c.metrics.insert("t".into(), "/sensors/t".into());
    let m = TopicMapping::compile(&c)?;
    let e = decode_on(&m, "p/d1", r#"{"other": 1}"#)
        .err()
        .map(|e| e.to_string());
    assert!(e.unwrap_or_default().contains("/sensors/t"));
    Ok(())
}

#[test]
fn json_pointer_to_object_is_refused_naming_the_metric() -> Result<()> {
    let mut c = cfg("p/{device_id}");
    c.metrics.insert("t".into(), "/sensors".into());
    let m = TopicMapping::compile(&c)?;
    let e = decode_on(&m, "p/d1", r#"{"sensors": {"t": 1}}"#)
        .err()
        .map(|e| e.to_string());
    assert!(e.unwrap_or_default().contains("\"t\""));
    Ok(())
}

#[test]
fn json_scalar_with_topic_metric() -> Result<()> {
    let m = TopicMapping::compile(&cfg("f/{device_id}/{metric}"))?;
    let d = decode_on(&m, "f/d1/level", "42")?;
    assert_eq!(d.readings[0].value, Value::I64(42));
    assert!(decode_on(&m, "f/d1/level", "RUNNING").is_err());
    assert!(decode_on(&m, "f/d1/level", r#"{"v": 1}"#).is_err());
    Ok(())
}

#[test]
fn json_without_metric_settings_reads_the_edgepipe_format() -> Result<()> {
    let m = TopicMapping::compile(&cfg("legacy/{device_id}/data"))?;
    let d = decode_on(
        &m,
        "legacy/d1/data",
        r#"{"ts": 1699999999000, "metrics": {"a": 1}}"#,
    )?;
    assert_eq!(d.readings.len(), 1);
    assert!(
        decode_on(
            &m,
            "legacy/d1/data",
            r#"{"device_id": "d2", "metrics": {"a": 1}}"#
        )
        .is_err()
    );
    Ok(())
}
