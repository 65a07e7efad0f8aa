//! `edgepipe demo`: a server and a simulated fleet over real MQTT, with a live status line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use clap::Args;

use edgepipe_types::{Clock, SystemClock};

use crate::cli::common::*;
use crate::config::ServerConfig;
use crate::server::RunningServer;

/// `demo` flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Simulated devices.
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Metrics per device.
    #[arg(long, default_value_t = 4)]
    pub metrics: usize,
    /// Sample period per device.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Data directory.
    #[arg(long, default_value = "./edgepipe-data")]
    pub data_dir: PathBuf,
    /// Simulator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the simulator's ground-truth anomaly labels here (CSV).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// How the simulated devices talk to the server.
    #[arg(long, value_enum, default_value_t = DemoTransport::Mqtt)]
    pub transport: DemoTransport,
    /// Simulated seconds per wall-clock second (e.g. 60: an hour of fleet life per minute,
    /// so detectors warm up and cases appear quickly).
    #[arg(long, default_value_t = 1.0)]
    pub speedup: f64,
    /// Start the simulated fleet this far in the past (with --speedup, history that catches up
    /// with the present).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub start_ago: Option<Duration>,
    /// Server configuration file (`[detect]`, `[cases]`, ...); data dir and ports come from
    /// the demo.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Transport of the demo's simulated fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoTransport {
    /// MQTT 3.1.1, QoS 1.
    Mqtt,
    /// HTTP POST /api/v1/ingest (NDJSON).
    Http,
}

pub(crate) async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    use edgepipe_sim::mqtt::{Credentials, FleetRunOptions, SimStats, run_fleet};
    use edgepipe_sim::signal::FleetConfig;

    anyhow::ensure!(
        a.speedup.is_finite() && a.speedup > 0.0,
        "--speedup {}: must be a positive number",
        a.speedup
    );
    let mut cfg = match &a.config {
        Some(path) => ServerConfig::load(Some(path), std::iter::empty())?,
        None => ServerConfig::default(),
    };
    cfg.data_dir = a.data_dir.clone();
    cfg.auto_register = true;
    cfg.mqtt_addr = SocketAddr::from(([127, 0, 0, 1], 1883));
    cfg.http_addr = SocketAddr::from(([127, 0, 0, 1], 8080));
    cfg.mqtt_addr = free_or_ephemeral(cfg.mqtt_addr);
    cfg.http_addr = free_or_ephemeral(cfg.http_addr);
    // Before the server starts: Ctrl-C from now on ends the demo with its summary and a drain.
    let mut signals = ShutdownSignals::install();
    let server = RunningServer::start(&cfg).await?;
    // The demo's dashboard user: a fresh admin token each run, in the URL printed below.
    let demo_token = match &server.cases {
        Some(c) => Some(
            c.store
                .user_put("demo", edgepipe_cases::Role::Admin, true, "demo")
                .await?,
        ),
        None => None,
    };
    println!(
        "edgepipe demo: {} simulated devices x {} metrics",
        a.devices, a.metrics
    );
    if let Some(t) = &demo_token {
        println!("  dashboard http://{}/#token={t}", server.http_addr);
    }
    println!("  MQTT     mqtt://{}", server.mqtt_addr);
    println!("  HTTP     http://{}/api/v1/status", server.http_addr);
    println!("  metrics  http://{}/metrics", server.http_addr);
    println!("  data     {}", cfg.data_dir.display());

    let fleet = FleetConfig {
        devices: a.devices,
        metrics: a.metrics,
        seed: a.seed,
        interval: a.interval,
        start_ms: SystemClock.now_ms()
            - a.start_ago
                .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        ..FleetConfig::default()
    };
    if let Some(path) = &a.labels {
        let f = edgepipe_sim::signal::Fleet::new(fleet.clone())?;
        let horizon = a
            .duration
            .unwrap_or(Duration::from_secs(24 * 3600))
            .mul_f64(a.speedup);
        let labels = f.labels(fleet.start_ms, fleet.start_ms + horizon.as_millis() as i64);
        edgepipe_sim::signal::save_labels_csv(path, &labels)?;
        println!("  labels   {} ({} anomalies)", path.display(), labels.len());
    }
    let endpoint = match a.transport {
        DemoTransport::Mqtt => server.mqtt_addr,
        DemoTransport::Http => server.http_addr,
    };
    let opts = FleetRunOptions {
        host: endpoint.ip().to_string(),
        port: endpoint.port(),
        fleet,
        credentials: Credentials::Shared("demo-fleet-secret".into()),
        speedup: a.speedup,
        ..FleetRunOptions::default()
    };
    let stats = Arc::new(SimStats::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let fleet_task = match a.transport {
        DemoTransport::Mqtt => tokio::spawn(run_fleet(opts, stats.clone(), stop.clone())),
        DemoTransport::Http => tokio::spawn(edgepipe_sim::http::run_fleet_http(
            opts,
            stats.clone(),
            stop.clone(),
        )),
    };

    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let started = Instant::now();
    let ing = server.ingestor.clone();
    let mut last_readings = 0u64;
    let mut last_t = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let deadline = a.duration.map(|d| started + d);
    let mut last_print = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = signals.recv() => break,
        }
        let m = ing.metrics();
        let readings = m.readings_written.load(Ordering::Relaxed);
        let dt = last_t.elapsed().as_secs_f64().max(1e-3);
        let rate = (readings - last_readings) as f64 / dt;
        last_readings = readings;
        last_t = Instant::now();
        let w = ing.wal().stats();
        let line = format!(
            "mqtt conns {:>4} | readings/s acked {:>8.0} | readings {:>9} | wal {:>6.1} MiB | dead letters {}",
            m.mqtt_connections.load(Ordering::Relaxed),
            rate,
            readings,
            w.disk_bytes as f64 / (1024.0 * 1024.0),
            ing.deadletters().stats().total,
        );
        if bar.is_hidden() {
            // Not a terminal (CI, logs): a plain line every 5 s instead of the spinner.
            if last_print.elapsed() >= Duration::from_secs(5) {
                println!("[{:>5.0}s] {line}", started.elapsed().as_secs_f64());
                last_print = Instant::now();
            }
        } else {
            bar.set_message(line);
            bar.tick();
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    bar.finish();
    stop.cancel();
    match fleet_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("simulator: {e}"),
        Err(e) => eprintln!("simulator task: {e}"),
    }
    let snap = stats.snapshot();
    let lake_rows = server
        .query
        .query("SELECT count(*) AS readings, count(DISTINCT device_id) AS devices FROM readings")
        .await;
    let m = ing.metrics();
    println!(
        "demo finished: {} messages published, {} acked; server wrote {} readings in {} messages; {} dead letters",
        snap.published,
        snap.acked,
        m.readings_written.load(Ordering::Relaxed),
        m.messages_written.load(Ordering::Relaxed),
        ing.deadletters().stats().total,
    );
    match lake_rows {
        Ok(out) => {
            println!(
                "lake (SQL over Parquet + fresh rows):\n{}",
                table_text(&out)?
            );
            println!(
                "try: edgepipe query --data-dir {} \"SELECT device_id, metric, avg(value) FROM readings GROUP BY 1, 2 ORDER BY 1, 2 LIMIT 10\"",
                cfg.data_dir.display()
            );
        }
        Err(e) => eprintln!("lake query failed: {e}"),
    }
    drop(ing);
    server.shutdown().await;
    // After the ordered shutdown every row and every anomaly event is in the lake's files.
    let store = crate::stages::lake::open_store(&cfg.data_dir, &cfg.lake)?;
    let engine = edgepipe_query::QueryEngine::new(
        store,
        None,
        edgepipe_lake::SwapLock::default(),
        cfg.query.clone(),
    );
    match engine
        .query(
            "SELECT kind, count(*) AS events, count(DISTINCT device_id) AS devices, \
             round(max(score), 3) AS max_score FROM anomalies GROUP BY kind ORDER BY kind",
        )
        .await
    {
        Ok(out) if out.rows == 0 => println!(
            "anomaly events: none yet (each series' detectors learn its normal range first; run the demo longer)"
        ),
        Ok(out) => println!("anomaly events (detection stage):\n{}", table_text(&out)?),
        Err(e) => eprintln!("anomalies query failed: {e}"),
    }
    let cases = crate::stages::cases::open_store(&cfg.data_dir, &cfg.cases).await?;
    let page = edgepipe_cases::CaseStore::list(
        &cases,
        &edgepipe_cases::CaseFilter {
            limit: Some(1000),
            ..Default::default()
        },
    )
    .await?;
    println!("cases: {}", page.cases.len());
    for c in page.cases.iter().take(10) {
        println!(
            "  #{:<4} {:<8} {:<13} {}",
            c.id,
            c.severity.as_str(),
            c.state.as_str(),
            c.title
        );
    }
    if !page.cases.is_empty() {
        println!(
            "try: edgepipe cases list --data-dir {}",
            cfg.data_dir.display()
        );
    }
    cases.close().await;
    Ok(())
}

/// A query's answer as an aligned text table (no trailing newline).
fn table_text(out: &edgepipe_query::QueryOutput) -> anyhow::Result<String> {
    let mut t = Vec::new();
    edgepipe_query::write_output(
        edgepipe_query::OutputFormat::Table,
        &out.schema,
        &out.batches,
        &mut t,
    )?;
    Ok(String::from_utf8_lossy(&t).trim_end().to_owned())
}
