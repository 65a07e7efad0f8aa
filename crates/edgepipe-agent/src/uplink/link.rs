//! The MQTT connection to the server (rumqttc, plain or TLS) and the events it reports.

#[cfg(feature = "tls")]
use super::config::tls_config;
use super::config::{MqttVersion, UplinkConfig};
pub(crate) enum Link {
    V4(rumqttc::AsyncClient, Box<rumqttc::EventLoop>),
    V5(rumqttc::v5::AsyncClient, Box<rumqttc::v5::EventLoop>),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Link::V4(..) => "Link::V4",
            Link::V5(..) => "Link::V5",
        })
    }
}

pub(crate) enum LinkEvent {
    Connected,
    Written(u16),
    Acked(u16),
    Refused(u16, String),
    Other,
}

impl Link {
    pub(crate) fn new(
        cfg: &UplinkConfig,
        host: String,
        port: u16,
        client_id: String,
        user: String,
        tls: bool,
    ) -> Result<Link, String> {
        let cap = cfg.max_inflight * 2 + 16;
        #[cfg(feature = "tls")]
        let transport = if tls {
            rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
                tls_config(cfg).map_err(|(_, e)| e)?,
            ))
        } else {
            rumqttc::Transport::Tcp
        };
        #[cfg(not(feature = "tls"))]
        let transport = if tls {
            return Err("mqtts:// needs the agent built with the `tls` feature".into());
        } else {
            rumqttc::Transport::Tcp
        };
        let inflight = u16::try_from(cfg.max_inflight * 2).unwrap_or(u16::MAX);
        match cfg.protocol {
            MqttVersion::V311 => {
                let mut o = rumqttc::MqttOptions::new(client_id, host, port);
                o.set_keep_alive(cfg.keep_alive)
                    .set_clean_session(true)
                    .set_credentials(user, cfg.token.clone())
                    .set_max_packet_size(1024 * 1024, 1024 * 1024)
                    .set_inflight(inflight)
                    .set_transport(transport);
                let (c, e) = rumqttc::AsyncClient::new(o, cap);
                Ok(Link::V4(c, Box::new(e)))
            }
            MqttVersion::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(client_id, host, port);
                o.set_keep_alive(cfg.keep_alive)
                    .set_clean_start(true)
                    .set_credentials(user, cfg.token.clone())
                    .set_max_packet_size(Some(1024 * 1024))
                    .set_outgoing_inflight_upper_limit(inflight)
                    .set_transport(transport);
                let (c, e) = rumqttc::v5::AsyncClient::new(o, cap);
                Ok(Link::V5(c, Box::new(e)))
            }
        }
    }

    pub(crate) async fn poll(&mut self) -> Result<LinkEvent, String> {
        use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
        use rumqttc::{Event, Outgoing, Packet};
        match self {
            Link::V4(_, el) => match el.poll().await.map_err(|e| e.to_string())? {
                Event::Incoming(Packet::ConnAck(_)) => Ok(LinkEvent::Connected),
                Event::Incoming(Packet::PubAck(a)) => Ok(LinkEvent::Acked(a.pkid)),
                Event::Outgoing(Outgoing::Publish(p)) => Ok(LinkEvent::Written(p)),
                _ => Ok(LinkEvent::Other),
            },
            Link::V5(_, el) => match el.poll().await.map_err(|e| e.to_string())? {
                rumqttc::v5::Event::Incoming(P5::ConnAck(_)) => Ok(LinkEvent::Connected),
                rumqttc::v5::Event::Incoming(P5::PubAck(a)) => match a.reason {
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers => {
                        Ok(LinkEvent::Acked(a.pkid))
                    }
                    r => Ok(LinkEvent::Refused(a.pkid, format!("{r:?}"))),
                },
                rumqttc::v5::Event::Outgoing(Outgoing::Publish(p)) => Ok(LinkEvent::Written(p)),
                _ => Ok(LinkEvent::Other),
            },
        }
    }

    pub(crate) fn try_publish(&self, topic: &str, payload: Vec<u8>) -> bool {
        match self {
            Link::V4(c, _) => c
                .try_publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .is_ok(),
            Link::V5(c, _) => c
                .try_publish(
                    topic,
                    rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                )
                .is_ok(),
        }
    }

    pub(crate) fn disconnect(&self) {
        match self {
            Link::V4(c, _) => {
                let _ = c.try_disconnect();
            }
            Link::V5(c, _) => {
                let _ = c.try_disconnect();
            }
        }
    }
}
