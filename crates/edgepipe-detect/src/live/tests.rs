use super::*;

fn key(d: &str, m: &str) -> SeriesKey {
    SeriesKey::new(
        DeviceId::new(d).expect("device id"),
        Metric::new(m).expect("metric"),
    )
}

fn lcg(seed: &mut u64) -> f64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    (*seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

fn detector() -> Detector {
    Detector::new(DetectorConfig::test_config(), ModelParams::default()).expect("valid")
}

const MIN: i64 = 60_000;

#[test]
fn one_event_per_episode_with_explanation() {
    let mut d = detector();
    let k = key("pump-1", "temp");
    let mut seed = 1;
    let mut events = Vec::new();
    for i in 0..1500i64 {
        let mut x = 20.0 + lcg(&mut seed);
        if (1000..1010).contains(&i) {
            x += 15.0;
        }
        let s = d.score(&k, i * MIN, x);
        assert_eq!(s.status, ScoreStatus::Scored);
        if let Some(e) = s.event {
            events.push(*e);
        }
    }
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.kind, EventKind::Anomaly);
    assert_eq!(e.ts, 1000 * MIN);
    assert_eq!(e.metric.as_ref().map(Metric::as_str), Some("temp"));
    assert!(e.score >= e.threshold);
    assert!(e.explanation.fired.contains(&DetectorKind::EwmaZ), "{e:?}");
    let (lo, hi) = e.explanation.expected.expect("expected range");
    assert!(lo < 20.0 && 20.0 < hi && hi < 35.0, "{lo} {hi}");
    assert_eq!(e.explanation.value.map(|v| v > 30.0), Some(true));
}

#[test]
fn late_and_duplicate_readings_are_not_learned() {
    let mut d = detector();
    let k = key("d", "m");
    assert_eq!(d.score(&k, 10, 1.0).status, ScoreStatus::Scored);
    let before = d.snapshot().expect("snapshot");
    assert_eq!(d.score(&k, 10, 5.0).status, ScoreStatus::Late);
    assert_eq!(d.score(&k, 9, 5.0).status, ScoreStatus::Late);
    assert_eq!(d.snapshot().expect("snapshot"), before);
}

#[test]
fn hostile_values_and_timestamps_never_panic() {
    let mut d = detector();
    let keys = [key("a", "x"), key("a", "y"), key("b", "x")];
    let values = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::MAX,
        -f64::MAX,
        1e300,
        0.0,
        -0.0,
        f64::MIN_POSITIVE,
        1.0,
    ];
    let stamps = [i64::MIN, -1, 0, 1, i64::MAX / 2, i64::MAX - 1, i64::MAX];
    let mut n = 0;
    for round in 0..50 {
        for k in &keys {
            for (i, v) in values.iter().enumerate() {
                let ts = stamps[(round + i) % stamps.len()];
                let s = d.score(k, ts, *v);
                assert!(s.score.is_finite() && (0.0..=1.0).contains(&s.score));
                n += 1;
            }
        }
        d.tick(i64::MAX);
        d.tick(i64::MIN);
    }
    assert!(n > 0);
    let bytes = d.snapshot().expect("snapshot");
    Detector::restore(*d.config(), &bytes).expect("restore");
}

#[test]
fn silence_of_a_metric_and_of_a_device() {
    let mut d = detector();
    let (t, h, other) = (key("dev", "temp"), key("dev", "hum"), key("dev2", "temp"));
    for i in 0..20i64 {
        d.score(&t, i * MIN, 1.0);
        d.score(&h, i * MIN, 2.0);
        d.score(&other, i * MIN, 3.0);
    }
    assert!(d.tick(20 * MIN).is_empty());
    // hum stops; temp and dev2 keep reporting.
    for i in 20..30i64 {
        d.score(&t, i * MIN, 1.0);
        d.score(&other, i * MIN, 3.0);
    }
    let ev = d.tick(30 * MIN);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].kind, EventKind::Silence);
    assert_eq!(ev[0].metric.as_ref().map(Metric::as_str), Some("hum"));
    let (gap, usual) = ev[0].explanation.silent_for_ms.expect("gap");
    assert_eq!((gap, usual), (11 * MIN, MIN));
    // Reported once.
    assert!(d.tick(31 * MIN).is_empty());
    // The whole of dev stops: one device-wide event (hum is already known silent).
    for i in 30..40i64 {
        d.score(&other, i * MIN, 3.0);
    }
    let ev = d.tick(40 * MIN);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].device.as_str(), "dev");
    assert_eq!(ev[0].metric, None);
    // hum comes back, is silent again later: a new event.
    d.score(&h, 41 * MIN, 2.0);
    let ev = d.tick(60 * MIN);
    assert!(
        ev.iter()
            .any(|e| e.metric.is_none() || e.metric == Some(h.metric.clone()))
    );
}

#[test]
fn device_silence_is_raised_again_without_the_multivariate_model() {
    let mut config = DetectorConfig::test_config();
    config.multivariate.enabled = false;
    let mut d = Detector::new(config, ModelParams::default()).expect("valid");
    let k = key("dev", "m");
    for i in 0..20i64 {
        d.score(&k, i * MIN, 1.0);
    }
    assert_eq!(d.tick(30 * MIN).len(), 1);
    for i in 31..50i64 {
        d.score(&k, i * MIN, 1.0);
    }
    let ev = d.tick(60 * MIN);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0].metric, None);
}

#[test]
fn removed_series_start_afresh() {
    let mut d = detector();
    let (a, b, c) = (key("d", "a"), key("d", "b"), key("e", "c"));
    for i in 0..10i64 {
        for k in [&a, &b, &c] {
            d.score(k, i * MIN, 1.0);
        }
    }
    assert!(d.remove_series(&a));
    assert!(!d.remove_series(&a));
    assert_eq!(d.series_count(), 2);
    // The moved series is still found; the removed one starts over.
    assert_eq!(d.score(&c, 5 * MIN, 1.0).status, ScoreStatus::Late);
    assert_eq!(d.score(&a, 5 * MIN, 1.0).status, ScoreStatus::Scored);
    let bytes = d.snapshot().expect("snapshot");
    assert_eq!(Detector::restore(*d.config(), &bytes).expect("restore"), d);
}

#[test]
fn fitted_interval_detects_silence_from_the_first_reading() {
    let k = key("new", "m");
    let mut params = ModelParams::default();
    params.series.insert(
        k.clone(),
        SeriesParams {
            interval_ms: Some(MIN),
            ..SeriesParams::default()
        },
    );
    let mut d = Detector::new(DetectorConfig::test_config(), params).expect("valid");
    d.score(&k, 0, 1.0);
    assert!(d.tick(4 * MIN).is_empty());
    assert_eq!(d.tick(6 * MIN).len(), 1);
}

#[test]
fn broken_correlation_between_metrics_is_a_device_event() {
    let mut d = detector();
    let (load, temp, cur) = (key("m1", "load"), key("m1", "temp"), key("m1", "current"));
    let mut seed = 3;
    let mut device_events = Vec::new();
    let keys = [load, temp, cur];
    let run = |d: &mut Detector, ev: &mut Vec<Event>, i: i64, l: f64, t: f64, c: f64| {
        for (k, v) in keys.iter().zip([l, t, c]) {
            if let Some(e) = d.score(k, i * MIN, v).device_event {
                ev.push(*e);
            }
        }
    };
    for i in 0..2000i64 {
        let l = (i as f64 / 40.0).sin() * 10.0 + 0.5 * lcg(&mut seed);
        run(
            &mut d,
            &mut device_events,
            i,
            l,
            20.0 + 0.5 * l + 0.1 * lcg(&mut seed),
            2.0 * l + 0.1 * lcg(&mut seed),
        );
    }
    let false_alarms = device_events.len();
    assert!(false_alarms <= 2, "{device_events:?}");
    // Temperature within its range, but no longer following load.
    run(&mut d, &mut device_events, 2000, 8.0, 20.0 - 4.0, 16.0);
    assert_eq!(device_events.len(), false_alarms + 1, "{device_events:?}");
    let e = device_events.last().expect("event");
    assert_eq!(e.kind, EventKind::Multivariate);
    assert_eq!(e.metric, None);
    assert_eq!(e.ts, 2000 * MIN);
    let top = e.explanation.contributing.first().expect("contributing");
    assert_eq!(top.metric.as_str(), "temp", "{e:?}");
}

#[test]
fn feedback_raises_the_threshold_of_one_series() {
    let mut d = detector();
    let (a, b) = (key("d", "a"), key("d", "b"));
    let mut seed = 4;
    let mut first = None;
    for i in 0..1000i64 {
        let x = 5.0 + lcg(&mut seed) + if i == 800 { 6.0 } else { 0.0 };
        d.score(&b, i * MIN, x);
        if let Some(e) = d.score(&a, i * MIN, x).event {
            first.get_or_insert(e);
        }
    }
    let e = first.expect("an event");
    let t = d.apply_feedback(&a, Feedback::FalsePositive { score: e.score });
    assert!(t > e.score);
    assert_eq!(d.params().alarm_score(&a), t);
    assert_eq!(
        d.params().alarm_score(&b),
        d.params().ensemble.onset.alarm_score
    );
    // A true positive below the raised threshold lowers it, never below the default.
    let t2 = d.apply_feedback(&a, Feedback::TruePositive { score: 0.1 });
    assert_eq!(t2, d.params().ensemble.onset.alarm_score);
    // Non-finite feedback changes nothing.
    assert_eq!(
        d.apply_feedback(&a, Feedback::FalsePositive { score: f64::NAN }),
        t2
    );
    // The live threshold follows: at 0.999 even a huge spike is not anomalous for `a`.
    d.apply_feedback(&a, Feedback::FalsePositive { score: 0.99 });
    let s = d.score(&a, 2000 * MIN, 1e6);
    assert!(!s.anomalous && s.event.is_none(), "{s:?}");
    assert!(d.score(&b, 2000 * MIN, 1e6).anomalous);
    // ... and survives a snapshot.
    let r = Detector::restore(*d.config(), &d.snapshot().expect("snapshot")).expect("restore");
    assert_eq!(r.params().alarm_score(&a), 0.999);
    assert_eq!(r, d);
}

#[test]
fn params_hot_swap_keeps_state_and_feedback() {
    let mut d = detector();
    let k = key("d", "m");
    for i in 0..500i64 {
        d.score(&k, i * MIN, (i % 7) as f64);
    }
    let raised = d.apply_feedback(&k, Feedback::FalsePositive { score: 0.8 });
    let mut p = ModelParams::default();
    p.ensemble.onset.refractory = 5;
    assert_eq!(d.set_params(p.clone()).expect("swap"), 0);
    assert_eq!(d.params().alarm_score(&k), raised);
    assert_eq!(d.params().ensemble.onset.refractory, 5);
    // A buffer size change restarts the series that do not fit.
    p.ensemble.seasonal.buffer = 16;
    assert_eq!(d.set_params(p).expect("swap"), 1);
    let bad = ModelParams {
        version: 99,
        ..ModelParams::default()
    };
    assert!(d.set_params(bad).is_err());
}

#[test]
fn fit_finds_period_interval_scale_and_a_threshold() {
    let cfg = crate::EnsembleConfig::default();
    let mut seed = 8;
    let history: Vec<(i64, f64)> = (0..3000i64)
        .map(|i| {
            let x = 50.0 + 10.0 * (i as f64 * std::f64::consts::TAU / 96.0).sin() + lcg(&mut seed);
            (i * 5 * MIN, x)
        })
        .collect();
    let p = crate::fit(&cfg, &history, &crate::FitOptions::default()).expect("fit");
    // The seasonal detector may lock onto a multiple of the cycle (equally valid for its
    // per-phase profile).
    assert!(p.period.is_some_and(|n| n % 96 == 0), "{p:?}");
    assert_eq!(p.interval_ms, Some(5 * MIN));
    assert!((p.mean - 50.0).abs() < 1.0, "{p:?}");
    assert!(p.scale > 5.0 && p.scale < 15.0, "{p:?}");
    // A history full of spikes the ensemble does not learn to expect needs a higher threshold
    // than the default: irregular spikes, about one in 100 readings, of ever new sizes (spikes
    // of one size are suppressed by their precedents already).
    let spiky: Vec<(i64, f64)> = (0..3000i64)
        .map(|i| {
            let spike = lcg(&mut seed) > 0.49;
            let size = 10.0 + (i as f64 / 10.0) * (1.0 + lcg(&mut seed));
            (i * MIN, if spike { size } else { 1.0 + lcg(&mut seed) })
        })
        .collect();
    let q = crate::fit(&cfg, &spiky, &crate::FitOptions::default()).expect("fit");
    assert!(
        q.alarm_score.is_some_and(|a| a > cfg.onset.alarm_score),
        "{q:?}"
    );
    // Round trip through the JSON artifact.
    let params = ModelParams::fit(
        cfg,
        [
            (key("d", "wave"), &history[..]),
            (key("d", "spiky"), &spiky[..]),
        ],
        &crate::FitOptions::default(),
    )
    .expect("fit all");
    let json = params.to_json();
    assert!(json.contains("\"d/spiky\""), "{json}");
    assert_eq!(ModelParams::from_json(&json).expect("parse"), params);
    assert!(ModelParams::from_json(&json.replace("\"version\": 1", "\"version\": 2")).is_err());
}

#[test]
fn seeded_series_scores_without_warm_up() {
    let k = key("d", "m");
    let mut params = ModelParams::default();
    params.series.insert(
        k.clone(),
        SeriesParams {
            mean: 10.0,
            scale: 1.0,
            ..SeriesParams::default()
        },
    );
    let mut d = Detector::new(DetectorConfig::test_config(), params).expect("valid");
    d.score(&k, 0, 10.0);
    let s = d.score(&k, MIN, 30.0);
    assert!(s.anomalous && s.event.is_some(), "{s:?}");
    // Unseeded: the same reading is inside the warm-up.
    let mut d = detector();
    d.score(&k, 0, 10.0);
    assert!(!d.score(&k, MIN, 30.0).anomalous);
}

#[test]
fn restore_refuses_garbage_and_wrong_configuration() {
    assert!(Detector::restore(DetectorConfig::default(), b"").is_err());
    assert!(Detector::restore(DetectorConfig::default(), &[0xff; 64]).is_err());
    let mut d = detector();
    for m in ["a", "b", "c"] {
        d.score(&key("d", m), 0, 1.0);
    }
    let bytes = d.snapshot().expect("snapshot");
    let mut small = DetectorConfig::test_config();
    small.multivariate.max_metrics = 2;
    assert!(Detector::restore(small, &bytes).is_err());
    assert!(Detector::restore(DetectorConfig::test_config(), &bytes).is_ok());
}

mod props {
    use proptest::prelude::*;

    use super::*;

    /// (series index, time step, value) with occasional hostile values.
    fn readings() -> impl Strategy<Value = Vec<(usize, i64, f64)>> {
        let value = prop_oneof![
            20 => -100.0f64..100.0,
            1 => Just(f64::NAN),
            1 => Just(f64::INFINITY),
            1 => Just(1e200),
        ];
        prop::collection::vec((0usize..4, 0i64..3, value), 1..700)
    }

    fn run(d: &mut Detector, keys: &[SeriesKey], rs: &[(usize, i64, f64)], t0: i64) -> Vec<String> {
        let mut out = Vec::new();
        let mut t = t0;
        for &(k, dt, v) in rs {
            t += dt * 1000;
            let s = d.score(&keys[k], t, v);
            out.push(format!(
                "{:x} {:?} {:?} {:?}",
                s.score.to_bits(),
                s.status,
                s.event,
                s.device_event
            ));
            if k == 3 && dt == 2 {
                out.push(format!("{:?}", d.tick(t + 600_000)));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn snapshot_restore_continues_bit_identically(rs in readings(), cut in 0.0f64..1.0) {
            let keys = [key("d1", "a"), key("d1", "b"), key("d1", "c"), key("d2", "a")];
            let cut = ((rs.len() as f64) * cut) as usize;
            let mut whole = detector();
            let expected = run(&mut whole, &keys, &rs, 0);

            let mut first = detector();
            let mut got = run(&mut first, &keys, &rs[..cut], 0);
            let bytes = first.snapshot().expect("snapshot");
            let mut restored = Detector::restore(DetectorConfig::test_config(), &bytes).expect("restore");
            prop_assert_eq!(&restored, &first);
            let t_cut: i64 = rs[..cut].iter().map(|r| r.1 * 1000).sum();
            // Continue with the remaining readings from the same clock.
            let rest = run(&mut restored, &keys, &rs[cut..], t_cut);
            got.extend(rest);
            prop_assert_eq!(got, expected);
            prop_assert_eq!(restored.snapshot().expect("snapshot"), whole.snapshot().expect("snapshot"));
        }
    }
}

#[test]
fn scoring_by_borrowed_ids_equals_scoring_by_key() {
    // Three devices x two metrics interleaved, with a spike on one series: the borrowed-id path
    // finds (and creates) the same series and gives the same scores, events and final state.
    let mut by_key = detector();
    let mut by_ids = detector();
    let mut seed = 7;
    let mut events = 0;
    for i in 0..1200i64 {
        for d in ["a", "b", "c"] {
            for m in ["temp", "load"] {
                let mut x = 10.0 + lcg(&mut seed);
                if d == "b" && m == "load" && (900..905).contains(&i) {
                    x += 20.0;
                }
                let want = by_key.score(&key(d, m), i * MIN, x);
                let got = by_ids.score_ids(d, m, i * MIN, x).expect("valid ids");
                assert_eq!(got.score.to_bits(), want.score.to_bits(), "{d}/{m} at {i}");
                assert_eq!(got.status, want.status);
                assert_eq!(got.event, want.event);
                assert_eq!(got.device_event, want.device_event);
                events += usize::from(got.event.is_some());
            }
        }
    }
    assert!(events >= 1, "the spike raised no event");
    assert_eq!(by_ids.series_count(), 6);
    assert_eq!(
        by_ids.snapshot().expect("snapshot"),
        by_key.snapshot().expect("snapshot")
    );
    // A removed series is found again under the same ids, as a new one.
    assert!(by_ids.remove_series(&key("a", "temp")));
    assert_eq!(by_ids.series_count(), 5);
    let s = by_ids
        .score_ids("a", "temp", 5000 * MIN, 1.0)
        .expect("valid ids");
    assert_eq!(s.status, ScoreStatus::Scored);
    assert_eq!(by_ids.series_count(), 6);
    // Ids that could never be keys are refused, not tracked.
    assert!(by_ids.score_ids("a/b", "temp", 0, 1.0).is_err());
    assert!(by_ids.score_ids("a", "", 0, 1.0).is_err());
    assert_eq!(by_ids.series_count(), 6);
}

#[test]
fn a_slow_drift_raises_an_event_that_states_its_rate_before_the_failure() {
    // A machine temperature every 5 minutes: 10 days around 70 °C with a daily cycle, then
    // +0.6 °C per hour for 12 hours, then a failure (a fall to ambient).
    let mut d = Detector::new(DetectorConfig::default(), ModelParams::default()).expect("valid");
    let k = key("press-7", "bearing_temp");
    let mut seed = 7;
    let (onset, step) = (2880i64, 2880 + 144);
    let mut first = None;
    for i in 0..step + 12 {
        let cycle = (i as f64 / 288.0 * std::f64::consts::TAU).sin();
        let mut x = 70.0 + cycle + lcg(&mut seed);
        if i >= onset {
            x += 0.05 * (i - onset) as f64;
        }
        if i >= step {
            x = 25.0;
        }
        if let Some(e) = d.score(&k, i * 5 * MIN, x).event {
            assert!(i >= onset, "false alarm at {i}: {e:?}");
            if first.is_none() {
                first = Some((i, *e));
            }
        }
    }
    let (i, e) = first.expect("an event");
    assert!(i < step, "the drift was only noticed at the failure ({i})");
    assert_eq!(e.explanation.strongest, Some(DetectorKind::Drift), "{e:?}");
    let trend = e.explanation.drift.expect("a drift explanation");
    assert!(
        trend.per_hour > 0.2 && trend.per_hour < 1.2,
        "rate {} per hour (true 0.6)",
        trend.per_hour
    );
    assert!(trend.hours > 0.5 && trend.hours <= 12.0, "{trend:?}");
    let json = serde_json::to_value(&e).expect("json");
    assert!(
        json["explanation"]["drift"]["per_hour"].is_number(),
        "{json}"
    );
}
