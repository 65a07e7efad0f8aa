//! Runs the ensemble over the NAB corpus, writes NAB's results layout and prints its scores.
//!
//! `cargo run --release -p edgepipe-detect --example nab_eval -- [NAB_DIR] [OUT_DIR] [-v] [--loco]`
//!
//! - `-v`: per-file breakdown under the standard profile (and the `numenta` reference results
//!   beside it when `NAB_DIR/reference-results/numenta` exists).
//! - `--loco`: leave-one-category-out check. A small grid of global configurations is run; for
//!   each fold the configuration and the threshold are chosen on the other categories only,
//!   then scored, at that fixed threshold, on the held-out category (the two artificial
//!   categories form one fold, since `artificialNoAnomaly` has no windows to normalise by).
//!   A split-half check (alternate files) is printed as well.
//! - `--families[=DIR]`: the tuning protocol (module `families`): nested leave-one-family-out
//!   over NAB's categories and the generated look-alike families (written to `DIR`, by default
//!   `$TMPDIR/edgepipe-synth-families`, on first use), with the public score, the held-out
//!   score and their gap, false alarms per file per family and the slow-drift lead times.
//!
//! A JSON `EnsembleConfig` (partial; defaults fill the rest) may be given in
//! `EDGEPIPE_DETECT_CONFIG`.

mod families;

use std::path::PathBuf;

use edgepipe_detect::nab::{
    NabCorpus, PROFILES, Profile, STANDARD, eval_nab, file_scores, read_results, score_corpus,
};
use edgepipe_detect::{EnsembleConfig, SeriesState};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let verbose = args.iter().any(|a| a == "-v");
    let loco = args.iter().any(|a| a == "--loco");
    let synth_dir = args.iter().find_map(|a| {
        if a == "--families" {
            Some(std::env::temp_dir().join("edgepipe-synth-families"))
        } else {
            a.strip_prefix("--families=").map(PathBuf::from)
        }
    });
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
    let report = eval_nab(&data, &out, &config)?;
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
    let corpus = NabCorpus::load(&data)?;
    if verbose {
        let scores = read_results(&corpus, &out, "edgepipe")?;
        let t = report.scores.profiles.first().and_then(|p| p.threshold);
        let ours = file_scores(&corpus, &scores, &STANDARD, t)?;
        let reference = data.join("reference-results");
        let theirs = read_results(&corpus, &reference, "numenta")
            .ok()
            .and_then(|s| {
                let sc = score_corpus(&corpus, "numenta", &s).ok()?;
                let t = sc.profiles.first().and_then(|p| p.threshold);
                file_scores(&corpus, &s, &STANDARD, t).ok()
            });
        for (i, f) in ours.iter().enumerate() {
            let n = theirs.as_ref().and_then(|v| v.get(i));
            let cmp = n.map_or(String::new(), |n| {
                format!(
                    "   numenta {:>7.3} {}/{} fp {:>3}",
                    n.raw, n.detected_windows, n.windows, n.false_positives
                )
            });
            println!(
                "{:>8.3}  {}/{} fp {:>4}  {:<58}{cmp}",
                f.raw, f.detected_windows, f.windows, f.false_positives, f.path
            );
        }
    }
    if std::env::var_os("EDGEPIPE_WINDOWS").is_some() {
        let scores = read_results(&corpus, &out, "edgepipe")?;
        let t = report.scores.profiles.first().and_then(|p| p.threshold);
        let reference = data.join("reference-results");
        let theirs = read_results(&corpus, &reference, "numenta").ok();
        let tn = theirs.as_ref().and_then(|s| {
            score_corpus(&corpus, "numenta", s)
                .ok()
                .and_then(|sc| sc.profiles.first().and_then(|p| p.threshold))
        });
        windows_report(
            &corpus,
            &scores,
            t.unwrap_or(f64::INFINITY),
            theirs.as_deref().zip(tn),
        );
    }
    if let Ok(name) = std::env::var("EDGEPIPE_DUMP") {
        dump(
            &corpus,
            &config,
            &name,
            report.scores.profiles.first().and_then(|p| p.threshold),
        );
    }
    if loco {
        leave_out(&corpus, config)?;
    }
    if let Some(dir) = synth_dir {
        families::run(&data, &corpus, &dir, &grid(config))?;
    }
    Ok(())
}

/// Scores every file with a fresh state under `cfg`.
fn score_all(corpus: &NabCorpus, cfg: &EnsembleConfig) -> Vec<Vec<f64>> {
    corpus
        .files
        .iter()
        .map(|f| {
            let mut st = SeriesState::default();
            f.timestamps
                .iter()
                .zip(&f.values)
                .map(|(&t, &v)| st.update(cfg, t, v).score)
                .collect()
        })
        .collect()
}

/// The normalised score of `scores` on `corpus` under `profile` at a fixed threshold.
fn score_at(corpus: &NabCorpus, scores: &[Vec<f64>], p: &Profile, t: Option<f64>) -> Result<f64> {
    Ok(normalised(
        raw_at(corpus, scores, p, t)?,
        corpus.window_count,
        p,
    ))
}

/// The raw score of `scores` on `corpus` under `profile` at a fixed threshold.
fn raw_at(corpus: &NabCorpus, scores: &[Vec<f64>], p: &Profile, t: Option<f64>) -> Result<f64> {
    Ok(file_scores(corpus, scores, p, t)?
        .iter()
        .map(|f| f.raw)
        .sum())
}

/// NAB's normalisation of a raw score over `windows` windows.
fn normalised(raw: f64, windows: usize, p: &Profile) -> f64 {
    let nw = windows as f64;
    let (null, perfect) = (-p.fn_weight * nw, p.tp_weight * nw);
    100.0 * (raw - null) / (perfect - null)
}

/// A small grid of global configurations around `base`: the knobs that set how readily the
/// ensemble alarms and how fast its baselines adapt.
fn grid(base: EnsembleConfig) -> Vec<(String, EnsembleConfig)> {
    let mut out = vec![("default".to_owned(), base)];
    for a in [0.003, 0.01] {
        let mut c = base;
        c.ewma.alpha = a;
        out.push((format!("ewma.alpha={a}"), c));
    }
    for q in [0.98, 0.99, 0.995, 0.998] {
        let mut c = base;
        c.tail.quantile = q;
        if c != base {
            out.push((format!("tail.quantile={q}"), c));
        }
    }
    for d in [0.995, 0.9995] {
        let mut c = base;
        c.onset.decay = d;
        out.push((format!("onset.decay={d}"), c));
    }
    for r in [10, 50] {
        let mut c = base;
        c.onset.refractory = r;
        out.push((format!("onset.refractory={r}"), c));
    }
    for w in [0.5, 1.0] {
        let mut c = base;
        c.weights.smooth_z = w;
        out.push((format!("weights.smooth_z={w}"), c));
    }
    // The detectors weighted 0 by default, each switched on, and the likelihood calibration:
    // the protocol decides whether they earn their place.
    for (name, set) in [
        (
            "weights.pewma=1",
            (|c: &mut EnsembleConfig| c.weights.pewma = 1.0) as fn(&mut _),
        ),
        ("weights.robust_mad=1", |c| c.weights.robust_mad = 1.0),
        ("weights.rate_of_change=1", |c| {
            c.weights.rate_of_change = 1.0
        }),
        ("weights.volatility=1", |c| c.weights.volatility = 1.0),
        ("calibration=likelihood", |c| {
            c.calibration = edgepipe_detect::ensemble::Calibration::Likelihood
        }),
    ] {
        let mut c = base;
        set(&mut c);
        out.push((name.to_owned(), c));
    }
    // Precedent suppression: from which surprise on a reading is judged by its precedents.
    for l in [1.2, 1.7] {
        let mut c = base;
        c.precedent.level = l;
        out.push((format!("precedent.level={l}"), c));
    }
    // Precedent's long memory of the two largest excursions per side.
    for d in [0.0, 0.99, 0.999] {
        let mut c = base;
        c.precedent.long_decay = d;
        if c != base {
            out.push((format!("precedent.long_decay={d}"), c));
        }
    }
    // The slow-drift detector: on or off, and its firing level.
    for (w, t) in [(0.0, 3.0), (1.0, 3.0), (1.5, 4.0)] {
        let mut c = base;
        c.weights.drift = w;
        c.drift.threshold = t;
        if c != base {
            out.push((format!("weights.drift={w},drift.threshold={t}"), c));
        }
    }
    out
}

/// Leave-one-category-out and split-half: choose (configuration, threshold) on the training
/// part only, report on the held-out part at that fixed threshold.
fn leave_out(corpus: &NabCorpus, base: EnsembleConfig) -> Result {
    let candidates = grid(base);
    let runs: Vec<Vec<Vec<f64>>> = candidates
        .iter()
        .map(|(_, c)| score_all(corpus, c))
        .collect();
    let mut folds: Vec<&str> = corpus
        .files
        .iter()
        .map(|f| families::fold_of(&f.category))
        .collect();
    folds.dedup();
    // Split-half: even-indexed files against odd-indexed ones, both ways.
    let halves: Vec<(String, Vec<bool>)> = vec![
        (
            "even files".to_owned(),
            (0..corpus.files.len()).map(|i| i % 2 == 0).collect(),
        ),
        (
            "odd files".to_owned(),
            (0..corpus.files.len()).map(|i| i % 2 == 1).collect(),
        ),
    ];
    let mut splits: Vec<(String, Vec<bool>)> = folds
        .iter()
        .map(|fold| {
            let held: Vec<bool> = corpus
                .files
                .iter()
                .map(|f| families::fold_of(&f.category) == *fold)
                .collect();
            ((*fold).to_owned(), held)
        })
        .collect();
    splits.extend(halves);
    println!(
        "\nheld-out evaluation ({} candidate configurations)",
        runs.len()
    );
    println!(
        "{:<22} {:<20} {:<26} {:>9} {:>9} {:>11}",
        "held out", "profile", "chosen on the rest", "train", "held-out", "held-out@all"
    );
    // Pooled over the category folds: every file scored by the configuration and threshold
    // chosen without its category, normalised over all windows.
    let mut pooled = [0.0f64; 3];
    let category_folds = folds.len();
    for (fold_no, (name, held)) in splits.iter().enumerate() {
        let pick = |keep: bool| {
            let mut it = held.iter();
            corpus.subset(|_| it.next().is_some_and(|h| *h == keep))
        };
        let (train, test) = (pick(false), pick(true));
        let part = |run: &[Vec<f64>], keep: bool| -> Vec<Vec<f64>> {
            run.iter()
                .zip(held)
                .filter(|(_, h)| **h == keep)
                .map(|(s, _)| s.clone())
                .collect()
        };
        for (pi, p) in PROFILES.iter().enumerate() {
            let mut best: Option<(usize, f64, Option<f64>)> = None;
            for (i, run) in runs.iter().enumerate() {
                let s = score_corpus(&train, "c", &part(run, false))?;
                let ps = s.profiles.iter().find(|x| x.profile == p.name);
                if let Some(ps) = ps
                    && best.is_none_or(|b| ps.score > b.1)
                {
                    best = Some((i, ps.score, ps.threshold));
                }
            }
            let Some((i, train_score, t)) = best else {
                continue;
            };
            if fold_no < category_folds {
                pooled[pi] += raw_at(&test, &part(&runs[i], true), p, t)?;
            }
            let held_score = if test.window_count > 0 {
                format!("{:>9.2}", score_at(&test, &part(&runs[i], true), p, t)?)
            } else {
                let fps: usize = file_scores(&test, &part(&runs[i], true), p, t)?
                    .iter()
                    .map(|f| f.false_positives)
                    .sum();
                format!("{:>6} fp", fps)
            };
            // The default configuration with the threshold fitted on the whole corpus, for
            // comparison (what a tuned-on-everything run shows on the same files).
            let all = score_corpus(corpus, "c", &runs[0])?;
            let t_all = all
                .profiles
                .iter()
                .find(|x| x.profile == p.name)
                .and_then(|x| x.threshold);
            let at_all = if test.window_count > 0 {
                format!(
                    "{:>11.2}",
                    score_at(&test, &part(&runs[0], true), p, t_all)?
                )
            } else {
                String::from("          -")
            };
            println!(
                "{:<22} {:<20} {:<26} {:>9.2} {held_score} {at_all}",
                name, p.name, candidates[i].0, train_score
            );
        }
    }
    for (p, raw) in PROFILES.iter().zip(pooled) {
        println!(
            "pooled leave-one-category-out {:<20} {:>7.2}",
            p.name,
            normalised(raw, corpus.window_count, p)
        );
    }
    Ok(())
}

/// Prints the rows of file `name` that score at or above `t`, with the windows (debugging aid).
fn dump(corpus: &NabCorpus, cfg: &EnsembleConfig, name: &str, t: Option<f64>) {
    let t = t.unwrap_or(f64::INFINITY);
    for f in corpus.files.iter().filter(|f| f.name.contains(name)) {
        println!(
            "{} rows {} probation {} windows {:?}",
            f.name,
            f.len(),
            edgepipe_detect::nab::probationary_len(f.len()),
            f.windows
        );
        let mut st = SeriesState::default();
        for (i, (&ts, &v)) in f.timestamps.iter().zip(&f.values).enumerate() {
            let a = st.update(cfg, ts, v);
            if a.score >= t || (a.raw >= 0.7 && std::env::var("EDGEPIPE_DUMP_RAW").is_ok()) {
                println!(
                    "  {i:>6} v {v:>12.3} score {:.3} raw {:.2} {:?} in {}",
                    a.score,
                    a.raw,
                    a.strongest,
                    f.in_window(i)
                );
            }
        }
    }
}

/// Per-window first detection position and credit, ours against `numenta` (analysis aid,
/// `EDGEPIPE_WINDOWS=1`).
fn windows_report(
    corpus: &NabCorpus,
    ours: &[Vec<f64>],
    t: f64,
    theirs: Option<(&[Vec<f64>], f64)>,
) {
    let credit = |i: usize, s: usize, e: usize| {
        let y = -((e as f64) - (i as f64) + 1.0) / ((e - s + 1) as f64);
        let c = |y: f64| 2.0 / (1.0 + (5.0 * y).exp()) - 1.0;
        c(y) / c(-1.0)
    };
    let (mut sum_o, mut sum_t) = (0.0, 0.0);
    for (fi, f) in corpus.files.iter().enumerate() {
        for w in &f.windows {
            let first = |sc: &[f64], th: f64| {
                (w.start..=w.end).find(|&i| sc.get(i).is_some_and(|&v| v >= th))
            };
            let o = first(&ours[fi], t);
            let n = theirs.and_then(|(s, th)| first(&s[fi], th));
            let co = o.map_or(-1.0, |i| credit(i, w.start, w.end));
            let cn = n.map_or(-1.0, |i| credit(i, w.start, w.end));
            sum_o += co;
            sum_t += cn;
            println!(
                "{:<50} [{:>5},{:>5}] ours {:>6} {:>6.3}  numenta {:>6} {:>6.3}",
                f.name,
                w.start,
                w.end,
                o.map_or("-".to_owned(), |i| (i - w.start).to_string()),
                co,
                n.map_or("-".to_owned(), |i| (i - w.start).to_string()),
                cn
            );
        }
    }
    println!("window credit: ours {sum_o:.2}, numenta {sum_t:.2}");
}
