//! Throughput of the default univariate ensemble (run with
//! `cargo test --release -p edgepipe-detect --test throughput -- --ignored --nocapture`).
//! It prints numbers; it asserts nothing about wall-clock time.

use std::time::Instant;

/// CPU seconds this thread has used (Linux `/proc/thread-self/stat`, 10 ms ticks); 0 when
/// unavailable. On a shared machine the CPU-time rate is the per-core rate; wall-clock rates
/// drop whenever other work takes the core.
fn thread_cpu_secs() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/thread-self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

use edgepipe_detect::{EnsembleConfig, SeriesState};

#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn ensemble_points_per_second() {
    let cfg = EnsembleConfig::default();
    let series = 1_000;
    let per_series = 2_000;
    let mut states = vec![SeriesState::default(); series];
    let mut seed: u64 = 1;
    let start = Instant::now();
    let cpu0 = thread_cpu_secs();
    let mut checksum = 0.0;
    for i in 0..per_series {
        for (s, st) in states.iter_mut().enumerate() {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let noise = (seed >> 40) as f64 / (1u64 << 24) as f64;
            let x = (s as f64) + (i as f64 / 50.0).sin() + noise;
            checksum += st.update(&cfg, i as i64 * 1000, x).score;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_secs() - cpu0;
    let points = (series * per_series) as f64;
    let bytes = states
        .iter()
        .map(SeriesState::memory_bytes)
        .max()
        .unwrap_or(0);

    let snap_start = Instant::now();
    let encoded: Vec<String> = states
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    let snap_secs = snap_start.elapsed().as_secs_f64();
    let restore_start = Instant::now();
    let restored = encoded
        .iter()
        .filter_map(|s| serde_json::from_str::<SeriesState>(s).ok())
        .filter(|s| s.check(&cfg).is_ok())
        .count();
    let restore_secs = restore_start.elapsed().as_secs_f64();
    println!(
        "ensemble: {:.0} points/s wall, {:.0} points per CPU-second ({points} points, {secs:.3} s, checksum {checksum:.3}); \
         state {bytes} bytes/series; JSON snapshot {:.0} series/s, restore {:.0} series/s ({restored} ok)",
        points / secs,
        points / cpu.max(1e-9),
        series as f64 / snap_secs,
        series as f64 / restore_secs,
    );
}

#[test]
#[ignore = "measurement; run in release with --ignored --nocapture"]
fn live_detector_points_per_second() {
    use edgepipe_detect::{Detector, DetectorConfig, ModelParams, SeriesKey};
    use edgepipe_types::{DeviceId, Metric};

    // 250 devices × 4 metrics: the multivariate model runs on every device.
    let keys: Vec<SeriesKey> = (0..250)
        .flat_map(|d| {
            (0..4).map(move |m| {
                SeriesKey::new(
                    DeviceId::new(format!("device-{d}")).unwrap_or_else(|e| panic!("{e}")),
                    Metric::new(format!("metric_{m}")).unwrap_or_else(|e| panic!("{e}")),
                )
            })
        })
        .collect();
    for (label, mv) in [("multivariate on", true), ("multivariate off", false)] {
        let mut config = DetectorConfig::default();
        config.multivariate.enabled = mv;
        let mut det =
            Detector::new(config, ModelParams::default()).unwrap_or_else(|e| panic!("{e}"));
        let per_series = 2_000;
        let mut seed: u64 = 1;
        let mut checksum = 0.0;
        let start = Instant::now();
        let cpu0 = thread_cpu_secs();
        for i in 0..per_series {
            for (s, k) in keys.iter().enumerate() {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let noise = (seed >> 40) as f64 / (1u64 << 24) as f64;
                let x = (s % 4) as f64 + (i as f64 / 50.0).sin() + noise;
                checksum += det.score(k, i as i64 * 1000, x).score;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        let cpu = thread_cpu_secs() - cpu0;
        let points = (keys.len() * per_series) as f64;
        let snap_start = Instant::now();
        let bytes = det.snapshot().unwrap_or_default();
        let snap_secs = snap_start.elapsed().as_secs_f64();
        let restore_start = Instant::now();
        let ok = Detector::restore(config, &bytes).is_ok();
        let restore_secs = restore_start.elapsed().as_secs_f64();
        println!(
            "live detector ({label}): {:.0} points/s wall, {:.0} points per CPU-second ({points} points, {secs:.3} s, checksum {checksum:.3}); \
             {:.0} bytes/series in memory, {:.0} bytes/series in the postcard snapshot; \
             snapshot {:.0} series/s, restore {:.0} series/s (ok {ok})",
            points / secs,
            points / cpu.max(1e-9),
            det.memory_bytes() as f64 / keys.len() as f64,
            bytes.len() as f64 / keys.len() as f64,
            keys.len() as f64 / snap_secs,
            keys.len() as f64 / restore_secs,
        );
    }
}
