use std::collections::HashMap;
use std::time::Duration;

use super::*;

fn cfg(seed: u64) -> FleetConfig {
    FleetConfig {
        devices: 8,
        metrics: 6,
        seed,
        interval: Duration::from_secs(10),
        anomaly_rate: 4.0,
        ..FleetConfig::default()
    }
}

fn fleet(c: FleetConfig) -> Fleet {
    Fleet::new(c).expect("valid config")
}

/// The rounded value the series would have without anomalies.
fn clean(f: &Fleet, dev: usize, k: usize, t: i64) -> f64 {
    let p = f.series(dev, k);
    let fac = f.factors(dev, t);
    finish(&p.spec, f.clean_raw(dev, k, t, &p, &fac))
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va.sqrt() * vb.sqrt())
}

#[test]
fn same_seed_same_output_different_seed_differs() {
    let (a, b, c) = (fleet(cfg(7)), fleet(cfg(7)), fleet(cfg(8)));
    let start = a.config().start_ms;
    let end = start + 24 * 3_600_000;
    let mut differs = false;
    for dev in 0..a.device_count() {
        for i in 0..500 {
            let t = start + i * 97_000;
            assert_eq!(a.tick(dev, t), b.tick(dev, t));
            differs |= a.tick(dev, t) != c.tick(dev, t);
        }
    }
    assert!(differs, "another seed must give other data");
    assert_eq!(a.labels(start, end), b.labels(start, end));
    assert_ne!(a.labels(start, end), c.labels(start, end));
    // Order of calls does not matter: the model is a pure function.
    let t = start + 12_345_000;
    let later_first = (a.tick(3, t + 1_000_000), a.tick(3, t));
    assert_eq!(later_first.1, b.tick(3, t));
}

#[test]
fn ids_and_metric_names() {
    let f = fleet(FleetConfig {
        devices: 12,
        metrics: 12,
        ..cfg(1)
    });
    let ids = f.device_ids();
    assert_eq!(ids.first().map(String::as_str), Some("sim-0001"));
    assert_eq!(ids.last().map(String::as_str), Some("sim-0012"));
    let names = f.metric_names();
    assert_eq!(
        &names[..5],
        ["temp", "power", "vibration", "humidity", "pressure"]
    );
    assert_eq!(names[10], "metric_10");
    assert_eq!(names[11], "metric_11");
    for n in names.iter().chain(&ids) {
        assert!(edgepipe_types::Metric::new(n.clone()).is_ok(), "{n}");
    }
    assert!(f.tick(12, f.config().start_ms).is_none(), "unknown device");
}

#[test]
fn invalid_config_lists_every_problem() {
    let bad = FleetConfig {
        metrics: 0,
        interval: Duration::ZERO,
        anomaly_rate: f64::NAN,
        device_prefix: "bad/prefix".into(),
        ..FleetConfig::default()
    };
    let err = Fleet::new(bad).expect_err("must be refused").to_string();
    for field in ["metrics", "interval", "anomaly_rate", "device_prefix"] {
        assert!(err.contains(field), "{field} missing from: {err}");
    }
}

#[test]
fn config_round_trips_through_json_with_humantime_durations() {
    let c = cfg(3);
    let json = serde_json::to_string(&c).expect("serialises");
    assert!(json.contains("\"interval\":\"10s\""), "{json}");
    let back: FleetConfig = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, c);
    let partial: FleetConfig =
        serde_json::from_str(r#"{"devices": 2, "interval": "500ms"}"#).expect("parses");
    assert_eq!(partial.interval, Duration::from_millis(500));
    assert_eq!(partial.metrics, FleetConfig::default().metrics);
    assert!(serde_json::from_str::<FleetConfig>(r#"{"devcies": 2}"#).is_err());
}

#[test]
fn signals_are_realistic_and_correlated_within_a_device() {
    let f = fleet(FleetConfig {
        devices: 2,
        metrics: 5,
        anomaly_rate: 0.0,
        interval: Duration::from_secs(300),
        ..cfg(11)
    });
    let start = f.config().start_ms;
    let mut series: HashMap<String, Vec<f64>> = HashMap::new();
    for i in 0..(3 * 288) {
        let r = f
            .tick(0, start + i * 300_000)
            .expect("no dropouts without anomalies");
        for (m, v) in r {
            series.entry(m).or_default().push(v);
        }
    }
    let temp = &series["temp"];
    let (lo, hi) = temp
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(lo > 5.0 && hi < 40.0, "temp range {lo}..{hi}");
    assert!(
        hi - lo > 2.0,
        "temp must follow a daily cycle, range {lo}..{hi}"
    );
    assert!(
        series["pressure"]
            .iter()
            .all(|p| (950.0..1080.0).contains(p))
    );
    assert!(series["power"].iter().all(|p| *p >= 0.0));
    let r = pearson(temp, &series["power"]);
    assert!(r > 0.5, "temp and power should move together, r = {r}");
    let r = pearson(temp, &series["humidity"]);
    assert!(r < -0.3, "humidity should fall as temp rises, r = {r}");
    // Two devices are not copies of each other.
    assert_ne!(f.tick(0, start), f.tick(1, start));
}

#[test]
fn every_kind_occurs_at_about_the_configured_rate() {
    let c = cfg(5);
    let f = fleet(c.clone());
    let start = c.start_ms;
    let hours = 48;
    let labels = f.labels(start, start + hours * 3_600_000);
    let mut per_kind: HashMap<AnomalyKind, usize> = HashMap::new();
    let mut anomalies = 0usize;
    for l in &labels {
        // Dropouts are labelled once per metric; count the anomaly once.
        if l.kind != AnomalyKind::Dropout || l.metric == "temp" {
            *per_kind.entry(l.kind).or_default() += 1;
            anomalies += 1;
        }
        assert!(l.end_ms > l.start_ms);
        assert_eq!(
            (l.start_ms - start) % 10_000,
            0,
            "aligned to the sample grid"
        );
    }
    for kind in AnomalyKind::ALL {
        assert!(
            per_kind.get(&kind).copied().unwrap_or(0) > 5,
            "{kind} too rare: {per_kind:?}"
        );
    }
    let expected = c.anomaly_rate * (c.devices as f64) * hours as f64;
    let ratio = anomalies as f64 / expected;
    assert!(
        (0.6..1.2).contains(&ratio),
        "{anomalies} anomalies, expected ~{expected}"
    );
    // Labels of one device never overlap.
    let mut by_dev: HashMap<&str, Vec<(i64, i64)>> = HashMap::new();
    for l in labels
        .iter()
        .filter(|l| l.kind != AnomalyKind::Dropout || l.metric == "temp")
    {
        by_dev
            .entry(&l.device)
            .or_default()
            .push((l.start_ms, l.end_ms));
    }
    for spans in by_dev.values_mut() {
        spans.sort_unstable();
        assert!(
            spans.windows(2).all(|w| w[0].1 <= w[1].0),
            "overlap: {spans:?}"
        );
    }
}

#[test]
fn every_label_is_visible_in_the_data_and_nothing_else_is_touched() {
    let c = cfg(9);
    let f = fleet(c.clone());
    let start = c.start_ms;
    let end = start + 24 * 3_600_000;
    let labels = f.labels(start, end);
    let dev_index: HashMap<String, usize> = f
        .device_ids()
        .into_iter()
        .enumerate()
        .map(|(i, d)| (d, i))
        .collect();
    let iv = 10_000;
    let mut checked: HashMap<AnomalyKind, usize> = HashMap::new();
    for l in &labels {
        let dev = dev_index[&l.device];
        let k = f
            .metric_names()
            .iter()
            .position(|m| *m == l.metric)
            .expect("metric exists");
        let scale = f.series(dev, k).scale;
        let times: Vec<i64> = (l.start_ms..l.end_ms).step_by(iv as usize).collect();
        assert!(!times.is_empty());
        let mut got = Vec::new();
        let mut diff = Vec::new();
        for &t in &times {
            let r = f.tick(dev, t);
            if l.kind == AnomalyKind::Dropout {
                assert!(r.is_none(), "dropout must emit nothing: {l:?}");
                continue;
            }
            let v = r.expect("not a dropout")[k].1;
            got.push(v);
            diff.push(v - clean(&f, dev, k, t));
        }
        let abs_last = diff.last().map(|d| d.abs()).unwrap_or(0.0);
        match l.kind {
            AnomalyKind::Spike => assert!(abs_last >= 1.5 * scale, "{l:?} {diff:?}"),
            AnomalyKind::LevelShift => {
                assert!(
                    diff.iter().all(|d| d.abs() >= 0.9 * scale),
                    "{l:?} {diff:?}"
                )
            }
            AnomalyKind::Drift => {
                assert!(times.len() >= 10);
                assert!(abs_last >= 1.3 * scale, "{l:?} {diff:?}");
                assert!(diff[0].abs() < abs_last, "{l:?} {diff:?}");
            }
            AnomalyKind::Stuck => {
                assert!(times.len() >= 5);
                assert!(got.windows(2).all(|w| w[0] == w[1]), "{l:?} {got:?}");
            }
            AnomalyKind::NoiseBurst => {
                let mean_abs = diff.iter().map(|d| d.abs()).sum::<f64>() / diff.len() as f64;
                let noise = f.series(dev, k).spec.noise;
                assert!(mean_abs > 3.0 * noise, "{l:?} {diff:?}");
            }
            AnomalyKind::Dropout => {}
        }
        *checked.entry(l.kind).or_default() += 1;
        // The sample just before and just after the window is normal (windows are separated).
        for t in [l.start_ms - iv, l.end_ms] {
            if let Some(r) = f.tick(dev, t) {
                assert_eq!(r[k].1, clean(&f, dev, k, t), "outside {l:?}");
            }
        }
    }
    assert_eq!(checked.len(), AnomalyKind::ALL.len(), "{checked:?}");
    // Away from labels the data is exactly the clean signal.
    for dev in 0..f.device_count() {
        let id = &f.device_ids()[dev];
        for i in 0..2000 {
            let t = start + i * 43_000;
            let labelled = labels
                .iter()
                .any(|l| &l.device == id && l.start_ms <= t && t < l.end_ms);
            if labelled {
                continue;
            }
            let r = f.tick(dev, t).expect("only labelled dropouts are silent");
            for (k, (_, v)) in r.iter().enumerate() {
                assert_eq!(*v, clean(&f, dev, k, t));
            }
        }
    }
}

#[test]
fn labels_respect_the_range_and_write_as_csv() {
    let f = fleet(cfg(2));
    let start = f.config().start_ms;
    let all = f.labels(start, start + 24 * 3_600_000);
    let from = start + 6 * 3_600_000;
    let to = start + 7 * 3_600_000;
    let some = f.labels(from, to);
    assert!(!some.is_empty());
    assert!(some.iter().all(|l| l.end_ms > from && l.start_ms < to));
    assert!(some.iter().all(|l| all.contains(l)));
    assert!(f.labels(to, from).is_empty());

    let mut buf = Vec::new();
    f.write_labels_csv(&mut buf, from, to).expect("writes");
    let text = String::from_utf8(buf).expect("utf-8");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("device,metric,start_ms,end_ms,kind"));
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), some.len());
    let first: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(first[0], some[0].device);
    assert_eq!(first[2].parse::<i64>().ok(), Some(some[0].start_ms));
    assert_eq!(first[4].parse::<AnomalyKind>().ok(), Some(some[0].kind));

    let dir = std::env::temp_dir().join(format!("edgepipe-sim-labels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("labels.csv");
    save_labels_csv(&path, &some).expect("saves");
    assert_eq!(std::fs::read_to_string(&path).expect("reads"), text);
    let _ = std::fs::remove_dir_all(&dir);
    let err = save_labels_csv(&dir.join("missing/labels.csv"), &some).expect_err("no such dir");
    assert!(err.to_string().contains("missing"), "{err}");
}

#[test]
fn kind_names_round_trip() {
    for k in AnomalyKind::ALL {
        assert_eq!(k.as_str().parse::<AnomalyKind>(), Ok(k));
        assert_eq!(serde_json::to_string(&k).ok(), Some(format!("\"{k}\"")));
    }
    assert!("bogus".parse::<AnomalyKind>().is_err());
}

#[test]
fn zero_rate_means_no_anomalies_and_extreme_times_do_not_panic() {
    let f = fleet(FleetConfig {
        anomaly_rate: 0.0,
        ..cfg(4)
    });
    let start = f.config().start_ms;
    assert!(f.labels(start, start + 48 * 3_600_000).is_empty());
    let busy = fleet(FleetConfig {
        anomaly_rate: 3600.0,
        ..cfg(4)
    });
    for t in [i64::MIN, -1, 0, i64::MAX] {
        let _ = busy.tick(0, t);
        let _ = f.tick(0, t);
    }
    assert!(!busy.labels(start, start + 3_600_000).is_empty());
}
