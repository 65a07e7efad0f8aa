//! Runs the ensemble over the NAB corpus and prints its scores.
//!
//! `cargo run --release -p edgepipe-detect --example nab_eval -- [NAB_DIR] [OUT_DIR] [-v]`
//! A JSON `EnsembleConfig` (partial; defaults fill the rest) may be given in
//! `EDGEPIPE_DETECT_CONFIG`.

use std::path::PathBuf;

use edgepipe_detect::nab::{NabCorpus, STANDARD, file_scores, read_results, run_nab};
use edgepipe_detect::{Detector, EnsembleConfig, PointScorer};

/// Scores with the ensemble, or with its raw surprise squashed to [0, 1].
struct Raw {
    det: Detector,
    raw: bool,
}

impl PointScorer for Raw {
    fn score(&mut self, ts: i64, value: f64) -> f64 {
        let a = self.det.update(ts, value);
        if self.raw {
            a.raw / (1.0 + a.raw)
        } else {
            a.score
        }
    }
}

fn main() -> anyhow_free::Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "-v");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let data = pos
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/datasets/nab"));
    let out = pos
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("edgepipe-nab-results"));
    let config: EnsembleConfig = match std::env::var("EDGEPIPE_DETECT_CONFIG") {
        Ok(s) => serde_json::from_str(&s)?,
        Err(_) => EnsembleConfig::default(),
    };
    config.validate()?;
    let raw = std::env::var("EDGEPIPE_SCORE").is_ok_and(|v| v == "raw");
    let report = run_nab(&data, &out, "edgepipe", || Raw {
        det: Detector::new(config).expect("validated above"),
        raw,
    })?;
    for p in &report.scores.profiles {
        println!(
            "{:<20} {:>7.2}  threshold {:?}  detected {}/{}  fp {}",
            p.profile,
            p.score,
            p.threshold,
            p.detected_windows,
            p.detected_windows + p.missed_windows,
            p.false_positives
        );
    }
    if verbose {
        let corpus = NabCorpus::load(&data)?;
        let scores = read_results(&corpus, &out, "edgepipe")?;
        let std = report.scores.profiles.first().and_then(|p| p.threshold);
        for f in file_scores(&corpus, &scores, &STANDARD, std)? {
            println!(
                "{:>8.3}  {}/{} fp {:>4}  {}",
                f.raw, f.detected_windows, f.windows, f.false_positives, f.path
            );
        }
    }
    Ok(())
}

mod anyhow_free {
    pub(crate) type Result = std::result::Result<(), Box<dyn std::error::Error>>;
}
