//! End-to-end tests of `edgepipe-agent` with real processes: the `edgepipe` server, Mosquitto
//! and `mosquitto_pub`, kill -9. Run `cargo build -p edgepipe-server` first when running only
//! this crate's tests (`cargo test --workspace` builds it).

mod collectors;
mod durability;
mod modbus;
mod mosquitto;
mod support;
mod tls;
