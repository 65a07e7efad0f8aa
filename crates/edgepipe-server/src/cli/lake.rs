//! `edgepipe query` and `edgepipe lake stats|compact|verify`.

use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};

use edgepipe_types::{Clock, SystemClock};

use crate::cli::client::*;
use crate::cli::common::*;
use crate::cli::output::{FormatArg, Listing};

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
        /// Output format.
        #[command(flatten)]
        format: FormatArg,
        /// One row per partition instead of one per table.
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
        LakeCmd::Stats { format, partitions } => {
            let stats = edgepipe_lake::lake_stats(&store).await?;
            let per_row = |bytes: u64, rows: u64| {
                if rows > 0 {
                    bytes as f64 / rows as f64
                } else {
                    0.0
                }
            };
            let mut out = if partitions {
                Listing::new(&[
                    "table",
                    "partition",
                    "files",
                    "rows",
                    "bytes",
                    "bytes_per_row",
                ])
            } else {
                Listing::new(&["table", "files", "rows", "bytes", "bytes_per_row"])
            };
            for t in &stats {
                let parts: Vec<(Option<&str>, u64, u64, u64)> = if partitions {
                    t.partitions
                        .iter()
                        .map(|p| (Some(p.partition.as_str()), p.files, p.rows, p.bytes))
                        .collect()
                } else {
                    vec![(None, t.files, t.rows, t.bytes)]
                };
                for (partition, files, rows, bytes) in parts {
                    let b = per_row(bytes, rows);
                    let mut cells = vec![t.table.clone()];
                    cells.extend(partition.map(str::to_owned));
                    cells.extend([
                        files.to_string(),
                        rows.to_string(),
                        bytes.to_string(),
                        format!("{b:.2}"),
                    ]);
                    let mut obj = serde_json::json!({
                        "table": t.table,
                        "files": files,
                        "rows": rows,
                        "bytes": bytes,
                        "bytes_per_row": b,
                    });
                    if let Some(p) = partition {
                        obj["partition"] = p.into();
                    }
                    out.push(cells, obj);
                }
            }
            let (files, rows, bytes) = stats.iter().fold((0, 0, 0), |(f, r, b), t| {
                (f + t.files, r + t.rows, b + t.bytes)
            });
            out.footer = Some(format!(
                "{} tables: {files} files, {rows} rows, {bytes} bytes",
                stats.len()
            ));
            out.print(format.get())?;
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
