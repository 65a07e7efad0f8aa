//! NAB (Numenta Anomaly Benchmark) evaluation: the corpus loader, a scorer that implements
//! NAB's published rules, and [`run_nab`], which runs a streaming detector over every file,
//! writes NAB's results layout and scores it.
//!
//! [`synth`] generates look-alike labelled families in the same layout for the tuning protocol.
//!
//! With `csv_eval`, the only modules of the crate that touch the file system.

mod corpus;
mod runner;
mod scorer;
pub mod synth;

pub use corpus::{NabCorpus, NabFile, Window, parse_timestamp, probationary_len};
pub use runner::{NabReport, eval_nab, run_nab, write_nab_results};
pub use scorer::{
    DetectorScores, FileScore, PROFILES, Profile, ProfileScore, REWARD_LOW_FN, REWARD_LOW_FP,
    STANDARD, file_scores, read_results, results_path, score_corpus, score_results_dir,
};

#[cfg(test)]
mod tests;
