//! What several commands share: the config and data-directory arguments, loading and
//! validating the configuration, the state store, Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use edgepipe_types::config::Problem;

use crate::config::ServerConfig;

/// Config file flag.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

/// The data directory of the commands that work on it offline (devices, dead letters, the
/// WAL dump): accepted before or after the action, as every command's options are.
#[derive(Debug, Args)]
pub struct DataDir {
    /// Data directory.
    #[arg(
        long,
        default_value = "./edgepipe-data",
        env = "EDGEPIPE_DATA_DIR",
        global = true
    )]
    pub data_dir: PathBuf,
}

/// Where the lake is.
#[derive(Debug, Args)]
pub struct LakeArgs {
    /// TOML configuration file (for `[lake]` settings such as an S3 URL).
    #[arg(long, env = "EDGEPIPE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory (the lake is `<data-dir>/lake` unless `lake.url` says otherwise).
    #[arg(long, env = "EDGEPIPE_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
}

pub(crate) fn load_config(args: &ConfigArgs) -> anyhow::Result<ServerConfig> {
    let cfg = ServerConfig::load(args.config.as_deref(), std::env::vars())?;
    report_unknown_env(&cfg);
    Ok(cfg)
}

/// Warns about each `EDGEPIPE_*` variable no setting reads (it changed nothing).
pub(crate) fn report_unknown_env(cfg: &ServerConfig) {
    for name in &cfg.unknown_env {
        tracing::warn!(
            variable = %name,
            settings = %crate::config::ENV_SETTINGS.join(", "),
            "unknown environment variable ignored: no setting reads it"
        );
    }
}

/// The configuration of `a` (file, environment, `--data-dir`), refused with every problem
/// `problems` finds in it: a command checks the sections it uses.
fn config_checked(
    a: &LakeArgs,
    problems: impl Fn(&ServerConfig) -> Vec<Problem>,
) -> anyhow::Result<ServerConfig> {
    let mut cfg = ServerConfig::load(a.config.as_deref(), std::env::vars())?;
    report_unknown_env(&cfg);
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    let problems: Vec<String> = problems(&cfg).iter().map(ToString::to_string).collect();
    if !problems.is_empty() {
        bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    Ok(cfg)
}

/// The configuration for commands that read the lake (its settings checked).
pub(crate) fn lake_config(a: &LakeArgs) -> anyhow::Result<ServerConfig> {
    config_checked(a, |c| c.lake.problems())
}

pub(crate) fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// The state store (cases, users, audit) of `a`'s configuration.
pub(crate) async fn state_store(a: &LakeArgs) -> anyhow::Result<edgepipe_cases::SqlCaseStore> {
    let cfg = config_checked(a, |c| c.cases.problems())?;
    crate::stages::cases::open_store(&cfg.data_dir, &cfg.cases).await
}

/// The signals that stop a service: SIGINT (Ctrl-C) and SIGTERM (what systemd, Kubernetes and
/// Docker send). [`ShutdownSignals::install`] takes them over at once, before anything tells
/// the world the service is up: a signal that arrives while the server starts, or between its
/// "serving" line and the first wait, is kept and ends the next [`ShutdownSignals::recv`]
/// instead of killing the process with nothing flushed.
pub(crate) struct ShutdownSignals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    /// Installs the handlers (inside the runtime). A signal whose handler cannot be installed
    /// keeps its default action; the error is logged.
    pub(crate) fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let take = |kind: SignalKind, name: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot handle {name}; it stops the process without a drain");
                    None
                }
            };
            Self {
                int: take(SignalKind::interrupt(), "SIGINT"),
                term: take(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Waits for the next SIGINT or SIGTERM (one received since [`install`](Self::install)
    /// counts) and names it.
    pub(crate) async fn recv(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(&mut self.int) => "SIGINT",
                _ = next(&mut self.term) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
            "Ctrl-C"
        }
    }
}

/// Picks `preferred` if free, otherwise an ephemeral port on the same IP.
pub(crate) fn free_or_ephemeral(preferred: SocketAddr) -> SocketAddr {
    match std::net::TcpListener::bind(preferred) {
        Ok(l) => {
            drop(l);
            preferred
        }
        Err(_) => SocketAddr::new(preferred.ip(), 0),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use crate::cli::common::ShutdownSignals;

    /// The race a CI run lost: a SIGTERM sent after the handlers are installed but before
    /// anything waits for it is kept (the process does not die) and ends the next wait.
    #[tokio::test]
    async fn a_signal_sent_before_the_wait_is_kept_for_it() {
        let mut signals = ShutdownSignals::install();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .map(|s| s.success());
        assert!(matches!(sent, Ok(true)), "kill: {sent:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), signals.recv()).await;
        assert_eq!(got, Ok("SIGTERM"));
    }
}
