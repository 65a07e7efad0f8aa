//! The `edgepipe` command line: `serve`, `validate`, `demo`, `devices`, `ca`, `cases`, `users`, `audit`,
//! `deadletters`, `query`, `lake`, `models`, `eval`, `bench`.

use clap::{Parser, Subcommand};

use self::bench::BenchCmd;
use self::ca::CaCmd;
use self::cases::{AuditCmd, CasesCmd, UsersCmd};
use self::common::{ConfigArgs, DataDir, LakeArgs};
use self::deadletters::DeadCmd;
use self::demo::DemoArgs;
use self::devices::DevicesCmd;
use self::eval::EvalCmd;
use self::lake::{LakeCmd, QueryArgs};
use self::models::ModelsCmd;
use self::serve::ServeArgs;

pub mod bench;
pub mod ca;
pub mod cases;
pub mod client;
pub mod common;
pub mod deadletters;
pub mod demo;
pub mod devices;
pub mod eval;
pub mod lake;
pub mod models;
pub mod output;
pub mod serve;
/// edgepipe: self-hosted IoT telemetry pipeline server.
#[derive(Debug, Parser)]
#[command(name = "edgepipe", version, about)]
pub struct Cli {
    /// Command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Check a configuration file and print every problem.
    Validate(ConfigArgs),
    /// Run a server and a simulated device fleet over real MQTT, with a live status line.
    Demo(DemoArgs),
    /// Manage devices.
    Devices {
        /// Action.
        #[command(subcommand)]
        action: DevicesCmd,
        /// Data directory.
        #[command(flatten)]
        dir: DataDir,
    },
    /// The built-in certificate authority: init, server-cert, rotate, export.
    Ca {
        /// Action.
        #[command(subcommand)]
        action: CaCmd,
        /// Data directory.
        #[command(flatten)]
        dir: DataDir,
    },
    /// Work cases: list, show, acknowledge, assign, comment, resolve, reopen.
    Cases {
        /// Action.
        #[command(subcommand)]
        action: CasesCmd,
        /// Where the state store is.
        #[command(flatten)]
        store: LakeArgs,
    },
    /// Manage API users (tokens with a role: viewer, operator, admin).
    Users {
        /// Action.
        #[command(subcommand)]
        action: UsersCmd,
        /// Where the state store is.
        #[command(flatten)]
        store: LakeArgs,
    },
    /// The audit log: verify its hash chain.
    Audit {
        /// Action.
        #[command(subcommand)]
        action: AuditCmd,
        /// Where the state store is.
        #[command(flatten)]
        store: LakeArgs,
    },
    /// Inspect dead letters (refused messages).
    Deadletters {
        /// Action.
        #[command(subcommand)]
        action: DeadCmd,
        /// Data directory.
        #[command(flatten)]
        dir: DataDir,
    },
    /// Print the WAL's records as JSON lines (the server must be stopped).
    WalDump {
        /// Data directory.
        #[command(flatten)]
        dir: DataDir,
        /// First sequence to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Run SQL over the lake (through the running server, which adds rows not yet flushed, or
    /// directly on the lake files when no server runs).
    Query(QueryArgs),
    /// Lake maintenance: stats, compact, verify.
    Lake {
        /// Action.
        #[command(subcommand)]
        action: LakeCmd,
        /// Config file and data directory.
        #[command(flatten)]
        args: LakeArgs,
    },
    /// Detection model artifacts: train from the lake, list, promote.
    Models {
        /// Action.
        #[command(subcommand)]
        action: ModelsCmd,
        /// Config file and data directory.
        #[command(flatten)]
        args: LakeArgs,
    },
    /// Evaluate the detector on a public benchmark.
    Eval {
        /// Which benchmark.
        #[command(subcommand)]
        which: EvalCmd,
    },
    /// Benchmarks.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        which: BenchCmd,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve::serve(a).await,
        Command::Validate(a) => {
            let cfg = common::load_config(&a)?;
            cfg.validate()?;
            println!("configuration is valid");
            Ok(())
        }
        Command::Demo(a) => demo::demo(a).await,
        Command::Devices { action, dir } => devices::devices(action, dir.data_dir),
        Command::Ca { action, dir } => ca::ca_cmd(action, dir.data_dir),
        Command::Cases { action, store } => cases::cases_cmd(action, store).await,
        Command::Users { action, store } => cases::users_cmd(action, store).await,
        Command::Audit { action, store } => cases::audit_cmd(action, store).await,
        Command::Deadletters { action, dir } => {
            deadletters::deadletters(action, dir.data_dir).await
        }
        Command::WalDump { dir, from } => serve::wal_dump(dir.data_dir, from),
        Command::Query(a) => lake::query_cmd(a).await,
        Command::Models { action, args } => models::models_cmd(action, args).await,
        Command::Eval {
            which: EvalCmd::Nab { data, out },
        } => eval::eval_nab(data, out),
        Command::Eval {
            which: EvalCmd::Sim(a),
        } => eval::run(a),
        Command::Eval {
            which: EvalCmd::Csv(a),
        } => eval::eval_csv(a),
        Command::Eval {
            which: EvalCmd::Synth { out, seed, files },
        } => eval::eval_synth(out, seed, files),
        Command::Lake { action, args } => lake::lake_cmd(action, args).await,
        Command::Bench { which } => match which {
            BenchCmd::Ingest(a) => bench::bench_ingest(a).await,
            BenchCmd::Lake(a) => bench::run(a).await,
            BenchCmd::Cases(a) => {
                let out = edgepipe_cases::bench::run(edgepipe_cases::bench::BenchArgs {
                    rate: a.rate,
                    seconds: a.seconds,
                    cases: a.cases,
                    runs: a.runs,
                })
                .await?;
                println!("{}", serde_json::to_string_pretty(&out)?);
                Ok(())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    /// `--data-dir` goes before or after the action, for every command that has actions.
    #[test]
    fn data_dir_is_accepted_before_and_after_the_action() {
        for args in [
            ["edgepipe", "devices", "add", "pump-1", "--data-dir", "/d"],
            ["edgepipe", "devices", "--data-dir", "/d", "add", "pump-1"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            match cli.command {
                Command::Devices { dir, .. } => assert_eq!(dir.data_dir.to_str(), Some("/d")),
                other => panic!("{other:?}"),
            }
        }
        for args in [
            ["edgepipe", "deadletters", "list", "--data-dir", "/d"],
            ["edgepipe", "deadletters", "--data-dir", "/d", "list"],
        ] {
            let cli = Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            match cli.command {
                Command::Deadletters { dir, .. } => {
                    assert_eq!(dir.data_dir.to_str(), Some("/d"))
                }
                other => panic!("{other:?}"),
            }
        }
        for sub in [["users", "list"], ["cases", "list"], ["lake", "stats"]] {
            let args = ["edgepipe", sub[0], sub[1], "--data-dir", "/d"];
            assert!(Cli::try_parse_from(args).is_ok(), "{args:?}");
        }
    }
}
