//! End-to-end tests: the real `edgepipe` binary on ephemeral ports, driven by clients we did not
//! write (mosquitto_pub, paho-mqtt, curl).

mod durability;
mod http;
mod mqtt;
mod support;
