//! `type = "mqtt"`: subscribes to a local broker (Mosquitto on the gateway) with QoS 1, a
//! persistent session and manual acknowledgements: a message is acknowledged to the broker only
//! after its readings are durable in the queue, so a crash before that makes the broker deliver
//! it again. Topics are the device scheme `edgepipe/v1/{device_id}/telemetry` and any topic
//! mappings, exactly as on the server. Subscriptions are renewed on every CONNACK.
//!
//! Readings keep their sensor's identity in the metric name: `<device_id>.<metric>` (the agent
//! publishes upstream under its own device id). Messages that do not decode are acknowledged
//! (a broker would otherwise redeliver them forever) and counted as rejected.

use edgepipe_protocol::mapping::{TopicMapping, TopicMappingConfig};
use edgepipe_protocol::{Limits, TELEMETRY_FILTER, decode_payload_for, parse_telemetry_topic};
use edgepipe_types::{DeviceId, Metric, Reading};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use super::{Ctx, Error};
use crate::pipeline::Input;

/// `type = "mqtt"` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttCollectorConfig {
    /// Broker `host:port`. Default "127.0.0.1:1883".
    #[serde(default = "addr")]
    pub addr: String,
    /// Client id (the persistent session's name). Default `<agent_id>-<collector name>`.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Username. Default: none.
    #[serde(default)]
    pub username: Option<String>,
    /// Password. Default: none.
    #[serde(default)]
    pub password: Option<String>,
    /// Topic filters in the device scheme. Default `["edgepipe/v1/+/telemetry"]`.
    #[serde(default = "topics")]
    pub topics: Vec<String>,
    /// Mappings for foreign topic schemes, as in the server's `[[topic_mappings]]`.
    #[serde(default)]
    pub topic_mappings: Vec<TopicMappingConfig>,
    /// Prefix metrics with the sensor's device id (`pump-1.temp`). Default true.
    #[serde(default = "yes")]
    pub prefix_device: bool,
}

fn addr() -> String {
    "127.0.0.1:1883".into()
}
fn topics() -> Vec<String> {
    vec![TELEMETRY_FILTER.into()]
}
fn yes() -> bool {
    true
}

/// Compiles the mappings (for `validate`).
pub fn compile(cfg: &MqttCollectorConfig) -> Vec<Result<TopicMapping, String>> {
    cfg.topic_mappings
        .iter()
        .map(|m| TopicMapping::compile(m).map_err(|e| e.to_string()))
        .collect()
}

fn decode(
    mappings: &[TopicMapping],
    prefix: bool,
    topic: &str,
    payload: &[u8],
    now: i64,
    limits: &Limits,
) -> Result<Vec<Reading>, String> {
    let (device, readings) = if let Some(id) = parse_telemetry_topic(topic) {
        let device = DeviceId::new(id).map_err(|e| e.to_string())?;
        let d = decode_payload_for(&device, payload, now, limits).map_err(|e| e.to_string())?;
        (device, d.readings)
    } else {
        let (m, mt) = mappings
            .iter()
            .find_map(|m| m.matches(topic).map(|mt| (m, mt)))
            .ok_or_else(|| format!("no mapping matches topic {topic:?}"))?;
        let d = m
            .decode(&mt, payload, now, limits)
            .map_err(|e| e.to_string())?;
        (mt.device().map_err(|e| e.to_string())?, d.readings)
    };
    if !prefix {
        return Ok(readings);
    }
    readings
        .into_iter()
        .map(|mut r| {
            r.metric = Metric::new(format!("{device}.{}", r.metric)).map_err(|e| e.to_string())?;
            Ok(r)
        })
        .collect()
}

type Pending = (oneshot::Receiver<Result<(), String>>, rumqttc::Publish);

/// Runs the subscription until cancelled.
pub async fn run(cfg: MqttCollectorConfig, ctx: Ctx, agent_id: String) -> Result<(), Error> {
    let setting = |what: &str, reason: String| Error::Setting {
        what: format!("collector {}: {what}", ctx.name),
        reason,
    };
    let mappings: Vec<TopicMapping> = compile(&cfg)
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| setting("topic_mappings", e))?;
    let (host, port) = cfg
        .addr
        .rsplit_once(':')
        .ok_or_else(|| setting("addr", format!("{:?} is not host:port", cfg.addr)))?;
    let port: u16 = port
        .parse()
        .map_err(|_| setting("addr", format!("bad port in {:?}", cfg.addr)))?;
    let id = cfg
        .client_id
        .clone()
        .unwrap_or_else(|| format!("{agent_id}-{}", ctx.name));
    let mut opts = MqttOptions::new(id, host.to_string(), port);
    opts.set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(std::time::Duration::from_secs(30))
        .set_max_packet_size(1024 * 1024, 1024 * 1024);
    if let Some(u) = &cfg.username {
        opts.set_credentials(u.clone(), cfg.password.clone().unwrap_or_default());
    }
    let (client, mut el) = AsyncClient::new(opts, 256);
    let mut filters = cfg.topics.clone();
    filters.extend(mappings.iter().map(|m| m.subscription_filter()));

    // Acks go back to the broker in the order messages arrived, each once its readings are on
    // disk. Bounded: when 1024 messages wait for the disk, receiving waits too.
    let (ack_tx, mut ack_rx) = mpsc::channel::<Pending>(1024);
    let acker = client.clone();
    tokio::spawn(async move {
        while let Some((rx, publish)) = ack_rx.recv().await {
            match rx.await {
                Ok(Ok(())) => {
                    let _ = acker.ack(&publish).await;
                }
                Ok(Err(e)) => {
                    // The broker redelivers unacknowledged QoS 1 messages only on a new
                    // connection of the persistent session: reconnect to get it again.
                    tracing::warn!(error = %e, "append refused; reconnecting so the broker redelivers");
                    let _ = acker.disconnect().await;
                }
                Err(_) => return,
            }
        }
    });

    let limits = Limits::default();
    loop {
        let ev = tokio::select! {
            ev = el.poll() => ev,
            _ = ctx.cancel.cancelled() => {
                let _ = client.disconnect().await;
                return Ok(());
            }
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(collector = %ctx.name, "connected to local broker");
                for f in &filters {
                    if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                        tracing::warn!(filter = %f, error = %e, "subscribe failed");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let now = ctx.clock.now_ms();
                match decode(
                    &mappings,
                    cfg.prefix_device,
                    &p.topic,
                    &p.payload,
                    now,
                    &limits,
                ) {
                    Ok(readings) => {
                        let (tx, rx) = oneshot::channel();
                        let input = Input {
                            stream: ctx.stream.clone(),
                            readings,
                            positions: Vec::new(),
                            ack: Some(tx),
                            raw: false,
                        };
                        if ctx.tx.send(input).await.is_err() {
                            return Ok(());
                        }
                        if ack_tx.send((rx, p)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(collector = %ctx.name, topic = %p.topic, error = %e, "message refused");
                        ctx.metrics.reject("mqtt_decode", 1);
                        let _ = client.try_ack(&p);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(collector = %ctx.name, error = %e, "local broker connection lost; retrying");
                super::file::sleep_or_cancel(&ctx, std::time::Duration::from_secs(1)).await;
            }
        }
    }
}
