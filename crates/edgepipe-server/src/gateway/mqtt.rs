//! The MQTT 3.1.1 / 5 device endpoint, on ntex-mqtt.
//!
//! It runs on its own ntex `System` thread(s). The publish handler awaits
//! [`Ingestor::publish`](crate::gateway::ingest::Ingestor::publish) directly: the ingest path only uses
//! runtime-agnostic channels, so no bridge task is needed, and ntex writes the PUBACK only when
//! the handler returns, i.e. after the WAL append is fdatasynced. Publishes are handled
//! concurrently per connection (up to `receive maximum`), so many acks share one fsync, and
//! the WAL writer's wake-ups reach the handlers through [`crate::gateway::mqtt_relay`], so the PUBACKs of one
//! group commit leave in one write.
//!
//! Protocol behaviour:
//! - Authentication: username = device id, password = token. v3.1.1 gets CONNACK 0x04/0x05,
//!   v5 gets 0x86 (bad user name or password) / 0x87 (not authorized, disabled device).
//! - A device publishing to another device's topic: v5 PUBACK 0x87; v3.1.1 connection closed.
//! - Bad payload: stored as a dead letter first, then v5 PUBACK 0x99; v3.1.1 PUBACK (the message
//!   is durably kept, in the dead-letter store, so the client must not resend it forever).
//! - Unknown topic: dead letter, v5 PUBACK 0x90; v3.1.1 PUBACK.
//! - Payload over `limits.max_payload_bytes`: dead letter (raw bytes truncated, flagged), v5
//!   PUBACK 0x99, v3.1.1 PUBACK. A packet more than 64 KiB beyond that is refused by the codec
//!   before it is read: the connection closes and nothing is acknowledged.
//! - Rate limit: v5 PUBACK 0x97 (not stored; the client keeps it); v3.1.1 connection closed.
//! - WAL unavailable (budget full, fsync failed): connection closed without ack, the client
//!   retries after reconnecting.
//! - QoS 2 is refused: the server's maximum QoS is 1 (v5 CONNACK says so); a QoS 2 publish
//!   closes the connection (v5: DISCONNECT 0x9B "QoS not supported").
//! - Subscriptions are refused per filter (SUBACK failure): this is a device gateway, not a
//!   general broker (see architecture: external-broker mode).
//! - Will messages: kept from CONNECT and ingested like a publish if the connection ends
//!   without a DISCONNECT (keep-alive timeout, network loss, protocol error).
//! - Sessions: no session state is kept (no subscriptions to keep); CONNACK reports
//!   session-present = 0 so a persistent-session client resends its unacknowledged publishes.

use std::net::TcpListener;
use std::sync::Arc;

use ntex::Service as _;
use ntex::SharedCfg;
use ntex_mqtt::{MqttServer, MqttServiceConfig, QoS, v3, v5};

use crate::gateway::ingest::{Ingestor, Rejection};
pub use crate::gateway::mqtt_connect::AdmitRules;
pub use crate::gateway::mqtt_connect::{Conn, GatewayError};
use crate::gateway::mqtt_connect::{connect_v3, connect_v5};
use crate::gateway::mqtt_submit::Batched;

/// Settings for [`spawn`].
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Worker threads.
    pub workers: usize,
    /// Connection limit and how devices are authenticated.
    pub rules: AdmitRules,
    /// Largest packet accepted by the codec (bigger ones close the connection).
    pub max_packet: u32,
    /// Publishes in flight per connection (v5 receive maximum).
    pub receive_max: u16,
}

/// A running MQTT endpoint.
#[derive(Debug)]
pub struct MqttHandle {
    server: ntex::server::Server,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MqttHandle {
    /// Stops accepting, closes connections (waiting up to the shutdown timeout for in-flight
    /// publishes), and joins the thread.
    pub fn stop(mut self) {
        let stop = self.server.stop(true);
        let sys = std::thread::spawn(move || {
            ntex::rt::System::build()
                .name("mqtt-stop")
                .build(ntex::rt::DefaultRuntime)
                .block_on(stop)
        });
        let _ = sys.join();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The MQTT 3.1.1 / 5 service of one worker thread (for plaintext and TLS connections alike;
/// a macro because its type depends on the transport's filter). Installs the worker's wake
/// relay and submission batch on first use.
macro_rules! mqtt_service {
    ($ing:expr, $rules:expr) => {{
        let ing: &Arc<Ingestor> = $ing;
        let rules: AdmitRules = $rules;
        // One pump per worker thread: a group commit's PUBACKs leave in one write (see
        // `relay`).
        crate::gateway::mqtt_relay::install();
        // One submission batch per worker thread: with several connections, the appends of one
        // scheduler pass share one fsync (see `submit`).
        crate::gateway::mqtt_submit::install(ing.wal().clone(), ing.metrics().clone());
        // One watcher per worker thread closes connections whose credentials were withdrawn.
        crate::gateway::mqtt_live::install(ing.clone());
        let ing3 = ing.clone();
        let ing5 = ing.clone();
        MqttServer::new()
            .v3(v3::MqttServer::new(publish_v3)
                .protocol(protocol_v3)
                .build(async move |c: v3::Connect| connect_v3(&ing3, rules, c)))
            .v5(v5::MqttServer::new(publish_v5)
                .protocol(protocol_v5)
                .build(async move |c: v5::Connect| connect_v5(&ing5, rules, c)))
    }};
}

/// One worker's MQTT service for connections that arrive over WebSocket (the upgrade hands
/// it the WebSocket-framed connection).
fn mqtt_over_ws(
    ing: &Arc<Ingestor>,
    rules: AdmitRules,
) -> ntex::PipelineBinding<ntex::io::IoBoxed, (), std::io::Error> {
    ntex::Pipeline::new(
        (),
        mqtt_service!(ing, rules)
            .map_err(|e| std::io::Error::other(format!("mqtt over websocket: {e:?}"))),
    )
    .bind()
}

/// The MQTT listeners besides the plain one.
#[derive(Debug, Default)]
pub struct ExtraListeners {
    /// MQTT over TLS with this configuration.
    pub tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    /// MQTT over WebSocket (`ws://…/mqtt`).
    pub ws: Option<TcpListener>,
    /// MQTT over WebSocket over TLS (`wss://…/mqtt`).
    pub wss: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
}

/// Starts the endpoint on `listener` (plaintext) and the `extra` listeners, in its own thread.
pub fn spawn(
    listener: TcpListener,
    extra: ExtraListeners,
    ingestor: Arc<Ingestor>,
    settings: MqttSettings,
) -> std::io::Result<MqttHandle> {
    let ExtraListeners { tls, ws, wss } = extra;
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("mqtt".into())
        .spawn(move || {
            let res = ntex::rt::System::build()
                .name("edgepipe-mqtt")
                .build(ntex::rt::DefaultRuntime)
                .block_on(async move {
                    let cfg = || {
                        SharedCfg::new("MQTT").add(
                            MqttServiceConfig::new()
                                .set_max_qos(QoS::AtLeastOnce)
                                .set_max_size(settings.max_packet)
                                .set_max_receive(settings.receive_max)
                                .set_max_receive_size(usize::MAX / 2)
                                .set_connect_timeout(ntex::time::Seconds(10))
                                .set_handshake_timeout(ntex::time::Seconds(10)),
                        )
                    };
                    let ing = ingestor.clone();
                    let s = settings.clone();
                    let mut built = ntex::server::build()
                        .workers(s.workers.max(1))
                        .disable_signals()
                        .maxconn(s.rules.max_connections + 64)
                        .shutdown_timeout(ntex::time::Seconds(5))
                        .listen("mqtt", listener, cfg(), {
                            let ing = ing.clone();
                            let rules = s.rules;
                            async move |_| mqtt_service!(&ing, rules)
                        });
                    if let Some((tls_listener, tls_config)) = tls {
                        let ing = ing.clone();
                        let rules = s.rules;
                        built = built.and_then(|b| {
                            b.listen("mqtts", tls_listener, cfg(), async move |_| {
                                let metrics = ing.metrics().clone();
                                ntex_tls::rustls::TlsAcceptor::new(tls_config.clone())
                                    .map_err(move |e| {
                                        metrics.tls.handshake_failed(
                                            crate::gateway::tls::Listener::Mqtt,
                                            None,
                                            &e,
                                        );
                                        ntex_mqtt::MqttError::Service(GatewayError::Closed(
                                            format!("TLS handshake: {e}"),
                                        ))
                                    })
                                    .and_then(mqtt_service!(&ing, rules))
                            })
                        });
                    }
                    if let Some(ws_listener) = ws {
                        let ing = ing.clone();
                        let rules = s.rules;
                        built = built.and_then(|b| {
                            b.listen("mqtt-ws", ws_listener, cfg(), async move |_| {
                                crate::gateway::mqtt_ws::http_service(mqtt_over_ws(&ing, rules))
                            })
                        });
                    }
                    if let Some((wss_listener, tls_config)) = wss {
                        let ing = ing.clone();
                        let rules = s.rules;
                        built = built.and_then(|b| {
                            b.listen("mqtt-wss", wss_listener, cfg(), async move |_| {
                                let metrics = ing.metrics().clone();
                                let http = ntex::Pipeline::new(
                                    (),
                                    crate::gateway::mqtt_ws::http_service(mqtt_over_ws(
                                        &ing, rules,
                                    )),
                                );
                                ntex_tls::rustls::TlsAcceptor::new(tls_config.clone())
                                    .map_err(move |e| {
                                        metrics.tls.handshake_failed(
                                            crate::gateway::tls::Listener::Mqtt,
                                            None,
                                            &e,
                                        );
                                        e
                                    })
                                    .and_then(async move |io: ntex::io::Io<_>| {
                                        http.call(io).await.map_err(|e| {
                                            std::io::Error::other(format!("mqtt over wss: {e}"))
                                        })
                                    })
                            })
                        });
                    }
                    match built {
                        Ok(b) => {
                            let server = b.run();
                            let _ = tx.send(Ok(server.clone()));
                            if let Err(e) = server.await {
                                tracing::error!(error = ?e, "mqtt server ended");
                            }
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                    Ok::<(), std::io::Error>(())
                });
            if let Err(e) = res {
                tracing::error!(error = %e, "mqtt system stopped with an error");
            }
        })?;
    let server = rx
        .recv()
        .map_err(|_| std::io::Error::other("mqtt thread exited during startup"))??;
    Ok(MqttHandle {
        server,
        thread: Some(thread),
    })
}

/// Ingests one publish of `conn`'s device, waiting through this worker's wake relay. The
/// ingest future is large, and ntex and the relay move it several times: it is boxed once.
async fn ingest(
    conn: &Conn,
    topic: &str,
    payload: &[u8],
) -> Result<crate::gateway::ingest::Accepted, Rejection> {
    crate::gateway::mqtt_relay::local(Box::pin(conn.ingestor.publish(
        &Batched,
        &conn.device,
        topic,
        payload,
        conn.transport,
        conn.peer.as_deref(),
    )))
    .await
}

async fn publish_v3(ses: &v3::Session<Conn>, p: v3::Publish) -> Result<(), GatewayError> {
    let payload = p
        .read_all()
        .await
        .map_err(|e| GatewayError::Closed(format!("payload read failed: {e:?}")))?;
    let conn: &Conn = ses;
    match ingest(conn, p.publish_topic(), &payload).await {
        Ok(_) => Ok(()),
        // Kept in the dead-letter store: acknowledge so the client does not resend forever.
        Err(
            Rejection::BadPayload(_)
            | Rejection::UnknownTopic(_)
            | Rejection::TooLarge { .. }
            | Rejection::TooManyMetrics { .. },
        ) => Ok(()),
        Err(e) => {
            tracing::warn!(device = %conn.device, error = %e, "closing mqtt 3.1.1 connection");
            Err(GatewayError::Closed(e.to_string()))
        }
    }
}

async fn publish_v5(
    ses: &v5::Session<Conn>,
    p: v5::Publish,
) -> Result<v5::PublishAck, GatewayError> {
    use v5::codec::PublishAckReason as R;
    let payload = p
        .read_all()
        .await
        .map_err(|e| GatewayError::Closed(format!("payload read failed: {e:?}")))?;
    let conn: &Conn = ses;
    let res = ingest(conn, p.publish_topic(), &payload).await;
    let (code, reason) = match res {
        Ok(_) => return Ok(p.ack()),
        Err(e @ Rejection::NotAuthorized(_)) => (R::NotAuthorized, e.to_string()),
        Err(e @ Rejection::BadPayload(_)) => (R::PayloadFormatInvalid, e.to_string()),
        Err(e @ Rejection::TooLarge { .. }) => (R::PayloadFormatInvalid, e.to_string()),
        Err(e @ Rejection::UnknownTopic(_)) => (R::TopicNameInvalid, e.to_string()),
        Err(e @ Rejection::RateLimited { .. }) => (R::QuotaExceeded, e.to_string()),
        Err(e @ Rejection::TooManyMetrics { .. }) => (R::QuotaExceeded, e.to_string()),
        Err(e @ Rejection::Unavailable(_)) => {
            tracing::warn!(device = %conn.device, error = %e, "closing mqtt 5 connection");
            return Err(GatewayError::Closed(e.to_string()));
        }
    };
    let reason: String = reason.chars().take(200).collect();
    Ok(p.ack().reason_code(code).reason(reason.into()))
}

async fn protocol_v3(
    ses: &v3::Session<Conn>,
    msg: v3::ProtocolMessage,
) -> Result<v3::ProtocolMessageAck, GatewayError> {
    Ok(match msg {
        v3::ProtocolMessage::Disconnect(d) => {
            ses.clean_disconnect.set(true);
            d.ack()
        }
        v3::ProtocolMessage::Subscribe(mut s) => {
            for mut sub in s.iter_mut() {
                tracing::info!(device = %ses.device, topic = %sub.topic(), "subscribe refused: device gateway");
                sub.fail();
            }
            s.ack()
        }
        other => other.ack(),
    })
}

async fn protocol_v5(
    ses: &v5::Session<Conn>,
    msg: v5::ProtocolMessage,
) -> Result<v5::ProtocolMessageAck, GatewayError> {
    Ok(match msg {
        v5::ProtocolMessage::Disconnect(d) => {
            ses.clean_disconnect.set(true);
            d.ack()
        }
        v5::ProtocolMessage::Subscribe(mut s) => {
            for mut sub in s.iter_mut() {
                sub.fail(v5::codec::SubscribeAckReason::ImplementationSpecificError);
            }
            s.ack()
        }
        other => other.ack(),
    })
}
