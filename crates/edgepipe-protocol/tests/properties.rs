//! Property tests: codec round trips, and every decoder on arbitrary bytes returns instead of
//! panicking.

use std::collections::BTreeMap;

use edgepipe_protocol::envelope::{self, Compression};
use edgepipe_protocol::http::{self, Format, Precision};
use edgepipe_protocol::mapping::{PayloadFormat, TopicMapping, TopicMappingConfig};
use edgepipe_protocol::{Limits, decode_payload, decode_payload_for, encode_json};
use edgepipe_types::{BatchOrigin, DeviceId, Metric, Reading, TsSource, Value};
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000_000;
const MIN: i64 = 946_684_800_000;

fn metric_name() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_][A-Za-z0-9_.:-]{0,20}"
}

fn value() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<f64>()
            .prop_filter("finite", |v| v.is_finite())
            .prop_map(Value::F64),
        any::<i64>().prop_map(Value::I64),
        any::<bool>().prop_map(Value::Bool),
        // Any Unicode, including quotes, backslashes and control characters.
        ".{0,40}".prop_map(Value::Str),
    ]
}

fn reading() -> impl Strategy<Value = Reading> {
    (metric_name(), MIN..=NOW + 300_000, value()).prop_map(|(m, ts, value)| Reading {
        metric: Metric::new(m).unwrap_or_else(|e| panic!("{e}")),
        ts,
        value,
        ts_source: TsSource::Device,
    })
}

/// Readings where a few timestamps repeat, so that grouping into objects is exercised.
fn readings() -> impl Strategy<Value = Vec<Reading>> {
    prop::collection::vec((reading(), any::<bool>()), 1..40).prop_map(|v| {
        let mut out: Vec<Reading> = Vec::with_capacity(v.len());
        for (mut r, same_ts) in v {
            if same_ts && let Some(prev) = out.last() {
                r.ts = prev.ts;
            }
            out.push(r);
        }
        out
    })
}

fn origin() -> impl Strategy<Value = BatchOrigin> {
    (".{1,30}", ".{1,30}", any::<u64>()).prop_map(|(source, stream, seq)| BatchOrigin {
        source,
        stream,
        seq,
    })
}

fn dev() -> DeviceId {
    DeviceId::new("d1").unwrap_or_else(|e| panic!("{e}"))
}

/// Bytes that look like the start of some format, followed by arbitrary bytes, so the
/// decoders get past their first checks.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let prefixes = prop_oneof![
        Just(Vec::new()),
        Just(b"EPB\x01".to_vec()),
        Just(b"EPB\x01\x00\x37{\"source\":\"a\",\"stream\":\"s\",\"seq\":1,\"compression\":\"lz4\"}".to_vec()),
        Just(b"EPB\x01\x00\x38{\"source\":\"a\",\"stream\":\"s\",\"seq\":1,\"compression\":\"none\"}".to_vec()),
        Just(b"{\"ts\":".to_vec()),
        Just(b"[{\"metrics\":{\"a\":".to_vec()),
        Just(b"m,device_id=d1 f=".to_vec()),
    ];
    let tail = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        // JSON- and line-protocol-ish alphabet.
        "[{}\\[\\]\":,0-9a-z.eE+\\- =\\\\#\n\r\t]{0,200}".prop_map(String::into_bytes),
    ];
    (prefixes, tail).prop_map(|(mut p, t)| {
        p.extend(t);
        p
    })
}

fn mappings() -> Vec<TopicMapping> {
    let base = TopicMappingConfig {
        pattern: "f/{device_id}/{metric}".into(),
        payload: PayloadFormat::Raw,
        metric: None,
        metrics: BTreeMap::new(),
        ts_pointer: None,
    };
    let json_scalar = TopicMappingConfig {
        payload: PayloadFormat::Json,
        ..base.clone()
    };
    let native = TopicMappingConfig {
        pattern: "f/{device_id}/{metric2}".into(),
        payload: PayloadFormat::Json,
        ..base.clone()
    };
    let pointers = TopicMappingConfig {
        pattern: "f/{device_id}/{line}".into(),
        payload: PayloadFormat::Json,
        metrics: [
            ("t".to_owned(), "/a".to_owned()),
            ("u".to_owned(), "/b/0".to_owned()),
        ]
        .into(),
        ts_pointer: Some("/ts".into()),
        ..base.clone()
    };
    [base, json_scalar, native, pointers]
        .iter()
        .map(|c| TopicMapping::compile(c).unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn envelope_round_trips(o in origin(), rs in readings(), c in 0..3usize) {
        let c = [Compression::None, Compression::Lz4, Compression::Zstd][c];
        let bytes = envelope::encode(&o, &rs, c);
        let d = envelope::decode(&bytes, NOW, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(d.origin, Some(o));
        prop_assert_eq!(d.readings, rs);
        // decode_payload detects the envelope.
        prop_assert!(decode_payload(&bytes, NOW, &Limits::default()).is_ok());
    }

    #[test]
    fn json_encoding_round_trips(rs in readings()) {
        let bytes = encode_json(&rs);
        let d = decode_payload(&bytes, NOW, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        prop_assert_eq!(d.origin, None);
        prop_assert_eq!(d.readings, rs);
    }

    /// JSON written by another encoder (serde_json) decodes to the same values.
    #[test]
    fn json_from_serde_json_decodes(
        ts in MIN..=NOW,
        metrics in prop::collection::btree_map(metric_name(), value(), 1..20),
    ) {
        let mut obj = serde_json::Map::new();
        for (k, v) in &metrics {
            let j = match v {
                Value::F64(f) => serde_json::json!(f),
                Value::I64(i) => serde_json::json!(i),
                Value::Bool(b) => serde_json::json!(b),
                Value::Str(s) => serde_json::json!(s),
            };
            obj.insert(k.clone(), j);
        }
        let text = serde_json::json!({"ts": ts, "metrics": obj}).to_string();
        let d = decode_payload(text.as_bytes(), NOW, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        let got: BTreeMap<String, Value> = d
            .readings
            .into_iter()
            .map(|r| {
                assert_eq!(r.ts, ts);
                (r.metric.as_str().to_owned(), r.value)
            })
            .collect();
        prop_assert_eq!(got, metrics);
    }

    /// Line protocol written by the rules in the http module docs decodes to the same values.
    #[test]
    fn line_protocol_round_trips(
        measurement in "[a-z][a-z0-9_]{0,10}",
        fields in prop::collection::btree_map("[a-z][a-z0-9_]{0,10}", value(), 1..10),
        ts_ms in prop::option::of(MIN..=NOW),
    ) {
        // A string with a newline would span lines; that is not line protocol.
        let fields: BTreeMap<String, Value> = fields
            .into_iter()
            .map(|(k, v)| match v {
                Value::Str(s) => (k, Value::Str(s.replace(['\n', '\r'], " "))),
                v => (k, v),
            })
            .collect();
        let mut line = format!("{measurement},site=a\\ b ");
        let parts: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::F64(f) => format!("{f:?}"),
                    Value::I64(i) => format!("{i}i"),
                    Value::Bool(b) => b.to_string(),
                    Value::Str(s) => format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")),
                };
                format!("{k}={v}")
            })
            .collect();
        line.push_str(&parts.join(","));
        if let Some(ts) = ts_ms {
            line.push_str(&format!(" {ts}"));
        }
        let d = http::decode_body(
            Format::LineProtocol, line.as_bytes(), &dev(), NOW, &Limits::default(), Precision::Ms,
        );
        prop_assert!(d.errors.is_empty(), "{:?} for {}", d.errors, line);
        let got: BTreeMap<String, Value> = d
            .readings
            .iter()
            .map(|r| (r.metric.as_str().to_owned(), r.value.clone()))
            .collect();
        let want: BTreeMap<String, Value> = fields
            .into_iter()
            .map(|(k, v)| {
                let name = if k == "value" { measurement.clone() } else { format!("{measurement}.{k}") };
                (name, v)
            })
            .collect();
        prop_assert_eq!(got, want);
        for r in &d.readings {
            prop_assert_eq!(r.ts, ts_ms.unwrap_or(NOW));
        }
    }

    #[test]
    fn payload_decoders_never_panic(bytes in hostile_bytes(), now in any::<i64>()) {
        let limits = Limits::default();
        let _ = decode_payload(&bytes, NOW, &limits);
        let _ = decode_payload(&bytes, now, &limits);
        let _ = decode_payload_for(&dev(), &bytes, NOW, &limits);
        let _ = envelope::decode(&bytes, NOW, &limits);
    }

    /// An intact lz4 envelope around a hostile body reaches the body decoder.
    #[test]
    fn envelope_with_hostile_lz4_body_never_panics(body in hostile_bytes()) {
        let header = br#"{"source":"a","stream":"s","seq":1,"compression":"lz4"}"#;
        let mut bytes = b"EPB\x01".to_vec();
        bytes.extend_from_slice(&u16::try_from(header.len()).unwrap_or(0).to_be_bytes());
        bytes.extend_from_slice(header);
        bytes.extend(lz4_flex::block::compress_prepend_size(&body));
        let _ = decode_payload(&bytes, NOW, &Limits::default());
    }

    /// An intact zstd envelope around a hostile body reaches the body decoder, and a hostile
    /// zstd frame is an error, never a panic.
    #[test]
    fn envelope_with_hostile_zstd_never_panics(body in hostile_bytes()) {
        let header = br#"{"source":"a","stream":"s","seq":1,"compression":"zstd"}"#;
        let mut bytes = b"EPB\x01".to_vec();
        bytes.extend_from_slice(&u16::try_from(header.len()).unwrap_or(0).to_be_bytes());
        bytes.extend_from_slice(header);
        let mut raw = bytes.clone();
        bytes.extend(zstd::bulk::compress(&body, 3).unwrap_or_default());
        let _ = decode_payload(&bytes, NOW, &Limits::default());
        raw.extend_from_slice(&body);
        let _ = decode_payload(&raw, NOW, &Limits::default());
    }

    #[test]
    fn http_decoders_never_panic(bytes in hostile_bytes(), p in 0..4usize) {
        let precision = [Precision::Ns, Precision::Us, Precision::Ms, Precision::S][p];
        for format in [Format::Json, Format::Ndjson, Format::LineProtocol] {
            let d = http::decode_body(format, &bytes, &dev(), NOW, &Limits::default(), precision);
            // Every error carries a message.
            prop_assert!(d.errors.iter().all(|e| !e.message.is_empty()));
        }
    }

    #[test]
    fn mapping_decoders_never_panic(
        topic in "[a-z0-9/ +#]{0,20}",
        bytes in hostile_bytes(),
    ) {
        for m in mappings() {
            let t = m.matches(&topic).or_else(|| m.matches("f/d1/x"));
            if let Some(t) = t {
                let _ = m.decode(&t, &bytes, NOW, &Limits::default());
            }
        }
    }

    #[test]
    fn content_type_and_precision_parsers_never_panic(s in ".{0,40}") {
        let _ = Format::from_content_type(Some(&s));
        let _ = Precision::parse(&s);
        let _ = edgepipe_protocol::parse_telemetry_topic(&s);
        let _ = TopicMapping::compile(&TopicMappingConfig {
            pattern: s.clone(),
            payload: PayloadFormat::Json,
            metric: None,
            metrics: BTreeMap::new(),
            ts_pointer: None,
        });
    }
}
