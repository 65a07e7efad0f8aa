//! The fleet over HTTP: each simulated device POSTs its samples to `/api/v1/ingest` as NDJSON
//! with its bearer token, on its own keep-alive connection (a small HTTP/1.1 client over
//! tokio, so the simulator pulls in no HTTP stack). A sample is counted as acknowledged only on
//! a 200; on a connection error the device reconnects and resends that sample once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::Result;
use crate::mqtt::{FleetRunOptions, SimStats, telemetry_json};
use crate::signal::Fleet;

/// Largest response accepted from the server.
const MAX_RESPONSE: usize = 1 << 20;

/// Runs the fleet against the HTTP endpoint at `opts.host:opts.port` until `shutdown` is cancelled.
pub async fn run_fleet_http(
    opts: FleetRunOptions,
    stats: Arc<SimStats>,
    shutdown: CancellationToken,
) -> Result<()> {
    opts.validate()?;
    let fleet = Arc::new(Fleet::new(opts.fleet.clone())?);
    let opts = Arc::new(opts);
    let origin = Instant::now();
    let mut tasks = JoinSet::new();
    for index in 0..fleet.device_count() {
        let Some(id) = fleet.device_id(index).map(str::to_owned) else {
            continue;
        };
        let password = opts.credentials.password_for(&id)?;
        tasks.spawn(device(
            index,
            id,
            password,
            Arc::clone(&fleet),
            Arc::clone(&opts),
            Arc::clone(&stats),
            origin,
            shutdown.clone(),
        ));
    }
    crate::mqtt::join_devices(tasks, "http fleet device").await
}

#[allow(clippy::too_many_arguments)]
async fn device(
    index: usize,
    id: String,
    token: String,
    fleet: Arc<Fleet>,
    opts: Arc<FleetRunOptions>,
    stats: Arc<SimStats>,
    origin: Instant,
    shutdown: CancellationToken,
) {
    let cfg = fleet.config();
    let interval_ms = cfg.interval.as_millis().max(1) as f64;
    let phase_ms = (interval_ms * index as f64 / fleet.device_count().max(1) as f64).floor();
    let period = cfg
        .interval
        .div_f64(opts.speedup)
        .max(Duration::from_millis(1));
    let first = origin + Duration::from_secs_f64(phase_ms / 1000.0 / opts.speedup);
    let mut ticker = tokio::time::interval_at(first, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let addr = format!("{}:{}", opts.host, opts.port);
    let mut conn: Option<BufReader<TcpStream>> = None;
    loop {
        let at = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            at = ticker.tick() => at,
        };
        let k = ((at - first).as_nanos() / period.as_nanos().max(1)) as i64;
        let ts = cfg
            .start_ms
            .saturating_add(phase_ms as i64)
            .saturating_add(k.saturating_mul(interval_ms as i64));
        let Some(metrics) = fleet.tick(index, ts) else {
            stats.dropout_samples.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let body = telemetry_json(ts, &metrics);
        stats.published.fetch_add(1, Ordering::Relaxed);
        stats
            .readings
            .fetch_add(metrics.len() as u64, Ordering::Relaxed);
        let mut sent = false;
        for _attempt in 0..2 {
            if conn.is_none() {
                match TcpStream::connect(&addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        stats.connects.fetch_add(1, Ordering::Relaxed);
                        conn = Some(BufReader::new(s));
                    }
                    Err(_) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { break };
            match post(c, &addr, &id, &token, &body).await {
                Ok(200) => {
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    stats
                        .readings_acked
                        .fetch_add(metrics.len() as u64, Ordering::Relaxed);
                    sent = true;
                    break;
                }
                Ok(401) => {
                    stats.auth_refused.fetch_add(1, Ordering::Relaxed);
                    sent = true;
                    break;
                }
                Ok(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    sent = true;
                    break;
                }
                Err(_) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    conn = None;
                }
            }
        }
        if !sent {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// One request on a keep-alive connection; returns the status code.
async fn post(
    c: &mut BufReader<TcpStream>,
    host: &str,
    device: &str,
    token: &str,
    body: &[u8],
) -> std::io::Result<u16> {
    let head = format!(
        "POST /api/v1/ingest HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         X-Device-Id: {device}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let s = c.get_mut();
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    // Read the head byte by byte up to the blank line (responses are small).
    let mut headbuf = Vec::with_capacity(256);
    while !headbuf.ends_with(b"\r\n\r\n") {
        let b = c.read_u8().await?;
        headbuf.push(b);
        if headbuf.len() > 16 * 1024 {
            return Err(std::io::Error::other("response head too large"));
        }
    }
    let text = String::from_utf8_lossy(&headbuf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other("malformed status line"))?;
    let len = text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    if len > MAX_RESPONSE {
        return Err(std::io::Error::other("response body too large"));
    }
    let mut rest = vec![0u8; len];
    c.read_exact(&mut rest).await?;
    Ok(status)
}
