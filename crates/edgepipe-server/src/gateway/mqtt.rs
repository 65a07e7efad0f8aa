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

use std::cell::Cell;
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use edgepipe_types::{DeviceId, Transport};
use ntex::Service as _;
use ntex::SharedCfg;
use ntex_mqtt::{MqttServer, MqttServiceConfig, QoS, v3, v5};

use crate::gateway::devices::AuthResult;
use crate::gateway::identity::identity_of;
use crate::gateway::ingest::{Ingestor, Rejection};
use crate::gateway::metrics::CertRefusal;
use crate::gateway::mqtt_submit::Batched;

/// Errors surfaced to ntex (they close the connection).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A rejection that closes the connection.
    #[error("{0}")]
    Closed(String),
    /// ntex internal.
    #[error("mqtt service error")]
    Internal,
}

impl From<()> for GatewayError {
    fn from(_: ()) -> Self {
        GatewayError::Internal
    }
}

impl TryFrom<GatewayError> for v5::PublishAck {
    type Error = GatewayError;
    fn try_from(err: GatewayError) -> Result<Self, Self::Error> {
        Err(err)
    }
}

/// Per-connection state. Dropped when the connection ends; the drop releases the connection
/// slot and, after an abnormal end, publishes the will.
#[derive(Debug)]
pub struct Conn {
    device: DeviceId,
    peer: Option<String>,
    transport: Transport,
    will: Option<(String, Vec<u8>)>,
    clean_disconnect: Cell<bool>,
    ingestor: Arc<Ingestor>,
    /// Counts this connection on its worker thread (see `submit`).
    _counted: crate::gateway::mqtt_submit::Connection,
    /// Keeps it on its worker's list of connections to close when the device is disabled or
    /// its certificate revoked (see `mqtt_live`).
    _tracked: std::rc::Rc<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        let m = self.ingestor.metrics();
        m.mqtt_connections.fetch_sub(1, Ordering::Relaxed);
        if self.clean_disconnect.get() {
            return;
        }
        if let Some((topic, payload)) = self.will.take() {
            let ing = self.ingestor.clone();
            let device = self.device.clone();
            let peer = self.peer.clone();
            let transport = self.transport;
            tracing::info!(device = %device, topic = %topic, "connection lost; publishing will");
            ing.metrics()
                .wills_published
                .fetch_add(1, Ordering::Relaxed);
            ntex::rt::spawn(async move {
                if let Err(e) = ing
                    .publish(
                        &Batched,
                        &device,
                        &topic,
                        &payload,
                        transport,
                        peer.as_deref(),
                    )
                    .await
                {
                    tracing::warn!(device = %device, error = %e, "will message refused");
                }
            });
        }
    }
}

enum Admit {
    Ok(Conn),
    BadCredentials,
    NotAuthorized,
    Busy,
}

/// How CONNECTs are admitted beyond the ingestor's rules (the same for every connection).
#[derive(Debug, Clone, Copy)]
pub struct AdmitRules {
    /// Most concurrent connections.
    pub max_connections: usize,
}

/// The device certificate of a TLS connection, if it presented one (rustls verified its chain
/// and dates in the handshake).
fn client_cert(io: &ntex::io::IoBoxed) -> Option<Vec<u8>> {
    io.query::<ntex_tls::rustls::PeerCert<'static>>()
        .as_ref()
        .map(|c| c.0.as_ref().to_vec())
}

/// Authenticates a CONNECT: by the device certificate when there is one (the username, if
/// given, must be the device it names; the password is not used), otherwise by the token.
fn admit(
    ing: &Arc<Ingestor>,
    rules: AdmitRules,
    io: &ntex::io::IoBoxed,
    username: Option<&str>,
    password: Option<&[u8]>,
    transport: Transport,
    will: Option<(String, Vec<u8>)>,
) -> Admit {
    let m = ing.metrics();
    let peer = peer_of(io);
    let peer_s = peer.clone().unwrap_or_else(|| "?".into());
    let refuse = |why: &str, device: &str, answer: Admit| {
        m.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %peer_s, device = %device.chars().take(64).collect::<String>(), why, "mqtt authentication failed");
        answer
    };
    let (user, cert_not_before_ms, result) = if let Some(der) = client_cert(io) {
        let cert_rules = ing.cert_rules();
        let cert = match identity_of(&der, cert_rules.device_id_from) {
            Ok(c) => c,
            Err(e) => {
                m.cert_refusal(CertRefusal::NoDeviceId);
                return refuse(
                    &e.to_string(),
                    username.unwrap_or("?"),
                    Admit::NotAuthorized,
                );
            }
        };
        if let Some(u) = username.filter(|u| !u.is_empty() && *u != cert.device_id) {
            m.cert_refusal(CertRefusal::OtherDevice);
            let why = format!(
                "the certificate names device {:?}, the username {u:?}",
                cert.device_id
            );
            return refuse(&why, u, Admit::NotAuthorized);
        }
        let result = match ing
            .devices()
            .authenticate_cert(&cert, cert_rules.register_by_certificate)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "device registry unavailable");
                return Admit::Busy;
            }
        };
        match result {
            AuthResult::Revoked => m.cert_refusal(CertRefusal::Revoked),
            AuthResult::Unknown => m.cert_refusal(CertRefusal::Unregistered),
            AuthResult::Disabled => m.cert_refusal(CertRefusal::Disabled),
            _ => {}
        }
        (cert.device_id, Some(cert.not_before_ms), result)
    } else {
        if ing.cert_rules().cert_required {
            m.cert_refusal(CertRefusal::NoClientCertificate);
            let answer = Admit::NotAuthorized;
            return refuse(
                "no client certificate (tls.client_auth = required)",
                username.unwrap_or("?"),
                answer,
            );
        }
        let Some(user) = username else {
            return refuse(
                "no username and no client certificate",
                "?",
                Admit::BadCredentials,
            );
        };
        let token = password
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        match ing
            .devices()
            .authenticate(user, &token, ing.auto_register())
        {
            Ok(r) => (user.to_owned(), None, r),
            Err(e) => {
                tracing::error!(error = %e, "device registry unavailable");
                return Admit::Busy;
            }
        }
    };
    let device = match (result, DeviceId::new(&user)) {
        (AuthResult::Ok | AuthResult::Registered, Ok(d)) => d,
        (r, _) => {
            let answer = if matches!(r, AuthResult::Disabled | AuthResult::Revoked) {
                Admit::NotAuthorized
            } else {
                Admit::BadCredentials
            };
            return refuse(&format!("{r:?}"), &user, answer);
        }
    };
    if result == AuthResult::Registered {
        tracing::info!(device = %device, peer = %peer_s, by_certificate = cert_not_before_ms.is_some(), "device registered on first connect");
    }
    let open = m.mqtt_connections.fetch_add(1, Ordering::Relaxed) + 1;
    let conn = Conn {
        _tracked: crate::gateway::mqtt_live::track(
            device.as_str(),
            cert_not_before_ms,
            io.get_ref(),
        ),
        device,
        peer,
        transport,
        will,
        clean_disconnect: Cell::new(false),
        ingestor: ing.clone(),
        _counted: crate::gateway::mqtt_submit::Connection::open(),
    };
    if open as usize > rules.max_connections {
        m.connections_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %peer_s, limit = rules.max_connections, "connection limit reached");
        conn.clean_disconnect.set(true);
        drop(conn);
        return Admit::Busy;
    }
    m.mqtt_connects.fetch_add(1, Ordering::Relaxed);
    Admit::Ok(conn)
}

fn peer_of(io: &ntex::io::IoBoxed) -> Option<String> {
    io.query::<ntex::io::types::PeerAddr>()
        .get()
        .map(|a| a.0.to_string())
}

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

/// Starts the endpoint on `listener` (plaintext) and, when given, `tls` (MQTT over TLS with
/// that configuration), in its own thread.
pub fn spawn(
    listener: TcpListener,
    tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
    ingestor: Arc<Ingestor>,
    settings: MqttSettings,
) -> std::io::Result<MqttHandle> {
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

fn connect_v3(
    ing: &Arc<Ingestor>,
    rules: AdmitRules,
    c: v3::Connect,
) -> Result<v3::ConnectAck<Conn>, GatewayError> {
    let pkt = c.packet();
    let will = pkt
        .last_will
        .as_ref()
        .map(|w| (w.topic.to_string(), w.message.to_vec()));
    match admit(
        ing,
        rules,
        c.io(),
        pkt.username.as_deref(),
        pkt.password.as_deref(),
        Transport::Mqtt311,
        will,
    ) {
        Admit::Ok(conn) => Ok(c.ack(conn, false)),
        Admit::BadCredentials => Ok(c.bad_username_or_pwd()),
        Admit::NotAuthorized => Ok(c.not_authorized()),
        Admit::Busy => Ok(c.service_unavailable()),
    }
}

fn connect_v5(
    ing: &Arc<Ingestor>,
    rules: AdmitRules,
    c: v5::Connect,
) -> Result<v5::ConnectAck<Conn>, GatewayError> {
    use v5::codec::ConnectAckReason as R;
    let pkt = c.packet();
    let will = pkt
        .last_will
        .as_ref()
        .map(|w| (w.topic.to_string(), w.message.to_vec()));
    match admit(
        ing,
        rules,
        c.io(),
        pkt.username.as_deref(),
        pkt.password.as_deref(),
        Transport::Mqtt5,
        will,
    ) {
        Admit::Ok(conn) => Ok(c.ack(conn)),
        Admit::BadCredentials => Ok(c.failed(R::BadUserNameOrPassword)),
        Admit::NotAuthorized => Ok(c.failed(R::NotAuthorized)),
        Admit::Busy => Ok(c.failed(R::ServerBusy)),
    }
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
        Err(Rejection::BadPayload(_) | Rejection::UnknownTopic(_) | Rejection::TooLarge { .. }) => {
            Ok(())
        }
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
