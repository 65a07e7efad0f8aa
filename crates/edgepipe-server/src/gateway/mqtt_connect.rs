//! MQTT CONNECT: who the client is. A device certificate the TLS handshake verified names the
//! device (the username, if any, must agree); otherwise username = device id and password =
//! token. v3.1.1 gets CONNACK 0x04/0x05, v5 0x86 (bad user name or password) / 0x87 (not
//! authorized: a disabled device, a revoked certificate, a certificate of another device, no
//! certificate where `tls.client_auth = "required"`) / 0x89 (server busy).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use edgepipe_types::{DeviceId, Transport};
use ntex_mqtt::{v3, v5};

use crate::gateway::devices::AuthResult;
use crate::gateway::identity::identity_of;
use crate::gateway::ingest::Ingestor;
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
    pub(super) device: DeviceId,
    pub(super) peer: Option<String>,
    pub(super) transport: Transport,
    pub(super) will: Option<(String, Vec<u8>)>,
    pub(super) clean_disconnect: Cell<bool>,
    pub(super) ingestor: Arc<Ingestor>,
    /// Counts this connection on its worker thread (see `submit`).
    pub(super) _counted: crate::gateway::mqtt_submit::Connection,
    /// Keeps it on its worker's list of connections to close when the device is disabled or
    /// its certificate revoked (see `mqtt_live`).
    pub(super) _tracked: std::rc::Rc<()>,
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

fn peer_addr(io: &ntex::io::IoBoxed) -> Option<std::net::SocketAddr> {
    io.query::<ntex::io::types::PeerAddr>().get().map(|a| a.0)
}

enum Admit {
    Ok(Conn),
    BadCredentials,
    NotAuthorized,
    Busy,
    /// The address is backing off after repeated failures.
    Backoff,
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
    let addr = peer_addr(io);
    let peer = addr.map(|a| a.to_string());
    let peer_s = peer.clone().unwrap_or_else(|| "?".into());
    let guard = ing.auth_guard();
    if let Some(a) = addr
        && let Err(wait_ms) = guard.check(a.ip(), ing.now_ms())
    {
        m.auth_blocked.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %peer_s, wait_ms, "mqtt connect refused: the address is backing off after failed logins");
        return Admit::Backoff;
    }
    let refuse = |why: &str, device: &str, answer: Admit| {
        m.auth_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = %peer_s, device = %device.chars().take(64).collect::<String>(), why, "mqtt authentication failed");
        if let Some(a) = addr
            && let Some(block_ms) = guard.failed(a.ip(), ing.now_ms())
        {
            tracing::warn!(peer = %peer_s, block_ms, "repeated authentication failures: this address is refused unexamined for a while");
        }
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
    if let Some(a) = addr {
        guard.succeeded(a.ip());
    }
    m.mqtt_connects.fetch_add(1, Ordering::Relaxed);
    Admit::Ok(conn)
}

pub(super) fn connect_v3(
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
        Admit::Busy | Admit::Backoff => Ok(c.service_unavailable()),
    }
}

pub(super) fn connect_v5(
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
        Admit::Backoff => Ok(c.failed(R::ConnectionRateExceeded)),
    }
}
