//! NAB (Numenta Anomaly Benchmark) evaluation: the corpus loader, a scorer that implements
//! NAB's published rules, and [`run_nab`], which runs a streaming detector over every file,
//! writes NAB's results layout and scores it.
//!
//! This is the only module of the crate that touches the file system.

mod corpus;
mod runner;
mod scorer;

pub use corpus::{NabCorpus, NabFile, Window, parse_timestamp, probationary_len};
pub use runner::{NabReport, eval_nab, run_nab, write_nab_results};
pub use scorer::{
    DetectorScores, FileScore, PROFILES, Profile, ProfileScore, REWARD_LOW_FN, REWARD_LOW_FP,
    STANDARD, file_scores, read_results, results_path, score_corpus, score_results_dir,
};

#[cfg(test)]
mod tests;
