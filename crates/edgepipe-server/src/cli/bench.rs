//! `edgepipe bench lake`: the lake writer's throughput on the real path (WAL records → rows →
//! sorted, partitioned Parquet on the local store), bytes per reading after compaction, and the
//! three standard queries through the query engine. Prints one JSON object; the peers (pyarrow
//! writing the same rows, DuckDB running the same queries on the same files) run beside it in
//! `scripts/bench-lake.sh`.

use std::sync::Arc;
use std::time::Instant;

use edgepipe_lake::{LakeConfig, LakeStore, LakeWriter, SwapLock};
use edgepipe_query::{QueryConfig, QueryEngine};
use edgepipe_types::{DeviceId, IngestRecord, Metric, Reading, Transport, TsSource, Value};
use edgepipe_wal::{Wal, WalConfig};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use edgepipe_types::{Clock, SystemClock};

use crate::config::ServerConfig;
use crate::server::RunningServer;

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
    /// MQTT over TLS to --target, trusting this CA bundle (PEM).
    #[arg(long, requires = "target")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// The server name to verify over TLS (default: the target's IP address).
    #[arg(long, requires = "tls_ca")]
    pub tls_name: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub(crate) async fn bench_ingest(a: BenchIngestArgs) -> anyhow::Result<()> {
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
    let tls = match &a.tls_ca {
        Some(ca) => {
            let roots = crate::gateway::tls::load_roots(std::slice::from_ref(ca))?;
            let c = rustls::ClientConfig::builder_with_provider(crate::gateway::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_root_certificates(roots)
                .with_no_client_auth();
            Some(std::sync::Arc::new(c))
        }
        None => None,
    };
    let host = a.tls_name.clone().unwrap_or(host);
    let cfg = BenchConfig {
        host,
        port,
        tls,
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

/// 2026-01-01T00:00:00Z in ms: generated data starts here.
pub const BENCH_T0_MS: i64 = 1_767_225_600_000;

/// The standard queries, in DataFusion's SQL (DuckDB's spelling is in scripts/bench-lake.sh).
pub fn standard_queries() -> [(&'static str, String); 3] {
    [
        (
            "last value per series",
            "SELECT device_id, metric, last_value(value ORDER BY ts) AS v FROM readings GROUP BY 1, 2"
                .to_owned(),
        ),
        (
            "hourly avg/min/max per device for a day",
            "SELECT device_id, date_trunc('hour', ts) AS h, avg(value), min(value), max(value) \
             FROM readings WHERE ts >= '2026-01-01T00:00:00Z' AND ts < '2026-01-02T00:00:00Z' \
             GROUP BY 1, 2"
                .to_owned(),
        ),
        (
            "one series' raw points for an hour",
            "SELECT ts, value FROM readings WHERE device_id = 'dev-0003' AND metric = 'm2' \
             AND ts >= '2026-01-01T02:00:00Z' AND ts < '2026-01-01T03:00:00Z' ORDER BY ts"
                .to_owned(),
        ),
    ]
}

/// A sensor-like value: a slow daily wave plus noise, kept at two decimals as sensors report.
pub(crate) fn value(device: usize, metric: usize, t: usize) -> f64 {
    let base = 20.0 + 5.0 * (device as f64 * 0.37 + metric as f64).sin();
    let wave = 3.0 * ((t as f64) * std::f64::consts::TAU / 86_400.0).sin();
    // Deterministic pseudo-noise (splitmix-style hash), ±0.25.
    let mut x = (device as u64) << 40 ^ (metric as u64) << 32 ^ t as u64;
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    let noise = ((x >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * 0.5;
    ((base + wave + noise) * 100.0).round() / 100.0
}

/// Runs the benchmark.
pub async fn run(a: BenchLakeArgs) -> anyhow::Result<()> {
    let tmp = tempfile_dir()?;
    let root = a.out.clone().unwrap_or_else(|| tmp.clone());
    std::fs::create_dir_all(&root)?;
    let wal_dir = root.join("wal");
    let _ = std::fs::remove_dir_all(&wal_dir);
    let _ = std::fs::remove_dir_all(root.join("lake"));
    let wal = Wal::open(
        &wal_dir,
        WalConfig {
            max_bytes: 64 * 1024 * 1024 * 1024,
            ..WalConfig::default()
        },
    )?;
    // One WAL record per device per second with all its metrics, as a gateway writes them.
    let seconds = a.hours * 3600;
    let rows = (a.devices * a.metrics * seconds) as u64;
    let bar = indicatif::ProgressBar::new(seconds as u64);
    bar.set_message("writing WAL records");
    let devices: Vec<DeviceId> = (0..a.devices)
        .map(|d| DeviceId::new(format!("dev-{d:04}")))
        .collect::<Result<_, _>>()?;
    let metrics: Vec<Metric> = (0..a.metrics)
        .map(|m| Metric::new(format!("m{m}")))
        .collect::<Result<_, _>>()?;
    let t0 = if a.end_now {
        (SystemClock.now_ms() / 1000 - seconds as i64) * 1000
    } else {
        BENCH_T0_MS
    };
    for t in 0..seconds {
        let ts = t0 + t as i64 * 1000;
        let mut batch = Vec::with_capacity(a.devices);
        for (d, dev) in devices.iter().enumerate() {
            let rec = IngestRecord {
                device_id: dev.clone(),
                received_at: ts + 20,
                transport: Transport::Mqtt5,
                origin: None,
                tags: Vec::new(),
                readings: metrics
                    .iter()
                    .enumerate()
                    .map(|(m, metric)| Reading {
                        metric: metric.clone(),
                        ts,
                        value: Value::F64(value(d, m, t)),
                        ts_source: TsSource::Device,
                    })
                    .collect(),
            };
            batch.push(rec.encode());
        }
        wal.append_batch(batch).await?;
        if t % 600 == 0 {
            bar.set_position(t as u64);
        }
    }
    bar.finish_and_clear();

    let store = LakeStore::local(root.join("lake"))?;
    let defaults = LakeConfig::default();
    let cfg = LakeConfig {
        flush_max_rows: a.flush_max_rows.unwrap_or(defaults.flush_max_rows),
        compaction_interval: std::time::Duration::ZERO,
        ..defaults
    };
    let wal = Arc::new(wal);
    let lake_metrics = Arc::new(edgepipe_lake::LakeMetrics::default());
    let mut w = LakeWriter::open(
        store.clone(),
        wal.clone(),
        cfg.clone(),
        lake_metrics.clone(),
    )
    .await?;
    let started = Instant::now();
    let cpu0 = process_cpu_seconds();
    // The writer's own catch-up path: reading overlaps the previous flush's sort and encode.
    w.catch_up().await?;
    let write_s = started.elapsed().as_secs_f64();
    let write_cpu_s = match (cpu0, process_cpu_seconds()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let before = edgepipe_lake::lake_stats(&store).await?;
    let swap = SwapLock::default();
    let committed = w.fresh().committed();
    let c0 = Instant::now();
    // With raw hours left, compaction runs as the server's would at the end of the data minus
    // those hours: only hours closed by then (plus `compact_after`) are compacted.
    let (compact_now, force) = if a.raw_hours > 0 {
        (t0 + (seconds as i64 - a.raw_hours * 3600) * 1000, false)
    } else {
        (i64::MAX / 4, true)
    };
    let report = edgepipe_lake::compact(&store, &cfg, &swap, committed, compact_now, force).await?;
    let compact_s = c0.elapsed().as_secs_f64();
    let after = edgepipe_lake::lake_stats(&store).await?;
    let readings_after = after
        .iter()
        .find(|t| t.table == "readings")
        .cloned()
        .unwrap_or_default();
    let readings_before = before
        .iter()
        .find(|t| t.table == "readings")
        .cloned()
        .unwrap_or_default();

    // Encode only: the same rows, already in Arrow and sorted, to one zstd-1 Parquet file (what
    // pyarrow's write_table does), median of 3.
    let mut all = Vec::new();
    for (key, _) in store.list("readings/").await? {
        let (_, bs) = edgepipe_lake::decode_parquet(store.get(&key).await?)?;
        all.extend(bs);
    }
    let schema = edgepipe_lake::schema::readings_schema();
    let mut enc = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let bytes = edgepipe_lake::encode_parquet_level(&schema, &all, cfg.row_group_rows, 1)?;
        enc.push(t.elapsed().as_secs_f64());
        drop(bytes);
    }
    enc.sort_by(f64::total_cmp);
    let encode_rows_per_sec = rows as f64 / enc[1];

    let engine = QueryEngine::new(store.clone(), None, swap, QueryConfig::default());
    let mut queries = Vec::new();
    for (name, sql) in standard_queries() {
        let mut times = Vec::new();
        let mut rows_out = 0;
        for _ in 0..a.runs.max(1) {
            let t = Instant::now();
            let out = engine.query(&sql).await?;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            rows_out = out.rows;
        }
        times.sort_by(f64::total_cmp);
        queries.push(serde_json::json!({
            "name": name, "sql": sql, "rows": rows_out,
            "median_ms": times[times.len() / 2], "runs_ms": times,
        }));
    }
    let out = serde_json::json!({
        "rows": rows,
        "series": a.devices * a.metrics,
        "lake_dir": root.join("lake"),
        "flush_max_rows": cfg.flush_max_rows,
        "write_seconds": write_s,
        "write_rows_per_sec": rows as f64 / write_s,
        // CPU time of the whole process (all threads) during the write: with 2 cores, the
        // write can take no less than half of it.
        "write_cpu_seconds": write_cpu_s,
        "write_phases_seconds": {
            "read_wal_to_arrow": lake_metrics.read_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9,
            "sort_and_encode": lake_metrics.encode_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9,
            "store_and_checkpoint": lake_metrics.store_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9,
        },
        "encode_only_rows_per_sec": encode_rows_per_sec,
        "files_before_compaction": readings_before.files,
        "bytes_before_compaction": readings_before.bytes,
        "compaction_seconds": compact_s,
        "compaction": report,
        "files_after_compaction": readings_after.files,
        "bytes_after_compaction": readings_after.bytes,
        "bytes_per_reading": readings_after.bytes as f64 / rows.max(1) as f64,
        "queries": queries,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if a.out.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

/// User + system CPU time of this process so far (all threads), from `/proc/self/stat`
/// (Linux; clock ticks of 1/100 s). `None` where that file is missing or unreadable.
pub(crate) fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces): utime and
    // stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// A fresh directory under the system temp dir for a benchmark's server or lake.
pub(crate) fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "edgepipe-bench-lake-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
