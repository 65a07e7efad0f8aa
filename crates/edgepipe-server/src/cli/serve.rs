//! `edgepipe serve` and `edgepipe wal-dump`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::cli::common::*;
use crate::server::RunningServer;

/// `serve` flags (override the file and environment).
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file and overrides.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// MQTT listen address.
    #[arg(long)]
    pub mqtt_addr: Option<SocketAddr>,
    /// HTTP listen address.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// Register unknown devices on first connect (development only).
    #[arg(long)]
    pub auto_register: bool,
    /// Messages per second per device (0 = unlimited).
    #[arg(long)]
    pub device_rate: Option<u32>,
}

pub(crate) async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let mut cfg = load_config(&a.config)?;
    if let Some(d) = a.data_dir {
        cfg.data_dir = d;
    }
    if let Some(x) = a.mqtt_addr {
        cfg.mqtt_addr = x;
    }
    if let Some(x) = a.http_addr {
        cfg.http_addr = x;
    }
    if a.auto_register {
        cfg.auto_register = true;
    }
    if let Some(r) = a.device_rate {
        cfg.limits.device_msgs_per_sec = r;
    }
    let server = RunningServer::start(&cfg).await?;
    println!(
        "edgepipe serving: mqtt://{}  http://{}  data: {}",
        server.mqtt_addr,
        server.http_addr,
        cfg.data_dir.display()
    );
    wait_for_ctrl_c().await;
    eprintln!("shutting down: stop accepting, finish in-flight, close wal");
    server.shutdown().await;
    Ok(())
}

pub(crate) fn wal_dump(data_dir: PathBuf, from: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let _lock = crate::server::lock_data_dir(&data_dir)?;
    let wal = edgepipe_wal::Wal::open(data_dir.join("wal"), edgepipe_wal::WalConfig::default())?;
    let st = wal.stats();
    let mut reader = wal.reader(from.max(st.first_seq))?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some((seq, bytes)) = reader.next_record()? {
        let rec = edgepipe_types::IngestRecord::decode(&bytes)
            .with_context(|| format!("wal record {seq}"))?;
        let line = serde_json::json!({"seq": seq, "record": rec});
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}
