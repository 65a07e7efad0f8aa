//! `edgepipe deadletters list|show`: through the running server, or the store when none runs.

use std::path::PathBuf;

use anyhow::bail;
use clap::Subcommand;

use crate::cli::client::*;
use crate::cli::output::{FormatArg, Listing};
use crate::gateway::deadletter::DeadLetters;

/// `deadletters` actions.
#[derive(Debug, Subcommand)]
pub enum DeadCmd {
    /// The newest dead letters.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format (json holds every field, the raw bytes in base64).
        #[command(flatten)]
        format: FormatArg,
    },
    /// One dead letter with its raw bytes.
    Show {
        /// Id from `list`.
        id: u64,
    },
}

pub(crate) fn print_deadletter(d: &crate::gateway::deadletter::DeadLetter) {
    println!("id:        {}", d.id);
    println!("time_ms:   {}", d.time_ms);
    println!("device:    {}", d.device.as_deref().unwrap_or("-"));
    println!("peer:      {}", d.peer.as_deref().unwrap_or("-"));
    println!("endpoint:  {}", d.endpoint);
    println!("reason:    {}", d.reason);
    println!("detail:    {}", d.detail);
    println!(
        "raw:       {} of {} bytes{}",
        d.raw.len(),
        d.original_len,
        if d.truncated { " (truncated)" } else { "" }
    );
    println!("{}", String::from_utf8_lossy(&d.raw));
    println!("hex:       {}", hex::encode(&d.raw));
}

pub(crate) async fn deadletters(action: DeadCmd, data_dir: PathBuf) -> anyhow::Result<()> {
    // If a server holds the data directory, ask it; otherwise read the store directly.
    let items: Vec<crate::gateway::deadletter::DeadLetter> =
        match crate::server::lock_data_dir(&data_dir) {
            Ok(_lock) => {
                let dl = DeadLetters::open(
                    &data_dir,
                    &crate::gateway::deadletter::DeadLetterConfig::default(),
                )?;
                let items = match &action {
                    DeadCmd::List { limit, .. } => dl.tail(*limit)?,
                    DeadCmd::Show { id } => dl.get(*id)?.into_iter().collect(),
                };
                dl.close();
                items
            }
            Err(crate::server::StartError::Locked(_)) => {
                let remote = remote_of(&data_dir)?;
                let addr = &remote;
                match &action {
                    DeadCmd::List { limit, .. } => {
                        let v = http_get_json(addr, &format!("/api/v1/deadletters?limit={limit}"))
                            .await?;
                        serde_json::from_value(v["items"].clone())?
                    }
                    DeadCmd::Show { id } => {
                        let v = http_get_json(addr, &format!("/api/v1/deadletters/{id}")).await?;
                        vec![serde_json::from_value(v)?]
                    }
                }
            }
            Err(e) => return Err(e.into()),
        };
    match action {
        DeadCmd::List { format, .. } => {
            let mut out = Listing::new(&["id", "time_ms", "device", "reason", "detail", "raw"]);
            for d in &items {
                let preview: String = String::from_utf8_lossy(&d.raw).chars().take(40).collect();
                out.push(
                    vec![
                        d.id.to_string(),
                        d.time_ms.to_string(),
                        d.device.clone().unwrap_or_else(|| "-".into()),
                        d.reason.clone(),
                        d.detail.chars().take(60).collect(),
                        preview.escape_debug().to_string(),
                    ],
                    serde_json::to_value(d)?,
                );
            }
            out.footer = Some(format!(
                "{} dead letters (the newest; `deadletters show ID` prints one in full)",
                items.len()
            ));
            out.print(format.get())?;
        }
        DeadCmd::Show { id } => match items.first() {
            Some(d) => print_deadletter(d),
            None => bail!("no dead letter {id}"),
        },
    }
    Ok(())
}
