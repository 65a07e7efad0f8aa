//! TCP options for the simulator's MQTT clients, shared by the fleet ([`crate::mqtt`]) and the
//! load generator ([`crate::bench`]). A leaf: it uses neither.

use std::time::Duration;

/// TCP options for a client: no Nagle delay, since an MQTT client's small PUBLISH writes would
/// otherwise wait for the peer's delayed ACK (tens of ms added to measured latency).
pub(crate) fn network_options(connect_timeout: Duration) -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n.set_connection_timeout(connect_timeout.as_secs().max(1));
    n
}
