//! NAB's scoring rules: sweep scores per row, one threshold per detector and profile optimised
//! over the whole corpus, and normalisation against the null and perfect detectors.

use std::fs;
use std::path::Path;

use serde::Serialize;

use super::corpus::{NabCorpus, NabFile, RowKind, scaled_sigmoid};
use crate::{Error, Result};

/// A NAB application profile: the weights of a true positive, a false positive and a missed
/// window (`config/profiles.json`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Profile {
    /// NAB's name for the profile.
    pub name: &'static str,
    /// Weight of a detected window (`A_tp`).
    pub tp_weight: f64,
    /// Weight of a false positive (`A_fp`).
    pub fp_weight: f64,
    /// Weight of a missed window (`A_fn`).
    pub fn_weight: f64,
}

/// NAB's standard profile.
pub const STANDARD: Profile = Profile {
    name: "standard",
    tp_weight: 1.0,
    fp_weight: 0.11,
    fn_weight: 1.0,
};
/// NAB's profile that penalises false positives twice as hard.
pub const REWARD_LOW_FP: Profile = Profile {
    name: "reward_low_FP_rate",
    tp_weight: 1.0,
    fp_weight: 0.22,
    fn_weight: 1.0,
};
/// NAB's profile that penalises missed windows twice as hard.
pub const REWARD_LOW_FN: Profile = Profile {
    name: "reward_low_FN_rate",
    tp_weight: 1.0,
    fp_weight: 0.11,
    fn_weight: 2.0,
};
/// The three profiles NAB reports, in its order.
pub const PROFILES: [Profile; 3] = [STANDARD, REWARD_LOW_FP, REWARD_LOW_FN];

/// A detector's result under one profile at its optimal threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileScore {
    /// Profile name (`standard`, `reward_low_FP_rate`, `reward_low_FN_rate`).
    pub profile: &'static str,
    /// The optimal threshold: a row with `anomaly_score >= threshold` is a detection. `None`
    /// when never alarming scores best.
    pub threshold: Option<f64>,
    /// Raw score `S` at that threshold.
    pub raw: f64,
    /// Raw score of the null detector (`-A_fn * windows`).
    pub null: f64,
    /// Raw score of a perfect detector (`A_tp * windows`).
    pub perfect: f64,
    /// Normalised NAB score `100 * (S - null) / (perfect - null)`.
    pub score: f64,
    /// Windows with at least one detection.
    pub detected_windows: usize,
    /// Windows without a detection.
    pub missed_windows: usize,
    /// Scored rows outside every window that were detections.
    pub false_positives: usize,
}

/// A detector's scores under every profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorScores {
    /// The detector's name (its results folder).
    pub detector: String,
    /// One entry per profile, in [`PROFILES`] order.
    pub profiles: Vec<ProfileScore>,
}

impl DetectorScores {
    /// The score under the profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&ProfileScore> {
        self.profiles.iter().find(|p| p.profile == name)
    }

    /// The normalised standard-profile score (`NaN` if absent, which [`score_corpus`] never does).
    pub fn standard(&self) -> f64 {
        self.profile(STANDARD.name).map_or(f64::NAN, |p| p.score)
    }
}

/// One file's contribution under a profile at a given threshold.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FileScore {
    /// `<category>/<file>.csv`.
    pub path: String,
    /// Raw score contribution.
    pub raw: f64,
    /// Windows in the file.
    pub windows: usize,
    /// Windows detected.
    pub detected_windows: usize,
    /// False-positive detections.
    pub false_positives: usize,
}

#[derive(Debug, Clone, Copy)]
struct Point {
    score: f64,
    /// `Some(window)` inside a window, `None` outside.
    window: Option<usize>,
    unweighted: f64,
}

fn check_lengths(corpus: &NabCorpus, scores: &[Vec<f64>]) -> Result<()> {
    if scores.len() != corpus.files.len() {
        return Err(Error::RowCount {
            path: "<corpus>".into(),
            expected: corpus.files.len(),
            found: scores.len(),
        });
    }
    for (f, s) in corpus.files.iter().zip(scores) {
        if f.len() != s.len() {
            return Err(Error::RowCount {
                path: f.relative_path().into(),
                expected: f.len(),
                found: s.len(),
            });
        }
    }
    Ok(())
}

fn scored_points(corpus: &NabCorpus, scores: &[Vec<f64>]) -> Vec<Point> {
    let mut pts = Vec::with_capacity(corpus.row_count());
    for (file, file_scores) in corpus.files.iter().zip(scores) {
        for (row, &score) in file.rows.iter().zip(file_scores) {
            let window = match row.kind {
                RowKind::Probation => continue,
                RowKind::InWindow(w) => Some(w),
                RowKind::Outside => None,
            };
            // NaN never reaches a threshold; treat it as the lowest possible score.
            let score = if score.is_nan() {
                f64::NEG_INFINITY
            } else {
                score
            };
            pts.push(Point {
                score,
                window,
                unweighted: row.unweighted,
            });
        }
    }
    pts.sort_by(|a, b| b.score.total_cmp(&a.score));
    pts
}

fn max_tp() -> f64 {
    scaled_sigmoid(-1.0)
}

/// Scores per-file anomaly scores (one `Vec` per corpus file, one score per row) under every
/// NAB profile, each with its own optimal threshold.
///
/// The threshold sweep is `O(n log n)`: rows are sorted once and every distinct score is tried
/// as a threshold while the raw score is updated incrementally.
pub fn score_corpus(
    corpus: &NabCorpus,
    detector: &str,
    scores: &[Vec<f64>],
) -> Result<DetectorScores> {
    check_lengths(corpus, scores)?;
    let pts = scored_points(corpus, scores);
    let profiles = PROFILES
        .iter()
        .map(|p| sweep_profile(&pts, corpus.window_count, p))
        .collect();
    Ok(DetectorScores {
        detector: detector.to_owned(),
        profiles,
    })
}

fn sweep_profile(pts: &[Point], windows: usize, profile: &Profile) -> ProfileScore {
    let max_tp = max_tp();
    let nw = windows as f64;
    let mut best_in_window = vec![-profile.fn_weight; windows];
    let mut total = -profile.fn_weight * nw;
    let mut best: (Option<f64>, f64) = (None, total);
    let mut i = 0;
    while i < pts.len() {
        let s = pts[i].score;
        if s == f64::NEG_INFINITY {
            break;
        }
        while let Some(p) = pts.get(i).filter(|p| p.score == s) {
            match p.window {
                None => total += p.unweighted * profile.fp_weight,
                Some(w) => {
                    let v = p.unweighted * profile.tp_weight / max_tp;
                    if let Some(b) = best_in_window.get_mut(w)
                        && v > *b
                    {
                        total += v - *b;
                        *b = v;
                    }
                }
            }
            i += 1;
        }
        // Strictly greater keeps the highest threshold among equal scores, as NAB's stable
        // sort of its threshold list does.
        if total > best.1 {
            best = (Some(s), total);
        }
    }
    let (threshold, _) = best;
    // Recompute the raw score from scratch at the chosen threshold, so the reported value does
    // not carry the incremental sum's rounding.
    let mut detected = vec![false; windows];
    let mut window_score = vec![-profile.fn_weight; windows];
    let mut fp_sum = 0.0;
    let mut false_positives = 0;
    if let Some(t) = threshold {
        for p in pts.iter().take_while(|p| p.score >= t) {
            match p.window {
                None => {
                    fp_sum += p.unweighted * profile.fp_weight;
                    false_positives += 1;
                }
                Some(w) => {
                    let v = p.unweighted * profile.tp_weight / max_tp;
                    if let (Some(d), Some(b)) = (detected.get_mut(w), window_score.get_mut(w)) {
                        *d = true;
                        if v > *b {
                            *b = v;
                        }
                    }
                }
            }
        }
    }
    let raw = fp_sum + window_score.iter().sum::<f64>();
    let null = -profile.fn_weight * nw;
    let perfect = profile.tp_weight * nw;
    let score = if perfect > null {
        100.0 * (raw - null) / (perfect - null)
    } else {
        0.0
    };
    let detected_windows = detected.iter().filter(|d| **d).count();
    ProfileScore {
        profile: profile.name,
        threshold,
        raw,
        null,
        perfect,
        score,
        detected_windows,
        missed_windows: windows - detected_windows,
        false_positives,
    }
}

/// Per-file breakdown of a detector's raw score under `profile` at `threshold` (`None`: never
/// alarm). The file scores add up to the corpus raw score.
pub fn file_scores(
    corpus: &NabCorpus,
    scores: &[Vec<f64>],
    profile: &Profile,
    threshold: Option<f64>,
) -> Result<Vec<FileScore>> {
    check_lengths(corpus, scores)?;
    let max_tp = max_tp();
    let mut out = Vec::with_capacity(corpus.files.len());
    for (file, file_scores) in corpus.files.iter().zip(scores) {
        let first = file.rows.iter().find_map(|r| match r.kind {
            RowKind::InWindow(w) => Some(w),
            _ => None,
        });
        let n = file.windows.len();
        let mut win = vec![-profile.fn_weight; n];
        let mut det = vec![false; n];
        let mut fp_sum = 0.0;
        let mut fps = 0;
        for (row, &s) in file.rows.iter().zip(file_scores) {
            let hit = threshold.is_some_and(|t| s >= t);
            if !hit {
                continue;
            }
            match row.kind {
                RowKind::Probation => {}
                RowKind::Outside => {
                    fp_sum += row.unweighted * profile.fp_weight;
                    fps += 1;
                }
                RowKind::InWindow(w) => {
                    let local = first.map_or(0, |f| w - f);
                    let v = row.unweighted * profile.tp_weight / max_tp;
                    if let (Some(d), Some(b)) = (det.get_mut(local), win.get_mut(local)) {
                        *d = true;
                        if v > *b {
                            *b = v;
                        }
                    }
                }
            }
        }
        out.push(FileScore {
            path: file.relative_path(),
            raw: fp_sum + win.iter().sum::<f64>(),
            windows: n,
            detected_windows: det.iter().filter(|d| **d).count(),
            false_positives: fps,
        });
    }
    Ok(out)
}

/// The results file of `detector` for `file`: `DIR/<detector>/<category>/<detector>_<file>.csv`.
pub fn results_path(results_dir: &Path, detector: &str, file: &NabFile) -> std::path::PathBuf {
    results_dir
        .join(detector)
        .join(&file.category)
        .join(format!("{detector}_{}.csv", file.name))
}

/// Reads the `anomaly_score` column of every results file of `detector` under `results_dir`,
/// in corpus order. Rows are matched to data rows by position; the other columns are ignored.
pub fn read_results(
    corpus: &NabCorpus,
    results_dir: impl AsRef<Path>,
    detector: &str,
) -> Result<Vec<Vec<f64>>> {
    let dir = results_dir.as_ref();
    corpus
        .files
        .iter()
        .map(|file| {
            let path = results_path(dir, detector, file);
            let scores = read_score_column(&path)?;
            if scores.len() != file.len() {
                return Err(Error::RowCount {
                    path,
                    expected: file.len(),
                    found: scores.len(),
                });
            }
            Ok(scores)
        })
        .collect()
}

fn read_score_column(path: &Path) -> Result<Vec<f64>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let col = header
        .split(',')
        .position(|c| c.trim() == "anomaly_score")
        .ok_or_else(|| Error::Csv {
            path: path.to_owned(),
            line: 1,
            reason: format!("header {header:?} has no anomaly_score column"),
        })?;
    let mut out = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::Csv {
            path: path.to_owned(),
            line: i + 2,
            reason,
        };
        let field = line
            .split(',')
            .nth(col)
            .ok_or_else(|| bad("missing anomaly_score".into()))?;
        let v: f64 = field
            .trim()
            .parse()
            .map_err(|_| bad(format!("anomaly_score {field:?} is not a number")))?;
        out.push(v);
    }
    Ok(out)
}

/// Reads and scores the results of `detector` in NAB's layout under `results_dir`.
pub fn score_results_dir(
    corpus: &NabCorpus,
    results_dir: impl AsRef<Path>,
    detector: &str,
) -> Result<DetectorScores> {
    let scores = read_results(corpus, results_dir, detector)?;
    score_corpus(corpus, detector, &scores)
}
