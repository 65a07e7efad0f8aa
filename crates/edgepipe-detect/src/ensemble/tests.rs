use proptest::prelude::*;

use super::*;
use crate::detectors::DetectorKind;

fn series(n: usize) -> Vec<(i64, f64)> {
    // Deterministic noisy sine with a spike and a level shift.
    let mut s: u64 = 7;
    (0..n)
        .map(|i| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let noise = ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0;
            let mut x = 10.0 + (i as f64 / 20.0).sin() + noise;
            if i == n / 2 {
                x += 30.0;
            }
            if i > 3 * n / 4 {
                x += 8.0;
            }
            (i as i64 * 60_000, x)
        })
        .collect()
}

fn same(a: &Assessment, b: &Assessment) -> bool {
    a.score.to_bits() == b.score.to_bits()
        && a.raw.to_bits() == b.raw.to_bits()
        && a.alarm == b.alarm
        && a.fired == b.fired
        && a.strongest == b.strongest
        && a.expected.map(|(l, h)| (l.to_bits(), h.to_bits()))
            == b.expected.map(|(l, h)| (l.to_bits(), h.to_bits()))
}

fn all_detectors() -> EnsembleConfig {
    // Every detector weighted, likelihood on, so equivalence covers every state field.
    EnsembleConfig {
        weights: Weights {
            ewma_z: 1.0,
            pewma: 1.0,
            robust_mad: 1.0,
            cusum: 1.0,
            flatline: 1.0,
            rate_of_change: 1.0,
            limits: 1.0,
            seasonal: 1.0,
            smooth_z: 1.0,
            volatility: 1.0,
            log_drop: 1.0,
            drift: 1.0,
        },
        calibration: Calibration::Both,
        tail: TailConfig {
            per_detector: true,
            ..TailConfig::default()
        },
        limits: crate::detectors::LimitsConfig {
            min: Some(-100.0),
            max: Some(100.0),
        },
        ..EnsembleConfig::default()
    }
}

#[test]
fn snapshot_restore_continues_bit_identically() {
    let data = series(3000);
    for cfg in [EnsembleConfig::default(), all_detectors()] {
        let mut reference = SeriesDetector::new(cfg).expect("config");
        let expected: Vec<Assessment> = data.iter().map(|&(t, x)| reference.update(t, x)).collect();
        // 2254: inside the run of shifted readings that restarts the baseline (the shift
        // starts at 2251).
        for cut in [0, 1, 49, 250, 1499, 1500, 2254, 2999] {
            let mut d = SeriesDetector::new(cfg).expect("config");
            for &(t, x) in &data[..cut] {
                d.update(t, x);
            }
            // The cuts cover the seasonal warm-up buffer and the learned profile alike.
            if cut >= 1499 {
                assert!(d.state.seasonal.period().is_some(), "cut {cut}");
            }
            if cut == 2254 {
                assert!(
                    d.state.rebase.in_run(),
                    "cut {cut} is not inside a rebase run"
                );
            }
            let json = serde_json::to_string(&d.snapshot()).expect("serialise");
            let snap: Snapshot = serde_json::from_str(&json).expect("deserialise");
            let mut restored = SeriesDetector::restore(cfg, snap).expect("restore");
            for (i, &(t, x)) in data.iter().enumerate().skip(cut) {
                let got = restored.update(t, x);
                assert!(
                    same(&got, &expected[i]),
                    "cut {cut} row {i}: {got:?} vs {:?}",
                    expected[i]
                );
            }
        }
    }
}

#[test]
fn detects_spike_and_explains_it() {
    let data = series(2000);
    let mut d = SeriesDetector::new(EnsembleConfig::default()).expect("config");
    let out: Vec<Assessment> = data.iter().map(|&(t, x)| d.update(t, x)).collect();
    let spike = &out[1000];
    assert!(spike.alarm, "{spike:?}");
    assert!(spike.fired.contains(DetectorKind::EwmaZ));
    let (lo, hi) = spike.expected.expect("expected range");
    assert!(lo < 11.0 && hi > 11.0 && hi < data[1000].1);
    // Quiet before the spike once warmed up.
    assert!(out[300..990].iter().all(|a| !a.alarm));
}

#[test]
fn state_is_small() {
    // Largest while the seasonal warm-up buffer is held, and after it is freed.
    for cfg in [EnsembleConfig::default(), all_detectors()] {
        let mut d = SeriesDetector::new(cfg).expect("config");
        let mut peak = 0;
        for (t, x) in series(5000) {
            d.update(t, x);
            peak = peak.max(d.snapshot().state.memory_bytes());
        }
        eprintln!("peak state {peak} bytes per series");
        assert!(peak <= 2048, "{peak} bytes per series");
    }
}

/// The restart rule and the precedent stage name their own bad settings, through the
/// ensemble's `problems()` (what the server's config check prints).
#[test]
fn rebase_and_precedent_settings_are_checked() {
    let mut cfg = EnsembleConfig::default();
    cfg.rebase.z = f64::NAN;
    cfg.rebase.run = 1;
    cfg.precedent.level = -1.0;
    cfg.weights.smooth_z = f64::INFINITY;
    let fields: Vec<&str> = cfg
        .problems()
        .iter()
        .filter_map(|e| match e {
            crate::Error::InvalidConfig { field, .. } => Some(*field),
            _ => None,
        })
        .collect();
    for want in [
        "rebase.z",
        "rebase.run",
        "precedent.level",
        "weights.smooth_z",
    ] {
        assert!(fields.contains(&want), "{want} missing from {fields:?}");
    }
    assert!(SeriesDetector::new(cfg).is_err());
}

#[test]
fn invalid_configs_are_refused_with_every_problem() {
    let mut cfg = EnsembleConfig::default();
    cfg.ewma.alpha = 1.5;
    cfg.mad.window = 1_000;
    cfg.onset.damping = -1.0;
    assert_eq!(cfg.problems().len(), 3);
    assert!(matches!(
        SeriesDetector::new(cfg),
        Err(crate::Error::InvalidConfig {
            field: "ewma.alpha",
            ..
        })
    ));
}

#[test]
fn restore_refuses_mismatched_state() {
    let mut big = EnsembleConfig::default();
    big.mad.window = 64;
    let mut d = SeriesDetector::new(big).expect("config");
    for (t, x) in series(200) {
        d.update(t, x);
    }
    let snap = d.snapshot();
    // The same state under a smaller window would hold more values than configured.
    assert!(SeriesDetector::restore(EnsembleConfig::default(), snap.clone()).is_err());
    let mut wrong = snap;
    wrong.version = 99;
    assert!(SeriesDetector::restore(big, wrong).is_err());
}

/// A snapshot whose restart run or precedent memory was tampered with (a negative variance to
/// restart with, more remembered excursions than configured) is refused.
#[test]
fn restore_refuses_a_tampered_rebase_or_precedent_state() {
    let mut d = SeriesDetector::new(EnsembleConfig::default()).expect("config");
    for (t, x) in series(300) {
        d.update(t, x);
    }
    let json = serde_json::to_value(d.snapshot()).expect("serialise");
    let ok: Snapshot = serde_json::from_value(json.clone()).expect("deserialise");
    assert!(SeriesDetector::restore(EnsembleConfig::default(), ok).is_ok());
    for (path, bad) in [
        ("rebase/var", serde_json::json!(-1.0)),
        ("precedent/len", serde_json::json!(17)),
    ] {
        let (part, field) = path.split_once('/').expect("path");
        let mut tampered = json.clone();
        tampered["state"][part][field] = bad.clone();
        let snap: Snapshot = serde_json::from_value(tampered).expect("deserialise");
        assert!(
            SeriesDetector::restore(EnsembleConfig::default(), snap).is_err(),
            "{path} = {bad} was restored"
        );
    }
}

/// A snapshot whose log-scale drop state was tampered with (a negative offset, a negative
/// variance) is refused rather than restored into a detector that would score with it.
#[test]
fn restore_refuses_a_tampered_log_drop_state() {
    let mut d = SeriesDetector::new(EnsembleConfig::default()).expect("config");
    for (t, x) in series(300) {
        d.update(t, x.abs() + 1.0);
    }
    let json = serde_json::to_value(d.snapshot()).expect("serialise");
    assert!(
        json["state"]["log_drop"]["c"]
            .as_f64()
            .is_some_and(|c| c > 0.0),
        "the offset was learned: {}",
        json["state"]["log_drop"]
    );
    for (field, bad) in [("c", -1.0), ("sum_abs", -5.0)] {
        let mut tampered = json.clone();
        tampered["state"]["log_drop"][field] = serde_json::json!(bad);
        let snap: Snapshot = serde_json::from_value(tampered).expect("deserialise");
        assert!(
            SeriesDetector::restore(EnsembleConfig::default(), snap).is_err(),
            "log_drop.{field} = {bad} accepted"
        );
    }
    let mut tampered = json;
    tampered["state"]["log_drop"]["stats"]["var"] = serde_json::json!(-1.0);
    let snap: Snapshot = serde_json::from_value(tampered).expect("deserialise");
    assert!(SeriesDetector::restore(EnsembleConfig::default(), snap).is_err());
}

proptest! {
    #[test]
    fn never_panics_and_scores_stay_in_range(
        values in prop::collection::vec(
            prop_oneof![
                8 => -1e6f64..1e6,
                1 => Just(f64::NAN),
                1 => Just(f64::INFINITY),
                1 => Just(-1e300f64),
                1 => Just(0.0f64),
            ],
            0..400,
        ),
        cut in 0usize..400,
    ) {
        let cfg = all_detectors();
        let mut a = SeriesDetector::new(cfg).expect("config");
        let mut b = SeriesDetector::new(cfg).expect("config");
        for (i, &x) in values.iter().enumerate() {
            if i == cut {
                let json = serde_json::to_string(&b.snapshot()).expect("serialise");
                let snap: Snapshot = serde_json::from_str(&json).expect("deserialise");
                b = SeriesDetector::restore(cfg, snap).expect("restore");
            }
            let ra = a.update(i as i64, x);
            let rb = b.update(i as i64, x);
            prop_assert!((0.0..=1.0).contains(&ra.score), "{ra:?}");
            prop_assert!(ra.raw.is_finite() && ra.raw >= 0.0);
            prop_assert!(same(&ra, &rb));
        }
    }
}

/// Uniform noise in [-1, 1) from a fixed seed.
fn noise(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 2.0
        })
        .collect()
}

/// Alarms of `cfg` over a series at 10 that shifts to 40 at reading 1,000 and has a spike of
/// +12 (about 20 of its noise's standard deviations) 300 readings into the new level.
fn alarms_after_a_shift(cfg: &EnsembleConfig) -> Vec<usize> {
    let mut det = SeriesDetector::new(*cfg).expect("valid");
    let mut alarms = Vec::new();
    for (i, e) in noise(1_600, 11).into_iter().enumerate() {
        let mut x = if i < 1_000 { 10.0 } else { 40.0 } + e;
        if i == 1_300 {
            x += 12.0;
        }
        if det.update(i as i64 * 60_000, x).alarm {
            alarms.push(i);
        }
    }
    alarms
}

#[test]
fn after_a_level_shift_the_new_level_is_judged_by_the_old_noise() {
    let cfg = EnsembleConfig::default();
    let got = alarms_after_a_shift(&cfg);
    assert!(got.contains(&1_000), "{got:?}");
    assert!(got.contains(&1_300), "{got:?}");
    assert!(got.iter().all(|&i| i == 1_000 || i == 1_300), "{got:?}");
    // Without the restart, the shift's share of the variance hides the spike.
    let off = EnsembleConfig {
        rebase: RebaseConfig {
            z: 0.0,
            ..RebaseConfig::default()
        },
        ..cfg
    };
    let without = alarms_after_a_shift(&off);
    assert!(without.contains(&1_000), "{without:?}");
    assert!(!without.contains(&1_300), "{without:?}");
    // With the smoothed z-score off the restart takes the reading itself as the level (its
    // smoothed value, if any, is not kept up to date then).
    let unsmoothed = EnsembleConfig {
        weights: Weights {
            smooth_z: 0.0,
            ..cfg.weights
        },
        ..cfg
    };
    let got = alarms_after_a_shift(&unsmoothed);
    assert!(got.contains(&1_000) && got.contains(&1_300), "{got:?}");
}
