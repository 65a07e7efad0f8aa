//! `edgepipe query` and `edgepipe lake stats|compact|verify`.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

use edgepipe_types::{Clock, SystemClock};

use crate::cli::client::*;
use crate::cli::common::*;

/// `query` flags.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL (tables: readings, rollup_1m, rollup_1h).
    pub sql: String,
    /// Output: table, csv, json or arrow (Arrow IPC stream on stdout).
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Config file and data directory.
    #[command(flatten)]
    pub lake: LakeArgs,
}

/// `lake` actions.
#[derive(Debug, Subcommand)]
pub enum LakeCmd {
    /// Files, rows and bytes per table and partition.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show every partition, not only table totals.
        #[arg(long)]
        partitions: bool,
    },
    /// Compact every partition now (the server must be stopped; it compacts on its own).
    Compact,
    /// Check every file's footer and schema.
    Verify,
}

pub(crate) async fn query_cmd(a: QueryArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let format = edgepipe_query::OutputFormat::parse(&a.format)?;
    let cfg = lake_config(&a.lake)?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_message("running query");
    bar.enable_steady_tick(Duration::from_millis(120));
    let (schema, batches) = if let Some(addr) = running_server(&cfg.data_dir) {
        let (status, body) =
            http_post(&addr, "/api/v1/query?format=arrow", a.sql.as_bytes()).await?;
        bar.finish_and_clear();
        if status != 200 {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            bail!(
                "{}",
                v["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("server answered {status}"))
            );
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        (schema, batches)
    } else {
        let store = crate::stages::lake::open_store(&cfg.data_dir, &cfg.lake)?;
        eprintln!(
            "note: no server is running on {}; reading lake files only (records still in the WAL reach the lake at the next start)",
            cfg.data_dir.display()
        );
        let engine = edgepipe_query::QueryEngine::new(
            store,
            None,
            edgepipe_lake::SwapLock::default(),
            cfg.query.clone(),
        );
        let out = engine.query(&a.sql).await;
        bar.finish_and_clear();
        let out = out?;
        (out.schema, out.batches)
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    edgepipe_query::write_output(format, &schema, &batches, &mut w)?;
    if format == edgepipe_query::OutputFormat::Json {
        writeln!(w)?;
    }
    w.flush()?;
    Ok(())
}

pub(crate) async fn lake_cmd(action: LakeCmd, a: LakeArgs) -> anyhow::Result<()> {
    let cfg = lake_config(&a)?;
    let store = crate::stages::lake::open_store(&cfg.data_dir, &cfg.lake)?;
    match action {
        LakeCmd::Stats { json, partitions } => {
            let stats = edgepipe_lake::lake_stats(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(());
            }
            println!(
                "{:<12} {:>8} {:>14} {:>14} {:>10}",
                "table", "files", "rows", "bytes", "B/row"
            );
            for t in &stats {
                let per = if t.rows > 0 {
                    t.bytes as f64 / t.rows as f64
                } else {
                    0.0
                };
                println!(
                    "{:<12} {:>8} {:>14} {:>14} {:>10.2}",
                    t.table, t.files, t.rows, t.bytes, per
                );
                if partitions {
                    for p in &t.partitions {
                        println!(
                            "  {:<26} {:>8} {:>14} {:>14}",
                            p.partition, p.files, p.rows, p.bytes
                        );
                    }
                }
            }
        }
        LakeCmd::Compact => {
            let _lock = crate::server::lock_data_dir(&cfg.data_dir).map_err(|e| match e {
                crate::server::StartError::Locked(_) => anyhow::anyhow!(
                    "a server is running on {}; it compacts in the background (lake.compaction_interval)",
                    cfg.data_dir.display()
                ),
                e => e.into(),
            })?;
            let wal = edgepipe_wal::Wal::open(cfg.data_dir.join("wal"), cfg.wal.clone())?;
            let committed = wal
                .consumers()
                .get(edgepipe_lake::LAKE_CONSUMER)
                .copied()
                .unwrap_or(0);
            wal.close();
            // A pass a crash (or kill) interrupted is finished first, so the partition is
            // whole before it is read again.
            edgepipe_lake::recover_compactions(&store).await?;
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("compacting");
            bar.enable_steady_tick(Duration::from_millis(120));
            let r = edgepipe_lake::compact(
                &store,
                &cfg.lake,
                &edgepipe_lake::SwapLock::default(),
                committed,
                SystemClock.now_ms(),
                true,
            )
            .await;
            bar.finish_and_clear();
            let r = r?;
            println!(
                "compacted {} partitions: {} files -> {}, {} rows -> {} ({} duplicates removed), {} -> {} bytes",
                r.partitions,
                r.files_in,
                r.files_out,
                r.rows_in,
                r.rows_out,
                r.duplicates_removed,
                r.bytes_in,
                r.bytes_out
            );
        }
        LakeCmd::Verify => {
            let (problems, checked) = edgepipe_lake::verify(&store).await?;
            for p in &problems {
                println!("{}: {}", p.key, p.problem);
            }
            if !problems.is_empty() {
                bail!("{} problems in {checked} files", problems.len());
            }
            println!("{checked} files verified: footers and schemas are sound");
        }
    }
    Ok(())
}
