//! The fast path against the general decoder: property tests and the usual payloads show
//! that whatever [`decode`] answers, [`json::parse`](crate::json::parse) then
//! [`json::decode_document`](crate::json::decode_document) answer the same.

use proptest::prelude::*;

use super::*;
use crate::json::{decode_document, parse};

const NOW: i64 = 1_700_000_000_000;

/// What the general decoder makes of `bytes`: readings (floats compared by their bits,
/// through `Debug`) or an error.
fn general(bytes: &[u8], limits: &Limits, device: Option<&DeviceId>) -> Option<String> {
    parse(bytes)
        .and_then(|n| decode_document(n, NOW, limits, device, 0))
        .ok()
        .map(|r| format!("{r:?}"))
}

fn fast(bytes: &[u8], limits: &Limits, device: Option<&DeviceId>) -> Option<String> {
    decode(bytes, NOW, limits, device, 0).map(|r| format!("{r:?}"))
}

/// Pieces a reading document is made of, plain ones weighted up, with the edge cases of
/// each: numbers the general decoder types specially, escapes, unknown keys, duplicate
/// keys and names, limits, whitespace, truncation and stray bytes.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| v.to_string()),
        3 => any::<i64>().prop_map(|v| v.to_string()),
        1 => any::<u64>().prop_map(|v| v.to_string()),
        15 => one_of(&[
            "-0", "-0.0", "01", "1.", ".5", "1e400", "1e-400", "2.5E+3",
            "-9223372036854775808", "-9223372036854775809", "9223372036854775808",
            "123456789012345678901234567890", "0.30000000000000004",
            "1.7976931348623157e308", "4.9e-324",
        ]),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => "[a-z][a-z0-9_.]{0,6}",
        // Two names drawn often, so objects with a name twice are common.
        6 => one_of(&["m0", "m1"]),
        4 => one_of(&["t\\u0065mp", "", "bad name", "é"]),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => number(),
        1 => "[a-z ]{0,12}".prop_map(|s| format!("\"{s}\"")),
        8 => one_of(&["true", "false", "null", "\"a\\\"b\"", "\"x\u{7}\"", "[1]", "{}", "truex"]),
    ]
}

fn ws() -> impl Strategy<Value = String> {
    prop_oneof![6 => Just(String::new()), 2 => one_of(&[" ", "\n\t "])]
}

/// One of `texts`, uniformly.
fn one_of(texts: &[&str]) -> impl Strategy<Value = String> + use<> {
    proptest::sample::select(texts.iter().map(|t| t.to_string()).collect::<Vec<_>>())
}

fn ts() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (NOW - 10_000_000..NOW + 1_000_000).prop_map(|v| v.to_string()),
        1 => Just((NOW + 10_000_000).to_string()),
        4 => one_of(&["1000", "1700000000000.5", "null", "\"1700000000000\""]),
    ]
}

fn object() -> impl Strategy<Value = String> {
    let metrics = proptest::collection::vec((name(), ws(), value()), 0..5).prop_map(|ms| {
        let body: Vec<String> = ms
            .iter()
            .map(|(n, w, v)| format!("\"{n}\"{w}:{w}{v}"))
            .collect();
        format!("{{{}}}", body.join(","))
    });
    let field = prop_oneof![
        4 => ts().prop_map(|t| format!("\"ts\":{t}")),
        4 => metrics.prop_map(|m| format!("\"metrics\":{m}")),
        4 => one_of(&[
            "\"device_id\":\"dev-1\"",
            "\"device_id\":\"dev-2\"",
            "\"device_id\":7",
            "\"other\":1",
        ]),
        1 => Just("\"t\\u0073\":1700000000000".to_string()),
    ];
    (proptest::collection::vec(field, 0..4), ws())
        .prop_map(|(fs, w)| format!("{{{w}{}{w}}}", fs.join(&format!("{w},{w}"))))
}

fn document() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => object(),
        2 => proptest::collection::vec(object(), 0..4).prop_map(|os| format!("[{}]", os.join(","))),
        1 => (object(), 0..40usize).prop_map(|(o, cut)| o.chars().take(cut).collect()),
        1 => (object(), "[ x\\]}1,\"]").prop_map(|(o, tail)| format!("{o}{tail}")),
    ]
}

/// The plain shape devices send: always taken by the fast path.
fn plain() -> impl Strategy<Value = String> {
    let reading = (
        ts(),
        proptest::collection::vec(("[a-z][a-z0-9]{0,5}", number()), 1..4),
        one_of(&["", ",\"device_id\":\"dev-1\"", ",\"device_id\":\"dev-2\""]),
    )
        .prop_map(|(t, ms, device)| {
            let mut seen = std::collections::HashSet::new();
            let body: Vec<String> = ms
                .into_iter()
                .filter(|(n, _)| seen.insert(n.clone()))
                .map(|(n, v)| format!("\"{n}\":{v}"))
                .collect();
            format!("{{\"ts\":{t}{device},\"metrics\":{{{}}}}}", body.join(","))
        });
    proptest::collection::vec(reading, 1..4).prop_map(|rs| format!("[{}]", rs.join(",")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// Whatever the fast path decodes, the general decoder decodes the same way.
    #[test]
    fn fast_path_agrees_with_the_general_decoder(doc in document(), small in any::<bool>(), named in any::<bool>()) {
        let limits = Limits {
            max_readings_per_message: if small { 2 } else { 10_000 },
            max_string_len: if small { 4 } else { 1024 },
            ..Limits::default()
        };
        let dev = DeviceId::new("dev-1").ok();
        let device = if named { dev.as_ref() } else { None };
        if let Some(f) = fast(doc.as_bytes(), &limits, device) {
            prop_assert_eq!(Some(f), general(doc.as_bytes(), &limits, device), "{}", doc);
        }
    }

    /// The documents devices send are taken by the fast path, as the general decoder
    /// would decode them (unless a value is one it leaves to the general decoder).
    #[test]
    fn plain_documents_take_the_fast_path(doc in plain()) {
        let limits = Limits::default();
        let dev = DeviceId::new("dev-1").ok();
        let general = general(doc.as_bytes(), &limits, dev.as_ref());
        let fast = fast(doc.as_bytes(), &limits, dev.as_ref());
        if fast.is_some() {
            prop_assert_eq!(&fast, &general, "{}", doc);
        }
        if general.is_some() {
            prop_assert!(fast.is_some(), "{}", doc);
        }
    }
}

#[test]
fn the_usual_payloads_take_the_fast_path() {
    let limits = Limits::default();
    for doc in [
        r#"{"ts":1700000000123,"metrics":{"temp":21.5,"on":true,"state":"ok","count":5}}"#,
        r#"[{"ts":1700000000123,"metrics":{"m0":1.25}},{"ts":1700000000124,"metrics":{"m1":-3}}]"#,
        r#" { "metrics" : { "temp" : 2e3 } , "device_id" : "dev-1" } "#,
    ] {
        let dev = DeviceId::new("dev-1").ok();
        let f = fast(doc.as_bytes(), &limits, dev.as_ref());
        assert!(f.is_some(), "{doc}");
        assert_eq!(f, general(doc.as_bytes(), &limits, dev.as_ref()), "{doc}");
    }
    // A metric named twice is left to the general decoder (which refuses it), in small
    // objects and in large ones.
    for n in [2usize, 20] {
        let mut names: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
        names.push("m1".into());
        let body: Vec<String> = names.iter().map(|m| format!("\"{m}\":1")).collect();
        let doc = format!(r#"{{"ts":1700000000000,"metrics":{{{}}}}}"#, body.join(","));
        assert_eq!(fast(doc.as_bytes(), &limits, None), None, "{doc}");
        assert_eq!(general(doc.as_bytes(), &limits, None), None, "{doc}");
    }
    // Numbers the general decoder types specially are decoded alike (or both refused).
    for n in [
        "-0",
        "-0.0",
        "1e-400",
        "-9223372036854775808",
        "-9223372036854775809",
        "-18446744073709551617",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551616",
        "123456789012345678901234567890",
        "0.1e1",
    ] {
        let doc = format!(r#"{{"ts":1700000000000,"metrics":{{"v":{n}}}}}"#);
        let g = general(doc.as_bytes(), &limits, None);
        assert_eq!(fast(doc.as_bytes(), &limits, None), g, "{doc}");
        assert_eq!(g.is_some(), n != "9223372036854775808", "{doc}");
    }
}
