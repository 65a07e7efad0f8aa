//! `edgepipe devices add|list|disable|enable|rotate-token`: the device registry, offline.

use std::path::PathBuf;

use clap::Subcommand;

use crate::cli::output::{FormatArg, Listing};
use crate::gateway::devices::DeviceRegistry;

/// `devices` actions.
#[derive(Debug, Subcommand)]
pub enum DevicesCmd {
    /// Register a device and print its token (shown once).
    Add {
        /// Device id.
        id: String,
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
        DevicesCmd::Add { id } => {
            let token = reg.add(&id)?;
            println!("device {id} added. Token (shown once, store it now):\n{token}");
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
