//! `edgepipe devices add|list|disable|enable|rotate-token|issue-cert|revoke-cert`: the device
//! registry, offline (a running server sees changes at once).

use std::path::PathBuf;

use clap::Subcommand;

use crate::cli::output::{FormatArg, Listing};
use crate::gateway::devices::DeviceRegistry;

/// `devices` actions.
#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// Register a device and print its token (shown once); with `--cert` or `--csr` also
    /// issue it a certificate from the built-in CA (`edgepipe ca init`).
    Add {
        /// Device id.
        id: String,
        /// Issue a certificate and key too.
        #[arg(long)]
        cert: bool,
        /// Issue a certificate for this CSR (PEM; the key stays with the device).
        #[arg(long, conflicts_with = "cert")]
        csr: Option<PathBuf>,
        /// Where to write `<id>.pem`, `<id>.key` and `ca.pem` (default `./<id>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Certificate validity, days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Issue a registered device a new certificate from the built-in CA (renewal, or after a
    /// revocation).
    IssueCert {
        /// Device id.
        id: String,
        /// Sign this CSR (PEM) instead of making a key.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Where to write `<id>.pem`, `<id>.key` and `ca.pem` (default `./<id>`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Certificate validity, days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// List devices.
    List {
        /// Output format.
        #[command(flatten)]
        format: FormatArg,
    },
    /// Refuse a device from now on.
    Disable {
        /// Device id.
        id: String,
    },
    /// Allow a disabled device again.
    Enable {
        /// Device id.
        id: String,
    },
    /// Issue a new token (the old one stops working).
    RotateToken {
        /// Device id.
        id: String,
    },
    /// Revoke the device's certificates issued until now: new connections with one are
    /// refused, open ones close within a second (a running server sees it at once).
    RevokeCert {
        /// Device id.
        id: String,
    },
}

pub(crate) fn devices(action: DevicesCmd, data_dir: PathBuf) -> anyhow::Result<()> {
    let reg = DeviceRegistry::open(&data_dir)?;
    match action {
        DevicesCmd::Add {
            id,
            cert,
            csr,
            out,
            days,
        } => {
            if (cert || csr.is_some())
                && !crate::gateway::ca::dir(&data_dir).join("ca.pem").exists()
            {
                anyhow::bail!(
                    "no CA in {}: run `edgepipe ca init` first",
                    crate::gateway::ca::dir(&data_dir).display()
                );
            }
            let token = reg.add(&id)?;
            println!("device {id} added. Token (shown once, store it now):\n{token}");
            if cert || csr.is_some() {
                let out = out.unwrap_or_else(|| PathBuf::from(&id));
                crate::cli::ca::issue_device_cert(&data_dir, &id, 0, csr.as_deref(), days, &out)?;
            }
        }
        DevicesCmd::IssueCert { id, csr, out, days } => {
            let rec = reg
                .get(&id)?
                .ok_or_else(|| anyhow::anyhow!("no device {id}"))?;
            let out = out.unwrap_or_else(|| PathBuf::from(&id));
            crate::cli::ca::issue_device_cert(
                &data_dir,
                &id,
                rec.certs_valid_after_ms,
                csr.as_deref(),
                days,
                &out,
            )?;
        }
        DevicesCmd::RotateToken { id } => {
            let token = reg.rotate_token(&id)?;
            println!("device {id}: new token (the old one no longer works):\n{token}");
        }
        DevicesCmd::Disable { id } => {
            reg.set_enabled(&id, false)?;
            println!("device {id} disabled");
        }
        DevicesCmd::Enable { id } => {
            reg.set_enabled(&id, true)?;
            println!("device {id} enabled");
        }
        DevicesCmd::RevokeCert { id } => {
            let cut = reg.revoke_certs(&id)?;
            println!(
                "device {id}: certificates valid from before {} revoked; a running server closes their connections within a second",
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(cut.max(0) as u64)
                )
            );
        }
        DevicesCmd::List { format } => {
            let list = reg.list()?;
            let mut out = Listing::new(&[
                "device",
                "enabled",
                "auto_registered",
                "by_certificate",
                "created_at_ms",
                "rotated_at_ms",
            ]);
            for d in &list {
                out.push(
                    vec![
                        d.id.clone(),
                        d.enabled.to_string(),
                        d.auto_registered.to_string(),
                        d.registered_by_certificate.to_string(),
                        d.created_at.to_string(),
                        d.rotated_at.to_string(),
                    ],
                    serde_json::json!({
                        "device": d.id,
                        "enabled": d.enabled,
                        "auto_registered": d.auto_registered,
                        "by_certificate": d.registered_by_certificate,
                        "certs_valid_after_ms": d.certs_valid_after_ms,
                        "created_at_ms": d.created_at,
                        "rotated_at_ms": d.rotated_at,
                    }),
                );
            }
            out.footer = Some(format!("{} devices", list.len()));
            out.print(format.get())?;
        }
    }
    Ok(())
}
