use edgepipe_types::{DeviceId, Metric, Reading, TsSource, Value};

use super::*;

const NOW: i64 = 1_700_000_000_000;
const TS_NS: i64 = 1_699_999_999_123_456_789;
const TS_MS: i64 = 1_699_999_999_123;

fn dev() -> DeviceId {
    DeviceId::new("d1").unwrap_or_else(|e| panic!("{e}"))
}

fn body(format: Format, body: &str) -> HttpDecoded {
    decode_body(
        format,
        body.as_bytes(),
        &dev(),
        NOW,
        &Limits::default(),
        Precision::Ns,
    )
}

fn lp(line: &str) -> HttpDecoded {
    body(Format::LineProtocol, line)
}

fn lp_one(line: &str) -> Vec<Reading> {
    let d = lp(line);
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    d.readings
}

fn lp_err(line: &str) -> String {
    let d = lp(line);
    assert!(d.readings.is_empty(), "{:?}", d.readings);
    assert_eq!(d.errors.len(), 1, "{:?}", d.errors);
    d.errors[0].message.clone()
}

fn r(metric: &str, ts: i64, value: Value, ts_source: TsSource) -> Reading {
    Reading {
        metric: Metric::new(metric).unwrap_or_else(|e| panic!("{e}")),
        ts,
        value,
        ts_source,
    }
}

#[test]
fn content_types_map_to_formats() -> Result<()> {
    assert_eq!(Format::from_content_type(None)?, Format::Json);
    assert_eq!(
        Format::from_content_type(Some("application/json"))?,
        Format::Json
    );
    assert_eq!(
        Format::from_content_type(Some("Application/JSON; charset=utf-8"))?,
        Format::Json
    );
    assert_eq!(
        Format::from_content_type(Some("application/x-ndjson"))?,
        Format::Ndjson
    );
    assert_eq!(
        Format::from_content_type(Some("application/jsonl"))?,
        Format::Ndjson
    );
    assert_eq!(
        Format::from_content_type(Some("text/plain; charset=utf-8"))?,
        Format::LineProtocol
    );
    Ok(())
}

#[test]
fn unknown_content_type_is_refused_naming_it() {
    let e = Format::from_content_type(Some("application/xml"))
        .err()
        .map(|e| e.to_string());
    assert!(e.unwrap_or_default().contains("\"application/xml\""));
}

#[test]
fn precision_parses_and_defaults_to_ns() -> Result<()> {
    assert_eq!(Precision::default(), Precision::Ns);
    assert_eq!(Precision::parse("ns")?, Precision::Ns);
    assert_eq!(Precision::parse("us")?, Precision::Us);
    assert_eq!(Precision::parse("ms")?, Precision::Ms);
    assert_eq!(Precision::parse("s")?, Precision::S);
    let e = Precision::parse("h")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("\"h\""), "{e}");
    Ok(())
}

#[test]
fn precision_converts_to_ms_rounding_down() {
    assert_eq!(Precision::Ns.to_ms(TS_NS), Some(TS_MS));
    assert_eq!(Precision::Us.to_ms(1_500), Some(1));
    assert_eq!(Precision::Ns.to_ms(-1), Some(-1));
    assert_eq!(Precision::S.to_ms(i64::MAX), None);
}

#[test]
fn json_body_object_decodes() {
    let d = body(
        Format::Json,
        r#"{"ts": 1699999999123, "metrics": {"a": 1}}"#,
    );
    assert!(d.errors.is_empty());
    assert_eq!(
        d.readings,
        vec![r("a", TS_MS, Value::I64(1), TsSource::Device)]
    );
}

#[test]
fn json_body_that_is_not_json_is_one_error_at_line_0_with_the_body() {
    let text = r#"{"metrics": "#;
    let d = body(Format::Json, text);
    assert!(d.readings.is_empty());
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].line, 0);
    assert_eq!(d.errors[0].raw, text.as_bytes());
}

#[test]
fn json_body_invalid_object_is_one_error_at_line_0() {
    let d = body(Format::Json, r#"{"metrics": {}}"#);
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].line, 0);
}

#[test]
fn json_array_keeps_valid_elements_and_reports_bad_ones_by_index_plus_1() {
    let d = body(
        Format::Json,
        r#"[{"metrics": {"a": 1}}, {"metrics": {"b": null}}, 7, {"metrics": {"c": 3}}]"#,
    );
    assert_eq!(d.readings.len(), 2);
    assert_eq!(d.errors.len(), 2);
    assert_eq!(d.errors[0].line, 2);
    assert_eq!(d.errors[0].raw, br#"{"metrics": {"b": null}}"#);
    assert!(d.errors[0].message.contains("\"b\""));
    assert_eq!(d.errors[1].line, 3);
    assert_eq!(d.errors[1].raw, b"7");
}

#[test]
fn json_element_naming_another_device_is_not_authorized() {
    let d = body(
        Format::Json,
        r#"[{"device_id": "d1", "metrics": {"a": 1}}, {"device_id": "d2", "metrics": {"a": 1}}]"#,
    );
    assert_eq!(d.readings.len(), 1);
    assert_eq!(d.errors.len(), 1);
    assert!(
        d.errors[0]
            .message
            .contains("not authorized for device \"d2\"")
    );
}

#[test]
fn empty_json_body_is_an_error() {
    assert_eq!(body(Format::Json, "").errors.len(), 1);
    assert_eq!(body(Format::Json, "[]").errors.len(), 1);
}

#[test]
fn ndjson_decodes_per_line_with_1_based_line_numbers() {
    let text = "{\"metrics\": {\"a\": 1}}\r\n\n[{\"metrics\": {\"b\": 2}}]\nnot json\n{\"metrics\": {\"c\": true}}\n";
    let d = body(Format::Ndjson, text);
    assert_eq!(d.readings.len(), 3);
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].line, 4);
    assert_eq!(d.errors[0].raw, b"not json");
}

#[test]
fn ndjson_line_naming_another_device_is_not_authorized() {
    let d = body(
        Format::Ndjson,
        "{\"device_id\": \"x\", \"metrics\": {\"a\": 1}}",
    );
    assert_eq!(d.errors.len(), 1);
    assert!(
        d.errors[0]
            .message
            .contains("not authorized for device \"x\"")
    );
}

#[test]
fn line_protocol_metric_is_measurement_dot_field() {
    assert_eq!(
        lp_one(&format!("env temp=21.5,hum=40i {TS_NS}")),
        vec![
            r("env.temp", TS_MS, Value::F64(21.5), TsSource::Device),
            r("env.hum", TS_MS, Value::I64(40), TsSource::Device),
        ]
    );
}

#[test]
fn line_protocol_field_named_value_uses_the_measurement() {
    assert_eq!(
        lp_one("temp value=21.5"),
        vec![r("temp", NOW, Value::F64(21.5), TsSource::Server)]
    );
}

#[test]
fn line_protocol_parses_every_field_type() {
    let rs = lp_one(r#"m f=1.5,g=-2e3,h=7,i=-3i,u=4u,s="hi",t=t,T=TRUE,fa=False"#);
    let values: Vec<Value> = rs.into_iter().map(|r| r.value).collect();
    assert_eq!(
        values,
        vec![
            Value::F64(1.5),
            Value::F64(-2000.0),
            Value::F64(7.0),
            Value::I64(-3),
            Value::I64(4),
            Value::Str("hi".into()),
            Value::Bool(true),
            Value::Bool(true),
            Value::Bool(false),
        ]
    );
}

#[test]
fn line_protocol_unescapes_string_values() {
    let rs = lp_one(r#"m,site=a\ b\,c\=d s="say \"hi\" \\ \n, x=1 y",n=1i"#);
    assert_eq!(rs[0].value, Value::Str(r#"say "hi" \ \n, x=1 y"#.into()));
    assert_eq!(rs[1].value, Value::I64(1));
}

#[test]
fn line_protocol_unescapes_tag_values() {
    assert!(lp_err(r"m,device_id=d\ 1\,x\=y value=1").contains(r#"device "d 1,x=y""#));
}

#[test]
fn line_protocol_escaped_space_stays_in_measurement_and_fails_metric_validation() {
    let e = lp_err(r"my\ meas value=1");
    assert!(e.contains("\"my meas\""), "{e}");
    let e = lp_err(r"a\,b value=1");
    assert!(e.contains("\"a,b\""), "{e}");
}

#[test]
fn line_protocol_precision_applies() {
    let d = decode_body(
        Format::LineProtocol,
        b"m value=1 1699999999",
        &dev(),
        NOW,
        &Limits::default(),
        Precision::S,
    );
    assert_eq!(d.readings[0].ts, 1_699_999_999_000);
    let d = decode_body(
        Format::LineProtocol,
        b"m value=1 1699999999123",
        &dev(),
        NOW,
        &Limits::default(),
        Precision::Ms,
    );
    assert_eq!(d.readings[0].ts, TS_MS);
}

#[test]
fn line_protocol_missing_timestamp_gets_server_time() {
    let rs = lp_one("m value=1");
    assert_eq!((rs[0].ts, rs[0].ts_source), (NOW, TsSource::Server));
}

#[test]
fn line_protocol_timestamp_is_validated() {
    assert!(lp_err("m value=1 12").contains("before min_ts_ms"));
    assert!(lp_err("m value=1 abc").contains("\"abc\""));
    assert!(lp_err("m value=1 99999999999999999999").contains("out of"));
    assert!(lp_err("m value=1 1699999999123456789 extra").contains("after the timestamp"));
    let future = (NOW + 400_000) * 1_000_000;
    assert!(lp_err(&format!("m value=1 {future}")).contains("max_future_skew_ms"));
}

#[test]
fn line_protocol_device_tags_must_match() {
    assert_eq!(lp_one("m,device_id=d1,site=x value=1").len(), 1);
    assert_eq!(lp_one("m,device=d1 value=1").len(), 1);
    assert!(lp_err("m,device_id=d2 value=1").contains("not authorized for device \"d2\""));
    assert!(lp_err("m,device=d3 value=1").contains("not authorized for device \"d3\""));
}

#[test]
fn line_protocol_other_tags_are_ignored() {
    assert_eq!(lp_one("m,site=x,rack=y value=1"), lp_one("m value=1"));
}

#[test]
fn line_protocol_skips_comments_and_blank_lines() {
    let d = lp("# a comment\n\n   \n  # indented comment\nm value=1\n");
    assert!(d.errors.is_empty());
    assert_eq!(d.readings.len(), 1);
}

#[test]
fn line_protocol_bad_lines_are_reported_and_good_lines_kept() {
    let d = lp("m value=1\nbroken\nm value=2\r\nm value=\"unterminated\nm x=1,x=2\n");
    assert_eq!(d.readings.len(), 2);
    let lines: Vec<usize> = d.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, vec![2, 4, 5]);
    assert_eq!(d.errors[0].raw, b"broken");
    assert!(d.errors[2].message.contains("\"m.x\""));
}

#[test]
fn line_protocol_refuses_bad_field_values_naming_the_field() {
    for (line, field) in [
        ("m f=abc", "\"f\""),
        ("m f=1.2.3", "\"f\""),
        ("m f=1.5i", "\"f\""),
        ("m f=-1u", "\"f\""),
        ("m f=inf", "\"f\""),
        ("m f=NaN", "\"f\""),
        ("m f=", "\"f\""),
        ("m f=\"a\"b", "\"f\""),
    ] {
        let e = lp_err(line);
        assert!(e.contains(field), "{line}: {e}");
    }
}

#[test]
fn line_protocol_integer_overflow_is_refused() {
    assert!(lp_err("m f=9223372036854775808u").contains("does not fit"));
    assert!(lp_err("m f=9223372036854775808i").contains("does not fit"));
    assert!(lp_err("m f=1e999").contains("not a finite number"));
}

#[test]
fn line_protocol_syntax_errors() {
    assert!(lp_err("m").contains("missing field set"));
    assert!(lp_err("m,tag value=1").contains("no '='"));
    assert!(lp_err("m novalue").contains("no '='"));
    assert!(lp_err(",t=1 value=1").contains("empty measurement"));
    assert!(lp_err("m =1").contains("empty key"));
}

#[test]
fn line_protocol_long_string_is_refused() {
    let s = "x".repeat(2000);
    assert!(lp_err(&format!("m s=\"{s}\"")).contains("2000"));
}

#[test]
fn line_protocol_reading_limit_spans_the_request() {
    let limits = Limits {
        max_readings_per_message: 3,
        ..Limits::default()
    };
    let d = decode_body(
        Format::LineProtocol,
        b"m a=1,b=2\nm c=3\nm d=4\n",
        &dev(),
        NOW,
        &limits,
        Precision::Ns,
    );
    assert_eq!(d.readings.len(), 3);
    assert_eq!(d.errors.len(), 1);
    assert_eq!(d.errors[0].line, 3);
    assert!(d.errors[0].message.contains("max_readings_per_message 3"));
}

#[test]
fn line_protocol_non_utf8_line_is_an_error() {
    let d = decode_body(
        Format::LineProtocol,
        b"m value=1\nm s=\"\xff\"\n",
        &dev(),
        NOW,
        &Limits::default(),
        Precision::Ns,
    );
    assert_eq!(d.readings.len(), 1);
    assert_eq!(d.errors[0].line, 2);
}
