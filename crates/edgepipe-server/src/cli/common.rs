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

pub(crate) async fn wait_for_ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Waits for SIGINT (Ctrl-C) or SIGTERM (what systemd, Kubernetes and Docker send to stop a
/// service) and names the one that came. Create it once and keep it: each call installs the
/// handlers anew.
pub(crate) async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    if r.is_err() {
                        // No SIGINT handler could be installed: SIGTERM is the only way out.
                        term.recv().await;
                        return "SIGTERM";
                    }
                    "SIGINT"
                }
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                wait_for_ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        wait_for_ctrl_c().await;
        "Ctrl-C"
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
