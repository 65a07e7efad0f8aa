//! Tests of `transform`.

use super::*;

fn r(m: &str, ts: i64, v: f64) -> Reading {
    Reading {
        metric: Metric::new(m).unwrap_or_else(|e| panic!("{e}")),
        ts,
        value: Value::F64(v),
        ts_source: TsSource::Device,
    }
}

fn chain(toml_steps: &str) -> Chain {
    #[derive(Deserialize)]
    struct T {
        t: Vec<TransformConfig>,
    }
    let t: T = toml::from_str(toml_steps).unwrap_or_else(|e| panic!("{e}"));
    let mut problems = Vec::new();
    let c = Chain::compile(&t.t, "t", &mut problems);
    assert!(problems.is_empty(), "{problems:?}");
    c
}

#[test]
fn glob_matches() {
    assert!(glob("pump*.temp", "pump-1.temp"));
    assert!(glob("*", ""));
    assert!(glob("a?c", "abc"));
    assert!(!glob("a?c", "ac"));
    assert!(!glob("pump*", "fan"));
}

#[test]
fn filter_expressions() {
    let mut c = chain(
        r#"t = [{ type = "filter", expr = "metric ~ \"p*\" && (value > 1 || value == -5) && !(metric == \"px\")" }]"#,
    );
    let out = c.apply(
        vec![
            r("p1", 1, 2.0),
            r("p2", 1, 0.5),
            r("p3", 1, -5.0),
            r("q", 1, 9.0),
            r("px", 1, 9.0),
        ],
        0,
    );
    let names: Vec<_> = out.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(names, ["p1", "p3"]);
}

#[test]
fn bad_filter_expressions_are_reported_with_path() {
    for bad in [
        "value >",
        "foo == 1",
        "(value > 1",
        "\"x",
        "value > 1 )",
        "value # 2",
    ] {
        let mut problems = Vec::new();
        Chain::compile(
            &[TransformConfig::Filter { expr: bad.into() }],
            "streams[0].transforms",
            &mut problems,
        );
        assert_eq!(problems.len(), 1, "{bad}");
        assert_eq!(problems[0].path, "streams[0].transforms[0].expr");
    }
}

#[test]
fn deadband_reports_by_exception_and_after_silence() {
    let mut c = chain(r#"t = [{ type = "deadband", abs = 0.5, max_silence = "10s" }]"#);
    let out = c.apply(
        vec![
            r("a", 0, 1.0),
            r("a", 1, 1.2),
            r("a", 2, 1.6),
            r("a", 3, 1.7),
            r("a", 10_003, 1.7),
        ],
        0,
    );
    let ts: Vec<_> = out.iter().map(|r| r.ts).collect();
    assert_eq!(ts, [0, 2, 10_003]);
}

#[test]
fn aggregate_windows_emit_on_close() {
    let mut c = chain(
        r#"t = [{ type = "aggregate", window = "1s", functions = ["min", "max", "mean", "count", "last"] }]"#,
    );
    let out = c.apply(
        vec![r("a", 0, 1.0), r("a", 500, 3.0), r("a", 999, 2.0)],
        999,
    );
    assert!(out.is_empty());
    let out = c.apply(vec![r("a", 1000, 7.0)], 1000);
    let got: Vec<_> = out
        .iter()
        .map(|r| (r.metric.as_str().to_string(), r.ts, r.value.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("a.min".to_string(), 1000, Value::F64(1.0)),
            ("a.max".to_string(), 1000, Value::F64(3.0)),
            ("a.mean".to_string(), 1000, Value::F64(2.0)),
            ("a.count".to_string(), 1000, Value::I64(3)),
            ("a.last".to_string(), 1000, Value::F64(2.0)),
        ]
    );
    let out = c.tick(2000);
    assert_eq!(out.len(), 5);
    assert_eq!(out[0].value, Value::F64(7.0));
}

#[test]
fn scale_rename_drop() {
    let mut c = chain(
        r#"t = [{ type = "scale", metrics = ["f*"], factor = 0.5, offset = -32 }, { type = "rename", from = "f1", to = "c1" }, { type = "drop", metrics = ["junk*"] }]"#,
    );
    let out = c.apply(
        vec![r("f1", 0, 100.0), r("junk1", 0, 1.0), r("g", 0, 1.0)],
        0,
    );
    let got: Vec<_> = out
        .iter()
        .map(|r| (r.metric.as_str().to_string(), r.value.clone()))
        .collect();
    assert_eq!(
        got,
        [
            ("c1".to_string(), Value::F64(18.0)),
            ("g".to_string(), Value::F64(1.0))
        ]
    );
}
