//! The `edgepipe` command line: `serve`, `validate`, `demo`, `devices`, `cases`, `users`,
//! `deadletters`, `query`, `lake`, `models`, `eval`, `bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::ServerConfig;
use crate::deadletter::DeadLetters;
use crate::devices::DeviceRegistry;
use crate::server::RunningServer;

/// edgepipe: self-hosted IoT telemetry pipeline server.
#[derive(Debug, Parser)]
#[command(name = "edgepipe", version, about)]
pub struct Cli {
    /// Command.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Check a configuration file and print every problem.
    Validate(ConfigArgs),
    /// Run a server and a simulated device fleet over real MQTT, with a live status line.
    Demo(DemoArgs),
    /// Manage devices.
    Devices {
        /// Action.
        #[command(subcommand)]
        action: DevicesCmd,
        /// Data directory.
        #[arg(long, default_value = "./edgepipe-data", env = "EDGEPIPE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Work cases: list, show, acknowledge, assign, comment, resolve, reopen.
    Cases {
        /// Action.
        #[command(subcommand)]
        action: CasesCmd,
        /// Where the state store is.
        #[command(flatten)]
        store: LakeArgs,
    },
    /// Manage API users (tokens with a role: viewer, operator, admin).
    Users {
        /// Action.
        #[command(subcommand)]
        action: UsersCmd,
        /// Where the state store is.
        #[command(flatten)]
        store: LakeArgs,
    },
    /// Inspect dead letters (refused messages).
    Deadletters {
        /// Action.
        #[command(subcommand)]
        action: DeadCmd,
        /// Data directory.
        #[arg(long, default_value = "./edgepipe-data", env = "EDGEPIPE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Print the WAL's records as JSON lines (the server must be stopped).
    WalDump {
        /// Data directory.
        #[arg(long, default_value = "./edgepipe-data", env = "EDGEPIPE_DATA_DIR")]
        data_dir: PathBuf,
        /// First sequence to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Run SQL over the lake (through the running server, which adds rows not yet flushed, or
    /// directly on the lake files when no server runs).
    Query(QueryArgs),
    /// Lake maintenance: stats, compact, verify.
    Lake {
        /// Action.
        #[command(subcommand)]
        action: LakeCmd,
        /// Config file and data directory.
        #[command(flatten)]
        args: LakeArgs,
    },
    /// Detection model artifacts: train from the lake, list, promote.
    Models {
        /// Action.
        #[command(subcommand)]
        action: ModelsCmd,
        /// Config file and data directory.
        #[command(flatten)]
        args: LakeArgs,
    },
    /// Evaluate the detector on a public benchmark.
    Eval {
        /// Which benchmark.
        #[command(subcommand)]
        which: EvalCmd,
    },
    /// Benchmarks.
    Bench {
        /// Which benchmark.
        #[command(subcommand)]
        which: BenchCmd,
    },
}

/// `models` actions.
#[derive(Debug, Subcommand)]
pub enum ModelsCmd {
    /// Fit per-series parameters from the lake's readings of the last `--since`.
    Train {
        /// History to fit on (e.g. 30d, 12h).
        #[arg(long, default_value = "30d")]
        since: String,
        /// Promote the new artifact at once (the running server swaps it in).
        #[arg(long, conflicts_with = "auto_promote")]
        promote: bool,
        /// Promote it only if it scores better on operators' labels than the promoted one
        /// (with no labels: only if nothing is promoted yet).
        #[arg(long)]
        auto_promote: bool,
    },
    /// List artifacts (`*` marks the promoted one).
    List,
    /// Promote an artifact: the running detection stage swaps it in at its next checkpoint.
    Promote {
        /// Version, as printed by `train` or `list`.
        version: String,
    },
}

/// `eval` benchmarks.
#[derive(Debug, Subcommand)]
pub enum EvalCmd {
    /// Run the detector online over the Numenta Anomaly Benchmark and score it with NAB's rules;
    /// writes NAB's results layout (`OUT/edgepipe/<category>/edgepipe_<file>.csv`).
    Nab {
        /// NAB directory (with `data/` and `labels/`).
        #[arg(long)]
        data: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the live detector (server defaults) over the simulator's labelled fleet and report
    /// precision, recall, F1 and detection delay per anomaly kind (JSON on stdout).
    Sim(EvalSimArgs),
}

/// `eval sim` flags.
#[derive(Debug, Args)]
pub struct EvalSimArgs {
    /// Devices.
    #[arg(long, default_value_t = 20)]
    pub devices: usize,
    /// Metrics per device.
    #[arg(long, default_value_t = 5)]
    pub metrics: usize,
    /// Simulated time to run, after the warm-up.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Leading simulated time not scored (the detectors learn the series).
    #[arg(long, default_value = "2h", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Sample interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Injected anomalies per device-hour.
    #[arg(long, default_value_t = 2.0)]
    pub anomaly_rate: f64,
    /// Fleet seed (other seeds are other fleets: use them to check that results generalise).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Sample intervals after an incident's end in which a detection still counts.
    #[arg(long, default_value_t = 30)]
    pub grace_samples: i64,
    /// List the incidents nobody detected.
    #[arg(long)]
    pub show_missed: bool,
    /// Live detector settings as JSON (the `[detect.detector]` table's fields), to try
    /// settings before putting them in the server's config; defaults otherwise.
    #[arg(long)]
    pub detector: Option<String>,
}

/// `query` flags.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The SQL (tables: readings, rollup_1m, rollup_1h).
    pub sql: String,
    /// Output: table, csv, json or arrow (Arrow IPC stream on stdout).
    #[arg(long, default_value = "table")]
    pub format: String,
    /// Config file and data directory.
    #[command(flatten)]
    pub lake: LakeArgs,
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

/// `lake` actions.
#[derive(Debug, Subcommand)]
pub enum LakeCmd {
    /// Files, rows and bytes per table and partition.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Show every partition, not only table totals.
        #[arg(long)]
        partitions: bool,
    },
    /// Compact every partition now (the server must be stopped; it compacts on its own).
    Compact,
    /// Check every file's footer and schema.
    Verify,
}

/// Config file flag.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
}

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

/// `cases` actions.
#[derive(Debug, Subcommand)]
pub enum CasesCmd {
    /// Cases, newest first.
    List {
        /// Only these states (comma-separated: open,acknowledged,investigating,resolved,false_positive).
        #[arg(long)]
        state: Option<String>,
        /// Only this severity or higher (info, low, medium, high, critical).
        #[arg(long)]
        min_severity: Option<String>,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One case with its anomalies, timeline and evidence (JSON).
    Show {
        /// Case id.
        id: i64,
    },
    /// open → acknowledged.
    Ack {
        /// Case id.
        id: i64,
    },
    /// → investigating.
    Investigate {
        /// Case id.
        id: i64,
    },
    /// Set the assignee (`-` to clear).
    Assign {
        /// Case id.
        id: i64,
        /// Who.
        assignee: String,
    },
    /// Add a comment.
    Comment {
        /// Case id.
        id: i64,
        /// Text.
        text: String,
    },
    /// Close with a verdict (confirmed unless --false-positive).
    Resolve {
        /// Case id.
        id: i64,
        /// It was not an anomaly (raises the series' thresholds).
        #[arg(long)]
        false_positive: bool,
        /// Root cause.
        #[arg(long)]
        root_cause: Option<String>,
        /// Note for the timeline.
        #[arg(long)]
        note: Option<String>,
    },
    /// Open a closed case again.
    Reopen {
        /// Case id.
        id: i64,
        /// Why.
        #[arg(long)]
        note: Option<String>,
    },
}

/// `users` actions.
#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Add a user and print its API token (shown once).
    Add {
        /// Name.
        name: String,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
    },
    /// List users.
    List,
    /// Refuse a user's token from now on.
    Disable {
        /// Name.
        name: String,
    },
    /// Allow a disabled user again.
    Enable {
        /// Name.
        name: String,
    },
    /// Issue a new token (the old one stops working), keeping the role.
    RotateToken {
        /// Name.
        name: String,
    },
}

/// `deadletters` actions.
#[derive(Debug, Subcommand)]
pub enum DeadCmd {
    /// The newest dead letters.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One dead letter with its raw bytes.
    Show {
        /// Id from `list`.
        id: u64,
    },
}

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// MQTT ingest throughput and PUBACK latency.
    Ingest(BenchIngestArgs),
    /// Lake writer throughput, compaction size and three standard queries, on generated 1 Hz
    /// series; prints JSON (scripts/bench-lake.sh runs pyarrow and DuckDB beside it).
    Lake(BenchLakeArgs),
    /// Anomaly → case → webhook latency at a steady event rate, and listing open cases with
    /// many cases stored (SQLite); prints JSON.
    Cases(BenchCasesArgs),
}

/// `bench cases` flags.
#[derive(Debug, Args)]
pub struct BenchCasesArgs {
    /// Anomaly events per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Seconds of events.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Cases stored for the listing part.
    #[arg(long, default_value_t = 1_000_000)]
    pub cases: u64,
    /// Runs per listing query.
    #[arg(long, default_value_t = 50)]
    pub runs: usize,
}

/// `bench lake` flags.
#[derive(Debug, Args)]
pub struct BenchLakeArgs {
    /// Devices.
    #[arg(long, default_value_t = 20)]
    pub devices: usize,
    /// Metrics per device.
    #[arg(long, default_value_t = 5)]
    pub metrics: usize,
    /// Hours of 1 Hz data per series.
    #[arg(long, default_value_t = 6)]
    pub hours: usize,
    /// Directory to keep the lake in (for peers to read); a temporary one when absent.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Runs per query (the median is reported).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// End the generated data now (to the second) instead of starting at 2026-01-01, so a
    /// server started on `--out` shows it in its "last 7 days" views.
    #[arg(long)]
    pub end_now: bool,
    /// Leave the last N hours uncompacted (raw flush files, no rollups), as a live lake has
    /// them; 0 compacts every partition.
    #[arg(long, default_value_t = 0)]
    pub raw_hours: i64,
    /// The lake writer's `flush_max_rows` for the write (the server's default when absent).
    #[arg(long)]
    pub flush_max_rows: Option<usize>,
}

/// `bench ingest` flags.
#[derive(Debug, Args)]
pub struct BenchIngestArgs {
    /// Concurrent MQTT connections.
    #[arg(long, default_value_t = 10)]
    pub connections: usize,
    /// QoS (0 or 1).
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Readings per message.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Total messages/s (default: as fast as acks allow).
    #[arg(long)]
    pub rate: Option<u64>,
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// In-flight publishes per connection.
    #[arg(long, default_value_t = 100)]
    pub inflight: u16,
    /// Measure an existing endpoint (e.g. 127.0.0.1:1883 for Mosquitto) instead of starting
    /// our own server in a temporary directory.
    #[arg(long)]
    pub target: Option<SocketAddr>,
    /// Password for --target (our server started here uses auto-registration).
    #[arg(long)]
    pub password: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

fn load_config(args: &ConfigArgs) -> anyhow::Result<ServerConfig> {
    Ok(ServerConfig::load(
        args.config.as_deref(),
        std::env::vars(),
    )?)
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::Validate(a) => {
            let cfg = load_config(&a)?;
            cfg.validate()?;
            println!("configuration is valid");
            Ok(())
        }
        Command::Demo(a) => demo(a).await,
        Command::Devices { action, data_dir } => devices(action, data_dir),
        Command::Cases { action, store } => cases_cmd(action, store).await,
        Command::Users { action, store } => users_cmd(action, store).await,
        Command::Deadletters { action, data_dir } => deadletters(action, data_dir).await,
        Command::WalDump { data_dir, from } => wal_dump(data_dir, from),
        Command::Query(a) => query_cmd(a).await,
        Command::Models { action, args } => models_cmd(action, args).await,
        Command::Eval {
            which: EvalCmd::Nab { data, out },
        } => eval_nab(data, out),
        Command::Eval {
            which: EvalCmd::Sim(a),
        } => crate::eval_sim::run(a),
        Command::Lake { action, args } => lake_cmd(action, args).await,
        Command::Bench { which } => match which {
            BenchCmd::Ingest(a) => bench_ingest(a).await,
            BenchCmd::Lake(a) => crate::bench_lake::run(a).await,
            BenchCmd::Cases(a) => {
                let out = edgepipe_cases::bench::run(edgepipe_cases::bench::BenchArgs {
                    rate: a.rate,
                    seconds: a.seconds,
                    cases: a.cases,
                    runs: a.runs,
                })
                .await?;
                println!("{}", serde_json::to_string_pretty(&out)?);
                Ok(())
            }
        },
    }
}

async fn wait_for_ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
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

/// Picks `preferred` if free, otherwise an ephemeral port on the same IP.
fn free_or_ephemeral(preferred: SocketAddr) -> SocketAddr {
    match std::net::TcpListener::bind(preferred) {
        Ok(l) => {
            drop(l);
            preferred
        }
        Err(_) => SocketAddr::new(preferred.ip(), 0),
    }
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
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
        start_ms: edgepipe_sim::now_ms()
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
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let fleet_task = match a.transport {
        DemoTransport::Mqtt => tokio::spawn(run_fleet(opts, stats.clone(), stop_rx)),
        DemoTransport::Http => tokio::spawn(edgepipe_sim::http::run_fleet_http(
            opts,
            stats.clone(),
            stop_rx,
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
            _ = wait_for_ctrl_c() => break,
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
    let _ = stop_tx.send(true);
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
            let mut t = Vec::new();
            edgepipe_query::write_output(
                edgepipe_query::OutputFormat::Table,
                &out.schema,
                &out.batches,
                &mut t,
            )?;
            println!(
                "lake (SQL over Parquet + fresh rows):\n{}",
                String::from_utf8_lossy(&t).trim_end()
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
    let store = crate::lake::open_store(&cfg.data_dir, &cfg.lake)?;
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
        Ok(out) => {
            let mut t = Vec::new();
            edgepipe_query::write_output(
                edgepipe_query::OutputFormat::Table,
                &out.schema,
                &out.batches,
                &mut t,
            )?;
            println!(
                "anomaly events (detection stage):\n{}",
                String::from_utf8_lossy(&t).trim_end()
            );
        }
        Err(e) => eprintln!("anomalies query failed: {e}"),
    }
    let cases = crate::cases::open_store(&cfg.data_dir, &cfg.cases).await?;
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

fn wal_dump(data_dir: PathBuf, from: u64) -> anyhow::Result<()> {
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

fn cli_actor() -> String {
    format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

async fn state_store(a: &LakeArgs) -> anyhow::Result<edgepipe_cases::SqlCaseStore> {
    let mut cfg = ServerConfig::load(a.config.as_deref(), std::env::vars())?;
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    let problems = cfg.cases.problems();
    if !problems.is_empty() {
        bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    crate::cases::open_store(&cfg.data_dir, &cfg.cases).await
}

async fn cases_cmd(action: CasesCmd, a: LakeArgs) -> anyhow::Result<()> {
    use edgepipe_cases::{Action, CaseFilter, CaseState, CaseStore, Outcome, Severity};
    let store = state_store(&a).await?;
    let actor = cli_actor();
    let now = edgepipe_sim::now_ms();
    let act = |id: i64, action: Action| {
        let store = store.clone();
        let actor = actor.clone();
        async move {
            let c = store.act(id, &action, &actor, now).await?;
            println!(
                "case {}: {} ({}), assignee {}",
                c.id,
                c.state.as_str(),
                c.severity.as_str(),
                c.assignee.as_deref().unwrap_or("-")
            );
            anyhow::Ok(())
        }
    };
    match action {
        CasesCmd::List {
            state,
            min_severity,
            device,
            limit,
            json,
        } => {
            let mut f = CaseFilter {
                device_id: device,
                limit: Some(limit.clamp(1, 1000)),
                ..Default::default()
            };
            if let Some(st) = state {
                for x in st.split(',') {
                    f.states.push(
                        CaseState::parse(x.trim())
                            .with_context(|| format!("--state {x:?}: not a case state"))?,
                    );
                }
            }
            if let Some(s) = min_severity {
                f.min_severity = Some(Severity::parse(&s).with_context(|| {
                    format!("--min-severity {s:?}: info, low, medium, high or critical")
                })?);
            }
            let page = store.list(&f).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&page)?);
            } else {
                println!(
                    "{:>6} {:<9} {:<15} {:<24} {:>9} TITLE",
                    "ID", "SEVERITY", "STATE", "ASSIGNEE", "ANOMALIES"
                );
                for c in &page.cases {
                    println!(
                        "{:>6} {:<9} {:<15} {:<24} {:>9} {}",
                        c.id,
                        c.severity.as_str(),
                        c.state.as_str(),
                        c.assignee.as_deref().unwrap_or("-"),
                        c.anomaly_count,
                        c.title
                    );
                }
                println!(
                    "{} cases{}",
                    page.cases.len(),
                    if page.next.is_some() {
                        " (more: raise --limit)"
                    } else {
                        ""
                    }
                );
            }
        }
        CasesCmd::Show { id } => {
            println!("{}", serde_json::to_string_pretty(&store.get(id).await?)?);
        }
        CasesCmd::Ack { id } => act(id, Action::Acknowledge).await?,
        CasesCmd::Investigate { id } => act(id, Action::Investigate).await?,
        CasesCmd::Assign { id, assignee } => {
            let assignee = (assignee != "-").then_some(assignee);
            act(id, Action::Assign { assignee }).await?
        }
        CasesCmd::Comment { id, text } => act(id, Action::Comment { text }).await?,
        CasesCmd::Resolve {
            id,
            false_positive,
            root_cause,
            note,
        } => {
            let outcome = if false_positive {
                Outcome::FalsePositive
            } else {
                Outcome::Confirmed
            };
            act(
                id,
                Action::Resolve {
                    outcome,
                    root_cause,
                    note,
                },
            )
            .await?
        }
        CasesCmd::Reopen { id, note } => act(id, Action::Reopen { note }).await?,
    }
    store.close().await;
    Ok(())
}

async fn users_cmd(action: UsersCmd, a: LakeArgs) -> anyhow::Result<()> {
    use edgepipe_cases::Role;
    let store = state_store(&a).await?;
    let actor = cli_actor();
    match action {
        UsersCmd::Add { name, role } => {
            let role = Role::parse(&role)
                .with_context(|| format!("--role {role:?}: viewer, operator or admin"))?;
            let token = store.user_put(&name, role, false, &actor).await?;
            println!(
                "user {name} ({}) added. API token (shown once, store it now):\n{token}",
                role.as_str()
            );
        }
        UsersCmd::List => {
            println!(
                "{:<32} {:<9} {:<9} CREATED (ms)",
                "USER", "ROLE", "DISABLED"
            );
            for u in store.users().await? {
                println!(
                    "{:<32} {:<9} {:<9} {}",
                    u.name,
                    u.role.as_str(),
                    u.disabled,
                    u.created_at
                );
            }
        }
        UsersCmd::Disable { name } => {
            store.user_set_disabled(&name, true, &actor).await?;
            println!("user {name} disabled");
        }
        UsersCmd::Enable { name } => {
            store.user_set_disabled(&name, false, &actor).await?;
            println!("user {name} enabled");
        }
        UsersCmd::RotateToken { name } => {
            let u = store
                .users()
                .await?
                .into_iter()
                .find(|u| u.name == name)
                .with_context(|| format!("no user named {name:?}"))?;
            let token = store.user_put(&name, u.role, true, &actor).await?;
            println!("user {name}: new API token (the old one no longer works):\n{token}");
        }
    }
    store.close().await;
    Ok(())
}

fn devices(action: DevicesCmd, data_dir: PathBuf) -> anyhow::Result<()> {
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

/// Fetches JSON from the running server's API (plain HTTP/1.1 on loopback).
async fn http_get_json(remote: &Remote, path: &str) -> anyhow::Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = &remote.addr;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the running server at {addr}"))?;
    s.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            remote.token
        )
        .as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP response from {addr}");
    };
    if !head.starts_with("HTTP/1.1 200") {
        bail!(
            "{} from {addr}{path}: {body}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(serde_json::from_str(body)?)
}

fn print_deadletter(d: &crate::deadletter::DeadLetter, full: bool) {
    if full {
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
    } else {
        let preview: String = String::from_utf8_lossy(&d.raw).chars().take(40).collect();
        println!(
            "{:>6} {:>14} {:<16} {:<14} {:<40} {:?}",
            d.id,
            d.time_ms,
            d.device.as_deref().unwrap_or("-"),
            d.reason,
            d.detail.chars().take(40).collect::<String>(),
            preview
        );
    }
}

async fn deadletters(action: DeadCmd, data_dir: PathBuf) -> anyhow::Result<()> {
    // If a server holds the data directory, ask it; otherwise read the store directly.
    let items: Vec<crate::deadletter::DeadLetter> = match crate::server::lock_data_dir(&data_dir) {
        Ok(_lock) => {
            let dl = DeadLetters::open(&data_dir, &crate::config::DeadLetterConfig::default())?;
            let items = match &action {
                DeadCmd::List { limit } => dl.tail(*limit)?,
                DeadCmd::Show { id } => dl.get(*id)?.into_iter().collect(),
            };
            dl.close();
            items
        }
        Err(crate::server::StartError::Locked(_)) => {
            let remote = remote_of(&data_dir)?;
            let addr = &remote;
            match &action {
                DeadCmd::List { limit } => {
                    let v =
                        http_get_json(addr, &format!("/api/v1/deadletters?limit={limit}")).await?;
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
        DeadCmd::List { .. } => {
            println!(
                "{:>6} {:>14} {:<16} {:<14} {:<40} RAW",
                "ID", "TIME_MS", "DEVICE", "REASON", "DETAIL"
            );
            for d in &items {
                print_deadletter(d, false);
            }
        }
        DeadCmd::Show { id } => match items.first() {
            Some(d) => print_deadletter(d, true),
            None => bail!("no dead letter {id}"),
        },
    }
    Ok(())
}

async fn bench_ingest(a: BenchIngestArgs) -> anyhow::Result<()> {
    use edgepipe_sim::bench::{BenchConfig, run_ingest};
    let mut _tmp = None;
    let mut server = None;
    let (host, port, password) = match a.target {
        Some(t) => (t.ip().to_string(), t.port(), a.password.clone()),
        None => {
            let dir = tempfile_dir()?;
            let mut cfg = ServerConfig::test_config(&dir);
            cfg.mqtt_workers = 0;
            cfg.auto_register = true;
            cfg.limits.device_msgs_per_sec = 0;
            cfg.wal = edgepipe_wal::WalConfig::default();
            let s = RunningServer::start(&cfg).await?;
            eprintln!(
                "bench: edgepipe server on {} (data {})",
                s.mqtt_addr,
                dir.display()
            );
            let addr = s.mqtt_addr;
            server = Some(s);
            _tmp = Some(dir);
            (
                addr.ip().to_string(),
                addr.port(),
                Some("bench-secret".to_string()),
            )
        }
    };
    let cfg = BenchConfig {
        host,
        port,
        connections: a.connections,
        qos: a.qos,
        batch: a.batch,
        rate: a.rate,
        duration: a.duration,
        inflight: a.inflight,
        password,
        ..BenchConfig::default()
    };
    let report = run_ingest(cfg, !a.json).await?;
    if a.json {
        println!("{}", report.to_json());
    } else {
        println!("{report}");
    }
    if let Some(s) = server {
        let fsyncs = s.ingestor.wal().stats().fsyncs;
        eprintln!("bench: server fsyncs during run: {fsyncs}");
        s.shutdown().await;
    }
    if let Some(d) = _tmp {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::temp_dir().join(format!("edgepipe-bench-{}", std::process::id()));
    std::fs::create_dir_all(&base)?;
    Ok(base)
}

fn lake_config(a: &LakeArgs) -> anyhow::Result<ServerConfig> {
    let mut cfg = ServerConfig::load(a.config.as_deref(), std::env::vars())?;
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    let problems: Vec<String> = cfg
        .lake
        .problems()
        .into_iter()
        .map(|(key, msg)| format!("{key}: {msg}"))
        .collect();
    if !problems.is_empty() {
        bail!("invalid configuration:\n  - {}", problems.join("\n  - "));
    }
    Ok(cfg)
}

/// The running server that holds a data directory: its HTTP address and the local CLI's API
/// token (`<data>/cli.token`, written by the server at start).
#[derive(Debug, Clone)]
struct Remote {
    addr: String,
    token: String,
}

/// The running server's HTTP address and token, if one holds the data directory.
fn running_server(data_dir: &std::path::Path) -> Option<Remote> {
    match crate::server::lock_data_dir(data_dir) {
        Ok(_) => None,
        Err(_) => remote_of(data_dir).ok(),
    }
}

fn remote_of(data_dir: &std::path::Path) -> anyhow::Result<Remote> {
    let info: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data_dir.join("server.json")).context("reading server.json")?,
    )?;
    let addr = info["http"]
        .as_str()
        .context("server.json has no http address")?
        .to_owned();
    let token = std::fs::read_to_string(data_dir.join("cli.token"))
        .with_context(|| format!("reading {}", data_dir.join("cli.token").display()))?
        .trim()
        .to_owned();
    Ok(Remote { addr, token })
}

async fn http_post(remote: &Remote, path: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = &remote.addr;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the running server at {addr}"))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        remote.token,
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed HTTP status line")?;
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("unexpected chunked response from {addr}");
    }
    Ok((status, buf[split + 4..].to_vec()))
}

async fn query_cmd(a: QueryArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let format = edgepipe_query::OutputFormat::parse(&a.format)?;
    let cfg = lake_config(&a.lake)?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    bar.set_message("running query");
    bar.enable_steady_tick(Duration::from_millis(120));
    let (schema, batches) = if let Some(addr) = running_server(&cfg.data_dir) {
        let (status, body) =
            http_post(&addr, "/api/v1/query?format=arrow", a.sql.as_bytes()).await?;
        bar.finish_and_clear();
        if status != 200 {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            bail!(
                "{}",
                v["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("server answered {status}"))
            );
        }
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        (schema, batches)
    } else {
        let store = crate::lake::open_store(&cfg.data_dir, &cfg.lake)?;
        eprintln!(
            "note: no server is running on {}; reading lake files only (records still in the WAL reach the lake at the next start)",
            cfg.data_dir.display()
        );
        let engine = edgepipe_query::QueryEngine::new(
            store,
            None,
            edgepipe_lake::SwapLock::default(),
            cfg.query.clone(),
        );
        let out = engine.query(&a.sql).await;
        bar.finish_and_clear();
        let out = out?;
        (out.schema, out.batches)
    };
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    edgepipe_query::write_output(format, &schema, &batches, &mut w)?;
    if format == edgepipe_query::OutputFormat::Json {
        writeln!(w)?;
    }
    w.flush()?;
    Ok(())
}

async fn lake_cmd(action: LakeCmd, a: LakeArgs) -> anyhow::Result<()> {
    let cfg = lake_config(&a)?;
    let store = crate::lake::open_store(&cfg.data_dir, &cfg.lake)?;
    match action {
        LakeCmd::Stats { json, partitions } => {
            let stats = edgepipe_lake::lake_stats(&store).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(());
            }
            println!(
                "{:<12} {:>8} {:>14} {:>14} {:>10}",
                "table", "files", "rows", "bytes", "B/row"
            );
            for t in &stats {
                let per = if t.rows > 0 {
                    t.bytes as f64 / t.rows as f64
                } else {
                    0.0
                };
                println!(
                    "{:<12} {:>8} {:>14} {:>14} {:>10.2}",
                    t.table, t.files, t.rows, t.bytes, per
                );
                if partitions {
                    for p in &t.partitions {
                        println!(
                            "  {:<26} {:>8} {:>14} {:>14}",
                            p.partition, p.files, p.rows, p.bytes
                        );
                    }
                }
            }
        }
        LakeCmd::Compact => {
            let _lock = crate::server::lock_data_dir(&cfg.data_dir).map_err(|e| match e {
                crate::server::StartError::Locked(_) => anyhow::anyhow!(
                    "a server is running on {}; it compacts in the background (lake.compaction_interval)",
                    cfg.data_dir.display()
                ),
                e => e.into(),
            })?;
            let wal = edgepipe_wal::Wal::open(cfg.data_dir.join("wal"), cfg.wal.clone())?;
            let committed = wal
                .consumers()
                .get(edgepipe_lake::LAKE_CONSUMER)
                .copied()
                .unwrap_or(0);
            wal.close();
            // A pass a crash (or kill) interrupted is finished first, so the partition is
            // whole before it is read again.
            edgepipe_lake::recover_compactions(&store).await?;
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("compacting");
            bar.enable_steady_tick(Duration::from_millis(120));
            let r = edgepipe_lake::compact(
                &store,
                &cfg.lake,
                &edgepipe_lake::SwapLock::default(),
                committed,
                edgepipe_sim::now_ms(),
                true,
            )
            .await;
            bar.finish_and_clear();
            let r = r?;
            println!(
                "compacted {} partitions: {} files -> {}, {} rows -> {} ({} duplicates removed), {} -> {} bytes",
                r.partitions,
                r.files_in,
                r.files_out,
                r.rows_in,
                r.rows_out,
                r.duplicates_removed,
                r.bytes_in,
                r.bytes_out
            );
        }
        LakeCmd::Verify => {
            let (problems, checked) = edgepipe_lake::verify(&store).await?;
            for p in &problems {
                println!("{}: {}", p.key, p.problem);
            }
            if !problems.is_empty() {
                bail!("{} problems in {checked} files", problems.len());
            }
            println!("{checked} files verified: footers and schemas are sound");
        }
    }
    Ok(())
}

fn eval_nab(data: PathBuf, out: PathBuf) -> anyhow::Result<()> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_message(format!("scoring NAB at {}", data.display()));
    bar.enable_steady_tick(Duration::from_millis(120));
    let started = Instant::now();
    let r =
        edgepipe_detect::nab::eval_nab(&data, &out, &edgepipe_detect::EnsembleConfig::default());
    bar.finish_and_clear();
    let r = r?;
    println!(
        "NAB: {} files, {} rows, {} windows in {:.1} s; results in {}",
        r.files,
        r.rows,
        r.windows,
        started.elapsed().as_secs_f64(),
        r.results_dir.display()
    );
    for p in &r.scores.profiles {
        println!("  {:<22} {:>6.2}", p.profile, p.score);
    }
    Ok(())
}

async fn models_cmd(action: ModelsCmd, a: LakeArgs) -> anyhow::Result<()> {
    let cfg = lake_config(&a)?;
    match action {
        ModelsCmd::Train {
            since,
            promote,
            auto_promote,
        } => {
            let since = humantime::parse_duration(&since)
                .map_err(|e| anyhow::anyhow!("--since {since:?}: {e} (write e.g. 30d)"))?;
            let store = crate::lake::open_store(&cfg.data_dir, &cfg.lake)?;
            let mut qcfg = cfg.query.clone();
            // Training reads raw history: lift the interactive row limit.
            qcfg.max_rows = usize::MAX;
            let engine = edgepipe_query::QueryEngine::new(
                store,
                None,
                edgepipe_lake::SwapLock::default(),
                qcfg,
            );
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_message("reading history and labels, fitting, evaluating");
            bar.enable_steady_tick(Duration::from_millis(120));
            let how = match (promote, auto_promote) {
                (true, _) => crate::models::Promote::Always,
                (false, true) => crate::models::Promote::IfBetter,
                (false, false) => crate::models::Promote::Never,
            };
            let r = crate::models::train(&cfg.data_dir, &engine, since, how).await;
            bar.finish_and_clear();
            let r = r?;
            println!(
                "trained model {}: {} series fitted on {} readings",
                r.version, r.series, r.readings
            );
            let show = |name: &str, s: &edgepipe_detect::eval::LabelScore| {
                println!(
                    "  {name:<24} precision {:.3}  recall {:.3}  F1 {:.3}  ({} of {} confirmed found, fired on {} of {} false positives)",
                    s.precision,
                    s.recall,
                    s.f1,
                    s.detected,
                    s.confirmed,
                    s.fired_on_false,
                    s.false_positive
                );
            };
            println!("on {} labelled intervals:", r.labels);
            show(&r.version, &r.score);
            show(&r.baseline.0, &r.baseline.1);
            for (series, t) in &r.raised {
                println!("  threshold of {series} raised to {t:.3} above its false positives");
            }
            if r.promoted {
                println!("promoted {}", r.version);
            } else if how != crate::models::Promote::Never {
                println!(
                    "kept {} (the new model does not score better)",
                    r.baseline.0
                );
            }
        }
        ModelsCmd::List => {
            for (v, series, current) in crate::models::list(&cfg.data_dir)? {
                let eval = crate::models::evaluation(&cfg.data_dir, &v)
                    .map(|e| {
                        format!(
                            ", F1 {:.3} on {} labels",
                            e["score"]["f1"].as_f64().unwrap_or(f64::NAN),
                            e["labels"].as_u64().unwrap_or(0)
                        )
                    })
                    .unwrap_or_default();
                println!(
                    "{} {v}  ({series} series{eval})",
                    if current { "*" } else { " " }
                );
            }
        }
        ModelsCmd::Promote { version } => {
            crate::models::promote(&cfg.data_dir, &version)?;
            println!("promoted {version}; a running server swaps it in at its next checkpoint");
        }
    }
    Ok(())
}
