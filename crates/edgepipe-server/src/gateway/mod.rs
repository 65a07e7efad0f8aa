//! Before the acknowledgement: the device-facing side that authenticates, decodes, refuses into
//! the dead-letter store and appends to the WAL, answering only once the record is durable.
//!
//! [`ingest`] is the transport-neutral core; [`mqtt`] (with its worker mechanics
//! [`mqtt_relay`] and [`mqtt_submit`]) and the web ingest handler are its transports; [`tls`]
//! holds the certificate every TLS listener presents.

pub mod auth_guard;
pub mod ca;
pub mod cardinality;
pub mod deadletter;
pub mod dedup;
pub mod devices;
pub mod identity;
pub mod ingest;
pub mod metrics;
pub mod mqtt;
pub mod mqtt_connect;
pub mod mqtt_live;
pub mod mqtt_relay;
pub mod mqtt_submit;
pub mod mqtt_ws;
pub mod tls;
pub mod tls_config;
