//! `edgepipe ca init|server-cert|rotate|export`: the built-in CA of a data directory (see
//! `gateway/ca.rs`); device certificates come from `edgepipe devices add ID --cert` and
//! `devices issue-cert`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;

use edgepipe_types::{Clock, SystemClock};

use crate::gateway::ca;

/// `ca` actions.
#[derive(Debug, Subcommand)]
pub enum CaCmd {
    /// Create the CA (`<data>/ca/ca.key`, mode 0600, and `ca.pem`) and a server certificate
    /// it signs for `--server-name` (`<data>/ca/server.pem` / `server.key`).
    Init {
        /// The CA's name (subject CN).
        #[arg(long, default_value = "edgepipe device CA")]
        name: String,
        /// Validity of the CA certificate, days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Names (DNS or IP) of the server certificate; repeat the flag for more.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
    },
    /// Issue a new server certificate from the CA (`<data>/ca/server.pem` / `server.key`
    /// unless `--out`); a running server picks it up within `tls.reload_interval`.
    ServerCert {
        /// Names (DNS or IP); repeat the flag for more.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        /// Validity, days.
        #[arg(long, default_value_t = 397)]
        days: u32,
        /// Directory to write `server.pem`, `server.key` and `trust.pem` (the CA bundle) to.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Replace the CA with a new one; the old one stays trusted for `--overlap`, so devices
    /// can be given new certificates meanwhile. The server certificate is reissued too.
    Rotate {
        /// How long the old CA stays trusted (e.g. 30d).
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
        overlap: Duration,
        /// The new CA's name.
        #[arg(long, default_value = "edgepipe device CA")]
        name: String,
        /// Validity of the new CA certificate, days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
        /// Names of the reissued server certificate; repeat the flag for more.
        #[arg(long = "server-name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        server_names: Vec<String>,
    },
    /// Print the trust bundle (every CA trusted now, PEM) for devices and clients.
    Export,
}

fn server_cert(data_dir: &Path, names: &[String], days: u32, out: &Path) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    let issued = ca::Ca::load(data_dir)?.issue_server(names, days, now - 300_000)?;
    // Beside the CA's own files the bundle must not take the name ca.pem.
    let files = ca::write_issued(
        out,
        "server",
        &issued,
        &ca::bundle(data_dir, now)?,
        "trust.pem",
    )?;
    for f in files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

pub(crate) fn ca_cmd(action: CaCmd, data_dir: PathBuf) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    let d = ca::dir(&data_dir);
    match action {
        CaCmd::Init {
            name,
            days,
            server_names,
        } => {
            let pem = ca::init(&data_dir, &name, days, now)?;
            println!(
                "CA created: {} (key {}, mode 0600)",
                pem.display(),
                d.join("ca.key").display()
            );
            server_cert(&data_dir, &server_names, 397, &d)?;
            println!(
                "serve with: edgepipe serve --data-dir {} --tls-cert {} --tls-key {}\n\
                 devices get certificates with: edgepipe devices add ID --cert",
                data_dir.display(),
                d.join("server.pem").display(),
                d.join("server.key").display()
            );
        }
        CaCmd::ServerCert { names, days, out } => {
            server_cert(&data_dir, &names, days, out.as_deref().unwrap_or(&d))?;
        }
        CaCmd::Rotate {
            overlap,
            name,
            days,
            server_names,
        } => {
            let pem = ca::rotate(&data_dir, &name, days, overlap, now)?;
            println!(
                "new CA: {}; the previous one stays trusted for {}",
                pem.display(),
                humantime::format_duration(overlap)
            );
            server_cert(&data_dir, &server_names, 397, &d)?;
        }
        CaCmd::Export => print!("{}", ca::bundle(&data_dir, now)?),
    }
    Ok(())
}

/// Issues `device` a certificate from the built-in CA (or signs its CSR) and writes it, its
/// key (when made here) and the trust bundle to `out`. It is valid from after the device's
/// last certificate revocation.
pub(crate) fn issue_device_cert(
    data_dir: &Path,
    device: &str,
    valid_after_ms: i64,
    csr: Option<&Path>,
    days: u32,
    out: &Path,
) -> anyhow::Result<()> {
    let now = SystemClock.now_ms();
    // Five minutes back for devices whose clock runs late, but never into a revoked span
    // (certificates carry whole seconds).
    let not_before = (now - 300_000).max((valid_after_ms / 1000 + 1) * 1000);
    let authority = ca::Ca::load(data_dir)?;
    let issued = match csr {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading the CSR {}: {e}", p.display()))?;
            authority.sign_csr(device, &text, days, not_before)?
        }
        None => authority.issue_device(device, days, not_before)?,
    };
    for f in ca::write_issued(out, device, &issued, &ca::bundle(data_dir, now)?, "ca.pem")? {
        println!("wrote {}", f.display());
    }
    Ok(())
}
