//! Running a streaming detector over the NAB corpus and writing NAB's results layout.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::corpus::NabCorpus;
use super::scorer::{DetectorScores, results_path, score_results_dir};
use crate::{EnsembleConfig, SeriesState};
use crate::{Error, PointScorer, Result};

/// What [`run_nab`] did and how the detector scored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NabReport {
    /// The detector's name (its folder under the results directory).
    pub detector: String,
    /// `OUT/<detector>`, where the results files were written.
    pub results_dir: PathBuf,
    /// Data files processed.
    pub files: usize,
    /// Rows scored in total.
    pub rows: usize,
    /// Windows in the corpus.
    pub windows: usize,
    /// Normalised scores under the three NAB profiles, read back from the written files.
    pub scores: DetectorScores,
}

/// Runs a fresh detector from `factory` over every file of the NAB corpus at `data_dir`
/// (`data/` and `labels/` inside), one score per row in file order, writes
/// `out_dir/<detector>/<category>/<detector>_<file>.csv` (`timestamp,value,anomaly_score,label`,
/// timestamps and values copied as written), then reads those files back and scores them.
///
/// The factory is called once per file and never sees the labels, so every file is processed
/// with the same configuration.
pub fn run_nab<D, F>(
    data_dir: impl AsRef<Path>,
    out_dir: impl AsRef<Path>,
    detector: &str,
    mut factory: F,
) -> Result<NabReport>
where
    D: PointScorer,
    F: FnMut() -> D,
{
    let corpus = NabCorpus::load(data_dir)?;
    let out_dir = out_dir.as_ref();
    let mut all = Vec::with_capacity(corpus.files.len());
    for file in &corpus.files {
        let mut d = factory();
        let scores: Vec<f64> = file
            .timestamps
            .iter()
            .zip(&file.values)
            .map(|(&t, &v)| d.score(t, v))
            .collect();
        all.push(scores);
    }
    write_nab_results(out_dir, detector, &corpus, &all)?;
    let scores = score_results_dir(&corpus, out_dir, detector)?;
    Ok(NabReport {
        detector: detector.to_owned(),
        results_dir: out_dir.join(detector),
        files: corpus.files.len(),
        rows: corpus.row_count(),
        windows: corpus.window_count,
        scores,
    })
}

/// Runs the default detector of this crate (the ensemble under `config`, one fresh state per
/// file) over the NAB corpus at `data_dir`, writes `out_dir/edgepipe/...` in NAB's layout and
/// scores it: what `edgepipe eval nab --data D --out DIR` does.
pub fn eval_nab(
    data_dir: impl AsRef<Path>,
    out_dir: impl AsRef<Path>,
    config: &EnsembleConfig,
) -> Result<NabReport> {
    config.validate()?;
    let config = *config;
    run_nab(data_dir, out_dir, "edgepipe", || {
        let mut state = SeriesState::default();
        move |ts, v| state.update(&config, ts, v).score
    })
}

/// Writes per-file scores (one `Vec` per corpus file, in corpus order) in NAB's results layout:
/// `out_dir/<detector>/<category>/<detector>_<file>.csv` with the header
/// `timestamp,value,anomaly_score,label`, timestamps and values copied as written in the data
/// file and `label` 1 inside a window, so NAB's own scorer reads it. Scores are clamped to
/// [0, 1]; a NaN is written as 0; a missing score is written as 0.
pub fn write_nab_results(
    out_dir: &Path,
    detector: &str,
    corpus: &NabCorpus,
    scores: &[Vec<f64>],
) -> Result<()> {
    if detector.is_empty() || detector.contains(['/', '\\']) || detector.starts_with('.') {
        return Err(Error::InvalidConfig {
            field: "detector",
            reason: format!("{detector:?} is not a plain folder name"),
        });
    }
    for (file, file_scores) in corpus.files.iter().zip(scores) {
        let path = results_path(out_dir, detector, file);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io("create directory", parent, e))?;
        }
        let mut buf = Vec::with_capacity(file.len() * 48);
        buf.extend_from_slice(b"timestamp,value,anomaly_score,label\n");
        for i in 0..file.len() {
            let s = file_scores.get(i).copied().unwrap_or(0.0);
            let s = if s.is_nan() { 0.0 } else { s.clamp(0.0, 1.0) };
            let (Some(ts), Some(v)) = (file.raw_timestamps.get(i), file.raw_values.get(i)) else {
                break;
            };
            // Writing to a Vec cannot fail.
            let _ = writeln!(buf, "{ts},{v},{s},{}", u8::from(file.in_window(i)));
        }
        fs::write(&path, buf).map_err(|e| Error::io("write", &path, e))?;
    }
    Ok(())
}
