//! `edgepipe-agent`: parses flags, loads the configuration, runs the agent (all logic lives in
//! the library).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use edgepipe_agent::config::AgentConfig;

#[derive(Debug, Parser)]
#[command(name = "edgepipe-agent", version, about = "edgepipe edge agent")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the agent.
    Run {
        /// TOML configuration file.
        #[arg(long, short, env = "EDGEPIPE_AGENT_CONFIG")]
        config: PathBuf,
        /// Override `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Check a configuration file and print every problem with its key path.
    Validate {
        /// TOML configuration file.
        #[arg(long, short, env = "EDGEPIPE_AGENT_CONFIG")]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<AgentConfig, ExitCode> {
    AgentConfig::load(path).map_err(|problems| {
        eprintln!("{}: {} problem(s):", path.display(), problems.len());
        for p in &problems {
            eprintln!("  {p}");
        }
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGEPIPE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colours only on a terminal: a log going to a file, a pipe or journald stays plain.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::Validate { config } => match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Cmd::Run { config, data_dir } => {
            let mut cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            match run(cfg) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("edgepipe-agent: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(cfg: AgentConfig) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cancel = tokio_util::sync::CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            c.cancel();
        });
        #[cfg(unix)]
        {
            let c = cancel.clone();
            if let Ok(mut term) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                tokio::spawn(async move {
                    term.recv().await;
                    c.cancel();
                });
            }
        }
        edgepipe_agent::run(cfg, cancel, |s| match s.http {
            Some(a) => println!("edgepipe-agent running: http://{a}"),
            None => println!("edgepipe-agent running: http disabled"),
        })
        .await?;
        Ok(())
    })
}
