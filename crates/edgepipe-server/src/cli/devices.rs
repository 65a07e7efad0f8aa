//! `edgepipe devices add|list|disable|enable|rotate-token`: the device registry, offline.

use std::path::PathBuf;

use clap::Subcommand;

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
    List,
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
        DevicesCmd::List => {
            let list = reg.list()?;
            println!(
                "{:<32} {:<8} {:<5} {:<24}",
                "DEVICE", "ENABLED", "AUTO", "CREATED (ms)"
            );
            for d in &list {
                println!(
                    "{:<32} {:<8} {:<5} {:<24}",
                    d.id, d.enabled, d.auto_registered, d.created_at
                );
            }
            println!("{} devices", list.len());
        }
    }
    Ok(())
}
