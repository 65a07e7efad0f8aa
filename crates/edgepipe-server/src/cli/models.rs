//! `edgepipe models train|list|promote`.

use std::time::Duration;

use clap::Subcommand;

use crate::cli::common::*;
use crate::cli::output::{FormatArg, Listing};

/// `models` actions.
#[derive(Debug, Subcommand)]
pub enum ModelsCmd {
    /// Fit per-series parameters from the lake's readings of the last `--since`.
    Train {
        /// History to fit on (e.g. 30d, 12h).
        #[arg(long, default_value = "30d")]
        since: String,
        /// Promote the new artifact at once (the running server swaps it in).
        #[arg(long, conflicts_with = "auto_promote")]
        promote: bool,
        /// Promote it only if it scores better on operators' labels than the promoted one
        /// (with no labels: only if nothing is promoted yet).
        #[arg(long)]
        auto_promote: bool,
    },
    /// List artifacts (`*` marks the promoted one).
    List {
        /// Output format.
        #[command(flatten)]
        format: FormatArg,
    },
    /// Promote an artifact: the running detection stage swaps it in at its next checkpoint.
    Promote {
        /// Version, as printed by `train` or `list`.
        version: String,
    },
}

pub(crate) async fn models_cmd(action: ModelsCmd, a: LakeArgs) -> anyhow::Result<()> {
    let cfg = lake_config(&a)?;
    match action {
        ModelsCmd::Train {
            since,
            promote,
            auto_promote,
        } => {
            let since = humantime::parse_duration(&since)
                .map_err(|e| anyhow::anyhow!("--since {since:?}: {e} (write e.g. 30d)"))?;
            let store = crate::stages::lake::open_store(&cfg.data_dir, &cfg.lake)?;
            let mut qcfg = cfg.query.clone();
            // Training reads raw history: lift the interactive row limit.
            qcfg.max_rows = usize::MAX;
            let engine = edgepipe_query::QueryEngine::new(
                store,
                None,
                edgepipe_lake::SwapLock::default(),
                qcfg,
            );
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("reading history and labels, fitting, evaluating");
            bar.enable_steady_tick(Duration::from_millis(120));
            let how = match (promote, auto_promote) {
                (true, _) => crate::stages::models::Promote::Always,
                (false, true) => crate::stages::models::Promote::IfBetter,
                (false, false) => crate::stages::models::Promote::Never,
            };
            let r = crate::stages::models::train(
                &cfg.data_dir,
                &engine,
                since,
                edgepipe_types::Clock::now_ms(&edgepipe_types::SystemClock),
                how,
            )
            .await;
            bar.finish_and_clear();
            let r = r?;
            println!(
                "trained model {}: {} series fitted on {} readings",
                r.version, r.series, r.readings
            );
            let show = |name: &str, s: &edgepipe_detect::eval::LabelScore| {
                println!(
                    "  {name:<24} precision {:.3}  recall {:.3}  F1 {:.3}  ({} of {} confirmed found, fired on {} of {} false positives)",
                    s.precision,
                    s.recall,
                    s.f1,
                    s.detected,
                    s.confirmed,
                    s.fired_on_false,
                    s.false_positive
                );
            };
            println!("on {} labelled intervals:", r.labels);
            show(&r.version, &r.score);
            show(&r.baseline.0, &r.baseline.1);
            for (series, t) in &r.raised {
                println!("  threshold of {series} raised to {t:.3} above its false positives");
            }
            if r.promoted {
                println!("promoted {}", r.version);
            } else if how != crate::stages::models::Promote::Never {
                println!(
                    "kept {} (the new model does not score better)",
                    r.baseline.0
                );
            }
        }
        ModelsCmd::List { format } => {
            let mut out = Listing::new(&["promoted", "version", "series", "f1", "labels"]);
            let list = crate::stages::models::list(&cfg.data_dir)?;
            for (v, series, current) in &list {
                let eval = crate::stages::models::evaluation(&cfg.data_dir, v);
                let f1 = eval.as_ref().and_then(|e| e["score"]["f1"].as_f64());
                let labels = eval.as_ref().and_then(|e| e["labels"].as_u64());
                out.push(
                    vec![
                        if *current { "*" } else { "" }.to_owned(),
                        v.clone(),
                        series.to_string(),
                        f1.map_or_else(|| "-".into(), |f| format!("{f:.3}")),
                        labels.map_or_else(|| "-".into(), |n| n.to_string()),
                    ],
                    serde_json::json!({
                        "promoted": current,
                        "version": v,
                        "series": series,
                        "f1": f1,
                        "labels": labels,
                    }),
                );
            }
            out.footer = Some(format!("{} artifacts (* promoted)", list.len()));
            out.print(format.get())?;
        }
        ModelsCmd::Promote { version } => {
            crate::stages::models::promote(&cfg.data_dir, &version)?;
            println!("promoted {version}; a running server swaps it in at its next checkpoint");
        }
    }
    Ok(())
}
