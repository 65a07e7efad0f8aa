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
    /// MQTT over TLS listen address (with tls.cert and tls.key).
    #[arg(long)]
    pub mqtts_addr: Option<SocketAddr>,
    /// MQTT over WebSocket listen address (ws://ADDR/mqtt).
    #[arg(long)]
    pub ws_addr: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS listen address (wss://ADDR/mqtt; with tls.cert and tls.key).
    #[arg(long)]
    pub wss_addr: Option<SocketAddr>,
    /// Server certificate chain, PEM (turns on MQTT over TLS and HTTPS).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Private key of the certificate, PEM.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Allow plaintext MQTT or HTTP on a non-loopback address (a trusted network only).
    #[arg(long)]
    pub insecure_plaintext: bool,
    /// Register unknown devices on first connect (development only).
    #[arg(long)]
    pub auto_register: bool,
    /// Messages per second per device (0 = unlimited).
    #[arg(long)]
    pub device_rate: Option<u32>,
    /// On SIGTERM or SIGINT: how long the orderly shutdown (stop accepting, finish in-flight
    /// requests, checkpoint detection, flush the lake, close the WAL) may take before the
    /// process gives up and exits with an error (the WAL keeps every acknowledged reading
    /// either way).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
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
    if let Some(x) = a.mqtts_addr {
        cfg.tls.mqtt_addr = x;
    }
    if let Some(x) = a.ws_addr {
        cfg.mqtt_ws_addr = Some(x);
    }
    if let Some(x) = a.wss_addr {
        cfg.tls.mqtt_ws_addr = Some(x);
    }
    if let Some(x) = a.tls_cert {
        cfg.tls.cert = Some(x);
    }
    if let Some(x) = a.tls_key {
        cfg.tls.key = Some(x);
    }
    if a.insecure_plaintext {
        cfg.insecure_plaintext = true;
    }
    if a.auto_register {
        cfg.auto_register = true;
    }
    if let Some(r) = a.device_rate {
        cfg.limits.device_msgs_per_sec = r;
    }
    // Before the server starts: a stop request from now on drains instead of killing.
    let mut signals = ShutdownSignals::install();
    let server = RunningServer::start(&cfg).await?;
    let mqtts: String = [
        server.mqtts_addr.map(|a| format!("mqtts://{a}  ")),
        server.ws_addr.map(|a| format!("ws://{a}/mqtt  ")),
        server.wss_addr.map(|a| format!("wss://{a}/mqtt  ")),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "edgepipe serving: mqtt://{}  {mqtts}{}://{}  data: {}",
        server.mqtt_addr,
        if server.https { "https" } else { "http" },
        server.http_addr,
        cfg.data_dir.display()
    );
    let signal = signals.recv().await;
    eprintln!(
        "{signal} received; shutting down: stop accepting, finish in-flight, flush the lake, close the WAL (at most {})",
        humantime::format_duration(a.drain_timeout)
    );
    match tokio::time::timeout(a.drain_timeout, server.shutdown()).await {
        Ok(()) => {
            eprintln!("shutdown complete");
            Ok(())
        }
        Err(_) => anyhow::bail!(
            "shutdown did not finish within {} (--drain-timeout); every acknowledged reading is in the WAL and reaches the lake at the next start",
            humantime::format_duration(a.drain_timeout)
        ),
    }
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
