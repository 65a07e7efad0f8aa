//! Golden test: a fixed CSV in, the anomalies the default ensemble reports out.
//! Set `UPDATE_GOLDEN=1` to rewrite `tests/golden/anomalies.txt` after an intended change.

use std::fmt::Write;
use std::path::PathBuf;

use edgepipe_detect::{EnsembleConfig, SeriesDetector};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn detect(csv: &str) -> String {
    let mut cfg = EnsembleConfig::default();
    cfg.limits.min = Some(0.0);
    let mut det = SeriesDetector::new(cfg).expect("default config is valid");
    let mut out = String::from("row,timestamp_s,value,score,fired,expected_lo,expected_hi\n");
    for (row, line) in csv.lines().skip(1).enumerate() {
        let (ts, v) = line.split_once(',').expect("two columns");
        let ts: i64 = ts.parse().expect("timestamp");
        let v: f64 = v.parse().expect("value");
        let a = det.update(ts * 1000, v);
        if a.alarm {
            let fired: Vec<&str> = a.fired.iter().map(|k| k.name()).collect();
            let (lo, hi) = a.expected.unwrap_or((f64::NAN, f64::NAN));
            let _ = writeln!(
                out,
                "{row},{ts},{v},{:.6},{},{lo:.3},{hi:.3}",
                a.score,
                fired.join("+")
            );
        }
    }
    out
}

#[test]
fn golden_anomalies_of_fixed_csv() {
    let input = std::fs::read_to_string(golden_dir().join("input.csv")).expect("input");
    let got = detect(&input);
    let path = golden_dir().join("anomalies.txt");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).expect("write golden");
    }
    let want = std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 creates it)");
    assert_eq!(
        got, want,
        "detector output changed; if intended, rerun with UPDATE_GOLDEN=1"
    );
}
