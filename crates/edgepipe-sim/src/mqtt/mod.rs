//! Runs a simulated [`Fleet`] over real MQTT 3.1.1: one client per device, publishing each
//! sample as JSON to `edgepipe/v1/{device_id}/telemetry` at QoS 1.
//!
//! Each device samples at `start_ms + phase + k * interval` in simulated time (the phase spreads
//! devices evenly across one interval so the fleet does not publish in bursts), and simulated
//! time runs `speedup` times faster than the wall clock. The payload is the JSON reading format
//! of the gateway: `{"ts": 1700000000123, "metrics": {"temp": 21.5, ...}}`.
//!
//! A simulated device is deliberately *not* a durable agent: while it is disconnected its
//! client queue (bounded by [`FleetRunOptions::queue_capacity`]) fills and further samples are
//! counted in [`SimStats::dropped`]; publishes not acknowledged before a reconnect may be lost
//! with the old session. Use `edgepipe-agent` for store-and-forward.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Outgoing, Packet, QoS,
};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use crate::signal::{Fleet, FleetConfig};
use crate::{Error, Result};

/// Topic a device publishes its telemetry to (the device scheme of `edgepipe-protocol`).
pub use edgepipe_protocol::telemetry_topic;

/// Encodes one sample as the gateway's JSON reading: `{"ts":..,"metrics":{"name":value,..}}`.
/// Non-finite values (never produced by the model) are left out, since JSON cannot carry them.
pub fn telemetry_json(ts_ms: i64, metrics: &[(String, f64)]) -> Vec<u8> {
    let map: serde_json::Map<String, serde_json::Value> = metrics
        .iter()
        .filter_map(|(m, v)| {
            serde_json::Number::from_f64(*v).map(|n| (m.clone(), serde_json::Value::Number(n)))
        })
        .collect();
    let doc = serde_json::json!({ "ts": ts_ms, "metrics": map });
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// How devices authenticate. The MQTT username is always the device id.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credentials {
    /// Username only, no password (brokers allowing anonymous or auto-registering gateways).
    #[default]
    UsernameOnly,
    /// The same password for every device.
    Shared(String),
    /// A token per device id; a device missing from the map is a configuration error.
    PerDevice(HashMap<String, String>),
}

impl std::fmt::Debug for Credentials {
    // Secrets stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::UsernameOnly => f.write_str("UsernameOnly"),
            Credentials::Shared(_) => f.write_str("Shared(***)"),
            Credentials::PerDevice(m) => write!(f, "PerDevice({} devices)", m.len()),
        }
    }
}

impl Credentials {
    pub(crate) fn password_for(&self, device: &str) -> Result<String> {
        match self {
            Credentials::UsernameOnly => Ok(String::new()),
            Credentials::Shared(p) => Ok(p.clone()),
            Credentials::PerDevice(m) => {
                m.get(device)
                    .cloned()
                    .ok_or_else(|| Error::MissingCredential {
                        device: device.to_owned(),
                    })
            }
        }
    }
}

/// What [`run_fleet`] runs and where it sends it.
#[derive(Debug, Clone)]
pub struct FleetRunOptions {
    /// Broker or gateway host.
    pub host: String,
    /// MQTT port.
    pub port: u16,
    /// The fleet to simulate.
    pub fleet: FleetConfig,
    /// How devices log in.
    pub credentials: Credentials,
    /// Simulated seconds per wall-clock second (1.0 = real time).
    pub speedup: f64,
    /// MQTT keep-alive (0 disables it; otherwise at least one second).
    pub keep_alive: Duration,
    /// Publishes each device may queue while disconnected or backpressured.
    pub queue_capacity: usize,
    /// First reconnect delay; doubles per failed attempt up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest reconnect delay.
    pub max_backoff: Duration,
    /// On shutdown, how long to wait for outstanding PUBACKs before disconnecting.
    pub drain_timeout: Duration,
}

impl Default for FleetRunOptions {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 1883,
            fleet: FleetConfig::default(),
            credentials: Credentials::default(),
            speedup: 1.0,
            keep_alive: Duration::from_secs(30),
            queue_capacity: 64,
            min_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(2),
        }
    }
}

impl FleetRunOptions {
    /// Checks every field, reporting all problems at once (the fleet is checked by
    /// [`Fleet::new`]).
    pub fn validate(&self) -> Result<()> {
        let mut problems = Vec::new();
        if self.host.is_empty() {
            problems.push("host: must not be empty".to_owned());
        }
        if !(self.speedup.is_finite() && self.speedup > 0.0 && self.speedup <= 1e6) {
            problems.push(format!("speedup: {} is outside (0, 1e6]", self.speedup));
        }
        if !self.keep_alive.is_zero() && self.keep_alive < Duration::from_secs(1) {
            problems.push(format!(
                "keep_alive: {:?} must be 0 or at least 1s",
                self.keep_alive
            ));
        }
        if self.queue_capacity == 0 {
            problems.push("queue_capacity: must be at least 1".to_owned());
        }
        if self.min_backoff.is_zero() || self.min_backoff > self.max_backoff {
            problems.push(format!(
                "min_backoff: {:?} must be non-zero and at most max_backoff {:?}",
                self.min_backoff, self.max_backoff
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidConfig {
                what: "fleet run",
                problems,
            })
        }
    }
}

/// Live counters of a fleet run, shared with whoever prints status.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Devices connected right now (a gauge).
    pub connected: AtomicU64,
    /// Successful connections, reconnects included.
    pub connects: AtomicU64,
    /// Messages written to the network.
    pub published: AtomicU64,
    /// Messages acknowledged (PUBACK).
    pub acked: AtomicU64,
    /// Readings in published messages (one per metric per message).
    pub readings: AtomicU64,
    /// Readings in acknowledged messages.
    pub readings_acked: AtomicU64,
    /// Connection errors other than authentication refusals.
    pub errors: AtomicU64,
    /// Connections refused for bad credentials or missing authorisation.
    pub auth_refused: AtomicU64,
    /// Samples not sent because the device's client queue was full.
    pub dropped: AtomicU64,
    /// Samples not produced because the device was in a simulated dropout.
    pub dropout_samples: AtomicU64,
}

/// A point-in-time copy of [`SimStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SimStatsSnapshot {
    /// See [`SimStats::connected`].
    pub connected: u64,
    /// See [`SimStats::connects`].
    pub connects: u64,
    /// See [`SimStats::published`].
    pub published: u64,
    /// See [`SimStats::acked`].
    pub acked: u64,
    /// See [`SimStats::readings`].
    pub readings: u64,
    /// See [`SimStats::readings_acked`].
    pub readings_acked: u64,
    /// See [`SimStats::errors`].
    pub errors: u64,
    /// See [`SimStats::auth_refused`].
    pub auth_refused: u64,
    /// See [`SimStats::dropped`].
    pub dropped: u64,
    /// See [`SimStats::dropout_samples`].
    pub dropout_samples: u64,
}

impl SimStats {
    /// Reads every counter (each individually; they are not a consistent cut).
    pub fn snapshot(&self) -> SimStatsSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStatsSnapshot {
            connected: r(&self.connected),
            connects: r(&self.connects),
            published: r(&self.published),
            acked: r(&self.acked),
            readings: r(&self.readings),
            readings_acked: r(&self.readings_acked),
            errors: r(&self.errors),
            auth_refused: r(&self.auth_refused),
            dropped: r(&self.dropped),
            dropout_samples: r(&self.dropout_samples),
        }
    }
}

fn bump(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Relaxed);
}

/// True when a connection error means the credentials were refused.
pub fn is_auth_refusal(e: &ConnectionError) -> bool {
    matches!(
        e,
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized
        )
    )
}

/// Runs the fleet until `shutdown` is cancelled.
///
/// Connection errors do not end the run: each device reconnects with exponential backoff, and
/// errors and authentication refusals are counted in `stats`. Returns an error only for an
/// invalid configuration or a device task that failed. When this returns, every device has
/// stopped sampling, waited up to `drain_timeout` for its outstanding PUBACKs and disconnected.
pub async fn run_fleet(
    opts: FleetRunOptions,
    stats: Arc<SimStats>,
    shutdown: CancellationToken,
) -> Result<()> {
    opts.validate()?;
    let fleet = Arc::new(Fleet::new(opts.fleet.clone())?);
    let ids = fleet.device_ids();
    let passwords = ids
        .iter()
        .map(|d| opts.credentials.password_for(d))
        .collect::<Result<Vec<_>>>()?;
    let opts = Arc::new(opts);
    // One wall-clock origin for the whole fleet keeps devices' phases as configured.
    let origin = Instant::now();
    let mut tasks = JoinSet::new();
    for (index, password) in passwords.into_iter().enumerate() {
        let dev = Device {
            index,
            fleet: Arc::clone(&fleet),
            opts: Arc::clone(&opts),
            stats: Arc::clone(&stats),
            password,
            origin,
        };
        tasks.spawn(dev.run(shutdown.clone()));
    }
    join_devices(tasks, "fleet device").await
}

/// Waits for every device task; the first that panicked or was cancelled becomes the error.
pub(crate) async fn join_devices(mut tasks: JoinSet<()>, what: &'static str) -> Result<()> {
    let mut failure = None;
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res {
            failure.get_or_insert(Error::Task {
                what,
                reason: e.to_string(),
            });
        }
    }
    failure.map_or(Ok(()), Err)
}

/// One simulated device: a sampler task feeding an MQTT client whose event loop this drives.
struct Device {
    index: usize,
    fleet: Arc<Fleet>,
    opts: Arc<FleetRunOptions>,
    stats: Arc<SimStats>,
    password: String,
    origin: Instant,
}

impl Device {
    async fn run(self, shutdown: CancellationToken) {
        let Some(id) = self.fleet.device_id(self.index).map(str::to_owned) else {
            return;
        };
        let o = &self.opts;
        let mut mqtt = MqttOptions::new(id.clone(), o.host.clone(), o.port);
        mqtt.set_keep_alive(o.keep_alive)
            .set_clean_session(true)
            .set_credentials(id.clone(), self.password.clone())
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(mqtt, o.queue_capacity);
        eventloop.set_network_options(crate::net::network_options(Duration::from_secs(10)));

        let sampler = tokio::spawn(sample_loop(
            self.index,
            Arc::clone(&self.fleet),
            Arc::clone(&self.opts),
            Arc::clone(&self.stats),
            client.clone(),
            self.origin,
            shutdown.clone(),
        ));

        let metrics = self.fleet.metric_names().len() as u64;
        let stats = &self.stats;
        let mut connected = false;
        let mut backoff = o.min_backoff;
        let mut attempt: u64 = 0;
        let mut outstanding: u64 = 0;
        let mut stopping = false;
        let mut drain_deadline = Instant::now();
        loop {
            let event = if stopping {
                if outstanding == 0 {
                    break;
                }
                match tokio::time::timeout_at(drain_deadline, eventloop.poll()).await {
                    Ok(ev) => ev,
                    Err(_) => break,
                }
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        stopping = true;
                        drain_deadline = Instant::now() + o.drain_timeout;
                        continue;
                    }
                    ev = eventloop.poll() => ev,
                }
            };
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if !connected {
                        connected = true;
                        bump(&stats.connected, 1);
                    }
                    bump(&stats.connects, 1);
                    backoff = o.min_backoff;
                    attempt = 0;
                    // A clean session forgets what was in flight.
                    outstanding = 0;
                    tracing::debug!(device = %id, "connected");
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                    outstanding += 1;
                    bump(&stats.published, 1);
                    bump(&stats.readings, metrics);
                }
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    outstanding = outstanding.saturating_sub(1);
                    bump(&stats.acked, 1);
                    bump(&stats.readings_acked, metrics);
                }
                Ok(_) => {}
                Err(e) => {
                    if connected {
                        connected = false;
                        stats.connected.fetch_sub(1, Ordering::Relaxed);
                    }
                    outstanding = 0;
                    if stopping {
                        break;
                    }
                    if is_auth_refusal(&e) {
                        bump(&stats.auth_refused, 1);
                        tracing::warn!(device = %id, error = %e, "credentials refused");
                    } else {
                        bump(&stats.errors, 1);
                        tracing::debug!(device = %id, error = %e, "connection error");
                    }
                    attempt += 1;
                    let delay = jitter(backoff, self.index as u64, attempt);
                    backoff = (backoff * 2).min(o.max_backoff);
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        sampler.abort();
        if connected {
            // Best effort: a clean DISCONNECT so the broker does not publish a will or log an
            // error; the connection is dropped either way when the event loop goes.
            if client.try_disconnect().is_ok() {
                let flush = async {
                    loop {
                        match eventloop.poll().await {
                            Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), flush).await;
            }
            stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// `base` scaled by a deterministic factor in [0.75, 1.25), so a fleet refused at once does
/// not reconnect in lockstep.
fn jitter(base: Duration, device: u64, attempt: u64) -> Duration {
    let h = device
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(attempt.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    let frac = (h >> 11) as f64 / (1u64 << 53) as f64;
    base.mul_f64(0.75 + 0.5 * frac)
}

async fn sample_loop(
    index: usize,
    fleet: Arc<Fleet>,
    opts: Arc<FleetRunOptions>,
    stats: Arc<SimStats>,
    client: AsyncClient,
    origin: Instant,
    shutdown: CancellationToken,
) {
    let Some(id) = fleet.device_id(index) else {
        return;
    };
    let topic = telemetry_topic(id);
    let cfg = fleet.config();
    let interval_ms = cfg.interval.as_millis().max(1) as f64;
    let devices = fleet.device_count().max(1) as f64;
    // Simulated phase of this device inside one interval, in whole ms.
    let phase_ms = (interval_ms * index as f64 / devices).floor();
    let real_period = cfg
        .interval
        .div_f64(opts.speedup)
        .max(Duration::from_millis(1));
    let first = origin + Duration::from_secs_f64(phase_ms / 1000.0 / opts.speedup);
    let mut ticker = tokio::time::interval_at(first, real_period);
    // After a stall, catch up on every missed sample (each keeps its own grid timestamp)
    // rather than leaving an unlabelled gap; the bounded client queue caps the burst.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        let at = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            at = ticker.tick() => at,
        };
        // Ticks report their scheduled instant, so k is exact even when they fire late.
        let k = ((at - first).as_nanos() / real_period.as_nanos().max(1)) as i64;
        let ts = cfg
            .start_ms
            .saturating_add(phase_ms as i64)
            .saturating_add(k.saturating_mul(interval_ms as i64));
        match fleet.tick(index, ts) {
            Some(metrics) => {
                let payload = telemetry_json(ts, &metrics);
                if client
                    .try_publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                    .is_err()
                {
                    bump(&stats.dropped, 1);
                }
            }
            None => bump(&stats.dropout_samples, 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_the_gateway_shape() {
        let p = telemetry_json(
            1_700_000_000_123,
            &[
                ("temp".into(), 21.5),
                ("bad".into(), f64::NAN),
                ("rpm".into(), 1450.0),
            ],
        );
        let v: serde_json::Value = serde_json::from_slice(&p).expect("valid JSON");
        assert_eq!(v["ts"], 1_700_000_000_123_i64);
        assert_eq!(v["metrics"]["temp"], 21.5);
        assert_eq!(v["metrics"]["rpm"], 1450.0);
        assert!(v["metrics"].get("bad").is_none());
        assert_eq!(
            telemetry_topic("sim-0001"),
            "edgepipe/v1/sim-0001/telemetry"
        );
    }

    #[test]
    fn credentials_and_options_are_checked() {
        let per = Credentials::PerDevice(HashMap::from([("sim-0001".into(), "t".into())]));
        assert_eq!(per.password_for("sim-0001").ok().as_deref(), Some("t"));
        assert!(matches!(
            per.password_for("sim-0002"),
            Err(Error::MissingCredential { .. })
        ));
        assert!(!format!("{:?}", Credentials::Shared("secret".into())).contains("secret"));
        let bad = FleetRunOptions {
            speedup: 0.0,
            keep_alive: Duration::from_millis(10),
            queue_capacity: 0,
            ..FleetRunOptions::default()
        };
        let err = bad.validate().expect_err("refused").to_string();
        for f in ["speedup", "keep_alive", "queue_capacity"] {
            assert!(err.contains(f), "{err}");
        }
        assert!(FleetRunOptions::default().validate().is_ok());
    }

    #[test]
    fn auth_refusals_are_told_apart() {
        assert!(is_auth_refusal(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword
        )));
        assert!(is_auth_refusal(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized
        )));
        assert!(!is_auth_refusal(&ConnectionError::NetworkTimeout));
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        let base = Duration::from_millis(1000);
        for a in 0..50 {
            let d = jitter(base, 7, a);
            assert!(d >= Duration::from_millis(750) && d < Duration::from_millis(1250));
        }
    }
}
